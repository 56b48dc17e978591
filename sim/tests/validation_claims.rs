//! What sim/README.md states about the shipped validation, checked: the results table (seed 1) is
//! what `arbor sim validate` prints, every case is within ±15 %, each fitted profile constant
//! reproduces its fit target, seeds agree as stated, and every scenario file the README names exists.

use arbor_sim::scenario::Scenario;
use arbor_sim::validate::{profile_fit_checks, table, validate_scenario, validation_files, CaseResult};
use std::path::{Path, PathBuf};

fn sim_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(sim_dir().join("README.md")).unwrap()
}

fn validation_scenarios() -> Vec<Scenario> {
    let files = validation_files(&sim_dir().join("scenarios")).unwrap();
    files.iter().map(|f| Scenario::load(f).unwrap_or_else(|e| panic!("{e:#}"))).collect()
}

/// The README's results block: the lines of the fenced block after "Results (seed 1".
fn readme_results() -> Vec<String> {
    let text = readme();
    let at = text.find("Results (seed 1").expect("README: no results block");
    let block = &text[at..];
    let start = block.find("```\n").expect("README: results block not fenced") + 4;
    let end = start + block[start..].find("```").expect("README: results block not closed");
    block[start..end].lines().map(|l| l.trim_end().to_string()).collect()
}

/// `arbor sim validate` (seed 1, every shipped validation scenario, about 6 s in release).
#[test]
fn shipped_validation_matches_the_readme() {
    let scenarios = validation_scenarios();
    // "All of them name profile = "h800"" and "the shipped scenarios have none" ([calibration]).
    for sc in &scenarios {
        assert_eq!(sc.hardware.profile.as_deref(), Some("h800"), "{}", sc.name);
        assert!(sc.calibration.is_none(), "{}: fit constants in the profile, not per scenario", sc.name);
    }
    let mut rows: Vec<CaseResult> = Vec::new();
    for sc in &scenarios {
        // validate_scenario also enforces the fitted-constant rule (check_fit_rule) on every case.
        rows.extend(validate_scenario(sc, 1).unwrap_or_else(|e| panic!("{}: {e:#}", sc.name)).1);
    }
    let checks = profile_fit_checks(&scenarios, 1).unwrap();
    // "the same two fitted constants at every scale": each re-run lands on its fit target.
    assert_eq!(checks.len(), 2, "{checks:?}");
    for c in &checks {
        assert!((c.step_s / c.target_s - 1.0).abs() <= 0.005, "{c:?}");
    }
    // "18/18 cases within ±15 %", each using the fitted constants.
    assert_eq!(rows.len(), 18);
    for r in &rows {
        assert!(r.error.abs() <= 0.15, "{} is {:+.1} % off", r.case, 100.0 * r.error);
        assert!(!r.fitted.is_empty(), "{}", r.case);
    }
    // The table in the README is this run's output, line for line.
    let printed: Vec<String> = table(&checks, &[], &rows).lines().map(|l| l.trim_end().to_string()).collect();
    assert_eq!(readme_results(), printed, "sim/README.md's results table is not what validate prints");
}

/// "seeds 1–3 agree within 2 %" (the multi-turn environment-latency case within 3.5 %), on the
/// cheaper validation scenarios (AReaL 7B/14B/32B, ROLL environment latency and replication: 7 of 18
/// cases; AReaL 1.5B and ROLL RLVR scaling take most of validate's time and are left out).
#[test]
fn validation_seeds_agree() {
    let cheap = ["areal-7b", "areal-14b", "areal-32b", "roll-flash-env-latency", "roll-flash-replication"];
    let mut n = 0;
    for sc in validation_scenarios().into_iter().filter(|s| cheap.contains(&s.name.as_str())) {
        let runs: Vec<Vec<CaseResult>> = (1..=3).map(|seed| validate_scenario(&sc, seed).unwrap().1).collect();
        for i in 0..runs[0].len() {
            let p: Vec<f64> = runs.iter().map(|r| r[i].predicted).collect();
            let (lo, hi) = (p.iter().cloned().fold(f64::INFINITY, f64::min), p.iter().cloned().fold(0.0, f64::max));
            let tol = if runs[0][i].case == "roll_env_async_step_s" { 0.035 } else { 0.02 };
            assert!(hi / lo - 1.0 <= tol, "{}: seeds 1-3 give {p:?}", runs[0][i].case);
            n += 1;
        }
    }
    assert_eq!(n, 7);
}

/// Every `scenarios/NAME.toml` the README names is a file in sim/scenarios.
#[test]
fn scenario_files_named_in_the_readme_exist() {
    let text = readme();
    let mut named = Vec::new();
    for (at, _) in text.match_indices("scenarios/") {
        let rest = &text[at + "scenarios/".len()..];
        let name: String =
            rest.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
        if let Some(stem) = name.trim_end_matches('.').strip_suffix(".toml") {
            named.push(format!("{stem}.toml"));
        }
    }
    assert!(named.len() >= 5, "{named:?}");
    for n in &named {
        let p = sim_dir().join("scenarios").join(n);
        assert!(Path::new(&p).is_file(), "sim/README.md names scenarios/{n}, which does not exist");
    }
}
