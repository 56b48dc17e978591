//! The CUDA engine ([`super::Engine::Cuda`]): the policy's weights, gradients, AdamW moments
//! and decoder on the rank's GPU.

use crate::cuda::decode::GpuDecoder;
use crate::cuda::kv_cache::GpuKvCache;
use crate::cuda::nccl::Nccl;
use crate::cuda::{Gpu, GpuModel};
use crate::error::{Error, Result};
use crate::model::{Batch, Model, Workspace};
use crate::parallel::Comm;
use crate::rollout::sampler::Sampled;
use crate::rollout::{Completion, GenerateConfig, LoopStep, Request};
use crate::train::probe::{probe, unusable};
use crate::train::AdamW;
use std::rc::Rc;
use std::sync::Arc;

/// The policy on the rank's GPU: its weights (with gradients and moments when it trains), the
/// NCCL group of data parallelism, and the decoder (created on first generation), which reads
/// the weights in place.
pub struct CudaEngine {
    pub(super) model: GpuModel,
    /// The data-parallel group's communicator, shared with sibling engines.
    nccl: Option<Rc<Nccl>>,
    decoder: Option<GpuDecoder>,
    /// The device weights (resp. moments) changed since the host's were refreshed.
    host_stale: bool,
    moments_stale: bool,
}

/// Every rank of `group` (a `kind` group: NCCL will join them) on a GPU of its own: NCCL
/// refuses a communicator with a device twice, with an error that does not say why.
fn own_gpus(gpu: &Gpu, group: &dyn Comm, kind: &str) -> Result<()> {
    if group.size() < 2 {
        return Ok(());
    }
    let ids = group.all_gather_bytes(&gpu.uuid()?)?;
    match crate::cuda::placement::shared_device(&ids) {
        Some((a, b)) => Err(crate::cuda::placement::shared_device_error(kind, a, b)),
        None => Ok(()),
    }
}

/// The engine's decoder, made on first use.
fn decoder<'a>(slot: &'a mut Option<GpuDecoder>, on: &GpuModel, model: &Model) -> Result<&'a mut GpuDecoder> {
    match slot {
        Some(d) => Ok(d),
        none => Ok(none.insert(GpuDecoder::new(on.gpu_arc(), model)?)),
    }
}

impl CudaEngine {
    /// This process's GPU (`cuda::placement`) with products of `dtype`.
    fn open(dtype: crate::config::Dtype) -> Result<Arc<Gpu>> {
        // (the driver is only called once it is known to load)
        probe(crate::config::Device::Cuda)?;
        let count = cudarc::driver::CudaContext::device_count().map_err(|e| unusable(format!("{e:?}")))?;
        let ordinal = crate::cuda::placement::this_process(count.max(0) as usize)?;
        let gpu = Gpu::new(ordinal).map_err(unusable)?;
        gpu.set_dtype(dtype);
        Ok(Arc::new(gpu))
    }

    pub fn new(model: &Model, dp: &dyn Comm, dtype: crate::config::Dtype) -> Result<Self> {
        Self::on(Self::open(dtype)?, model, dp)
    }

    /// Forward passes and generation only (no gradient or moment buffers).
    pub fn inference(model: &Model, dtype: crate::config::Dtype) -> Result<Self> {
        if model.tp.is_some() {
            return Err(Error::Invalid("[train] device = \"cuda\" runs with tp = 1".into()));
        }
        Ok(Self::holding(GpuModel::frozen(Self::open(dtype)?, model)?, None))
    }

    fn holding(model: GpuModel, nccl: Option<Rc<Nccl>>) -> Self {
        CudaEngine { model, nccl, decoder: None, host_stale: false, moments_stale: false }
    }

    pub fn on(gpu: Arc<Gpu>, model: &Model, dp: &dyn Comm) -> Result<Self> {
        if let Some(tp) = &model.tp {
            own_gpus(&gpu, &tp.group, "tensor-parallel")?;
        }
        let nccl = match dp.size() > 1 {
            true => {
                own_gpus(&gpu, dp, "data-parallel")?;
                Some(Rc::new(Nccl::new(&gpu.stream, dp.split(0, dp.rank())?)?))
            }
            false => None,
        };
        Ok(Self::holding(GpuModel::new(gpu, model)?, nccl))
    }

    /// Another trainable model on this GPU, in this engine's data-parallel group.
    pub fn sibling(&self, model: &Model) -> Result<Self> {
        Ok(Self::holding(GpuModel::new(self.model.gpu_arc().clone(), model)?, self.nccl.clone()))
    }

    pub fn frozen(&self, model: &Model) -> Result<Self> {
        Ok(Self::holding(GpuModel::frozen(self.model.gpu_arc().clone(), model)?, None))
    }

    pub fn describe(&self) -> String {
        let mut d = self.model.gpu().describe();
        if let Some(n) = &self.nccl {
            d += &format!(" ({})", n.describe());
        }
        if self.model.tp_size() > 1 {
            d += &format!(", tensor-parallel sums through NCCL over {} GPUs", self.model.tp_size());
        }
        d
    }

    pub fn forward(&mut self, model: &Model, batch: &Batch, ws: &mut Workspace) -> Result<()> {
        // only the host buffers the caller reads (the activations stay on the device)
        let (logp, ent) = self.model.forward(model, batch)?;
        grow(&mut ws.logprobs, logp.len());
        grow(&mut ws.entropy, ent.len());
        ws.logprobs[..logp.len()].copy_from_slice(&logp);
        ws.entropy[..ent.len()].copy_from_slice(&ent);
        Ok(())
    }

    pub fn reduce_grads(&mut self, dp: &dyn Comm) -> Result<()> {
        match &self.nccl {
            Some(n) => self.model.all_reduce_grads(n),
            None if dp.size() > 1 => Err(Error::Invalid("engine: no NCCL group for data parallelism".into())),
            None => Ok(()),
        }
    }

    pub fn step(&mut self, opt: &mut AdamW, lr: f32, max_norm: f32) -> Result<f32> {
        let norm = self.model.adamw_step(opt, lr, max_norm)?;
        if norm.is_finite() {
            self.host_stale = true;
            self.moments_stale = true;
        }
        Ok(norm)
    }

    /// Every rank's part of the weights to every rank (after a sharded optimizer's step).
    pub fn gather_shards(&mut self, dp: &dyn Comm) -> Result<()> {
        match &self.nccl {
            Some(n) => self.model.gather_shards(n),
            None if dp.size() > 1 => Err(Error::Invalid("engine: no NCCL group for data parallelism".into())),
            None => Ok(()),
        }
    }

    pub fn generate(&mut self, model: &Model, requests: &[Request], cfg: &GenerateConfig) -> Result<Vec<Completion>> {
        // the decoder reads the trained weights in place
        decoder(&mut self.decoder, &self.model, model)?.generate(model, self.model.weights(), requests, cfg)
    }

    /// A KV cache of `slots` slots of `max_len` positions on the engine's GPU.
    pub fn kv_cache(&self, model: &Model, slots: usize, max_len: usize) -> Result<GpuKvCache> {
        GpuKvCache::new(self.model.gpu(), model, slots, max_len)
    }

    /// One step of a continuous-batching loop (`rollout::Slots`) on the engine's weights.
    pub fn loop_step(&mut self, model: &Model, step: LoopStep<'_>, cache: &mut GpuKvCache) -> Result<Vec<Sampled>> {
        decoder(&mut self.decoder, &self.model, model)?.loop_step(model, self.model.weights(), step, cache)
    }

    pub fn sync_host(&mut self, model: &mut Model, opt: &mut AdamW) -> Result<()> {
        self.sync_weights(model)?;
        if self.moments_stale {
            let (m, v) = self.model.moments()?;
            (opt.m, opt.v) = (m, v);
            self.moments_stale = false;
        }
        Ok(())
    }

    pub fn sync_weights(&mut self, model: &mut Model) -> Result<()> {
        if self.host_stale {
            model.params.data = self.model.params()?;
            self.host_stale = false;
        }
        Ok(())
    }

    pub fn load_weights(&mut self, model: &Model) -> Result<()> {
        self.model.set_params(&model.params.data)?;
        self.host_stale = false;
        Ok(())
    }

    pub fn load(&mut self, model: &Model, opt: &AdamW) -> Result<()> {
        self.model.set_params(&model.params.data)?;
        self.model.set_moments(&opt.m, &opt.v)?;
        self.host_stale = false;
        self.moments_stale = false;
        Ok(())
    }
}

/// Grow a host vector to at least `n` elements.
fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}
