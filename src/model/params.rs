//! Parameters as one flat f32 buffer with a named layout (HF tensor names).
//!
//! One flat buffer makes AdamW, gradient clipping and bucketed all-reduce single loops, and lets
//! adjacent tensors fuse: q|k|v weights are stored back to back, so one GEMM computes all three
//! projections, and likewise gate|up.

use crate::model::config::ModelConfig;

/// One tensor inside the flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// HF name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Row-major shape (HF/PyTorch convention: Linear weights are [out, in]).
    pub shape: Vec<usize>,
    /// Offset in elements into the flat buffer.
    pub offset: usize,
    /// Whether AdamW's weight decay applies (matrices yes; norms and biases no).
    pub decay: bool,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Element range in the flat buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// Offsets of one decoder layer's tensors in the flat buffer.
#[derive(Debug, Clone, Copy)]
pub struct LayerOffsets {
    /// `[C]` input RMSNorm weight.
    pub ln1: usize,
    /// [(H+2KV)·D, C] fused q|k|v weight (q_proj, k_proj, v_proj back to back).
    pub qkv_w: usize,
    /// [(H+2KV)·D] fused q|k|v bias (present only when `qkv_bias`).
    pub qkv_b: Option<usize>,
    /// [2·D] the query heads' RMSNorm weight, then the key heads' (q_norm, k_norm; present only
    /// when the model norms its heads, [`ModelConfig::qk_norm`]).
    pub qk_norm: Option<usize>,
    /// [C, H·D] output projection.
    pub o_w: usize,
    /// `[C]` post-attention RMSNorm weight.
    pub ln2: usize,
    /// [2I, C] fused gate|up weight.
    pub gate_up_w: usize,
    /// [C, I] down projection.
    pub down_w: usize,
}

/// Where every tensor lives in the flat buffer.
#[derive(Debug, Clone)]
pub struct ParamLayout {
    pub specs: Vec<ParamSpec>,
    /// [V, C] token embedding.
    pub embed: usize,
    pub layers: Vec<LayerOffsets>,
    /// `[C]` final RMSNorm weight.
    pub final_norm: usize,
    /// [V, C] LM head; equals `embed` when embeddings are tied.
    pub lm_head: usize,
    total: usize,
}

impl ParamLayout {
    /// The layout for a model configuration.
    pub fn new(cfg: &ModelConfig) -> Self {
        let (c, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (h, kv, v) = (cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size);
        let mut specs = Vec::new();
        let mut total = 0usize;
        let mut push = |name: String, shape: Vec<usize>, decay: bool| -> usize {
            let offset = total;
            total += shape.iter().product::<usize>();
            specs.push(ParamSpec { name, shape, offset, decay });
            offset
        };
        let embed = push("model.embed_tokens.weight".into(), vec![v, c], true);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let ln1 = push(format!("{p}.input_layernorm.weight"), vec![c], false);
            let qkv_w = push(format!("{p}.self_attn.q_proj.weight"), vec![h * d, c], true);
            push(format!("{p}.self_attn.k_proj.weight"), vec![kv * d, c], true);
            push(format!("{p}.self_attn.v_proj.weight"), vec![kv * d, c], true);
            let qkv_b = if cfg.qkv_bias {
                let o = push(format!("{p}.self_attn.q_proj.bias"), vec![h * d], false);
                push(format!("{p}.self_attn.k_proj.bias"), vec![kv * d], false);
                push(format!("{p}.self_attn.v_proj.bias"), vec![kv * d], false);
                Some(o)
            } else {
                None
            };
            let qk_norm = cfg.qk_norm().then(|| {
                let o = push(format!("{p}.self_attn.q_norm.weight"), vec![d], false);
                push(format!("{p}.self_attn.k_norm.weight"), vec![d], false);
                o
            });
            let o_w = push(format!("{p}.self_attn.o_proj.weight"), vec![c, h * d], true);
            let ln2 = push(format!("{p}.post_attention_layernorm.weight"), vec![c], false);
            let gate_up_w = push(format!("{p}.mlp.gate_proj.weight"), vec![i, c], true);
            push(format!("{p}.mlp.up_proj.weight"), vec![i, c], true);
            let down_w = push(format!("{p}.mlp.down_proj.weight"), vec![c, i], true);
            layers.push(LayerOffsets { ln1, qkv_w, qkv_b, qk_norm, o_w, ln2, gate_up_w, down_w });
        }
        let final_norm = push("model.norm.weight".into(), vec![c], false);
        let lm_head = if cfg.tie_word_embeddings { embed } else { push("lm_head.weight".into(), vec![v, c], true) };
        ParamLayout { specs, embed, layers, final_norm, lm_head, total }
    }

    /// Total number of f32 elements.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Look a tensor up by its HF name.
    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }
}

// Defined here rather than in config.rs: the count is the layout's, and the configuration
// module stays below the layout (params uses config, not the other way round).
impl ModelConfig {
    /// Number of parameters (tied embeddings counted once).
    pub fn num_params(&self) -> usize {
        ParamLayout::new(self).total()
    }
}

/// A model's parameters (or gradients, or optimizer moments): flat f32 data plus its layout.
#[derive(Debug, Clone)]
pub struct Params {
    pub layout: ParamLayout,
    pub data: Vec<f32>,
}

impl Params {
    /// All-zero parameters for a configuration.
    pub fn zeros(cfg: &ModelConfig) -> Self {
        let layout = ParamLayout::new(cfg);
        let data = vec![0.0; layout.total()];
        Params { layout, data }
    }

    /// The slice of one named tensor.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.layout.get(name).map(|s| &self.data[s.range()])
    }

    /// The mutable slice of one named tensor.
    pub fn tensor_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let r = self.layout.get(name)?.range();
        Some(&mut self.data[r])
    }
}
