//! Input the simulator cannot honour is refused with the key and the value: a disaggregated split
//! with no room for one inference worker, policy keys the policy's mode or placement never reads,
//! and a validation case or a sweep point whose overrides break a range (checked as the file is).

use arbor_sim::scenario::Scenario;
use arbor_sim::sweep::SweepSpec;
use arbor_sim::validate::validate_scenario;
use std::path::Path;

/// A small scenario; `hardware` and `training` are extra lines of those tables, `rest` the
/// `[[policy]]` (and `[[case]]`) tables.
fn text(gpus: u32, tp: u32, hardware: &str, training: &str, rest: &str) -> String {
    format!(
        "name = \"r\"\nsteps = 3\nwarmup_steps = 1\n[hardware]\ngpus = {gpus}\n{hardware}\n[model]\nparams_b = 1.5\n\
         kv_bytes_per_token = 28672\n[inference]\ntp = {tp}\nmax_concurrency = 16\nkv_capacity_tokens = inf\n\
         [training]\n{training}\n[workload]\nprompts_per_step = 4\nresponses_per_prompt = 2\nprompt_tokens = 8\n\
         response_tokens = {{ kind = \"constant\", value = 10 }}\nmax_response_tokens = 16\n{rest}\n"
    )
}

fn parse(t: &str) -> anyhow::Result<Scenario> {
    Scenario::parse(t, Path::new("."))
}

fn refused(t: &str) -> String {
    match parse(t) {
        Ok(_) => panic!("accepted:\n{t}"),
        Err(e) => format!("{e:#}"),
    }
}

const ASYNC: &str = "[[policy]]\nname = \"a\"\nmode = \"async\"\nplacement = \"disaggregated\"\nalpha = 1\n";

#[test]
fn a_split_without_room_for_one_inference_worker_is_refused() {
    // 4 GPUs, TP 4: the trainer's GPU leaves 3 to generate.
    let e = refused(&text(4, 4, "", "", ASYNC));
    assert!(e.contains("policy[0]") && e.contains("hardware.gpus = 4") && e.contains("inference.tp = 4"), "{e}");
    assert!(e.contains("training.train_fraction = 0.25") && e.contains("needs hardware.gpus >= 5"), "{e}");
    // One GPU cannot both train and generate.
    let e = refused(&text(1, 1, "", "", ASYNC));
    assert!(e.contains("hardware.gpus = 1") && e.contains("0 generating"), "{e}");
    // A policy's own fraction, and whole nodes (gpus_per_node 4 < tp 8), are named.
    let own = ASYNC.replace("alpha = 1\n", "alpha = 1\ntrain_fraction = 0.5\n");
    let e = refused(&text(8, 8, "", "", &own));
    assert!(e.contains("policy[0].train_fraction = 0.5"), "{e}");
    // 14 GPUs, nodes of 4: 0.4 · 14 rounds to 6 trainer GPUs, then to 2 whole nodes, leaving 6 < TP 8.
    let e = refused(&text(14, 8, "gpus_per_node = 4", "train_fraction = 0.4", ASYNC));
    assert!(e.contains("hardware.gpus_per_node = 4") && e.contains("8 training and 6 generating"), "{e}");
    // One GPU more is enough; a colocated sync policy needs no split.
    let sc = parse(&text(5, 4, "", "", ASYNC)).unwrap();
    let (r, _) = arbor_sim::run::run_policy(&sc, &sc.policies[0], 0.25, 1, false).unwrap();
    assert_eq!((r.inference_workers, r.train_gpus), (1, 1));
    parse(&text(1, 1, "", "", "[[policy]]\nname = \"s\"\nmode = \"sync\"\n")).unwrap();
}

#[test]
fn policy_keys_without_effect_are_refused_naming_key_and_mode() {
    let sync = "mode = \"sync\"\n";
    let asy = "mode = \"async\"\nplacement = \"disaggregated\"\nalpha = 1\n";
    let off = "mode = \"one_step_off_policy\"\nplacement = \"disaggregated\"\n";
    let cases = [
        (asy, "tail_eta = 1.5", "policy[0].tail_eta = 1.5", "mode = \"async\""),
        (asy, "redundant_groups = 2", "policy[0].redundant_groups = 2", "mode = \"async\""),
        (off, "partial_rollout = true", "policy[0].partial_rollout = true", "mode = \"one_step_off_policy\""),
        (sync, "interruptible = true", "policy[0].interruptible = true", "mode = \"sync\""),
        (sync, "batch_rollout = true", "policy[0].batch_rollout = true", "mode = \"sync\""),
        (sync, "alpha = 2", "policy[0].alpha = 2", "mode = \"sync\""),
        (off, "alpha = 3", "policy[0].alpha = 3", "mode = \"one_step_off_policy\""),
        (sync, "split_search = true", "policy[0].split_search = true", "placement = \"colocated\""),
        (sync, "train_fraction = 0.5", "policy[0].train_fraction = 0.5", "placement = \"colocated\""),
        (
            "mode = \"sync\"\nplacement = \"disaggregated\"\nsplit_search = true\n",
            "train_fraction = 0.5",
            "policy[0].train_fraction = 0.5",
            "split_search = true",
        ),
    ];
    for (mode, key, want, why) in cases {
        let e = refused(&text(8, 1, "", "", &format!("[[policy]]\nname = \"p\"\n{mode}{key}\n")));
        assert!(e.contains(want) && e.contains("has no effect") && e.contains(why), "{key}: {e}");
    }
    // Where the keys act they are accepted.
    for (mode, key) in [
        (sync, "tail_eta = 1.5\nredundant_groups = 2\npartial_rollout = true"),
        (asy, "interruptible = true\nbatch_rollout = true"),
        ("mode = \"sync\"\nplacement = \"disaggregated\"\n", "split_search = true"),
        ("mode = \"sync\"\nplacement = \"disaggregated\"\n", "train_fraction = 0.5"),
    ] {
        parse(&text(8, 1, "", "", &format!("[[policy]]\nname = \"p\"\n{mode}{key}\n"))).unwrap();
    }
}

/// Every shipped scenario still parses (none sets a key where it has no effect).
#[test]
fn shipped_scenarios_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            Scenario::load(&p).unwrap_or_else(|e| panic!("{e:#}"));
            n += 1;
        }
    }
    assert!(n >= 10, "{n} scenarios");
}

/// A sweep point at alpha > 0 turns the policy async (dropping its synchronous cutoff keys, which
/// the sweep, not the user, made meaningless): it is checked as such, before any point runs.
#[test]
fn sweep_points_are_checked_as_scenario_files() {
    let tail = "[[policy]]\nname = \"tail\"\nmode = \"sync\"\ndispatch = \"queue\"\ntail_eta = 1.5\n";
    let sc = parse(&text(8, 1, "", "", tail)).unwrap();
    let ok = SweepSpec::new(sc, "r.toml", None, &[8], &[0.0, 1.0], 1).unwrap();
    assert!(ok.run_point(0).is_ok() && ok.run_point(1).is_ok());
    // --gpus 4 with inference.tp 4: fine as configured (colocated), no worker left once async.
    let sync = "[[policy]]\nname = \"s\"\nmode = \"sync\"\n";
    let sc = parse(&text(8, 4, "", "", sync)).unwrap();
    let e = format!("{:#}", SweepSpec::new(sc.clone(), "r.toml", None, &[4], &[0.0, 2.0], 1).unwrap_err());
    assert!(
        e.contains("--gpus 4 --alpha 2") && e.contains("hardware.gpus = 4") && e.contains("inference.tp = 4"),
        "{e}"
    );
    // A training layout that no longer fits the point's GPUs.
    let sc = parse(&text(8, 1, "", "tp = 8", sync)).unwrap();
    let e = format!("{:#}", SweepSpec::new(sc, "r.toml", None, &[2], &[0.0], 1).unwrap_err());
    assert!(e.contains("--gpus 2 --alpha 0") && e.contains("training.tp x training.pp = 8 x 1"), "{e}");
}

const CASE: &str = "[[policy]]\nname = \"s\"\nmode = \"sync\"\ndispatch = \"queue\"\n\
                    [[policy]]\nname = \"a\"\nmode = \"async\"\nplacement = \"disaggregated\"\nalpha = 1\n\
                    [[case]]\nname = \"c\"\nmetric = \"speedup\"\npolicy = \"a\"\nbaseline = \"s\"\npublished = 1.5\n";

#[test]
fn case_overrides_are_checked_naming_the_case_key() {
    for (over, want) in [
        ("prompts_per_step = 0", "case[0].prompts_per_step = 0"),
        ("responses_per_prompt = 5000", "case[0].responses_per_prompt = 5000"),
        ("gpus = 0", "case[0].gpus = 0"),
    ] {
        let e = refused(&text(8, 1, "", "", &format!("{CASE}{over}\n")));
        assert!(e.contains(want), "{over}: {e}");
    }
    // Overrides that break another key's range: the key and the case's override are named.
    let e = refused(&text(8, 1, "", "tp = 8", &format!("{CASE}gpus = 2\n")));
    assert!(e.contains("case[0] (c) with case[0].gpus = 2") && e.contains("training.tp x training.pp = 8 x 1"), "{e}");
    let e = refused(&text(8, 1, "", "", &format!("{CASE}gpus = 1\n")));
    assert!(e.contains("case[0].gpus = 1") && e.contains("policy[1]") && e.contains("hardware.gpus = 1"), "{e}");
    // validate checks a scenario built in code too (no NaN speedup from zero prompts).
    let mut sc = parse(&text(8, 1, "", "", CASE)).unwrap();
    assert!(validate_scenario(&sc, 1).unwrap().1[0].error.is_finite());
    sc.cases[0].prompts_per_step = Some(0);
    let e = format!("{:#}", validate_scenario(&sc, 1).unwrap_err());
    assert!(e.contains("case[0].prompts_per_step = 0"), "{e}");
}
