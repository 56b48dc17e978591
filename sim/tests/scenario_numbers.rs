//! Every float key of a scenario file refuses nan / inf / -inf (except where `inf` is documented)
//! and out-of-range 0 / negative values, with an error naming the key and the value; no input
//! makes `Scenario::parse` panic.

use arbor_sim::dist::{Component, Dist};
use arbor_sim::scenario::Scenario;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn shipped(name: &str) -> String {
    let p = scenarios_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A scenario with the distribution kinds that have float parameters (mixture, lognormal with a
/// floor, gaussians, pareto; `constant` is in roll-flash-env-latency.toml), every distribution key
/// set, and every optional float key written out.
const ALL_KINDS: &str = r#"
name = "all-kinds"
steps = 4
warmup_steps = 1
[hardware]
gpus = 8
hbm_tb_per_s = 3.35
peak_tflops = 989.0
link_gb_per_s = 25.0
intra_node_gb_per_s = 200.0
hbm_gb = 80.0
stream_gb_per_s = 3000.0
[model]
params_b = 1.5
kv_bytes_per_token = 28672.0
[inference]
tp = 1
max_concurrency = 64
decode_overhead_ms = 5.0
bandwidth_efficiency = 0.6
prefill_mfu = 0.4
memory_utilization = 0.9
kv_capacity_tokens = 500000.0
[training]
mfu = 0.35
update_overhead_s = 0.5
sync_overhead_s = 0.25
train_fraction = 0.25
[workload]
prompts_per_step = 8
responses_per_prompt = 4
prompt_tokens = 128
response_tokens = { kind = "gaussian_mixture", components = [{ weight = 0.7, mean = 500.0, std = 100.0 }, { weight = 0.3, mean = 3000.0, std = 800.0 }], min = 1.0, max = 8192.0 }
max_response_tokens = 8192
prompt_difficulty_sigma = 0.3
turns = { kind = "gaussian", mean = 3.0, std = 1.0, min = 1.0, max = 6.0 }
obs_tokens_per_turn = 50
env_step_s = { kind = "pareto", scale = 0.5, shape = 2.5, max = 30.0 }
env_reset_s = { kind = "gaussian", mean = 1.0, std = 0.2, max = 3.0 }
reward_s = { kind = "lognormal", median = 0.2, sigma = 0.5, min = 0.05, max = 5.0 }
fail_stop_prob = 0.01
fail_slow_prob = 0.02
fail_slow_factor = 4.0
[[policy]]
name = "sync"
mode = "sync"
dispatch = "queue"
tail_eta = 1.25
[[policy]]
name = "async"
mode = "async"
placement = "disaggregated"
dispatch = "queue"
alpha = 2.0
train_fraction = 0.3
[calibration]
policy = "sync"
step_s = 100.0
[[case]]
name = "c"
metric = "speedup"
policy = "async"
baseline = "sync"
published = 1.5
[limits]
events_max = 1000000
sim_time_s_max = 1e7
"#;

/// The documents the key sweep runs over: the inline fixture and shipped scenarios that together
/// have a lognormal (rlvr-small), gaussians, a constant, a calibration and a case
/// (roll-flash-env-latency), `alpha = inf` and many cases (areal-1.5b) and `kv_capacity_tokens = inf`
/// (peer-rollout).
fn fixtures() -> Vec<(String, String)> {
    let mut v = vec![("ALL_KINDS".to_string(), ALL_KINDS.to_string())];
    for f in ["rlvr-small.toml", "roll-flash-env-latency.toml", "areal-1.5b.toml", "peer-rollout.toml"] {
        v.push((f.to_string(), shipped(f)));
    }
    v
}

/// Keys where `inf` is documented as meaningful (sim/README.md): the scenario's own list; the tests
/// below check that each one really accepts `inf` and that every other key refuses it.
const INF_OK: &[&str] = arbor_sim::scenario::INF_ALLOWED;

/// Keys where 0 is a valid value.
const ZERO_OK: &[&str] = &[
    // Fixed overheads and latencies may be absent.
    "inference.decode_overhead_ms",
    "inference.per_seq_overhead_us",
    "inference.allreduce_latency_us",
    "training.update_overhead_s",
    "training.sync_overhead_s",
    "workload.env_reset_s.value",
    // No per-prompt length correlation; no failures.
    "workload.prompt_difficulty_sigma",
    "workload.prompt_correlation",
    "workload.fail_stop_prob",
    "workload.fail_slow_prob",
    // alpha = 0: lockstep (AReaL's eta = 0).
    "policy[].alpha",
    // A spread of 0 makes a distribution deterministic.
    "workload.response_tokens.sigma",
    "workload.reward_s.sigma",
    "workload.turns.std",
    "workload.env_step_s.std",
    "workload.env_reset_s.std",
    "workload.response_tokens.components[].std",
    // The lower clamp defaults to 0.
    "workload.response_tokens.min",
    "workload.turns.min",
    "workload.env_step_s.min",
    "workload.env_reset_s.min",
    "workload.reward_s.min",
    // A gaussian's mean may sit at (or below) the clamp floor: a censored normal.
    "workload.turns.mean",
    "workload.env_step_s.mean",
    "workload.env_reset_s.mean",
    "workload.response_tokens.components[].mean",
    // One mixture component may have weight 0 while the total stays > 0.
    "workload.response_tokens.components[].weight",
];

/// Keys where a negative value is valid: a gaussian mean below the clamp floor (censored normal).
const NEGATIVE_OK: &[&str] = &[
    "workload.turns.mean",
    "workload.env_step_s.mean",
    "workload.env_reset_s.mean",
    "workload.response_tokens.components[].mean",
];

/// `policy[3].alpha` → `policy[].alpha`.
fn shape(path: &str) -> String {
    arbor_sim::scenario::key_shape(path)
}

/// Dotted paths of every float leaf below `v`, array elements as `key[i]`.
fn float_paths(v: &toml::Value, path: String, out: &mut Vec<String>) {
    match v {
        toml::Value::Float(_) => out.push(path),
        toml::Value::Table(t) => {
            for (k, x) in t {
                float_paths(x, if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out);
            }
        }
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                float_paths(x, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The leaf at a dotted path (as produced by [`float_paths`]).
fn leaf_mut<'a>(v: &'a mut toml::Value, path: &str) -> &'a mut toml::Value {
    let mut cur = v;
    for part in path.split('.') {
        let (key, idx) = match part.split_once('[') {
            Some((k, rest)) => (k, Some(rest.trim_end_matches(']').parse::<usize>().unwrap())),
            None => (part, None),
        };
        cur = cur.get_mut(key).unwrap_or_else(|| panic!("no {key} in {path}"));
        if let Some(i) = idx {
            cur = cur.get_mut(i).unwrap_or_else(|| panic!("no [{i}] in {path}"));
        }
    }
    cur
}

/// A float as written in TOML / in the simulator's errors.
fn show(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else {
        format!("{v}")
    }
}

/// The parsed scenario serialised back: every float key, defaults included, as a float leaf.
fn full_document(label: &str, text: &str) -> toml::Value {
    let sc = Scenario::parse(text, &scenarios_dir()).unwrap_or_else(|e| panic!("{label}: {e:#}"));
    let doc = toml::Value::try_from(&sc).unwrap();
    let again = toml::to_string(&doc).unwrap();
    Scenario::parse(&again, &scenarios_dir()).unwrap_or_else(|e| panic!("{label} round trip: {e:#}\n{again}"));
    doc
}

fn parse_with(doc: &toml::Value, path: &str, value: f64) -> (String, Result<Scenario, String>) {
    let mut d = doc.clone();
    *leaf_mut(&mut d, path) = toml::Value::Float(value);
    let text = toml::to_string(&d).unwrap();
    let r = Scenario::parse(&text, &scenarios_dir()).map_err(|e| format!("{e:#}"));
    (text, r)
}

#[test]
fn every_float_key_refuses_nan_and_infinities() {
    let mut seen = BTreeSet::new();
    let mut inf_accepted = BTreeSet::new();
    for (label, text) in fixtures() {
        let doc = full_document(&label, &text);
        // The raw file's own float leaves are all covered by the serialised document.
        let mut raw = Vec::new();
        float_paths(&toml::from_str::<toml::Value>(&text).unwrap(), String::new(), &mut raw);
        let mut paths = Vec::new();
        float_paths(&doc, String::new(), &mut paths);
        for p in &raw {
            assert!(paths.contains(p), "{label}: {p} missing from the serialised document");
        }
        for path in &paths {
            seen.insert(shape(path));
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let (text, r) = parse_with(&doc, path, bad);
                let literal = format!("= {}", show(bad));
                assert!(text.contains(&literal), "{label}: {path}: the document should spell {literal}");
                if bad == f64::INFINITY && INF_OK.contains(&shape(path).as_str()) {
                    match r {
                        Ok(_) => {
                            inf_accepted.insert(shape(path));
                        }
                        // Where the key has no effect (the alpha of a sync policy) it is refused, named.
                        Err(e) if e.contains(&format!("{path} = inf")) && e.contains("has no effect") => {}
                        Err(e) => panic!("{label}: {path} = inf is documented but refused: {e}"),
                    }
                    continue;
                }
                let e = match r {
                    Ok(_) => panic!("{label}: {path} = {} accepted", show(bad)),
                    Err(e) => e,
                };
                let want = format!("{path} = {}", show(bad));
                assert!(e.contains(&want), "{label}: error for {want} does not name it: {e}");
            }
        }
    }
    // The sweep reached the keys the issue names, and every documented inf key.
    for k in ["workload.response_tokens.sigma", "workload.response_tokens.components[].weight", "hardware.hbm_gb"] {
        assert!(seen.contains(k), "{k} not swept: {seen:?}");
    }
    for k in INF_OK {
        assert!(inf_accepted.contains(*k), "{k} = inf never tried");
    }
    assert!(seen.len() >= 40, "only {} float keys: {seen:?}", seen.len());
}

#[test]
fn every_float_key_refuses_zero_and_negative_unless_allowed() {
    let mut zero_accepted = BTreeSet::new();
    let mut negative_accepted = BTreeSet::new();
    for (label, text) in fixtures() {
        let doc = full_document(&label, &text);
        let mut paths = Vec::new();
        float_paths(&doc, String::new(), &mut paths);
        for path in &paths {
            for (value, allowed, accepted) in
                [(0.0, ZERO_OK, &mut zero_accepted), (-2.5, NEGATIVE_OK, &mut negative_accepted)]
            {
                match parse_with(&doc, path, value).1 {
                    Ok(_) => {
                        assert!(
                            allowed.contains(&shape(path).as_str()),
                            "{label}: {path} = {} accepted but not in the allow-list",
                            show(value)
                        );
                        accepted.insert(shape(path));
                    }
                    Err(e) => {
                        let want = format!("{path} = {}", show(value));
                        assert!(e.contains(&want), "{label}: error for {want} does not name it: {e}");
                    }
                }
            }
        }
    }
    // Every allow-list entry is exercised (an entry that is refused everywhere is stale).
    for k in ZERO_OK {
        assert!(zero_accepted.contains(*k), "{k} = 0 is allow-listed but never accepted");
    }
    for k in NEGATIVE_OK {
        assert!(negative_accepted.contains(*k), "{k} < 0 is allow-listed but never accepted");
    }
}

#[test]
fn lognormal_sigma_inf_is_refused() {
    let text = shipped("rlvr-small.toml");
    let line = "response_tokens = { kind = \"lognormal\", median = 1500, sigma = 1.0, max = 16384 }";
    assert!(text.contains(line));
    for (lit, shown) in [("inf", "inf"), ("+inf", "inf"), ("-inf", "-inf"), ("nan", "nan"), ("-nan", "nan")] {
        let bad = text.replace(line, &line.replace("sigma = 1.0", &format!("sigma = {lit}")));
        let e = format!("{:#}", Scenario::parse(&bad, &scenarios_dir()).unwrap_err());
        assert!(e.contains(&format!("workload.response_tokens.sigma = {shown}")), "{lit}: {e}");
    }
}

#[test]
fn mixture_weight_nan_is_refused() {
    let bad = ALL_KINDS.replace("weight = 0.3", "weight = nan");
    assert_ne!(bad, ALL_KINDS);
    let e = format!("{:#}", Scenario::parse(&bad, &scenarios_dir()).unwrap_err());
    assert!(e.contains("workload.response_tokens.components[1].weight = nan"), "{e}");
    // All weights 0: no component can be drawn.
    let zero = ALL_KINDS.replace("weight = 0.3", "weight = 0.0").replace("weight = 0.7", "weight = 0");
    let e = format!("{:#}", Scenario::parse(&zero, &scenarios_dir()).unwrap_err());
    assert!(e.contains("workload.response_tokens.components[..].weight") && e.contains("sum to 0"), "{e}");
    // Weights that overflow their sum.
    let huge = ALL_KINDS.replace("weight = 0.3", "weight = 1e308").replace("weight = 0.7", "weight = 1e308");
    let e = format!("{:#}", Scenario::parse(&huge, &scenarios_dir()).unwrap_err());
    assert!(e.contains("sum to inf"), "{e}");
}

/// `Dist::check` refuses non-finite parameters on its own (a `Dist` built in code never goes
/// through the TOML walk of `Scenario::parse`).
#[test]
fn dist_check_refuses_non_finite_without_the_toml_walk() {
    let k = "workload.response_tokens";
    let cases: Vec<(Dist, &str)> = vec![
        (Dist::Lognormal { median: 100.0, sigma: f64::INFINITY, min: 0.0, max: f64::INFINITY }, "sigma = inf"),
        (Dist::Lognormal { median: f64::NAN, sigma: 1.0, min: 0.0, max: f64::INFINITY }, "median = nan"),
        (Dist::Lognormal { median: 100.0, sigma: 1.0, min: f64::INFINITY, max: f64::INFINITY }, "min = inf"),
        (Dist::Gaussian { mean: 1.0, std: f64::NAN, min: 0.0, max: 5.0 }, "std = nan"),
        (Dist::Gaussian { mean: 1.0, std: 1.0, min: 0.0, max: f64::NAN }, "max = nan"),
        (Dist::Pareto { scale: f64::INFINITY, shape: 1.0, max: f64::INFINITY }, "scale = inf"),
        (Dist::Pareto { scale: 1.0, shape: f64::INFINITY, max: f64::INFINITY }, "shape = inf"),
        (Dist::Constant { value: f64::NEG_INFINITY }, "value = -inf"),
        (
            Dist::GaussianMixture {
                components: vec![
                    Component { weight: 1.0, mean: 10.0, std: 1.0 },
                    Component { weight: f64::NAN, mean: 10.0, std: 1.0 },
                ],
                min: 0.0,
                max: f64::INFINITY,
            },
            "components[1].weight = nan",
        ),
        (
            Dist::GaussianMixture {
                components: vec![Component { weight: 1.0, mean: f64::INFINITY, std: 1.0 }],
                min: 0.0,
                max: f64::INFINITY,
            },
            "components[0].mean = inf",
        ),
    ];
    for (d, want) in cases {
        let e = format!("{:#}", d.check(k).unwrap_err());
        assert!(e.contains(&format!("{k}.{want}")), "{d:?}: {e}");
    }
    assert!(Dist::Lognormal { median: 100.0, sigma: 1.0, min: 0.0, max: f64::INFINITY }.check(k).is_ok());
}

/// `empirical` CSV values must be finite numbers >= 0; the error names file and line.
#[test]
fn empirical_csv_refuses_non_finite_values_with_file_and_line() {
    let dir = std::env::temp_dir().join(format!("arbor-sim-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = shipped("rlvr-small.toml").replace(
        "response_tokens = { kind = \"lognormal\", median = 1500, sigma = 1.0, max = 16384 }",
        "response_tokens = { kind = \"empirical\", csv = \"lengths.csv\", column = 1 }",
    );
    for (bad, line) in [("inf", 3), ("NaN", 3), ("-inf", 3), ("-5", 3), ("1e999", 3), ("x", 3)] {
        std::fs::write(dir.join("lengths.csv"), format!("id,len\n0,100\n1,{bad}\n2,300\n")).unwrap();
        let e = format!("{:#}", Scenario::parse(&text, &dir).unwrap_err());
        assert!(e.contains(&format!("lengths.csv:{line}:")) && e.contains(bad), "{bad}: {e}");
        assert!(e.contains("workload.response_tokens"), "{e}");
    }
    std::fs::write(dir.join("lengths.csv"), "id,len\n0,100\n1,200\n").unwrap();
    Scenario::parse(&text, &dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every float of an accepted scenario is finite, or `inf` at a documented key.
fn assert_numbers_sane(sc: &Scenario) -> Result<(), TestCaseError> {
    let doc = toml::Value::try_from(sc).unwrap();
    let mut paths = Vec::new();
    float_paths(&doc, String::new(), &mut paths);
    for p in paths {
        let mut d = doc.clone();
        let v = leaf_mut(&mut d, &p).as_float().unwrap();
        prop_assert!(
            v.is_finite() || (v == f64::INFINITY && INF_OK.contains(&shape(&p).as_str())),
            "accepted {} = {}",
            p,
            show(v)
        );
    }
    Ok(())
}

/// Edits spliced into a valid scenario: special numbers, TOML punctuation, huge integers.
const TOKENS: &[&str] = &[
    "nan",
    "inf",
    "-inf",
    "+inf",
    "-nan",
    "0",
    "0.0",
    "-0.0",
    "-1",
    "-2.5",
    "1e309",
    "1e-320",
    "4294967296",
    "18446744073709551616",
    "-9223372036854775808",
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "{",
    "}",
    "=",
    ",",
    ".",
    "\n",
    "#",
    "\n[[policy]]\nname = \"x\"\nmode = \"sync\"\n",
    "\n[limits]\n",
    "kind = \"pareto\", ",
    "components = [], ",
    "\u{0}",
    "é",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes are an error or a scenario, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(sc) = Scenario::parse(&String::from_utf8_lossy(&bytes), &scenarios_dir()) {
            assert_numbers_sane(&sc)?;
        }
    }

    /// Random splices into valid scenarios never panic, and what is accepted has sane numbers.
    #[test]
    fn mutated_scenarios_never_panic(
        which in 0usize..3,
        edits in proptest::collection::vec((0.0f64..1.0, 0usize..12, proptest::sample::select(TOKENS)), 1..5),
    ) {
        let base = [ALL_KINDS.to_string(), shipped("rlvr-small.toml"), shipped("roll-flash-env-latency.toml")][which].clone();
        let mut bytes = base.into_bytes();
        for (at, cut, token) in edits {
            let i = ((at * bytes.len() as f64) as usize).min(bytes.len());
            let j = (i + cut).min(bytes.len());
            bytes.splice(i..j, token.bytes());
        }
        if let Ok(sc) = Scenario::parse(&String::from_utf8_lossy(&bytes), &scenarios_dir()) {
            assert_numbers_sane(&sc)?;
        }
    }

    /// Replacing one number of a valid scenario with any float never panics; the result is either
    /// refused or has sane numbers.
    #[test]
    fn any_float_in_any_key_never_panics(which in 0usize..3, pick in any::<proptest::sample::Index>(), v in any::<f64>()) {
        let text = [ALL_KINDS.to_string(), shipped("rlvr-small.toml"), shipped("roll-flash-env-latency.toml")][which].clone();
        let doc = full_document("fixture", &text);
        let mut paths = Vec::new();
        float_paths(&doc, String::new(), &mut paths);
        let path = pick.get(&paths);
        match parse_with(&doc, path, v).1 {
            Ok(sc) => assert_numbers_sane(&sc)?,
            Err(e) => prop_assert!(e.contains(path.as_str()), "error for {} = {} does not name it: {}", path, show(v), e),
        }
    }
}
