//! Exact resume inside the RL phase: 3 RL steps + resume + 3 RL steps equals 6 straight steps bit
//! for bit (weights, metrics, checkpoints), also from the supervised/RL boundary, with the KL
//! reference, mini-batches and accumulation in play; and a SIGKILLed RL run resumed with
//! `--resume latest` ends identical to an uninterrupted one.

mod common;
use arbor::config::{RunConfig, ADDITION_CONFIG};
use arbor::io::load_hf_dir;
use arbor::train::checkpoint::{list_checkpoints, load_checkpoint};
use arbor::train::job;
use common::metrics_without_clock as metrics;
use std::path::Path;
use std::process::Command;

const SFT_STEPS: u64 = 2;

fn config_text(rl_steps: u64) -> String {
    ADDITION_CONFIG
        .replace("hidden_size = 128", "hidden_size = 32")
        .replace("intermediate_size = 384", "intermediate_size = 64")
        .replace("num_layers = 4", "num_layers = 2")
        .replace("steps = 400", &format!("steps = {SFT_STEPS}"))
        .replace("batch_size = 64", "batch_size = 8")
        .replace("eval_problems = 256", "eval_problems = 8")
        + "checkpoint_every = 1\nkeep_checkpoints = 20\n"
        + &format!("\n[rl]\nsteps = {rl_steps}\nprompts_per_step = 4\nsamples_per_prompt = 4\nmax_new_tokens = 5\n")
        + "eval_problems = 8\neval_samples = 2\neval_every = 2\nlog_every = 1\nfilter_zero_std = false\n"
        + "mini_batches = 2\nmicro_batch = 3\nepochs = 2\nlr = 1e-3\n"
        + "\n[loss]\nkind = \"ppo\"\nkl_coef = 0.01\nentropy_coef = 0.01\n"
}

fn config(out: &Path, rl_steps: u64) -> RunConfig {
    let mut c = RunConfig::parse(&config_text(rl_steps), Path::new("rl_resume.toml")).unwrap();
    c.run.out_dir = out.to_path_buf();
    c
}

#[test]
fn three_plus_three_rl_steps_equal_six() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = job::run(&config(a.path(), 6), None, &mut Vec::new()).unwrap();
    // (the second run mirrors its metrics into TensorBoard events: results are the same)
    let with_events = |mut c: RunConfig| {
        c.run.tensorboard = true;
        c
    };
    job::run(&with_events(config(b.path(), 6)), None, &mut Vec::new()).unwrap();
    let run_b = b.path().join("addition-sft");
    let events_before = events_of(&run_b);
    // inside the RL phase: global step SFT_STEPS + 3
    let ck = run_b.join(format!("checkpoints/step-{}", SFT_STEPS + 3));
    let state = load_checkpoint(&ck).unwrap().state;
    assert!(state.rl_eval_before.is_some(), "an RL checkpoint records the eval before the phase");
    let mut log = Vec::new();
    let resumed = job::run(&with_events(config(b.path(), 6)), Some(&ck), &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("resumed after step 3"), "{log}");
    assert_eq!(log.matches("rl step").count(), 3, "only RL steps 4..6 run after the resume:\n{log}");
    assert_eq!(straight.final_params, resumed.final_params, "weights differ after an RL resume");
    assert_eq!(straight.rl.unwrap().0, resumed.rl.unwrap().0, "the eval before RL is carried over");
    assert_eq!(metrics(&a.path().join("addition-sft")), metrics(&run_b), "metrics differ after an RL resume");
    // the event file says what metrics.jsonl says, before and after the rollback; the lines the
    // resume kept keep their wall times, and the left branch's events went aside with its record
    let aside = run_b.join(format!("checkpoints/superseded-after-step-{}", SFT_STEPS + 3));
    assert_eq!(events_of(&aside), events_before);
    let after = events_of(&run_b);
    let kept =
        |events: &[ScalarEvent]| events.iter().filter(|e| e.0 <= (SFT_STEPS + 3) as i64).cloned().collect::<Vec<_>>();
    assert_eq!(kept(&after), kept(&events_before), "the kept steps' events (wall times included) changed");
    assert!(after.len() == events_before.len() && after.last().unwrap().1 > events_before.last().unwrap().1);
    #[cfg(feature = "hdf5")]
    {
        // the dump of the resumed run dropped nothing and duplicated nothing
        use arbor::io::trajectories::read_trajectories;
        let (da, db) = (
            read_trajectories(&a.path().join("addition-sft/trajectories.h5")).unwrap(),
            read_trajectories(&run_b.join("trajectories.h5")).unwrap(),
        );
        assert_eq!(da.step, (1..=6u64).flat_map(|s| std::iter::repeat_n(s, 16)).collect::<Vec<_>>());
        assert_eq!(
            (da.step.clone(), da.response_tokens.clone(), da.reward.clone()),
            (db.step, db.response_tokens, db.reward)
        );
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&da.logp), bits(&db.logp), "recomputed log-probs differ after a resume");
        assert_eq!(bits(&da.advantages), bits(&db.advantages));
    }
    // into a fresh directory: the KL reference and the record come from the checkpoint's run
    let c = tempfile::tempdir().unwrap();
    let ck = a.path().join(format!("addition-sft/checkpoints/step-{}", SFT_STEPS + 3));
    let mut log = Vec::new();
    let moved = job::run(&config(c.path(), 6), Some(&ck), &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("copied its config.toml, metrics.jsonl") && log.contains("reference/"), "{log}");
    assert_eq!(straight.final_params, moved.final_params, "weights differ after an RL resume into another directory");
    assert_eq!(metrics(&a.path().join("addition-sft")), metrics(&c.path().join("addition-sft")));
    // at the boundary (last supervised step): the RL phase starts fresh, with a fresh optimizer
    let ck = run_b.join(format!("checkpoints/step-{SFT_STEPS}"));
    let resumed = job::run(&config(b.path(), 6), Some(&ck), &mut Vec::new()).unwrap();
    assert_eq!(straight.final_params, resumed.final_params, "weights differ after a resume at the RL boundary");
    assert_eq!(metrics(&a.path().join("addition-sft")), metrics(&run_b), "metrics differ after a boundary resume");
}

/// A Qwen3 model (its query and key head norms, a fresh one of the addition task): the resume
/// inside the RL phase ends with the straight run's weights, and its checkpoints are Qwen3's.
#[test]
fn a_qwen3_model_resumes_in_the_rl_phase_bit_for_bit() {
    let qwen3 = |out: &Path| {
        let text = config_text(4).replace("arch = \"qwen2\"", "arch = \"qwen3\"");
        let mut c = RunConfig::parse(&text, Path::new("rl_resume.toml")).unwrap();
        c.run.out_dir = out.to_path_buf();
        c
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = job::run(&qwen3(a.path()), None, &mut Vec::new()).unwrap();
    let run_b = b.path().join("addition-sft");
    job::run(&qwen3(b.path()), None, &mut Vec::new()).unwrap();
    let ck = run_b.join(format!("checkpoints/step-{}", SFT_STEPS + 2));
    let (cfg, params) = load_hf_dir(&ck).unwrap();
    assert_eq!(cfg.arch, arbor::model::Arch::Qwen3);
    assert!(params.layout.get("model.layers.1.self_attn.k_norm.weight").is_some());
    let resumed = job::run(&qwen3(b.path()), Some(&ck), &mut Vec::new()).unwrap();
    assert_eq!(straight.final_params, resumed.final_params, "weights differ after a Qwen3 RL resume");
}

#[test]
fn a_checkpoint_past_the_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    job::run(&config(dir.path(), 2), None, &mut Vec::new()).unwrap();
    let ck = dir.path().join(format!("addition-sft/checkpoints/step-{}", SFT_STEPS + 2));
    let mut short = config(dir.path(), 2);
    short.rl.as_mut().unwrap().steps = 1;
    let err = job::run(&short, Some(&ck), &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("past the run") && err.contains("step-4"), "{err}");
    // a checkpoint of another model shape names the settings that differ
    let mut wider = config(dir.path(), 2);
    wider.model.intermediate_size = Some(96);
    let err = job::run(&wider, Some(&ck), &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("intermediate_size: checkpoint 64, config 96"), "{err}");
}

/// The KL reference saved at the RL phase's start is sealed with a manifest: a resume inside the
/// phase whose reference was damaged since stops, naming the file, instead of training against
/// other weights.
#[test]
fn a_damaged_kl_reference_stops_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    job::run(&config(dir.path(), 2), None, &mut Vec::new()).unwrap();
    let reference = dir.path().join("addition-sft/reference");
    assert!(reference.join("manifest.json").is_file(), "the reference is not sealed");
    let weights = reference.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    let ck = dir.path().join(format!("addition-sft/checkpoints/step-{}", SFT_STEPS + 1));
    let err = job::run(&config(dir.path(), 2), Some(&ck), &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("reference/model.safetensors") && err.contains("corrupt"), "{err}");
}

/// A dump that a kill left unreadable (here: cut short) does not stop the resume: it is kept under
/// another name, untouched, and a new dump starts after the checkpoint's step.
#[cfg(feature = "hdf5")]
#[test]
fn an_unreadable_dump_is_set_aside_and_the_resume_goes_on() {
    use arbor::io::trajectories::read_trajectories;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = job::run(&config(a.path(), 5), None, &mut Vec::new()).unwrap();
    job::run(&config(b.path(), 5), None, &mut Vec::new()).unwrap();
    let run_b = b.path().join("addition-sft");
    let dump = run_b.join("trajectories.h5");
    let bytes = std::fs::read(&dump).unwrap();
    std::fs::write(&dump, &bytes[..bytes.len() * 3 / 5]).unwrap();
    let damaged = std::fs::read(&dump).unwrap();
    let ck = run_b.join(format!("checkpoints/step-{}", SFT_STEPS + 3));
    let resumed = job::run(&config(b.path(), 5), Some(&ck), &mut Vec::new()).unwrap();
    assert_eq!(straight.final_params, resumed.final_params, "weights differ after the resume");
    let aside = run_b.join("trajectories.unreadable-at-step-3.h5");
    assert_eq!(std::fs::read(&aside).unwrap(), damaged, "the damaged dump is kept as it was");
    let steps = read_trajectories(&dump).unwrap().step;
    assert_eq!(steps, (4..=5u64).flat_map(|s| std::iter::repeat_n(s, 16)).collect::<Vec<_>>());
}

#[test]
fn sigkill_in_the_rl_phase_then_resume_latest_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let rl_steps = 60;
    let cfg_path = dir.path().join("kill.toml");
    std::fs::write(&cfg_path, config_text(rl_steps).replace("eval_every = 2", "eval_every = 20")).unwrap();
    let bin = env!("CARGO_BIN_EXE_arbor");
    let (out_a, out_b) = (dir.path().join("a"), dir.path().join("b"));
    let run = |out: &Path, extra: &[&str]| {
        Command::new(bin)
            .args(["--threads", "1", "train", "--config", cfg_path.to_str().unwrap(), "--out-dir"])
            .arg(out)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = run(&out_b, &[]);
    let run_dir = out_b.join("addition-sft");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while list_checkpoints(&run_dir).map(|c| c.last().map_or(0, |x| x.0)).unwrap_or(0) < SFT_STEPS + 4 {
        assert!(std::time::Instant::now() < deadline, "no RL checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let was_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(was_running, "the run finished before it could be killed; make it longer");
    let killed_at = list_checkpoints(&run_dir).unwrap().last().unwrap().0;
    assert!(killed_at < SFT_STEPS + rl_steps);
    assert!(run(&out_b, &["--resume", "latest"]).wait().unwrap().success());
    assert!(run(&out_a, &[]).wait().unwrap().success());
    let final_ck = format!("addition-sft/checkpoints/step-{}", SFT_STEPS + rl_steps);
    let (_, pa) = load_hf_dir(&out_a.join(&final_ck)).unwrap();
    let (_, pb) = load_hf_dir(&out_b.join(&final_ck)).unwrap();
    assert_eq!(pa.data, pb.data, "killed at step {killed_at} and resumed: weights differ");
    assert_eq!(metrics(&out_a.join("addition-sft")), metrics(&out_b.join("addition-sft")));
}

#[test]
fn a_fork_off_another_runs_sft_checkpoint_keeps_its_own_kl_reference() {
    // the source: supervised steps only (no RL phase, so no KL reference of its own)
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut sft_only = config(src.path(), 1);
    sft_only.rl = None;
    job::run(&sft_only, None, &mut Vec::new()).unwrap();
    let src_run = src.path().join("addition-sft");
    assert!(!src_run.join("reference").exists());
    let ck = src_run.join(format!("checkpoints/step-{SFT_STEPS}"));
    // a straight run of the same config, for the bits
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = job::run(&config(straight_dir.path(), 4), None, &mut Vec::new()).unwrap();
    // the fork: RL from the source's last supervised step, into its own directory; the source run
    // gains nothing and its record stays as it was
    let src_files = |d: &Path| {
        let mut v: Vec<String> = walk(d);
        v.sort();
        v
    };
    let before = src_files(&src_run);
    let mut allowed = config(dst.path(), 4);
    allowed.allow_config_change = true; // the source had no [rl]
    job::run(&allowed, Some(&ck), &mut Vec::new()).unwrap();
    assert_eq!(src_files(&src_run), before, "the fork wrote into the run it started from");
    let dst_run = dst.path().join("addition-sft");
    assert!(dst_run.join("reference/model.safetensors").is_file(), "the fork saved no KL reference of its own");
    // a later resume of the fork from its own RL checkpoint finds that reference and matches the
    // straight run bit for bit
    let mid = dst_run.join(format!("checkpoints/step-{}", SFT_STEPS + 2));
    let resumed = job::run(&allowed, Some(&mid), &mut Vec::new()).unwrap();
    assert_eq!(straight.final_params, resumed.final_params, "the fork's resume differs from the straight run");
}

/// Every file under `d` with its size and contents' checksum.
/// A scalar event's step, wall time and (tag, value)s.
type ScalarEvent = (i64, f64, Vec<(String, f32)>);

/// The scalar events of the run directory's one TensorBoard event
/// file, after checking them against its metrics.jsonl: an event per line with a step, at the
/// global step, each number of the line as `sft/<key>` or `rl/<key>`.
fn events_of(run: &Path) -> Vec<ScalarEvent> {
    use arbor::io::tfevents::{read_events, What};
    let files: Vec<_> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(files.len(), 1, "{run:?}: {files:?}");
    let events = read_events("events", &std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(events[1].what, What::SessionStart);
    let scalars: Vec<_> = events[2..]
        .iter()
        .map(|e| match &e.what {
            What::Scalars(v) => (e.step, e.wall_time, v.clone()),
            w => panic!("{w:?}"),
        })
        .collect();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(scalars.len(), lines.len());
    for ((step, _, values), line) in scalars.iter().zip(&lines) {
        let (phase, global) = match (line["step"].as_i64(), line["rl_step"].as_i64()) {
            (Some(s), _) => ("sft", s),
            (_, r) => ("rl", SFT_STEPS as i64 + r.unwrap()),
        };
        assert_eq!(*step, global, "{line}");
        let expected: Vec<(String, f32)> = line
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, v)| *k != "step" && *k != "rl_step" && v.is_number())
            .map(|(k, v)| (format!("{phase}/{k}"), v.as_f64().unwrap() as f32))
            .collect();
        assert_eq!(values, &expected, "{line}");
    }
    assert!(scalars.iter().any(|e| e.2.iter().any(|(t, _)| t == "rl/reward_mean")));
    scalars
}

fn walk(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            let bytes = std::fs::read(&p).unwrap();
            out.push(format!("{} {}", p.display(), arbor::io::checksum::checksum64(&bytes)));
        }
    }
    out
}

/// The first maximum of the RL evaluations after steps ≥ 1 in a run's metrics.jsonl: (rl_step, value).
fn first_best(run: &Path) -> (u64, f64) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let evals: Vec<(u64, f64)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v["rl_step"].as_u64()?, v.get("eval_solve_rate")?.as_f64()?)))
        .filter(|(s, _)| *s > 0)
        .collect();
    assert!(!evals.is_empty(), "{text}");
    evals.iter().fold(evals[0], |b, e| if e.1 > b.1 { *e } else { b })
}

/// `[rl] keep_best`: best.json names the checkpoint of the first best evaluation (as metrics.jsonl
/// ranks them), which pruning keeps beside the newest and `inspect` marks; a rollback resume to
/// before that best names the best of the steps it kept, and its checkpoint is there.
#[test]
fn keep_best_keeps_the_best_evaluations_checkpoint_through_pruning_and_a_rollback() {
    let text = common::small_default().replace("steps = 4", "steps = 7").replace("eval_every = 2", "eval_every = 1");
    let text = text.replace("[loss]", "keep_best = \"eval_solve_rate\"\ndump_trajectories = false\n\n[loss]");
    let cfg = |out: &Path, keep: usize| {
        let mut c = RunConfig::parse(&text, Path::new("best.toml")).unwrap();
        c.run.out_dir = out.to_path_buf();
        c.train.keep_checkpoints = keep;
        c
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    job::run(&cfg(a.path(), 1), None, &mut Vec::new()).unwrap();
    let run_a = a.path().join("default");
    let (top, value) = first_best(&run_a);
    let read = |run: &Path| arbor::train::checkpoint::read_best(run).expect("best.json");
    let best = read(&run_a);
    assert_eq!((best.step, best.rl_step, best.value, best.metric.as_str()), (top, top, value, "eval_solve_rate"));
    let steps = |run: &Path| list_checkpoints(run).unwrap().into_iter().map(|c| c.0).collect::<Vec<_>>();
    let mut want = vec![top, 7];
    want.dedup();
    assert_eq!(steps(&run_a), want, "keep_checkpoints = 1, and the best");
    let o = Command::new(env!("CARGO_BIN_EXE_arbor")).arg("inspect").arg(&run_a).output().unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains(&format!("step-{top}: intact")) && shown.contains("<- best: eval_solve_rate"), "{shown}");
    // every checkpoint kept, then a rollback to the step before the best, as the phase's end: the
    // best of the steps it kept is named (not the rolled-back branch's), and its checkpoint is there
    job::run(&cfg(b.path(), 20), None, &mut Vec::new()).unwrap();
    let run_b = b.path().join("default");
    assert_eq!(read(&run_b), best, "pruning changes nothing else");
    assert!(top >= 2, "the seed's best is at RL step {top}: choose a seed whose best is later");
    let mut shorter = cfg(b.path(), 20);
    shorter.rl.as_mut().unwrap().steps = top - 1;
    shorter.allow_config_change = true;
    job::run(&shorter, Some(&run_b.join(format!("checkpoints/step-{}", top - 1))), &mut Vec::new()).unwrap();
    let (kept, value) = first_best(&run_b);
    let best = read(&run_b);
    assert_eq!((best.step, best.value), (kept, value), "the rollback's best is among the steps it kept");
    assert!(kept < top && run_b.join(format!("checkpoints/step-{kept}")).is_dir());
}
