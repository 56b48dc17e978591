//! Validation against published figures: calibrate on the synchronous baseline, then predict.
//!
//! For each scenario with `[[case]]` entries: if it has a `[calibration]`, one constant (the knob) is
//! fitted by bisection so that the synchronous baseline's mean step time equals the published one
//! (a scenario's knob is never fitted to an asynchronous result; a hardware profile's fitted
//! constant may be: `training.mfu` was fitted to a published async/sync speedup, see sim/README.md).
//! Then every case is simulated and compared.
//!
//! Fitted constants: a scenario's `[calibration]` knob and the fitted constants of its hardware
//! profile ([`crate::hardware`]) that it does not override. The rule: a case may only use constants
//! fitted on a different case or on its own synchronous baseline, never on its own prediction
//! ([`check_fit_rule`]); `validate` refuses a case that breaks it and prints, per case, the fitted
//! constants it used (column `fitted?`).

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
    /// Fitted constants the case used, each as `key = value (fitted on ...)`; empty: nothing fitted.
    pub fitted: Vec<String>,
}

/// A fitted constant a scenario uses, and what it was fitted on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fit {
    /// Dotted scenario key.
    pub key: String,
    pub value: f64,
    /// Profile it comes from (`None`: the scenario's own `[calibration]`).
    pub profile: Option<String>,
    /// Scenario and policy whose published synchronous step time was matched.
    pub on_scenario: String,
    pub on_policy: String,
    /// Case whose published value was matched, when the fit used a case.
    pub on_case: Option<String>,
}

impl Fit {
    /// One line: `key = value (profile, fitted on ...)`.
    pub fn describe(&self) -> String {
        let on = match &self.on_case {
            Some(c) => format!("case {c}"),
            None => format!("sync baseline {}/{}", self.on_scenario, self.on_policy),
        };
        let from = self.profile.as_deref().map(|p| format!("profile {p}, ")).unwrap_or_default();
        format!("{} = {:.4} ({from}fitted on {on})", self.key, self.value)
    }
}

/// The fitted-constant rule: `case` (of scenario `scenario`) may use `fit` only if the fit was made
/// on a different case, or on a synchronous baseline that is not the quantity the case predicts
/// (its own synchronous baseline is allowed).
pub fn check_fit_rule(case: &Case, scenario: &str, fit: &Fit) -> Result<()> {
    if fit.on_case.as_deref() == Some(case.name.as_str()) {
        bail!(
            "case {}: uses {} fitted on this very case (a case may only use constants fitted on a different case \
             or on its own synchronous baseline)",
            case.name,
            fit.describe()
        );
    }
    if fit.on_case.is_none() && fit.on_scenario == scenario && fit.on_policy == case.policy {
        bail!(
            "case {}: predicts policy {:?}, whose own published step time {} was fitted on; pick another policy \
             or fit on the synchronous baseline",
            case.name,
            case.policy,
            fit.describe()
        );
    }
    Ok(())
}

/// The fitted constants `sc` uses: its profile's fitted constants it does not override, then its
/// `[calibration]` knob (after [`calibrate`]).
pub fn fits_of(sc: &Scenario, cal: Option<&CalibrationResult>) -> Vec<Fit> {
    let mut out = Vec::new();
    if let Some(name) = &sc.hardware.profile {
        if let Ok(p) = crate::hardware::profile(name) {
            for c in p.constants() {
                if let crate::hardware::Source::Fitted { scenario, policy, case, .. } = c.source {
                    if sc.from_profile.contains(&c.key) {
                        out.push(Fit {
                            key: c.key.to_string(),
                            value: c.value,
                            profile: Some(p.name.to_string()),
                            on_scenario: scenario.to_string(),
                            on_policy: policy.to_string(),
                            on_case: case.map(str::to_string),
                        });
                    }
                }
            }
        }
    }
    if let (Some(c), Some(r)) = (&sc.calibration, cal) {
        out.push(Fit {
            key: knob_key(c.knob).to_string(),
            value: r.value,
            profile: None,
            on_scenario: sc.name.clone(),
            on_policy: c.policy.clone(),
            on_case: None,
        });
    }
    out
}

/// A profile constant's fit, re-checked: the fitted-on baseline simulated with the profile.
#[derive(Debug, Clone, Serialize)]
pub struct FitCheck {
    pub profile: String,
    pub key: String,
    pub value: f64,
    pub scenario: String,
    pub policy: String,
    pub step_s: f64,
    pub target_s: f64,
}

/// Re-run the target each fitted profile constant was fitted on (a synchronous baseline's step
/// time, or a case's published value) with the profile's value, where that scenario is among
/// `scenarios`. A case-fitted constant is checked on its case even when the case's own file
/// overrides the key (as the fitted-constant rule requires).
pub fn profile_fit_checks(scenarios: &[Scenario], seed: u64) -> Result<Vec<FitCheck>> {
    let mut out = Vec::new();
    for sc in scenarios {
        let Some(name) = &sc.hardware.profile else { continue };
        let p = crate::hardware::profile(name)?;
        for c in p.constants() {
            let crate::hardware::Source::Fitted { scenario, policy, case, target } = c.source else { continue };
            if scenario != sc.name {
                continue;
            }
            let what = format!("profile {name}: {} fitted on {scenario}", c.key);
            let mut s2 = sc.clone();
            crate::hardware::set_key(&mut s2, c.key, c.value)?;
            let simulated = match case {
                None => {
                    if !sc.from_profile.contains(&c.key) {
                        continue;
                    }
                    let pol = s2.policy(policy).with_context(|| what.clone())?.clone();
                    run_policy_best(&s2, &pol, seed)?.step_time_s_mean
                }
                Some(cn) => {
                    let k =
                        s2.cases.iter().position(|x| x.name == cn).with_context(|| format!("{what}: no case {cn}"))?;
                    let cs = s2.cases[k].clone();
                    predict(&s2, &cs, seed, &mut HashMap::new())?
                }
            };
            out.push(FitCheck {
                profile: p.name.to_string(),
                key: c.key.to_string(),
                value: c.value,
                scenario: scenario.to_string(),
                policy: case.map_or_else(|| policy.to_string(), |c| format!("case {c}")),
                step_s: simulated,
                target_s: target,
            });
        }
    }
    Ok(out)
}

/// Fit `knob` so that case `case`'s prediction equals its published value (bisection, at most 40
/// rounds): how a profile constant is fitted on a case (`arbor sim fit`). Returns (value, prediction).
/// `range` brackets the search (default: the knob's whole range); the prediction must be monotonic in
/// it (a speedup is not over all of `train_mfu`: it peaks where training and generation balance).
pub fn fit_case(sc: &Scenario, case: &str, knob: Knob, range: Option<(f64, f64)>, seed: u64) -> Result<(f64, f64)> {
    let c = sc.cases.iter().find(|c| c.name == case).with_context(|| format!("no case {case:?} in {}", sc.name))?;
    let mut s = sc.clone();
    let (mut lo, mut hi) = range.unwrap_or(match knob {
        Knob::BandwidthEfficiency => (0.01f64, 1.0f64),
        Knob::DecodeOverhead => (0.0f64, 1000.0f64),
        Knob::TrainMfu => (0.02f64, 1.0f64),
    });
    if !(lo.is_finite() && hi.is_finite() && lo < hi && lo >= 0.0) {
        bail!("fit range [{lo}, {hi}]: need 0 <= lo < hi, both finite");
    }
    let mut at = |v: f64| -> Result<f64> {
        set_knob(&mut s, knob, v);
        predict(&s, c, seed, &mut HashMap::new())
    };
    let (p_lo, p_hi) = (at(lo)?, at(hi)?);
    let target = c.published;
    if (target - p_lo) * (target - p_hi) > 0.0 {
        bail!("fit of {knob:?} on case {case}: published {target} is outside [{p_lo:.4}, {p_hi:.4}] reachable by the knob");
    }
    let rising = p_hi > p_lo;
    let (mut mid, mut pred) = (0.5 * (lo + hi), f64::NAN);
    for _ in 0..40 {
        mid = 0.5 * (lo + hi);
        pred = at(mid)?;
        if (pred - target).abs() <= 1e-3 * target {
            break;
        }
        if (pred < target) == rising {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok((mid, pred))
}

/// The prediction of one case (`cache` shares runs between cases of one scenario).
fn predict(sc: &Scenario, c: &Case, seed: u64, cache: &mut HashMap<CacheKey, f64>) -> Result<f64> {
    // The case's overrides, checked as the file would be (a Scenario built in code skipped parse).
    let scc = sc.with_case(c)?;
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
    Ok(match c.metric {
        Metric::Speedup => {
            let b = measure(c.baseline.as_deref().unwrap_or(""), Metric::Speedup)?;
            measure(&c.policy, Metric::Speedup)? / b
        }
        Metric::StepS => measure(&c.policy, Metric::StepS)?,
    })
}

fn knob_key(k: Knob) -> &'static str {
    match k {
        Knob::BandwidthEfficiency => "inference.bandwidth_efficiency",
        Knob::DecodeOverhead => "inference.decode_overhead_ms",
        Knob::TrainMfu => "training.mfu",
    }
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
        Knob::TrainMfu => sc.training.mfu = v,
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
        Knob::TrainMfu => (0.02f64, 1.0f64, false),
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

/// Run every case of one scenario.
pub fn validate_scenario(sc: &Scenario, seed: u64) -> Result<(Option<CalibrationResult>, Vec<CaseResult>)> {
    let mut sc = sc.clone();
    let cal = calibrate(&mut sc, seed)?;
    let fits = fits_of(&sc, cal.as_ref());
    for c in &sc.cases {
        for f in &fits {
            check_fit_rule(c, &sc.name, f)?;
        }
    }
    let mut cache: HashMap<CacheKey, f64> = HashMap::new();
    let mut out = Vec::new();
    for c in &sc.cases {
        let predicted = predict(&sc, c, seed, &mut cache)?;
        out.push(CaseResult {
            case: c.name.clone(),
            scenario: sc.name.clone(),
            predicted,
            published: c.published,
            error: predicted / c.published - 1.0,
            note: c.note.clone(),
            fitted: fits.iter().map(Fit::describe).collect(),
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
pub fn table(checks: &[FitCheck], cals: &[CalibrationResult], rows: &[CaseResult]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for c in checks {
        let _ = writeln!(
            s,
            "profile {}: {} = {} fitted once on {}/{}: {:.3} simulated vs {:.3} published",
            c.profile, c.key, c.value, c.scenario, c.policy, c.step_s, c.target_s
        );
    }
    for c in cals {
        let _ = writeln!(
            s,
            "calibrated {}: {} = {:.4} (sync baseline {:.1} s vs published {:.1} s)",
            c.scenario, c.knob, c.value, c.baseline_step_s, c.target_step_s
        );
    }
    let _ = writeln!(s, "{:<34} {:>10} {:>10} {:>8}  {:<8} note", "case", "predicted", "published", "error", "fitted?");
    for r in rows {
        let flag = if r.error.abs() <= 0.15 { "  " } else { " *" };
        let fitted = if r.fitted.is_empty() { "no".to_string() } else { format!("yes ({})", r.fitted.len()) };
        let _ = writeln!(
            s,
            "{:<34} {:>10.3} {:>10.3} {:>+7.1}%{}{:<8} {}",
            r.case,
            r.predicted,
            r.published,
            100.0 * r.error,
            flag,
            fitted,
            if r.error.abs() > 0.15 { r.note.clone().unwrap_or_default() } else { String::new() }
        );
    }
    // The fitted constants behind the `fitted?` column, each once with the cases that used it.
    let mut seen: Vec<(&String, Vec<&str>)> = Vec::new();
    for r in rows {
        for f in &r.fitted {
            match seen.iter_mut().find(|(g, _)| *g == f) {
                Some((_, cases)) => cases.push(&r.case),
                None => seen.push((f, vec![&r.case])),
            }
        }
    }
    for (f, cases) in &seen {
        let _ = writeln!(s, "fitted: {f}; used by {} case(s)", cases.len());
    }
    let within = rows.iter().filter(|r| r.error.abs() <= 0.15).count();
    let _ = writeln!(s, "{within}/{} cases within ±15 % (* = outside; see note)", rows.len());
    s
}
