//! Per-policy measurements: step times, throughput, busy fractions, staleness, time split.

use crate::event::{s_from_ns, TimeNs};
use serde::Serialize;

/// One engine event: (time, worker, prompt id, sample index, what: 0 admitted, 1 preempted, 2 turn generated).
pub type EngineLogEntry = (TimeNs, u32, u64, u32, u8);

/// Raw counters filled while a policy runs.
#[derive(Default, Debug, Clone)]
pub struct Metrics {
    /// Time at which each training step finished.
    pub step_end_ns: Vec<TimeNs>,
    /// Samples consumed by training.
    pub consumed_samples: u64,
    /// Response tokens of consumed samples.
    pub consumed_response_tokens: u64,
    /// Tokens trained on (prompt + responses + observations).
    pub trained_tokens: u64,
    /// Samples aborted (tail batching, redundancy, staleness, fail-stop restarts count separately).
    pub aborted_samples: u64,
    /// Tokens decoded by aborted samples (wasted work).
    pub aborted_tokens: u64,
    /// Trajectories restarted after an environment crash.
    pub restarts: u64,
    /// Samples paused at a cutoff (partial rollout).
    pub paused_samples: u64,
    /// Sequences preempted on a full KV cache (each recomputes its context when readmitted).
    pub preemptions: u64,
    /// Context tokens recomputed (prefilled again) because of KV-cache preemption.
    pub recomputed_tokens: u64,
    /// Histogram of staleness (training step − start version) over consumed samples.
    pub staleness_hist: Vec<u64>,
    /// Inference GPU busy changes (time, +/- GPUs), in time order.
    pub infer_busy: Vec<(TimeNs, i32)>,
    /// Training intervals (start, end).
    pub train_intervals: Vec<(TimeNs, TimeNs)>,
    /// Synchronous mode: time from step start to the batch cutoff, summed, s.
    pub gen_phase_s: f64,
    /// Synchronous mode: time waiting for batched rewards, summed, s.
    pub reward_phase_s: f64,
    /// Weight synchronisation time, summed, s.
    pub sync_phase_s: f64,
    /// Ledger of (prompt id, attempt, what) when tracking is on: 0 launch, 1 abort, 2 consume.
    pub ledger: Option<Vec<(u64, u32, u8)>>,
    /// Engine log when tracking is on: (time, worker, prompt id, sample index, what) with what
    /// 0 admitted, 1 preempted, 2 turn generated.
    pub engine_log: Option<Vec<EngineLogEntry>>,
    /// Maximum staleness observed.
    pub staleness_max: u32,
    /// Long rounds run (tail batching with long rounds).
    pub long_rounds: u64,
    /// Mini-batches trained before the last one of their step (streaming training).
    pub mini_batches: u64,
}

impl Metrics {
    /// Record staleness of one consumed sample.
    pub fn staleness(&mut self, s: u32) {
        let i = s as usize;
        if self.staleness_hist.len() <= i {
            self.staleness_hist.resize(i + 1, 0);
        }
        self.staleness_hist[i] += 1;
        self.staleness_max = self.staleness_max.max(s);
    }
}

/// Summary of one policy run (what tables, JSON and plots show).
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    pub seed: u64,
    pub gpus: u32,
    pub inference_workers: u32,
    pub train_gpus: u32,
    pub train_fraction: Option<f64>,
    pub steps: u32,
    pub makespan_s: f64,
    /// Mean step time after warmup, s.
    pub step_time_s_mean: f64,
    pub step_times_s: Vec<f64>,
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
    pub staleness_mean: f64,
    pub staleness_max: u32,
    pub staleness_hist: Vec<u64>,
    pub aborted_samples: u64,
    pub aborted_tokens: u64,
    pub restarts: u64,
    pub paused_samples: u64,
    pub preemptions: u64,
    pub recomputed_tokens: u64,
    /// Fraction of inference GPU-time busy over the run.
    pub inference_busy_fraction: f64,
    /// Fraction of all GPU-time spent generating / training / idle.
    pub time_split: TimeSplit,
    /// GPU busy fraction (all GPUs) in 50 equal time buckets.
    pub busy_timeline: Vec<f64>,
    pub events: u64,
    pub trace_hash: String,
    pub wall_s: f64,
}

/// Where GPU-time goes.
#[derive(Debug, Clone, Serialize)]
pub struct TimeSplit {
    pub generate: f64,
    pub train: f64,
    pub idle: f64,
    /// Synchronous modes: share of wall time in the generation phase, batched reward and weight sync.
    pub gen_phase: f64,
    pub reward_phase: f64,
    pub sync_phase: f64,
}

/// Inputs to [`summarize`] that are not counters.
pub struct RunInfo<'a> {
    pub policy: &'a str,
    pub seed: u64,
    pub gpus: u32,
    pub workers: u32,
    pub tp: u32,
    pub train_gpus: u32,
    pub colocated: bool,
    pub train_fraction: Option<f64>,
    pub warmup_steps: u32,
    pub events: u64,
    pub trace_hash: u64,
    pub wall_s: f64,
}

/// Turn raw counters into a [`PolicyResult`].
pub fn summarize(m: &Metrics, info: RunInfo) -> PolicyResult {
    let end = m.step_end_ns.last().copied().unwrap_or(0);
    let makespan_s = s_from_ns(end).max(1e-12);
    let mut prev = 0;
    let step_times_s: Vec<f64> = m
        .step_end_ns
        .iter()
        .map(|&t| {
            let d = s_from_ns(t - prev);
            prev = t;
            d
        })
        .collect();
    let w = (info.warmup_steps as usize).min(step_times_s.len().saturating_sub(1));
    let t0 = if w == 0 { 0 } else { m.step_end_ns[w - 1] };
    let step_time_s_mean = s_from_ns(end - t0) / (step_times_s.len() - w).max(1) as f64;
    let steps = m.step_end_ns.len().max(1) as f64;
    let per_step_samples = m.consumed_samples as f64 / steps;
    let per_step_tokens = m.consumed_response_tokens as f64 / steps;
    let n: u64 = m.staleness_hist.iter().sum();
    let staleness_mean =
        m.staleness_hist.iter().enumerate().map(|(i, &c)| i as f64 * c as f64).sum::<f64>() / n.max(1) as f64;
    // Busy GPU-time integrals and timeline.
    let buckets = 50usize;
    let mut timeline = vec![0.0f64; buckets];
    let bucket_ns = (end / buckets as u64).max(1);
    let mut add_interval = |a: TimeNs, b: TimeNs, gpus: f64, acc: &mut f64| {
        let (a, b) = (a.min(end), b.min(end));
        if b <= a {
            return;
        }
        *acc += s_from_ns(b - a) * gpus;
        let mut t = a;
        let mut guard = 0;
        while t < b && guard < buckets + 2 {
            let k = ((t / bucket_ns) as usize).min(buckets - 1);
            let edge = if k == buckets - 1 { b } else { ((k as u64 + 1) * bucket_ns).min(b) };
            timeline[k] += (edge - t) as f64 * gpus;
            t = edge;
            guard += 1;
        }
    };
    let mut gen_gpu_s = 0.0;
    let mut level = 0i64;
    let mut last = 0;
    for &(t, d) in &m.infer_busy {
        if level > 0 {
            add_interval(last, t, level as f64, &mut gen_gpu_s);
        }
        level += d as i64;
        last = t;
    }
    if level > 0 {
        add_interval(last, end, level as f64, &mut gen_gpu_s);
    }
    let mut train_gpu_s = 0.0;
    for &(a, b) in &m.train_intervals {
        add_interval(a, b, info.train_gpus as f64, &mut train_gpu_s);
    }
    let total_gpu_s = info.gpus as f64 * makespan_s;
    for (k, v) in timeline.iter_mut().enumerate() {
        let width = if k == buckets - 1 { end - bucket_ns * (buckets as u64 - 1) } else { bucket_ns };
        *v = (*v / (width.max(1) as f64 * info.gpus as f64)).min(1.0);
    }
    let infer_gpus = (info.workers * info.tp) as f64;
    let inference_busy_fraction = gen_gpu_s / (infer_gpus * makespan_s);
    let generate = gen_gpu_s / total_gpu_s;
    let train = train_gpu_s / total_gpu_s;
    let _ = info.colocated;
    PolicyResult {
        policy: info.policy.to_string(),
        seed: info.seed,
        gpus: info.gpus,
        inference_workers: info.workers,
        train_gpus: info.train_gpus,
        train_fraction: info.train_fraction,
        steps: m.step_end_ns.len() as u32,
        makespan_s,
        step_time_s_mean,
        step_times_s,
        samples_per_s: per_step_samples / step_time_s_mean,
        tokens_per_s: per_step_tokens / step_time_s_mean,
        staleness_mean,
        staleness_max: m.staleness_max,
        staleness_hist: m.staleness_hist.clone(),
        aborted_samples: m.aborted_samples,
        aborted_tokens: m.aborted_tokens,
        restarts: m.restarts,
        paused_samples: m.paused_samples,
        preemptions: m.preemptions,
        recomputed_tokens: m.recomputed_tokens,
        inference_busy_fraction,
        time_split: TimeSplit {
            generate,
            train,
            idle: (1.0 - generate - train).max(0.0),
            gen_phase: m.gen_phase_s / makespan_s,
            reward_phase: m.reward_phase_s / makespan_s,
            sync_phase: m.sync_phase_s / makespan_s,
        },
        busy_timeline: timeline,
        events: info.events,
        trace_hash: format!("{:016x}", info.trace_hash),
        wall_s: info.wall_s,
    }
}
