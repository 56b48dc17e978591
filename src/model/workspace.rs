//! Preallocated activation and gradient buffers, sized once from the config and the largest
//! batch seen (a training step after the first allocates nothing).

use crate::attention::AttnShape;
use crate::model::config::ModelConfig;

/// Saved activations of one decoder layer (N = tokens).
#[derive(Debug, Default)]
pub struct LayerActs {
    /// [N, C] residual stream entering the layer.
    pub resid_in: Vec<f32>,
    /// [N, C] input RMSNorm output; [N] its 1/rms.
    pub ln1: Vec<f32>,
    pub rstd1: Vec<f32>,
    /// [N, (H+2KV)·D] q|k|v after bias and RoPE.
    pub qkv: Vec<f32>,
    /// [N, H·D] attention output (before o_proj); [N, H] row log-sum-exp of the scores.
    pub att: Vec<f32>,
    pub lse: Vec<f32>,
    /// [N, C] residual after the attention block.
    pub resid_mid: Vec<f32>,
    /// [N, C] post-attention RMSNorm output; [N] its 1/rms.
    pub ln2: Vec<f32>,
    pub rstd2: Vec<f32>,
    /// [N, 2I] gate|up projections; [N, I] silu(gate)·up.
    pub gate_up: Vec<f32>,
    pub act: Vec<f32>,
}

/// All buffers a forward + backward pass needs.
#[derive(Debug, Default)]
pub struct Workspace {
    cap: usize,
    pub layers: Vec<LayerActs>,
    /// [N, C] residual after the last layer; [N, C] final norm output; [N] its 1/rms.
    pub resid_out: Vec<f32>,
    pub lnf: Vec<f32>,
    pub rstdf: Vec<f32>,
    /// [N] log p(target) per token, filled by the forward.
    pub logprobs: Vec<f32>,
    /// [N] entropy of the full next-token distribution per token, filled by the forward.
    pub entropy: Vec<f32>,
    /// [N] log-sum-exp of the logits (kept for the backward).
    pub head_lse: Vec<f32>,
    /// [head_rows, V] one chunk of logits (the head runs in row chunks to bound memory).
    pub logits: Vec<f32>,
    pub head_rows: usize,
    /// Rows of logits left in `logits` by the last forward (Some(N) when one chunk held them all).
    pub logits_cached: Option<usize>,
    /// Backward scratch: [N, C] ×2, [N, (H+2KV)·D], [N, H·D], [N, 2I], [N, I].
    pub dresid: Vec<f32>,
    pub dln: Vec<f32>,
    pub dqkv: Vec<f32>,
    pub datt: Vec<f32>,
    pub dgate_up: Vec<f32>,
    pub dact: Vec<f32>,
    /// Attention scratch, O(N · BLOCK_ROWS).
    pub attn_scratch: Vec<f32>,
}

/// Logit elements per head chunk (bounds the [rows, V] buffer to 16 MiB).
const HEAD_CHUNK_ELEMS: usize = 1 << 22;

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl Workspace {
    /// Buffers for batches of up to `max_tokens` tokens.
    pub fn new(cfg: &ModelConfig, max_tokens: usize) -> Self {
        let mut ws = Workspace::default();
        ws.ensure(cfg, max_tokens);
        ws
    }

    /// Tokens the buffers currently hold room for.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Grow the buffers to hold `n` tokens (no-op when they already do).
    pub fn ensure(&mut self, cfg: &ModelConfig, n: usize) {
        if n <= self.cap && self.layers.len() == cfg.num_layers {
            return;
        }
        let n = n.max(self.cap);
        let (c, i, h) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads);
        let (qkv, hd) = (cfg.qkv_dim(), cfg.attn_dim());
        self.layers.resize_with(cfg.num_layers, LayerActs::default);
        for l in &mut self.layers {
            grow(&mut l.resid_in, n * c);
            grow(&mut l.ln1, n * c);
            grow(&mut l.rstd1, n);
            grow(&mut l.qkv, n * qkv);
            grow(&mut l.att, n * hd);
            grow(&mut l.lse, n * h);
            grow(&mut l.resid_mid, n * c);
            grow(&mut l.ln2, n * c);
            grow(&mut l.rstd2, n);
            grow(&mut l.gate_up, n * 2 * i);
            grow(&mut l.act, n * i);
        }
        for (v, len) in [
            (&mut self.resid_out, n * c),
            (&mut self.lnf, n * c),
            (&mut self.rstdf, n),
            (&mut self.logprobs, n),
            (&mut self.entropy, n),
            (&mut self.head_lse, n),
            (&mut self.dresid, n * c),
            (&mut self.dln, n * c),
            (&mut self.dqkv, n * qkv),
            (&mut self.datt, n * hd),
            (&mut self.dgate_up, n * 2 * i),
            (&mut self.dact, n * i),
        ] {
            grow(v, len);
        }
        self.head_rows = (HEAD_CHUNK_ELEMS / cfg.vocab_size).clamp(1, n.max(1));
        grow(&mut self.logits, self.head_rows * cfg.vocab_size);
        let shape = AttnShape { num_heads: h, num_kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim };
        grow(&mut self.attn_scratch, shape.scratch_len(n));
        self.cap = n;
    }

    /// Bound the LM head's chunk to `rows` rows (less memory for huge vocabularies; the backward
    /// then recomputes logits chunk by chunk).
    pub fn limit_head_rows(&mut self, rows: usize) {
        self.head_rows = self.head_rows.min(rows.max(1));
        self.logits_cached = None;
    }

    /// Bytes held by all buffers.
    pub fn bytes(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [
                    &l.resid_in,
                    &l.ln1,
                    &l.rstd1,
                    &l.qkv,
                    &l.att,
                    &l.lse,
                    &l.resid_mid,
                    &l.ln2,
                    &l.rstd2,
                    &l.gate_up,
                    &l.act,
                ]
                .iter()
                .map(|v| v.len())
                .sum::<usize>()
            })
            .sum();
        let rest: usize = [
            &self.resid_out,
            &self.lnf,
            &self.rstdf,
            &self.logprobs,
            &self.entropy,
            &self.head_lse,
            &self.logits,
            &self.dresid,
            &self.dln,
            &self.dqkv,
            &self.datt,
            &self.dgate_up,
            &self.dact,
            &self.attn_scratch,
        ]
        .iter()
        .map(|v| v.len())
        .sum();
        4 * (per_layer + rest)
    }
}
