//! The GPU's operations of a decode step ([`GpuStep`], `model::decode_stack`'s [`DecodeDevice`]):
//! the backend's RMSNorm, embedding and SwiGLU, the products through cuBLAS with the weights read
//! in place (with bf16 products, first operands written in bf16 by the kernels that make them),
//! the fused q|k|v epilogue and the decode attention of cuda/decode_attention.cu.

use crate::cuda::act::GpuAct;
use crate::cuda::backend::GpuRope;
use crate::cuda::decode_attn::decode_attn_entry;
use crate::cuda::device::{Arg, Gpu};
use crate::cuda::kv_cache::GpuKvCache;
use crate::error::{Error, Result};
use crate::model::decode_stack::{DecodeDevice, Norm, Proj};
use crate::model::Model;
use crate::tensor::{Backend, GemmShape};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

/// The largest head dim of the decode attention kernels (`DEC_MAX_D` of cuda/decode_attention.cu).
const DEC_MAX_D: usize = 256;

/// The decode step's device buffers, grown on demand: the residual stream, normed rows, RMSNorm
/// scratch, q|k|v, attention output, gate|up, SwiGLU output, the logits of the picked rows, and
/// the rows [`DecodeDevice::gather`] moves. The normed rows, attention output and SwiGLU output,
/// the first operands of the products, and gate|up, which only SwiGLU reads, are activations
/// (cuda::act): with bf16 products the kernels and the gate|up product write them in bf16, as
/// the training forward does.
pub(super) struct StepBufs {
    pub(super) x: CudaSlice<f32>,
    pub(super) ln: GpuAct,
    pub(super) rstd: CudaSlice<f32>,
    pub(super) qkv: CudaSlice<f32>,
    pub(super) att: GpuAct,
    pub(super) gate_up: GpuAct,
    pub(super) act: GpuAct,
    pub(super) logits: CudaSlice<f32>,
    pub(super) gather: CudaSlice<f32>,
    /// The decode attention's per-split partial results (rows split over blocks).
    pub(super) partial: CudaSlice<f32>,
}

/// Where a decode step's per-row inputs are on the device (`u32` tokens and positions, `i32`
/// slots and attended lengths).
#[derive(Debug, Clone, Copy)]
pub(super) struct RowPtrs {
    pub(super) tokens: u64,
    pub(super) positions: u64,
    pub(super) slots: u64,
    pub(super) lens: u64,
    /// The logit rows of a step with prompt rows (u32; what [`DecodeDevice::gather`] moves).
    pub(super) logit_rows: u64,
}

/// The GPU's half of a decode step ([`DecodeDevice`]): the backend's operations on the decoder's
/// buffers, weights read in place, and the cache kernels of cuda/decode_attention.cu.
pub(super) struct GpuStep<'a> {
    pub(super) g: &'a Gpu,
    pub(super) p: &'a CudaSlice<f32>,
    pub(super) rope: &'a GpuRope,
    pub(super) bufs: &'a mut StepBufs,
    pub(super) cache: &'a GpuKvCache,
    /// The device addresses of the step's tokens, positions, slots and attended lengths.
    pub(super) rows: RowPtrs,
    /// The per-group decode attention's (splits, positions per split) of each row.
    pub(super) split: (usize, usize),
}

impl DecodeDevice for GpuStep<'_> {
    fn embed(&mut self, model: &Model, tokens: &[u32]) -> Result<()> {
        let (c, v, at) = (model.cfg.hidden_size, model.cfg.vocab_size, model.params.layout.embed);
        let x = Gpu::m(&mut self.bufs.x, 0..tokens.len() * c);
        self.g.embed_ids(x, Gpu::r(self.p, at..at + v * c), self.rows.tokens, c)
    }

    fn rmsnorm(&mut self, model: &Model, norm: Norm, rows: usize) -> Result<()> {
        let (c, lay) = (model.cfg.hidden_size, &model.params.layout);
        let at = match norm {
            Norm::Attn(l) => lay.layers[l].ln1,
            Norm::Mlp(l) => lay.layers[l].ln2,
            Norm::Final => lay.final_norm,
        };
        if rows == 0 {
            return Ok(());
        }
        let (g, b) = (self.g, &mut *self.bufs);
        let eps = model.cfg.rms_norm_eps as f32;
        let (x, w) = (Gpu::r(&b.x, 0..rows * c), Gpu::r(self.p, at..at + c));
        g.rmsnorm_forward(b.ln.view_mut(0..rows * c), Gpu::m(&mut b.rstd, 0..rows), x, w, eps)
    }

    fn project(&mut self, model: &Model, proj: Proj, rows: usize) -> Result<()> {
        let cfg = &model.cfg;
        let (c, inter, v, qkv_w, hd) =
            (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.qkv_dim(), cfg.attn_dim());
        let (g, p, b, lay) = (self.g, self.p, &mut *self.bufs, &model.params.layout);
        if rows == 0 {
            return Ok(());
        }
        // out (+)= in · Wᵀ: (output width, input width, weight offset, accumulate)
        let (n, k, at, acc) = match proj {
            Proj::Qkv(l) => (qkv_w, c, lay.layers[l].qkv_w, false),
            Proj::Out(l) => (c, hd, lay.layers[l].o_w, true),
            Proj::GateUp(l) => (2 * inter, c, lay.layers[l].gate_up_w, false),
            Proj::Down(l) => (c, inter, lay.layers[l].down_w, true),
            Proj::Head => (v, c, lay.lm_head, false),
        };
        let (w, shape) = (Gpu::r(p, at..at + n * k), GemmShape::new(rows, n, k));
        let out = match proj {
            Proj::Qkv(_) => &mut b.qkv,
            Proj::Out(_) | Proj::Down(_) => &mut b.x,
            // (only SwiGLU reads it: an activation, as in the training forward)
            Proj::GateUp(_) => {
                return g.matmul_nt_to_act(b.gate_up.view_mut(0..rows * n), b.ln.view(0..rows * k), w, shape)
            }
            Proj::Head => &mut b.logits,
        };
        let inp = match proj {
            Proj::Qkv(_) | Proj::GateUp(_) | Proj::Head => &b.ln,
            Proj::Out(_) => &b.att,
            Proj::Down(_) => &b.act,
        };
        // row-parallel o_proj and down_proj under tensor parallelism: one rank keeps the residual,
        // every rank adds its partial product, the all-reduce sums them (as the CPU's decode)
        let tp = model.tp.as_ref().filter(|_| acc);
        if tp.is_some() && !model.adds_residual() {
            g.zero(Gpu::m(out, 0..rows * n))?;
        }
        g.matmul_nt_act(Gpu::m(out, 0..rows * n), inp.view(0..rows * k), w, shape, acc)?;
        match tp {
            Some(t) => g.all_reduce_tp(Gpu::m(out, 0..rows * n), &t.group),
            None => Ok(()),
        }
    }

    fn attend(&mut self, model: &Model, layer: usize, rows: usize) -> Result<()> {
        let cfg = &model.cfg;
        let (h, kv, d, qkv_w, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.qkv_dim(), cfg.attn_dim());
        let (g, cache, b) = (self.g, self.cache, &mut *self.bufs);
        if d > DEC_MAX_D {
            let why = format!("head_dim {d}: the decode attention kernels take at most {DEC_MAX_D}");
            return Err(Error::shape("decode step", why));
        }
        if self.rope.half * 2 != d {
            return Err(Error::shape(
                "decode step",
                format!("RoPE tables of {} dims for heads of {d}", 2 * self.rope.half),
            ));
        }
        let s = &g.stream;
        let (kp, vp) = (cache.k[layer].device_ptr(s).0, cache.v[layer].device_ptr(s).0);
        let (slot_p, lens_p) = (self.rows.slots, self.rows.lens);
        let qp = g.pm(&mut Gpu::m(&mut b.qkv, 0..rows * qkv_w));
        let bias = match model.params.layout.layers[layer].qkv_b {
            Some(at) => g.pr(&Gpu::r(self.p, at..at + qkv_w)),
            None => 0,
        };
        let (qs, ml) = (qkv_w as i32, cache.max_len as i32);
        // Qwen3's query and key head norms, in place, before RoPE (the model has no q|k|v bias)
        if let Some(qn) = model.params.layout.layers[layer].qk_norm {
            for (heads, col, _, w) in crate::model::transformer::head_norms(cfg, rows, qn) {
                let args = [
                    Arg::P(qp + 4 * col as u64),
                    Arg::P(0),
                    Arg::P(0),
                    Arg::P(g.pr(&Gpu::r(self.p, w))),
                    Arg::I(rows as i32),
                    Arg::I(qs),
                    Arg::I(heads as i32),
                    Arg::I(d as i32),
                    Arg::F(cfg.rms_norm_eps as f32),
                ];
                g.launch("rmsnorm", "head_norm_fwd_f32", ((rows * heads) as u32, 1, 1), (32, 1, 1), 0, &args)?;
            }
        }
        // bias, RoPE and the cache store in one pass (cuda/decode_attention.cu)
        let args = [
            Arg::P(qp),
            Arg::I(qs),
            Arg::P(bias),
            Arg::P(kp),
            Arg::P(vp),
            Arg::P(slot_p),
            Arg::P(self.rows.positions),
            Arg::P(self.rope.cos.device_ptr(s).0),
            Arg::P(self.rope.sin.device_ptr(s).0),
            Arg::I(rows as i32),
            Arg::I(h as i32),
            Arg::I(kv as i32),
            Arg::I(d as i32),
            Arg::I(ml),
        ];
        let cache_type = if cache.bf16 { "_bf16" } else { "" };
        let store = format!("decode_qkv_store_f32{cache_type}");
        g.launch("decode_attention", &store, (rows as u32, 1, 1), (128, 1, 1), 0, &args)?;
        let mut att_rows = b.att.view_mut(0..rows * hd);
        let (att, out_type) = (att_rows.ptr(g), att_rows.out_suffix());
        let merge_type = if b.att.is_bf16() { "o16" } else { "f32" };
        let mut args = vec![
            Arg::P(att),
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
        match decode_attn_entry(g.decode_attn(), h / kv.max(1), d) {
            // one block per (kv head, row) for the whole group, each row's positions in `splits`
            // blocks, merged after
            Some(dm) => {
                let (splits, split_len) = self.split;
                // (grown for `splits` by the step; not read with one split)
                let partial = b.partial.device_ptr_mut(s).0;
                args.extend([Arg::I(split_len as i32), Arg::P(partial)]);
                let attend = format!("decode_attn_gqa_{dm}_f32{cache_type}{out_type}");
                let grid = (kv as u32, rows as u32, splits as u32);
                g.launch("decode_attention", &attend, grid, (128, 1, 1), 0, &args)?;
                if splits == 1 {
                    return Ok(());
                }
                let args = [
                    Arg::P(att),
                    Arg::I(hd as i32),
                    Arg::P(partial),
                    Arg::I(splits as i32),
                    Arg::I(h as i32),
                    Arg::I(kv as i32),
                    Arg::I(d as i32),
                ];
                let merge = format!("decode_attn_merge_{dm}_{merge_type}");
                g.launch("decode_attention", &merge, (kv as u32, rows as u32, 1), (128, 1, 1), 0, &args)
            }
            None => {
                let attend = format!("decode_attn_f32{cache_type}{out_type}");
                g.launch("decode_attention", &attend, (h as u32, rows as u32, 1), (128, 1, 1), 0, &args)
            }
        }
    }

    fn swiglu(&mut self, model: &Model, rows: usize) -> Result<()> {
        let inter = model.cfg.intermediate_size;
        let (g, b) = (self.g, &mut *self.bufs);
        g.swiglu_forward(b.act.view_mut(0..rows * inter), b.gate_up.view(0..rows * 2 * inter), inter)
    }

    fn gather(&mut self, model: &Model, logit_rows: &[usize]) -> Result<()> {
        if logit_rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        // one row gather (the embedding kernel, x as its table) from the rows uploaded with the
        // step, then one copy back
        let (c, n) = (model.cfg.hidden_size, logit_rows.len() * model.cfg.hidden_size);
        let b = &mut *self.bufs;
        let rows = logit_rows.last().map_or(0, |&r| r + 1);
        self.g.embed_ids(Gpu::m(&mut b.gather, 0..n), Gpu::r(&b.x, 0..rows * c), self.rows.logit_rows, c)?;
        self.g.copy(Gpu::m(&mut b.x, 0..n), Gpu::r(&b.gather, 0..n))
    }
}
