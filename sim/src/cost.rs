//! Analytical cost model (first principles; constants calibrated on the synchronous baseline).
//!
//! * decode step of a worker with `n` sequences holding `kv` cached tokens:
//!   `t = overhead + (2N + kv · kv_bytes_per_token) / (tp · hbm_bw · bandwidth_efficiency)` (memory bound);
//! * prefill of `c` tokens: `2 · N · c / (tp · peak · prefill_mfu)` (compute bound);
//! * training on `tokens`: `6 · N · tokens / (gpus · peak · mfu) + update_overhead`;
//! * weight sync: `2N bytes / bandwidth + sync_overhead` (bf16 weights).

use crate::scenario::{Placement, Scenario};

/// Per-run constants derived from a scenario and a GPU split.
#[derive(Clone, Debug)]
pub struct CostModel {
    /// Decode step: constant part, s (overhead + weight read).
    pub step_base_s: f64,
    /// Decode step: seconds per cached token read.
    pub step_per_kv_token_s: f64,
    /// Prefill seconds per prompt token on one worker.
    pub prefill_per_token_s: f64,
    /// Training seconds per token on the training GPUs.
    pub train_per_token_s: f64,
    /// Fixed seconds per update.
    pub update_overhead_s: f64,
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

impl CostModel {
    /// Derive the constants for `placement` with `train_fraction` of GPUs training when disaggregated.
    pub fn new(sc: &Scenario, placement: Placement, train_fraction: f64) -> CostModel {
        let h = &sc.hardware;
        let inf = &sc.inference;
        let n_params = sc.model.params_b * 1e9;
        let weight_bytes = 2.0 * n_params;
        let tp = inf.tp;
        let (infer_gpus, train_gpus) = match placement {
            Placement::Colocated => (h.gpus, h.gpus),
            Placement::Disaggregated => {
                let train =
                    ((h.gpus as f64 * train_fraction).round() as u32).clamp(1, h.gpus.saturating_sub(tp).max(1));
                (h.gpus - train.min(h.gpus - 1), train)
            }
        };
        let workers = (infer_gpus / tp).max(1);
        let bw = tp as f64 * h.hbm_tb_per_s * 1e12 * inf.bandwidth_efficiency;
        let flops = h.peak_tflops * 1e12;
        let sync_bw = match placement {
            Placement::Colocated => h.intra_node_gb_per_s,
            Placement::Disaggregated => h.link_gb_per_s,
        } * 1e9;
        CostModel {
            step_base_s: inf.decode_overhead_ms * 1e-3 + weight_bytes / bw,
            step_per_kv_token_s: sc.model.kv_bytes_per_token / bw,
            prefill_per_token_s: 2.0 * n_params / (tp as f64 * flops * inf.prefill_mfu),
            train_per_token_s: 6.0 * n_params / (train_gpus as f64 * flops * sc.training.mfu),
            update_overhead_s: sc.training.update_overhead_s,
            sync_s: weight_bytes / sync_bw + sc.training.sync_overhead_s,
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
        m * self.step_base_s + self.step_per_kv_token_s * (m * kv + n * m * (m - 1.0) * 0.5)
    }

    /// Largest `m` with `T(m) <= dt_s` (solves the quadratic, then fixes rounding; at most 8 corrections).
    pub fn steps_within(&self, dt_s: f64, n: u64, kv: u64) -> u64 {
        if dt_s <= 0.0 {
            return 0;
        }
        let a = self.step_per_kv_token_s * n as f64 * 0.5;
        let b = self.step_base_s + self.step_per_kv_token_s * (kv as f64 - n as f64 * 0.5);
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
}
