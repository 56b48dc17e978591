//! docs/metrics.md lists exactly the keys each metrics line struct writes.

use arbor::train::metrics::{
    AsyncNotes, ConfigChangeLine, CriticNotes, EnvNotes, RlEvalLine, RlStepReport, SamplerNotes, SftEvalLine,
    SftStepReport, StreamNotes, TreeNotes,
};
use std::collections::{BTreeMap, BTreeSet};

/// The keys of `line` as serialised, with critic indices written as `<m>`.
fn keys(line: &impl serde::Serialize) -> BTreeSet<String> {
    let v = serde_json::to_value(line).unwrap();
    let re_idx = |k: &str| match k.strip_prefix("critic_").and_then(|r| r.split_once('_')) {
        Some((m, rest)) if m.chars().all(|c| c.is_ascii_digit()) => format!("critic_<m>_{rest}"),
        _ => k.to_string(),
    };
    v.as_object().unwrap().keys().map(|k| re_idx(k)).collect()
}

/// Every key of docs/metrics.md's table rows (the first column's backticked names), per struct
/// named in a `## ... (`Struct`)` heading.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            current = h.split('`').nth(1).map(str::to_string);
            continue;
        }
        let (Some(s), Some(first)) = (&current, line.strip_prefix('|').and_then(|l| l.split('|').next())) else {
            continue;
        };
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 {
                out.entry(s.clone()).or_default().insert(part.to_string());
            }
        }
    }
    out
}

#[test]
fn every_metrics_key_is_documented_and_every_documented_key_is_written() {
    let sampler = SamplerNotes {
        time_reward_s: Some(0.1),
        tree: Some(TreeNotes::default()),
        env: Some(EnvNotes::default()),
        rhythm_amplified_frac: Some(0.2),
    };
    let critic = CriticNotes { value_losses: vec![0.5, 0.25], ..CriticNotes::default() };
    let rl = RlStepReport {
        dual_clip_frac: Some(0.1),
        cap_frac: Some(0.05),
        device_mem_mib: Some(100.0),
        device_peak_mib: Some(90.0),
        sampler,
        critic: Some(critic),
        asynchronous: Some(AsyncNotes { stream: Some(StreamNotes::default()), ..AsyncNotes::default() }),
        ..RlStepReport::default()
    };
    let change = ConfigChangeLine { step: 3, event: "config_change", changes: serde_json::Map::new() };
    let written: BTreeMap<&str, BTreeSet<String>> = [
        (
            "SftStepReport",
            keys(&SftStepReport {
                device_mem_mib: Some(100.0),
                device_peak_mib: Some(90.0),
                ..SftStepReport::default()
            }),
        ),
        ("SftEvalLine", keys(&SftEvalLine { step: 0, eval_answer_nll: 1.0, eval_answer_exact: 0.0 })),
        ("RlStepReport", keys(&rl)),
        (
            "RlEvalLine",
            keys(&RlEvalLine {
                rl_step: 0,
                eval_solve_rate: 0.5,
                eval_solve_rate_greedy: 0.5,
                eval_pass_at_k: Some(0.75),
            }),
        ),
        ("ConfigChangeLine", keys(&change)),
    ]
    .into_iter()
    .collect();
    let docs = documented();
    assert_eq!(docs.keys().map(String::as_str).collect::<Vec<_>>(), written.keys().copied().collect::<Vec<_>>());
    for (name, keys) in &written {
        let doc = &docs[*name];
        let missing: Vec<_> = keys.difference(doc).collect();
        let stale: Vec<_> = doc.difference(keys).collect();
        assert!(missing.is_empty(), "{name}: keys written but not in docs/metrics.md: {missing:?}");
        assert!(stale.is_empty(), "{name}: keys in docs/metrics.md that are never written: {stale:?}");
    }
    // the optional groups are absent when their feature did not run
    let plain = keys(&RlStepReport::default());
    for k in [
        "time_reward_s",
        "branch_points",
        "env_turns",
        "rhythm_amplified_frac",
        "staleness_max",
        "device_mem_mib",
        "device_peak_mib",
        "dual_clip_frac",
        "cap_frac",
    ] {
        assert!(!plain.contains(k), "{k} written without its feature");
    }
}
