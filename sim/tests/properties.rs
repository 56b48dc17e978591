//! Property tests of the simulator (proptest, modest case counts so the suite stays fast).

use arbor_sim::run::{run_policy, run_scenario};
use arbor_sim::scenario::Scenario;
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// A small scenario's settings. [`Spec::default`]: 4 GPUs, 4 prompts × 4 responses of median 300
/// tokens, 64 concurrent sequences, no KV-cache limit, no extra workload lines, a synchronous
/// queue-dispatched policy.
struct Spec<'a> {
    gpus: u32,
    prompts: u32,
    /// Responses per prompt.
    n: u32,
    /// Median response length in tokens.
    median: u32,
    /// `inference.max_concurrency`.
    conc: u32,
    /// `inference.kv_capacity_tokens` (`inf`: no KV-cache limit).
    kv: &'a str,
    /// Extra lines of the `[workload]` table.
    extra_workload: &'a str,
    /// The body of the one `[[policy]]` table.
    policy: &'a str,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            gpus: 4,
            prompts: 4,
            n: 4,
            median: 300,
            conc: 64,
            kv: "inf",
            extra_workload: "",
            policy: "mode = \"sync\"\ndispatch = \"queue\"",
        }
    }
}

/// The scenario `spec` describes.
fn scenario(spec: &Spec) -> Scenario {
    let Spec { gpus, prompts, n, median, conc, kv, extra_workload, policy } = *spec;
    let text = format!(
        r#"
name = "prop"
steps = 4
[hardware]
gpus = {gpus}
[model]
params_b = 1.5
kv_bytes_per_token = 28672
[inference]
max_concurrency = {conc}
kv_capacity_tokens = {kv}
[workload]
prompts_per_step = {prompts}
responses_per_prompt = {n}
prompt_tokens = 64
response_tokens = {{ kind = "lognormal", median = {median}, sigma = 1.0, max = 4096 }}
max_response_tokens = 4096
prompt_difficulty_sigma = 0.3
{extra_workload}
[[policy]]
name = "p"
{policy}
"#
    );
    Scenario::parse(&text, Path::new(".")).expect("test scenario parses")
}

/// A batch cutoff caused by one finished sequence pauses others that finished in the same decode
/// step; they used to be evicted twice and lost (the run stalled). Found by `work_conservation`.
#[test]
fn cutoff_in_a_shared_decode_step_loses_no_sample() {
    let pol = "mode = \"sync\"\ndispatch = \"static\"\npartial_rollout = true\ntail_eta = 1.5";
    let sc = scenario(&Spec { gpus: 5, prompts: 5, n: 1, policy: pol, ..Spec::default() });
    let (r, m) = run_policy(&sc, &sc.policies[0], 0.25, 712, true).expect("the run completes");
    assert_eq!(r.steps, 4);
    let consumed = m.ledger.as_ref().unwrap().iter().filter(|e| e.2 == 2).count();
    assert_eq!(consumed, 4 * 5);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every consumed sample is at most ⌈α⌉ versions stale.
    #[test]
    fn staleness_never_exceeds_alpha(alpha in 0u32..4, mb in 1u32..4, gpus in 2u32..9, prompts in 1u32..12, n in 1u32..6, seed in 0u64..1000) {
        // `mb` > 1: streaming training in mini-batches (the bound holds per mini-batch).
        let pol = format!("mode = \"async\"\nplacement = \"disaggregated\"\ndispatch = \"queue\"\nprompt_replication = true\nalpha = {alpha}\ntrain_mini_batches = {mb}");
        let sc = scenario(&Spec { gpus, prompts, n, policy: &pol, ..Spec::default() });
        let (r, _) = run_policy(&sc, &sc.policies[0], 0.25, seed, false).unwrap();
        prop_assert!(r.staleness_max <= alpha, "staleness {} > alpha {}", r.staleness_max, alpha);
        prop_assert_eq!(r.steps, 4);
    }

    /// Batch rollout (arbor's [async]): staleness within α and nothing aborted.
    #[test]
    fn batch_rollout_stays_within_alpha_and_aborts_nothing(alpha in 1u32..4, gpus in 2u32..9, prompts in 1u32..12, n in 1u32..6, seed in 0u64..1000) {
        let pol = format!("mode = \"async\"\nplacement = \"disaggregated\"\nalpha = {alpha}\nbatch_rollout = true");
        let sc = scenario(&Spec { gpus, prompts, n, policy: &pol, ..Spec::default() });
        let (r, _) = run_policy(&sc, &sc.policies[0], 0.25, seed, false).unwrap();
        prop_assert!(r.staleness_max <= alpha, "staleness {} > alpha {}", r.staleness_max, alpha);
        prop_assert_eq!(r.steps, 4);
        prop_assert_eq!(r.aborted_samples, 0);
    }

    /// Work conservation: each prompt attempt is launched once and then consumed once or aborted (and relaunched).
    #[test]
    fn work_conservation(mode in 0usize..7, gpus in 2u32..9, prompts in 1u32..10, n in 1u32..5, seed in 0u64..1000) {
        let pol = [
            "mode = \"async\"\nplacement = \"disaggregated\"\ndispatch = \"queue\"\nprompt_replication = true\nalpha = 1",
            "mode = \"sync\"\ndispatch = \"queue\"\ntail_eta = 1.5",
            "mode = \"sync\"\ndispatch = \"static\"\npartial_rollout = true\ntail_eta = 1.5",
            "mode = \"sync\"\ndispatch = \"queue\"\nprompt_replication = true\nredundant_groups = 2\ngroup_size_redundancy = 1",
            // streaming training, synchronous and async
            "mode = \"sync\"\nplacement = \"disaggregated\"\ndispatch = \"queue\"\ntrain_mini_batches = 3",
            "mode = \"async\"\nplacement = \"disaggregated\"\ndispatch = \"queue\"\nalpha = 1\ntrain_mini_batches = 2",
            // tail batching with long rounds: an aborted prompt is relaunched in a long round or never
            "mode = \"sync\"\ndispatch = \"queue\"\ntail_eta = 2.0\nlong_rounds = true",
        ][mode];
        let sc = scenario(&Spec { gpus, prompts, n, policy: pol, ..Spec::default() });
        let (r, m) = run_policy(&sc, &sc.policies[0], 0.25, seed, true).unwrap();
        let mut state: HashMap<u64, (u32, bool)> = HashMap::new(); // prompt -> (open attempt, consumed)
        let mut consumed = 0u64;
        for &(prompt, attempt, what) in m.ledger.as_ref().unwrap() {
            let e = state.entry(prompt).or_insert((u32::MAX, false));
            prop_assert!(!e.1, "prompt {} used after being consumed", prompt);
            match what {
                0 => { prop_assert_eq!(e.0, u32::MAX, "prompt {} launched twice", prompt); e.0 = attempt; }
                1 => { prop_assert_eq!(e.0, attempt); e.0 = u32::MAX; }
                _ => { prop_assert_eq!(e.0, attempt); e.0 = u32::MAX; e.1 = true; consumed += 1; }
            }
        }
        prop_assert_eq!(consumed, 4 * prompts as u64);
        prop_assert_eq!(r.staleness_hist.iter().sum::<u64>(), m.consumed_samples);
    }

    /// KV-cache capacity: with a cache far smaller than the batch needs, sequences are preempted and
    /// recomputed, every prompt is still consumed exactly once, staleness stays within α, and the
    /// step is never faster than with an unlimited cache.
    #[test]
    fn kv_preemption_conserves_work(mode in 0usize..3, gpus in 2u32..6, prompts in 2u32..8, n in 2u32..6, seed in 0u64..1000) {
        let pol = [
            "mode = \"sync\"\ndispatch = \"queue\"\nprompt_replication = true",
            "mode = \"sync\"\ndispatch = \"queue\"",
            "mode = \"async\"\nplacement = \"disaggregated\"\ndispatch = \"queue\"\nprompt_replication = true\nalpha = 1",
        ][mode];
        let small = scenario(&Spec { gpus, prompts, n, median: 600, kv: "3000", policy: pol, ..Spec::default() });
        let (r, m) = run_policy(&small, &small.policies[0], 0.25, seed, true).unwrap();
        prop_assert_eq!(r.steps, 4);
        prop_assert!(r.staleness_max <= 1);
        let consumed = m.ledger.as_ref().unwrap().iter().filter(|e| e.2 == 2).count() as u64;
        prop_assert_eq!(consumed, 4 * prompts as u64);
        prop_assert_eq!(r.recomputed_tokens > 0, r.preemptions > 0);
        if mode == 0 {
            let big = scenario(&Spec { gpus, prompts, n, median: 600, policy: pol, ..Spec::default() });
            let (u, _) = run_policy(&big, &big.policies[0], 0.25, seed, false).unwrap();
            prop_assert_eq!(u.preemptions, 0);
            prop_assert!(r.makespan_s >= u.makespan_s * (1.0 - 1e-9), "{} < {}", r.makespan_s, u.makespan_s);
        }
    }

    /// Same seed, same trace hash (a run is a pure function of scenario and seed).
    #[test]
    fn same_seed_same_trace(seed in 0u64..1_000_000, multi in any::<bool>()) {
        let extra = if multi {
            "turns = { kind = \"gaussian\", mean = 3, std = 1, min = 1, max = 6 }\nenv_step_s = { kind = \"gaussian\", mean = 2, std = 2 }\nfail_stop_prob = 0.05\nfail_slow_prob = 0.05"
        } else { "" };
        let sc = scenario(&Spec {
            median: 200,
            extra_workload: extra,
            policy: "mode = \"sync\"\ndispatch = \"queue\"\nenv_async = true",
            ..Spec::default()
        });
        let a = run_scenario(&sc, seed).unwrap();
        let b = run_scenario(&sc, seed).unwrap();
        prop_assert_eq!(&a.trace_hash, &b.trace_hash);
        prop_assert_eq!(a.events, b.events);
        prop_assert_eq!(a.policies[0].makespan_s, b.policies[0].makespan_s);
    }

    /// Pure generation under queue scheduling: doubling the GPUs never increases the makespan.
    /// (Doubling, not +1: with +1 the new round-robin partition is not a refinement of the old one,
    /// and list scheduling has Graham's anomalies; with 2K workers each worker's set is a subset.)
    #[test]
    fn more_gpus_never_slower(k in 1u32..9, prompts in 1u32..12, n in 1u32..6, seed in 0u64..1000) {
        let pol = "mode = \"sync\"\ndispatch = \"queue\"\nprompt_replication = true";
        let small = scenario(&Spec { gpus: k, prompts, n, median: 400, conc: 4096, policy: pol, ..Spec::default() });
        let big = scenario(&Spec { gpus: 2 * k, prompts, n, median: 400, conc: 4096, policy: pol, ..Spec::default() });
        let gen_s = |sc: &Scenario| {
            let (r, _) = run_policy(sc, &sc.policies[0], 0.25, seed, false).unwrap();
            r.time_split.gen_phase * r.makespan_s
        };
        let (a, b) = (gen_s(&small), gen_s(&big));
        prop_assert!(b <= a + 1e-6, "{} GPUs: {} s, {} GPUs: {} s", k, a, 2 * k, b);
    }

    /// List-scheduling bound per step: T ≤ W/(K·Q) + L_max + prefill, with W = Σ ℓ_i · t_step_max,
    /// L_max = ℓ_max · t_step_max (i.e. mean T ≤ μ_gen/K + L_gen/Q in the issue's notation, per slot).
    #[test]
    fn list_scheduling_bound(k in 1u32..9, q in 1u32..17, prompts in 1u32..10, n in 1u32..6, seed in 0u64..1000) {
        let pol = "mode = \"sync\"\ndispatch = \"queue\"\nprompt_replication = true";
        let sc = scenario(&Spec { gpus: k, prompts, n, conc: q, policy: pol, ..Spec::default() });
        let (r, _) = run_policy(&sc, &sc.policies[0], 0.25, seed, false).unwrap();
        let cost = arbor_sim::cost::CostModel::new(&sc, &sc.policies[0], 0.25);
        let b = (prompts * n) as f64;
        let t_step_max = cost.step_base_s + cost.step_per_kv_token_s * (q as f64 * (64.0 + 4096.0));
        // Upper bound on lengths: every response is capped at 4096 tokens; use the cap for L and the
        // realised generated tokens for W.
        let tokens_per_step = r.tokens_per_s * r.step_time_s_mean;
        let w = tokens_per_step * t_step_max;
        let bound = w / (k as f64 * q as f64) + 4096.0 * t_step_max + b * 64.0 * cost.prefill_per_token_s;
        let gen_mean = r.time_split.gen_phase * r.makespan_s / r.steps as f64;
        prop_assert!(gen_mean <= bound * (1.0 + 1e-9), "mean gen {} > bound {}", gen_mean, bound);
    }
}

/// A cache that holds a few sequences' worth of tokens forces preemptions on a batch of 16 long
/// responses; the derived capacity of a realistic setup never preempts them.
#[test]
fn kv_capacity_preempts_only_when_the_cache_is_small() {
    let pol = "mode = \"sync\"\ndispatch = \"queue\"";
    let tiny = scenario(&Spec { gpus: 1, prompts: 1, n: 16, median: 2000, kv: "8000", policy: pol, ..Spec::default() });
    let (r, _) = run_policy(&tiny, &tiny.policies[0], 0.25, 3, false).unwrap();
    assert!(r.preemptions > 0 && r.recomputed_tokens > 0, "{} preemptions", r.preemptions);
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/roll-flash-replication.toml")).unwrap();
    let sc = Scenario::parse(&text, Path::new(".")).unwrap();
    // 8.2B on one 80 GB GPU at 0.9 utilisation: (72 − 16.4) GB / 147,456 B per token.
    let derived = sc.kv_capacity_tokens();
    assert!((derived - 377_000.0).abs() < 1_000.0, "derived capacity {derived}");
    let err = Scenario::parse(&text.replace("params_b = 8.2", "params_b = 80"), Path::new(".")).unwrap_err();
    assert!(format!("{err:#}").contains("kv_capacity_tokens"), "{err:#}");
}

#[test]
fn bad_scenarios_are_errors_naming_the_key() {
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/rlvr-small.toml")).unwrap();
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"));
    let unknown = base.replace("[hardware]", "[hardware]\nbogus_key = 1");
    let e = format!("{:#}", Scenario::parse(&unknown, dir).unwrap_err());
    assert!(e.contains("bogus_key"), "{e}");
    let bad = base.replace("gpus = 16", "gpus = 0");
    let e = format!("{:#}", Scenario::parse(&bad, dir).unwrap_err());
    assert!(e.contains("hardware.gpus"), "{e}");
    let e = format!("{:#}", Scenario::load(Path::new("/nonexistent/x.toml")).unwrap_err());
    assert!(e.contains("/nonexistent/x.toml"), "{e}");
}

#[test]
fn shipped_scenarios_parse_and_small_one_runs() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"));
    let mut count = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            count += 1;
        }
    }
    assert!(count >= 7);
    let sc = Scenario::load(&dir.join("rlvr-small.toml")).unwrap();
    let r = run_scenario(&sc, 1).unwrap();
    let sync = &r.policies[0];
    let asyn = r.policies.iter().find(|p| p.policy == "async-a2").unwrap();
    assert!(asyn.samples_per_s > sync.samples_per_s, "async should beat sync on a long-tail workload");
    assert!(asyn.staleness_max <= 2);
}
