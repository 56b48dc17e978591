//! Continuous batching on a rank's engine: the loop of `rollout::slots` kept across batches and
//! weight versions (a disaggregated rollout rank's streaming modes, `train::async_rl`), with its
//! KV cache on the engine's device: the host's cached decode step and sampler, or the GPU
//! decoder reading the engine's device weights in place and drawing tokens there.

use crate::error::Result;
use crate::model::decode::DecodeWeights;
use crate::model::Model;
use crate::rollout::slots::HostStep;
use crate::rollout::{Completion, GenerateConfig, Request, Slots};
use crate::train::engine::Engine;

/// [`Slots`] whose steps run on an [`Engine`]'s device with its current weights.
pub struct EngineSlots {
    /// The host side of the loop: admission, rows, finish rules.
    slots: Slots,
    engine: Engine,
    dev: DevStep,
}

/// Where the steps run.
enum DevStep {
    /// The host: the weights packed for decoding (repacked at every install).
    Cpu(Box<(HostStep, DecodeWeights)>),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::kv_cache::GpuKvCache),
}

impl EngineSlots {
    /// `capacity` slots of `max_len` positions on `engine`'s device, which holds `model`'s
    /// weights.
    pub fn new(engine: Engine, model: &Model, capacity: usize, max_len: usize) -> Result<Self> {
        let (dev, max_rows) = match &engine {
            Engine::Cpu { .. } => (
                DevStep::Cpu(Box::new((HostStep::new(model, capacity, max_len), DecodeWeights::new(model)))),
                crate::rollout::engine::ROWS_PER_STEP,
            ),
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => (DevStep::Cuda(e.kv_cache(model, capacity, max_len)?), crate::cuda::generate::MAX_ROWS),
        };
        Ok(EngineSlots { slots: Slots::new(capacity, max_len, max_rows), engine, dev })
    }

    /// The host model's weights changed (a published version was loaded): the next step decodes
    /// with them. Sequences in flight keep their cache.
    pub fn install(&mut self, model: &Model) -> Result<()> {
        self.engine.load_weights(model)?;
        match &mut self.dev {
            DevStep::Cpu(cpu) => cpu.1 = DecodeWeights::new(model),
            // the decoder reads the engine's weights in place
            #[cfg(feature = "cuda")]
            DevStep::Cuda(_) => {}
        }
        Ok(())
    }

    /// Whether a slot is free ([`Slots::has_free`]).
    pub fn has_free(&self) -> bool {
        self.slots.has_free()
    }

    /// Sequences in the slots.
    pub fn busy(&self) -> usize {
        self.slots.busy()
    }

    /// Cache slots.
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Put request `r` into a free slot ([`Slots::admit`]).
    pub fn admit(&mut self, key: usize, r: &Request, stream_step: u64, cfg: &GenerateConfig) -> Option<Completion> {
        self.slots.admit(key, r, stream_step, cfg)
    }

    /// One step of every sequence in the slots ([`Slots::step`]); the finished ones with their keys.
    pub fn step(&mut self, model: &Model, cfg: &GenerateConfig) -> Result<Vec<(usize, Completion)>> {
        match (&mut self.dev, &mut self.engine) {
            (DevStep::Cpu(cpu), _) => {
                let (host, weights) = &mut **cpu;
                self.slots.step(cfg, |s| host.run(model, weights, s))
            }
            #[cfg(feature = "cuda")]
            (DevStep::Cuda(cache), Engine::Cuda(e)) => self.slots.step(cfg, |s| e.loop_step(model, s, cache)),
            #[cfg(feature = "cuda")]
            (DevStep::Cuda(_), Engine::Cpu { .. }) => unreachable!("a device KV cache is made for a device engine"),
        }
    }
}
