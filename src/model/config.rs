//! Model hyper-parameters, read from (and written back to) a Hugging Face `config.json`.

use crate::error::{Error, Result};
pub use crate::model::rope_scaling::RopeScaling;
use serde_json::{json, Map, Value};
use std::path::Path;

/// Most elements arbor builds from a config: parameters, and entries of the RoPE table (2^40,
/// 4 TiB of f32): beyond any machine it runs on, and far below where sizes overflow.
const MAX_ELEMENTS: u128 = 1 << 40;
/// Most decoder layers a config may have (the layout lists every layer's tensors).
const MAX_LAYERS: usize = 1 << 16;

/// Which HF architecture family a model belongs to (decides names in `config.json` and q/k/v biases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `Qwen2ForCausalLM`: q/k/v projections carry biases.
    Qwen2,
    /// `LlamaForCausalLM`: no biases (`attention_bias = true`, which adds o_proj's too, is refused).
    Llama,
    /// `Qwen3ForCausalLM`: no biases (as Llama), and an RMSNorm over each query and key head
    /// before RoPE (`q_norm`, `k_norm`: one weight of head_dim values each, shared by the heads).
    Qwen3,
    /// `MistralForCausalLM`: Llama's layers under Mistral's names; a sliding window shorter than
    /// the context is refused.
    Mistral,
}

impl Arch {
    /// Every architecture, in the order messages list them.
    pub const ALL: [Arch; 4] = [Arch::Qwen2, Arch::Qwen3, Arch::Llama, Arch::Mistral];

    /// HF's names: (`model_type`, the `architectures` class).
    pub fn hf_names(self) -> (&'static str, &'static str) {
        match self {
            Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
            Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
            Arch::Llama => ("llama", "LlamaForCausalLM"),
            Arch::Mistral => ("mistral", "MistralForCausalLM"),
        }
    }

    /// The architecture of a `model_type` (also `[model] arch`'s values).
    pub fn from_model_type(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.hf_names().0 == name)
    }

    /// The supported `model_type`s, quoted, for messages: `"qwen2", "qwen3", …`.
    pub fn names() -> String {
        Arch::ALL.map(|a| format!("{:?}", a.hf_names().0)).join(", ")
    }
}

/// Decoder-only transformer shape. Letters used in shape comments across the crate:
/// C = hidden_size, I = intermediate_size, L = num_layers, H = num_heads, KV = num_kv_heads,
/// D = head_dim, V = vocab_size, N = tokens in a packed batch, T = length of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// RoPE's frequencies rescaled for longer contexts (`rope_scaling` / `rope_parameters` of
    /// `config.json`); `None`: default RoPE.
    pub rope_scaling: Option<RopeScaling>,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (Qwen2: always; LLaMA: never, see [`Arch::Llama`]).
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    /// `eos_token_id`: one id or several (an instruct model's end of turn and end of text), in
    /// `config.json`'s order; written back the same way.
    pub eos_token_ids: Vec<u32>,
}

/// The token ids of `key` in an HF JSON object (`config.json`, `generation_config.json`): one id
/// or a list of them; none when the key is absent or null. `file` is named in errors.
pub fn token_ids(v: &Value, key: &str, file: &Path) -> Result<Vec<u32>> {
    let err = |msg: String| Error::Config { file: file.into(), key: key.into(), msg };
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| err(format!("expected token ids, got {}", Value::Array(a.clone())))),
        Some(x) => x
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(|id| vec![id])
            .ok_or_else(|| err(format!("expected a token id, got {x}"))),
    }
}

impl ModelConfig {
    /// Whether each query and key head is RMS-normed before RoPE (Qwen3's q_norm and k_norm).
    pub fn qk_norm(&self) -> bool {
        self.arch == Arch::Qwen3
    }

    /// Width of the fused q|k|v projection output: (H + 2·KV)·D.
    pub fn qkv_dim(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    /// Elements of one layer's keys (or values) in a device KV cache of `slots` sequences of
    /// `max_len` positions: (slots + 1)·KV·max_len·D (a spare slot that the padding rows of a
    /// captured decode step write into; `cuda::kv_cache`, `train::memory_plan`).
    pub fn kv_cache_elems(&self, slots: usize, max_len: usize) -> usize {
        (slots + 1) * self.num_kv_heads * max_len * self.head_dim
    }

    /// Width of the attention output before o_proj: H·D.
    pub fn attn_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Check internal consistency; `file` names the source in the error.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::Config { file: file.into(), key: key.into(), msg });
        for (key, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(key, "must be positive".into());
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(
                "num_key_value_heads",
                format!("{} does not divide num_attention_heads = {}", self.num_kv_heads, self.num_heads),
            );
        }
        if self.arch != Arch::Qwen2 && self.qkv_bias {
            // (written back as `attention_bias = true`, which gives o_proj a bias arbor lacks)
            return bad(
                "attention_bias",
                "llama or qwen3 with q/k/v biases is not supported (HF adds an o_proj bias)".into(),
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad("head_dim", format!("{} must be even for RoPE", self.head_dim));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return bad("rms_norm_eps", format!("{} must be positive", self.rms_norm_eps));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return bad("rope_theta", format!("{} must be positive", self.rope_theta));
        }
        // sizes that would overflow the layout's arithmetic or ask for an absurd allocation
        // (the layout and the RoPE table are built from these numbers before any weight is read)
        if self.num_layers > MAX_LAYERS {
            return bad("num_hidden_layers", format!("{} is more than arbor supports (2^16)", self.num_layers));
        }
        let params = self.param_count_u128();
        if params > MAX_ELEMENTS {
            return bad(
                "hidden_size",
                format!(
                    "the dimensions (hidden_size {}, intermediate_size {}, {} layers, {} heads of {}, vocab {}) \
                     make {params} parameters, more than arbor supports (2^40)",
                    self.hidden_size,
                    self.intermediate_size,
                    self.num_layers,
                    self.num_heads,
                    self.head_dim,
                    self.vocab_size
                ),
            );
        }
        let rope = (self.max_position_embeddings as u128).saturating_mul(self.head_dim as u128);
        if rope > MAX_ELEMENTS {
            return bad(
                "max_position_embeddings",
                format!(
                    "{} positions × head_dim {} is more than arbor's RoPE table supports (2^40)",
                    self.max_position_embeddings, self.head_dim
                ),
            );
        }
        Ok(())
    }

    /// Host bytes that training this model needs at the least: 16 per parameter (f32 weights,
    /// gradients and AdamW's two moments) plus the RoPE table (max_position_embeddings × head_dim
    /// f32), saturating at `u128::MAX`.
    pub fn training_bytes(&self) -> u128 {
        let rope = (self.max_position_embeddings as u128).saturating_mul(self.head_dim as u128).saturating_mul(4);
        self.param_count_u128().saturating_mul(16).saturating_add(rope)
    }

    /// What is wrong when training this model needs more than the `available` memory (the
    /// dimensions by their `[model]` keys, the parameters and the bytes); `None` when it fits.
    pub fn memory_shortfall(&self, available: &super::host_memory::HostMemory) -> Option<String> {
        let need = self.training_bytes();
        let super::host_memory::HostMemory { bytes: available, source } = available;
        (need > u128::from(*available)).then(|| {
            format!(
                "hidden_size {}, intermediate_size {}, num_layers {}, num_heads {} (head_dim {}), \
                 max_position_embeddings {} and the vocabulary of {} make {} parameters: training them needs at least \
                 {need} bytes (16 per parameter for the weights, gradients and two AdamW moments, plus the RoPE \
                 table), more than the memory this process may use, {available} bytes ({source})",
                self.hidden_size,
                self.intermediate_size,
                self.num_layers,
                self.num_heads,
                self.head_dim,
                self.max_position_embeddings,
                self.vocab_size,
                self.param_count_u128()
            )
        })
    }

    /// [`ModelConfig::memory_shortfall`] worded for a model read from an HF `config.json` (its
    /// keys, not `[model]`'s).
    pub fn hf_memory_shortfall(&self, available: &super::host_memory::HostMemory) -> Option<String> {
        let need = self.training_bytes();
        let super::host_memory::HostMemory { bytes: available, source } = available;
        (need > u128::from(*available)).then(|| {
            format!(
                "hidden_size {}, intermediate_size {}, num_hidden_layers {} and vocab_size {} make {} parameters: \
                 training them needs at least {need} bytes (16 per parameter for the weights, gradients and two AdamW \
                 moments, plus the RoPE table), more than the memory this process may use, {available} bytes ({source})",
                self.hidden_size,
                self.intermediate_size,
                self.num_layers,
                self.vocab_size,
                self.param_count_u128()
            )
        })
    }

    /// The parameter count of [`crate::model::ParamLayout::new`], computed without overflow
    /// (saturating at `u128::MAX`) so absurd dimensions can be refused before the layout is built.
    fn param_count_u128(&self) -> u128 {
        let n = |x: usize| x as u128;
        let (c, i, d, v) = (n(self.hidden_size), n(self.intermediate_size), n(self.head_dim), n(self.vocab_size));
        let (q, kv) = (n(self.num_heads).saturating_mul(d), n(self.num_kv_heads).saturating_mul(d));
        let qkv = q.saturating_add(kv.saturating_mul(2));
        let per_layer = [
            c.saturating_mul(2),                                  // the two norms
            qkv.saturating_mul(c),                                // q, k, v
            if self.qkv_bias { qkv } else { 0 },                  // their biases
            if self.qk_norm() { d.saturating_mul(2) } else { 0 }, // q_norm, k_norm
            c.saturating_mul(q),                                  // o_proj
            i.saturating_mul(c).saturating_mul(3),                // gate, up, down
        ]
        .into_iter()
        .fold(0u128, u128::saturating_add);
        let embed = v.saturating_mul(c);
        let head = if self.tie_word_embeddings { 0 } else { embed };
        n(self.num_layers).saturating_mul(per_layer).saturating_add(embed).saturating_add(head).saturating_add(c)
    }

    /// Parse an HF `config.json` file.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            file: path.into(),
            key: "<json>".into(),
            msg: format!("not valid JSON: {e}"),
        })?;
        Self::from_hf_json(&value, path)
    }

    /// Parse an HF `config.json` already read into a JSON value; `file` is used in errors.
    pub fn from_hf_json(v: &Value, file: &Path) -> Result<Self> {
        let obj = v.as_object().ok_or_else(|| Error::Config {
            file: file.into(),
            key: "<root>".into(),
            msg: "expected a JSON object".into(),
        })?;
        let err = |key: &str, msg: &str| Error::Config { file: file.into(), key: key.into(), msg: msg.into() };
        let req_usize = |key: &str| -> Result<usize> {
            let x = obj.get(key).ok_or_else(|| err(key, "missing (required)"))?;
            x.as_u64().map(|n| n as usize).ok_or_else(|| err(key, &format!("expected a non-negative integer, got {x}")))
        };
        let opt_usize = |key: &str| -> Result<Option<usize>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| err(key, &format!("expected a non-negative integer, got {x}"))),
            }
        };
        let opt_f64 = |key: &str, default: f64| -> Result<f64> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x.as_f64().ok_or_else(|| err(key, &format!("expected a number, got {x}"))),
            }
        };
        let opt_bool = |key: &str, default: bool| -> Result<bool> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x.as_bool().ok_or_else(|| err(key, &format!("expected true/false, got {x}"))),
            }
        };
        let model_type = obj.get("model_type").and_then(Value::as_str).unwrap_or("");
        let archs: Vec<&str> = obj
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let named = |a: &Arch| a.hf_names().0 == model_type || archs.contains(&a.hf_names().1);
        let Some(arch) = Arch::ALL.into_iter().find(named) else {
            let msg = format!("unsupported model_type {model_type:?} (supported: {})", Arch::names());
            return Err(err("model_type", &msg));
        };
        // RoPE: transformers < 5 writes `rope_theta` (+ optional `rope_scaling`); transformers 5
        // writes `rope_parameters: {rope_theta, rope_type, ...}`. Both are read (rope_scaling.rs).
        let rope_scaling = RopeScaling::from_hf(obj, file)?;
        // HF rotates only the first head_dim·partial_rotary_factor dimensions of each head; arbor
        // rotates all of them
        let nested = |section: &str| obj.get(section).and_then(|r| r.get("partial_rotary_factor"));
        let partial = [
            ("partial_rotary_factor", obj.get("partial_rotary_factor")),
            ("rope_parameters.partial_rotary_factor", nested("rope_parameters")),
            ("rope_scaling.partial_rotary_factor", nested("rope_scaling")),
        ];
        for (key, value) in partial {
            match value {
                None | Some(Value::Null) => {}
                Some(x) if x.as_f64() == Some(1.0) => {}
                Some(x) => {
                    return Err(err(
                        key,
                        &format!(
                            "{x}: partial RoPE is not supported (arbor rotates every dimension of a head; only 1.0)"
                        ),
                    ))
                }
            }
        }
        let rope_theta = match (obj.get("rope_theta"), obj.get("rope_parameters").and_then(|r| r.get("rope_theta"))) {
            (Some(x), _) if !x.is_null() => {
                x.as_f64().ok_or_else(|| err("rope_theta", &format!("expected a number, got {x}")))?
            }
            (_, Some(x)) => {
                x.as_f64().ok_or_else(|| err("rope_parameters.rope_theta", &format!("expected a number, got {x}")))?
            }
            _ => 10000.0,
        };
        if opt_bool("use_sliding_window", false)? {
            return Err(err("use_sliding_window", "sliding-window attention is not supported"));
        }
        // transformers 5 names each layer's attention (Qwen3, Qwen2): only full attention
        if let Some(types) = obj.get("layer_types").filter(|t| !t.is_null()) {
            let other = match types.as_array() {
                Some(a) => a.iter().find(|t| t.as_str() != Some("full_attention")).cloned(),
                None => Some(types.clone()),
            };
            if let Some(t) = other {
                return Err(err("layer_types", &format!("{t}: only \"full_attention\" layers are supported")));
            }
        }
        if opt_bool("mlp_bias", false)? {
            return Err(err("mlp_bias", "MLP biases are not supported"));
        }
        // Mistral's window (Mistral 7B v0.1: 4096 of 32768 positions); null (v0.3) is full attention
        if arch == Arch::Mistral {
            let context = req_usize("max_position_embeddings")?;
            match obj.get("sliding_window") {
                None | Some(Value::Null) => {}
                Some(w) => match w.as_u64() {
                    Some(w) if w as u128 >= context as u128 => {}
                    _ => {
                        return Err(err(
                            "sliding_window",
                            &format!("{w}: sliding-window attention (a window shorter than max_position_embeddings = {context}) is not supported"),
                        ))
                    }
                },
            }
        }
        // Llama's and Qwen3's `attention_bias` gives q/k/v *and* o_proj biases; arbor has no o_proj bias
        if arch != Arch::Qwen2 && opt_bool("attention_bias", false)? {
            return Err(err(
                "attention_bias",
                "true is not supported for llama, qwen3 and mistral: it also gives o_proj a bias, which arbor's layout does not have",
            ));
        }
        // the MLP is SwiGLU: SiLU gates (Qwen2's and Llama's "silu"; "swish" is the same function)
        match obj.get("hidden_act") {
            None | Some(Value::Null) => {}
            Some(Value::String(a)) if a == "silu" || a == "swish" => {}
            Some(x) => return Err(err("hidden_act", &format!("{x}: only \"silu\" (SwiGLU) is supported"))),
        }
        let hidden_size = req_usize("hidden_size")?;
        let num_heads = req_usize("num_attention_heads")?;
        let num_kv_heads = opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = match opt_usize("head_dim")? {
            Some(d) => d,
            None if num_heads > 0 && hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => return Err(err("head_dim", "missing and hidden_size is not divisible by num_attention_heads")),
        };
        let token_ids = |key: &str| token_ids(v, key, file);
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: req_usize("intermediate_size")?,
            num_layers: req_usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_f64("rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            vocab_size: req_usize("vocab_size")?,
            max_position_embeddings: req_usize("max_position_embeddings")?,
            tie_word_embeddings: opt_bool("tie_word_embeddings", false)?,
            qkv_bias: arch == Arch::Qwen2,
            // (a list: its first)
            bos_token_id: token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: token_ids("eos_token_id")?,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// The HF `config.json` contents for this model (loadable by transformers).
    pub fn to_hf_json(&self) -> Value {
        let mut m = Map::new();
        let (model_type, arch_name) = self.arch.hf_names();
        m.insert("architectures".into(), json!([arch_name]));
        m.insert("model_type".into(), json!(model_type));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(self.intermediate_size));
        m.insert("num_hidden_layers".into(), json!(self.num_layers));
        m.insert("num_attention_heads".into(), json!(self.num_heads));
        m.insert("num_key_value_heads".into(), json!(self.num_kv_heads));
        m.insert("head_dim".into(), json!(self.head_dim));
        m.insert("hidden_act".into(), json!("silu"));
        m.insert("rms_norm_eps".into(), json!(self.rms_norm_eps));
        m.insert("rope_theta".into(), json!(self.rope_theta));
        if let Some(s) = &self.rope_scaling {
            m.insert("rope_scaling".into(), s.to_hf());
        }
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("max_position_embeddings".into(), json!(self.max_position_embeddings));
        m.insert("tie_word_embeddings".into(), json!(self.tie_word_embeddings));
        m.insert("torch_dtype".into(), json!("float32"));
        if self.arch != Arch::Qwen2 {
            m.insert("attention_bias".into(), json!(self.qkv_bias));
        }
        if self.arch == Arch::Llama {
            m.insert("mlp_bias".into(), json!(false));
        }
        if self.arch == Arch::Mistral {
            m.insert("sliding_window".into(), Value::Null);
        }
        if let Some(b) = self.bos_token_id {
            m.insert("bos_token_id".into(), json!(b));
        }
        match self.eos_token_ids[..] {
            [] => {}
            [e] => drop(m.insert("eos_token_id".into(), json!(e))),
            ref ids => drop(m.insert("eos_token_id".into(), json!(ids))),
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama(edit: impl FnOnce(&mut Map<String, Value>)) -> Result<ModelConfig> {
        let mut v = json!({"model_type": "llama", "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40,
                           "max_position_embeddings": 64, "tie_word_embeddings": false});
        if let Value::Object(m) = &mut v {
            edit(m);
        }
        ModelConfig::from_hf_json(&v, Path::new("c.json"))
    }

    #[test]
    fn the_checked_parameter_count_is_the_layouts() {
        for (tied, arch) in [(false, "llama"), (true, "llama"), (false, "qwen2"), (true, "qwen3")] {
            let cfg = llama(|m| {
                m.insert("tie_word_embeddings".into(), json!(tied));
                m.insert("model_type".into(), json!(arch));
            })
            .unwrap();
            assert_eq!(cfg.param_count_u128(), cfg.num_params() as u128, "{arch}, tied {tied}");
        }
    }

    /// An activation other than SiLU, token ids outside u32, Llama's attention biases (which
    /// include an o_proj bias), partial RoPE and a RoPE scaling object that names no type are
    /// refused by key, not read as something else.
    #[test]
    fn what_the_model_cannot_compute_is_refused_by_key() {
        for (key, value) in [
            ("hidden_act", json!("silu")),
            ("hidden_act", json!("swish")),
            ("attention_bias", json!(false)),
            ("partial_rotary_factor", json!(1.0)),
            ("partial_rotary_factor", json!(1)),
            ("rope_scaling", json!(null)),
            ("rope_scaling", json!({})),
            ("rope_parameters", json!({"rope_theta": 1e4})),
            ("rope_parameters", json!({"rope_theta": 1e4, "rope_type": "default", "partial_rotary_factor": 1.0})),
            ("rope_scaling", json!({"type": "default"})),
            ("layer_types", json!(["full_attention", "full_attention"])),
            ("layer_types", json!(null)),
        ] {
            assert!(llama(|m| drop(m.insert(key.into(), value.clone()))).is_ok(), "{key} = {value}");
        }
        for (key, value, named) in [
            ("hidden_act", json!("gelu"), "hidden_act"),
            ("eos_token_id", json!(4_294_967_298u64), "eos_token_id"),
            ("eos_token_id", json!([2, "x"]), "eos_token_id"),
            ("bos_token_id", json!(-1), "bos_token_id"),
            ("attention_bias", json!(true), "attention_bias"),
            ("partial_rotary_factor", json!(0.5), "partial_rotary_factor"),
            ("partial_rotary_factor", json!("half"), "partial_rotary_factor"),
            (
                "rope_parameters",
                json!({"rope_theta": 1e4, "rope_type": "default", "partial_rotary_factor": 0.25}),
                "rope_parameters.partial_rotary_factor",
            ),
            ("rope_scaling", json!({"factor": 8.0}), "rope_scaling"),
            ("rope_parameters", json!({"rope_theta": 1e4, "factor": 2.0}), "rope_parameters"),
            ("rope_scaling", json!({"type": "dynamic", "factor": 2.0}), "rope_scaling"),
            ("rope_scaling", json!({"rope_type": 3}), "rope_scaling"),
            ("layer_types", json!(["full_attention", "sliding_attention"]), "layer_types"),
            ("layer_types", json!("full_attention"), "layer_types"),
        ] {
            let e = llama(|m| drop(m.insert(key.into(), value.clone()))).unwrap_err().to_string();
            assert!(e.contains("c.json") && e.contains(&format!("`{named}`")), "{key} = {value}: {e}");
        }
        // what a Llama with q/k/v biases would write back (`attention_bias = true`) is refused too
        let mut cfg = llama(|_| ()).unwrap();
        cfg.qkv_bias = true;
        let e = cfg.validate(Path::new("c.json")).unwrap_err().to_string();
        assert!(e.contains("`attention_bias`") && e.contains("o_proj"), "{e}");
        // Qwen3: no biases (its attention_bias also gives o_proj one), head norms, written back as qwen3
        let qwen3 = |bias: bool| {
            llama(|m| {
                m.insert("model_type".into(), json!("qwen3"));
                m.insert("attention_bias".into(), json!(bias));
            })
        };
        let e = qwen3(true).unwrap_err().to_string();
        assert!(e.contains("`attention_bias`") && e.contains("o_proj"), "{e}");
        let cfg = qwen3(false).unwrap();
        assert!(cfg.arch == Arch::Qwen3 && cfg.qk_norm() && !cfg.qkv_bias, "{cfg:?}");
        let back = cfg.to_hf_json();
        assert_eq!((&back["model_type"], &back["architectures"][0]), (&json!("qwen3"), &json!("Qwen3ForCausalLM")));
        assert_eq!(ModelConfig::from_hf_json(&back, Path::new("c.json")).unwrap(), cfg);
        // Mistral: Llama's layers; a window shorter than the context is refused, a null or
        // context-long one is full attention
        let mistral = |window: Value| {
            llama(|m| {
                m.insert("model_type".into(), json!("mistral"));
                m.insert("sliding_window".into(), window);
            })
        };
        let e = mistral(json!(32)).unwrap_err().to_string();
        assert!(e.contains("`sliding_window`") && e.contains("max_position_embeddings = 64"), "{e}");
        for ok in [json!(null), json!(64), json!(4096)] {
            let cfg = mistral(ok.clone()).unwrap();
            assert!(cfg.arch == Arch::Mistral && !cfg.qkv_bias && !cfg.qk_norm(), "{ok}");
            let back = cfg.to_hf_json();
            assert_eq!(back["model_type"], json!("mistral"));
            assert_eq!(ModelConfig::from_hf_json(&back, Path::new("c.json")).unwrap(), cfg);
        }
        let cfg = llama(|m| drop(m.insert("eos_token_id".into(), json!([7, 9])))).unwrap();
        assert_eq!(cfg.eos_token_ids, [7, 9]);
        assert_eq!(cfg.to_hf_json()["eos_token_id"], json!([7, 9]), "a list is written back as a list");
        let cfg = llama(|m| drop(m.insert("eos_token_id".into(), json!(7)))).unwrap();
        assert_eq!((cfg.eos_token_ids.as_slice(), &cfg.to_hf_json()["eos_token_id"]), (&[7][..], &json!(7)));
    }

    /// Every config.json shipped with arbor (models, warm starts, test fixtures) is still read.
    #[test]
    fn the_shipped_configs_are_accepted() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut read = 0;
        for dir in ["configs/models", "configs/warmstart", "tests/fixtures"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let file = entry.unwrap().path().join("config.json");
                if file.is_file() {
                    ModelConfig::from_hf_file(&file).unwrap_or_else(|e| panic!("{e}"));
                    read += 1;
                }
            }
        }
        assert!(read >= 5, "{read} shipped configs found");
    }

    #[test]
    fn absurd_dimensions_are_refused_by_key_before_anything_is_allocated() {
        for (key, value, named) in [
            ("hidden_size", json!(1u64 << 40), "hidden_size"),
            ("vocab_size", json!(u64::MAX), "hidden_size"),
            ("intermediate_size", json!(1u64 << 62), "hidden_size"),
            ("num_hidden_layers", json!(1u64 << 20), "num_hidden_layers"),
            ("max_position_embeddings", json!(1u64 << 40), "max_position_embeddings"),
        ] {
            let e = llama(|m| {
                m.insert(key.into(), value);
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains("c.json") && e.contains(&format!("`{named}`")) && e.contains("2^"), "{key}: {e}");
        }
    }
}
