//! Preallocated activation and gradient buffers, sized once from the config and the largest
//! batch seen (a training step after the first allocates nothing).
//!
//! With gradient checkpointing ([`Workspace::set_checkpointing`]) the workspace keeps every
//! layer's input (the residual stream, [N, C] a layer) but the other activations of one layer
//! only: the forward runs every layer through that one set, and the backward runs each layer's
//! forward again from its saved input just before the layer's backward (the down projection
//! excepted: its output is the next layer's saved input). Every kernel is deterministic, so the
//! gradients are the same bits as without; the memory of the saved activations falls from about
//! 4C + (H+2KV)·D + H·D + 3I numbers a token a layer (the input, the two norms' outputs, the
//! residual after attention, q|k|v, the attention's output, gate|up and SwiGLU's) to C, for about
//! one more forward of the layers.

use crate::attention::AttnShape;
use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::tensor::{Backend, Cpu};

/// Saved activations of one decoder layer (N = tokens), in backend `B`'s memory, but for its
/// input ([`Workspace::resid_in`]). The normed rows, the gate|up projection and the SwiGLU
/// output, which only products and SwiGLU read, are in activation storage ([`Backend::Act`]:
/// bf16 on a GPU with bf16 products).
pub struct LayerActs<B: Backend = Cpu> {
    /// [N, C] input RMSNorm output; `[N]` its 1/rms.
    pub ln1: B::Act,
    pub rstd1: B::Buf,
    /// [N, (H+2KV)·D] q|k|v after bias, head norms and RoPE.
    pub qkv: B::Buf,
    /// Where the model norms its query and key heads (Qwen3): their inputs, [N·H·D] then
    /// [N·KV·D], and the norms' 1/rms, [N·H] then [N·KV] (empty otherwise).
    pub qk_raw: B::Buf,
    pub qk_rstd: B::Buf,
    /// [N, H·D] attention output (before o_proj); [N, H] row log-sum-exp of the scores.
    pub att: B::Buf,
    pub lse: B::Buf,
    /// [N, C] residual after the attention block.
    pub resid_mid: B::Buf,
    /// [N, C] post-attention RMSNorm output; `[N]` its 1/rms.
    pub ln2: B::Act,
    pub rstd2: B::Buf,
    /// [N, 2I] gate|up projections; [N, I] silu(gate)·up (both read by elementwise kernels and
    /// products only: activations).
    pub gate_up: B::Act,
    pub act: B::Act,
}

/// All buffers a forward + backward pass needs, in backend `B`'s memory.
pub struct Workspace<B: Backend = Cpu> {
    cap: usize,
    /// Whether the backward recomputes each layer's activations from its input (one set of
    /// [`LayerActs`] for all layers) instead of keeping them from the forward.
    checkpointing: bool,
    /// [N, C] the residual stream entering each layer (kept for every layer in both modes).
    pub resid_in: Vec<B::Buf>,
    /// The layers' saved activations: one per layer, or the one set every layer shares with
    /// checkpointing (a layer's is at [`Workspace::slot`]).
    pub layers: Vec<LayerActs<B>>,
    /// [N, C] residual after the last layer; [N, C] final norm output; `[N]` its 1/rms.
    pub resid_out: B::Buf,
    pub lnf: B::Buf,
    pub rstdf: B::Buf,
    /// `[N]` log p(target) per token, filled by the forward.
    pub logprobs: B::Buf,
    /// `[N]` entropy of the full next-token distribution per token, filled by the forward.
    pub entropy: B::Buf,
    /// `[N]` log-sum-exp of the logits (kept for the backward).
    pub head_lse: B::Buf,
    /// [head_rows, V] one chunk of logits (the head runs in row chunks to bound memory).
    pub logits: B::Buf,
    pub head_rows: usize,
    /// Rows of logits left in `logits` by the last forward (Some(N) when one chunk held them all).
    pub logits_cached: Option<usize>,
    /// [head_rows, V] the gradient of a chunk of logits where activations are not f32 (made
    /// there by the backward, in the type its products take; else it overwrites `logits`).
    pub dlogits: B::Act,
    /// Backward scratch: [N, C] ×2, [N, (H+2KV)·D], [N, H·D], [N, 2I], [N, I].
    pub dresid: B::Buf,
    pub dln: B::Buf,
    pub dqkv: B::Buf,
    pub datt: B::Buf,
    pub dgate_up: B::Act,
    pub dact: B::Buf,
    /// [2·D] a tensor-parallel shard's part of a layer's q_norm and k_norm gradients (its heads'),
    /// summed over the group before it is added (empty without head norms).
    pub dqk_norm: B::Buf,
    /// Attention scratch, O(N · BLOCK_ROWS).
    pub attn_scratch: B::Buf,
}

impl<B: Backend> LayerActs<B> {
    fn new(be: &B) -> Result<Self> {
        Ok(LayerActs {
            ln1: be.act_empty()?,
            rstd1: be.empty()?,
            qkv: be.empty()?,
            qk_raw: be.empty()?,
            qk_rstd: be.empty()?,
            att: be.empty()?,
            lse: be.empty()?,
            resid_mid: be.empty()?,
            ln2: be.act_empty()?,
            rstd2: be.empty()?,
            gate_up: be.act_empty()?,
            act: be.act_empty()?,
        })
    }
    fn bytes(&self) -> usize {
        let bufs =
            [&self.rstd1, &self.qkv, &self.qk_raw, &self.qk_rstd, &self.att, &self.lse, &self.resid_mid, &self.rstd2];
        let acts = [&self.ln1, &self.ln2, &self.gate_up, &self.act];
        4 * bufs.iter().map(|b| B::len(b)).sum::<usize>() + acts.iter().map(|a| B::act_bytes(a)).sum::<usize>()
    }
}

/// What a backend's buffers take beyond the model's shapes, for [`planned_bytes`] of `n` tokens:
/// bytes of an activation element (4 in f32, 2 in bf16), logits one LM-head chunk may hold, the
/// attention's scratch floats for the `n` tokens ([`Backend::attn_scratch_len`]).
#[derive(Debug, Clone, Copy)]
pub struct BufferSizes {
    pub act_bytes: usize,
    pub head_chunk_elems: usize,
    pub attn_scratch: usize,
}

impl BufferSizes {
    /// What backend `be` takes now (its dtype, its device) for `n` tokens of `cfg`.
    pub fn of<B: Backend>(be: &B, cfg: &ModelConfig, n: usize) -> BufferSizes {
        let shape = AttnShape { num_heads: cfg.num_heads, num_kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim };
        BufferSizes {
            act_bytes: if be.acts_are_f32() { 4 } else { 2 },
            head_chunk_elems: be.head_chunk_elems(),
            attn_scratch: be.attn_scratch_len(shape, n),
        }
    }
}

/// The bytes a [`Workspace`] holds once grown for `n` tokens of `cfg`, with or without
/// checkpointing, after a backward (the bf16 logit gradient included where activations are not
/// f32): what [`Workspace::bytes`] then reports (tests/checkpointing.rs holds them equal), computed
/// without allocating, for a device's memory plan (`train::memory_plan`).
pub fn planned_bytes(cfg: &ModelConfig, n: usize, checkpointing: bool, sizes: BufferSizes) -> u128 {
    let (c, i, h, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim);
    let (qkv, hd) = (cfg.qkv_dim(), cfg.attn_dim());
    let qk_heads = if cfg.qk_norm() { h + cfg.num_kv_heads } else { 0 };
    let f32s = |x: usize| 4 * x as u128;
    let acts = |x: usize| (sizes.act_bytes * x) as u128;
    let sets = if checkpointing { cfg.num_layers.min(1) } else { cfg.num_layers };
    let per_set =
        f32s(n + n * qkv + n * qk_heads * d + n * qk_heads + n * hd + n * h + n * c + n) + acts(2 * n * c + 3 * n * i);
    let inputs = f32s(cfg.num_layers * n * c);
    let head_rows = (sizes.head_chunk_elems / cfg.vocab_size.max(1)).clamp(1, n.max(1));
    let qk_norm_grad = if cfg.qk_norm() { 2 * d } else { 0 };
    // resid_out, lnf, dresid, dln; rstdf, logprobs, entropy, head_lse; dqkv, datt, dact; the
    // head norms' gradient; the logit chunk; the attention's scratch; dgate_up
    let rest = f32s(
        4 * n * c + 4 * n + n * qkv + n * hd + n * i + qk_norm_grad + head_rows * cfg.vocab_size + sizes.attn_scratch,
    ) + acts(2 * n * i);
    let dlogits = if sizes.act_bytes == 4 { 0 } else { acts(head_rows.min(n) * cfg.vocab_size) };
    sets as u128 * per_set + inputs + rest + dlogits
}

impl Default for Workspace<Cpu> {
    fn default() -> Self {
        // Empty host vectors cannot fail.
        Workspace::empty(&Cpu).expect("host buffers")
    }
}

impl<B: Backend> std::fmt::Debug for Workspace<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Workspace {{ tokens: {}, layers: {}, bytes: {} }}", self.cap, self.layers.len(), self.bytes())
    }
}

impl Workspace<Cpu> {
    /// Buffers for batches of up to `max_tokens` tokens.
    pub fn new(cfg: &ModelConfig, max_tokens: usize) -> Self {
        let mut ws = Workspace::default();
        ws.ensure(cfg, max_tokens);
        ws
    }

    /// Grow the buffers to hold `n` tokens (no-op when they already do).
    pub fn ensure(&mut self, cfg: &ModelConfig, n: usize) {
        // Growing host vectors cannot fail.
        self.ensure_on(&Cpu, cfg, n).expect("host buffers grow");
    }
}

impl<B: Backend> Workspace<B> {
    /// A workspace with no buffers yet.
    pub fn empty(be: &B) -> Result<Self> {
        Ok(Workspace {
            cap: 0,
            checkpointing: false,
            resid_in: Vec::new(),
            layers: Vec::new(),
            resid_out: be.empty()?,
            lnf: be.empty()?,
            rstdf: be.empty()?,
            logprobs: be.empty()?,
            entropy: be.empty()?,
            head_lse: be.empty()?,
            logits: be.empty()?,
            head_rows: 0,
            logits_cached: None,
            dlogits: be.act_empty()?,
            dresid: be.empty()?,
            dln: be.empty()?,
            dqkv: be.empty()?,
            datt: be.empty()?,
            dgate_up: be.act_empty()?,
            dact: be.empty()?,
            dqk_norm: be.empty()?,
            attn_scratch: be.empty()?,
        })
    }

    /// Tokens the buffers currently hold room for.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Whether the backward recomputes the layers' activations (see the module's notes).
    pub fn checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// Switch gradient checkpointing on or off for the passes that follow (a forward and the
    /// backward after it must run in the same mode). Switching it on lets the other layers'
    /// activation buffers go at the next [`Workspace::ensure_on`]; switching it off grows them
    /// there.
    pub fn set_checkpointing(&mut self, on: bool) {
        if on != self.checkpointing {
            self.checkpointing = on;
            self.cap = 0;
            self.logits_cached = None;
        }
    }

    /// The activation sets the mode keeps for `layers` layers.
    fn act_sets(&self, layers: usize) -> usize {
        if self.checkpointing {
            layers.min(1)
        } else {
            layers
        }
    }

    /// The index in [`Workspace::layers`] of layer `l`'s activations: its own, or with
    /// checkpointing the shared set (which holds layer `l`'s only right after the forward of that
    /// layer ran into it).
    pub fn slot(&self, l: usize) -> usize {
        if self.checkpointing {
            0
        } else {
            l
        }
    }

    /// Layer `l`'s saved activations (see [`Workspace::slot`]).
    pub fn acts(&self, l: usize) -> &LayerActs<B> {
        &self.layers[self.slot(l)]
    }

    /// Grow the buffers to hold `n` tokens (no-op when they already do).
    pub fn ensure_on(&mut self, be: &B, cfg: &ModelConfig, n: usize) -> Result<()> {
        let sets = self.act_sets(cfg.num_layers);
        if n <= self.cap && self.layers.len() == sets && self.resid_in.len() == cfg.num_layers {
            // the attention's scratch and the activations' storage also depend on the backend's
            // settings (a GPU's dtype and kernel plans), which may have changed since the buffers
            // were sized
            // (a failed growth, which may leave a buffer smaller than before, sizes everything
            // again at the next call: `cap` is 0 until the buffers hold it)
            let cap = std::mem::take(&mut self.cap);
            self.grow_acts(be, cfg, cap)?;
            let shape = AttnShape { num_heads: cfg.num_heads, num_kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim };
            be.grow(&mut self.attn_scratch, be.attn_scratch_len(shape, cap))?;
            self.cap = cap;
            return Ok(());
        }
        let n = n.max(self.cap);
        self.cap = 0;
        let (c, i, h) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads);
        let (qkv, hd) = (cfg.qkv_dim(), cfg.attn_dim());
        let qk_heads = if cfg.qk_norm() { h + cfg.num_kv_heads } else { 0 };
        while self.layers.len() < sets {
            self.layers.push(LayerActs::new(be)?);
        }
        self.layers.truncate(sets);
        while self.resid_in.len() < cfg.num_layers {
            self.resid_in.push(be.empty()?);
        }
        self.resid_in.truncate(cfg.num_layers);
        for x in &mut self.resid_in {
            be.grow(x, n * c)?;
        }
        for l in &mut self.layers {
            for (v, len) in [
                (&mut l.rstd1, n),
                (&mut l.qkv, n * qkv),
                (&mut l.qk_raw, n * qk_heads * cfg.head_dim),
                (&mut l.qk_rstd, n * qk_heads),
                (&mut l.att, n * hd),
                (&mut l.lse, n * h),
                (&mut l.resid_mid, n * c),
                (&mut l.rstd2, n),
            ] {
                be.grow(v, len)?;
            }
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
            (&mut self.dact, n * i),
            (&mut self.dqk_norm, if cfg.qk_norm() { 2 * cfg.head_dim } else { 0 }),
        ] {
            be.grow(v, len)?;
        }
        self.head_rows = (be.head_chunk_elems() / cfg.vocab_size).clamp(1, n.max(1));
        be.grow(&mut self.logits, self.head_rows * cfg.vocab_size)?;
        let shape = AttnShape { num_heads: h, num_kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim };
        be.grow(&mut self.attn_scratch, be.attn_scratch_len(shape, n))?;
        self.grow_acts(be, cfg, n)?;
        self.cap = n;
        Ok(())
    }

    /// The activation buffers (normed rows, gate|up and SwiGLU outputs) for `n` tokens, in the storage the
    /// backend's products take now.
    fn grow_acts(&mut self, be: &B, cfg: &ModelConfig, n: usize) -> Result<()> {
        let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
        for l in &mut self.layers {
            be.act_grow(&mut l.ln1, n * c)?;
            be.act_grow(&mut l.ln2, n * c)?;
            be.act_grow(&mut l.gate_up, n * 2 * i)?;
            be.act_grow(&mut l.act, n * i)?;
        }
        be.act_grow(&mut self.dgate_up, n * 2 * i)
    }

    /// Bound the LM head's chunk to `rows` rows (less memory for huge vocabularies; the backward
    /// then recomputes logits chunk by chunk).
    pub fn limit_head_rows(&mut self, rows: usize) {
        self.head_rows = self.head_rows.min(rows.max(1));
        self.logits_cached = None;
    }

    /// Bytes held by all buffers.
    pub fn bytes(&self) -> usize {
        let per_layer: usize = self.layers.iter().map(LayerActs::bytes).sum::<usize>()
            + 4 * self.resid_in.iter().map(|x| B::len(x)).sum::<usize>();
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
            &self.dact,
            &self.dqk_norm,
            &self.attn_scratch,
        ]
        .iter()
        .map(|v| B::len(v))
        .sum();
        per_layer + 4 * rest + B::act_bytes(&self.dgate_up) + B::act_bytes(&self.dlogits)
    }
}
