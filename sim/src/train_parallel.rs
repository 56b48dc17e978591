//! Trainer model parallelism: tensor-parallel all-reduces per layer and the pipeline bubble.
//!
//! A data-parallel trainer holds a whole model replica per GPU. A model whose bf16 weights and
//! gradients (`4N` bytes, Megatron-style with the optimizer state sharded over data parallelism)
//! take more than half of a GPU's memory (the other half holds the activations of long samples)
//! is split over `tp` GPUs of a node by tensor parallelism, and over `pp` pipeline stages when one
//! node is not enough. `training.tp` / `training.pp` set the degrees explicitly; otherwise:
//!
//! ```text
//! tp = smallest power of two with 4N / tp <= hbm_gb / 2, at most hardware.gpus_per_node (8)
//! pp = ceil(4N / (tp · hbm_gb / 2)) when tp alone is not enough, else 1
//! ```
//!
//! Costs (added to the trainer's per-token time, on `G` training GPUs; only for policies with
//! `phases`, the derived training cost):
//!
//! ```text
//! all-reduce per token  = passes · layers · tp / G · hidden · 2 B · 2(tp − 1)/tp / allreduce_gb_per_s
//! latency per step      = passes · layers · micro_batches · allreduce_latency_us
//! pipeline bubble       = compute · (pp − 1) / micro_batches   (bubble share (pp − 1)/(m + pp − 1))
//! ```
//!
//! `passes` counts the all-reduces per layer: Megatron's tensor parallelism all-reduces twice per
//! layer in a forward pass (after attention and after the MLP) and twice in the backward pass, so the
//! training pass is 4 and every further forward pass (π_old, reference, activation recompute) 2.
//! `micro_batches` (`training.micro_batches`, default 4 · pp, the usual m ≥ 4·pp rule) is the number
//! of micro-batches a pipeline replica runs per step.

use crate::scenario::Scenario;

/// The trainer's model-parallel layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainParallel {
    pub tp: u32,
    pub pp: u32,
    pub micro_batches: u32,
}

/// Share of a GPU's memory the trainer may fill with resident bf16 weights and gradients.
pub const RESIDENT_SHARE: f64 = 0.5;
/// Resident bytes per parameter per model-parallel rank: bf16 weights and bf16 gradients.
pub const RESIDENT_BYTES_PER_PARAM: f64 = 4.0;

impl TrainParallel {
    /// The layout of `sc`'s trainer (explicit keys win; otherwise derived from the model size and
    /// `hardware.hbm_gb`).
    pub fn of(sc: &Scenario) -> TrainParallel {
        let t = &sc.training;
        let need = RESIDENT_BYTES_PER_PARAM * sc.model.params_b * 1e9;
        let room = RESIDENT_SHARE * sc.hardware.hbm_gb * 1e9;
        let node = sc.hardware.gpus_per_node.unwrap_or(8).max(1);
        let tp = t.tp.unwrap_or_else(|| {
            let mut tp = 1u32;
            while need / tp as f64 > room && tp * 2 <= node {
                tp *= 2;
            }
            tp
        });
        let pp = t.pp.unwrap_or_else(|| ((need / (tp as f64 * room)).ceil() as u32).max(1));
        let micro_batches = t.micro_batches.unwrap_or(4 * pp);
        TrainParallel { tp, pp, micro_batches }
    }

    /// True for a plain data-parallel trainer (no extra cost).
    pub fn is_data_parallel(&self) -> bool {
        self.tp == 1 && self.pp == 1
    }

    /// Pipeline bubble share of a step, `(pp − 1) / (m + pp − 1)`.
    pub fn bubble_share(&self) -> f64 {
        (self.pp - 1) as f64 / (self.micro_batches + self.pp - 1) as f64
    }

    /// Factor on the compute time: `(m + pp − 1) / m` (ideal time / (1 − bubble share)).
    pub fn bubble_factor(&self) -> f64 {
        (self.micro_batches + self.pp - 1) as f64 / self.micro_batches as f64
    }

    /// Seconds per trained token (over all `train_gpus`) of the tensor-parallel all-reduces, for
    /// `passes` all-reduces per layer per token.
    pub fn allreduce_per_token_s(&self, sc: &Scenario, passes: f64, train_gpus: u32) -> f64 {
        if self.tp <= 1 {
            return 0.0;
        }
        let layers = sc.model.layers.unwrap_or(0) as f64;
        let tp = self.tp as f64;
        let bytes = crate::decode::hidden(sc) * 2.0 * 2.0 * (tp - 1.0) / tp;
        passes * layers * tp / train_gpus.max(1) as f64 * bytes / (sc.hardware.allreduce_gb_per_s * 1e9)
    }

    /// Fixed all-reduce latency per step, s.
    pub fn allreduce_latency_s(&self, sc: &Scenario, passes: f64) -> f64 {
        if self.tp <= 1 {
            return 0.0;
        }
        let layers = sc.model.layers.unwrap_or(0) as f64;
        passes * layers * self.micro_batches as f64 * sc.inference.allreduce_latency_us * 1e-6
    }
}
