//! The mechanisms of issue 22: per-policy training phases, streaming training, the first-principles
//! decode step, hardware profiles, long rounds, the engine group limit and validate's fitted-constant
//! rule. Each test asserts something that a broken mechanism would fail.

use arbor_sim::cost::CostModel;
use arbor_sim::decode::DecodeModel;
use arbor_sim::run::run_policy;
use arbor_sim::scenario::{Case, Metric, Scenario};
use arbor_sim::validate::{check_fit_rule, Fit};
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// A small scenario: `hardware`, `inference` and `model` are extra lines of those tables, `policies`
/// one or more `[[policy]]` tables.
fn scenario(gpus: u32, prompts: u32, n: u32, hardware: &str, model: &str, inference: &str, policies: &str) -> Scenario {
    let text = format!(
        r#"
name = "mech"
steps = 6
warmup_steps = 1
[hardware]
gpus = {gpus}
{hardware}
[model]
params_b = 1.5
kv_bytes_per_token = 28672
{model}
[inference]
max_concurrency = 64
kv_capacity_tokens = inf
{inference}
[workload]
prompts_per_step = {prompts}
responses_per_prompt = {n}
prompt_tokens = 64
response_tokens = {{ kind = "lognormal", median = 400, sigma = 1.0, max = 4096 }}
max_response_tokens = 4096
prompt_difficulty_sigma = 0.5
{policies}
"#
    );
    Scenario::parse(&text, Path::new(".")).unwrap_or_else(|e| panic!("{e:#}\n{text}"))
}

fn parse_err(text_policy: &str, inference: &str, hardware: &str, model: &str) -> String {
    let text = format!(
        "name = \"bad\"\nsteps = 2\n[hardware]\ngpus = 8\n{hardware}\n[model]\nparams_b = 1.5\nkv_bytes_per_token = 28672\n{model}\n\
         [inference]\n{inference}\n[workload]\nprompts_per_step = 4\nresponses_per_prompt = 2\nprompt_tokens = 8\n\
         response_tokens = {{ kind = \"constant\", value = 10 }}\nmax_response_tokens = 16\n[[policy]]\nname = \"p\"\n{text_policy}\n"
    );
    match Scenario::parse(&text, Path::new(".")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => format!("{e:#}"),
    }
}

const STEP_ENDS_EPS_S: f64 = 1e-6;

fn step_ends(sc: &Scenario, k: usize, seed: u64) -> Vec<f64> {
    let (_, m) = run_policy(sc, &sc.policies[k], 0.25, seed, false).expect("run");
    m.step_end_ns.iter().map(|&t| t as f64 * 1e-9).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Streaming at α = 0 finishes every step no later than batch-locked training (synchronous mode
    /// and async α = 0): generation is the same, and the trainer starts on mini-batches earlier.
    #[test]
    fn streaming_at_alpha_zero_is_never_later(mb in 2u32..6, gpus in 4u32..12, prompts in 2u32..10, n in 1u32..5, seed in 0u64..500, asyn in any::<bool>()) {
        let mode = if asyn { "mode = \"async\"\nalpha = 0" } else { "mode = \"sync\"" };
        let pols = format!(
            "[[policy]]\nname = \"locked\"\n{mode}\nplacement = \"disaggregated\"\ndispatch = \"queue\"\n\
             [[policy]]\nname = \"stream\"\n{mode}\nplacement = \"disaggregated\"\ndispatch = \"queue\"\ntrain_mini_batches = {mb}\n"
        );
        // Training comparable to generation, so streaming has something to overlap.
        let sc = scenario(gpus, prompts, n, "peak_tflops = 2.0", "", "", &pols);
        let (locked, stream) = (step_ends(&sc, 0, seed), step_ends(&sc, 1, seed));
        prop_assert_eq!(locked.len(), stream.len());
        for (i, (a, b)) in locked.iter().zip(&stream).enumerate() {
            prop_assert!(*b <= *a + STEP_ENDS_EPS_S, "step {}: streaming ends at {} s, batch-locked at {} s", i, b, a);
        }
    }
}

/// Streaming overlaps training with the rest of the batch's generation: strictly faster when
/// training is a large share of the step.
#[test]
fn streaming_overlaps_training_with_generation() {
    let pols = "[[policy]]\nname = \"locked\"\nmode = \"sync\"\nplacement = \"disaggregated\"\ndispatch = \"queue\"\n\
                [[policy]]\nname = \"stream\"\nmode = \"sync\"\nplacement = \"disaggregated\"\ndispatch = \"queue\"\ntrain_mini_batches = 4\n";
    let sc = scenario(8, 16, 4, "peak_tflops = 2.0", "", "", pols);
    let (a, _) = run_policy(&sc, &sc.policies[0], 0.25, 3, false).unwrap();
    let (b, mb) = run_policy(&sc, &sc.policies[1], 0.25, 3, false).unwrap();
    assert!(
        b.step_time_s_mean < 0.97 * a.step_time_s_mean,
        "stream {} vs locked {}",
        b.step_time_s_mean,
        a.step_time_s_mean
    );
    assert!(mb.mini_batches >= 3 * 5, "mini-batches before the last one of each step: {}", mb.mini_batches);
    assert_eq!(a.staleness_max, 0);
    assert_eq!(b.staleness_max, 0);
}

/// A policy that skips the π_old recompute (reuses the rollout's log-probs) is charged less per token,
/// by exactly the 2N forward pass, and its steps are faster.
#[test]
fn skipping_old_logprob_recompute_is_cheaper() {
    let pols = "[[policy]]\nname = \"recompute\"\nmode = \"sync\"\nplacement = \"disaggregated\"\ndispatch = \"queue\"\nphases = [\"old_logprob\", \"broadcast\"]\n\
                [[policy]]\nname = \"reuse\"\nmode = \"sync\"\nplacement = \"disaggregated\"\ndispatch = \"queue\"\nphases = [\"broadcast\"]\n";
    let sc = scenario(8, 8, 4, "peak_tflops = 5.0", "", "", pols);
    let a = CostModel::new(&sc, &sc.policies[0], 0.25);
    let b = CostModel::new(&sc, &sc.policies[1], 0.25);
    let forward = 2.0 * 1.5e9 / (a.train_gpus as f64 * 5e12 * sc.training.mfu);
    assert!((a.train_per_token_s - b.train_per_token_s - forward).abs() < 1e-12 * a.train_per_token_s.max(1.0));
    assert_eq!(a.sync_s, b.sync_s);
    let (ra, _) = run_policy(&sc, &sc.policies[0], 0.25, 1, false).unwrap();
    let (rb, _) = run_policy(&sc, &sc.policies[1], 0.25, 1, false).unwrap();
    assert!(rb.step_time_s_mean < ra.step_time_s_mean);
}

/// Phases derive from model size, GPUs and links: colocated phases cost what the formulas say, and a
/// policy without `phases` keeps the legacy charge (sync over the placement's link).
#[test]
fn phase_costs_follow_the_formulas() {
    let pols = "[[policy]]\nname = \"verl\"\nmode = \"sync\"\nphases = [\"offload\", \"reshard\", \"ref_forward\"]\n\
                [[policy]]\nname = \"legacy\"\nmode = \"sync\"\n\
                [[policy]]\nname = \"async\"\nmode = \"async\"\nplacement = \"disaggregated\"\nalpha = 1\nphases = [\"broadcast\"]\n";
    let sc =
        scenario(16, 4, 2, "pcie_gb_per_s = 20.0\nintra_node_gb_per_s = 100.0\nlink_gb_per_s = 10.0", "", "", pols);
    let n = 1.5e9;
    let verl = CostModel::new(&sc, &sc.policies[0], 0.25);
    assert_eq!(verl.train_gpus, 16);
    let offload = 2.0 * 16.0 * n / (16.0 * 20e9);
    assert!((verl.update_overhead_s - offload).abs() < 1e-12);
    assert!((verl.sync_s - 2.0 * n / 100e9).abs() < 1e-12);
    let legacy = CostModel::new(&sc, &sc.policies[1], 0.25);
    assert!((legacy.sync_s - 2.0 * n / 100e9).abs() < 1e-12);
    assert!((verl.train_per_token_s / legacy.train_per_token_s - 8.0 / 6.0).abs() < 1e-12);
    let asy = CostModel::new(&sc, &sc.policies[2], 0.25);
    assert!((asy.sync_s - 2.0 * n / 10e9).abs() < 1e-12);
    assert_eq!(asy.update_overhead_s, 0.0);
}

/// The decode step follows its formula: it grows with the batch (per-sequence work, all-reduce
/// volume, and once compute bound the GEMMs) and with the cached tokens (KV read and attention), and
/// `m` steps in closed form equal the sum of single steps.
#[test]
fn decode_step_grows_with_batch_and_context_per_the_formula() {
    let sc = scenario(
        16,
        4,
        2,
        "hbm_tb_per_s = 2.0\npeak_tflops = 400.0\nallreduce_gb_per_s = 100.0",
        "layers = 24\nhidden = 2048",
        "tp = 2\ndecode_overhead_ms = 1.0\nbandwidth_efficiency = 0.5\nper_seq_overhead_us = 20.0\nallreduce_latency_us = 10.0\ndecode_mfu = 0.5\nattention_efficiency = 0.25",
        "[[policy]]\nname = \"p\"\nmode = \"sync\"\n",
    );
    let d = DecodeModel::new(&sc);
    let (n_params, tp, l, h) = (1.5e9, 2.0, 24.0, 2048.0);
    let bw = tp * 2.0e12 * 0.5;
    let peak = tp * 400e12;
    let expect = |n: f64, kv: f64| {
        let allreduce = 2.0 * l * (10e-6 + n * h * 2.0 * 2.0 * (tp - 1.0) / tp / 100e9);
        1e-3 + n * 20e-6
            + (2.0 * n_params / bw).max(n * 2.0 * n_params / (peak * 0.5))
            + allreduce
            + kv * (28672.0 / bw + 4.0 * h * l / (peak * 0.25))
    };
    for (n, kv) in [(1.0, 100.0), (8.0, 5e3), (64.0, 1e5), (512.0, 2e6), (4096.0, 1e7)] {
        let got = d.step_s(n, kv);
        assert!(
            (got - expect(n, kv)).abs() < 1e-12 * expect(n, kv).max(1e-3),
            "n {n} kv {kv}: {got} vs {}",
            expect(n, kv)
        );
        assert!(d.step_s(2.0 * n, kv) > got, "more sequences must cost more");
        assert!(d.step_s(n, 2.0 * kv) > got, "more context must cost more");
    }
    // Compute bound at large batches: the step grows faster than the per-sequence overhead alone.
    // (per-sequence overhead 20 µs + all-reduce volume ~2 µs; the GEMMs add 7.5 µs per sequence)
    assert!(d.step_s(4096.0, 0.0) - d.step_s(2048.0, 0.0) > 2048.0 * 25e-6);
    let cost = CostModel::new(&sc, &sc.policies[0], 0.25);
    let (m, n, kv) = (37u64, 12u64, 3000u64);
    let sum: f64 = (0..m).map(|i| d.step_s(n as f64, (kv + i * n) as f64)).sum();
    assert!((cost.steps_time_s(m, n, kv) - sum).abs() < 1e-9 * sum);
    assert_eq!(cost.steps_within(cost.steps_time_s(m, n, kv) + 1e-12, n, kv), m);
}

/// A hardware profile fills what the file does not set; what the file sets wins.
#[test]
fn profile_fills_unset_keys_and_file_keys_win() {
    let sc = scenario(
        16,
        4,
        2,
        "profile = \"h800\"",
        "layers = 28",
        "bandwidth_efficiency = 0.5",
        "[[policy]]\nname = \"p\"\nmode = \"sync\"\n",
    );
    assert_eq!(sc.hardware.hbm_tb_per_s, 3.35);
    assert_eq!(sc.hardware.gpus_per_node, Some(8));
    assert_eq!(sc.inference.bandwidth_efficiency, 0.5);
    assert!(sc.inference.per_seq_overhead_us > 0.0);
    assert!(sc.from_profile.contains(&"inference.decode_overhead_ms"));
    assert!(!sc.from_profile.contains(&"inference.bandwidth_efficiency"));
    let plain = scenario(16, 4, 2, "", "", "", "[[policy]]\nname = \"p\"\nmode = \"sync\"\n");
    assert!(!DecodeModel::new(&plain).per_n, "without a profile the decode step is the memory-bound legacy model");
}

/// Bad input names the key and the value.
#[test]
fn bad_mechanism_keys_are_refused_with_their_key() {
    let cases: [(&str, &str, &str, &str, &str); 9] = [
        ("mode = \"sync\"\ntrain_mini_batches = 0", "", "", "", "policy[0].train_mini_batches = 0"),
        ("mode = \"sync\"\ndispatch = \"queue\"\ntrain_mini_batches = 2", "", "", "", "placement = \"disaggregated\""),
        ("mode = \"sync\"\nplacement = \"disaggregated\"\ntrain_mini_batches = 2", "", "", "", "dispatch = \"queue\""),
        ("mode = \"sync\"\nlong_rounds = true", "", "", "", "policy[0].long_rounds = true"),
        ("mode = \"sync\"\nphases = [\"offload\", \"offload\"]", "", "", "", "policy[0].phases[1]"),
        ("mode = \"sync\"", "", "profile = \"tpu9\"", "", "hardware.profile = \"tpu9\""),
        ("mode = \"sync\"", "", "profile = \"h800\"", "", "needs model.layers"),
        ("mode = \"sync\"", "max_groups_per_engine = 0", "", "", "inference.max_groups_per_engine = 0"),
        ("mode = \"sync\"", "per_seq_overhead_us = -1.0", "", "", "inference.per_seq_overhead_us = -1"),
    ];
    for (pol, inf, hw, model, want) in cases {
        let e = parse_err(pol, inf, hw, model);
        assert!(e.contains(want), "want {want:?} in: {e}");
    }
    let e = parse_err("mode = \"sync\"\nphases = [\"teleport\"]", "", "", "");
    assert!(e.contains("teleport"), "{e}");
    let e = parse_err("mode = \"sync\"", "decode_mfu = nan", "", "");
    assert!(e.contains("inference.decode_mfu = nan"), "{e}");
}

/// Long rounds train the prompts tail batching aborted: each such prompt is consumed later unless it
/// still waits in the pool at the end (fewer than P), and trained responses are longer than when
/// aborted prompts are relaunched every step.
#[test]
fn long_rounds_train_the_aborted_prompts() {
    let pols = "[[policy]]\nname = \"relaunch\"\nmode = \"sync\"\ndispatch = \"queue\"\ntail_eta = 1.5\n\
                [[policy]]\nname = \"long\"\nmode = \"sync\"\ndispatch = \"queue\"\ntail_eta = 1.5\nlong_rounds = true\n";
    let mut sc = scenario(8, 8, 4, "", "", "", pols);
    sc.steps = 40;
    let p = sc.workload.prompts_per_step as usize;
    let mut mean_len = Vec::new();
    for k in 0..2 {
        let (r, m) = run_policy(&sc, &sc.policies[k], 0.25, 5, true).unwrap();
        assert_eq!(r.steps, 40);
        let mut aborted: HashMap<u64, bool> = HashMap::new();
        for &(prompt, _, what) in m.ledger.as_ref().unwrap() {
            match what {
                1 => {
                    aborted.entry(prompt).or_insert(false);
                }
                2 => {
                    if let Some(c) = aborted.get_mut(&prompt) {
                        *c = true;
                    }
                }
                _ => {}
            }
        }
        let never = aborted.values().filter(|c| !**c).count();
        if k == 1 {
            assert!(m.long_rounds >= 3, "long rounds: {}", m.long_rounds);
            assert!(never < p, "{never} aborted prompts never trained (at most the pool's last partial round)");
        }
        mean_len.push(m.consumed_response_tokens as f64 / m.consumed_samples as f64);
    }
    assert!(
        mean_len[1] > mean_len[0] * 1.02,
        "trained lengths: relaunch {} vs long rounds {}",
        mean_len[0],
        mean_len[1]
    );
}

/// The engine group limit serialises pinned groups on an engine: never faster than without it, and
/// with one group per engine and two groups per engine the step takes clearly longer.
#[test]
fn engine_group_limit_serialises_pinned_groups() {
    let pols = "[[policy]]\nname = \"pinned\"\nmode = \"sync\"\ndispatch = \"queue\"\n";
    let free = scenario(4, 8, 8, "", "", "", pols);
    let one = scenario(4, 8, 8, "", "", "max_groups_per_engine = 1", pols);
    let (a, _) = run_policy(&free, &free.policies[0], 0.25, 2, false).unwrap();
    let (b, m) = run_policy(&one, &one.policies[0], 0.25, 2, true).unwrap();
    assert!(
        b.step_time_s_mean > 1.2 * a.step_time_s_mean,
        "limit {} vs free {}",
        b.step_time_s_mean,
        a.step_time_s_mean
    );
    assert_eq!(m.ledger.unwrap().iter().filter(|e| e.2 == 2).count(), 6 * 8);
}

fn case(name: &str, policy: &str, baseline: Option<&str>, metric: Metric) -> Case {
    Case {
        name: name.into(),
        metric,
        policy: policy.into(),
        baseline: baseline.map(str::to_string),
        published: 1.0,
        gpus: None,
        prompts_per_step: None,
        responses_per_prompt: None,
        note: None,
    }
}

/// validate's rule: a case may use constants fitted on a different case or on its own synchronous
/// baseline, never one fitted on itself.
#[test]
fn fitted_constant_rule_refuses_a_case_fitted_on_itself() {
    let fit_on_case = Fit {
        key: "training.mfu".into(),
        value: 0.3,
        profile: Some("h800".into()),
        on_scenario: "s".into(),
        on_policy: "async".into(),
        on_case: Some("c1".into()),
    };
    let c1 = case("c1", "async", Some("sync"), Metric::Speedup);
    let c2 = case("c2", "async", Some("sync"), Metric::Speedup);
    let e = check_fit_rule(&c1, "s", &fit_on_case).unwrap_err().to_string();
    assert!(e.contains("c1") && e.contains("training.mfu"), "{e}");
    check_fit_rule(&c2, "s", &fit_on_case).expect("fitted on a different case");
    let fit_on_baseline = Fit { on_case: None, on_policy: "sync".into(), ..fit_on_case };
    check_fit_rule(&c1, "s", &fit_on_baseline).expect("its own synchronous baseline");
    let predicts_baseline = case("c3", "sync", None, Metric::StepS);
    assert!(check_fit_rule(&predicts_baseline, "s", &fit_on_baseline).is_err());
    check_fit_rule(&predicts_baseline, "other", &fit_on_baseline).expect("another scenario's baseline");
}

/// `arbor sim fit` (validate::fit_case) recovers a training MFU from the step time it produced.
#[test]
fn fit_case_recovers_the_constant_behind_a_published_value() {
    let pols = "[[policy]]\nname = \"sync\"\nmode = \"sync\"\ndispatch = \"queue\"\n\
                [[case]]\nname = \"step\"\nmetric = \"step_s\"\npolicy = \"sync\"\npublished = 1.0\n";
    let mut sc = scenario(8, 8, 4, "peak_tflops = 5.0", "", "", pols);
    sc.training.mfu = 0.2;
    let (_, rows) = arbor_sim::validate::validate_scenario(&sc, 1).unwrap();
    sc.cases[0].published = rows[0].predicted;
    sc.training.mfu = 0.6;
    let (v, pred) =
        arbor_sim::validate::fit_case(&sc, "step", arbor_sim::scenario::Knob::TrainMfu, Some((0.05, 0.9)), 1).unwrap();
    assert!((v - 0.2).abs() < 0.005, "fitted mfu {v}");
    assert!((pred / rows[0].predicted - 1.0).abs() <= 1e-3);
    assert!(arbor_sim::validate::fit_case(&sc, "nope", arbor_sim::scenario::Knob::TrainMfu, None, 1).is_err());
}

/// The engine group limit and a lockstep multi-turn barrier would wait on each other: refused.
#[test]
fn engine_group_limit_refuses_lockstep_multi_turn() {
    let text = "name = \"bad\"\nsteps = 2\n[hardware]\ngpus = 2\n[model]\nparams_b = 1.5\nkv_bytes_per_token = 28672\n\
                [inference]\nmax_groups_per_engine = 1\n[workload]\nprompts_per_step = 4\nresponses_per_prompt = 2\n\
                prompt_tokens = 8\nresponse_tokens = { kind = \"constant\", value = 10 }\nmax_response_tokens = 16\n\
                turns = { kind = \"constant\", value = 3 }\n[[policy]]\nname = \"p\"\nmode = \"sync\"\ndispatch = \"queue\"\n";
    let e = format!("{:#}", Scenario::parse(text, Path::new(".")).unwrap_err());
    assert!(e.contains("inference.max_groups_per_engine = 1") && e.contains("lockstep"), "{e}");
    let ok = text.replace("dispatch = \"queue\"\n", "dispatch = \"queue\"\nenv_async = true\n");
    let sc = Scenario::parse(&ok, Path::new(".")).unwrap();
    let (r, _) = run_policy(&sc, &sc.policies[0], 0.25, 1, false).unwrap();
    assert_eq!(r.steps, 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Fixed batches (arbor's continuous rollout): a prompt starts only once its batch is within
    /// ⌈α⌉ versions, so nothing is ever aborted and staleness never exceeds ⌈α⌉; and refilling
    /// group by group is never slower than launching whole batches at the same α.
    #[test]
    fn fixed_batches_never_abort_and_keep_the_bound(alpha in 0u32..4, half in any::<bool>(), gpus in 4u32..12, prompts in 2u32..10, n in 1u32..5, seed in 0u64..500, rep in any::<bool>()) {
        let a = if half && alpha > 0 { f64::from(alpha) - 0.5 } else { f64::from(alpha) };
        let pols = format!(
            "[[policy]]\nname = \"fixed\"\nmode = \"async\"\nplacement = \"disaggregated\"\nalpha = {a}\nfixed_batches = true\nprompt_replication = {rep}\n\
             [[policy]]\nname = \"batch\"\nmode = \"async\"\nplacement = \"disaggregated\"\nalpha = {a}\nbatch_rollout = true\nprompt_replication = {rep}\n"
        );
        let sc = scenario(gpus, prompts, n, "peak_tflops = 2.0", "", "", &pols);
        let (fixed, _) = run_policy(&sc, &sc.policies[0], 0.25, seed, false).unwrap();
        let (batch, _) = run_policy(&sc, &sc.policies[1], 0.25, seed, false).unwrap();
        prop_assert_eq!(fixed.aborted_samples, 0);
        prop_assert!(f64::from(fixed.staleness_max) <= a.ceil(), "staleness {} > ⌈{}⌉", fixed.staleness_max, a);
        prop_assert!(fixed.makespan_s <= batch.makespan_s * 1.02 + 1e-6, "fixed {} s vs whole batches {} s", fixed.makespan_s, batch.makespan_s);
    }
}

/// Fixed batches use the staleness they are allowed (at α = 2, with training as long as
/// generation, samples run two versions behind), and the key is refused where it means nothing.
#[test]
fn fixed_batches_use_the_bound_and_are_refused_where_they_mean_nothing() {
    let pols = "[[policy]]\nname = \"fixed\"\nmode = \"async\"\nplacement = \"disaggregated\"\nalpha = 2\nfixed_batches = true\n";
    let sc = scenario(8, 8, 4, "peak_tflops = 2.0", "", "", pols);
    let (r, _) = run_policy(&sc, &sc.policies[0], 0.25, 1, false).unwrap();
    assert_eq!((r.staleness_max, r.aborted_samples), (2, 0));
    for bad in [
        "mode = \"sync\"\nfixed_batches = true",
        "mode = \"async\"\nplacement = \"disaggregated\"\nalpha = 1\nfixed_batches = true\nbatch_rollout = true",
        "mode = \"async\"\nplacement = \"disaggregated\"\nalpha = inf\nfixed_batches = true",
        "mode = \"async\"\nplacement = \"disaggregated\"\nalpha = 1\nfixed_batches = true\ntail_eta = 1.5",
    ] {
        let e = parse_err(bad, "", "", "");
        assert!(e.contains("fixed_batches"), "{bad}: {e}");
    }
}
