//! The decode step model.
//!
//! One decode step of a worker (a TP group of `tp` GPUs) with `n` sequences holding `kv` cached
//! tokens costs
//!
//! ```text
//! t(n, kv) = a(n) + b · kv
//! a(n)     = overhead + n · per_seq + max(2N bytes / (tp · hbm · eff), n · 2N FLOPs / (tp · peak · decode_mfu))
//!            + [tp > 1] · 2 · layers · (allreduce_latency + n · hidden · 2 B · 2(tp − 1)/tp / allreduce_bw)
//! b        = kv_bytes_per_token / (tp · hbm · eff) + 4 · hidden · layers FLOPs / (tp · peak · attention_eff)
//! ```
//!
//! The weight read and the GEMMs of the linear layers overlap (a roofline: the larger wins); the
//! per-sequence scheduler work, the TP all-reduces (two per layer) and the KV-cache read plus the
//! attention arithmetic add. `hidden` is derived from the parameter count as `sqrt(N / (12 · layers))`.
//! Without a hardware profile the terms that need engine constants default to zero (per-sequence
//! overhead, all-reduce latency) or are left out (decode compute, attention compute), which is the
//! purely memory-bound model `overhead + (2N + kv · kv_bytes) / (tp · hbm · eff)`.
//!
//! `n` is constant between two changes of a worker's batch and `kv` grows by `n` per step, so `m`
//! steps still take `m · a(n) + b · (m · kv + n · m(m − 1)/2)` (see [`crate::cost::CostModel`]).

use crate::scenario::Scenario;

/// Hidden size: `model.hidden`, else `sqrt(N / (12 · layers))` (0 without `model.layers`).
pub fn hidden(sc: &Scenario) -> f64 {
    match (sc.model.hidden, sc.model.layers) {
        (Some(h), _) => h as f64,
        (None, Some(l)) if l > 0 => (sc.model.params_b * 1e9 / (12.0 * l as f64)).sqrt(),
        _ => 0.0,
    }
}

/// Decode-step constants of one worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeModel {
    /// Constant part of `a(n)`, s (engine overhead, all-reduce latency).
    pub fixed_s: f64,
    /// Seconds per sequence in `a(n)` (scheduler work, all-reduce volume).
    pub per_seq_s: f64,
    /// Weight read per step, s.
    pub weight_s: f64,
    /// Linear-layer compute per sequence per step, s (0: not modelled).
    pub compute_per_seq_s: f64,
    /// Seconds per cached token per step (`b`).
    pub per_kv_token_s: f64,
    /// True when `a` depends on `n` (any per-sequence term is non-zero).
    pub per_n: bool,
}

impl DecodeModel {
    /// Constants for a worker of `sc.inference.tp` GPUs.
    pub fn new(sc: &Scenario) -> DecodeModel {
        let h = &sc.hardware;
        let inf = &sc.inference;
        let n_params = sc.model.params_b * 1e9;
        let tp = inf.tp as f64;
        let bw = tp * h.hbm_tb_per_s * 1e12 * inf.bandwidth_efficiency;
        let peak = tp * h.peak_tflops * 1e12;
        let layers = sc.model.layers.unwrap_or(0) as f64;
        let hidden = hidden(sc);
        let (ar_fixed, ar_per_seq) = if inf.tp > 1 && layers > 0.0 {
            let per_seq = hidden * 2.0 * 2.0 * (tp - 1.0) / tp / (h.allreduce_gb_per_s * 1e9);
            (2.0 * layers * inf.allreduce_latency_us * 1e-6, 2.0 * layers * per_seq)
        } else {
            (0.0, 0.0)
        };
        let compute_per_seq_s = inf.decode_mfu.map_or(0.0, |m| 2.0 * n_params / (peak * m));
        let attention = match inf.attention_efficiency {
            Some(e) if layers > 0.0 => 4.0 * hidden * layers / (peak * e),
            _ => 0.0,
        };
        let per_seq_s = inf.per_seq_overhead_us * 1e-6 + ar_per_seq;
        DecodeModel {
            fixed_s: inf.decode_overhead_ms * 1e-3 + ar_fixed,
            per_seq_s,
            weight_s: 2.0 * n_params / bw,
            compute_per_seq_s,
            per_kv_token_s: sc.model.kv_bytes_per_token / bw + attention,
            per_n: per_seq_s > 0.0 || compute_per_seq_s > 0.0,
        }
    }

    /// `a(n)`: the part of a step that does not depend on the cached tokens.
    #[inline]
    pub fn base_s(&self, n: f64) -> f64 {
        self.fixed_s + self.per_seq_s * n + self.weight_s.max(self.compute_per_seq_s * n)
    }

    /// One step with `n` sequences holding `kv` cached tokens, s.
    pub fn step_s(&self, n: f64, kv: f64) -> f64 {
        self.base_s(n) + self.per_kv_token_s * kv
    }
}
