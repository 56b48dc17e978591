//! The compute engine of one rank (`[train] device`): where the policy's forward, backward,
//! optimizer step and generation run. Both training phases and the RL trainer call it and never
//! the host model directly, so the same loop runs on either device.
//!
//! - **cpu**: the host [`Model`] is the weights; gradients accumulate in a host buffer, all-reduced
//!   over the data-parallel group in buckets, then clipped AdamW on the host (the bits of the
//!   specification).
//! - **cuda**: weights, gradients and AdamW moments live on the rank's GPU (`cuda::placement`:
//!   the node-local rank modulo the visible devices; `cuda::GpuModel`);
//!   gradients are summed over the data-parallel group on the devices (NCCL), clipping and AdamW
//!   run there, and generation decodes from the same device weights, read in place
//!   (`cuda::decode::GpuDecoder`, tokens drawn on the device). Engines that only run
//!   forward passes and generation ([`Engine::inference`]: evaluation, rollout ranks) hold no
//!   gradients or moments. The host model's weights
//!   and the host AdamW moments are refreshed only by [`Engine::sync_host`] (checkpoints, the end
//!   of a phase); the host sees token ids, log-probs, rewards and metrics.

use crate::attention::stats::{SeqStats, SeqSteps, StatsConfig};
use crate::config::{Compute, Device, Dtype};
use crate::error::{Error, Result};
use crate::model::{Batch, Model, Workspace};
use crate::parallel::{all_reduce_buckets, Comm};
use crate::rollout::{generate, Completion, GenerateConfig, Request};
#[cfg(not(feature = "cuda"))]
use crate::train::probe::unusable;
use crate::train::{clip_and_step_model, AdamW};

/// The compute engine of one rank.
pub enum Engine {
    /// On the host; `grads` is the gradient accumulator (sized on first use); `checkpointing`
    /// the mode the engine's forwards put the caller's workspace in.
    Cpu { grads: Vec<f32>, checkpointing: bool },
    /// On the rank's GPU.
    #[cfg(feature = "cuda")]
    Cuda(Box<cuda::CudaEngine>),
}

impl Engine {
    /// The host engine.
    pub fn cpu() -> Engine {
        Engine::Cpu { grads: Vec::new(), checkpointing: false }
    }

    /// Gradient checkpointing (`[train] gradient_checkpointing`, `model::workspace`) for the
    /// forwards and backwards that follow: the workspaces keep each layer's input only and the
    /// backward recomputes the rest (the same gradients, less memory, one more forward of the
    /// layers). Engines made from this one ([`Engine::sibling`], [`Engine::frozen`]) inherit it;
    /// the attention-statistics pass keeps every layer whatever the mode (it reads them).
    pub fn set_checkpointing(&mut self, on: bool) {
        match self {
            Engine::Cpu { checkpointing, .. } => *checkpointing = on,
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.model.set_checkpointing(on),
        }
    }

    /// Whether the engine's passes checkpoint (see [`Engine::set_checkpointing`]).
    pub fn checkpointing(&self) -> bool {
        match self {
            Engine::Cpu { checkpointing, .. } => *checkpointing,
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.model.checkpointing(),
        }
    }

    /// `engine` in this engine's checkpointing mode.
    fn inheriting(&self, mut engine: Engine) -> Engine {
        engine.set_checkpointing(self.checkpointing());
        engine
    }

    /// An engine for `compute` (a [`Device`] alone means f32 products) holding `model`'s weights,
    /// for the data-parallel group `dp` (every rank calls this together): a clear error where CUDA
    /// is unusable.
    pub fn new(compute: impl Into<Compute>, model: &Model, dp: &dyn Comm) -> Result<Engine> {
        let Compute { device, dtype } = compute.into();
        match device {
            Device::Cpu if dtype != Dtype::F32 => Err(Error::Invalid(format!(
                "[train] dtype = \"{}\" needs device = \"cuda\" (the CPU computes in f32)",
                dtype.name()
            ))),
            Device::Cpu => Ok(Engine::cpu()),
            #[cfg(feature = "cuda")]
            Device::Cuda => Ok(Engine::Cuda(Box::new(cuda::CudaEngine::new(model, dp, dtype)?))),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda => {
                let _ = (model, dp);
                Err(unusable("this binary was built without the `cuda` feature"))
            }
        }
    }

    /// An engine for `compute` that runs forward passes and generation only (evaluation, rollout
    /// ranks): [`Engine::new`] without the gradient and moment buffers a GPU would hold for
    /// training (12 bytes per parameter) and without a data-parallel group.
    pub fn inference(compute: impl Into<Compute>, model: &Model) -> Result<Engine> {
        let Compute { device, dtype } = compute.into();
        match device {
            #[cfg(feature = "cuda")]
            Device::Cuda => Ok(Engine::Cuda(Box::new(cuda::CudaEngine::inference(model, dtype)?))),
            _ => Engine::new(Compute { device, dtype }, model, &crate::parallel::Local),
        }
    }

    /// An engine on an open GPU (one process, no data parallelism), e.g. for a benchmark.
    #[cfg(feature = "cuda")]
    pub fn cuda(gpu: std::sync::Arc<crate::cuda::Gpu>, model: &Model) -> Result<Engine> {
        Ok(Engine::Cuda(Box::new(cuda::CudaEngine::on(gpu, model, &crate::parallel::Local)?)))
    }

    /// An engine for another trainable `model` on the same device (a value model) whose
    /// gradients are summed over the same data-parallel group: on GPUs it shares this engine's
    /// NCCL communicator (one per group, however many models train).
    pub fn sibling(&self, model: &Model) -> Result<Engine> {
        let engine = match self {
            Engine::Cpu { .. } => {
                let _ = model;
                Engine::cpu()
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => Engine::Cuda(Box::new(e.sibling(model)?)),
        };
        Ok(self.inheriting(engine))
    }

    /// A forward-only engine on the same device for a frozen `model` (the KL reference).
    pub fn frozen(&self, model: &Model) -> Result<Engine> {
        let engine = match self {
            Engine::Cpu { .. } => {
                let _ = model;
                Engine::cpu()
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => Engine::Cuda(Box::new(e.frozen(model)?)),
        };
        Ok(self.inheriting(engine))
    }

    /// What runs the model, for the log.
    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu { .. } => "cpu".into(),
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.describe(),
        }
    }

    /// MiB of the engine's GPU in use now (every process's, as the driver counts it, with the
    /// memory this process's pool keeps unused; `cuda::pool`); `None` on the CPU or when the
    /// driver cannot say.
    pub fn device_mem_mib(&self) -> Option<f64> {
        match self {
            Engine::Cpu { .. } => None,
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.model.gpu().mem_used().map(|b| b as f64 / (1u64 << 20) as f64),
        }
    }

    /// MiB of this process's GPU buffers at their peak since the last call (the memory pool's
    /// high-water mark; `cuda::pool`), starting a new peak; `None` on the CPU or when the driver
    /// cannot say.
    pub fn take_device_peak_mib(&self) -> Option<f64> {
        match self {
            Engine::Cpu { .. } => None,
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.model.gpu().take_peak_bytes().map(|b| b as f64 / (1u64 << 20) as f64),
        }
    }

    /// Whether the weights live off the host.
    pub fn on_device(&self) -> bool {
        !matches!(self, Engine::Cpu { .. })
    }

    /// Forward: `ws.logprobs[..N]` and `ws.entropy[..N]` hold log p of each target and the entropy
    /// of each row afterwards.
    pub fn forward(&mut self, model: &Model, batch: &Batch, ws: &mut Workspace) -> Result<()> {
        match self {
            Engine::Cpu { checkpointing, .. } => {
                ws.set_checkpointing(*checkpointing);
                model.forward(batch, ws)
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.forward(model, batch, ws),
        }
    }

    /// A value model's forward: the trunk, then the head V = lnf · w + b (`head` = [w | b]) of
    /// every row of `batch`, `[N]`. On the GPU only the N values cross to the host.
    pub fn trunk_values(&mut self, model: &Model, batch: &Batch, ws: &mut Workspace, head: &[f32]) -> Result<Vec<f32>> {
        let c = model.cfg.hidden_size;
        if head.len() != c + 1 {
            return Err(Error::shape(
                "value head",
                format!("{} numbers for a hidden size of {c} (+ bias)", head.len()),
            ));
        }
        let (w, b) = (&head[..c], head[c]);
        match self {
            Engine::Cpu { checkpointing, .. } => {
                ws.set_checkpointing(*checkpointing);
                model.forward_trunk(batch, ws)?;
                Ok(ws.lnf[..batch.len() * c].chunks_exact(c).map(|h| dot(h, w) + b).collect())
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => {
                let _ = ws;
                let mut v = e.model.trunk_values(model, batch, w)?;
                v.iter_mut().for_each(|x| *x += b);
                Ok(v)
            }
        }
    }

    /// A value model's backward after [`Engine::trunk_values`] on the same batch, from
    /// `dv[j]` = ∂L/∂V at row `rows[j]` (in that order; each row at most once): the trunk's gradients ADDED to the engine's
    /// and the head's ADDED to `head_grads` ([∂w | ∂b]). On the GPU only dv and the head's C + 1
    /// gradients cross.
    pub fn accumulate_trunk_head(
        &mut self,
        model: &Model,
        batch: &Batch,
        ws: &mut Workspace,
        head: &[f32],
        (rows, dv): (&[usize], &[f32]),
        head_grads: &mut [f32],
    ) -> Result<()> {
        let (n, c) = (batch.len(), model.cfg.hidden_size);
        let mut seen = vec![false; n];
        let distinct = rows.iter().all(|&i| i < n && !std::mem::replace(&mut seen[i], true));
        if head.len() != c + 1 || head_grads.len() != c + 1 || rows.len() != dv.len() || !distinct {
            return Err(Error::shape(
                "value head backward",
                format!("{} rows of {n} (each at most once), head of {}", rows.len(), head.len()),
            ));
        }
        match self {
            Engine::Cpu { grads, .. } => {
                if grads.len() != model.params.data.len() {
                    return Err(Error::Invalid("engine: accumulate before zero_grads".into()));
                }
                ws.dln[..n * c].fill(0.0);
                for (&i, &d) in rows.iter().zip(dv) {
                    let h = &ws.lnf[i * c..(i + 1) * c];
                    for k in 0..c {
                        head_grads[k] += d * h[k];
                        ws.dln[i * c + k] = d * head[k];
                    }
                    head_grads[c] += d;
                }
                model.backward_trunk(batch, ws, grads)
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => {
                if n == 0 {
                    return Ok(());
                }
                let mut dense = vec![0.0f32; n];
                for (&i, &d) in rows.iter().zip(dv) {
                    dense[i] = d;
                }
                let dw = e.model.backward_trunk_head(model, batch, &head[..c], &dense)?;
                for (g, d) in head_grads.iter_mut().zip(&dw) {
                    *g += d;
                }
                for &d in dv {
                    head_grads[c] += d;
                }
                Ok(())
            }
        }
    }

    /// Set the gradients to zero.
    pub fn zero_grads(&mut self, model: &Model) -> Result<()> {
        match self {
            Engine::Cpu { grads, .. } => {
                grads.clear();
                grads.resize(model.params.data.len(), 0.0);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.model.zero_grads(),
        }
    }

    /// Backward after [`Engine::forward`] on the same batch: gradients ADDED to the engine's
    /// (see [`Model::backward_with_entropy`] for `dlogp` and `dent`).
    pub fn accumulate(
        &mut self,
        model: &Model,
        batch: &Batch,
        dlogp: &[f32],
        dent: Option<&[f32]>,
        ws: &mut Workspace,
    ) -> Result<()> {
        match self {
            Engine::Cpu { grads, .. } => {
                if grads.len() != model.params.data.len() {
                    return Err(Error::Invalid("engine: accumulate before zero_grads".into()));
                }
                model.backward_with_entropy(batch, dlogp, dent, ws, grads)
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => match batch.is_empty() {
                true => Ok(()),
                false => e.model.backward(model, batch, dlogp, dent),
            },
        }
    }

    /// Sum the gradients over the data-parallel group `dp` (every rank calls this together).
    pub fn reduce_grads(&mut self, dp: &dyn Comm, bucket_bytes: usize) -> Result<()> {
        match self {
            Engine::Cpu { grads, .. } => all_reduce_buckets(dp, grads, bucket_bytes).map(|_| ()),
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.reduce_grads(dp),
        }
    }

    /// Clip the gradients to global norm `max_norm` (0 = none) and take one AdamW step at `lr`.
    /// Returns the pre-clip norm; a non-finite norm skips the update (weights, moments and
    /// `opt.t` unchanged). Where `opt` is this rank's shard of the data-parallel group `dp`
    /// ([`AdamW::shard`], `parallel::zero`) it updates its part of the weights, then every rank
    /// gets every part (every rank of `dp` calls this together).
    pub fn step(&mut self, opt: &mut AdamW, model: &mut Model, lr: f32, max_norm: f32, dp: &dyn Comm) -> Result<f32> {
        let n = model.params.data.len();
        let sharded = opt.is_shard(n);
        if sharded && opt.range() != crate::parallel::zero::shard_range(n, dp.rank(), dp.size()) {
            let why = format!("weights {:?} of {n} on rank {} of {}", opt.range(), dp.rank(), dp.size());
            return Err(Error::shape("a sharded optimizer", why));
        }
        let norm = match self {
            Engine::Cpu { grads, .. } => clip_and_step_model(opt, model, grads, lr, max_norm)?,
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.step(opt, lr, max_norm)?,
        };
        // (a non-finite norm skipped the update on every rank alike: nothing to gather)
        if sharded && norm.is_finite() {
            match self {
                Engine::Cpu { .. } => crate::parallel::zero::gather_shards(dp, &mut model.params.data)?,
                #[cfg(feature = "cuda")]
                Engine::Cuda(e) => e.gather_shards(dp)?,
            }
        }
        Ok(norm)
    }

    /// This engine's optimizer updates weights `range` only (`[parallel] shard_optimizer`): on a
    /// GPU its moments shrink to them (call before [`Engine::load`]).
    pub fn shard_optimizer(&mut self, range: std::ops::Range<usize>) -> Result<()> {
        match self {
            Engine::Cpu { .. } => {
                let _ = range;
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.model.shard_moments(range.len()),
        }
    }

    /// The accumulated gradients, where they are on the host (tests and diagnostics).
    pub fn host_grads(&self) -> Option<&[f32]> {
        match self {
            Engine::Cpu { grads, .. } => Some(grads),
            #[cfg(feature = "cuda")]
            Engine::Cuda(_) => None,
        }
    }

    /// The attention-statistics pass (FCI, look-back, WAAD, FAI; `attention::stats`) of `batch`
    /// under the engine's weights: a forward, then the statistics of `cfg` (`ws`: the CPU's
    /// workspace).
    pub fn attention_stats(
        &mut self,
        model: &Model,
        batch: &Batch,
        ws: &mut Workspace,
        steps: &[SeqSteps],
        cfg: &StatsConfig,
    ) -> Result<Vec<SeqStats>> {
        match self {
            Engine::Cpu { .. } => {
                ws.set_checkpointing(false);
                model.forward(batch, ws)?;
                crate::attention::stats::attention_stats(model, batch, ws, steps, cfg)
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => crate::cuda::stats::attention_stats(&mut e.model, model, batch, steps, cfg),
        }
    }

    /// [`Engine::attention_stats`] of sequences `seqs` (tokens, steps), in forwards of at most
    /// `micro` (`rl.micro_batch`, `rl.micro_batch_tokens`). The statistics are per sequence, so
    /// the chunks change nothing but the size the workspace (device memory on a GPU) grows to.
    pub fn attention_stats_chunked(
        &mut self,
        model: &Model,
        ws: &mut Workspace,
        seqs: &[(Vec<u32>, SeqSteps)],
        cfg: &StatsConfig,
        micro: crate::model::micro_batch::MicroBatch,
    ) -> Result<Vec<SeqStats>> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in micro.chunks(seqs, |(tokens, _)| tokens.len()) {
            let mut batch = Batch::new();
            for (tokens, _) in chunk {
                batch.push_lm(tokens, 0)?;
            }
            let steps: Vec<SeqSteps> = chunk.iter().map(|(_, s)| s.clone()).collect();
            out.extend(self.attention_stats(model, &batch, ws, &steps, cfg)?);
        }
        Ok(out)
    }

    /// `rollout::generate` with the engine's current weights (`model` gives the shapes and, on the
    /// CPU, the weights).
    pub fn generate(&mut self, model: &Model, requests: &[Request], cfg: &GenerateConfig) -> Result<Vec<Completion>> {
        match self {
            Engine::Cpu { .. } => generate(model, requests, cfg),
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.generate(model, requests, cfg),
        }
    }

    /// Bring the weights and AdamW moments to the host (`model.params`, `opt.m`, `opt.v`), e.g.
    /// before a checkpoint; nothing to do on the CPU.
    pub fn sync_host(&mut self, model: &mut Model, opt: &mut AdamW) -> Result<()> {
        match self {
            Engine::Cpu { .. } => {
                let _ = (model, opt);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.sync_host(model, opt),
        }
    }

    /// Bring the weights (not the moments) to the host: what an `[async]` trainer publishes to its
    /// rollout ranks after every update.
    pub fn sync_weights(&mut self, model: &mut Model) -> Result<()> {
        match self {
            Engine::Cpu { .. } => {
                let _ = model;
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.sync_weights(model),
        }
    }

    /// New host weights (a rollout rank's install of a published version): copy them to the engine.
    pub fn load_weights(&mut self, model: &Model) -> Result<()> {
        match self {
            Engine::Cpu { .. } => {
                let _ = model;
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.load_weights(model),
        }
    }

    /// The host weights and moments changed (resume): copy them to the engine.
    pub fn load(&mut self, model: &Model, opt: &AdamW) -> Result<()> {
        match self {
            Engine::Cpu { .. } => {
                let _ = (model, opt);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.load(model, opt),
        }
    }
}

/// A value head's product on the host: the plain sum in row order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(feature = "cuda")]
mod cuda;
