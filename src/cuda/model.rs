//! A model resident on a GPU: weights, gradients, AdamW moments and the activation workspace in
//! device memory; the forward and backward are the generic ones of `crate::model::transformer`.

use crate::cuda::attention::attn_dm;
use crate::cuda::backend::GpuRope;
use crate::cuda::batch::GpuBatch;
use crate::cuda::device::{drv, int, Arg, Gpu};
use crate::cuda::image::Bf16Image;
use crate::error::{Error, Result};
use crate::model::head::HeadGrad;
use crate::model::transformer::On;
use crate::model::{Batch, Model, Workspace};
use crate::tensor::Backend;
use crate::train::adamw::{clip_coefficient, AdamW};
use cudarc::driver::{CudaSlice, DevicePtr};
use std::sync::Arc;

/// Weights, gradients and optimizer state of one model on one device.
pub struct GpuModel {
    /// The weights rounded to bf16 when the device's products are "bf16" (`cuda::image`; AdamW
    /// writes it with the weights). The first field: dropped (so unregistered) before the weights.
    image: Option<Bf16Image>,
    gpu: Arc<Gpu>,
    params: CudaSlice<f32>,
    grads: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    rope: GpuRope,
    pub(crate) ws: Workspace<Gpu>,
    /// The last batch uploaded (host copy, device copy): a backward on the batch its forward just
    /// uploaded reuses it (no second upload, no second embedding-gradient table).
    batch: Option<(Batch, GpuBatch)>,
    /// ∂L/∂logp and ∂L/∂H of a backward's tokens on the device, [2, N] (grown, reused).
    head_grad: CudaSlice<f32>,
    /// A value model's head: its weights, then per row the values or their gradients, then the
    /// weights' gradient (grown, reused).
    value_head: CudaSlice<f32>,
    /// The gradient norm's partial sums and its result (allocated once: the norm runs every step).
    norm: (CudaSlice<f64>, CudaSlice<f32>),
    /// Under tensor parallelism, what the gradient norm needs beyond `norm`.
    tp_norm: Option<TpNorm>,
}

/// The runs of one kind of tensor: each run's elements and its first slot in the partial sums,
/// and the kind's number of slots.
type NormRuns = (Vec<(std::ops::Range<usize>, usize)>, usize);

/// The gradient norm of a tensor-parallel shard, as the full model would see it: the sums of
/// squares of the sharded tensors added over the group, the replicated ones counted once (the
/// CPU's `TensorParallel::sum_squares`). Each run of neighbouring tensors of one kind gets its
/// slice of the partial sums; one final pass per kind sums its slices in order.
struct TpNorm {
    group: crate::parallel::TpGroup,
    /// Per kind: sharded, then replicated (its slots after the sharded kind's).
    runs: [NormRuns; 2],
    partials: CudaSlice<f64>,
    /// The two kinds' sums of squares.
    sums: CudaSlice<f64>,
}

impl TpNorm {
    fn of(gpu: &Gpu, model: &Model) -> Result<Option<TpNorm>> {
        let Some(tp) = &model.tp else { return Ok(None) };
        let mut runs: [NormRuns; 2] = Default::default();
        let mut last: Option<(usize, std::ops::Range<usize>)> = None;
        let close = |k: usize, r: std::ops::Range<usize>, runs: &mut [NormRuns; 2]| {
            let slots = runs[k].1;
            runs[k].1 += norm_parts(r.len());
            runs[k].0.push((r, slots));
        };
        for spec in &model.params.layout.specs {
            let k = match crate::model::shard::split_of(&spec.name) {
                crate::model::shard::Split::Replicated => 1,
                _ => 0,
            };
            last = match last {
                Some((lk, r)) if lk == k && r.end == spec.range().start => Some((k, r.start..spec.range().end)),
                Some((lk, r)) => {
                    close(lk, r, &mut runs);
                    Some((k, spec.range()))
                }
                None => Some((k, spec.range())),
            };
        }
        if let Some((k, r)) = last {
            close(k, r, &mut runs);
        }
        let slots = (runs[0].1 + runs[1].1).max(1);
        Ok(Some(TpNorm {
            group: tp.group.clone(),
            runs,
            partials: gpu.alloc(slots, "the gradient norm")?,
            sums: gpu.alloc(2, "the gradient norm")?,
        }))
    }
}

/// Blocks of the gradient norm's first pass over `n` values (its partial sums).
fn norm_parts(n: usize) -> usize {
    n.div_ceil(256).clamp(1, 1024)
}

/// A model's weights on the device and, with bf16 products, their bf16 image (`cuda::image`): what
/// [`crate::cuda::GpuDecoder`] decodes from, borrowed from the [`GpuModel`] that trains them (one
/// copy of the weights on the device, current after every optimizer step).
#[derive(Clone, Copy)]
pub struct DeviceWeights<'a> {
    pub params: &'a CudaSlice<f32>,
    pub image: Option<&'a Bf16Image>,
}

/// The row chunks of the value head's weight gradient (`value_head_dw_part_f32`): (rows per chunk,
/// chunks), about four blocks per multiprocessor over the columns' blocks, at least 64 rows a
/// chunk, at most 65,535 chunks (grid y). The chunks depend on the multiprocessor count, so the
/// gradient's last bits do too: a run repeats itself on the same GPU model.
fn dw_chunks(n: usize, c: usize, sms: usize) -> (usize, usize) {
    let want = (4 * sms.max(1)).div_ceil(c.div_ceil(256).max(1)).max(1);
    let rows = n.div_ceil(want).max(64).max(n.div_ceil(65_535));
    (rows, n.div_ceil(rows).max(1))
}

impl GpuModel {
    /// Upload `model`'s weights (gradients and moments start at zero).
    pub fn new(gpu: Arc<Gpu>, model: &Model) -> Result<Self> {
        // (a head dim the attention kernels refuse, before anything is allocated)
        attn_dm(model.cfg.head_dim)?;
        let n = model.params.data.len();
        let zeros = |len| gpu.alloc::<f32>(len, "the gradients and AdamW moments");
        let params = gpu.upload(&model.params.data)?;
        Ok(GpuModel {
            image: Bf16Image::of(&gpu, &params)?,
            params,
            grads: zeros(n)?,
            m: zeros(n)?,
            v: zeros(n)?,
            rope: gpu.rope(&model.rope)?,
            ws: Workspace::empty(&*gpu)?,
            batch: None,
            head_grad: zeros(1)?,
            value_head: zeros(1)?,
            norm: (gpu.alloc(norm_parts(n), "the gradient norm")?, gpu.alloc(1, "the gradient norm")?),
            tp_norm: TpNorm::of(&gpu, model)?,
            gpu,
        })
    }

    /// Upload `model`'s weights for forward passes only (a frozen reference policy): no gradient
    /// or moment buffers; [`GpuModel::backward`] and [`GpuModel::adamw_step`] refuse it.
    pub fn frozen(gpu: Arc<Gpu>, model: &Model) -> Result<Self> {
        attn_dm(model.cfg.head_dim)?;
        let one = || gpu.alloc::<f32>(1, "a buffer");
        let params = gpu.upload(&model.params.data)?;
        Ok(GpuModel {
            image: Bf16Image::of(&gpu, &params)?,
            params,
            grads: one()?,
            m: one()?,
            v: one()?,
            rope: gpu.rope(&model.rope)?,
            ws: Workspace::empty(&*gpu)?,
            batch: None,
            head_grad: one()?,
            value_head: one()?,
            norm: (gpu.alloc(1, "the gradient norm")?, one()?),
            tp_norm: None,
            gpu,
        })
    }

    /// `batch` on the device: the one kept from the last call when it is the same batch, else a
    /// fresh upload (kept by [`GpuModel::keep_batch`] after use).
    fn device_batch(&mut self, batch: &Batch) -> Result<GpuBatch> {
        match self.batch.take() {
            Some((host, dev)) if host == *batch => Ok(dev),
            _ => self.gpu.batch(batch.packed()),
        }
    }

    /// `batch` on the device, when it is the one the last forward or backward uploaded.
    pub(crate) fn uploaded(&self, batch: &Batch) -> Option<&GpuBatch> {
        self.batch.as_ref().filter(|(host, _)| host == batch).map(|(_, dev)| dev)
    }

    fn keep_batch(&mut self, batch: &Batch, dev: GpuBatch) {
        match &mut self.batch {
            Some((host, _)) if host == batch => {}
            _ => self.batch = Some((batch.clone(), dev)),
        }
    }

    /// A frozen model has no gradient buffer.
    fn check_trainable(&self) -> Result<()> {
        match self.grads.len() == self.params.len() {
            true => Ok(()),
            false => Err(Error::Invalid("a frozen GPU model (forward only) cannot train".into())),
        }
    }

    /// Forward on `batch`: returns (log p of each target, entropy of each row).
    pub fn forward(&mut self, model: &Model, batch: &Batch) -> Result<(Vec<f32>, Vec<f32>)> {
        model.check_batch(batch)?;
        let dev = self.device_batch(batch)?;
        let on = On { be: &*self.gpu, params: &self.params, rope: &self.rope };
        let done = model.forward_on(&on, batch, &dev, &mut self.ws);
        self.keep_batch(batch, dev);
        done?;
        let n = batch.len();
        let (mut logp, mut ent) = (vec![0.0; n], vec![0.0; n]);
        self.gpu.download(&self.ws.logprobs, &mut logp)?;
        self.gpu.download(&self.ws.entropy, &mut ent)?;
        Ok((logp, ent))
    }

    /// Backward after [`GpuModel::forward`] on the same batch; gradients are ADDED to the device
    /// gradient buffer (see [`Model::backward_with_entropy`] for `dlogp` and `dent`).
    pub fn backward(&mut self, model: &Model, batch: &Batch, dlogp: &[f32], dent: Option<&[f32]>) -> Result<()> {
        self.check_trainable()?;
        let n = batch.len();
        if dlogp.len() != n || dent.is_some_and(|d| d.len() != n) {
            return Err(Error::shape("dlogp/dent", format!("do not have one entry per token ({n})")));
        }
        let dev = self.device_batch(batch)?;
        self.gpu.grow(&mut self.head_grad, 2 * n)?;
        let s = &self.gpu.stream;
        s.memcpy_htod(dlogp, &mut self.head_grad.slice_mut(0..n)).map_err(drv("upload"))?;
        if let Some(d) = dent {
            s.memcpy_htod(d, &mut self.head_grad.slice_mut(n..2 * n)).map_err(drv("upload"))?;
        }
        let on = On { be: &*self.gpu, params: &self.params, rope: &self.rope };
        let grads = Gpu::m(&mut self.grads, 0..model.params.data.len());
        let grad =
            HeadGrad { dlogp: Gpu::r(&self.head_grad, 0..n), dent: dent.map(|_| Gpu::r(&self.head_grad, n..2 * n)) };
        let done = model.backward_on(&on, batch, &dev, grad, &mut self.ws, grads);
        self.keep_batch(batch, dev);
        // (queued: the next host read of the device synchronises, and reports a failure)
        done
    }

    /// Forward of the trunk only (embeddings, layers, final norm: a value model's), then its value
    /// head without the bias: lnf · w of every row, `[N]` on the host (cuda/value_head.cu). The
    /// hidden states stay on the device for [`GpuModel::backward_trunk_head`].
    pub fn trunk_values(&mut self, model: &Model, batch: &Batch, w: &[f32]) -> Result<Vec<f32>> {
        model.check_batch(batch)?;
        let (n, c) = (batch.len(), model.cfg.hidden_size);
        if w.len() != c {
            return Err(Error::shape("value head", format!("{} weights for a hidden size of {c}", w.len())));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let dev = self.device_batch(batch)?;
        let on = On { be: &*self.gpu, params: &self.params, rope: &self.rope };
        let done = model.forward_trunk_on(&on, batch, &dev, &mut self.ws);
        self.keep_batch(batch, dev);
        done?;
        // [w | v] in the head's buffer
        let g = &*self.gpu;
        g.grow(&mut self.value_head, c + n)?;
        g.stream.memcpy_htod(w, &mut self.value_head.slice_mut(0..c)).map_err(drv("upload"))?;
        let (wp, vp) = (g.pr(&Gpu::r(&self.value_head, 0..c)), g.pr(&Gpu::r(&self.value_head, c..c + n)));
        let args =
            [Arg::P(vp), Arg::P(g.pr(&Gpu::r(&self.ws.lnf, 0..n * c))), Arg::P(wp), Arg::I(n as i32), Arg::I(c as i32)];
        g.launch("value_head", "value_head_fwd_f32", (n as u32, 1, 1), (256, 1, 1), 0, &args)?;
        let mut v = vec![0.0; n];
        g.download_range(&self.value_head, c..c + n, &mut v)?;
        Ok(v)
    }

    /// Backward of the value head and the trunk after [`GpuModel::trunk_values`] on the same
    /// batch, from `dv` = ∂L/∂V of every row (0 where no loss): ∂L/∂lnf = dv ⊗ w on the device,
    /// the trunk's gradients ADDED to the device gradient buffer; returns ∂L/∂w `[C]` (on the host,
    /// as the head's C + 1 numbers are).
    pub fn backward_trunk_head(&mut self, model: &Model, batch: &Batch, w: &[f32], dv: &[f32]) -> Result<Vec<f32>> {
        self.check_trainable()?;
        let (n, c) = (batch.len(), model.cfg.hidden_size);
        if w.len() != c || dv.len() != n {
            let why = format!("{} weights and {} gradients for {n} rows of {c}", w.len(), dv.len());
            return Err(Error::shape("value head backward", why));
        }
        if n == 0 {
            return Ok(vec![0.0; c]);
        }
        if self.ws.capacity() < n {
            return Err(Error::Invalid("value head backward: no forward of this batch (trunk_values first)".into()));
        }
        let dev = self.device_batch(batch)?;
        // [w | dv | dw | the partial sums of dw over row chunks] in the head's buffer
        let g = &*self.gpu;
        let (rows, parts) = dw_chunks(n, c, g.sms() as usize);
        g.grow(&mut self.value_head, 2 * c + n + parts * c)?;
        g.stream.memcpy_htod(w, &mut self.value_head.slice_mut(0..c)).map_err(drv("upload"))?;
        g.stream.memcpy_htod(dv, &mut self.value_head.slice_mut(c..c + n)).map_err(drv("upload"))?;
        let (wp, dvp) = (g.pr(&Gpu::r(&self.value_head, 0..c)), g.pr(&Gpu::r(&self.value_head, c..c + n)));
        let dwp = g.pr(&Gpu::r(&self.value_head, c + n..2 * c + n));
        let lnf = g.pr(&Gpu::r(&self.ws.lnf, 0..n * c));
        let dlnf = g.pm(&mut Gpu::m(&mut self.ws.dln, 0..n * c));
        let (ni, ci, ri, pi) = (int(n, "rows")?, int(c, "hidden size")?, int(rows, "rows")?, int(parts, "chunks")?);
        let args = [Arg::P(dlnf), Arg::P(dvp), Arg::P(wp), Arg::I(ni), Arg::I(ci)];
        g.launch("value_head", "value_head_dx_f32", (n as u32, 1, 1), (256, 1, 1), 0, &args)?;
        let part = g.pr(&Gpu::r(&self.value_head, 2 * c + n..2 * c + n + parts * c));
        let cols = c.div_ceil(256) as u32;
        let args = [Arg::P(part), Arg::P(lnf), Arg::P(dvp), Arg::I(ni), Arg::I(ci), Arg::I(ri)];
        g.launch("value_head", "value_head_dw_part_f32", (cols, parts as u32, 1), (256, 1, 1), 0, &args)?;
        let args = [Arg::P(dwp), Arg::P(part), Arg::I(pi), Arg::I(ci)];
        g.launch("value_head", "value_head_dw_sum_f32", (cols, 1, 1), (256, 1, 1), 0, &args)?;
        // the trunk's backward is queued before the head's gradient is read back (one wait)
        let on = On { be: g, params: &self.params, rope: &self.rope };
        let grads = Gpu::m(&mut self.grads, 0..model.params.data.len());
        let done = model.backward_trunk_on(&on, batch, &dev, &mut self.ws, grads);
        self.keep_batch(batch, dev);
        done?;
        let mut dw = vec![0.0; c];
        self.gpu.download_range(&self.value_head, c + n..2 * c + n, &mut dw)?;
        Ok(dw)
    }

    /// The gradients, on the host.
    pub fn grads(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.grads.len()];
        self.gpu.download(&self.grads, &mut out)?;
        Ok(out)
    }

    /// The weights, on the host.
    pub fn params(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.params.len()];
        self.gpu.download(&self.params, &mut out)?;
        Ok(out)
    }

    /// Replace the weights with `params` (e.g. after an optimizer step on the host).
    pub fn set_params(&mut self, params: &[f32]) -> Result<()> {
        if params.len() != self.params.len() {
            return Err(Error::shape(
                "weights upload",
                format!("{} weights for a model of {}", params.len(), self.params.len()),
            ));
        }
        self.gpu.stream.memcpy_htod(params, &mut self.params).map_err(drv("upload"))?;
        match &mut self.image {
            Some(image) => image.refresh(&self.params),
            None => Ok(()),
        }
    }

    /// The weights' device buffer (e.g. for a decoder to copy after an optimizer step).
    pub fn params_device(&self) -> &CudaSlice<f32> {
        &self.params
    }

    /// The weights and their bf16 image as a decoder reads them, in place.
    pub fn weights(&self) -> DeviceWeights<'_> {
        DeviceWeights { params: &self.params, image: self.image.as_ref() }
    }

    /// The device this model lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The device, shared (for a decoder or a second model on it).
    pub fn gpu_arc(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The AdamW moments (m, v), on the host.
    pub fn moments(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let (mut m, mut v) = (vec![0.0; self.m.len()], vec![0.0; self.v.len()]);
        self.gpu.download(&self.m, &mut m)?;
        self.gpu.download(&self.v, &mut v)?;
        Ok((m, v))
    }

    /// Replace the AdamW moments (a resumed optimizer); empty slices mean zeros.
    pub fn set_moments(&mut self, m: &[f32], v: &[f32]) -> Result<()> {
        self.check_trainable()?;
        for (host, dev) in [(m, &mut self.m), (v, &mut self.v)] {
            if host.is_empty() {
                self.gpu.stream.memset_zeros(dev).map_err(drv("memset"))?;
            } else if host.len() != dev.len() {
                return Err(Error::shape(
                    "optimizer moments upload",
                    format!("{} moments for a model of {}", host.len(), dev.len()),
                ));
            } else {
                self.gpu.stream.memcpy_htod(host, dev).map_err(drv("upload"))?;
            }
        }
        Ok(())
    }

    /// Sum the gradients over a NCCL group, on the devices.
    pub fn all_reduce_grads(&mut self, nccl: &crate::cuda::nccl::Nccl) -> Result<()> {
        // (on the one stream: what reads the sums next is ordered after it)
        nccl.all_reduce_device(&mut self.grads)?;
        // Under tensor parallelism each shard's gradients were summed by its own data-parallel
        // group, and two groups on other GPUs may sum in other orders (NCCL picks its algorithm
        // per topology): the replicated tensors (embeddings, norms, LM head) would drift apart
        // between the shards, and with them the tokens each shard samples. They take tensor-
        // parallel rank 0's sums.
        if let Some(t) = &self.tp_norm {
            for (r, _) in &t.runs[1].0 {
                self.gpu.broadcast_tp(self.grads.slice_mut(r.clone()), &t.group, 0)?;
            }
        }
        Ok(())
    }

    /// Gradient checkpointing for the passes that follow ([`Workspace::set_checkpointing`]).
    pub fn set_checkpointing(&mut self, on: bool) {
        self.ws.set_checkpointing(on);
    }

    /// Whether the passes checkpoint (see [`GpuModel::set_checkpointing`]).
    pub fn checkpointing(&self) -> bool {
        self.ws.checkpointing()
    }

    /// Bytes of device memory the forward and backward's buffers hold now (activations, their
    /// gradients, the head's chunk, the attention's scratch).
    pub fn workspace_bytes(&self) -> usize {
        self.ws.bytes()
    }

    /// The size of the model's tensor-parallel group (1 without one).
    pub fn tp_size(&self) -> usize {
        self.tp_norm.as_ref().map_or(1, |t| crate::parallel::Comm::size(&t.group))
    }

    /// Zero the gradients.
    pub fn zero_grads(&mut self) -> Result<()> {
        self.gpu.stream.memset_zeros(&mut self.grads).map_err(drv("memset"))
    }

    /// Global L2 norm of the gradients (deterministic two-pass f64 sum).
    pub fn grad_norm(&self) -> Result<f32> {
        if let Some(t) = &self.tp_norm {
            return self.tp_grad_norm(t);
        }
        let n = self.grads.len();
        let p = norm_parts(n);
        let (partials, norm) = &self.norm;
        if partials.len() < p {
            return Err(Error::shape("gradient norm", format!("{} partial sums for {p} blocks", partials.len())));
        }
        let pp = partials.device_ptr(&self.gpu.stream).0;
        let gp = self.grads.device_ptr(&self.gpu.stream).0;
        self.gpu.launch(
            "grad_norm",
            "sumsq_partial_f32",
            (p as u32, 1, 1),
            (256, 1, 1),
            0,
            &[Arg::P(gp), Arg::L(n as i64), Arg::P(pp)],
        )?;
        let np = norm.device_ptr(&self.gpu.stream).0;
        self.gpu.launch(
            "grad_norm",
            "sumsq_final_f64",
            (1, 1, 1),
            (1024, 1, 1),
            0,
            &[Arg::P(pp), Arg::I(p as i32), Arg::P(np), Arg::P(0)],
        )?;
        let mut out = [0.0f32];
        self.gpu.stream.memcpy_dtoh(norm, &mut out[..]).map_err(drv("download"))?;
        self.gpu.sync()?;
        Ok(out[0])
    }

    /// [`GpuModel::grad_norm`] of a tensor-parallel shard ([`TpNorm`]): two f64 sums come to the
    /// host and are summed over the group there.
    fn tp_grad_norm(&self, t: &TpNorm) -> Result<f32> {
        let s = &self.gpu.stream;
        let (gp, pp, sp) = (self.grads.device_ptr(s).0, t.partials.device_ptr(s).0, t.sums.device_ptr(s).0);
        for (k, (runs, slots)) in t.runs.iter().enumerate() {
            // the replicated kind's slots follow the sharded kind's
            let first = if k == 0 { 0 } else { t.runs[0].1 };
            for (r, at) in runs {
                let at = first + at;
                let args = [Arg::P(gp + (r.start * 4) as u64), Arg::L(r.len() as i64), Arg::P(pp + (at * 8) as u64)];
                self.gpu.launch(
                    "grad_norm",
                    "sumsq_partial_f32",
                    (norm_parts(r.len()) as u32, 1, 1),
                    (256, 1, 1),
                    0,
                    &args,
                )?;
            }
            let args = [Arg::P(pp + (first * 8) as u64), Arg::I(*slots as i32), Arg::P(0), Arg::P(sp + (k * 8) as u64)];
            self.gpu.launch("grad_norm", "sumsq_final_f64", (1, 1, 1), (1024, 1, 1), 0, &args)?;
        }
        let mut sums = [0.0f64; 2];
        s.memcpy_dtoh(&t.sums, &mut sums[..]).map_err(drv("download"))?;
        self.gpu.sync()?;
        // one sum over the group (in rank order: the same bits on every rank, so every shard
        // clips alike), the replicated tensors counted on rank 0 only
        use crate::parallel::Comm;
        let mut total = [sums[0] + if t.group.rank() == 0 { sums[1] } else { 0.0 }];
        t.group.all_reduce_sum_f64(&mut total)?;
        Ok(total[0].sqrt() as f32)
    }

    /// One AdamW step with the hyper-parameters, step count and decay segments of `opt` (its host
    /// moments are not used; `opt.t` is advanced), clipping to `max_norm` (0 = none). Returns the
    /// pre-clip gradient norm. A non-finite norm skips the update (weights, moments and `opt.t`
    /// unchanged), as on the CPU.
    pub fn adamw_step(&mut self, opt: &mut AdamW, lr: f32, max_norm: f32) -> Result<f32> {
        self.check_trainable()?;
        // (a data-parallel rank's shard updates its part: `parallel::zero`, `GpuModel::shard_moments`)
        if opt.range().end > self.params.len() || opt.m.len() != self.m.len() {
            let why = format!(
                "an optimizer of weights {:?} with {} moments on the device, for {} weights",
                opt.range(),
                self.m.len(),
                self.params.len()
            );
            return Err(Error::shape("AdamW on the GPU", why));
        }
        let o = opt.range().start;
        let norm = self.grad_norm()?;
        if !norm.is_finite() {
            return Ok(norm);
        }
        let scale = if max_norm > 0.0 { clip_coefficient(norm, max_norm) } else { 1.0 };
        opt.t += 1;
        let c = opt.cfg;
        let (step_size, inv_sqrt_bc2) = AdamW::step_factors(c, opt.t, lr);
        let s = &self.gpu.stream;
        let (p, g, m, v) =
            (self.params.device_ptr(s).0, self.grads.device_ptr(s).0, self.m.device_ptr(s).0, self.v.device_ptr(s).0);
        let blocks = (16 * self.gpu.sms()).max(1);
        // the weights' bf16 image is written in the same pass (NULL: none)
        let image = self.image.as_ref().map_or(0, |i| i.ptr());
        for (range, decays) in decay_runs(opt.segments()) {
            let (off, moff) = ((range.start * 4) as u64, ((range.start - o) * 4) as u64);
            let args = [
                Arg::P(p + off),
                Arg::P(g + off),
                Arg::P(m + moff),
                Arg::P(v + moff),
                Arg::P(if image == 0 { 0 } else { image + (range.start * 2) as u64 }),
                Arg::L(range.len() as i64),
                Arg::F(c.beta1),
                Arg::F(c.beta2),
                Arg::F(c.eps),
                Arg::F(AdamW::decay_factor(c, lr, decays)),
                Arg::F(step_size),
                Arg::F(inv_sqrt_bc2),
                Arg::F(scale),
            ];
            let grid = (range.len().div_ceil(256) as u32).clamp(1, blocks);
            self.gpu.launch("adamw", "adamw_f32", (grid, 1, 1), (256, 1, 1), 0, &args)?;
        }
        // (queued: the next host read of the device synchronises, and reports a failure)
        Ok(norm)
    }
}

/// AdamW's (range, decays) segments with neighbours of equal decay flags merged: one launch per
/// run (a layer's matrices and its norms and biases alternate, so a few per layer, where there was
/// one per tensor).
fn decay_runs(segments: &[(std::ops::Range<usize>, bool)]) -> Vec<(std::ops::Range<usize>, bool)> {
    let mut runs: Vec<(std::ops::Range<usize>, bool)> = Vec::new();
    for (r, d) in segments {
        match runs.last_mut() {
            Some((last, ld)) if *ld == *d && last.end == r.start => last.end = r.end,
            _ => runs.push((r.clone(), *d)),
        }
    }
    runs
}

mod zero;

#[cfg(test)]
mod tests {
    /// The value head's row chunks cover every row once, in order: the last chunk holds the end,
    /// no chunk is empty, and grid y's limit holds.
    #[test]
    fn the_value_head_chunks_cover_every_row_once() {
        for (n, c, sms) in
            [(0, 896, 132), (1, 64, 132), (63, 896, 132), (5000, 896, 132), (150_000, 896, 132), (10_000_000, 1, 1)]
        {
            let (rows, parts) = super::dw_chunks(n, c, sms);
            assert!(rows >= 64 && (1..=65_535).contains(&parts), "{n} {c}: {rows} × {parts}");
            assert!(parts * rows >= n && (n == 0 || (parts - 1) * rows < n), "{n} {c}: {rows} × {parts}");
        }
    }

    #[test]
    fn equal_decay_neighbours_merge_into_one_launch() {
        let segs = vec![(0..4, true), (4..6, true), (6..7, false), (7..9, false), (9..12, true), (14..15, true)];
        let runs = super::decay_runs(&segs);
        assert_eq!(runs, vec![(0..6, true), (6..9, false), (9..12, true), (14..15, true)]);
        assert!(super::decay_runs(&[]).is_empty());
    }
}
