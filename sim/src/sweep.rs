//! `arbor sim sweep`: one policy over GPU counts × async ratios, with a progress bar on stderr.

use crate::run::run_policy_best;
use crate::scenario::{Mode, Placement, Scenario};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// One sweep point.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    pub gpus: u32,
    pub alpha: f64,
    pub step_time_s_mean: f64,
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
    pub staleness_mean: f64,
    pub inference_busy_fraction: f64,
    pub trace_hash: String,
}

/// Run `policy` (alpha = 0 → its own mode; alpha > 0 → async, disaggregated) for every (gpus, alpha).
pub fn sweep(sc: &Scenario, policy: &str, gpus: &[u32], alphas: &[f64], seed: u64) -> Result<Vec<SweepPoint>> {
    let base = sc.policy(policy).with_context(|| format!("--policy {policy:?}: no such policy in {}", sc.name))?;
    let bar = ProgressBar::new((gpus.len() * alphas.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut out = Vec::new();
    for &g in gpus {
        for &a in alphas {
            bar.set_message(format!("gpus={g} alpha={a}"));
            let mut s = sc.clone();
            s.hardware.gpus = g;
            anyhow::ensure!(g >= s.inference.tp && g > 0, "--gpus {g}: must be >= inference.tp ({})", s.inference.tp);
            let mut p = base.clone();
            if a > 0.0 {
                p.mode = Mode::Async;
                p.placement = Placement::Disaggregated;
                p.alpha = a;
            }
            let r = run_policy_best(&s, &p, seed)?;
            out.push(SweepPoint {
                gpus: g,
                alpha: a,
                step_time_s_mean: r.step_time_s_mean,
                samples_per_s: r.samples_per_s,
                tokens_per_s: r.tokens_per_s,
                staleness_mean: r.staleness_mean,
                inference_busy_fraction: r.inference_busy_fraction,
                trace_hash: r.trace_hash,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(out)
}
