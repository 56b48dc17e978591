//! Mechanisms of issue 22, round 2: the trainer's model parallelism (tensor-parallel all-reduces and
//! the pipeline bubble), request-level admission under KV-cache pressure and within-prompt length
//! correlation. Each test asserts something a broken mechanism would fail.

use arbor_sim::cost::CostModel;
use arbor_sim::dist::Dist;
use arbor_sim::rng::Rng;
use arbor_sim::run::run_policy;
use arbor_sim::scenario::Scenario;
use arbor_sim::train_parallel::TrainParallel;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A small scenario's settings. [`Spec::default`]: 16 GPUs, 4 prompts × 2 responses, no extra lines
/// in any table, one synchronous queue-dispatched policy ([`SYNC_QUEUE`]).
struct Spec<'a> {
    gpus: u32,
    prompts: u32,
    /// Responses per prompt.
    n: u32,
    /// Extra lines of the `[training]` table.
    training: &'a str,
    /// Extra lines of the `[model]` table.
    model: &'a str,
    /// Extra lines of the `[inference]` table.
    inference: &'a str,
    /// Extra lines of the `[workload]` table (a default `response_tokens` unless they set it).
    workload: &'a str,
    /// The `[[policy]]` tables.
    policies: &'a str,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec { gpus: 16, prompts: 4, n: 2, training: "", model: "", inference: "", workload: "", policies: SYNC_QUEUE }
    }
}

/// The scenario `spec` describes.
fn scenario(spec: &Spec) -> Scenario {
    let Spec { gpus, prompts, n, training, model, inference, workload, policies } = *spec;
    let rt = if workload.contains("response_tokens") {
        ""
    } else {
        "response_tokens = { kind = \"lognormal\", median = 400, sigma = 1.0, max = 1024 }"
    };
    let text = format!(
        r#"
name = "mech2"
steps = 6
warmup_steps = 1
[hardware]
gpus = {gpus}
peak_tflops = 400.0
allreduce_gb_per_s = 100.0
hbm_gb = 80.0
[model]
params_b = 1.5
kv_bytes_per_token = 28672
{model}
[inference]
max_concurrency = 64
allreduce_latency_us = 10.0
{inference}
[training]
{training}
[workload]
prompts_per_step = {prompts}
responses_per_prompt = {n}
prompt_tokens = 64
{rt}
max_response_tokens = 1024
{workload}
{policies}
"#
    );
    Scenario::parse(&text, Path::new(".")).unwrap_or_else(|e| panic!("{e:#}\n{text}"))
}

const PHASED: &str = "[[policy]]\nname = \"p\"\nmode = \"sync\"\nphases = [\"old_logprob\", \"broadcast\"]\n";
const SYNC_QUEUE: &str = "[[policy]]\nname = \"p\"\nmode = \"sync\"\ndispatch = \"queue\"\n";

fn rel_eq(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-30)
}

/// TP all-reduces: per token `passes · layers · tp / G · hidden · 2 B · 2(tp − 1)/tp / bw` (passes = 4
/// for the training pass + 2 per extra forward pass) plus `passes · layers · m · latency` per step;
/// zero at tp = 1; growing with tp and with layers.
#[test]
fn trainer_tp_allreduce_follows_the_formula() {
    let (g, hidden, bw, lat) = (16.0, 2048.0, 100e9, 10e-6);
    let mut last = 0.0;
    for layers in [24u32, 48] {
        let model = format!("layers = {layers}\nhidden = 2048");
        let base = scenario(&Spec { training: "tp = 1", model: &model, policies: PHASED, ..Spec::default() });
        let b = CostModel::new(&base, &base.policies[0], 0.25);
        let plain = scenario(&Spec { model: &model, policies: PHASED, ..Spec::default() });
        let p = CostModel::new(&plain, &plain.policies[0], 0.25);
        assert_eq!((b.train_per_token_s, b.update_overhead_s), (p.train_per_token_s, p.update_overhead_s));
        let mut prev = 0.0;
        for tp in [2u32, 4, 8] {
            let sc = scenario(&Spec {
                training: &format!("tp = {tp}\nmicro_batches = 3"),
                model: &model,
                policies: PHASED,
                ..Spec::default()
            });
            let c = CostModel::new(&sc, &sc.policies[0], 0.25);
            let (t, l) = (tp as f64, layers as f64);
            let passes = 4.0 + 2.0;
            let want = passes * l * t / g * hidden * 2.0 * 2.0 * (t - 1.0) / t / bw;
            let extra = c.train_per_token_s - b.train_per_token_s;
            assert!((extra - want).abs() < 1e-9 * want, "tp {tp} layers {layers}: {extra} vs {want}");
            assert!(rel_eq(c.update_overhead_s - b.update_overhead_s, passes * l * 3.0 * lat));
            assert!(extra > prev, "all-reduce cost must grow with tp");
            prev = extra;
        }
        assert!(prev > last, "all-reduce cost must grow with layers");
        last = prev;
    }
    // A policy without phases keeps the legacy charge: no parallelism cost.
    let legacy = "[[policy]]\nname = \"p\"\nmode = \"sync\"\n";
    let a = scenario(&Spec { training: "tp = 8", model: "layers = 24", policies: legacy, ..Spec::default() });
    let b = scenario(&Spec { model: "layers = 24", policies: legacy, ..Spec::default() });
    let (ca, cb) = (CostModel::new(&a, &a.policies[0], 0.25), CostModel::new(&b, &b.policies[0], 0.25));
    assert_eq!(ca.train_per_token_s, cb.train_per_token_s);
}

/// Pipeline bubble: compute (per token and per squared length) times `(m + pp − 1) / m`, i.e. a
/// bubble share `(pp − 1) / (m + pp − 1)`; no all-reduce at tp = 1.
#[test]
fn pipeline_bubble_follows_the_formula() {
    let model = "layers = 24\nhidden = 2048";
    let base = scenario(&Spec { training: "pp = 1", model, policies: PHASED, ..Spec::default() });
    let b = CostModel::new(&base, &base.policies[0], 0.25);
    for (pp, m) in [(2u32, 4u32), (4, 8), (4, 1)] {
        let sc = scenario(&Spec {
            training: &format!("pp = {pp}\ntp = 1\nmicro_batches = {m}"),
            model,
            policies: PHASED,
            ..Spec::default()
        });
        let c = CostModel::new(&sc, &sc.policies[0], 0.25);
        let f = (m + pp - 1) as f64 / m as f64;
        assert!(rel_eq(c.train_per_token_s, b.train_per_token_s * f), "pp {pp} m {m}");
        assert!(rel_eq(c.train.per_sq_token_s, b.train.per_sq_token_s * f));
        assert_eq!(c.update_overhead_s, b.update_overhead_s);
        let par = TrainParallel::of(&sc);
        assert!(rel_eq(par.bubble_share(), (pp - 1) as f64 / (m + pp - 1) as f64));
        assert!(rel_eq(1.0 / (1.0 - par.bubble_share()), f));
    }
}

/// Derived layout: tensor parallelism until bf16 weights and gradients (4N bytes) fit in half a GPU,
/// within a node; pipeline stages beyond that; micro-batches default to 4 · pp.
#[test]
fn derived_trainer_parallelism_follows_memory() {
    for (params, tp, pp) in [(1.78, 1, 1), (7.6, 1, 1), (14.8, 2, 1), (32.8, 4, 1), (70.0, 8, 1), (200.0, 8, 3)] {
        let text = format!(
            "name = \"x\"\nsteps = 2\n[hardware]\ngpus = 64\ngpus_per_node = 8\nhbm_gb = 80.0\n[model]\nparams_b = {params}\n\
             kv_bytes_per_token = 1000\nlayers = 40\n[inference]\ntp = 8\nkv_capacity_tokens = inf\n[workload]\nprompts_per_step = 1\n\
             responses_per_prompt = 1\nprompt_tokens = 8\nresponse_tokens = {{ kind = \"constant\", value = 10 }}\n\
             max_response_tokens = 16\n[[policy]]\nname = \"p\"\nmode = \"sync\"\n"
        );
        let sc = Scenario::parse(&text, Path::new(".")).unwrap();
        let par = TrainParallel::of(&sc);
        assert_eq!((par.tp, par.pp, par.micro_batches), (tp, pp, 4 * pp), "{params}B");
    }
}

/// Bad keys name the key and the value.
#[test]
fn new_keys_are_checked_with_their_key() {
    let parse = |training: &str, inference: &str, workload: &str| {
        let text = format!(
            "name = \"x\"\nsteps = 2\n[hardware]\ngpus = 8\n[model]\nparams_b = 1.5\nkv_bytes_per_token = 1000\n\
             [inference]\n{inference}\n[training]\n{training}\n[workload]\nprompts_per_step = 1\nresponses_per_prompt = 1\n\
             prompt_tokens = 8\nresponse_tokens = {{ kind = \"constant\", value = 10 }}\nmax_response_tokens = 16\n{workload}\n\
             [[policy]]\nname = \"p\"\nmode = \"sync\"\n"
        );
        Scenario::parse(&text, Path::new(".")).map(|_| ()).map_err(|e| format!("{e:#}"))
    };
    for (t, i, w, want) in [
        ("tp = 0", "", "", "training.tp = 0"),
        ("pp = 0", "", "", "training.pp = 0"),
        ("micro_batches = 0", "", "", "training.micro_batches = 0"),
        ("tp = 4\npp = 4", "", "", "training.tp x training.pp = 4 x 4"),
        ("", "admission = \"group\"", "", "admission"),
        ("", "", "prompt_correlation = 1.0", "workload.prompt_correlation = 1"),
        ("", "", "prompt_correlation = -0.1", "workload.prompt_correlation = -0.1"),
        ("", "", "prompt_correlation = nan", "workload.prompt_correlation = nan"),
    ] {
        let e = parse(t, i, w).expect_err(want);
        assert!(e.contains(want), "{want}: {e}");
    }
    assert!(parse("tp = 2\npp = 2\nmicro_batches = 8", "admission = \"request\"", "prompt_correlation = 0.9").is_ok());
}

/// Per (worker, prompt): true when some sample of the prompt runs while another one of it waits
/// (neither running nor finished), checked after every instant of the engine log.
fn splits(log: &[arbor_sim::metrics::EngineLogEntry], n: usize) -> usize {
    let mut running: BTreeMap<(u32, u64), BTreeSet<u32>> = BTreeMap::new();
    let mut finished: BTreeMap<(u32, u64), BTreeSet<u32>> = BTreeMap::new();
    let mut count = 0;
    let mut i = 0;
    while i < log.len() {
        let t = log[i].0;
        let mut touched = BTreeSet::new();
        while i < log.len() && log[i].0 == t {
            let (_, w, p, s, what) = log[i];
            touched.insert((w, p));
            let r = running.entry((w, p)).or_default();
            match what {
                0 => {
                    r.insert(s);
                }
                1 => {
                    r.remove(&s);
                }
                _ => {
                    r.remove(&s);
                    finished.entry((w, p)).or_default().insert(s);
                }
            }
            i += 1;
        }
        for k in touched {
            let r = running.get(&k).map_or(0, |r| r.len());
            let f = finished.get(&k).map_or(0, |f| f.len());
            if r > 0 && r + f < n {
                count += 1;
            }
        }
    }
    count
}

/// Request admission never splits a group across admission (nor preemption): while one sample of a
/// pinned group runs, none of the others waits. Per-sequence admission, under the same KV pressure,
/// does split groups (so the check can fail). Both conserve work.
#[test]
fn request_admission_never_splits_a_group() {
    // One 8-sample group needs at most 8 · 1088 tokens: it always fits alone, four per engine do not.
    let inf = |mode: &str| format!("kv_capacity_tokens = 10000\nadmission = \"{mode}\"");
    let long = "response_tokens = { kind = \"lognormal\", median = 800, sigma = 1.0, max = 1024 }";
    let seq =
        scenario(&Spec { gpus: 2, prompts: 8, n: 8, inference: &inf("sequence"), workload: long, ..Spec::default() });
    let req =
        scenario(&Spec { gpus: 2, prompts: 8, n: 8, inference: &inf("request"), workload: long, ..Spec::default() });
    let (rs, ms) = run_policy(&seq, &seq.policies[0], 0.25, 5, true).unwrap();
    let (rr, mr) = run_policy(&req, &req.policies[0], 0.25, 5, true).unwrap();
    let (ls, lr) = (ms.engine_log.unwrap(), mr.engine_log.unwrap());
    assert!(rs.preemptions > 0 && rr.preemptions > 0, "KV pressure expected: {} / {}", rs.preemptions, rr.preemptions);
    assert!(splits(&ls, 8) > 0, "per-sequence admission should split groups under KV pressure");
    assert_eq!(splits(&lr, 8), 0, "request admission split a group");
    for m in [ms.ledger.unwrap(), mr.ledger.unwrap()] {
        assert_eq!(m.iter().filter(|e| e.2 == 2).count(), 6 * 8);
    }
    // Without a KV limit the two modes are the same run.
    let free = |mode: &str| {
        let inference = format!("kv_capacity_tokens = inf\nadmission = \"{mode}\"");
        scenario(&Spec { gpus: 2, prompts: 8, n: 8, inference: &inference, ..Spec::default() })
    };
    let (a, b) = (free("sequence"), free("request"));
    let ra = run_policy(&a, &a.policies[0], 0.25, 5, false).unwrap().0;
    let rb = run_policy(&b, &b.policies[0], 0.25, 5, false).unwrap().0;
    assert_eq!(ra.trace_hash, rb.trace_hash);
}

/// ρ = 0 is the previous model exactly (same trace hash as a file without the key); ρ > 0 keeps the
/// marginal length distribution (mean tokens per sample within a few per cent) and makes a prompt's
/// samples correlated in length.
#[test]
fn prompt_correlation_keeps_the_marginal_and_correlates_a_prompt() {
    let run = |w: &str| {
        let sc = scenario(&Spec {
            gpus: 8,
            prompts: 64,
            n: 4,
            inference: "kv_capacity_tokens = inf",
            workload: w,
            ..Spec::default()
        });
        run_policy(&sc, &sc.policies[0], 0.25, 11, false).unwrap().1
    };
    let hash = |w: &str| {
        let sc = scenario(&Spec {
            gpus: 8,
            prompts: 16,
            n: 4,
            inference: "kv_capacity_tokens = inf",
            workload: w,
            ..Spec::default()
        });
        run_policy(&sc, &sc.policies[0], 0.25, 3, false).unwrap().0.trace_hash
    };
    assert_eq!(hash(""), hash("prompt_correlation = 0.0"));
    assert_ne!(hash(""), hash("prompt_correlation = 0.5"));
    let (m0, m5) = (run(""), run("prompt_correlation = 0.5"));
    let mean = |m: &arbor_sim::metrics::Metrics| m.consumed_response_tokens as f64 / m.consumed_samples as f64;
    assert!((mean(&m5) / mean(&m0) - 1.0).abs() < 0.06, "mean {} vs {}", mean(&m5), mean(&m0));

    // The copula itself: log-lengths of a lognormal correlate with ρ within a prompt, and the
    // marginal mean and spread do not move.
    let d = Dist::Lognormal { median: 400.0, sigma: 1.0, min: 0.0, max: f64::INFINITY };
    for rho in [0.0f64, 0.3, 0.7] {
        let (mut pairs, mut logs, mut sum) = (Vec::new(), Vec::new(), 0.0);
        for p in 0..20_000u64 {
            let zp = Rng::for_coords(7, &[6, p]).normal();
            let mut r = Rng::for_coords(7, &[p, 1]);
            let mut draw = || d.sample_from_normal(rho.sqrt() * zp + (1.0 - rho).sqrt() * r.normal());
            let (a, b) = (draw(), draw());
            sum += a + b;
            logs.extend([a.ln(), b.ln()]);
            pairs.push((a.ln(), b.ln()));
        }
        let n = pairs.len() as f64;
        let mu = logs.iter().sum::<f64>() / logs.len() as f64;
        let var = logs.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / logs.len() as f64;
        let cov = pairs.iter().map(|(a, b)| (a - mu) * (b - mu)).sum::<f64>() / n;
        let corr = cov / var;
        assert!((corr - rho).abs() < 0.03, "rho {rho}: within-prompt correlation {corr}");
        assert!((var.sqrt() - 1.0).abs() < 0.02, "rho {rho}: log sd {}", var.sqrt());
        let want = 400.0 * (0.5f64).exp();
        assert!((sum / (2.0 * n) / want - 1.0).abs() < 0.05, "rho {rho}: mean {}", sum / (2.0 * n));
    }
    // Pareto through Φ keeps its marginal too (median scale · 2^(1/shape)).
    let p = Dist::Pareto { scale: 100.0, shape: 2.0, max: f64::INFINITY };
    let mut v: Vec<f64> = (0..20_001u64).map(|i| p.sample_from_normal(Rng::for_coords(9, &[i]).normal())).collect();
    v.sort_by(f64::total_cmp);
    assert!((v[10_000] / (100.0 * 2f64.sqrt()) - 1.0).abs() < 0.03, "pareto median {}", v[10_000]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// Request admission with a KV cache far too small (a group alone may overflow it) still
    /// finishes and conserves work: every prompt is consumed exactly once per step.
    #[test]
    fn request_admission_conserves_work_under_kv_pressure(gpus in 1u32..5, prompts in 1u32..8, n in 1u32..9, kv in 1500u32..6000, seed in 0u64..1000, groups in proptest::option::of(1u32..3)) {
        let limit = groups.map_or(String::new(), |g| format!("\nmax_groups_per_engine = {g}"));
        let sc = scenario(&Spec { gpus, prompts, n, inference: &format!("kv_capacity_tokens = {kv}\nadmission = \"request\"{limit}"), ..Spec::default() });
        let (r, m) = run_policy(&sc, &sc.policies[0], 0.25, seed, true).unwrap();
        let ledger = m.ledger.unwrap();
        proptest::prop_assert_eq!(ledger.iter().filter(|e| e.2 == 2).count() as u32, 6 * prompts);
        proptest::prop_assert_eq!(r.staleness_max, 0);
    }
}
