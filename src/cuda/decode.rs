//! Generation on the GPU: a KV cache in device memory ([slots, KV, max_len, D] per layer, the
//! layout of cuda/decode_attention.cu) and a decode step that runs B new tokens (one per slot)
//! through the model against it. The step uses the same backend operations as training (RMSNorm,
//! GEMMs, RoPE, SwiGLU, LM head) plus the two cache kernels; `step_sampled` then draws the next
//! tokens on the device (cuda/sample.cu). Generation with continuous batching is built on it in
//! cuda/generate.rs.

use crate::cuda::backend::{GpuBatch, GpuRope};
use crate::cuda::device::{drv, Arg, Gpu};
use crate::cuda::sample::{sample_rows, SampleBufs};
use crate::error::{Error, Result};
use crate::model::{Batch, Model};
use crate::rollout::sampler::Sampled;
use crate::tensor::{Backend, GemmShape};
use cudarc::driver::{CudaSlice, DevicePtr};
use std::sync::Arc;

/// Index of the next-token logits ([B, V]) among the decoder's work buffers.
const LOGITS: usize = 7;

/// Keys and values of every layer for `slots` sequences of up to `max_len` tokens, on the device.
pub struct GpuKvCache {
    pub slots: usize,
    pub max_len: usize,
    k: Vec<CudaSlice<f32>>,
    v: Vec<CudaSlice<f32>>,
    /// Tokens held per slot.
    pub len: Vec<usize>,
}

/// A model's weights on the device plus step buffers, for generation.
pub struct GpuDecoder {
    gpu: Arc<Gpu>,
    params: CudaSlice<f32>,
    rope: GpuRope,
    bufs: Vec<CudaSlice<f32>>,
    sampling: SampleBufs,
}

impl GpuKvCache {
    /// An empty cache for `model`.
    pub fn new(gpu: &Gpu, model: &Model, slots: usize, max_len: usize) -> Result<Self> {
        let per = slots * model.cfg.num_kv_heads * max_len * model.cfg.head_dim;
        let alloc = || gpu.stream.alloc_zeros::<f32>(per.max(1)).map_err(drv("KV cache alloc"));
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for _ in 0..model.cfg.num_layers {
            k.push(alloc()?);
            v.push(alloc()?);
        }
        Ok(GpuKvCache { slots, max_len, k, v, len: vec![0; slots] })
    }
}

impl GpuDecoder {
    /// Upload `model`'s weights.
    pub fn new(gpu: &Arc<Gpu>, model: &Model) -> Result<Self> {
        let mut bufs = Vec::new();
        for _ in 0..8 {
            bufs.push(gpu.empty()?);
        }
        Ok(GpuDecoder {
            gpu: gpu.clone(),
            params: gpu.upload(&model.params.data)?,
            rope: gpu.rope(&model.rope)?,
            bufs,
            sampling: SampleBufs::new(gpu, 1)?,
        })
    }

    /// Append `tokens[i]` to cache slot `slots[i]` (distinct slots) and return the next-token
    /// logits of every row ([B, V], on the host).
    pub fn step(&mut self, model: &Model, tokens: &[u32], slots: &[usize], cache: &mut GpuKvCache) -> Result<Vec<f32>> {
        self.forward(model, tokens, slots, cache)?;
        let mut out = vec![0.0; tokens.len() * model.cfg.vocab_size];
        self.gpu.download(&self.bufs[LOGITS], &mut out)?;
        Ok(out)
    }

    /// [`GpuDecoder::step`], then one token per row sampled on the device from the row's uniform
    /// (cuda/sample.cu; temperature ≤ 0: greedy): only ids, log-probs and entropies come back.
    pub fn step_sampled(
        &mut self,
        model: &Model,
        tokens: &[u32],
        slots: &[usize],
        cache: &mut GpuKvCache,
        uniforms: &[f64],
        temperature: f32,
    ) -> Result<Vec<Sampled>> {
        if uniforms.len() != tokens.len() {
            return Err(Error::shape("decode step", format!("{} uniforms for {} rows", uniforms.len(), tokens.len())));
        }
        self.forward(model, tokens, slots, cache)?;
        let v = model.cfg.vocab_size;
        let logits = Gpu::r(&self.bufs[LOGITS], 0..tokens.len() * v);
        sample_rows(&self.gpu, &logits, v, uniforms, temperature, &mut self.sampling)
    }

    /// The decode step's forward: the next-token logits stay in the device buffer `LOGITS`.
    fn forward(&mut self, model: &Model, tokens: &[u32], slots: &[usize], cache: &mut GpuKvCache) -> Result<()> {
        let cfg = &model.cfg;
        let b = tokens.len();
        if slots.len() != b || b == 0 {
            return Err(Error::shape("decode step", format!("{b} tokens for {} slots", slots.len())));
        }
        if model.tp.is_some() {
            return Err(Error::Invalid("GPU decoding under tensor parallelism is not supported yet".into()));
        }
        let mut positions = Vec::with_capacity(b);
        for (&s, &t) in slots.iter().zip(tokens) {
            if s >= cache.slots || cache.len[s] >= cache.max_len.min(cfg.max_position_embeddings) {
                return Err(Error::Invalid(format!("decode step: slot {s} is full or out of range")));
            }
            if t as usize >= cfg.vocab_size {
                return Err(Error::Invalid(format!("decode step: token {t} outside the vocabulary")));
            }
            positions.push(cache.len[s] as u32);
        }
        if slots.iter().enumerate().any(|(i, s)| slots[..i].contains(s)) {
            return Err(Error::Invalid("decode step: a slot appears twice".into()));
        }
        let host = Batch { tokens: tokens.to_vec(), targets: vec![0; b], positions, seq_starts: (0..=b).collect() };
        let dev: GpuBatch = self.gpu.batch(host.packed())?;
        let slot_ids: Vec<i32> = slots.iter().map(|&s| s as i32).collect();
        let lens: Vec<i32> = host.positions.iter().map(|&p| p as i32 + 1).collect();
        let s = &self.gpu.stream;
        let slot_dev = self.gpu.htod(&slot_ids)?;
        let lens_dev = self.gpu.htod(&lens)?;

        let (g, p, lay) = (&*self.gpu, &self.params, &model.params.layout);
        let (c, inter, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (h, kv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let (qkv_w, hd) = (cfg.qkv_dim(), cfg.attn_dim());
        let eps = cfg.rms_norm_eps as f32;
        for (i, len) in [b * c, b * c, b, b * qkv_w, b * hd, b * 2 * inter, b * inter, b * v].into_iter().enumerate() {
            g.grow(&mut self.bufs[i], len)?;
        }
        let [x, ln, rstd, qkv, att, gu, act, logits] = &mut self.bufs[..] else {
            return Err(Error::shape("decode step", format!("{} work buffers, expected 8", self.bufs.len())));
        };
        g.embedding_forward(Gpu::m(x, 0..b * c), Gpu::r(p, lay.embed..lay.embed + v * c), &dev, c)?;
        let (slot_p, lens_p) = (slot_dev.device_ptr(s).0, lens_dev.device_ptr(s).0);
        for l in 0..cfg.num_layers {
            let o = lay.layers[l];
            g.rmsnorm_forward(
                Gpu::m(ln, 0..b * c),
                Gpu::m(rstd, 0..b),
                Gpu::r(x, 0..b * c),
                Gpu::r(p, o.ln1..o.ln1 + c),
                eps,
            )?;
            let wq = Gpu::r(p, o.qkv_w..o.qkv_w + qkv_w * c);
            g.matmul_nt(Gpu::m(qkv, 0..b * qkv_w), Gpu::r(ln, 0..b * c), wq, GemmShape::new(b, qkv_w, c), false)?;
            if let Some(bias) = o.qkv_b {
                g.add_bias(Gpu::m(qkv, 0..b * qkv_w), Gpu::r(p, bias..bias + qkv_w))?;
            }
            g.rope_apply(Gpu::m(qkv, 0..b * qkv_w), qkv_w, h + kv, &dev, &self.rope, false)?;
            let (kp, vp) = (cache.k[l].device_ptr(s).0, cache.v[l].device_ptr(s).0);
            let qp = g.pr(&Gpu::r(qkv, 0..b * qkv_w));
            let (qs, ml) = (qkv_w as i32, cache.max_len as i32);
            let args = [
                Arg::P(kp),
                Arg::P(vp),
                Arg::P(qp),
                Arg::I(qs),
                Arg::I(hd as i32),
                Arg::I(((h + kv) * d) as i32),
                Arg::P(slot_p),
                Arg::P(dev.positions.device_ptr(s).0),
                Arg::I(b as i32),
                Arg::I(kv as i32),
                Arg::I(d as i32),
                Arg::I(ml),
            ];
            g.launch("decode_attention", "kv_cache_store_f32", (b as u32, 1, 1), (128, 1, 1), 0, &args)?;
            let args = [
                Arg::P(g.pm(&mut Gpu::m(att, 0..b * hd))),
                Arg::I(hd as i32),
                Arg::P(qp),
                Arg::I(qs),
                Arg::P(kp),
                Arg::P(vp),
                Arg::P(slot_p),
                Arg::P(lens_p),
                Arg::I(h as i32),
                Arg::I(kv as i32),
                Arg::I(d as i32),
                Arg::I(ml),
            ];
            g.launch("decode_attention", "decode_attn_f32", (h as u32, b as u32, 1), (128, 1, 1), 0, &args)?;
            let wo = Gpu::r(p, o.o_w..o.o_w + c * hd);
            g.matmul_nt(Gpu::m(x, 0..b * c), Gpu::r(att, 0..b * hd), wo, GemmShape::new(b, c, hd), true)?;
            g.rmsnorm_forward(
                Gpu::m(ln, 0..b * c),
                Gpu::m(rstd, 0..b),
                Gpu::r(x, 0..b * c),
                Gpu::r(p, o.ln2..o.ln2 + c),
                eps,
            )?;
            let wgu = Gpu::r(p, o.gate_up_w..o.gate_up_w + 2 * inter * c);
            g.matmul_nt(
                Gpu::m(gu, 0..b * 2 * inter),
                Gpu::r(ln, 0..b * c),
                wgu,
                GemmShape::new(b, 2 * inter, c),
                false,
            )?;
            g.swiglu_forward(Gpu::m(act, 0..b * inter), Gpu::r(gu, 0..b * 2 * inter), inter)?;
            let wd = Gpu::r(p, o.down_w..o.down_w + c * inter);
            g.matmul_nt(Gpu::m(x, 0..b * c), Gpu::r(act, 0..b * inter), wd, GemmShape::new(b, c, inter), true)?;
        }
        let fw = Gpu::r(p, lay.final_norm..lay.final_norm + c);
        g.rmsnorm_forward(Gpu::m(ln, 0..b * c), Gpu::m(rstd, 0..b), Gpu::r(x, 0..b * c), fw, eps)?;
        let wh = Gpu::r(p, lay.lm_head..lay.lm_head + v * c);
        g.matmul_nt(Gpu::m(logits, 0..b * v), Gpu::r(ln, 0..b * c), wh, GemmShape::new(b, v, c), false)?;
        for &s in slots {
            cache.len[s] += 1;
        }
        Ok(())
    }

    /// Replace the weights with `params`, a device buffer of the same model (e.g. a `GpuModel`'s
    /// after its optimizer step): a device-to-device copy, ordered on the one stream.
    pub fn load_params(&mut self, params: &CudaSlice<f32>) -> Result<()> {
        if params.len() != self.params.len() {
            return Err(Error::shape(
                "decoder weights",
                format!("{} for a model of {}", params.len(), self.params.len()),
            ));
        }
        self.gpu.stream.memcpy_dtod(params, &mut self.params).map_err(drv("copy"))
    }

    /// The device this decoder runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
}
