//! safetensors files and config.json: bad headers name file, tensor and problem, mutations never panic.

use super::*;

fn tiny_config_json() -> Value {
    json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
           "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
           "vocab_size": 6, "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": false})
}

pub(crate) fn tiny_params() -> (ModelConfig, Params) {
    let cfg = ModelConfig::from_hf_json(&tiny_config_json(), Path::new("config.json")).expect("tiny config");
    let mut p = Params::zeros(&cfg);
    for (i, x) in p.data.iter_mut().enumerate() {
        *x = (i as f32 * 0.37).sin();
    }
    (cfg, p)
}

/// A model directory written by arbor (one `model.safetensors`) and the file's bytes.
fn saved_model() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, params) = tiny_params();
    save_hf_dir(dir.path(), &cfg, &params, &SaveOptions::default()).expect("save");
    let bytes = std::fs::read(dir.path().join("model.safetensors")).expect("read");
    (dir, bytes)
}

/// Every reader of safetensors bytes on `bytes` (as `dir/model.safetensors`): no panic, and
/// every error names the file.
fn check_safetensors(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let file = dir.join("model.safetensors");
    std::fs::write(&file, bytes).expect("write");
    let name = file.display().to_string();
    let in_memory = parse_header(&file, bytes);
    match read_header(&file) {
        Ok(h) => {
            prop_assert!(in_memory.is_ok(), "the file and in-memory readers disagree");
            for t in &h.tensors {
                if let Err(e) = read_tensor_f32(&h, t) {
                    prop_assert!(e.to_string().contains(&name), "{e}");
                }
            }
            let _ = h.load_problems();
        }
        Err(e) => {
            prop_assert!(e.to_string().contains(&name), "{e}");
            prop_assert!(in_memory.is_err(), "the in-memory reader accepted what the file reader refused: {e}");
        }
    }
    if let Err(e) = load_hf_dir(dir) {
        prop_assert!(e.to_string().contains(&name), "load error does not name the file: {e}");
    }
    Ok(())
}

/// `bytes` with its JSON header replaced by `header` (length prefix fixed).
fn with_header(bytes: &[u8], header: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

fn header_text(bytes: &[u8]) -> String {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    String::from_utf8(bytes[8..8 + n].to_vec()).expect("arbor writes UTF-8 headers")
}

/// JSON values at the edges of what a config.json or manifest key may hold.
pub(crate) fn odd_json() -> Vec<Value> {
    vec![
        json!(0),
        json!(-1),
        json!(1u64 << 40),
        json!(u64::MAX),
        json!(1e308),
        json!(-0.0),
        json!(0.5),
        Value::Null,
        json!(""),
        json!("../x"),
        json!([]),
        json!([1, 2]),
        json!({}),
        json!(true),
    ]
}

/// Every key of an arbor-written config.json set to every odd JSON value (and removed): loading
/// and inspecting the directory must not panic, and a load error names one of its files.
#[test]
fn config_json_sweep_never_panics() {
    let (dir, _) = saved_model();
    let path = dir.path().join("config.json");
    let good: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let keys: Vec<String> = good.as_object().expect("object").keys().cloned().collect();
    for key in &keys {
        for value in odd_json().into_iter().map(Some).chain([None]) {
            let mut v = good.clone();
            let obj = v.as_object_mut().expect("object");
            match &value {
                Some(x) => obj.insert(key.clone(), x.clone()),
                None => obj.remove(key),
            };
            std::fs::write(&path, v.to_string()).expect("write");
            if let Err(e) = load_hf_dir(dir.path()) {
                let msg = e.to_string();
                assert!(msg.contains("config.json") || msg.contains("model.safetensors"), "{key} = {value:?}: {msg}");
            }
            let _ = arbor::cli::inspect::run(&arbor::cli::inspect::InspectArgs {
                path: dir.path().to_path_buf(),
                stats_max_numel: 0,
                sample: None,
                model: None,
                fci_step_gap: None,
            });
        }
    }
}

#[test]
fn bad_safetensors_headers_name_file_tensor_and_problem() {
    let (dir, good) = saved_model();
    let header = header_text(&good);
    let name = "model.layers.0.input_layernorm.weight";
    let err = |bytes: &[u8]| {
        std::fs::write(dir.path().join("model.safetensors"), bytes).expect("write");
        load_hf_dir(dir.path()).expect_err("must fail").to_string()
    };
    let mut v: Value = serde_json::from_str(&header).expect("json");
    v[name]["dtype"] = json!("F8_E9M9");
    let msg = err(&with_header(&good, &v.to_string()));
    assert!(
        msg.contains("model.safetensors") && msg.contains(name) && msg.contains("unknown dtype \"F8_E9M9\""),
        "{msg}"
    );
    let mut v: Value = serde_json::from_str(&header).expect("json");
    v[name]["data_offsets"] = json!([0, 1u64 << 40]);
    let msg = err(&with_header(&good, &v.to_string()));
    assert!(msg.contains("model.safetensors") && msg.contains(name), "{msg}");
    let msg = err(&good[..good.len() - 3]);
    assert!(msg.contains("model.safetensors") && msg.contains("truncated"), "{msg}");
    let msg = err(&[]);
    assert!(msg.contains("model.safetensors") && msg.contains("too short"), "{msg}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn safetensors_readers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (dir, _) = saved_model();
        check_safetensors(dir.path(), &bytes)?;
        // a plausible length prefix in front of arbitrary bytes
        let mut framed = ((bytes.len() as u64) / 2).to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        check_safetensors(dir.path(), &framed)?;
    }

    #[test]
    fn safetensors_readers_never_panic_on_mutated_files(edits in edits(4), in_header in any::<bool>()) {
        let (dir, good) = saved_model();
        let bytes = if in_header {
            // edit the JSON header as text, keeping the length prefix right
            with_header(&good, &mutate_text(&header_text(&good), &edits))
        } else {
            mutate_bytes(&good, &edits)
        };
        check_safetensors(dir.path(), &bytes)?;
    }
}
