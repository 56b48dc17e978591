//! Where the supervised phase's forward and backward run (`[train] device`). The host model stays
//! the source of truth (optimizer, checkpoints, evaluation, gradient all-reduce); on "cuda" a copy
//! of the weights lives on the GPU, the forward/backward run there with arbor's kernels, the
//! gradients come back for the all-reduce and the optimizer, and the updated weights go back.

use crate::config::Device;
use crate::error::Result;
use crate::model::{Batch, Model, Workspace};
use crate::parallel::Comm;

/// The compute engine of one rank.
pub enum Engine {
    Cpu,
    /// The model on GPU 0, with a NCCL communicator over the data-parallel group when it has more
    /// than one rank (gradients are then summed on the devices before they come back).
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::cuda::GpuModel>, Option<crate::cuda::nccl::Nccl>),
}

impl Engine {
    /// An engine for `device` holding `model`'s weights, for the data-parallel group `dp` (every
    /// rank calls this together): a clear error where CUDA is unusable.
    pub fn new(device: Device, model: &Model, dp: &dyn Comm) -> Result<Engine> {
        match device {
            Device::Cpu => Ok(Engine::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda => {
                let gpu = std::sync::Arc::new(crate::cuda::Gpu::new(0)?);
                let nccl = if dp.size() > 1 {
                    Some(crate::cuda::nccl::Nccl::new(&gpu, dp.split(0, dp.rank())?)?)
                } else {
                    None
                };
                Ok(Engine::Cuda(Box::new(crate::cuda::GpuModel::new(gpu, model)?), nccl))
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda => {
                let _ = (model, dp);
                Err(crate::error::Error::Invalid("[train] device = \"cuda\": built without the `cuda` feature".into()))
            }
        }
    }

    /// What runs the model, for the log.
    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu => "cpu".into(),
            #[cfg(feature = "cuda")]
            Engine::Cuda(g, nccl) => match nccl {
                Some(n) => format!("{} ({})", g.gpu().describe(), n.describe()),
                None => g.gpu().describe(),
            },
        }
    }

    /// Forward: `ws.logprobs[..N]` holds log p of each target afterwards.
    pub fn forward(&mut self, model: &Model, batch: &Batch, ws: &mut Workspace) -> Result<()> {
        match self {
            Engine::Cpu => model.forward(batch, ws),
            #[cfg(feature = "cuda")]
            Engine::Cuda(g, _) => {
                let (logp, ent) = g.forward(model, batch)?;
                ws.ensure(&model.cfg, batch.len());
                ws.logprobs[..logp.len()].copy_from_slice(&logp);
                ws.entropy[..ent.len()].copy_from_slice(&ent);
                Ok(())
            }
        }
    }

    /// Whether [`Engine::backward`] returns gradients already summed over the data-parallel group.
    pub fn reduces_gradients(&self) -> bool {
        match self {
            Engine::Cpu => false,
            #[cfg(feature = "cuda")]
            Engine::Cuda(_, nccl) => nccl.is_some(),
        }
    }

    /// Backward after `forward` on the same batch: gradients ADDED into `grads` (host); summed over
    /// the data-parallel group first when [`Engine::reduces_gradients`].
    pub fn backward(
        &mut self,
        model: &Model,
        batch: &Batch,
        dlogp: &[f32],
        ws: &mut Workspace,
        grads: &mut [f32],
    ) -> Result<()> {
        match self {
            Engine::Cpu => model.backward(batch, dlogp, ws, grads),
            #[cfg(feature = "cuda")]
            Engine::Cuda(g, nccl) => {
                let _ = ws;
                g.zero_grads()?;
                if !batch.is_empty() {
                    g.backward(model, batch, dlogp, None)?;
                }
                if let Some(n) = nccl {
                    g.all_reduce_grads(n)?;
                }
                let d = g.grads()?;
                grads.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
                Ok(())
            }
        }
    }

    /// The host weights changed (optimizer step, resume): refresh the device copy.
    pub fn weights_changed(&mut self, model: &Model) -> Result<()> {
        match self {
            Engine::Cpu => {
                let _ = model;
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(g, _) => g.set_params(&model.params.data),
        }
    }
}
