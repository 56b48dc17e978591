//! Helpers shared by integration tests: reading golden fixtures and comparing tensors.
#![allow(dead_code)]

pub mod spmd;

use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Path of a committed fixture directory.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A reference file read fully into f32 / i64 vectors with shapes.
pub struct Reference {
    pub f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub i64s: HashMap<String, (Vec<usize>, Vec<i64>)>,
}

impl Reference {
    pub fn load(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let (mut f32s, mut i64s) = (HashMap::new(), HashMap::new());
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            match view.dtype() {
                Dtype::F32 => {
                    let v = view.data().chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                    f32s.insert(name, (shape, v));
                }
                Dtype::I64 => {
                    let v = view.data().chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
                    i64s.insert(name, (shape, v));
                }
                other => panic!("unexpected dtype {other:?} for {name}"),
            }
        }
        Reference { f32s, i64s }
    }

    pub fn f32(&self, name: &str) -> &[f32] {
        &self.f32s.get(name).unwrap_or_else(|| panic!("reference has no f32 tensor {name}")).1
    }

    pub fn i64(&self, name: &str) -> &[i64] {
        &self.i64s.get(name).unwrap_or_else(|| panic!("reference has no i64 tensor {name}")).1
    }
}

/// max |a − b|.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    // equal values (infinities of one sign, NaN against NaN) differ by 0; a NaN against a number,
    // or infinities against anything else, by +inf, which no tolerance admits (f32::max alone
    // would drop a NaN difference)
    let diff = |x: f32, y: f32| {
        if x == y || (x.is_nan() && y.is_nan()) {
            0.0
        } else {
            let d = (x - y).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        }
    };
    a.iter().zip(b).map(|(&x, &y)| diff(x, y)).fold(0.0, f32::max)
}

/// max |a − b| / max |b| (relative error at the scale of the tensor).
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().map(|x| x.abs()).fold(0.0, f32::max).max(1e-12);
    max_abs_diff(a, b) / scale
}

/// A run's metrics.jsonl lines without the wall-clock fields (`time_*`, `*_per_s`, `step_s`) and
/// the device's memory (`device_mem_mib`, the machine's state, and `device_peak_mib`, whose first
/// step after a start counts the loading: not the run's), so two runs of the same seed compare
/// equal.
pub fn metrics_without_clock(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().retain(|k, _| {
                !(k.starts_with("time_") || k.ends_with("_per_s") || k == "step_s" || k.starts_with("device_"))
            });
            v
        })
        .collect()
}

/// A tiny model configuration for gradient and update tests (2 layers, hidden 16, GQA 4/2, vocab 13).
pub fn tiny_config(arch: arbor::model::Arch, tied: bool) -> arbor::model::ModelConfig {
    arbor::model::ModelConfig {
        arch,
        hidden_size: 16,
        intermediate_size: 24,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        vocab_size: 13,
        max_position_embeddings: 32,
        tie_word_embeddings: tied,
        qkv_bias: arch == arbor::model::Arch::Qwen2,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    }
}

/// Set every RMSNorm weight (the layers', the final one's, Qwen3's head norms') to 1 + 0.2·N(0, 1),
/// so a weight read in the wrong place shows (initialisation sets them all to 1).
#[allow(dead_code)]
pub fn perturb_norms(params: &mut arbor::model::Params, seed: u64) {
    let mut rng = arbor::rng::Rng::new(seed);
    for spec in params.layout.specs.clone() {
        if spec.name.ends_with("norm.weight") {
            params.data[spec.range()].iter_mut().for_each(|x| *x = 1.0 + 0.2 * rng.normal() as f32);
        }
    }
}

/// Environment for Open MPI in the tests: root allowed, oversubscribed, shared memory and loopback
/// only (containers have no other network).
pub const OMPI_TEST_ENV: [(&str, &str); 7] = [
    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
    ("OMPI_MCA_rmaps_base_oversubscribe", "1"),
    ("OMPI_MCA_btl", "self,vader,tcp"),
    ("OMPI_MCA_btl_tcp_if_include", "lo"),
    ("OMPI_MCA_oob_tcp_if_include", "lo"),
    ("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
];

/// The addition job shrunk for tests: a 2-layer width-32 model, `sft_steps` supervised steps of 8
/// sequences, 8 held-out problems.
pub fn small_addition(sft_steps: u64) -> String {
    arbor::config::ADDITION_CONFIG
        .replace("hidden_size = 128", "hidden_size = 32")
        .replace("intermediate_size = 384", "intermediate_size = 64")
        .replace("num_layers = 4", "num_layers = 2")
        .replace("steps = 400", &format!("steps = {sft_steps}"))
        .replace("batch_size = 64", "batch_size = 8")
        .replace("eval_problems = 256", "eval_problems = 8")
}

/// The default job (Countdown warm start) shrunk for tests: 4 RL steps of 4 prompts, evals of
/// 20 problems every 2 steps, every checkpoint kept.
pub fn small_default() -> String {
    arbor::config::DEFAULT_CONFIG
        .replace("steps = 1500", "steps = 4")
        .replace("prompts_per_step = 32", "prompts_per_step = 4")
        .replace("eval_problems = 500", "eval_problems = 20")
        .replace("eval_samples = 4", "eval_samples = 1")
        .replace("eval_every = 500", "eval_every = 2")
        .replace("keep_checkpoints = 2", "keep_checkpoints = 10")
}

/// What [`slots_with_install`] returns: each request's completion, and the decode steps before
/// which it was admitted and after which it finished.
pub struct Streamed {
    pub completions: Vec<arbor::rollout::Completion>,
    pub admitted: Vec<usize>,
    pub finished: Vec<usize>,
}

/// Continuous batching on `engine`'s device (`train::decoding::EngineSlots`, `slots` slots of
/// `max_len` positions): `requests` admitted in order as slots free, each keyed by its index; before
/// decode step `install_at` the weights become `params_b` (sequences in flight keep their cache and
/// go on under them). One body for every backend.
pub fn slots_with_install(
    engine: arbor::train::engine::Engine,
    model: &mut arbor::model::Model,
    params_b: &[f32],
    requests: &[arbor::rollout::Request],
    cfg: &arbor::rollout::GenerateConfig,
    (slots, max_len, install_at): (usize, usize, usize),
) -> Streamed {
    let mut es = arbor::train::decoding::EngineSlots::new(engine, model, slots, max_len).unwrap();
    let n = requests.len();
    let mut out = Streamed { completions: vec![], admitted: vec![0; n], finished: vec![0; n] };
    let mut done: Vec<Option<arbor::rollout::Completion>> = vec![None; n];
    let (mut next, mut step) = (0, 0);
    loop {
        if step == install_at {
            model.params.data = params_b.to_vec();
            es.install(model).unwrap();
        }
        while es.has_free() && next < n {
            assert!(es.admit(next, &requests[next], cfg.step, cfg).is_none());
            out.admitted[next] = step;
            next += 1;
        }
        if es.busy() == 0 {
            break;
        }
        for (i, c) in es.step(model, cfg).unwrap() {
            (done[i], out.finished[i]) = (Some(c), step);
        }
        step += 1;
    }
    out.completions = done.into_iter().map(|c| c.expect("every request completes")).collect();
    out
}

/// Ids of the special tokens of [`write_bpe_model`]'s tokenizer.
pub const BPE_ENDOFTEXT: u32 = 258;
pub const BPE_IM_START: u32 = 259;
pub const BPE_IM_END: u32 = 260;
/// A chat template in that tokenizer's special tokens.
pub const BPE_TEMPLATE: &str = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n";

/// The byte ↔ character map of byte-level BPE (GPT-2, Qwen2): printable Latin-1 bytes stand for
/// themselves, the others for code points from U+0100 on, in byte order.
pub fn byte_level_chars() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 256u32;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// An HF model directory in the layout of a Hub chat model: a byte-level BPE `tokenizer.json`
/// (256 byte tokens, the merges `Ġ =` → 256 and `1 0` → 257, then `<|endoftext|>` 258,
/// `<|im_start|>` 259, `<|im_end|>` 260), a `tokenizer_config.json` naming `<|im_end|>` as its eos
/// and `<|endoftext|>` as its pad, a `generation_config.json` with both as `eos_token_id`, and a
/// fresh 2-layer Qwen2 of vocabulary 264 (seed `seed`) whose `config.json` names only 258.
pub fn write_bpe_model(dir: &Path, seed: u64) {
    let chars = byte_level_chars();
    let mut vocab = serde_json::Map::new();
    for (b, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), serde_json::json!(b));
    }
    let space = chars[b' ' as usize];
    vocab.insert(format!("{space}="), serde_json::json!(256));
    vocab.insert("10".into(), serde_json::json!(257));
    let added = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                           "normalized": false, "special": true})
    };
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                                        "use_regex": true});
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(BPE_ENDOFTEXT, "<|endoftext|>"), added(BPE_IM_START, "<|im_start|>"),
                         added(BPE_IM_END, "<|im_end|>")],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": [format!("{space} ="), "1 0".to_string()]},
    });
    std::fs::create_dir_all(dir).unwrap();
    let cfg = arbor::model::ModelConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        vocab_size: 264,
        max_position_embeddings: 128,
        eos_token_ids: vec![BPE_ENDOFTEXT],
        ..tiny_config(arbor::model::Arch::Qwen2, false)
    };
    let params = arbor::model::init::init_params(&cfg, seed, 0.02);
    arbor::io::save_hf_dir(dir, &cfg, &params, &arbor::io::SaveOptions::default()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tokenizer).unwrap()).unwrap();
    let tcfg = serde_json::json!({"tokenizer_class": "Qwen2Tokenizer", "bos_token": null,
                                  "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"});
    std::fs::write(dir.join("tokenizer_config.json"), tcfg.to_string()).unwrap();
    let gen = serde_json::json!({"eos_token_id": [BPE_IM_END, BPE_ENDOFTEXT], "do_sample": true});
    std::fs::write(dir.join("generation_config.json"), gen.to_string()).unwrap();
}
