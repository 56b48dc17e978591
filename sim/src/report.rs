//! Text tables, CSV and JSON output of scenario results.

use crate::run::ScenarioResult;
use std::fmt::Write;

/// Comparison table across policies (speedup relative to the first policy).
pub fn table(r: &ScenarioResult) -> String {
    let mut out = String::new();
    let base = r.policies.first().map(|p| p.samples_per_s).unwrap_or(1.0);
    let _ = writeln!(
        out,
        "{:<24} {:>6} {:>11} {:>11} {:>12} {:>8} {:>9} {:>7} {:>7} {:>7} {:>8}",
        "policy", "split", "step_s", "samples/s", "tokens/s", "speedup", "stale_avg", "gen", "train", "idle", "aborted"
    );
    for p in &r.policies {
        let split = p.train_fraction.map(|f| format!("{f:.3}")).unwrap_or_else(|| "coloc".into());
        let _ = writeln!(
            out,
            "{:<24} {:>6} {:>11.2} {:>11.2} {:>12.0} {:>7.2}x {:>9.2} {:>6.1}% {:>6.1}% {:>6.1}% {:>8}",
            p.policy,
            split,
            p.step_time_s_mean,
            p.samples_per_s,
            p.tokens_per_s,
            p.samples_per_s / base,
            p.staleness_mean,
            100.0 * p.time_split.generate,
            100.0 * p.time_split.train,
            100.0 * p.time_split.idle,
            p.aborted_samples
        );
    }
    let _ = writeln!(
        out,
        "events {}  wall {:.3} s  events/s {:.3e}  trace_hash {}",
        r.events, r.wall_s, r.events_per_s, r.trace_hash
    );
    out
}

/// One CSV row per policy.
pub fn csv(r: &ScenarioResult) -> String {
    let mut out = String::from(
        "scenario,seed,policy,gpus,train_fraction,step_time_s_mean,samples_per_s,tokens_per_s,staleness_mean,staleness_max,\
         aborted_samples,inference_busy_fraction,generate,train,idle,events,trace_hash\n",
    );
    for p in &r.policies {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{:.6},{:.6},{:.3},{:.4},{},{},{:.4},{:.4},{:.4},{:.4},{},{}",
            r.scenario,
            r.seed,
            p.policy,
            p.gpus,
            p.train_fraction.map(|f| f.to_string()).unwrap_or_default(),
            p.step_time_s_mean,
            p.samples_per_s,
            p.tokens_per_s,
            p.staleness_mean,
            p.staleness_max,
            p.aborted_samples,
            p.inference_busy_fraction,
            p.time_split.generate,
            p.time_split.train,
            p.time_split.idle,
            p.events,
            p.trace_hash
        );
    }
    out
}
