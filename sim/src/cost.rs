//! Analytical cost model (first principles; constants from a hardware profile or the scenario).
//!
//! * decode step of a worker with `n` sequences holding `kv` cached tokens: `a(n) + b · kv`
//!   ([`crate::decode`]);
//! * prefill of `c` tokens: `2 · N · c / (tp · peak · prefill_mfu)` (compute bound);
//! * training step and weight sync: per policy ([`crate::policy_cost`]).

use crate::decode::DecodeModel;
use crate::policy_cost::TrainCost;
use crate::scenario::{Placement, Policy, Scenario};

/// Per-run constants derived from a scenario and a GPU split.
#[derive(Clone, Debug)]
pub struct CostModel {
    /// Decode step: constant part, s (overhead + weight read), when it does not depend on `n`.
    pub step_base_s: f64,
    /// The decode-step model (`a(n)` when `decode.per_n`).
    pub decode: DecodeModel,
    /// Decode step: seconds per cached token read.
    pub step_per_kv_token_s: f64,
    /// Prefill seconds per prompt token on one worker.
    pub prefill_per_token_s: f64,
    /// Training seconds per token on the training GPUs (all per-token phases of the policy).
    pub train_per_token_s: f64,
    /// Fixed seconds per update (update overhead and the policy's fixed phases).
    pub update_overhead_s: f64,
    /// The policy's training-side costs, per phase.
    pub train: TrainCost,
    /// Weight synchronisation, s.
    pub sync_s: f64,
    /// Inference workers (each `tp` GPUs).
    pub workers: u32,
    /// GPUs per worker.
    pub tp: u32,
    /// GPUs that train.
    pub train_gpus: u32,
    /// KV-cache capacity of one worker, tokens (`u64::MAX` when unlimited).
    pub kv_capacity: u64,
}

/// GPUs that generate and GPUs that train, `(inference, training)`, for `placement` with
/// `train_fraction` of the GPUs training when disaggregated (rounded, then whole nodes when the job
/// spans two or more). A disaggregated split of `hardware.gpus` GPUs gives the trainer at least one
/// GPU; the scenario check refuses one where fewer than `inference.tp` GPUs are left to generate.
pub fn split_gpus(sc: &Scenario, placement: Placement, train_fraction: f64) -> (u32, u32) {
    let h = &sc.hardware;
    let tp = sc.inference.tp;
    match placement {
        Placement::Colocated => (h.gpus, h.gpus),
        Placement::Disaggregated => {
            let mut train =
                ((h.gpus as f64 * train_fraction).round() as u32).clamp(1, h.gpus.saturating_sub(tp).max(1));
            if let Some(per) = h.gpus_per_node.filter(|&p| p > 0 && h.gpus >= 2 * p) {
                // Whole nodes for the trainer (at least one node, at least one node left to generate).
                let nodes = h.gpus / per;
                let k = ((train as f64 / per as f64).round() as u32).clamp(1, nodes - 1);
                train = k * per;
            }
            (h.gpus.saturating_sub(train), train)
        }
    }
}

impl CostModel {
    /// Derive the constants for `placement` with `train_fraction` of GPUs training when disaggregated.
    pub fn new(sc: &Scenario, pol: &Policy, train_fraction: f64) -> CostModel {
        let placement = pol.placement;
        let h = &sc.hardware;
        let inf = &sc.inference;
        let n_params = sc.model.params_b * 1e9;
        let tp = inf.tp;
        let (infer_gpus, train_gpus) = split_gpus(sc, placement, train_fraction);
        // The scenario check refuses a split that leaves fewer than `tp` GPUs to generate.
        let workers = (infer_gpus / tp).max(1);
        let flops = h.peak_tflops * 1e12;
        let decode = DecodeModel::new(sc);
        let train = TrainCost::new(sc, pol, placement, train_gpus);
        CostModel {
            step_base_s: decode.fixed_s + decode.weight_s,
            decode,
            step_per_kv_token_s: decode.per_kv_token_s,
            prefill_per_token_s: 2.0 * n_params / (tp as f64 * flops * inf.prefill_mfu),
            train_per_token_s: train.per_token_s,
            update_overhead_s: train.fixed_s,
            sync_s: train.sync_s,
            train,
            workers,
            tp,
            train_gpus,
            kv_capacity: {
                let c = sc.kv_capacity_tokens();
                if c.is_finite() {
                    c.max(1.0) as u64
                } else {
                    u64::MAX
                }
            },
        }
    }

    /// Time of `m` decode steps starting with `n` sequences holding `kv` tokens (kv grows by n per step):
    /// `T(m) = m·a + b·(m·kv + n·m(m−1)/2)`.
    #[inline]
    pub fn steps_time_s(&self, m: u64, n: u64, kv: u64) -> f64 {
        // Counts stay far below 2^63, and i64 → f64 is one instruction on x86-64 (u64 → f64 is not).
        let (m, n, kv) = (m as i64 as f64, n as i64 as f64, kv as i64 as f64);
        m * self.base_s(n) + self.step_per_kv_token_s * (m * kv + n * m * (m - 1.0) * 0.5)
    }

    /// `a(n)`, the part of a decode step that does not grow with the cached tokens.
    #[inline]
    pub fn base_s(&self, n: f64) -> f64 {
        if self.decode.per_n {
            self.decode.base_s(n)
        } else {
            self.step_base_s
        }
    }

    /// Largest `m` with `T(m) <= dt_s` (solves the quadratic, then fixes rounding; at most 8 corrections).
    pub fn steps_within(&self, dt_s: f64, n: u64, kv: u64) -> u64 {
        if dt_s <= 0.0 {
            return 0;
        }
        let a = self.step_per_kv_token_s * n as f64 * 0.5;
        let b = self.base_s(n as i64 as f64) + self.step_per_kv_token_s * (kv as f64 - n as f64 * 0.5);
        let guess = if a > 0.0 { (-b + (b * b + 4.0 * a * dt_s).sqrt()) / (2.0 * a) } else { dt_s / b };
        let mut m = if guess.is_finite() && guess > 0.0 { guess.floor() as u64 } else { 0 };
        for _ in 0..8 {
            if self.steps_time_s(m + 1, n, kv) <= dt_s {
                m += 1;
            } else if m > 0 && self.steps_time_s(m, n, kv) > dt_s {
                m -= 1;
            } else {
                break;
            }
        }
        m
    }

    /// Training time of one update over `tokens`.
    pub fn train_s(&self, tokens: u64) -> f64 {
        self.train_per_token_s * tokens as f64 + self.update_overhead_s
    }

    /// Training time of one mini-batch of a streamed step over `tokens` whose samples' squared
    /// lengths sum to `sq_tokens` (causal attention); the step's fixed costs are paid once, with its
    /// last mini-batch.
    pub fn train_part_s(&self, tokens: u64, sq_tokens: f64, last: bool) -> f64 {
        let attn = self.train.per_sq_token_s * sq_tokens;
        if last {
            self.train_s(tokens) + attn
        } else {
            self.train_per_token_s * tokens as f64 + attn
        }
    }
}
