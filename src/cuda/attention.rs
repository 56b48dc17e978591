//! The flash attention of the CUDA backend, host side: which kernels run for the device's dtype
//! (cuda/attention_fwd.cu and attention_bwd.cu with f32 and tf32 products, the tensor-core kernels
//! of attention_mma.cu with bf16), their launch shapes and scratch, and how the tensor-core
//! backward sums dK and dV over the query heads of a GQA group ([`DkdvPlan`]).

use crate::attention::{AttnSaved, AttnShape};
use crate::cuda::backend::GpuBatch;
use crate::cuda::device::{int, Arg, Gpu};
use crate::error::{Error, Result};
use crate::tensor::Dtype;
use cudarc::driver::{CudaView, CudaViewMut};

/// How the tensor-core backward sums dK and dV over the query heads that share a kv head. Both
/// are deterministic (no atomics); they differ in the order of f32 additions only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkdvPlan {
    /// One block per (key block, query head) writes that head's dK and dV into scratch, and
    /// `attn_bwd_group_sum_f32` sums each group in head order: a group's heads run in parallel
    /// (the default). Scratch: 2 · N · H · D floats more.
    PerHead,
    /// One block per (key block, kv head) loops over the group's heads, one after another: no
    /// extra scratch, a group's-size longer critical path.
    Grouped,
}

impl DkdvPlan {
    pub fn name(self) -> &'static str {
        match self {
            DkdvPlan::PerHead => "per-head",
            DkdvPlan::Grouped => "grouped",
        }
    }
}

/// The head-dim bucket of the attention kernels.
pub(crate) fn attn_dm(head_dim: usize) -> Result<u32> {
    match head_dim {
        1..=32 => Ok(32),
        33..=64 => Ok(64),
        65..=128 => Ok(128),
        _ => Err(Error::Invalid(format!("head_dim {head_dim}: the CUDA attention kernels support 1..=128"))),
    }
}

/// Where the backward's scratch holds what: delta ([N, H]) first; with per-head partials, dK's
/// and dV's ([N, H, D] each) after it, from a 64-element boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScratchLayout {
    pub delta: usize,
    /// Offsets of the dK and dV partials, when the plan writes them.
    pub partials: Option<(usize, usize)>,
    pub len: usize,
}

/// The scratch layout of a backward over `n` tokens: `partials` when the per-head plan runs
/// (tensor-core kernels, more than one query head per kv head).
pub fn scratch_layout(shape: AttnShape, n: usize, partials: bool) -> ScratchLayout {
    let delta = n * shape.num_heads;
    if !partials {
        return ScratchLayout { delta: 0, partials: None, len: delta };
    }
    let part = n * shape.num_heads * shape.head_dim;
    let pk = delta.next_multiple_of(64);
    ScratchLayout { delta: 0, partials: Some((pk, pk + part)), len: pk + 2 * part }
}

impl Gpu {
    /// Whether the backward of `shape` writes per-head dK/dV partials (see [`DkdvPlan`]).
    fn per_head_partials(&self, shape: AttnShape) -> bool {
        self.dtype() == Dtype::Bf16 && self.dkdv_plan() == DkdvPlan::PerHead && shape.num_heads > shape.num_kv_heads
    }

    /// Scratch floats the backward of `n` tokens needs (`Backend::attn_scratch_len`).
    pub(crate) fn flash_scratch_len(&self, shape: AttnShape, n: usize) -> usize {
        scratch_layout(shape, n, self.per_head_partials(shape)).len
    }

    /// Causal GQA attention forward over the packed q|k|v rows (`Backend::attention_forward`).
    pub(crate) fn flash_forward(
        &self,
        mut out: CudaViewMut<'_, f32>,
        mut lse: CudaViewMut<'_, f32>,
        qkv: CudaView<'_, f32>,
        batch: &GpuBatch,
        shape: AttnShape,
    ) -> Result<()> {
        let (h, kv, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
        let dm = attn_dm(d)?;
        let stride = int((h + 2 * kv) * d, "qkv stride")?;
        let q = self.pr(&qkv);
        let args = [
            Arg::P(self.pm(&mut out)),
            Arg::I(int(h * d, "out stride")?),
            Arg::P(self.pm(&mut lse)),
            Arg::P(q),
            Arg::I(stride),
            Arg::P(q + (h * d * 4) as u64),
            Arg::I(stride),
            Arg::P(q + ((h + kv) * d * 4) as u64),
            Arg::I(stride),
            Arg::P(self.ids_ptr(&batch.cu_seqlens, 0)),
            Arg::I(int(h, "heads")?),
            Arg::I(int(kv, "kv heads")?),
            Arg::I(int(d, "head dim")?),
        ];
        let grid = (batch.max_len.div_ceil(64) as u32, h as u32, batch.n_seq as u32);
        match self.dtype() {
            // bf16 products: the tensor-core kernel (attention_mma.cu; head dims up to 32 padded to 64)
            Dtype::Bf16 => {
                let dm = dm.max(64);
                let smem = 3 * 64 * (dm + 8) * 2;
                self.launch("attention_mma", &format!("attn_fwd_mma_{dm}"), grid, (128, 1, 1), smem, &args)
            }
            Dtype::F32 | Dtype::Tf32 => {
                let smem = 192 * (dm + 1) * 4;
                self.launch("attention_fwd", &format!("attn_fwd_{dm}_f32"), grid, (256, 1, 1), smem, &args)
            }
        }
    }

    /// dqkv (overwritten) of the forward above (`Backend::attention_backward`); `scratch` holds
    /// [`Gpu::flash_scratch_len`] floats.
    pub(crate) fn flash_backward(
        &self,
        mut dqkv: CudaViewMut<'_, f32>,
        mut scratch: CudaViewMut<'_, f32>,
        dout: CudaView<'_, f32>,
        saved: AttnSaved<CudaView<'_, f32>>,
        batch: &GpuBatch,
        shape: AttnShape,
    ) -> Result<()> {
        let AttnSaved { qkv, out, lse } = saved;
        let (h, kv, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
        let dm = attn_dm(d)?;
        let n = lse.len() / h.max(1);
        let layout = scratch_layout(shape, n, self.per_head_partials(shape));
        if scratch.len() < layout.len {
            let why = format!("{} floats, the backward of {n} tokens needs {}", scratch.len(), layout.len);
            return Err(Error::shape("attention scratch", why));
        }
        let stride = int((h + 2 * kv) * d, "qkv stride")?;
        let hd = int(h * d, "out stride")?;
        let (hi, kvi, di) = (int(h, "heads")?, int(kv, "kv heads")?, int(d, "head dim")?);
        let base = self.pm(&mut scratch);
        let at = |offset: usize| base + 4 * offset as u64;
        let delta = at(layout.delta);
        let (o, dout_p, lse_p) = (self.pr(&out), self.pr(&dout), self.pr(&lse));
        let args = [
            Arg::P(delta),
            Arg::P(o),
            Arg::I(hd),
            Arg::P(dout_p),
            Arg::I(hd),
            Arg::I(int(n, "tokens")?),
            Arg::I(hi),
            Arg::I(di),
        ];
        self.launch("attention_bwd", "attn_bwd_delta_f32", (n as u32, 1, 1), (128, 1, 1), 0, &args)?;
        let (q, g) = (self.pr(&qkv), self.pm(&mut dqkv));
        let (k_off, v_off) = ((h * d * 4) as u64, ((h + kv) * d * 4) as u64);
        let cu = self.ids_ptr(&batch.cu_seqlens, 0);
        let tiles = batch.max_len.div_ceil(64) as u32;
        let n_seq = batch.n_seq as u32;
        let tail = [
            Arg::P(q),
            Arg::I(stride),
            Arg::P(q + k_off),
            Arg::I(stride),
            Arg::P(q + v_off),
            Arg::I(stride),
            Arg::P(dout_p),
            Arg::I(hd),
            Arg::P(lse_p),
            Arg::P(delta),
            Arg::P(cu),
            Arg::I(hi),
            Arg::I(kvi),
            Arg::I(di),
        ];
        let dq_launch = |module: &'static str, entry: String, threads: u32, smem: u32| {
            let mut args = vec![Arg::P(g), Arg::I(stride)];
            args.extend_from_slice(&tail);
            self.launch(module, &entry, (tiles, h as u32, n_seq), (threads, 1, 1), smem, &args)
        };
        if self.dtype() != Dtype::Bf16 {
            let smem = 192 * (dm + 1) * 4;
            let mut args = vec![Arg::P(g + k_off), Arg::I(stride), Arg::P(g + v_off), Arg::I(stride)];
            args.extend_from_slice(&tail);
            let dkdv = format!("attn_bwd_dkdv_{dm}_f32");
            self.launch("attention_bwd", &dkdv, (tiles, kv as u32, n_seq), (256, 1, 1), smem, &args)?;
            return dq_launch("attention_bwd", format!("attn_bwd_dq_{dm}_f32"), 256, smem);
        }
        // bf16 products: the tensor-core kernels of attention_mma.cu (head dims up to 32 padded to 64)
        let dm = dm.max(64);
        let bytes = 4 * 64 * (dm + 8) * 2;
        let dkdv = format!("attn_bwd_dkdv_mma_{dm}");
        match layout.partials {
            // per-head partials ([N, H, D], row stride H·D), then their sums over each group
            Some((pk, pv)) => {
                let (pk, pv) = (at(pk), at(pv));
                let mut args = vec![Arg::P(pk), Arg::I(hd), Arg::P(pv), Arg::I(hd)];
                args.extend_from_slice(&tail);
                args.push(Arg::I(1));
                self.launch("attention_mma", &dkdv, (tiles, h as u32, n_seq), (128, 1, 1), bytes + 512, &args)?;
                let args = [
                    Arg::P(g + k_off),
                    Arg::I(stride),
                    Arg::P(g + v_off),
                    Arg::I(stride),
                    Arg::P(pk),
                    Arg::P(pv),
                    Arg::I(int(n, "tokens")?),
                    Arg::I(hi),
                    Arg::I(kvi),
                    Arg::I(di),
                ];
                let blocks = (n * kv * d).div_ceil(256).clamp(1, self.sms() as usize * 16) as u32;
                self.launch("attention_mma", "attn_bwd_group_sum_f32", (blocks, 1, 1), (256, 1, 1), 0, &args)?;
            }
            None => {
                let mut args = vec![Arg::P(g + k_off), Arg::I(stride), Arg::P(g + v_off), Arg::I(stride)];
                args.extend_from_slice(&tail);
                args.push(Arg::I(int(h / kv.max(1), "group")?));
                self.launch("attention_mma", &dkdv, (tiles, kv as u32, n_seq), (128, 1, 1), bytes + 512, &args)?;
            }
        }
        dq_launch("attention_mma", format!("attn_bwd_dq_mma_{dm}"), 128, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The partials start on a 64-float boundary after delta, do not overlap, and fit the length;
    /// without partials the scratch is delta alone.
    #[test]
    fn the_scratch_layout_keeps_delta_and_the_partials_apart() {
        for (h, kv, d, n) in [(14, 2, 64, 4096), (4, 2, 16, 3), (2, 1, 128, 1)] {
            let shape = AttnShape { num_heads: h, num_kv_heads: kv, head_dim: d };
            assert_eq!(scratch_layout(shape, n, false), ScratchLayout { delta: 0, partials: None, len: n * h });
            let l = scratch_layout(shape, n, true);
            let (pk, pv) = l.partials.unwrap();
            assert!(pk >= n * h && pk % 64 == 0, "{h} {kv} {d} {n}: dK partials at {pk}");
            assert_eq!(pv - pk, n * h * d);
            assert_eq!(l.len - pv, n * h * d);
        }
    }
}
