//! Validation against published figures: calibrate on the synchronous baseline, then predict.
//!
//! For each scenario with `[[case]]` entries: if it has a `[calibration]`, one constant (the knob) is
//! fitted by bisection so that the synchronous baseline's mean step time equals the published one;
//! nothing is fitted to any asynchronous result. Then every case is simulated and compared.

use crate::run::run_policy_best;
use crate::scenario::{Case, Knob, Metric, Scenario};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Cache key: (gpus, prompts, responses overrides, policy/metric).
type CacheKey = (Option<u32>, Option<u32>, Option<u32>, String);

/// One validation result.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub scenario: String,
    pub predicted: f64,
    pub published: f64,
    /// predicted / published − 1.
    pub error: f64,
    pub note: Option<String>,
}

/// Calibration outcome of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationResult {
    pub scenario: String,
    pub knob: String,
    pub value: f64,
    pub baseline_step_s: f64,
    pub target_step_s: f64,
}

fn set_knob(sc: &mut Scenario, knob: Knob, v: f64) {
    match knob {
        Knob::BandwidthEfficiency => sc.inference.bandwidth_efficiency = v,
        Knob::DecodeOverhead => sc.inference.decode_overhead_ms = v,
    }
}

/// Fit the calibration knob on the synchronous baseline (bisection, 40 iterations at most).
pub fn calibrate(sc: &mut Scenario, seed: u64) -> Result<Option<CalibrationResult>> {
    let Some(cal) = sc.calibration.clone() else { return Ok(None) };
    let pol = sc.policy(&cal.policy).context("calibration.policy")?.clone();
    // Step time decreases with bandwidth efficiency and increases with overhead.
    let (mut lo, mut hi, increasing) = match cal.knob {
        Knob::BandwidthEfficiency => (0.01f64, 1.0f64, false),
        Knob::DecodeOverhead => (0.0f64, 1000.0f64, true),
    };
    let step_at = |sc: &mut Scenario, v: f64| -> Result<f64> {
        set_knob(sc, cal.knob, v);
        Ok(run_policy_best(sc, &pol, seed)?.step_time_s_mean)
    };
    let (t_lo, t_hi) = (step_at(sc, lo)?, step_at(sc, hi)?);
    let (t_min, t_max) = if increasing { (t_lo, t_hi) } else { (t_hi, t_lo) };
    if cal.step_s < t_min || cal.step_s > t_max {
        bail!(
            "calibration of {:?}: target step_s = {} is outside [{t_min:.1}, {t_max:.1}] reachable by {:?}",
            sc.name,
            cal.step_s,
            cal.knob
        );
    }
    let mut t = 0.0;
    let mut mid = 0.5 * (lo + hi);
    for _ in 0..40 {
        mid = 0.5 * (lo + hi);
        t = step_at(sc, mid)?;
        if (t - cal.step_s).abs() <= 1e-4 * cal.step_s {
            break;
        }
        if (t < cal.step_s) == increasing {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    set_knob(sc, cal.knob, mid);
    Ok(Some(CalibrationResult {
        scenario: sc.name.clone(),
        knob: format!("{:?}", cal.knob),
        value: mid,
        baseline_step_s: t,
        target_step_s: cal.step_s,
    }))
}

fn with_overrides(sc: &Scenario, c: &Case) -> Scenario {
    let mut s = sc.clone();
    if let Some(g) = c.gpus {
        s.hardware.gpus = g;
    }
    if let Some(p) = c.prompts_per_step {
        s.workload.prompts_per_step = p;
    }
    if let Some(n) = c.responses_per_prompt {
        s.workload.responses_per_prompt = n;
    }
    s
}

/// Run every case of one scenario.
pub fn validate_scenario(sc: &Scenario, seed: u64) -> Result<(Option<CalibrationResult>, Vec<CaseResult>)> {
    let mut sc = sc.clone();
    let cal = calibrate(&mut sc, seed)?;
    let mut cache: HashMap<CacheKey, f64> = HashMap::new();
    let mut out = Vec::new();
    for c in &sc.cases {
        let scc = with_overrides(&sc, c);
        let mut measure = |name: &str, metric: Metric| -> Result<f64> {
            let key = (c.gpus, c.prompts_per_step, c.responses_per_prompt, format!("{name}/{metric:?}"));
            if let Some(&v) = cache.get(&key) {
                return Ok(v);
            }
            let pol = scc.policy(name).context("case policy")?;
            let r = run_policy_best(&scc, pol, seed).with_context(|| format!("case {}", c.name))?;
            let v = match metric {
                Metric::Speedup => r.samples_per_s,
                Metric::StepS => r.step_time_s_mean,
            };
            cache.insert(key, v);
            Ok(v)
        };
        let predicted = match c.metric {
            Metric::Speedup => {
                let b = measure(c.baseline.as_deref().unwrap_or(""), Metric::Speedup)?;
                measure(&c.policy, Metric::Speedup)? / b
            }
            Metric::StepS => measure(&c.policy, Metric::StepS)?,
        };
        out.push(CaseResult {
            case: c.name.clone(),
            scenario: sc.name.clone(),
            predicted,
            published: c.published,
            error: predicted / c.published - 1.0,
            note: c.note.clone(),
        });
    }
    Ok((cal, out))
}

/// Scenario files with validation cases in `dir` (sorted by name).
pub fn validation_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read scenario directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        if text.contains("[[case]]") {
            out.push(f);
        }
    }
    Ok(out)
}

/// Text table of results.
pub fn table(cals: &[CalibrationResult], rows: &[CaseResult]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for c in cals {
        let _ = writeln!(
            s,
            "calibrated {}: {} = {:.4} (sync baseline {:.1} s vs published {:.1} s)",
            c.scenario, c.knob, c.value, c.baseline_step_s, c.target_step_s
        );
    }
    let _ = writeln!(s, "{:<34} {:>10} {:>10} {:>8}  note", "case", "predicted", "published", "error");
    for r in rows {
        let flag = if r.error.abs() <= 0.15 { "" } else { " *" };
        let _ = writeln!(
            s,
            "{:<34} {:>10.3} {:>10.3} {:>+7.1}%{}  {}",
            r.case,
            r.predicted,
            r.published,
            100.0 * r.error,
            flag,
            if r.error.abs() > 0.15 { r.note.clone().unwrap_or_default() } else { String::new() }
        );
    }
    let within = rows.iter().filter(|r| r.error.abs() <= 0.15).count();
    let _ = writeln!(s, "{within}/{} cases within ±15 % (* = outside; see note)", rows.len());
    s
}
