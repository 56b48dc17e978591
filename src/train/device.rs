//! Where the supervised phase's forward and backward run (`[train] device`). The host model stays
//! the source of truth (optimizer, checkpoints, evaluation, gradient all-reduce); on "cuda" a copy
//! of the weights lives on the GPU, the forward/backward run there with arbor's kernels, the
//! gradients come back for the all-reduce and the optimizer, and the updated weights go back.

use crate::config::Device;
use crate::error::Result;
use crate::model::{Batch, Model, Workspace};

/// The compute engine of one rank.
pub enum Engine {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::cuda::GpuModel>),
}

impl Engine {
    /// An engine for `device` holding `model`'s weights: a clear error where CUDA is unusable.
    pub fn new(device: Device, model: &Model) -> Result<Engine> {
        match device {
            Device::Cpu => Ok(Engine::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda => {
                let gpu = std::sync::Arc::new(crate::cuda::Gpu::new(0)?);
                Ok(Engine::Cuda(Box::new(crate::cuda::GpuModel::new(gpu, model)?)))
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda => {
                let _ = model;
                Err(crate::error::Error::Invalid("[train] device = \"cuda\": built without the `cuda` feature".into()))
            }
        }
    }

    /// What runs the model, for the log.
    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu => "cpu".into(),
            #[cfg(feature = "cuda")]
            Engine::Cuda(g) => g.gpu().describe(),
        }
    }

    /// Forward: `ws.logprobs[..N]` holds log p of each target afterwards.
    pub fn forward(&mut self, model: &Model, batch: &Batch, ws: &mut Workspace) -> Result<()> {
        match self {
            Engine::Cpu => model.forward(batch, ws),
            #[cfg(feature = "cuda")]
            Engine::Cuda(g) => {
                let (logp, ent) = g.forward(model, batch)?;
                ws.ensure(&model.cfg, batch.len());
                ws.logprobs[..logp.len()].copy_from_slice(&logp);
                ws.entropy[..ent.len()].copy_from_slice(&ent);
                Ok(())
            }
        }
    }

    /// Backward after `forward` on the same batch: gradients ADDED into `grads` (host).
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
            Engine::Cuda(g) => {
                let _ = ws;
                g.zero_grads()?;
                g.backward(model, batch, dlogp, None)?;
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
            Engine::Cuda(g) => g.set_params(&model.params.data),
        }
    }
}
