//! HF checkpoint I/O: round trips (f32 bit-exact, sharded, bf16/f16 rounding), bad input naming the file and
//! key/tensor, atomic saves, and the `arbor convert` / `arbor inspect` commands.

use arbor::cli::convert::{self, ConvertArgs};
use arbor::cli::inspect::{self, InspectArgs};
use arbor::io::{load_hf_dir, load_hf_dir_with_report, save_hf_dir, SaveOptions, StoreDtype};
use arbor::model::{ModelConfig, Params};
use arbor::tokenizer::{CharTokenizer, Tokenizer};
use safetensors::{Dtype, View};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

/// Qwen2: q/k/v biases, GQA (4 heads / 2 KV heads), untied LM head.
fn qwen2_json() -> Value {
    json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 16,
           "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 40, "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "tie_word_embeddings": false, "sliding_window": 64})
}

/// LLaMA: no biases, tied embeddings.
fn llama_json() -> Value {
    json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 12,
           "intermediate_size": 20, "num_hidden_layers": 2, "num_attention_heads": 3, "num_key_value_heads": 3,
           "vocab_size": 30, "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "tie_word_embeddings": true})
}

fn config(v: &Value) -> ModelConfig {
    ModelConfig::from_hf_json(v, Path::new("test-config.json")).expect("valid test config")
}

/// Parameters with deterministic pseudo-random values spanning several magnitudes (splitmix64).
fn random_params(cfg: &ModelConfig, seed: u64) -> Params {
    let mut p = Params::zeros(cfg);
    let mut s = seed;
    for x in p.data.iter_mut() {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = (z >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        *x = ((u - 0.5) * 10f64.powi((z % 5) as i32 - 3)) as f32;
    }
    p
}

fn assert_bit_identical(a: &Params, b: &Params) {
    assert_eq!(a.layout.specs, b.layout.specs);
    for spec in &a.layout.specs {
        let (x, y) = (&a.data[spec.range()], &b.data[spec.range()]);
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "tensor {} differs after round trip", spec.name);
    }
}

fn tensor_names(file: &Path) -> Vec<String> {
    let bytes = std::fs::read(file).expect("read safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
}

/// Every file in `dir` with its bytes (to check a failed operation touched nothing).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("dir entry");
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default())
        })
        .collect()
}

/// A raw tensor for writing hand-made safetensors files.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Write `params` as model.safetensors in `dir`, letting `edit` change/add/remove raw tensors first.
fn write_custom(dir: &Path, cfg_json: &Value, params: &Params, edit: impl FnOnce(&mut BTreeMap<String, Raw>)) {
    std::fs::write(dir.join("config.json"), cfg_json.to_string()).expect("write config");
    let mut raw: BTreeMap<String, Raw> = params
        .layout
        .specs
        .iter()
        .map(|s| {
            let bytes = bytemuck::cast_slice(&params.data[s.range()]).to_vec();
            (s.name.clone(), Raw { dtype: Dtype::F32, shape: s.shape.clone(), bytes })
        })
        .collect();
    edit(&mut raw);
    safetensors::serialize_to_file(raw, None, &dir.join("model.safetensors")).expect("write safetensors");
}

/// An edit of a safetensors file's JSON header.
type HeaderEdit = fn(&mut serde_json::Map<String, Value>);

/// Save `params` as arbor does, then rewrite the JSON header of `model.safetensors` with `edit`
/// (the data section is kept as it is).
fn write_custom_header(dir: &Path, cfg_json: &Value, params: &Params, edit: HeaderEdit) {
    save_hf_dir(dir, &config(cfg_json), params, &SaveOptions::default()).expect("save");
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    edit(&mut header);
    let text = Value::Object(header).to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&file, out).expect("write");
}

#[test]
fn qwen2_f32_round_trip_is_bit_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&qwen2_json());
    let params = random_params(&cfg, 1);
    let summary = save_hf_dir(dir.path(), &cfg, &params, &SaveOptions::default()).expect("save");
    assert_eq!(summary.files, vec!["model.safetensors"]);
    let (cfg2, params2) = load_hf_dir(dir.path()).expect("load");
    assert_eq!(cfg, cfg2);
    assert_bit_identical(&params, &params2);
    let names = tensor_names(&dir.path().join("model.safetensors"));
    assert!(names.contains(&"lm_head.weight".to_string()));
    assert!(names.contains(&"model.layers.1.self_attn.k_proj.bias".to_string()));
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).expect("config")).expect("json");
    assert_eq!(written["torch_dtype"], "float32");
    let header = arbor::io::tensor_file::read_header(&dir.path().join("model.safetensors")).expect("header");
    assert_eq!(header.metadata.expect("metadata")["format"], "pt");
}

#[test]
fn llama_tied_round_trip_is_bit_identical_and_has_no_lm_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&llama_json());
    let params = random_params(&cfg, 2);
    save_hf_dir(dir.path(), &cfg, &params, &SaveOptions::default()).expect("save");
    let (cfg2, params2) = load_hf_dir(dir.path()).expect("load");
    assert_eq!(cfg, cfg2);
    assert_bit_identical(&params, &params2);
    let names = tensor_names(&dir.path().join("model.safetensors"));
    assert!(!names.contains(&"lm_head.weight".to_string()));
    assert_eq!(names.len(), params.layout.specs.len());
}

#[test]
fn sharded_round_trip_is_bit_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&qwen2_json());
    let params = random_params(&cfg, 3);
    let opts = SaveOptions { max_shard_bytes: Some(4096), ..Default::default() };
    let summary = save_hf_dir(dir.path(), &cfg, &params, &opts).expect("save");
    let n = summary.files.len();
    assert!(n >= 3, "expected >= 3 shards, got {n}");
    assert_eq!(summary.files[0], format!("model-00001-of-{n:05}.safetensors"));
    assert!(!dir.path().join("model.safetensors").exists());
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).expect("index"))
            .expect("json");
    assert_eq!(index["metadata"]["total_size"], json!(params.data.len() * 4));
    assert_eq!(index["weight_map"].as_object().expect("map").len(), params.layout.specs.len());
    let loaded = load_hf_dir_with_report(dir.path()).expect("load");
    assert_eq!(loaded.files.len(), n);
    assert_bit_identical(&params, &loaded.params);

    // Saving unsharded into the same directory removes the shards and index (loaders must not see stale weights).
    save_hf_dir(dir.path(), &cfg, &params, &SaveOptions::default()).expect("resave");
    let files = snapshot(dir.path());
    assert_eq!(files.keys().collect::<Vec<_>>(), ["config.json", "model.safetensors"]);
}

#[test]
fn bf16_and_f16_saves_load_as_rounded_values() {
    for (dtype, torch, tag) in [(StoreDtype::BF16, "bfloat16", "BF16"), (StoreDtype::F16, "float16", "F16")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(&qwen2_json());
        let params = random_params(&cfg, 4);
        let summary =
            save_hf_dir(dir.path(), &cfg, &params, &SaveOptions { dtype, ..Default::default() }).expect("save");
        assert_eq!(summary.tensor_bytes, (params.data.len() * 2) as u64);
        let loaded = load_hf_dir_with_report(dir.path()).expect("load");
        assert_eq!(loaded.dtypes.keys().collect::<Vec<_>>(), [tag]);
        for (i, (x, y)) in params.data.iter().zip(&loaded.params.data).enumerate() {
            assert_eq!(dtype.round_trip(*x).to_bits(), y.to_bits(), "{dtype} element {i}: {x} -> {y}");
        }
        let written = std::fs::read_to_string(dir.path().join("config.json")).expect("config");
        assert!(written.contains(&format!("\"torch_dtype\": \"{torch}\"")), "{written}");
    }
}

#[test]
fn tied_lm_head_and_unknown_tensors_are_ignored_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_json = llama_json();
    let cfg = config(&cfg_json);
    let params = random_params(&cfg, 5);
    write_custom(dir.path(), &cfg_json, &params, |raw| {
        let embed = &raw["model.embed_tokens.weight"];
        let head = Raw { dtype: Dtype::F32, shape: embed.shape.clone(), bytes: vec![0; embed.bytes.len()] };
        raw.insert("lm_head.weight".into(), head);
        let inv = Raw { dtype: Dtype::F32, shape: vec![2], bytes: vec![0; 8] };
        raw.insert("model.layers.0.self_attn.rotary_emb.inv_freq".into(), inv);
    });
    let loaded = load_hf_dir_with_report(dir.path()).expect("load");
    assert_bit_identical(&params, &loaded.params);
    assert_eq!(loaded.ignored, ["lm_head.weight", "model.layers.0.self_attn.rotary_emb.inv_freq"]);
}

#[test]
fn missing_config_key_names_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg_json = qwen2_json();
    cfg_json.as_object_mut().expect("object").remove("hidden_size");
    std::fs::write(dir.path().join("config.json"), cfg_json.to_string()).expect("write");
    let msg = load_hf_dir(dir.path()).expect_err("must fail").to_string();
    assert!(msg.contains("config.json") && msg.contains("hidden_size"), "{msg}");
}

#[test]
fn wrong_tensor_shape_names_file_tensor_and_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_json = qwen2_json();
    let params = random_params(&config(&cfg_json), 6);
    write_custom(dir.path(), &cfg_json, &params, |raw| {
        if let Some(t) = raw.get_mut("model.layers.1.mlp.down_proj.weight") {
            t.shape = vec![24, 16]; // transposed: [C, I] expected
        }
    });
    let msg = load_hf_dir(dir.path()).expect_err("must fail").to_string();
    assert!(msg.contains("model.safetensors") && msg.contains("model.layers.1.mlp.down_proj.weight"), "{msg}");
    assert!(msg.contains("[16, 24]") && msg.contains("[24, 16]"), "{msg}");
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    for (dtype, tag) in [(Dtype::I32, "I32"), (Dtype::U8, "U8")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg_json = llama_json();
        let params = random_params(&config(&cfg_json), 7);
        write_custom(dir.path(), &cfg_json, &params, |raw| {
            if let Some(t) = raw.get_mut("model.norm.weight") {
                let n: usize = t.shape.iter().product();
                t.dtype = dtype;
                t.bytes = vec![1; n * dtype.bitsize() / 8];
            }
        });
        let msg = load_hf_dir(dir.path()).expect_err("must fail").to_string();
        assert!(msg.contains("model.safetensors") && msg.contains("model.norm.weight") && msg.contains(tag), "{msg}");
    }
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_json = qwen2_json();
    let params = random_params(&config(&cfg_json), 8);
    write_custom(dir.path(), &cfg_json, &params, |raw| {
        raw.remove("model.layers.0.self_attn.v_proj.bias");
    });
    let msg = load_hf_dir(dir.path()).expect_err("must fail").to_string();
    assert!(msg.contains("model.safetensors") && msg.contains("model.layers.0.self_attn.v_proj.bias"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn tensor_missing_from_shard_index_names_index_and_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&qwen2_json());
    let opts = SaveOptions { max_shard_bytes: Some(4096), ..Default::default() };
    save_hf_dir(dir.path(), &cfg, &random_params(&cfg, 9), &opts).expect("save");
    let path = dir.path().join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    index["weight_map"].as_object_mut().expect("map").remove("model.norm.weight");
    std::fs::write(&path, index.to_string()).expect("write");
    let msg = load_hf_dir(dir.path()).expect_err("must fail").to_string();
    assert!(msg.contains("model.safetensors.index.json") && msg.contains("model.norm.weight"), "{msg}");
}

#[test]
fn truncated_or_corrupt_safetensors_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&llama_json());
    save_hf_dir(dir.path(), &cfg, &random_params(&cfg, 10), &SaveOptions::default()).expect("save");
    let file = dir.path().join("model.safetensors");
    let good = std::fs::read(&file).expect("read");
    let header_len = u64::from_le_bytes(good[..8].try_into().expect("8 bytes")) as usize;
    let cuts = [0, 3, 8, 8 + header_len / 2, 8 + header_len, good.len() / 2, good.len() - 1];
    for cut in cuts {
        std::fs::write(&file, &good[..cut]).expect("write truncated");
        let msg = load_hf_dir(dir.path()).expect_err("truncated file must fail").to_string();
        assert!(msg.contains("model.safetensors"), "cut at {cut}: {msg}");
        let inspected = inspect::run(&InspectArgs {
            path: file.clone(),
            stats_max_numel: 1 << 16,
            sample: None,
            model: None,
            fci_step_gap: None,
        });
        assert!(inspected.is_err(), "inspect accepted a file cut at {cut}");
    }
    let mut garbage = good.clone();
    garbage[8..8 + header_len].fill(b'x');
    std::fs::write(&file, &garbage).expect("write garbage");
    let msg = load_hf_dir(dir.path()).expect_err("corrupt header must fail").to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn failed_save_leaves_existing_files_untouched_and_no_temporaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&qwen2_json());
    save_hf_dir(dir.path(), &cfg, &random_params(&cfg, 11), &SaveOptions::default()).expect("first save");
    let before = snapshot(dir.path());
    // Block the temporary file of the second shard with a directory so the save fails midway.
    let opts = SaveOptions { max_shard_bytes: Some(4096), ..Default::default() };
    let blocker =
        |n: usize| dir.path().join(format!(".model-00002-of-{n:05}.safetensors.arbor-tmp-{}", std::process::id()));
    let n = save_hf_dir(tempfile::tempdir().expect("tempdir").path(), &cfg, &random_params(&cfg, 12), &opts)
        .expect("probe save")
        .files
        .len();
    std::fs::create_dir(blocker(n)).expect("blocker");
    let err = save_hf_dir(dir.path(), &cfg, &random_params(&cfg, 12), &opts);
    assert!(err.is_err(), "save into a blocked temp path must fail");
    std::fs::remove_dir(blocker(n)).expect("remove blocker");
    assert_eq!(snapshot(dir.path()), before, "a failed save changed the directory");
}

#[test]
fn save_rejects_params_of_another_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let params = random_params(&config(&llama_json()), 13);
    let err = save_hf_dir(dir.path(), &config(&qwen2_json()), &params, &SaveOptions::default());
    assert!(err.is_err());
    assert!(snapshot(dir.path()).is_empty());
}

fn convert_args(from: &Path, to: Option<&Path>) -> ConvertArgs {
    ConvertArgs {
        from: format!("hf:{}", from.display()),
        to: to.map(Path::to_path_buf),
        dtype: StoreDtype::F32,
        max_shard_size_mb: None,
        force: false,
    }
}

#[test]
fn convert_copies_model_and_tokenizer_and_keeps_extra_config_keys() {
    let root = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (root.path().join("src"), root.path().join("dst"));
    let cfg = config(&qwen2_json());
    let params = random_params(&cfg, 14);
    let opts = SaveOptions { max_shard_bytes: Some(4096), base_config: Some(qwen2_json()), ..Default::default() };
    save_hf_dir(&src, &cfg, &params, &opts).expect("save source");
    Tokenizer::from(CharTokenizer::default()).save_to_dir(&src).expect("save tokenizer");
    let before = snapshot(&src);

    convert::run(&convert_args(&src, None)).expect("check-only convert");
    convert::run(&convert_args(&src, Some(&dst))).expect("convert");
    assert_eq!(snapshot(&src), before, "convert modified its source");
    let (cfg2, params2) = load_hf_dir(&dst).expect("load converted");
    assert_eq!(cfg, cfg2);
    assert_bit_identical(&params, &params2);
    assert!(dst.join("model.safetensors").is_file());
    let tok = Tokenizer::from_dir(&dst).expect("tokenizer loads").expect("tokenizer present");
    assert_eq!(tok.encode("12+3=15\n").expect("encode"), CharTokenizer::default().encode("12+3=15\n").expect("enc"));
    let written = std::fs::read_to_string(dst.join("config.json")).expect("config");
    assert!(written.contains("sliding_window"), "extra key lost: {written}");

    // Refusals: into the source itself, into a non-empty destination without --force.
    let msg = convert::run(&convert_args(&src, Some(&src))).expect_err("same dir").to_string();
    assert!(msg.contains("source"), "{msg}");
    let msg = convert::run(&convert_args(&src, Some(&dst))).expect_err("non-empty").to_string();
    assert!(msg.contains("not empty") && msg.contains("--force"), "{msg}");
    let mut args = convert_args(&src, Some(&dst));
    args.force = true;
    args.dtype = StoreDtype::BF16;
    convert::run(&args).expect("forced bf16 convert");
    let loaded = load_hf_dir_with_report(&dst).expect("load bf16");
    assert_eq!(loaded.dtypes.keys().collect::<Vec<_>>(), ["BF16"]);
    assert_eq!(snapshot(&src), before, "convert modified its source");
    // forced over a model with a tokenizer, from a source without one: the old tokenizer goes
    let bare = root.path().join("bare");
    save_hf_dir(&bare, &cfg, &params, &SaveOptions::default()).expect("save bare");
    let mut args = convert_args(&bare, Some(&dst));
    args.force = true;
    convert::run(&args).expect("forced convert of a bare model");
    assert!(Tokenizer::from_dir(&dst).expect("reads").is_none(), "another model's tokenizer stayed");
    // a shard size no byte count holds is refused, not wrapped
    let mut args = convert_args(&src, Some(&root.path().join("huge")));
    args.max_shard_size_mb = Some(u64::MAX / 1024);
    let msg = format!("{:#}", convert::run(&args).expect_err("overflow"));
    assert!(msg.contains("--max-shard-size-mb"), "{msg}");
}

#[test]
fn convert_of_a_broken_source_writes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (root.path().join("src"), root.path().join("dst"));
    std::fs::create_dir(&src).expect("mkdir");
    let cfg_json = qwen2_json();
    write_custom(&src, &cfg_json, &random_params(&config(&cfg_json), 15), |raw| {
        raw.remove("lm_head.weight");
    });
    let msg = convert::run(&convert_args(&src, Some(&dst))).expect_err("must fail");
    assert!(format!("{msg:#}").contains("lm_head.weight"), "{msg:#}");
    assert!(!dst.exists() || snapshot(&dst).is_empty());
}

#[test]
fn inspect_reports_models_and_rejects_hdf5() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&qwen2_json());
    save_hf_dir(dir.path(), &cfg, &random_params(&cfg, 16), &SaveOptions::default()).expect("save");
    let args = |p: &Path| InspectArgs {
        path: p.to_path_buf(),
        stats_max_numel: 1 << 16,
        sample: None,
        model: None,
        fci_step_gap: None,
    };
    inspect::run(&args(dir.path())).expect("inspect dir");
    inspect::run(&args(&dir.path().join("config.json"))).expect("inspect config");
    inspect::run(&args(&dir.path().join("model.safetensors"))).expect("inspect file");
    let msg = inspect::run(&args(Path::new("runs/x/trajectories.h5"))).expect_err("h5").to_string();
    assert!(msg.contains("runs/x/trajectories.h5"), "{msg}");
    let msg = inspect::run(&args(&dir.path().join("nope"))).expect_err("missing").to_string();
    assert!(msg.contains("nope"), "{msg}");
}

#[test]
fn committed_fixtures_load_save_load_bit_identical() {
    for name in ["qwen2_tiny", "llama_tiny", "qwen3_tiny", "llama3_rope_tiny", "mistral_tiny", "qwen2_yarn_tiny"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let before = snapshot(&src);
        let original = load_hf_dir_with_report(&src).expect("fixture loads");
        assert!(original.ignored.iter().all(|n| n == "lm_head.weight"), "{name}: {:?}", original.ignored);
        for max_shard_bytes in [None, Some(64 * 1024)] {
            let dst = tempfile::tempdir().expect("tempdir");
            let opts = SaveOptions { max_shard_bytes, ..Default::default() };
            save_hf_dir(dst.path(), &original.config, &original.params, &opts).expect("save");
            let (cfg, params) = load_hf_dir(dst.path()).expect("reload");
            assert_eq!(cfg, original.config, "{name}");
            assert_bit_identical(&original.params, &params);
        }
        assert_eq!(snapshot(&src), before, "{name}: fixture modified");
    }
}

#[test]
fn absurd_header_values_are_errors_not_panics() {
    let headers = [
        r#"{"model.norm.weight":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,8]}}"#,
        r#"{"model.norm.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}}"#,
        r#"{"model.norm.weight":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
        r#"{"model.norm.weight":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,8]}}"#,
        r#"{"model.norm.weight":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
        r#"[1, 2, 3]"#,
    ];
    for header in headers {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), llama_json().to_string()).expect("config");
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0u8; 8]);
        let file = dir.path().join("model.safetensors");
        std::fs::write(&file, &bytes).expect("write");
        let msg = load_hf_dir(dir.path()).expect_err("must fail").to_string();
        assert!(msg.contains("model.safetensors"), "{header}: {msg}");
        if header.contains("Q4_K") {
            assert!(msg.contains("`model.norm.weight`") && msg.contains("unknown dtype \"Q4_K\""), "{msg}");
        }
        // inspect refuses every one of them, the unknown dtype included (train refuses it too)
        for path in [file.clone(), dir.path().to_path_buf()] {
            let inspected = inspect::run(&InspectArgs {
                path: path.clone(),
                stats_max_numel: 1 << 16,
                sample: None,
                model: None,
                fci_step_gap: None,
            });
            assert!(inspected.is_err(), "{header}: inspect {} passed", path.display());
        }
    }
}

#[test]
fn inspect_fails_on_weights_that_train_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_json = llama_json();
    let cfg = config(&cfg_json);
    let params = random_params(&cfg, 17);
    // a layout tensor stored as I32, an extra tensor with a dtype tag safetensors does not know
    let cases: [(&str, HeaderEdit); 2] = [
        ("unsupported dtype I32", |raw| {
            raw["model.norm.weight"]["dtype"] = json!("I32");
        }),
        ("unknown dtype \"Q4_K\"", |raw| {
            let at = raw.values().filter_map(|t| t["data_offsets"][1].as_u64()).max().unwrap_or(0);
            raw.insert("extra.q4".into(), json!({"dtype": "Q4_K", "shape": [0], "data_offsets": [at, at]}));
        }),
    ];
    for (want, edit) in cases {
        write_custom_header(dir.path(), &cfg_json, &params, edit);
        let load = load_hf_dir(dir.path()).expect_err("train refuses").to_string();
        assert!(load.contains(want), "{want}: {load}");
        let args = InspectArgs {
            path: dir.path().to_path_buf(),
            stats_max_numel: 1 << 16,
            sample: None,
            model: None,
            fci_step_gap: None,
        };
        let msg = inspect::run(&args).expect_err("inspect must fail").to_string();
        assert!(msg.contains("problem(s)") && msg.contains("arbor train"), "{want}: {msg}");
    }
}

#[test]
fn a_config_larger_than_its_weights_is_refused_before_allocating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&qwen2_json());
    save_hf_dir(dir.path(), &cfg, &random_params(&cfg, 2), &SaveOptions::default()).expect("save");
    // a config.json edited to sizes that pass the dimension checks (2^38 parameters, ~1 TiB of
    // f32) but that the few-KiB weights file cannot hold: refused, nothing allocated
    let mut big = qwen2_json();
    big["vocab_size"] = serde_json::json!(1u64 << 30);
    big["hidden_size"] = serde_json::json!(256);
    std::fs::write(dir.path().join("config.json"), big.to_string()).expect("write");
    let e = load_hf_dir(dir.path()).expect_err("a config bigger than its weights").to_string();
    assert!(e.contains("config.json") && e.contains("model.safetensors) hold"), "{e}");
}
