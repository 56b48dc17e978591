//! Hostile input and faults, kept as regression tests: every number of a run config validated (NaN,
//! ±inf, 0 and negative values of every float key), the bad cases found by trying arbor as a hostile
//! user would (lr = inf, temperature = nan, groups of one, zero-problem evaluations, wrong types,
//! a resume that silently changed the config, a diverging run), and the disk-full sequence on a
//! real small tmpfs: fill → fail (at the metrics, dump and checkpoint stages) → free → resume ends
//! bit-identical to an uninterrupted run, with an h5py-readable dump at every point.

mod common;
use arbor::config::{RunConfig, ADDITION_CONFIG};
use arbor::train::job;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tiny supervised + GRPO run (seconds on 2 cores).
fn tiny_rl(sft_steps: u64, rl_steps: u64) -> String {
    common::small_addition(sft_steps)
        + "keep_checkpoints = 20\n"
        + &format!("\n[rl]\nsteps = {rl_steps}\nprompts_per_step = 4\nsamples_per_prompt = 4\nmax_new_tokens = 5\n")
        + "eval_problems = 8\neval_samples = 2\nlog_every = 1\nfilter_zero_std = false\nlr = 1e-3\n"
}

fn parse(text: &str) -> Result<RunConfig, String> {
    RunConfig::parse(text, Path::new("hostile.toml")).map_err(|e| e.to_string())
}

fn refused(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted a bad config:\n{text}"),
        Err(e) => {
            assert!(e.contains("hostile.toml"), "the error does not name the file: {e}");
            e
        }
    }
}

// ---- every number validated ----

/// Valid configs that together hold every section with float keys. Each is parsed and written back
/// (so defaulted keys are present too) before its float keys are enumerated.
fn bases() -> Vec<String> {
    let rl = tiny_rl(2, 2);
    vec![
        // [loss], [critic], [workload], [parallel], [data] format_penalty / heldout_fraction
        rl.clone()
            + "\n[loss]\nkind = \"ppo\"\nkl_coef = 0.01\nentropy_coef = 0.01\n"
            + "\n[critic]\ncount = 2\nvalue_clip = 0.5\n"
            + "\n[workload]\nlengths = { kind = \"lognormal\", median = 4, sigma = 0.8, max = 5 }\ndecode_step_ms = 1\n"
            + "\n[parallel]\nbucket_mb = 4\n",
        // [attnrl] and [rhythm]
        rl.clone()
            + "\n[attnrl]\nstep_separators = [\"\\n\"]\ninitial_responses = 4\n"
            + "\n[rhythm]\nlayers = 1\nfai_min_offset = 1\nfai_max_offset = 4\nwaad_window = 2\n",
        // [env] with latency distributions
        rl.clone()
            + "\n[env]\nkind = \"guess\"\nreset_latency_ms = { kind = \"lognormal\", median = 1, sigma = 1.0, max = 5 }\n"
            + "step_latency_ms = { kind = \"gaussian\", mean = 1, std = 0.5 }\nfailure_rate = 0.05\n",
        // [async]
        rl + "\n[async]\nrollout_ranks = 1\nalpha = 1.0\n",
    ]
}

fn float_leaves(v: &toml::Value, path: String, out: &mut Vec<String>) {
    match v {
        toml::Value::Float(_) => out.push(path),
        toml::Value::Table(t) => {
            for (k, x) in t {
                float_leaves(x, if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out);
            }
        }
        _ => {}
    }
}

fn set(v: &mut toml::Value, path: &str, x: f64) {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get_mut(part).unwrap_or_else(|| panic!("no key {path}"));
    }
    *cur = toml::Value::Float(x);
}

/// Float keys where 0 is a documented, meaningful value (the reason beside each).
const ZERO_OK: &[&str] = &[
    "rl.grad_clip",                     // 0 disables clipping
    "rl.temperature",                   // 0 = greedy rollouts
    "train.grad_clip",                  // 0 disables clipping
    "train.min_lr",                     // decay to 0
    "train.weight_decay",               // no decay
    "train.beta1",                      // no momentum
    "train.beta2",                      // RMS of the last gradient only
    "parallel.collective_timeout_s",    // 0 = never time out
    "parallel.step_timeout_s",          // 0 = never time out
    "data.format_penalty",              // no penalty
    "data.heldout_fraction",            // no held-out split of a jsonl dataset
    "loss.kl_coef",                     // no KL term (no reference forward)
    "loss.entropy_coef",                // no entropy bonus
    "loss.dual_clip",                   // 0 = dual clip off
    "critic.value_clip",                // 0 = off
    "critic.gae_lambda",                // λ = 0: one-step TD
    "critic.gae_gamma",                 // γ = 0
    "critic.mask_low_frac",             // mask nothing
    "critic.entropy_exclude_high_frac", // exclude nothing
    "workload.decode_step_ms",          // no emulated decode time
    "env.failure_rate",                 // no failures
    "async.alpha",                      // synchronous
    "rhythm.alpha",                     // a dominated anchor keeps all its amplification
    "rhythm.preplan_frac",              // no pre-plan tokens
    "rhythm.anchor_frac",               // no anchors
    "workload.lengths.min",             // a distribution's floor
    "workload.lengths.sigma",           // a lognormal of zero spread is a constant
    "env.reset_latency_ms.min",         // no floor
    "env.reset_latency_ms.sigma",       // constant latency
    "env.step_latency_ms.min",          // no floor
    "env.step_latency_ms.std",          // constant latency
    "env.step_latency_ms.mean",         // zero mean latency (clamped at the floor)
    "attnrl.rho",                       // branch at every eligible step
    "attnrl.min_branch_distance_frac",  // no distance constraint
    "attnrl.dynamic_batch_lambda",      // no dynamic batch growth
];

/// Float keys where a negative value is meaningful.
const NEGATIVE_OK: &[&str] = &[
    "env.step_latency_ms.mean", // a gaussian's mean below its floor (draws are clamped at `min`)
];

#[test]
fn every_float_key_refuses_nan_infinities_and_out_of_range_values_naming_the_key() {
    let (mut checked, mut failures) = (0, Vec::new());
    for base in bases() {
        let cfg = parse(&base).unwrap_or_else(|e| panic!("base config refused: {e}\n{base}"));
        let text = toml::to_string(&cfg).unwrap();
        let tree: toml::Value = toml::from_str(&text).unwrap();
        let mut keys = Vec::new();
        float_leaves(&tree, String::new(), &mut keys);
        // distribution tables (lengths, latencies) are checked with their parents' names
        for key in keys {
            let last = key.rsplit('.').next().unwrap();
            for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -1.5] {
                let mut t = tree.clone();
                set(&mut t, &key, x);
                let bad = toml::to_string(&t).unwrap();
                match parse(&bad) {
                    Ok(_) if x == 0.0 && ZERO_OK.contains(&key.as_str()) => {}
                    Ok(_) if x < 0.0 && NEGATIVE_OK.contains(&key.as_str()) => {}
                    // a distribution's cap: inf (its default) means none
                    Ok(_) if x == f64::INFINITY && key.ends_with(".max") => {}
                    Ok(_) => failures.push(format!("{key} = {x} was accepted")),
                    Err(e) if !e.contains(last) => {
                        failures.push(format!("{key} = {x}: the error does not name `{last}`: {e}"))
                    }
                    Err(_) => {}
                }
                checked += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} cases:\n{}", failures.len(), failures.join("\n"));
    assert!(checked > 150, "only {checked} cases: the bases lost their sections?");
}

#[test]
fn the_bad_cases_found_by_hand_are_refused_naming_the_key() {
    let rl = tiny_rl(2, 2);
    // lr = inf trained to NaN and exited 0; lr = nan was refused, inf was not
    let e = refused(&rl.replace("lr = 3e-3", "lr = inf"));
    assert!(e.contains("train.lr") && e.contains("finite"), "{e}");
    let e = refused(&rl.replace("lr = 1e-3", "lr = inf"));
    assert!(e.contains("rl.lr"), "{e}");
    // temperature = nan sampled at T = 1
    let e = refused(&(rl.clone() + "temperature = nan\n"));
    assert!(e.contains("rl.temperature"), "{e}");
    let e = refused(&(rl.clone() + "temperature = -1.0\n"));
    assert!(e.contains("rl.temperature"), "{e}");
    // a group of one never had an advantage: "kept 0/4" every step, exit 0
    let e = refused(&rl.replace("samples_per_prompt = 4", "samples_per_prompt = 1"));
    assert!(e.contains("rl.samples_per_prompt") && e.contains("at least 2"), "{e}");
    // eval_problems = 0 logged -0.0 as a solve rate
    let e = refused(&rl.replace("eval_problems = 8\neval_samples", "eval_problems = 0\neval_samples"));
    assert!(e.contains("rl.eval_problems"), "{e}");
    let e = refused(&ADDITION_CONFIG.replace("eval_problems = 256", "eval_problems = 0"));
    assert!(e.contains("train.eval_problems"), "{e}");
    // a wrong type named `line 23` rather than the key
    let e = refused(&ADDITION_CONFIG.replace("steps = 400", "steps = \"many\""));
    assert!(e.contains("train.steps") && e.contains("line"), "{e}");
    let e = refused(&ADDITION_CONFIG.replace("hidden_size = 128", "hidden_size = 1.5"));
    assert!(e.contains("model.hidden_size"), "{e}");
    // batch_size = 0 was reported under train.steps
    let e = refused(&ADDITION_CONFIG.replace("batch_size = 64", "batch_size = 0"));
    assert!(e.contains("train.batch_size"), "{e}");
    // an unknown key inside a section is named with its section
    let e = refused(&ADDITION_CONFIG.replace("batch_size = 64", "batch_size = 64\nbatchsize = 3"));
    assert!(e.contains("train.batchsize"), "{e}");
    // a NaN inside an inline distribution table
    let e = refused(&(rl + "\n[workload]\nlengths = { kind = \"lognormal\", median = 4, sigma = nan, max = 5 }\n"));
    assert!(e.contains("workload.lengths.sigma"), "{e}");
}

// ---- training-time guard ----

#[test]
fn a_diverging_run_skips_non_finite_updates_then_stops_without_writing_nan_weights() {
    let dir = tempfile::tempdir().unwrap();
    // a finite but absurd learning rate: the first update sends the weights to ~1e30, the next
    // forward overflows, every later loss and gradient is NaN
    let text = ADDITION_CONFIG
        .replace("hidden_size = 128", "hidden_size = 32")
        .replace("intermediate_size = 384", "intermediate_size = 64")
        .replace("num_layers = 4", "num_layers = 2")
        .replace("steps = 400", "steps = 12")
        .replace("batch_size = 64", "batch_size = 8")
        .replace("eval_problems = 256", "eval_problems = 8")
        .replace("lr = 3e-3", "lr = 1e30")
        .replace("min_lr = 3e-4", "min_lr = 0")
        .replace("warmup_steps = 20", "warmup_steps = 0")
        + "keep_checkpoints = 20\nmax_nonfinite_steps = 2\n";
    let text = text + "checkpoint_every = 1\n";
    let mut cfg = parse(&text).unwrap();
    cfg.run.out_dir = dir.path().to_path_buf();
    let err = job::run(&cfg, None, &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("max_nonfinite_steps = 2") && err.contains("3rd step in a row"), "{err}");
    // a resume from the checkpoint inside the streak (a requeue) continues its count: it stops
    // at the same step, with the same message, instead of granting the streak a fresh budget
    {
        let run = dir.path().join("addition-sft");
        let (_, last) = arbor::train::checkpoint::list_checkpoints(&run).unwrap().pop().unwrap();
        let state = arbor::train::checkpoint::load_checkpoint(&last).unwrap().state;
        assert_eq!(state.nonfinite_in_a_row, 2, "the checkpoint before the stop was written after two bad steps");
        let again = job::run(&cfg, Some(&last), &mut Vec::new()).unwrap_err().to_string();
        assert_eq!(again, err, "a resumed diverging run stopped elsewhere");
    }
    let run = dir.path().join("addition-sft");
    let lines = common::metrics_without_clock(&run);
    let skipped: Vec<u64> = lines.iter().filter_map(|l| l["skipped_updates"].as_u64()).collect();
    assert!(skipped.ends_with(&[1, 1, 1]), "the last three steps were not skipped: {skipped:?}");
    // no checkpoint holds a non-finite weight
    let cks = arbor::train::checkpoint::list_checkpoints(&run).unwrap();
    assert!(!cks.is_empty());
    for (step, ck) in cks {
        let loaded = arbor::train::checkpoint::load_checkpoint(&ck).unwrap();
        assert!(loaded.params.data.iter().all(|x| x.is_finite()), "checkpoint step-{step} holds a non-finite weight");
        assert!(loaded.exp_avg_sq.iter().all(|x| x.is_finite()), "checkpoint step-{step} holds a non-finite moment");
    }
}

// ---- resume records ----

/// A superseded RL checkpoint (a branch left by a rollback to before the RL phase, whose new branch
/// saved a KL reference of its own) resumed into another directory continues its own branch: it
/// finds that branch's config, metrics and reference beside it, and its next step equals the step
/// the branch took before it was left, bit for bit.
#[test]
fn a_superseded_rl_checkpoint_resumes_its_own_branch_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = parse(&tiny_rl(2, 3)).unwrap(); // kl_coef = 0.001 (the default): a reference
    cfg.run.out_dir = dir.path().join("a");
    job::run(&cfg, None, &mut Vec::new()).unwrap();
    let run = dir.path().join("a/addition-sft");
    // a rollback to supervised step 1 with another learning rate: the new branch's RL phase
    // starts from other weights and replaces the run's reference
    let mut changed = cfg.clone();
    changed.train.lr *= 2.0;
    changed.allow_config_change = true;
    let reference = |run: &Path| std::fs::read(run.join("reference/model.safetensors")).unwrap();
    let left_reference = reference(&run);
    job::run(&changed, Some(&run.join("checkpoints/step-1")), &mut Vec::new()).unwrap();
    assert_ne!(reference(&run), left_reference, "the new branch saved a reference of its own");
    let aside = run.join("checkpoints/superseded-after-step-1");
    assert_eq!(reference(&aside), left_reference, "the left branch's reference is kept beside it");
    // its step 4 resumed in another directory: step 5 as the left branch took it
    let mut elsewhere = cfg.clone();
    elsewhere.run.out_dir = dir.path().join("b");
    job::run(&elsewhere, Some(&aside.join("step-4")), &mut Vec::new()).unwrap();
    let resumed = dir.path().join("b/addition-sft");
    let weights = |ck: &Path| arbor::train::checkpoint::load_checkpoint(ck).unwrap().params.data;
    assert_eq!(weights(&resumed.join("checkpoints/step-5")), weights(&aside.join("step-5")));
    assert_eq!(reference(&resumed), left_reference);
    assert_eq!(common::metrics_without_clock(&resumed), common::metrics_without_clock(&aside));
}

#[test]
fn a_resume_that_changes_a_setting_is_refused_unless_allowed_and_then_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = parse(&tiny_rl(2, 2)).unwrap();
    cfg.run.out_dir = dir.path().to_path_buf();
    job::run(&cfg, None, &mut Vec::new()).unwrap();
    let run = dir.path().join("addition-sft");
    let ck = run.join("checkpoints/step-3");
    // a stale temporary checkpoint folder (a writer killed mid-save) is removed by the next start
    let stale = run.join("checkpoints/.step-9.tmp-12345");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), vec![0u8; 4096]).unwrap();
    let recorded = std::fs::read_to_string(run.join("config.toml")).unwrap();

    let metrics_before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let mut changed = cfg.clone();
    changed.rl.as_mut().unwrap().lr = 2e-3;
    let err = job::run(&changed, Some(&ck), &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("rl.lr") && err.contains("--allow-config-change") && err.contains("0.001"), "{err}");
    // a refused resume leaves the run as it was: its config, its later checkpoint, its metrics
    assert_eq!(std::fs::read_to_string(run.join("config.toml")).unwrap(), recorded, "config.toml was rewritten");
    assert!(run.join("checkpoints/step-4").is_dir(), "a refused resume moved the later checkpoint aside");
    assert_eq!(
        std::fs::read(run.join("metrics.jsonl")).unwrap(),
        metrics_before,
        "a refused resume trimmed the metrics"
    );

    // the same config (another thread count and directory are not changes) resumes
    let mut same = cfg.clone();
    same.run.threads = 1;
    job::run(&same, Some(&ck), &mut Vec::new()).unwrap();
    assert!(!stale.exists(), "the stale temporary checkpoint folder is still there");
    // the rollback kept the metrics as they were beside the superseded step-4
    let aside = run.join("checkpoints/superseded-after-step-3");
    assert!(aside.join("step-4").is_dir());
    assert_eq!(std::fs::read(aside.join("metrics.jsonl")).unwrap(), metrics_before);
    // the superseded branch cannot be resumed on top of the run's record, which is the other one's
    let metrics_now = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let err = job::run(&same, Some(&aside.join("step-4")), &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("superseded checkpoint"), "{err}");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics_now, "a refused resume touched the run");

    changed.allow_config_change = true;
    job::run(&changed, Some(&ck), &mut Vec::new()).unwrap();
    let history = std::fs::read_to_string(run.join("config-history.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(history.lines().next().unwrap()).unwrap();
    assert_eq!(line["from_step"], 4);
    assert_eq!(line["changes"]["rl.lr"]["was"], "0.001", "{line}");
    let before: RunConfig =
        toml::from_str(&std::fs::read_to_string(run.join("config.until-step-3.toml")).unwrap()).unwrap();
    assert_eq!(before.rl.unwrap().lr, 1e-3);
    let now: RunConfig = toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    assert_eq!(now.rl.unwrap().lr, 2e-3);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let event = metrics.lines().find(|l| l.contains("config_change")).expect("no config_change event");
    let event: serde_json::Value = serde_json::from_str(event).unwrap();
    assert_eq!(event["step"], 3);
    assert!(event["changes"]["rl.lr"].is_object(), "{event}");

    // a second allowed change at the same step keeps both earlier configs
    changed.rl.as_mut().unwrap().lr = 3e-3;
    job::run(&changed, Some(&ck), &mut Vec::new()).unwrap();
    let lr_of = |f: &str| -> f32 {
        let c: RunConfig = toml::from_str(&std::fs::read_to_string(run.join(f)).unwrap()).unwrap();
        c.rl.unwrap().lr
    };
    assert_eq!((lr_of("config.until-step-3.toml"), lr_of("config.until-step-3.1.toml")), (1e-3, 2e-3));
    // the run's history is its branch's (1e-3 until step 3, then 3e-3); the branch the second resume
    // left (2e-3 from step 4) keeps its own beside its checkpoints
    let history = std::fs::read_to_string(run.join("config-history.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = history.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{history}");
    assert_eq!((&lines[0]["changes"]["rl.lr"]["now"], &lines[0]["from_step"]), (&"0.003".into(), &4.into()));
    assert_eq!(lines[0]["previous"], "config.until-step-3.1.toml");
    let left = std::fs::read_to_string(run.join("checkpoints/superseded-after-step-3.2/config-history.jsonl")).unwrap();
    assert!(left.lines().count() == 1 && left.contains("\"now\":\"0.002\""), "{left}");

    // a rollback to before the changes is compared with the config of its own steps (lr 1e-3, kept in
    // the checkpoint), not with the run's newest: the original config resumes without a flag, and
    // the newest one is a change
    let early = run.join("checkpoints/step-2");
    assert!(early.join("run_config.toml").is_file());
    let mut newest = cfg.clone();
    newest.rl.as_mut().unwrap().lr = 3e-3;
    let err = job::run(&newest, Some(&early), &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("rl.lr") && err.contains("0.001 → 0.003"), "{err}");
    job::run(&cfg, Some(&early), &mut Vec::new()).unwrap();
    assert_eq!(lr_of("config.toml"), 1e-3);
    // and the newest config it replaced is kept too
    assert_eq!(lr_of("config.until-step-2.toml"), 3e-3);
}

// ---- the disk-full sequence ----

fn arbor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_arbor")
}

/// The datasets of a dump as h5py reads them (values only; the attributes hold the run's paths).
fn dump_values(json: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    let sets = v["datasets"].as_object().unwrap();
    serde_json::Value::Object(sets.iter().map(|(k, d)| (k.clone(), d["values"].clone())).collect())
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).trim().to_string()
}

#[test]
fn a_full_disk_at_every_stage_then_a_resume_on_a_freed_disk_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("diskfull.toml");
    let text = tiny_rl(2, 6).replace("name = \"addition-sft\"", "name = \"diskfull\"") + "\n[loss]\nkl_coef = 0.0\n";
    std::fs::write(&cfg_path, &text).unwrap();
    // the uninterrupted run
    let reference = dir.path().join("ref");
    let st = Command::new(arbor_bin())
        .args(["train", "--config"])
        .arg(&cfg_path)
        .arg("--out-dir")
        .arg(&reference)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let ref_run = reference.join("diskfull");
    let last = ref_run.join("checkpoints/step-8/model.safetensors");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/diskfull.sh");
    let reader = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/read_trajectories.py");
    let ref_dump = dir.path().join("ref-dump.json");
    let o = Command::new("python3").arg(&reader).arg(ref_run.join("trajectories.h5")).output().unwrap();
    assert!(o.status.success(), "h5py cannot read the reference dump: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&ref_dump, &o.stdout).unwrap();

    // free space left on the tmpfs when each run starts, in KiB: from "the first checkpoint does
    // not fit" to "the whole run fits" (the run needs ~1.4 MB beside each checkpoint, ~1.7 MB beside
    // each dump append: its estimate plus a 1 MiB reserve)
    let frees = ["1300", "1500", "1700", "1800", "1900", "2100", "2300", "3000"];
    let (mnt, out) = (dir.path().join("mnt"), dir.path().join("out"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    // a private mount namespace (as root, or as a user through a user namespace): no privileges
    // are kept and the tmpfs disappears with the script
    let probe =
        Command::new("unshare").args(["-rm", "sh", "-c", "mount -t tmpfs none \"$0\"", mnt.to_str().unwrap()]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        other => {
            // where no mount namespace can be made, the guarantee rests on the free-space checks
            // tested in src/io/space.rs; say so loudly instead of pretending
            eprintln!("SKIPPED the tmpfs disk-full sequence: cannot mount a private tmpfs here ({other:?})");
            return;
        }
    }
    let st = Command::new("unshare")
        .args(["-rm", "bash"])
        .arg(&script)
        .arg(arbor_bin())
        .arg(&cfg_path)
        .arg("diskfull")
        .arg(&mnt)
        .arg(&out)
        .args(frees)
        .output()
        .unwrap();
    assert!(st.status.success(), "diskfull.sh: {}", String::from_utf8_lossy(&st.stderr));
    let want_metrics = common::metrics_without_clock(&ref_run);
    let want_weights = std::fs::read(&last).unwrap();
    let want_dump = dump_values(&ref_dump);
    let mut stages = std::collections::BTreeSet::new();
    for free in frees {
        let case = out.join(format!("free-{free}"));
        let rc = read(case.join("first.rc"));
        if rc != "0" {
            let err = read(case.join("first.err"));
            assert!(
                err.contains("disk full") && err.contains("needs about") && err.contains("MB are free"),
                "{free} KiB: {err}"
            );
            for stage in ["metrics.jsonl", "trajectory dump", "checkpoint"] {
                if err.contains(&format!("writing {stage}")) || err.contains(&format!("writing the {stage}")) {
                    stages.insert(stage);
                }
            }
        }
        let dump_rc = read(case.join("first-dump.rc"));
        assert!(
            dump_rc == "0" || dump_rc == "none",
            "{free} KiB: the dump was unreadable after the failure: {}",
            read(case.join("first-dump.err"))
        );
        assert_eq!(read(case.join("first-tmp")), "0", "{free} KiB: a temporary checkpoint folder was left behind");
        assert_eq!(
            read(case.join("resume.rc")),
            "0",
            "{free} KiB: the resume failed: {}",
            read(case.join("resume.err"))
        );
        assert!(
            std::fs::read(case.join("model.safetensors")).unwrap() == want_weights,
            "{free} KiB: final weights differ"
        );
        assert_eq!(common::metrics_without_clock(&case), want_metrics, "{free} KiB: metrics differ");
        assert_eq!(dump_values(&case.join("dump.json")), want_dump, "{free} KiB: the dump differs");
    }
    assert_eq!(
        stages.len(),
        3,
        "the sweep did not stop the run at every stage (metrics, dump, checkpoint): {stages:?}"
    );
}

#[test]
fn a_manifest_vouching_for_nothing_or_for_files_outside_the_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = parse(
        &ADDITION_CONFIG
            .replace("hidden_size = 128", "hidden_size = 32")
            .replace("intermediate_size = 384", "intermediate_size = 64")
            .replace("steps = 400", "steps = 1")
            .replace("batch_size = 64", "batch_size = 4")
            .replace("eval_problems = 256", "eval_problems = 4"),
    )
    .unwrap();
    cfg.run.out_dir = dir.path().to_path_buf();
    job::run(&cfg, None, &mut Vec::new()).unwrap();
    let ck = dir.path().join("addition-sft/checkpoints/step-1");
    let manifest = ck.join("manifest.json");
    let good = std::fs::read_to_string(&manifest).unwrap();
    arbor::train::checkpoint::load_checkpoint(&ck).unwrap();
    std::fs::write(&manifest, r#"{"files": {}}"#).unwrap();
    let e = arbor::train::checkpoint::load_checkpoint(&ck).unwrap_err().to_string();
    assert!(e.contains("manifest.json") && e.contains("files.config.json"), "{e}");
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["files"]["../../config.toml"] = serde_json::json!({"bytes": 1, "checksum64": "0"});
    std::fs::write(&manifest, v.to_string()).unwrap();
    let e = arbor::train::checkpoint::load_checkpoint(&ck).unwrap_err().to_string();
    assert!(e.contains("../../config.toml") && e.contains("inside the checkpoint"), "{e}");
}
