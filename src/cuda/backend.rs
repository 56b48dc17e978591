//! The CUDA device as a [`Backend`]: f32 device buffers, arbor's kernels (cuda/*.cu) and cuBLAS
//! SGEMM. Every method follows the CPU function of the same name (tests/cuda/ compares them).

use crate::attention::{AttnSaved, AttnShape};
use crate::cuda::act::{ActView, ActViewMut, GpuAct};
use crate::cuda::batch::GpuBatch;
use crate::cuda::device::{drv, int, Arg, Gpu};
use crate::cuda::gemm::GemmKind;
use crate::error::{Error, Result};
use crate::parallel::{Comm, TpGroup};
use crate::tensor::backend::{Backend, LogitStats, LogprobGrad, PackedBatch};
use crate::tensor::cpu::ops::RopeTable;
use crate::tensor::shape::GemmShape;
use crate::tensor::Dtype;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr};
use std::ops::Range;

/// RoPE cos/sin tables on the device ([max_pos, D/2] each).
pub struct GpuRope {
    pub half: usize,
    pub cos: CudaSlice<f32>,
    pub sin: CudaSlice<f32>,
}

/// Logit elements per LM-head chunk on a device of `total_mem` bytes
/// ([`crate::tensor::backend::gpu_head_chunk`], which the memory plan reads too).
pub(crate) fn head_chunk_elems(total_mem: usize) -> usize {
    crate::tensor::backend::gpu_head_chunk(total_mem as u64)
}

impl Gpu {
    /// Run `f` on the NCCL communicator of tensor-parallel group `group` on this device, made at
    /// the group's first use (a collective: every rank of the group reaches this point together,
    /// as they reach every row-parallel sum).
    fn with_tp_nccl<T>(&self, group: &TpGroup, f: impl FnOnce(&crate::cuda::nccl::Nccl) -> Result<T>) -> Result<T> {
        let mut held = self.tp_nccl.lock().map_err(|_| Error::device("tensor-parallel NCCL", "poisoned"))?;
        if held.as_ref().is_none_or(|(id, _)| *id != group.id()) {
            let comm = crate::cuda::nccl::Nccl::new(&self.stream, group.split(0, group.rank())?)?;
            *held = Some((group.id(), comm));
        }
        match held.as_ref() {
            Some((_, c)) => f(c),
            None => Err(Error::device("tensor-parallel NCCL", "no communicator")),
        }
    }

    /// Give every rank of tensor-parallel group `group` rank `root`'s values of `x`, on the device.
    pub(crate) fn broadcast_tp(&self, mut x: CudaViewMut<'_, f32>, group: &TpGroup, root: usize) -> Result<()> {
        if group.size() == 1 {
            return Ok(());
        }
        self.with_tp_nccl(group, |c| c.broadcast_device(&mut x, root))
    }
}

/// The views of a per-head norm hold their `n` rows of `heads` heads of `d` values (x strided by
/// `row_stride`, `raw` contiguous).
fn check_heads(n: usize, heads: usize, d: usize, row_stride: usize, x: usize, raw: Option<usize>) -> Result<()> {
    let need_x = if n == 0 { 0 } else { (n - 1) * row_stride + heads * d };
    if heads * d > row_stride || x < need_x || raw.is_some_and(|r| r < n * heads * d) {
        return Err(Error::shape(
            "head norm",
            format!("{n} rows of {heads} heads of {d} (row stride {row_stride}) from views of {x} and {raw:?}"),
        ));
    }
    Ok(())
}

impl Backend for Gpu {
    type Buf = CudaSlice<f32>;
    type R<'a> = CudaView<'a, f32>;
    type M<'a> = CudaViewMut<'a, f32>;
    type Act = GpuAct;
    type ActR<'a> = ActView<'a>;
    type ActM<'a> = ActViewMut<'a>;
    type Batch<'a> = GpuBatch;
    type Rope = GpuRope;

    fn name(&self) -> String {
        self.describe()
    }
    fn empty(&self) -> Result<CudaSlice<f32>> {
        // one element: the stream-ordered allocator is never asked for zero bytes
        self.alloc(1, "a buffer")
    }
    fn len(buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }
    fn grow(&self, buf: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        if buf.len() < n {
            // the old buffer is freed first: its memory may serve the larger one
            *buf = self.alloc(1, "a workspace buffer")?;
            *buf = self.alloc(n, "a workspace buffer")?;
        }
        Ok(())
    }
    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        self.htod(data)
    }
    fn download(&self, buf: &CudaSlice<f32>, out: &mut [f32]) -> Result<()> {
        if out.len() > buf.len() {
            return Err(Error::shape("download", format!("{} values from a buffer of {}", out.len(), buf.len())));
        }
        self.stream.memcpy_dtoh(&buf.slice(0..out.len()), out).map_err(drv("download"))?;
        self.sync()
    }
    fn r(buf: &CudaSlice<f32>, r: Range<usize>) -> CudaView<'_, f32> {
        buf.slice(r)
    }
    fn m(buf: &mut CudaSlice<f32>, r: Range<usize>) -> CudaViewMut<'_, f32> {
        buf.slice_mut(r)
    }
    fn sub_r<'a>(x: &Self::R<'a>, r: Range<usize>) -> Self::R<'a> {
        x.slice(r)
    }
    fn sub_m<'a, 'b: 'a>(x: &'a mut CudaViewMut<'b, f32>, r: Range<usize>) -> CudaViewMut<'a, f32> {
        x.slice_mut(r)
    }
    fn act_empty(&self) -> Result<GpuAct> {
        Ok(GpuAct::F32(self.empty()?))
    }
    fn acts_are_f32(&self) -> bool {
        self.dtype() != Dtype::Bf16
    }
    fn act_grow(&self, buf: &mut GpuAct, n: usize) -> Result<()> {
        self.act_fit(buf, n, self.dtype() == Dtype::Bf16)
    }
    fn act_bytes(buf: &GpuAct) -> usize {
        buf.bytes()
    }
    fn act_download(&self, buf: &GpuAct, out: &mut [f32]) -> Result<()> {
        self.act_to_host(buf, out)
    }
    fn act_r(buf: &GpuAct, r: Range<usize>) -> ActView<'_> {
        buf.view(r)
    }
    fn act_m(buf: &mut GpuAct, r: Range<usize>) -> ActViewMut<'_> {
        buf.view_mut(r)
    }
    fn act_sub_r<'a>(x: &Self::ActR<'a>, r: Range<usize>) -> Self::ActR<'a> {
        x.slice(r)
    }
    fn as_act<'a>(x: Self::R<'a>) -> Self::ActR<'a> {
        ActView::F32(x)
    }
    fn as_act_m<'a>(x: Self::M<'a>) -> Self::ActM<'a> {
        ActViewMut::F32(x)
    }
    fn batch(&self, batch: PackedBatch<'_>) -> Result<GpuBatch> {
        self.upload_batch(batch)
    }
    fn rope(&self, table: &RopeTable) -> Result<GpuRope> {
        Ok(GpuRope { half: table.half, cos: self.upload(&table.cos)?, sin: self.upload(&table.sin)? })
    }
    fn copy(&self, mut dst: CudaViewMut<'_, f32>, src: CudaView<'_, f32>) -> Result<()> {
        self.stream.memcpy_dtod(&src, &mut dst).map_err(drv("copy"))
    }
    fn zero(&self, mut dst: CudaViewMut<'_, f32>) -> Result<()> {
        self.stream.memset_zeros(&mut dst).map_err(drv("memset"))
    }
    fn add(&self, mut dst: CudaViewMut<'_, f32>, src: CudaView<'_, f32>) -> Result<()> {
        let n = dst.len();
        if src.len() != n {
            return Err(Error::shape("add", format!("{} values into {n}", src.len())));
        }
        if n == 0 {
            return Ok(());
        }
        // (one row of partial sums added in: colsum_add_f32 with p = 1)
        let args = [Arg::P(self.pm(&mut dst)), Arg::P(self.pr(&src)), Arg::I(1), Arg::I(int(n, "values")?)];
        self.launch("rmsnorm", "colsum_add_f32", (n.div_ceil(256) as u32, 1, 1), (256, 1, 1), 0, &args)
    }
    fn attn_scratch_len(&self, shape: AttnShape, n: usize) -> usize {
        self.flash_scratch_len(shape, n)
    }
    fn head_chunk_elems(&self) -> usize {
        head_chunk_elems(self.total_mem())
    }
    fn synchronize(&self) -> Result<()> {
        self.sync()
    }
    fn all_reduce_tp(&self, mut x: CudaViewMut<'_, f32>, group: &TpGroup) -> Result<()> {
        if group.size() == 1 {
            return Ok(());
        }
        // on the device through NCCL, queued on the stream like a kernel
        self.with_tp_nccl(group, |c| c.all_reduce_device(&mut x))
    }

    fn matmul_nt(&self, c: Self::M<'_>, a: Self::R<'_>, b: Self::R<'_>, shape: GemmShape, acc: bool) -> Result<()> {
        self.gemm(c, a, b, GemmKind::Nt, shape, acc)
    }
    fn matmul_nn(&self, c: Self::M<'_>, a: Self::R<'_>, b: Self::R<'_>, shape: GemmShape, acc: bool) -> Result<()> {
        self.gemm(c, a, b, GemmKind::Nn, shape, acc)
    }
    fn matmul_tn(&self, c: Self::M<'_>, a: Self::R<'_>, b: Self::R<'_>, shape: GemmShape, acc: bool) -> Result<()> {
        self.gemm(c, a, b, GemmKind::Tn, shape, acc)
    }
    fn matmul_nt_act(&self, c: Self::M<'_>, a: ActView<'_>, b: Self::R<'_>, shape: GemmShape, acc: bool) -> Result<()> {
        match a {
            ActView::F32(a) => self.gemm(c, a, b, GemmKind::Nt, shape, acc),
            ActView::Bf16(a) => self.gemm_a16(c, &a, b, GemmKind::Nt, shape, acc),
        }
    }
    fn matmul_nt_to_act(&self, c: ActViewMut<'_>, a: ActView<'_>, b: Self::R<'_>, shape: GemmShape) -> Result<()> {
        self.gemm_to_act(c, a, b, GemmKind::Nt, shape)
    }
    fn linear_backward(
        &self,
        dx: Self::M<'_>,
        dw: Self::M<'_>,
        dy: ActView<'_>,
        w: Self::R<'_>,
        x: ActView<'_>,
        mnk: (usize, usize, usize),
    ) -> Result<()> {
        self.linear_backward_gemms(dx, dw, dy, w, x, mnk)
    }

    fn embedding_forward(&self, out: Self::M<'_>, table: Self::R<'_>, batch: &GpuBatch, c: usize) -> Result<()> {
        self.embed_ids(out, table, self.ids_ptr(&batch.tokens, 0), c)
    }
    fn embedding_backward(&self, mut dtable: Self::M<'_>, dout: Self::R<'_>, batch: &GpuBatch, c: usize) -> Result<()> {
        let n = dout.len() / c.max(1);
        let u = batch.emb_ids;
        if u == 0 {
            return Ok(());
        }
        let args = [
            Arg::P(self.pm(&mut dtable)),
            Arg::P(self.pr(&dout)),
            Arg::P(self.ids_ptr(&batch.emb_csr, 0)),
            Arg::I(int(u, "distinct tokens")?),
            Arg::I(int(n, "tokens")?),
            Arg::I(int(c, "hidden")?),
        ];
        self.launch("embedding", "embedding_bwd_f32", (u as u32, 1, 1), (256, 1, 1), 0, &args)
    }
    fn rmsnorm_forward(
        &self,
        mut y: ActViewMut<'_>,
        mut rstd: Self::M<'_>,
        x: Self::R<'_>,
        w: Self::R<'_>,
        eps: f32,
    ) -> Result<()> {
        let (n, c) = (rstd.len(), w.len());
        if y.len() < n * c || x.len() < n * c {
            return Err(Error::shape("RMSNorm", format!("{n} rows of {c} from views of {} and {}", x.len(), y.len())));
        }
        let entry = format!("rmsnorm_fwd_f32{}", y.out_suffix());
        let args = [
            Arg::P(y.ptr(self)),
            Arg::P(self.pm(&mut rstd)),
            Arg::P(self.pr(&x)),
            Arg::P(self.pr(&w)),
            Arg::I(int(n, "rows")?),
            Arg::I(int(c, "cols")?),
            Arg::F(eps),
        ];
        self.launch("rmsnorm", &entry, (n as u32, 1, 1), (256, 1, 1), 0, &args)
    }
    fn rmsnorm_backward(
        &self,
        mut dx: Self::M<'_>,
        mut dw: Self::M<'_>,
        dy: Self::R<'_>,
        x: Self::R<'_>,
        w: Self::R<'_>,
        rstd: Self::R<'_>,
    ) -> Result<()> {
        let (n, c) = (rstd.len(), w.len());
        let (ni, ci) = (int(n, "rows")?, int(c, "cols")?);
        let args = [
            Arg::P(self.pm(&mut dx)),
            Arg::P(self.pr(&dy)),
            Arg::P(self.pr(&x)),
            Arg::P(self.pr(&w)),
            Arg::P(self.pr(&rstd)),
            Arg::I(ni),
            Arg::I(ci),
        ];
        self.launch("rmsnorm", "rmsnorm_bwd_f32", (n as u32, 1, 1), (256, 1, 1), 0, &args)?;
        let rows = 256usize;
        let p = n.div_ceil(rows).max(1);
        let pp = self.scratch(p * c)?;
        let args = [
            Arg::P(pp),
            Arg::P(self.pr(&dy)),
            Arg::P(self.pr(&x)),
            Arg::P(self.pr(&rstd)),
            Arg::I(ni),
            Arg::I(ci),
            Arg::I(rows as i32),
        ];
        self.launch("rmsnorm", "rmsnorm_dw_partial_f32", (c.div_ceil(32) as u32, p as u32, 1), (32, 8, 1), 0, &args)?;
        let args = [Arg::P(self.pm(&mut dw)), Arg::P(pp), Arg::I(p as i32), Arg::I(ci)];
        self.launch("rmsnorm", "colsum_add_f32", (c.div_ceil(256) as u32, 1, 1), (256, 1, 1), 0, &args)?;
        Ok(())
    }
    fn head_norm_forward(
        &self,
        mut x: Self::M<'_>,
        raw: Option<Self::M<'_>>,
        mut rstd: Self::M<'_>,
        w: Self::R<'_>,
        row_stride: usize,
        heads: usize,
        eps: f32,
    ) -> Result<()> {
        let (d, n) = (w.len(), rstd.len() / heads.max(1));
        let mut raw = raw;
        check_heads(n, heads, d, row_stride, x.len(), raw.as_ref().map(|r| r.len()))?;
        let args = [
            Arg::P(self.pm(&mut x)),
            Arg::P(raw.as_mut().map_or(0, |r| self.pm(r))),
            Arg::P(self.pm(&mut rstd)),
            Arg::P(self.pr(&w)),
            Arg::I(int(n, "rows")?),
            Arg::I(int(row_stride, "row stride")?),
            Arg::I(int(heads, "heads")?),
            Arg::I(int(d, "head dim")?),
            Arg::F(eps),
        ];
        if n * heads == 0 {
            return Ok(());
        }
        self.launch("rmsnorm", "head_norm_fwd_f32", ((n * heads) as u32, 1, 1), (32, 1, 1), 0, &args)
    }
    fn head_norm_backward(
        &self,
        mut dx: Self::M<'_>,
        mut dw: Self::M<'_>,
        raw: Self::R<'_>,
        rstd: Self::R<'_>,
        w: Self::R<'_>,
        row_stride: usize,
        heads: usize,
    ) -> Result<()> {
        let (d, n) = (w.len(), rstd.len() / heads.max(1));
        check_heads(n, heads, d, row_stride, dx.len(), Some(raw.len()))?;
        if n * heads == 0 {
            return Ok(());
        }
        let (ni, si, hi, di) =
            (int(n, "rows")?, int(row_stride, "row stride")?, int(heads, "heads")?, int(d, "head dim")?);
        // the weight's gradient first: it reads dy, which the input gradient overwrites
        let rows = 256usize;
        let p = (n * heads).div_ceil(rows);
        let pp = self.scratch(p * d)?;
        let dxp = self.pm(&mut dx);
        let args = [
            Arg::P(pp),
            Arg::P(dxp),
            Arg::P(self.pr(&raw)),
            Arg::P(self.pr(&rstd)),
            Arg::I(ni),
            Arg::I(si),
            Arg::I(hi),
            Arg::I(di),
            Arg::I(rows as i32),
        ];
        self.launch("rmsnorm", "head_norm_dw_partial_f32", (d.div_ceil(32) as u32, p as u32, 1), (32, 8, 1), 0, &args)?;
        let args = [Arg::P(self.pm(&mut dw)), Arg::P(pp), Arg::I(p as i32), Arg::I(di)];
        self.launch("rmsnorm", "colsum_add_f32", (d.div_ceil(256) as u32, 1, 1), (256, 1, 1), 0, &args)?;
        let args = [
            Arg::P(dxp),
            Arg::P(self.pr(&raw)),
            Arg::P(self.pr(&w)),
            Arg::P(self.pr(&rstd)),
            Arg::I(ni),
            Arg::I(si),
            Arg::I(hi),
            Arg::I(di),
        ];
        self.launch("rmsnorm", "head_norm_bwd_f32", ((n * heads) as u32, 1, 1), (32, 1, 1), 0, &args)
    }
    fn add_bias(&self, mut out: Self::M<'_>, bias: Self::R<'_>) -> Result<()> {
        let c = bias.len();
        let n = out.len() / c.max(1);
        let args =
            [Arg::P(self.pm(&mut out)), Arg::P(self.pr(&bias)), Arg::I(int(n, "rows")?), Arg::I(int(c, "cols")?)];
        self.launch("elementwise", "add_bias_f32", (n as u32, c.div_ceil(256) as u32, 1), (256, 1, 1), 0, &args)
    }
    fn bias_backward(&self, mut dbias: Self::M<'_>, dout: Self::R<'_>) -> Result<()> {
        let c = dbias.len();
        let n = dout.len() / c.max(1);
        let rows = 256usize;
        let p = n.div_ceil(rows).max(1);
        let pp = self.scratch(p * c)?;
        let (ni, ci) = (int(n, "rows")?, int(c, "cols")?);
        let args = [Arg::P(pp), Arg::P(self.pr(&dout)), Arg::I(ni), Arg::I(ci), Arg::I(rows as i32)];
        self.launch("elementwise", "col_partial_f32", (c.div_ceil(256) as u32, p as u32, 1), (256, 1, 1), 0, &args)?;
        let args = [Arg::P(self.pm(&mut dbias)), Arg::P(pp), Arg::I(p as i32), Arg::I(ci)];
        self.launch("rmsnorm", "colsum_add_f32", (c.div_ceil(256) as u32, 1, 1), (256, 1, 1), 0, &args)
    }
    fn rope_apply(
        &self,
        mut x: Self::M<'_>,
        row_stride: usize,
        n_heads: usize,
        batch: &GpuBatch,
        table: &GpuRope,
        inverse: bool,
    ) -> Result<()> {
        let n = x.len() / row_stride.max(1);
        let half = table.half;
        let args = [
            Arg::P(self.pm(&mut x)),
            Arg::I(int(n, "rows")?),
            Arg::I(int(row_stride, "row stride")?),
            Arg::I(int(n_heads, "heads")?),
            Arg::I(int(2 * half, "head dim")?),
            Arg::P(self.ids_ptr(&batch.positions, 0)),
            Arg::P(table.cos.device_ptr(&self.stream).0),
            Arg::P(table.sin.device_ptr(&self.stream).0),
            Arg::I(inverse as i32),
        ];
        self.launch("rope", "rope_f32", (n as u32, 1, 1), (128, 1, 1), 0, &args)
    }
    fn attention_forward(
        &self,
        out: Self::M<'_>,
        lse: Self::M<'_>,
        scratch: Self::M<'_>,
        qkv: Self::R<'_>,
        batch: &GpuBatch,
        shape: AttnShape,
    ) -> Result<()> {
        self.flash_forward(out, lse, scratch, qkv, batch, shape)
    }
    fn attention_backward(
        &self,
        dqkv: Self::M<'_>,
        scratch: Self::M<'_>,
        dout: Self::R<'_>,
        saved: AttnSaved<Self::R<'_>>,
        batch: &GpuBatch,
        shape: AttnShape,
    ) -> Result<()> {
        self.flash_backward(dqkv, scratch, dout, saved, batch, shape)
    }
    fn swiglu_forward(&self, mut act: ActViewMut<'_>, gate_up: ActView<'_>, inter: usize) -> Result<()> {
        let n = act.len() / inter.max(1);
        if gate_up.len() < 2 * n * inter {
            return Err(Error::shape("SwiGLU", format!("{n} rows of {inter} from {} gate|up values", gate_up.len())));
        }
        // (gate|up in bf16 comes with bf16 products, whose activations are all bf16)
        let entry = match (&gate_up, act.out_suffix()) {
            (ActView::F32(_), out) => format!("swiglu_fwd_f32{out}"),
            (ActView::Bf16(_), "_o16") => "swiglu_fwd_bf16".to_string(),
            (ActView::Bf16(_), _) => return Err(Error::shape("SwiGLU", "bf16 gate|up into an f32 activation")),
        };
        let args =
            [Arg::P(act.ptr(self)), Arg::P(gate_up.ptr(self)), Arg::I(int(n, "rows")?), Arg::I(int(inter, "inter")?)];
        self.launch("swiglu", &entry, swiglu_grid(n, inter)?, (256, 1, 1), 0, &args)
    }
    fn swiglu_backward(
        &self,
        mut dgate_up: ActViewMut<'_>,
        dact: Self::R<'_>,
        gate_up: ActView<'_>,
        inter: usize,
    ) -> Result<()> {
        let n = dact.len() / inter.max(1);
        if dgate_up.len() < 2 * n * inter || gate_up.len() < 2 * n * inter {
            return Err(Error::shape("SwiGLU backward", format!("{n} rows of {inter}: gate|up views too short")));
        }
        let input = if matches!(gate_up, ActView::Bf16(_)) { "bf16" } else { "f32" };
        let entry = format!("swiglu_bwd_{input}{}", dgate_up.out_suffix());
        let args = [
            Arg::P(dgate_up.ptr(self)),
            Arg::P(self.pr(&dact)),
            Arg::P(gate_up.ptr(self)),
            Arg::I(int(n, "rows")?),
            Arg::I(int(inter, "inter")?),
        ];
        self.launch("swiglu", &entry, swiglu_grid(n, inter)?, (256, 1, 1), 0, &args)
    }
    fn logprob_forward(
        &self,
        z: Self::R<'_>,
        v: usize,
        batch: &GpuBatch,
        rows: Range<usize>,
        out: LogitStats<Self::M<'_>>,
    ) -> Result<()> {
        let LogitStats { mut lse, mut logp, mut entropy } = out;
        let n = rows.len();
        let args = [
            Arg::P(self.pr(&z)),
            Arg::P(self.ids_ptr(&batch.targets, rows.start)),
            Arg::P(self.pm(&mut lse)),
            Arg::P(self.pm(&mut logp)),
            Arg::P(self.pm(&mut entropy)),
            Arg::I(int(n, "rows")?),
            Arg::I(int(v, "vocab")?),
        ];
        self.launch("logprob", "logprob_fwd_f32", (n as u32, 1, 1), (512, 1, 1), 0, &args)
    }
    fn logprob_backward(
        &self,
        mut z: Self::M<'_>,
        dz: Option<ActViewMut<'_>>,
        v: usize,
        batch: &GpuBatch,
        rows: Range<usize>,
        grad: LogprobGrad<Self::R<'_>, Self::R<'_>>,
    ) -> Result<()> {
        let LogprobGrad { lse, g, ent } = grad;
        let n = rows.len();
        let zp = self.pm(&mut z);
        // in place, or into the activation buffer (bf16 as it is written with bf16 products)
        let (out, entry) = match dz {
            None => (zp, "logprob_bwd_f32"),
            Some(mut dz) => {
                if dz.len() < z.len() {
                    let why = format!("{} gradients for {} logits", dz.len(), z.len());
                    return Err(Error::shape("logprob backward", why));
                }
                let entry = if dz.out_suffix().is_empty() { "logprob_bwd_f32" } else { "logprob_bwd_f32_o16" };
                (dz.ptr(self), entry)
            }
        };
        let (de, h) = match &ent {
            Some((de, h)) => (self.pr(de), self.pr(h)),
            None => (0, 0),
        };
        let args = [
            Arg::P(out),
            Arg::P(zp),
            Arg::P(self.ids_ptr(&batch.targets, rows.start)),
            Arg::P(self.pr(&lse)),
            Arg::P(self.pr(&g)),
            Arg::P(de),
            Arg::P(h),
            Arg::I(int(n, "rows")?),
            Arg::I(int(v, "vocab")?),
        ];
        self.launch("logprob", entry, (n as u32, 1, 1), (512, 1, 1), 0, &args)
    }
}

/// The SwiGLU kernels' grid (cuda/swiglu.cu): a thread per 8 consecutive columns of a row.
fn swiglu_grid(n: usize, inter: usize) -> Result<(u32, u32, u32)> {
    let blocks = (n * inter.div_ceil(8)).div_ceil(256);
    Ok((int(blocks, "SwiGLU blocks")? as u32, 1, 1))
}

#[cfg(test)]
mod tests {
    use super::head_chunk_elems;

    /// The LM-head chunk is a sixteenth of the device's memory in f32, between 64 MiB and 4 GiB:
    /// 80 GB keeps the 0.5B benchmark's 4 × 1024 rows at Qwen2's vocabulary, 24 GB does not.
    #[test]
    fn the_head_chunk_follows_the_device_memory() {
        let rows = |mem: usize| head_chunk_elems(mem) / 151_936;
        assert_eq!(head_chunk_elems(80 << 30), 1 << 30);
        assert!(rows(80 << 30) >= 4096 && rows(24 << 30) < 4096, "{} {}", rows(80 << 30), rows(24 << 30));
        assert_eq!(head_chunk_elems(24 << 30), (24 << 30) / 64);
        assert_eq!(head_chunk_elems(1 << 30), 1 << 24);
    }

    /// Every kernel file declares the entries the backend launches.
    #[test]
    fn launched_entries_exist_in_the_sources() {
        let launched = [
            ("embedding", "embedding_fwd_f32"),
            ("embedding", "embedding_bwd_f32"),
            ("rmsnorm", "rmsnorm_fwd_f32"),
            ("rmsnorm", "rmsnorm_bwd_f32"),
            ("rmsnorm", "rmsnorm_dw_partial_f32"),
            ("rmsnorm", "colsum_add_f32"),
            ("rmsnorm", "head_norm_fwd_f32"),
            ("rmsnorm", "head_norm_bwd_f32"),
            ("rmsnorm", "head_norm_dw_partial_f32"),
            ("elementwise", "add_bias_f32"),
            ("elementwise", "col_partial_f32"),
            ("elementwise", "f32_to_bf16_n"),
            ("rope", "rope_f32"),
            ("attention_fwd", "attn_fwd_32_f32"),
            ("attention_fwd", "attn_fwd_64_f32"),
            ("attention_fwd", "attn_fwd_128_f32"),
            ("rmsnorm", "rmsnorm_fwd_f32_o16"),
            ("swiglu", "swiglu_fwd_f32_o16"),
            ("swiglu", "swiglu_bwd_f32_o16"),
            ("swiglu", "swiglu_fwd_bf16"),
            ("swiglu", "swiglu_bwd_bf16"),
            ("swiglu", "swiglu_bwd_bf16_o16"),
            ("decode_attention", "decode_qkv_store_f32"),
            ("decode_attention", "decode_qkv_store_f32_bf16"),
            ("decode_attention", "decode_attn_f32_o16"),
            ("decode_attention", "decode_attn_f32_bf16_o16"),
            ("decode_attention", "decode_attn_gqa_64_f32_o16"),
            ("decode_attention", "decode_attn_gqa_128_f32_o16"),
            ("decode_attention", "decode_attn_gqa_64_f32_bf16_o16"),
            ("decode_attention", "decode_attn_gqa_128_f32_bf16_o16"),
            ("decode_attention", "decode_attn_merge_64_f32"),
            ("decode_attention", "decode_attn_merge_128_f32"),
            ("decode_attention", "decode_attn_merge_64_o16"),
            ("decode_attention", "decode_attn_merge_128_o16"),
            ("decode_attention", "decode_attn_f32"),
            ("decode_attention", "decode_attn_f32_bf16"),
            ("decode_attention", "decode_attn_gqa_64_f32"),
            ("decode_attention", "decode_attn_gqa_128_f32"),
            ("decode_attention", "decode_attn_gqa_64_f32_bf16"),
            ("decode_attention", "decode_attn_gqa_128_f32_bf16"),
            ("attention_mma", "attn_fwd_mma_64"),
            ("attention_mma", "attn_fwd_mma_128"),
            ("attention_mma@90a", "attn_fwd_wgmma_64"),
            ("attention_mma@90a", "attn_fwd_wgmma_128"),
            ("attention_mma_bwd@90a", "attn_bwd_dq_wgmma_64"),
            ("attention_mma_bwd@90a", "attn_bwd_dq_wgmma_128"),
            ("attention_mma_bwd@90a", "attn_bwd_dkdv_wgmma_64"),
            ("attention_mma_bwd@90a", "attn_bwd_dkdv_wgmma_128"),
            ("attention_mma_bwd", "attn_bwd_dq_mma_64"),
            ("attention_mma_bwd", "attn_bwd_dq_mma_128"),
            ("attention_mma_bwd", "attn_bwd_dkdv_mma_64"),
            ("attention_mma_bwd", "attn_bwd_dkdv_mma_128"),
            ("attention_mma", "attn_fwd_mma_64_x2"),
            ("attention_mma", "attn_fwd_mma_128_x2"),
            ("attention_mma@90a", "attn_fwd_wgmma_64_x2"),
            ("attention_mma@90a", "attn_fwd_wgmma_128_x2"),
            ("attention_mma_bwd@90a", "attn_bwd_dq_wgmma_64_x2"),
            ("attention_mma_bwd@90a", "attn_bwd_dq_wgmma_128_x2"),
            ("attention_mma_bwd@90a", "attn_bwd_dkdv_wgmma_64_x2"),
            ("attention_mma_bwd@90a", "attn_bwd_dkdv_wgmma_128_x2"),
            ("attention_mma_bwd", "attn_bwd_dq_mma_64_x2"),
            ("attention_mma_bwd", "attn_bwd_dq_mma_128_x2"),
            ("attention_mma_bwd", "attn_bwd_dkdv_mma_64_x2"),
            ("attention_mma_bwd", "attn_bwd_dkdv_mma_128_x2"),
            ("attention_mma", "attn_pack_bf16"),
            ("attention_bwd", "attn_bwd_group_sum_f32"),
            ("attention_bwd", "attn_bwd_delta_f32"),
            ("attention_bwd", "attn_bwd_dkdv_64_f32"),
            ("attention_bwd", "attn_bwd_dq_128_f32"),
            ("swiglu", "swiglu_fwd_f32"),
            ("value_head", "value_head_fwd_f32"),
            ("value_head", "value_head_dx_f32"),
            ("value_head", "value_head_dw_part_f32"),
            ("value_head", "value_head_dw_sum_f32"),
            ("logprob", "logprob_bwd_f32_o16"),
            ("swiglu", "swiglu_bwd_f32"),
            ("logprob", "logprob_fwd_f32"),
            ("logprob", "logprob_bwd_f32"),
            ("grad_norm", "sumsq_partial_f32"),
            ("grad_norm", "sumsq_final_f64"),
            ("adamw", "adamw_f32"),
            ("attn_stats", "attn_stats_32_f32"),
            ("attn_stats", "attn_stats_64_f32"),
            ("attn_stats", "attn_stats_128_f32"),
            ("attn_stats", "attn_stats_32_bf16"),
            ("attn_stats", "attn_stats_64_bf16"),
            ("attn_stats", "attn_stats_128_bf16"),
            ("attn_stats", "attn_stats_col_sum"),
            ("attn_stats", "attn_stats_fci_reduce"),
        ];
        for (module, entry) in launched {
            // (a module's Hopper variant is its source compiled for compute_90a)
            let (source, _) = crate::cuda::device::module_target(module, "compute_90");
            let src = crate::cuda::nvrtc::source(source).unwrap();
            let entries = crate::cuda::nvrtc::entries(&src);
            assert!(entries.iter().any(|e| e == entry), "{module}.cu has no entry {entry} (has {entries:?})");
        }
    }
}
