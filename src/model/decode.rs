//! Incremental decoding with a KV cache: prefill a prompt into a cache slot (the training forward
//! computes it; its post-RoPE k/v are copied out), then decode one token per active slot per step.
//!
//! The decode path is the training forward specialised to one new row per sequence: the same
//! kernels (RMSNorm, fused q|k|v and gate|up GEMMs, RoPE, SwiGLU) on [B, ·] buffers, attention
//! against the cache. `tests/decode.rs` checks it against the full forward position by position.

use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::transformer::Model;
use crate::model::workspace::Workspace;
use crate::tensor::cpu::matmul_nt;
use crate::tensor::cpu::ops;
use crate::tensor::cpu::simd::{self, simd_kernel};
use rayon::prelude::*;

/// Keys and values of every layer for `slots` sequences of up to `max_len` tokens.
/// Layout per layer: [slots, max_len, KV·D] for K and for V.
#[derive(Debug)]
pub struct KvCache {
    pub slots: usize,
    pub max_len: usize,
    kv_dim: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Tokens held per slot.
    pub len: Vec<usize>,
}

impl KvCache {
    /// An empty cache for a model.
    pub fn new(model: &Model, slots: usize, max_len: usize) -> Self {
        let kv_dim = model.cfg.num_kv_heads * model.cfg.head_dim;
        let per_layer = slots * max_len * kv_dim;
        let layers = model.cfg.num_layers;
        KvCache {
            slots,
            max_len,
            kv_dim,
            k: (0..layers).map(|_| vec![0.0; per_layer]).collect(),
            v: (0..layers).map(|_| vec![0.0; per_layer]).collect(),
            len: vec![0; slots],
        }
    }

    fn row(&self, slot: usize, pos: usize) -> std::ops::Range<usize> {
        let o = (slot * self.max_len + pos) * self.kv_dim;
        o..o + self.kv_dim
    }
}

/// Per-step buffers of the decode path for up to `rows` sequences.
#[derive(Debug, Default)]
pub struct DecodeBuffers {
    x: Vec<f32>,
    ln: Vec<f32>,
    rstd: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    /// [rows, V] next-token logits of the last decode step.
    pub logits: Vec<f32>,
    /// [rows, max_len] attention scores; [rows] positions of the new tokens.
    scores: Vec<f32>,
    positions: Vec<u32>,
}

impl DecodeBuffers {
    /// Buffers for `rows` concurrent sequences.
    pub fn new(model: &Model, rows: usize) -> Self {
        let c = &model.cfg;
        DecodeBuffers {
            x: vec![0.0; rows * c.hidden_size],
            ln: vec![0.0; rows * c.hidden_size],
            rstd: vec![0.0; rows],
            qkv: vec![0.0; rows * c.qkv_dim()],
            att: vec![0.0; rows * c.attn_dim()],
            gate_up: vec![0.0; rows * 2 * c.intermediate_size],
            act: vec![0.0; rows * c.intermediate_size],
            logits: vec![0.0; rows * c.vocab_size],
            scores: Vec::new(),
            positions: Vec::with_capacity(rows),
        }
    }
}

simd_kernel! {
    /// One query head against cached keys/values 0..len: out = softmax(scale·K q) V.
    /// `scores` is scratch of at least `len` floats.
    fn attend_one(out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], stride: usize, len: usize, scale: f32, scores: &mut [f32]) -> () {
        let d = q.len();
        for (j, s) in scores[..len].iter_mut().enumerate() {
            *s = simd::dot(q, &k[j * stride..j * stride + d]) * scale;
        }
        let m = simd::max(&scores[..len]);
        let sum = simd::exp_shift_sum(&mut scores[..len], m);
        let inv = 1.0 / sum;
        out.iter_mut().for_each(|o| *o = 0.0);
        for (j, &p) in scores[..len].iter().enumerate() {
            let w = p * inv;
            for (o, &vv) in out.iter_mut().zip(&v[j * stride..j * stride + d]) {
                *o += w * vv;
            }
        }
    }
}

impl Model {
    /// Run a prompt through the model into cache `slot` and return its last position's logits in
    /// `logits` ([V]). `ws` is a training workspace (reused; sized on demand).
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
            return Err(Error::Invalid(format!("prefill: {k} prompts, {} slots, logits for fewer rows", slots.len())));
        }
        let mut batch = Batch::new();
        for (prompt, &slot) in prompts.iter().zip(slots) {
            if prompt.is_empty() || prompt.len() > cache.max_len || slot >= cache.slots {
                return Err(Error::Invalid(format!(
                    "prefill: prompt of {} tokens into slot {slot} (cache: {} slots × {} tokens)",
                    prompt.len(),
                    cache.slots,
                    cache.max_len
                )));
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
                    let r = cache.row(slot, pos);
                    cache.k[l][r.clone()].copy_from_slice(&row[hd..hd + kvd]);
                    cache.v[l][r].copy_from_slice(&row[hd + kvd..hd + 2 * kvd]);
                }
            }
            cache.len[slot] = end - start;
            let last = &ws.lnf[(end - 1) * c..end * c];
            matmul_nt(&mut logits[i * v..(i + 1) * v], last, w, 1, v, c, false);
        }
        Ok(())
    }

    /// Append one token to each listed slot and compute next-token logits for each, in
    /// `buf.logits` rows in the order of `slots`. `positions[i]` must equal `cache.len[slots[i]]`.
    pub fn decode_step(
        &self,
        tokens: &[u32],
        slots: &[usize],
        cache: &mut KvCache,
        buf: &mut DecodeBuffers,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let b = slots.len();
        if tokens.len() != b || b * cfg.hidden_size > buf.x.len() {
            return Err(Error::Invalid(format!(
                "decode_step: {} tokens for {b} slots (buffers for fewer rows)",
                tokens.len()
            )));
        }
        let positions = &mut buf.positions;
        positions.clear();
        for &s in slots {
            if s >= cache.slots || cache.len[s] >= cache.max_len {
                return Err(Error::Invalid(format!("decode_step: slot {s} is full or out of range")));
            }
            positions.push(cache.len[s] as u32);
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::Invalid(format!("decode_step: token {t} outside the vocabulary")));
        }
        if buf.scores.len() < b * cache.max_len {
            buf.scores.resize(b * cache.max_len, 0.0);
        }
        let positions = &buf.positions;
        let (c, inter, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qkv_w, hd, d) = (cfg.qkv_dim(), cfg.attn_dim(), cfg.head_dim);
        let (h_n, kvd) = (cfg.num_heads, cache.kv_dim);
        let group = cfg.num_heads / cfg.num_kv_heads;
        let eps = cfg.rms_norm_eps as f32;
        let scale = 1.0 / (d as f32).sqrt();
        let p = &self.params.data;
        let lay = &self.params.layout;
        let x = &mut buf.x[..b * c];
        ops::embedding_forward(x, &p[lay.embed..], tokens, c);
        for l in 0..cfg.num_layers {
            let o = lay.layers[l];
            ops::rmsnorm_forward(&mut buf.ln[..b * c], &mut buf.rstd[..b], x, &p[o.ln1..o.ln1 + c], eps);
            let qkv = &mut buf.qkv[..b * qkv_w];
            matmul_nt(qkv, &buf.ln[..b * c], &p[o.qkv_w..o.qkv_w + qkv_w * c], b, qkv_w, c, false);
            if let Some(bias) = o.qkv_b {
                ops::add_bias(qkv, &p[bias..bias + qkv_w]);
            }
            ops::rope_apply(qkv, qkv_w, cfg.num_heads + cfg.num_kv_heads, positions, &self.rope, false);
            for (i, &s) in slots.iter().enumerate() {
                let r = cache.row(s, positions[i] as usize);
                cache.k[l][r.clone()].copy_from_slice(&qkv[i * qkv_w + hd..i * qkv_w + hd + kvd]);
                cache.v[l][r].copy_from_slice(&qkv[i * qkv_w + hd + kvd..i * qkv_w + hd + 2 * kvd]);
            }
            let (kc, vc, max_len) = (&cache.k[l], &cache.v[l], cache.max_len);
            let qkv = &buf.qkv[..b * qkv_w];
            let scores_all = &mut buf.scores[..b * max_len];
            buf.att[..b * hd].par_chunks_mut(hd).zip(scores_all.par_chunks_mut(max_len)).enumerate().for_each(
                |(i, (out, scores))| {
                    let len = positions[i] as usize + 1;
                    let base = slots[i] * max_len * kvd;
                    for h in 0..h_n {
                        let g = h / group;
                        let (k, vv) = (&kc[base + g * d..base + len * kvd], &vc[base + g * d..base + len * kvd]);
                        attend_one(
                            &mut out[h * d..(h + 1) * d],
                            &qkv[i * qkv_w + h * d..i * qkv_w + (h + 1) * d],
                            k,
                            vv,
                            kvd,
                            len,
                            scale,
                            scores,
                        );
                    }
                },
            );
            matmul_nt(x, &buf.att[..b * hd], &p[o.o_w..o.o_w + c * hd], b, c, hd, true);
            ops::rmsnorm_forward(&mut buf.ln[..b * c], &mut buf.rstd[..b], x, &p[o.ln2..o.ln2 + c], eps);
            let gu = &mut buf.gate_up[..b * 2 * inter];
            matmul_nt(gu, &buf.ln[..b * c], &p[o.gate_up_w..o.gate_up_w + 2 * inter * c], b, 2 * inter, c, false);
            ops::swiglu_forward(&mut buf.act[..b * inter], gu, inter);
            matmul_nt(x, &buf.act[..b * inter], &p[o.down_w..o.down_w + c * inter], b, c, inter, true);
        }
        ops::rmsnorm_forward(&mut buf.ln[..b * c], &mut buf.rstd[..b], x, &p[lay.final_norm..lay.final_norm + c], eps);
        matmul_nt(&mut buf.logits[..b * v], &buf.ln[..b * c], &p[lay.lm_head..lay.lm_head + v * c], b, v, c, false);
        for &s in slots {
            cache.len[s] += 1;
        }
        Ok(())
    }
}
