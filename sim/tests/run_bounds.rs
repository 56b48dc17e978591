//! Runs stay bounded and report what they simulated: async launching at α = ∞ with environment
//! latency, an agentic run at 10,240 GPUs, event times under huge latency draws, and the split a
//! split search reports.

use arbor_sim::run::{run_policy, run_policy_best};
use arbor_sim::scenario::{Mode, Placement, Scenario};
use std::path::Path;

fn shipped(name: &str) -> Scenario {
    Scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(name)).unwrap()
}

/// `arbor sim sweep --scenario sim/scenarios/roll-flash-env-latency.toml --gpus 8 --alpha inf`: the
/// samples waiting on environment resets and steps count as in flight, so launching stops once the
/// workers' slots (6 workers × 128) and the queue allowance are covered (about 98 groups of 8 at
/// t = 0, then one more per 8 finished samples) instead of launching 2^20 groups at t = 0.
#[test]
fn unbounded_alpha_with_environment_latency_launches_a_bounded_number_of_groups() {
    let mut sc = shipped("roll-flash-env-latency.toml");
    sc.steps = 2;
    sc.warmup_steps = 1;
    // Fail fast instead of simulating millions of runaway trajectories.
    sc.limits.events_max = 3_000_000;
    let mut pol = sc.policies[0].clone();
    (pol.mode, pol.placement, pol.alpha) = (Mode::Async, Placement::Disaggregated, f64::INFINITY);
    let (r, m) = run_policy(&sc, &pol, sc.training.train_fraction, 1, true).unwrap();
    assert_eq!(r.steps, 2);
    let launched = m.ledger.as_ref().unwrap().iter().filter(|e| e.2 == 0).count();
    let p = sc.workload.prompts_per_step as usize;
    assert!(launched <= 20 * p, "{launched} groups launched for 2 steps of {p} prompts");
    // The cap does not starve the workers: they stay busy.
    assert!(r.inference_busy_fraction > 0.9, "{}", r.inference_busy_fraction);
}

/// The agentic scenario at 10,240 GPUs (10,240 workers, 2,048 prompts of 8 a step, α = 1, env-level
/// async): it finishes its steps and no sample is more than ⌈α⌉ = 1 version stale; inside the run the engine checks its running count of decoding sequences against
/// the workers' every 65,536 events (sim/README.md: it took 7 s while launching summed them).
#[test]
fn an_agentic_async_run_at_ten_thousand_gpus_keeps_its_staleness_bound() {
    let mut sc = shipped("roll-flash-env-latency.toml");
    (sc.steps, sc.warmup_steps, sc.hardware.gpus, sc.workload.prompts_per_step) = (3, 0, 10_240, 2_048);
    let mut pol = sc.policies[1].clone();
    assert!(pol.env_async, "the shipped scenario's second policy is env-level async");
    (pol.mode, pol.placement, pol.alpha) = (Mode::Async, Placement::Disaggregated, 1.0);
    let (r, _) = run_policy(&sc, &pol, sc.training.train_fraction, 1, false).unwrap();
    assert_eq!((r.steps, r.gpus), (3, 10_240));
    assert!(r.inference_workers > 7_000, "{} workers", r.inference_workers);
    assert!(r.staleness_max <= 1, "staleness {} above α = 1", r.staleness_max);
    assert!(r.events > 1_000_000, "{} events", r.events);
}

/// A latency draw beyond any clock (Pareto with shape 0.01 and no max) does not wrap time around:
/// the run stops at the simulated-time limit with an error naming it.
#[test]
fn huge_latency_draws_hit_the_time_limit_instead_of_wrapping() {
    for (dispatch, key) in [("queue", "reward_s"), ("static", "reward_s"), ("queue", "env_reset_s")] {
        let text = format!(
            "name = \"huge\"\nsteps = 1\n[hardware]\ngpus = 2\n[model]\nparams_b = 1.5\nkv_bytes_per_token = 28672\n\
             [workload]\nprompts_per_step = 2\nresponses_per_prompt = 2\nprompt_tokens = 8\n\
             response_tokens = {{ kind = \"constant\", value = 10 }}\nmax_response_tokens = 16\n\
             {key} = {{ kind = \"pareto\", scale = 1, shape = 0.01 }}\n\
             [[policy]]\nname = \"p\"\nmode = \"sync\"\ndispatch = \"{dispatch}\"\n"
        );
        let sc = Scenario::parse(&text, Path::new(".")).unwrap();
        let e = match run_policy(&sc, &sc.policies[0], 0.25, 1, false) {
            Ok((r, _)) => panic!("{dispatch}/{key}: finished, makespan {} s", r.makespan_s),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("limits.sim_time_s_max = 100000000"), "{dispatch}/{key}: {e}");
    }
}

/// With whole nodes every split-search candidate of a 2-node job is the same 8/8 split: it runs
/// once, and the result reports the split simulated (0.5), not the first fraction asked for.
#[test]
fn split_search_reports_the_split_it_simulated_and_runs_each_once() {
    let text = "name = \"split\"\nsteps = 3\nwarmup_steps = 1\n[hardware]\ngpus = 16\ngpus_per_node = 8\n\
                [model]\nparams_b = 1.5\nkv_bytes_per_token = 28672\n[workload]\nprompts_per_step = 8\n\
                responses_per_prompt = 2\nprompt_tokens = 8\nresponse_tokens = { kind = \"constant\", value = 50 }\n\
                max_response_tokens = 64\n[[policy]]\nname = \"search\"\nmode = \"async\"\nplacement = \"disaggregated\"\n\
                alpha = 1\nsplit_search = true\n";
    let sc = Scenario::parse(text, Path::new(".")).unwrap();
    let best = run_policy_best(&sc, &sc.policies[0], 1).unwrap();
    assert_eq!((best.train_gpus, best.train_fraction), (8, Some(0.5)));
    let (one, _) = run_policy(&sc, &sc.policies[0], 0.125, 1, false).unwrap();
    assert_eq!(best.events, one.events, "a split already tried was run again");
    assert_eq!(one.train_fraction, Some(0.5));
    // 3 nodes: fractions 1/8, 1/4 and 3/8 round to one trainer node, 1/2 (12 GPUs, 1.5 nodes) to two.
    let mut three = sc.clone();
    three.hardware.gpus = 24;
    let r = run_policy_best(&three, &three.policies[0], 1).unwrap();
    assert!([8, 16].contains(&r.train_gpus) && r.train_fraction == Some(r.train_gpus as f64 / 24.0), "{r:?}");
    let (a, _) = run_policy(&three, &three.policies[0], 0.125, 1, false).unwrap();
    let (b, _) = run_policy(&three, &three.policies[0], 0.5, 1, false).unwrap();
    assert_eq!(r.events, a.events + b.events);
}
