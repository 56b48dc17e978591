//! Incremental decoding with a KV cache: prefill a prompt into a cache slot (the training forward
//! computes it; its post-RoPE k/v are copied out), then decode one token per active slot per step.
//!
//! The decode path is the training forward specialised to a few new rows per sequence: the layer
//! stack of `model::decode_stack` (shared with the GPU decoder) over the CPU's operations
//! (`CpuStep`: packed weights and their row-wise GEMM, row-wise RMSNorm, RoPE and SwiGLU,
//! attention against the blocked cache). `tests/decode.rs` checks it against the full forward
//! position by position.

use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::decode_attend::{attend_row, AttendShape, KB};
use crate::model::decode_stack::{assign_positions, check_step, decode_stack, DecodeDevice, Norm, Proj};
use crate::model::transformer::Model;
use crate::model::workspace::Workspace;
use crate::tensor::cpu::head_norm::head_norm_forward;
use crate::tensor::cpu::ops;
use crate::tensor::cpu::{matmul_nt, matmul_packed, AlignedBuf, PackedMatrix};
use rayon::prelude::*;

/// Keys and values of every layer for `slots` sequences of up to `max_len` tokens.
///
/// Keys are stored transposed in blocks of 8 positions per KV head, [slots, KV, T/8, D, 8] with
/// T = `max_len` rounded up to a multiple of 8, so a query scores 8 consecutive positions per
/// vector operation reading contiguous memory; values are [slots, KV, max_len, D], so one KV
/// head's values are one contiguous stream too.
#[derive(Debug)]
pub struct KvCache {
    pub slots: usize,
    pub max_len: usize,
    kv_dim: usize,
    kv_heads: usize,
    /// Key time stride (`max_len` rounded up to 8).
    t_cap: usize,
    k: Vec<AlignedBuf>,
    v: Vec<AlignedBuf>,
    /// Tokens held per slot.
    pub len: Vec<usize>,
}

impl KvCache {
    /// An empty cache for a model.
    pub fn new(model: &Model, slots: usize, max_len: usize) -> Self {
        let kv_dim = model.cfg.num_kv_heads * model.cfg.head_dim;
        let t_cap = max_len.div_ceil(8) * 8;
        let layers = model.cfg.num_layers;
        KvCache {
            slots,
            max_len,
            kv_dim,
            kv_heads: model.cfg.num_kv_heads,
            t_cap,
            k: (0..layers).map(|_| AlignedBuf::zeros(slots * kv_dim * t_cap)).collect(),
            v: (0..layers).map(|_| AlignedBuf::zeros(slots * max_len * kv_dim)).collect(),
            len: vec![0; slots],
        }
    }

    /// Write layer `l`'s key and value rows ([KV·D] each) of position `pos` of `slot`.
    fn store(&mut self, l: usize, slot: usize, pos: usize, key: &[f32], value: &[f32]) {
        let kt = &mut self.k[l][slot * self.kv_dim * self.t_cap..(slot + 1) * self.kv_dim * self.t_cap];
        let d = self.kv_dim / self.kv_heads;
        for (g, kh) in key[..self.kv_dim].chunks(d).enumerate() {
            let blk = &mut kt[g * d * self.t_cap + (pos / KB) * d * KB..];
            for (p, &x) in kh.iter().enumerate() {
                blk[p * KB + pos % KB] = x;
            }
        }
        for (g, vh) in value[..self.kv_dim].chunks(d).enumerate() {
            let o = ((slot * self.kv_heads + g) * self.max_len + pos) * d;
            self.v[l][o..o + d].copy_from_slice(vh);
        }
    }
}

/// Every weight matrix of a model packed for `matmul_packed`, built once per generation call
/// and shared (read-only) by all decode threads.
#[derive(Debug)]
pub struct DecodeWeights {
    layers: Vec<LayerWeights>,
    lm_head: PackedMatrix,
}

#[derive(Debug)]
struct LayerWeights {
    qkv: PackedMatrix,
    o: PackedMatrix,
    gate_up: PackedMatrix,
    down: PackedMatrix,
}

impl DecodeWeights {
    /// Pack the model's current weights (layers in parallel).
    pub fn new(model: &Model) -> Self {
        let c = &model.cfg;
        let (h, qkv_w, hd, inter) = (c.hidden_size, c.qkv_dim(), c.attn_dim(), c.intermediate_size);
        let p = &model.params.data;
        let lay = &model.params.layout;
        let pack = |at: usize, n: usize, k: usize| PackedMatrix::from_rows(&p[at..at + n * k], n, k);
        let layers = lay
            .layers
            .par_iter()
            .map(|o| LayerWeights {
                qkv: pack(o.qkv_w, qkv_w, h),
                o: pack(o.o_w, h, hd),
                gate_up: pack(o.gate_up_w, 2 * inter, h),
                down: pack(o.down_w, h, inter),
            })
            .collect();
        DecodeWeights { layers, lm_head: pack(lay.lm_head, c.vocab_size, h) }
    }
}

/// Per-step buffers of the decode path (grown on demand, never shrunk).
#[derive(Debug, Default)]
pub struct DecodeBuffers {
    x: Vec<f32>,
    ln: Vec<f32>,
    rstd: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    /// [rows, V] next-token logits of the last step (rows = the step's logit rows).
    pub logits: Vec<f32>,
    /// Attention scores of one query head.
    scores: Vec<f32>,
    /// Position of each row; next free position of each cache slot.
    positions: Vec<u32>,
    next_pos: Vec<usize>,
}

impl DecodeBuffers {
    /// Buffers for `rows` concurrent sequences (more rows grow them).
    pub fn new(model: &Model, rows: usize) -> Self {
        let mut b = DecodeBuffers::default();
        b.reserve(model, rows, rows);
        b
    }

    fn reserve(&mut self, model: &Model, rows: usize, logit_rows: usize) {
        let c = &model.cfg;
        let grow = |v: &mut Vec<f32>, n: usize| {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        };
        grow(&mut self.x, rows * c.hidden_size);
        grow(&mut self.ln, rows * c.hidden_size);
        // (the row norms', and with q/k head norms each head's)
        let heads = if c.qk_norm() { c.num_heads + c.num_kv_heads } else { 1 };
        grow(&mut self.rstd, rows * heads);
        grow(&mut self.qkv, rows * c.qkv_dim());
        grow(&mut self.att, rows * c.attn_dim());
        grow(&mut self.gate_up, rows * 2 * c.intermediate_size);
        grow(&mut self.act, rows * c.intermediate_size);
        grow(&mut self.logits, logit_rows * c.vocab_size);
    }
}

impl Model {
    /// Run a prompt through the model into cache `slot` and return its last position's logits in
    /// `logits` (`[V]`). `ws` is a training workspace (reused; sized on demand).
    pub fn prefill(
        &self,
        prompt: &[u32],
        slot: usize,
        cache: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut [f32],
    ) -> Result<()> {
        self.prefill_many(&[prompt], &[slot], cache, ws, logits)
    }

    /// Prefill several prompts in one packed forward: prompt i goes into cache slot `slots[i]`
    /// and its last position's logits into row i of `logits` ([k, V]).
    pub fn prefill_many(
        &self,
        prompts: &[&[u32]],
        slots: &[usize],
        cache: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut [f32],
    ) -> Result<()> {
        let (c, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let k = prompts.len();
        if slots.len() != k || logits.len() < k * v {
            return Err(Error::shape("prefill", format!("{k} prompts, {} slots, logits for fewer rows", slots.len())));
        }
        let mut batch = Batch::new();
        for (prompt, &slot) in prompts.iter().zip(slots) {
            if prompt.is_empty() || prompt.len() > cache.max_len || slot >= cache.slots {
                return Err(Error::shape(
                    "prefill",
                    format!(
                        "prompt of {} tokens into slot {slot} (cache: {} slots × {} tokens)",
                        prompt.len(),
                        cache.slots,
                        cache.max_len
                    ),
                ));
            }
            batch.push_lm(prompt, 0)?;
        }
        self.forward(&batch, ws)?;
        let (qkv_w, hd, kvd) = (self.cfg.qkv_dim(), self.cfg.attn_dim(), cache.kv_dim);
        let w = &self.params.data[self.params.layout.lm_head..self.params.layout.lm_head + v * c];
        for (i, &slot) in slots.iter().enumerate() {
            let (start, end) = (batch.seq_starts[i], batch.seq_starts[i + 1]);
            for l in 0..self.cfg.num_layers {
                let qkv = &ws.layers[l].qkv[start * qkv_w..end * qkv_w];
                for (pos, row) in qkv.chunks(qkv_w).enumerate() {
                    cache.store(l, slot, pos, &row[hd..hd + kvd], &row[hd + kvd..hd + 2 * kvd]);
                }
            }
            cache.len[slot] = end - start;
            let last = &ws.lnf[(end - 1) * c..end * c];
            matmul_nt(&mut logits[i * v..(i + 1) * v], last, w, 1, v, c, false);
        }
        Ok(())
    }

    /// Append one token to each listed slot and compute next-token logits for each, in
    /// `buf.logits` rows in the order of `slots`. Packs the weights on every call: loops should
    /// pack once (`DecodeWeights::new`) and call `forward_cached`.
    pub fn decode_step(
        &self,
        tokens: &[u32],
        slots: &[usize],
        cache: &mut KvCache,
        buf: &mut DecodeBuffers,
    ) -> Result<()> {
        let rows: Vec<usize> = (0..slots.len()).collect();
        self.forward_cached(&DecodeWeights::new(self), tokens, slots, &rows, cache, buf)
    }

    /// Run new tokens through the model against the KV cache, single-threaded. Row i is token
    /// `tokens[i]` appended to cache slot `slots[i]`: a slot's rows take its next positions in
    /// order, so one call can prefill a whole prompt (or a chunk of it) for some slots while
    /// decoding one token for others. The next-token logits of rows `logit_rows` (strictly
    /// increasing) go to rows 0.. of `buf.logits`.
    ///
    /// Every kernel works row by row (`matmul_packed` included), so a row's results are
    /// bit-identical whatever else is in the call.
    pub fn forward_cached(
        &self,
        w: &DecodeWeights,
        tokens: &[u32],
        slots: &[usize],
        logit_rows: &[usize],
        cache: &mut KvCache,
        buf: &mut DecodeBuffers,
    ) -> Result<()> {
        let cfg = &self.cfg;
        check_step(self, tokens, slots, logit_rows)?;
        if w.layers.len() != cfg.num_layers
            || w.lm_head.k() != cfg.hidden_size
            || cache.kv_dim != cfg.num_kv_heads * cfg.head_dim
        {
            return Err(Error::shape("forward_cached", "weights or cache built for another model"));
        }
        let max_pos = cache.max_len.min(self.rope.max_positions());
        assign_positions(slots, &cache.len, max_pos, &mut buf.positions, &mut buf.next_pos)?;
        buf.reserve(self, slots.len(), logit_rows.len());
        if buf.scores.len() < cache.t_cap {
            buf.scores.resize(cache.t_cap, 0.0);
        }
        decode_stack(self, &mut CpuStep { w, slots, cache: &mut *cache, buf: &mut *buf }, tokens, logit_rows)?;
        cache.len.copy_from_slice(&buf.next_pos);
        Ok(())
    }
}

/// The CPU's half of a decode step ([`DecodeDevice`]): packed weights and their row-wise GEMM
/// (`matmul_packed`), the blocked KV cache and [`attend_row`], row-wise norms, RoPE and SwiGLU;
/// every operation is row by row, so a row's results do not depend on the other rows.
struct CpuStep<'a> {
    w: &'a DecodeWeights,
    slots: &'a [usize],
    cache: &'a mut KvCache,
    buf: &'a mut DecodeBuffers,
}

impl DecodeDevice for CpuStep<'_> {
    fn embed(&mut self, model: &Model, tokens: &[u32]) -> Result<()> {
        let (c, p, lay) = (model.cfg.hidden_size, &model.params.data, &model.params.layout);
        for (row, &t) in self.buf.x[..tokens.len() * c].chunks_mut(c).zip(tokens) {
            row.copy_from_slice(&p[lay.embed + t as usize * c..lay.embed + (t as usize + 1) * c]);
        }
        Ok(())
    }

    fn rmsnorm(&mut self, model: &Model, norm: Norm, rows: usize) -> Result<()> {
        let (c, p, lay) = (model.cfg.hidden_size, &model.params.data, &model.params.layout);
        let at = match norm {
            Norm::Attn(l) => lay.layers[l].ln1,
            Norm::Mlp(l) => lay.layers[l].ln2,
            Norm::Final => lay.final_norm,
        };
        let b = &mut *self.buf;
        let eps = model.cfg.rms_norm_eps as f32;
        ops::rmsnorm_rows(&mut b.ln[..rows * c], &mut b.rstd[..rows], &b.x[..rows * c], &p[at..at + c], eps);
        Ok(())
    }

    fn project(&mut self, model: &Model, proj: Proj, rows: usize) -> Result<()> {
        let cfg = &model.cfg;
        let (c, inter, qkv_w, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.qkv_dim(), cfg.attn_dim());
        let b = &mut *self.buf;
        match proj {
            Proj::Qkv(l) => {
                matmul_packed(&mut b.qkv[..rows * qkv_w], &b.ln[..rows * c], rows, &self.w.layers[l].qkv, false);
                Ok(())
            }
            // row-parallel o_proj and down_proj under tensor parallelism: one rank keeps the
            // residual, every rank adds its partial product, the all-reduce sums them
            Proj::Out(l) | Proj::Down(l) => {
                let x = &mut b.x[..rows * c];
                if !model.adds_residual() {
                    x.fill(0.0);
                }
                match proj {
                    Proj::Out(_) => matmul_packed(x, &b.att[..rows * hd], rows, &self.w.layers[l].o, true),
                    _ => matmul_packed(x, &b.act[..rows * inter], rows, &self.w.layers[l].down, true),
                }
                model.tp_reduce(x)
            }
            Proj::GateUp(l) => {
                matmul_packed(
                    &mut b.gate_up[..rows * 2 * inter],
                    &b.ln[..rows * c],
                    rows,
                    &self.w.layers[l].gate_up,
                    false,
                );
                Ok(())
            }
            Proj::Head => {
                let v = cfg.vocab_size;
                matmul_packed(&mut b.logits[..rows * v], &b.ln[..rows * c], rows, &self.w.lm_head, false);
                Ok(())
            }
        }
    }

    fn attend(&mut self, model: &Model, layer: usize, rows: usize) -> Result<()> {
        let cfg = &model.cfg;
        let (qkv_w, hd, d) = (cfg.qkv_dim(), cfg.attn_dim(), cfg.head_dim);
        let (cache, b) = (&mut *self.cache, &mut *self.buf);
        let qkv = &mut b.qkv[..rows * qkv_w];
        if let Some(bias) = model.params.layout.layers[layer].qkv_b {
            let bias = &model.params.data[bias..bias + qkv_w];
            for row in qkv.chunks_mut(qkv_w) {
                row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
        }
        if let Some(qn) = model.params.layout.layers[layer].qk_norm {
            let eps = cfg.rms_norm_eps as f32;
            for (heads, col, _, w) in crate::model::transformer::head_norms(cfg, rows, qn) {
                let rstd = &mut b.rstd[..rows * heads];
                head_norm_forward(&mut qkv[col..], None, rstd, &model.params.data[w], qkv_w, heads, eps);
            }
        }
        ops::rope_rows(qkv, qkv_w, cfg.num_heads + cfg.num_kv_heads, &b.positions, &model.rope, false);
        let (kvd, t_cap, max_len) = (cache.kv_dim, cache.t_cap, cache.max_len);
        let qkv = &b.qkv[..rows * qkv_w];
        for (i, row) in qkv.chunks(qkv_w).enumerate() {
            cache.store(layer, self.slots[i], b.positions[i] as usize, &row[hd..hd + kvd], &row[hd + kvd..]);
        }
        let group = cfg.num_heads / cfg.num_kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        for (i, (out, row)) in b.att[..rows * hd].chunks_mut(hd).zip(qkv.chunks(qkv_w)).enumerate() {
            let s = self.slots[i];
            attend_row(
                out,
                &row[..hd],
                &cache.k[layer][s * kvd * t_cap..(s + 1) * kvd * t_cap],
                &cache.v[layer][s * max_len * kvd..(s + 1) * max_len * kvd],
                AttendShape { d, group, len: b.positions[i] as usize + 1, scale },
                &mut b.scores,
            );
        }
        Ok(())
    }

    fn swiglu(&mut self, model: &Model, rows: usize) -> Result<()> {
        let inter = model.cfg.intermediate_size;
        let b = &mut *self.buf;
        ops::swiglu_rows(&mut b.act[..rows * inter], &b.gate_up[..rows * 2 * inter], inter);
        Ok(())
    }

    fn gather(&mut self, model: &Model, logit_rows: &[usize]) -> Result<()> {
        // increasing indices, so a row is never overwritten before it is moved
        let c = model.cfg.hidden_size;
        for (dst, &src) in logit_rows.iter().enumerate() {
            if dst != src {
                self.buf.x.copy_within(src * c..(src + 1) * c, dst * c);
            }
        }
        Ok(())
    }
}
