//! Running a scenario: every policy, optional split search, the combined trace hash.

use crate::cost::split_gpus;
use crate::engine::Sim;
use crate::event::TraceHash;
use crate::metrics::{Metrics, PolicyResult};
use crate::scenario::{Placement, Policy, Scenario};
use anyhow::Result;
use serde::Serialize;

/// Train fractions tried by `split_search`.
pub const SPLIT_CANDIDATES: [f64; 4] = [0.125, 0.25, 0.375, 0.5];

/// Results of a whole scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub seed: u64,
    pub wall_s: f64,
    pub events: u64,
    pub events_per_s: f64,
    /// Trace hash folded over every policy's event stream, in policy order.
    pub trace_hash: String,
    pub policies: Vec<PolicyResult>,
}

/// Run one policy with one train fraction; `track` records the prompt ledger (tests).
pub fn run_policy(
    sc: &Scenario,
    pol: &Policy,
    train_fraction: f64,
    seed: u64,
    track: bool,
) -> Result<(PolicyResult, Metrics)> {
    let mut sim = Sim::new(sc, pol, train_fraction, seed);
    if track {
        sim.m.ledger = Some(Vec::new());
        sim.m.engine_log = Some(Vec::new());
    }
    // The split actually simulated (rounded to GPUs and whole nodes), not the fraction asked for.
    let (_, train_gpus) = split_gpus(sc, pol.placement, train_fraction);
    let tf = (pol.placement == Placement::Disaggregated).then(|| train_gpus as f64 / sc.hardware.gpus as f64);
    sim.run(tf)
}

/// Run one policy, searching the split when asked (best samples/s wins; ties keep the first). A
/// candidate that rounds to a split already tried (whole nodes) is not run again.
pub fn run_policy_best(sc: &Scenario, pol: &Policy, seed: u64) -> Result<PolicyResult> {
    let base = pol.train_fraction.unwrap_or(sc.training.train_fraction);
    if !(pol.split_search && pol.placement == Placement::Disaggregated) {
        return Ok(run_policy(sc, pol, base, seed, false)?.0);
    }
    let mut best: Option<PolicyResult> = None;
    let mut events = 0;
    let mut tried = Vec::new();
    for f in SPLIT_CANDIDATES {
        let split = split_gpus(sc, pol.placement, f);
        if tried.contains(&split) {
            continue;
        }
        tried.push(split);
        let (r, _) = run_policy(sc, pol, f, seed, false)?;
        events += r.events;
        if best.as_ref().is_none_or(|b| r.samples_per_s > b.samples_per_s) {
            best = Some(r);
        }
    }
    let mut best = best.expect("split candidates are non-empty");
    best.events = events;
    Ok(best)
}

/// Run every policy of a scenario with `seed`.
pub fn run_scenario(sc: &Scenario, seed: u64) -> Result<ScenarioResult> {
    let wall = std::time::Instant::now();
    let mut policies = Vec::new();
    let mut hash = TraceHash::default();
    let mut events = 0;
    for pol in &sc.policies {
        let r = run_policy_best(sc, pol, seed)?;
        events += r.events;
        hash.word(u64::from_str_radix(&r.trace_hash, 16).unwrap_or(0));
        policies.push(r);
    }
    let wall_s = wall.elapsed().as_secs_f64();
    Ok(ScenarioResult {
        scenario: sc.name.clone(),
        seed,
        wall_s,
        events,
        events_per_s: events as f64 / wall_s.max(1e-9),
        trace_hash: format!("{:016x}", hash.0),
        policies,
    })
}

/// The options a run derived from the scenario and seed (logged so a run can be replayed).
pub fn options_log(sc: &Scenario, seed: u64) -> String {
    format!(
        "arbor-sim scenario={} seed={} steps={} warmup_steps={} gpus={} tp={} max_concurrency={} \
         bandwidth_efficiency={} decode_overhead_ms={} prefill_mfu={} train_mfu={} train_fraction={} \
         prompts_per_step={} responses_per_prompt={} max_response_tokens={} policies=[{}] (replay: arbor sim run --scenario FILE --seed {})",
        sc.name,
        seed,
        sc.steps,
        sc.warmup_steps,
        sc.hardware.gpus,
        sc.inference.tp,
        sc.inference.max_concurrency,
        sc.inference.bandwidth_efficiency,
        sc.inference.decode_overhead_ms,
        sc.inference.prefill_mfu,
        sc.training.mfu,
        sc.training.train_fraction,
        sc.workload.prompts_per_step,
        sc.workload.responses_per_prompt,
        sc.workload.max_response_tokens,
        sc.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(","),
        seed
    )
}
