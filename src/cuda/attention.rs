//! The flash attention of the CUDA backend, host side: which kernels run for the device's dtype
//! (cuda/attention_fwd.cu and attention_bwd.cu with f32 and tf32 products, the tensor-core kernels
//! of attention_mma.cu and attention_mma_bwd.cu with bf16), their launch shapes and scratch, and
//! how the backward sums dK and dV over the query heads of a GQA group ([`DkdvPlan`]).

use crate::attention::{AttnSaved, AttnShape};
use crate::cuda::batch::GpuBatch;
use crate::cuda::device::{int, Arg, Gpu};
use crate::cuda::plans::{AttnMma, AttnRows, DkdvPlan};
use crate::error::{Error, Result};
use crate::tensor::Dtype;
use cudarc::driver::{CudaView, CudaViewMut};

/// The head-dim bucket of the attention kernels.
pub(crate) fn attn_dm(head_dim: usize) -> Result<u32> {
    match head_dim {
        1..=32 => Ok(32),
        33..=64 => Ok(64),
        65..=128 => Ok(128),
        _ => Err(Error::Invalid(format!("head_dim {head_dim}: the CUDA attention kernels support 1..=128"))),
    }
}

/// Shared memory (bytes) of the tensor-core kernels at padded head dim `dm` (64 or 128) with `g`
/// warpgroups a block ([`AttnRows::warpgroups`]): the forward (g + 4 64-row bf16 tiles, unpadded:
/// mma.cuh permutes each row's segments against bank conflicts), the dK/dV kernel (2 g + 4, and
/// 64 × 4 floats) and the dQ kernel (2 g + 4, and 64 g × 2 floats).
pub(crate) fn mma_smem(dm: usize, g: u32) -> [u32; 3] {
    let tile = 64 * dm as u32 * 2;
    [(g + 4) * tile, (2 * g + 4) * tile + 4 * 64 * 4, (2 * g + 4) * tile + 2 * 64 * g * 4]
}

/// The launch of one tensor-core attention kernel: its entry, `g` warpgroups a block, each
/// owning 64 rows, and its shared memory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MmaLaunch {
    entry: String,
    g: u32,
    smem: u32,
}

impl MmaLaunch {
    /// Blocks along grid x for sequences up to `max_len` tokens.
    fn tiles(&self, max_len: usize) -> u32 {
        max_len.div_ceil(64 * self.g as usize) as u32
    }

    fn threads(&self) -> u32 {
        128 * self.g
    }
}

/// Where the attention's scratch (f32 units) holds what after delta ([N, H], at 0): with bf16 products
/// the packed bf16 q|k|v and dO (`attn_pack_bf16`: [N, H + 2KV, DM] and [N, H, DM]); with the
/// per-head plan the dK and dV partials ([N, H, D] each). Every part after delta starts on a
/// 64-float (256-byte) boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScratchLayout {
    /// Offsets of the packed q|k|v and dO, with bf16 products.
    pub packed: Option<(usize, usize)>,
    /// Offsets of the dK and dV partials, when the plan writes them.
    pub partials: Option<(usize, usize)>,
    pub len: usize,
}

/// The scratch layout of an attention over `n` tokens: `packed_dm` is the kernels' DM with bf16
/// products (None for f32 and tf32), `partials` whether the per-head plan runs.
pub fn scratch_layout(shape: AttnShape, n: usize, packed_dm: Option<usize>, partials: bool) -> ScratchLayout {
    let AttnShape { num_heads: h, num_kv_heads: kv, head_dim: d } = shape;
    let mut len = n * h;
    let mut part = |floats: usize| {
        let at = len.next_multiple_of(64);
        len = at + floats;
        at
    };
    // two bf16 to a float
    let packed = packed_dm.map(|dm| (part((n * (h + 2 * kv) * dm).div_ceil(2)), part((n * h * dm).div_ceil(2))));
    let partials = partials.then(|| (part(n * h * d), part(n * h * d)));
    ScratchLayout { packed, partials, len }
}

/// The attention kernels put a batch's sequences on grid z, whose limit is 65,535.
fn grid_fits(batch: &GpuBatch) -> Result<()> {
    if batch.n_seq > 65_535 {
        let why = format!("{} sequences in one micro-batch; the CUDA attention takes at most 65,535", batch.n_seq);
        return Err(Error::shape("attention", why));
    }
    Ok(())
}

/// Whether the attention of head dim `head_dim` runs on the tensor cores on a device of compute
/// capability `cc` (86 for 8.6) giving a block `smem` bytes of shared memory, with `dtype`
/// products: bf16 products, an sm_80 or later device (`cp.async`, `ldmatrix` and bf16 `mma.sync`),
/// and the kernels' tiles within the limit.
pub fn tensor_core_attention(dtype: Dtype, cc: u32, smem: u32, head_dim: usize) -> bool {
    let fits = |dm: u32| mma_smem(dm.max(64) as usize, 1).iter().all(|&b| b <= smem);
    dtype == Dtype::Bf16 && cc >= 80 && attn_dm(head_dim).is_ok_and(fits)
}

impl Gpu {
    /// Whether the attention of head dim `head_dim` runs on the tensor cores: with bf16 products,
    /// where the device gives the kernels their shared memory (at head dim 128 the dK/dV kernel
    /// needs 97 KiB, within the 99 KiB of an RTX 4090 or L40S). Elsewhere the f32 kernels run it,
    /// on the f32 q|k|v: exact products, slower.
    pub fn attn_on_tensor_cores(&self, head_dim: usize) -> bool {
        tensor_core_attention(self.dtype(), self.compute_capability(), self.smem_limit(), head_dim)
    }

    /// Run the bf16 attention (forward and backward) on `kind`'s tensor-core products from now on.
    /// [`AttnMma::Wgmma`] needs a Hopper GPU ([`Gpu::has_wgmma`]); elsewhere it is refused, saying so.
    pub fn set_attn_mma(&self, kind: AttnMma) -> Result<()> {
        if kind == AttnMma::Wgmma && !self.has_wgmma() {
            let why = format!(
                "the wgmma attention needs a Hopper GPU (compute capability 9.0); {} is not one",
                self.describe()
            );
            return Err(Error::device("attention", why));
        }
        self.attn_mma.set(kind);
        Ok(())
    }

    /// The bf16 attention's tensor-core products.
    pub fn attn_mma(&self) -> AttnMma {
        self.attn_mma.get()
    }

    /// How the attention backward sums dK/dV over a GQA group from now on (the
    /// default, [`DkdvPlan::PerHead`], is the faster; `Grouped` is kept for comparison).
    pub fn set_dkdv_plan(&self, plan: DkdvPlan) {
        self.dkdv_plan.set(plan);
    }

    /// The attention backward's dK/dV plan.
    pub fn dkdv_plan(&self) -> DkdvPlan {
        self.dkdv_plan.get()
    }

    /// Run the bf16 attention with blocks of `rows` rows from now on (the same bits either way).
    pub fn set_attn_rows(&self, rows: AttnRows) {
        self.attn_rows.set(rows);
    }

    /// Rows per block of the bf16 attention.
    pub fn attn_rows(&self) -> AttnRows {
        self.attn_rows.get()
    }

    /// The launches of the tensor-core kernels at padded head dim `dm`, forward, dK/dV and dQ, on
    /// [`Gpu::attn_mma`]'s products: each with the warpgroups [`Gpu::attn_rows`] asks for where
    /// its tiles fit the device's shared memory, else one (entry suffix `_x2`: two).
    fn mma_launches(&self, dm: usize) -> [MmaLaunch; 3] {
        let kind = self.attn_mma().name();
        let names =
            [format!("attn_fwd_{kind}_{dm}"), format!("attn_bwd_dkdv_{kind}_{dm}"), format!("attn_bwd_dq_{kind}_{dm}")];
        let wanted = self.attn_rows().warpgroups();
        let (want, one) = (mma_smem(dm, wanted), mma_smem(dm, 1));
        std::array::from_fn(|i| match want[i] <= self.smem_limit() {
            true if wanted > 1 => MmaLaunch { entry: format!("{}_x{wanted}", names[i]), g: wanted, smem: want[i] },
            _ => MmaLaunch { entry: names[i].clone(), g: 1, smem: one[i] },
        })
    }

    /// The entries of the tensor-core attention at head dim `head_dim` as the device would launch
    /// them now (forward, dK/dV, dQ), or None where the f32 kernels run it.
    pub fn attn_kernels(&self, head_dim: usize) -> Option<[String; 3]> {
        let dm = attn_dm(head_dim).ok()?.max(64) as usize;
        self.attn_on_tensor_cores(head_dim).then(|| self.mma_launches(dm).map(|l| l.entry))
    }

    /// The module of the tensor-core attention's kernels: `plain`, or with wgmma products its Hopper
    /// variant `hopper` (`device::HOPPER_VARIANT`: compiled for compute_90a, where the wgmma
    /// entries hold their kernels).
    fn attn_module(&self, plain: &'static str, hopper: &'static str) -> &'static str {
        debug_assert_eq!(hopper.strip_suffix(crate::cuda::device::HOPPER_VARIANT), Some(plain));
        match self.attn_mma() {
            AttnMma::Mma => plain,
            AttnMma::Wgmma => hopper,
        }
    }

    /// The scratch layout of this device's attention over `n` tokens (its dtype and plan).
    fn flash_layout(&self, shape: AttnShape, n: usize) -> Result<ScratchLayout> {
        let dm = attn_dm(shape.head_dim)?;
        let packed_dm = self.attn_on_tensor_cores(shape.head_dim).then_some(dm.max(64) as usize);
        let partials = self.dkdv_plan() == DkdvPlan::PerHead && shape.num_heads > shape.num_kv_heads;
        Ok(scratch_layout(shape, n, packed_dm, partials))
    }

    /// Scratch floats the attention of `n` tokens needs (`Backend::attn_scratch_len`; a head dim
    /// the kernels refuse needs none: its launch names it).
    pub(crate) fn flash_scratch_len(&self, shape: AttnShape, n: usize) -> usize {
        self.flash_layout(shape, n).map_or(n * shape.num_heads, |l| l.len)
    }

    /// The address of the scratch, checked against the layout's length.
    fn scratch_base(&self, scratch: &mut CudaViewMut<'_, f32>, layout: &ScratchLayout, n: usize) -> Result<u64> {
        if scratch.len() < layout.len {
            let why = format!("{} floats, the attention of {n} tokens needs {}", scratch.len(), layout.len);
            return Err(Error::shape("attention scratch", why));
        }
        // the packed bf16 rows are stored and copied (cp.async) 16 bytes at a time
        let base = self.pm(scratch);
        if !base.is_multiple_of(16) {
            return Err(Error::shape("attention scratch", format!("address {base:#x} is not 16-byte aligned")));
        }
        Ok(base)
    }

    /// `attn_pack_bf16`: `heads` rows of `head_dim` f32 per token at `x` (row stride `x_stride`
    /// floats) into [n, heads, dm] bf16 at `out`, zero padded past head_dim.
    fn pack_bf16(
        &self,
        (out, x): (u64, u64),
        x_stride: usize,
        n: usize,
        (heads, d, dm): (usize, usize, usize),
    ) -> Result<()> {
        let blocks = (n * heads * dm / 8).div_ceil(256).clamp(1, self.sms() as usize * 16) as u32;
        let args = [
            Arg::P(out),
            Arg::P(x),
            Arg::I(int(x_stride, "pack stride")?),
            Arg::I(int(n, "tokens")?),
            Arg::I(int(heads, "heads")?),
            Arg::I(int(d, "head dim")?),
            Arg::I(int(dm, "padded head dim")?),
        ];
        self.launch("attention_mma", "attn_pack_bf16", (blocks, 1, 1), (256, 1, 1), 0, &args)
    }

    /// Causal GQA attention forward over the packed q|k|v rows (`Backend::attention_forward`);
    /// `scratch` holds [`Gpu::flash_scratch_len`] floats.
    pub(crate) fn flash_forward(
        &self,
        mut out: CudaViewMut<'_, f32>,
        mut lse: CudaViewMut<'_, f32>,
        mut scratch: CudaViewMut<'_, f32>,
        qkv: CudaView<'_, f32>,
        batch: &GpuBatch,
        shape: AttnShape,
    ) -> Result<()> {
        let (h, kv, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
        let dm = attn_dm(d)?;
        grid_fits(batch)?;
        let n = lse.len() / h.max(1);
        let q = self.pr(&qkv);
        let (out_p, lse_p, cu) = (self.pm(&mut out), self.pm(&mut lse), self.ids_ptr(&batch.cu_seqlens, 0));
        let (out_stride, hi, kvi, di) =
            (int(h * d, "out stride")?, int(h, "heads")?, int(kv, "kv heads")?, int(d, "head dim")?);
        if !self.attn_on_tensor_cores(d) {
            let stride = int((h + 2 * kv) * d, "qkv stride")?;
            let args = [
                Arg::P(out_p),
                Arg::I(out_stride),
                Arg::P(lse_p),
                Arg::P(q),
                Arg::I(stride),
                Arg::P(q + (h * d * 4) as u64),
                Arg::I(stride),
                Arg::P(q + ((h + kv) * d * 4) as u64),
                Arg::I(stride),
                Arg::P(cu),
                Arg::I(hi),
                Arg::I(kvi),
                Arg::I(di),
            ];
            let smem = 192 * (dm + 1) * 4;
            let grid = (batch.max_len.div_ceil(64) as u32, h as u32, batch.n_seq as u32);
            return self.launch("attention_fwd", &format!("attn_fwd_{dm}_f32"), grid, (256, 1, 1), smem, &args);
        }
        // bf16 products: q|k|v packed once, then the tensor-core kernel (attention_mma.cu; head
        // dims up to 32 padded to 64)
        let dm = dm.max(64);
        let layout = self.flash_layout(shape, n)?;
        let base = self.scratch_base(&mut scratch, &layout, n)?;
        let (qkv16, _) = layout.packed.ok_or_else(|| Error::device("attention", "no packed bf16 scratch"))?;
        let qkv16 = base + 4 * qkv16 as u64;
        self.pack_bf16((qkv16, q), (h + 2 * kv) * d, n, (h + 2 * kv, d, dm as usize))?;
        let args = [
            Arg::P(out_p),
            Arg::I(out_stride),
            Arg::P(lse_p),
            Arg::P(qkv16),
            Arg::P(cu),
            Arg::I(hi),
            Arg::I(kvi),
            Arg::I(di),
        ];
        // (either product policy: the same arguments, launch shape and shared memory)
        let [fwd, _, _] = &self.mma_launches(dm as usize);
        let grid = (fwd.tiles(batch.max_len), h as u32, batch.n_seq as u32);
        let module = self.attn_module("attention_mma", "attention_mma@90a");
        self.launch(module, &fwd.entry, grid, (fwd.threads(), 1, 1), fwd.smem, &args)
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
        grid_fits(batch)?;
        let n = lse.len() / h.max(1);
        let layout = self.flash_layout(shape, n)?;
        let base = self.scratch_base(&mut scratch, &layout, n)?;
        let at = |offset: usize| base + 4 * offset as u64;
        let stride = int((h + 2 * kv) * d, "qkv stride")?;
        let hd = int(h * d, "out stride")?;
        let (hi, kvi, di) = (int(h, "heads")?, int(kv, "kv heads")?, int(d, "head dim")?);
        let delta = base; // delta is the scratch's first part
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
        let n_seq = batch.n_seq as u32;
        // (module, dkdv entry, dq entry, their launches: blocks along x, threads, shared memory;
        // the kernels' inputs)
        let (module, dkdv, dq, kv_launch, q_launch, tail) = match layout.packed {
            // f32 / tf32: attention_bwd.cu's kernels on the f32 rows
            None => {
                let smem = 192 * (dm + 1) * 4;
                let tail = vec![
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
                let (dkdv, dq) = (format!("attn_bwd_dkdv_{dm}_f32"), format!("attn_bwd_dq_{dm}_f32"));
                let launch = (batch.max_len.div_ceil(64) as u32, 256, smem);
                ("attention_bwd", dkdv, dq, launch, launch, tail)
            }
            // bf16 products: q|k|v and dO packed once, then the tensor-core kernels of
            // attention_mma_bwd.cu (head dims up to 32 padded to 64)
            Some((qkv16, do16)) => {
                let dm = dm.max(64);
                let (qkv16, do16) = (at(qkv16), at(do16));
                self.pack_bf16((qkv16, q), (h + 2 * kv) * d, n, (h + 2 * kv, d, dm as usize))?;
                self.pack_bf16((do16, dout_p), h * d, n, (h, d, dm as usize))?;
                let tail = vec![
                    Arg::P(qkv16),
                    Arg::P(do16),
                    Arg::P(lse_p),
                    Arg::P(delta),
                    Arg::P(cu),
                    Arg::I(hi),
                    Arg::I(kvi),
                    Arg::I(di),
                ];
                let [_, kv_l, q_l] = self.mma_launches(dm as usize);
                let module = self.attn_module("attention_mma_bwd", "attention_mma_bwd@90a");
                let launch = |l: &MmaLaunch| (l.tiles(batch.max_len), l.threads(), l.smem);
                let (kv_launch, q_launch) = (launch(&kv_l), launch(&q_l));
                (module, kv_l.entry, q_l.entry, kv_launch, q_launch, tail)
            }
        };
        let dkdv_launch = |(dk, dv, row): (u64, u64, i32), ys: usize, heads_per_block: usize| {
            let mut args = vec![Arg::P(dk), Arg::I(row), Arg::P(dv), Arg::I(row)];
            args.extend_from_slice(&tail);
            args.push(Arg::I(int(heads_per_block, "heads per block")?));
            let (tiles, threads, smem) = kv_launch;
            self.launch(module, &dkdv, (tiles, ys as u32, n_seq), (threads, 1, 1), smem, &args)
        };
        match layout.partials {
            // per-head partials ([N, H, D], row stride H·D), then their sums over each group
            Some((pk, pv)) => {
                let (pk, pv) = (at(pk), at(pv));
                dkdv_launch((pk, pv, hd), h, 1)?;
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
                self.launch("attention_bwd", "attn_bwd_group_sum_f32", (blocks, 1, 1), (256, 1, 1), 0, &args)?;
            }
            // one block per kv head loops over its group
            None => dkdv_launch((g + k_off, g + v_off, stride), kv, h / kv.max(1))?,
        }
        let mut args = vec![Arg::P(g), Arg::I(stride)];
        args.extend_from_slice(&tail);
        let (tiles, threads, smem) = q_launch;
        self.launch(module, &dq, (tiles, h as u32, n_seq), (threads, 1, 1), smem, &args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensor-core tiles of one warpgroup a block fit the 99 KiB per block of every sm_80+ GPU
    /// (an RTX 3090 / 4090, A6000, L40S: sm_86, sm_89) at head dims 64 and 128, forward and
    /// backward, with 2 KiB to spare at 128; a GPU with less runs the f32 kernels there
    /// (`Gpu::attn_on_tensor_cores`). Two warpgroups fit there at head dim 64 and in the forward
    /// at 128; the backward's at 128 need an A100's or H100's (163 / 227 KiB).
    /// bf16 products on an sm_80 or later device whose blocks get the tiles' shared memory; f32
    /// kernels elsewhere (a Turing or Volta GPU has no `cp.async` nor bf16 `mma.sync`).
    #[test]
    fn the_tensor_cores_attend_where_the_device_has_them() {
        let (b, f) = (Dtype::Bf16, Dtype::F32);
        assert!(tensor_core_attention(b, 80, 163 << 10, 128));
        assert!(tensor_core_attention(b, 90, 227 << 10, 64));
        assert!(tensor_core_attention(b, 86, 99 << 10, 128));
        assert!(!tensor_core_attention(f, 90, 227 << 10, 64), "f32 products: the f32 kernels");
        assert!(!tensor_core_attention(Dtype::Tf32, 90, 227 << 10, 64));
        assert!(!tensor_core_attention(b, 75, 64 << 10, 64), "sm_75: no cp.async");
        assert!(!tensor_core_attention(b, 70, 96 << 10, 64), "sm_70: no bf16 mma.sync");
        assert!(!tensor_core_attention(b, 80, 48 << 10, 128), "tiles over the limit");
        assert!(!tensor_core_attention(b, 90, 227 << 10, 256), "head dims over 128");
    }

    #[test]
    fn the_tensor_core_tiles_fit_where_the_docs_say() {
        let small = 99 * 1024;
        assert_eq!(mma_smem(64, 1), [40960, 50176, 49664]);
        assert_eq!(mma_smem(128, 1), [81920, 99328, 98816]);
        assert!(mma_smem(128, 1).iter().all(|&b| b <= small), "{:?}", mma_smem(128, 1));
        assert_eq!(mma_smem(64, 2), [49152, 66560, 66560]);
        assert_eq!(mma_smem(128, 2), [98304, 132096, 132096]);
        assert!(mma_smem(64, 2).iter().all(|&b| b <= small) && mma_smem(128, 2)[0] <= small);
        assert!(mma_smem(128, 2)[1..].iter().all(|&b| b > small && b <= 163 * 1024));
    }

    /// attention_bwd.cu's `attn_bwd_group_sum_f32`, statement for statement over its grid-stride
    /// index: every dK and dV element of the packed dqkv is written once, with its group's
    /// partials summed in head order (bit for bit), and nothing else in the row is touched.
    #[test]
    fn the_group_sum_kernel_sums_each_group_in_head_order() {
        let mut rng = crate::rng::Rng::new(41);
        for (n, h, kv, d) in [(3, 14, 2, 64), (5, 4, 2, 16), (2, 8, 8, 30), (4, 6, 1, 128)] {
            let group = h / kv;
            let stride = (h + 2 * kv) * d;
            let (pk, pv): (Vec<f32>, Vec<f32>) =
                (0..n * h * d).map(|_| (rng.normal() as f32, rng.normal() as f32)).unzip();
            let mut dqkv = vec![f32::NAN; n * stride];
            let mut writes = vec![0u32; n * stride];
            let (k_off, v_off) = (h * d, (h + kv) * d);
            for i in 0..n * kv * d {
                let dd = i % d;
                let tg = i / d;
                let (g, t) = (tg % kv, tg / kv);
                let at = (t * h + g * group) * d + dd;
                let (mut sk, mut sv) = (0.0f32, 0.0f32);
                for hh in 0..group {
                    sk += pk[at + hh * d];
                    sv += pv[at + hh * d];
                }
                for (off, sum) in [(k_off, sk), (v_off, sv)] {
                    dqkv[t * stride + off + g * d + dd] = sum;
                    writes[t * stride + off + g * d + dd] += 1;
                }
            }
            for t in 0..n {
                for g in 0..kv {
                    for dd in 0..d {
                        let want =
                            |p: &[f32]| (0..group).fold(0.0f32, |a, hh| a + p[(t * h + g * group + hh) * d + dd]);
                        let (k, v) = (t * stride + k_off + g * d + dd, t * stride + v_off + g * d + dd);
                        assert_eq!(dqkv[k].to_bits(), want(&pk).to_bits(), "dK t {t} g {g} d {dd}");
                        assert_eq!(dqkv[v].to_bits(), want(&pv).to_bits(), "dV t {t} g {g} d {dd}");
                        assert_eq!((writes[k], writes[v]), (1, 1));
                    }
                }
                assert!(writes[t * stride..t * stride + k_off].iter().all(|&w| w == 0), "dQ columns touched");
            }
        }
    }

    /// Every part starts on a 64-float boundary after delta, none overlaps the next, the packed
    /// copies hold two bf16 a float, and the length covers the last part; f32 needs delta alone.
    #[test]
    fn the_scratch_layout_keeps_its_parts_apart() {
        for (h, kv, d, n) in [(14, 2, 64, 4096), (4, 2, 16, 3), (2, 1, 128, 1), (2, 1, 30, 5)] {
            let shape = AttnShape { num_heads: h, num_kv_heads: kv, head_dim: d };
            let f32_only = ScratchLayout { packed: None, partials: None, len: n * h };
            assert_eq!(scratch_layout(shape, n, None, false), f32_only);
            let dm = attn_dm(d).unwrap().max(64) as usize;
            let l = scratch_layout(shape, n, Some(dm), true);
            let (qkv, dout) = l.packed.unwrap();
            let (pk, pv) = l.partials.unwrap();
            assert!(qkv >= n * h, "{h} {kv} {d} {n}: packed q|k|v overlaps delta");
            assert!(dout >= qkv + (n * (h + 2 * kv) * dm).div_ceil(2), "packed dO overlaps q|k|v");
            assert!(pk >= dout + (n * h * dm).div_ceil(2), "dK partials overlap dO");
            assert!(pv >= pk + n * h * d, "dV partials overlap dK's");
            assert_eq!(l.len - pv, n * h * d);
            for at in [qkv, dout, pk, pv] {
                assert_eq!(at % 64, 0, "{at} is not on a 256-byte boundary");
            }
            let no_partials = scratch_layout(shape, n, Some(dm), false);
            assert_eq!((no_partials.packed, no_partials.partials), (l.packed, None));
        }
    }
}
