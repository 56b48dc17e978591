//! Real multi-process runs under mpirun (Open MPI, oversubscribed on 2 cores): data parallelism
//! gives the same weights and metrics as one process for the same global batch, and a rank that
//! fails, hangs or dies takes the whole job down with a message naming it, within the timeout (faults.rs).
#![cfg(feature = "mpi")]

#[path = "../common/mod.rs"]
mod common;
mod faults;
mod zero;
use arbor::io::load_hf_dir;
use common::metrics_without_clock as metrics;
use common::spmd::{compare_runs_within, grpo_config, launch, sft_config, single, text, write_config};
use faults::fault_run_with;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn mpirun(np: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string(), "--oversubscribe"])
        .envs(common::OMPI_TEST_ENV)
        .arg(env!("CARGO_BIN_EXE_arbor"))
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("mpirun must be installed (scripts/setup.sh installs openmpi-bin)")
}

/// How a test starts a multi-rank job: `mpirun` or `arbor launch`.
type Launcher = fn(usize, &[&str], &[(&str, &str)]) -> Output;

fn compare_runs(a: &Path, b: &Path, ck: &str, what: &str) {
    compare_runs_within(a, b, ck, what, 1e-6, 1e-5);
}

/// Train `cfg` (a written config of the default job's run name) in one process into `dir/one` and
/// under `mpirun -np 2` into `dir/two`; returns the two run directories.
fn one_and_two(dir: &Path, cfg: &str) -> (PathBuf, PathBuf) {
    for (name, np) in [("one", 1), ("two", 2)] {
        let out = dir.join(name).to_str().unwrap().to_string();
        let args = ["--threads", "1", "train", "--config", cfg, "--out-dir", &out];
        let o = if np == 1 { single(&args) } else { mpirun(np, &args, &[]) };
        assert!(o.status.success(), "{name}: {}", text(&o));
    }
    (dir.join("one").join("default"), dir.join("two").join("default"))
}

#[test]
fn data_parallel_2_and_4_ranks_match_one_process_after_3_supervised_steps() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &sft_config());
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let one = single(&["--threads", "1", "train", "--config", &cfg, "--out-dir", &out("one")]);
    assert!(one.status.success(), "{}", text(&one));
    for np in [2, 4] {
        let name = format!("np{np}");
        let o = mpirun(np, &["--threads", "1", "train", "--config", &cfg, "--out-dir", &out(&name)], &[]);
        assert!(o.status.success(), "mpirun -np {np}: {}", text(&o));
        assert!(text(&o).contains(&format!("dp {np} × tp 1")), "rank 0 prints the grid: {}", text(&o));
        let run = |n: &str| dir.path().join(n).join("addition-sft");
        compare_runs(&run("one"), &run(&name), "checkpoints/step-3", &format!("dp={np} vs dp=1"));
    }
}

/// Train [`grpo_config`] in one process into `dir/sync`; returns the `--out-dir` of a run name and
/// the run directory of a run name under `dir`.
fn synchronous_grpo(dir: &Path) -> (impl Fn(&str) -> String + '_, impl Fn(&str) -> PathBuf + '_) {
    let out = move |n: &str| dir.join(n).to_str().unwrap().to_string();
    let run = move |n: &str| dir.join(n).join("default");
    let sync_cfg = write_config(dir, &grpo_config());
    let one = single(&["--threads", "1", "train", "--config", &sync_cfg, "--out-dir", &out("sync")]);
    assert!(one.status.success(), "{}", text(&one));
    (out, run)
}

#[test]
fn async_rollout_ranks_alpha_0_equal_synchronous_and_staleness_stays_within_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let (out, run) = synchronous_grpo(dir.path());
    let with = |name: &str, rollout: usize, alpha: f64| {
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, format!("{}\n[async]\nrollout_ranks = {rollout}\nalpha = {alpha}\n", grpo_config()))
            .unwrap();
        p.to_str().unwrap().to_string()
    };
    // (name, ranks, rollout ranks, α): 1 trainer + 1 generator at α = 0 must be the synchronous run;
    // with 4 trainers + 3 generators the weights and the step shares travel along relays in which
    // rollout ranks and training ranks forward what they receive (parallel::relay)
    let cases = [("a0", 2, 1, 0.0), ("a1", 2, 1, 1.0), ("a1r2", 3, 2, 1.0), ("a2", 4, 2, 1.5), ("a1r3t4", 7, 3, 1.0)];
    for (name, np, rollout, alpha) in cases {
        let cfg = with(name, rollout, alpha);
        // (α = 0, compared bit for bit with the synchronous run below, sends every message of more
        // than 4 KiB, the weights and the batches, in pieces)
        let pieces: &[(&str, &str)] = if name == "a0" { &[("ARBOR_MPI_MAX_MESSAGE", "4096")] } else { &[] };
        let o = mpirun(np, &["--threads", "1", "train", "--config", &cfg, "--out-dir", &out(name)], pieces);
        assert!(o.status.success(), "{name}: {}", text(&o));
        assert!(text(&o).contains(&format!("{rollout} rollout rank(s)")), "{}", text(&o));
        let lag = alpha.ceil() as u64;
        let steps: Vec<_> = metrics(&run(name)).into_iter().filter(|m| m.get("staleness_max").is_some()).collect();
        assert_eq!(steps.len(), 3, "{name}: one line per RL step");
        for m in &steps {
            let (step, stale) = (m["rl_step"].as_u64().unwrap(), m["staleness_max"].as_u64().unwrap());
            // every batch: staleness within the bound, and exactly the configured lag once it can be
            assert!(stale <= lag, "{name}: step {step} staleness {stale} > α = {alpha}");
            assert_eq!(stale, (step - 1).min(lag), "{name}: step {step}");
            assert_eq!(m["policy_version"].as_u64().unwrap(), step - 1 - stale);
            // (the rollout ranks' weights equal the trainer's version: a checksum mismatch ends the job)
            assert!(m.get("weights_in_sync").is_none(), "{name}: a metric that could only be true");
        }
    }
    compare_runs(&run("sync"), &run("a0"), "checkpoints/step-3", "async α = 0 vs synchronous");
    // the same α gives the same run whatever the number of rollout ranks
    compare_runs(&run("a1"), &run("a1r2"), "checkpoints/step-3", "α = 1: 1 vs 2 rollout ranks");
    compare_runs(&run("a1"), &run("a1r3t4"), "checkpoints/step-3", "α = 1: 1 + 1 vs 4 + 3 ranks");
    // and a stale run really differs from the synchronous one
    let (_, ps) = load_hf_dir(&run("sync").join("checkpoints/step-3")).unwrap();
    let (_, pa) = load_hf_dir(&run("a1").join("checkpoints/step-3")).unwrap();
    assert!(ps.data.iter().zip(&pa.data).any(|(x, y)| (x - y).abs() > 1e-5), "α = 1 trained on stale samples");
}

/// Continuous rollout (ROLL Flash) and replication: at α = 0 continuous is the synchronous
/// trainer; replicated groups are the same groups; every sample's staleness stays within ⌈α⌉;
/// and a continuous run replayed from its recorded install schedule gives the same weights.
#[test]
fn continuous_rollout_and_replication_keep_the_bound_and_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let (out, run) = synchronous_grpo(dir.path());
    let with = |name: &str, extra: &str| {
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, format!("{}\n[async]\nrollout_ranks = 2\n{extra}\n", grpo_config())).unwrap();
        p.to_str().unwrap().to_string()
    };
    let train = |name: &str, extra: &str, more: &[&str]| {
        let cfg = with(name, extra);
        let mut args = vec!["--threads", "1", "train", "--config", &cfg];
        let dir = out(name);
        args.extend(["--out-dir", &dir]);
        args.extend(more);
        let o = mpirun(3, &args, &[]);
        assert!(o.status.success(), "{name}: {}", text(&o));
    };
    train("c0", "alpha = 0\nmode = \"continuous\"", &[]);
    compare_runs(&run("sync"), &run("c0"), "checkpoints/step-3", "continuous α = 0 vs synchronous");
    train("b1", "alpha = 1", &[]);
    train("b1rep", "alpha = 1\nreplicate = true", &[]);
    compare_runs_within(&run("b1"), &run("b1rep"), "checkpoints/step-3", "batch α = 1: replicated vs not", 0.0, 0.0);
    train("c2", "alpha = 2\nmode = \"continuous\"\nreplicate = true", &[]);
    for name in ["c0", "c2"] {
        let lag = if name == "c0" { 0 } else { 2 };
        let steps: Vec<_> = metrics(&run(name)).into_iter().filter(|m| m.get("staleness_hist").is_some()).collect();
        assert_eq!(steps.len(), 3, "{name}: one line per RL step");
        for m in &steps {
            let hist: Vec<u64> = m["staleness_hist"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(hist.len(), lag + 1, "{name}: {m}");
            assert_eq!(hist.iter().sum::<u64>(), 5 * 8, "{name}: every sample counted once: {m}");
            let max = m["staleness_max"].as_u64().unwrap();
            assert!(max as usize <= lag && hist[max as usize] > 0, "{name}: {m}");
            let util = m["rollout_slot_util"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&util), "{name}: {m}");
        }
    }
    // at α = 1 batch 2 needs version 1 on both ranks; a slowed decode step (forced long-tail
    // lengths) makes installs land while sequences are in flight. The schedule replayed gives the
    // same samples, so the same weights, bit for bit
    let slow = "alpha = 1\nmode = \"continuous\"\n\n[workload]\nlengths = { kind = \"lognormal\", median = 12, sigma = 0.8, max = 32 }\ndecode_step_ms = 3";
    train("c1", slow, &[]);
    let schedule = run("c1").join("rollout-schedule.jsonl");
    let lines = std::fs::read_to_string(&schedule).unwrap();
    assert!(
        lines.lines().filter(|l| l.contains("\"version\":1")).count() == 2,
        "both ranks install version 1: {lines}"
    );
    // (and report the weights they start from, which the leader checks like any install)
    assert_eq!(lines.lines().filter(|l| l.contains("\"version\":0") && l.contains("\"decode_step\":0")).count(), 2);
    train("c1replay", slow, &["--replay", schedule.to_str().unwrap()]);
    compare_runs_within(&run("c1"), &run("c1replay"), "checkpoints/step-3", "continuous α = 1 replayed", 0.0, 1e-9);
    // a schedule that installs version 1 before batch 0 is done (another run's) is an error at
    // once, not a rank waiting for a version that waits for it (until step_timeout_s)
    let other = dir.path().join("other-schedule.jsonl");
    let moved: String = lines
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["version"] == 1 {
                v["decode_step"] = 0.into();
            }
            format!("{v}\n")
        })
        .collect();
    std::fs::write(&other, moved).unwrap();
    let cfg = with("c1other", slow);
    let dir_other = out("c1other");
    let o = mpirun(
        3,
        &["--threads", "1", "train", "--config", &cfg, "--out-dir", &dir_other, "--replay", other.to_str().unwrap()],
        &[],
    );
    assert!(!o.status.success());
    let said = text(&o);
    assert!(
        said.contains("replay: the schedule installs policy version 1 before decode step 0")
            && said.contains("batch 0"),
        "{said}"
    );
    // the dump keeps each sample's own start version: per step, its staleness histogram is the
    // metrics' (these short runs start each batch under one version; the per-sample version
    // crossing the wire is tested in src/train/rl/wire.rs)
    #[cfg(feature = "hdf5")]
    {
        for (name, lag) in [("c0", 0), ("c2", 2), ("c1", 1)] {
            let t = arbor::io::trajectories::read_trajectories(&run(name).join("trajectories.h5")).unwrap();
            for m in metrics(&run(name)).into_iter().filter(|m| m.get("staleness_hist").is_some()) {
                let hist: Vec<u64> =
                    m["staleness_hist"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
                let step = m["rl_step"].as_u64().unwrap();
                let mut dumped = vec![0u64; lag + 1];
                for r in (0..t.len()).map(|i| t.record(i).unwrap()).filter(|r| r.step == step) {
                    dumped[(step - 1 - r.policy_version) as usize] += 1;
                }
                assert_eq!(dumped, hist, "{name}: step {step}'s dumped versions");
            }
        }
    }
}

/// `[rhythm]` under `[async]` (batch mode): the rollout rank shapes its share with the policy that
/// generated it, so α = 0 with one rollout rank trains exactly what one process trains, and the
/// shaped advantages and WAAD/FAI reach the metrics.
#[test]
fn rhythm_shaping_on_a_rollout_rank_equals_the_synchronous_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let run = |n: &str| dir.path().join(n).join("default");
    let rhythm =
        grpo_config() + "\n[rhythm]\nscheme = \"coupled\"\nlayers = 2\nfai_min_offset = 2\nfai_max_offset = 16\n";
    let sync_cfg = write_config(dir.path(), &rhythm);
    let one = single(&["--threads", "1", "train", "--config", &sync_cfg, "--out-dir", &out("sync")]);
    assert!(one.status.success(), "{}", text(&one));
    let p = dir.path().join("async.toml");
    std::fs::write(&p, rhythm + "\n[async]\nrollout_ranks = 1\nalpha = 0\n").unwrap();
    let o = mpirun(2, &["--threads", "1", "train", "--config", p.to_str().unwrap(), "--out-dir", &out("a0")], &[]);
    assert!(o.status.success(), "{}", text(&o));
    compare_runs(&run("sync"), &run("a0"), "checkpoints/step-3", "[rhythm] on a rollout rank vs synchronous");
    // two rollout ranks shape their shares of each batch with the whole batch's medians
    let p2 = dir.path().join("async2.toml");
    std::fs::write(&p2, std::fs::read_to_string(&p).unwrap().replace("rollout_ranks = 1", "rollout_ranks = 2"))
        .unwrap();
    let o = mpirun(3, &["--threads", "1", "train", "--config", p2.to_str().unwrap(), "--out-dir", &out("a2")], &[]);
    assert!(o.status.success(), "{}", text(&o));
    compare_runs(&run("sync"), &run("a2"), "checkpoints/step-3", "[rhythm] on two rollout ranks vs synchronous");
    let amplified: Vec<f64> =
        metrics(&run("a0")).iter().filter_map(|m| m.get("rhythm_amplified_frac")?.as_f64()).collect();
    assert_eq!(amplified.len(), 3, "one shaping figure per step");
    assert!(amplified.iter().any(|&f| f > 0.0), "some tokens were amplified: {amplified:?}");
}

/// `[attnrl]` trees under `[async]` (batch mode): each rollout rank grows the trees of its share
/// of a batch's questions (the FCI pass, the all-correct filter and the dynamic batch on the
/// rollout ranks), sends the leaves and the sampler's state; α = 0 trains what one process
/// trains, with one rollout rank or two and with two trainers splitting each batch, and a resume
/// from the trainer's checkpoint continues the rollout ranks' adaptive state.
#[test]
fn attnrl_trees_on_rollout_ranks_equal_the_synchronous_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let trees = grpo_config()
        + "\n[attnrl]\nstep_separators = [\"\\n\"]\nfci_step_gap = 1\nmin_branch_distance = 2\ninitial_responses = 4\n";
    let (out, run) =
        (|n: &str| dir.path().join(n).to_str().unwrap().to_string(), |n: &str| dir.path().join(n).join("default"));
    let one =
        single(&["--threads", "1", "train", "--config", &write_config(dir.path(), &trees), "--out-dir", &out("sync")]);
    assert!(one.status.success(), "{}", text(&one));
    // 1 or 2 rollout ranks and one trainer: bit for bit; two trainers split each tree batch by
    // sequence (the data-parallel sums in another order: within rounding)
    for (ranks, np, tol) in [(1, 2, 0.0), (2, 3, 0.0), (1, 3, 1e-6)] {
        let p = dir.path().join(format!("async{ranks}.toml"));
        std::fs::write(&p, format!("{trees}\n[async]\nrollout_ranks = {ranks}\nalpha = 0\n")).unwrap();
        let name = format!("a{ranks}-{np}");
        let o =
            mpirun(np, &["--threads", "1", "train", "--config", p.to_str().unwrap(), "--out-dir", &out(&name)], &[]);
        assert!(o.status.success(), "{}", text(&o));
        let what = format!("[attnrl] on {ranks} rollout rank(s), {} trainer(s), vs synchronous", np - ranks);
        compare_runs_within(&run("sync"), &run(&name), "checkpoints/step-3", &what, tol, 1e-5);
    }
    let m = metrics(&run("a1-2"));
    assert!(m.iter().any(|l| l["branch_points"].as_u64().unwrap_or(0) > 0), "trees were branched: {m:?}");
    // from the trainer's step-2 checkpoint into another directory: step 3 as the straight run's
    let p = dir.path().join("async1.toml");
    let ck = run("a1-2").join("checkpoints/step-2");
    let args = ["--threads", "1", "train", "--config", p.to_str().unwrap(), "--out-dir", &out("r")];
    let o = mpirun(2, &[&args[..], &["--resume", ck.to_str().unwrap()]].concat(), &[]);
    assert!(o.status.success(), "{}", text(&o));
    compare_runs(&run("sync"), &run("r"), "checkpoints/step-3", "[attnrl] on a rollout rank, resumed at step 2");
}

#[test]
fn rhythm_shaping_under_data_parallelism_matches_one_process() {
    // τ left to the batch is the median over the whole step's batch, not over one rank's share
    let dir = tempfile::tempdir().unwrap();
    let text_cfg =
        grpo_config() + "\n[rhythm]\nscheme = \"coupled\"\nlayers = 2\nfai_min_offset = 2\nfai_max_offset = 16\n";
    let (one, two) = one_and_two(dir.path(), &write_config(dir.path(), &text_cfg));
    compare_runs(&one, &two, "checkpoints/step-3", "[rhythm] dp=2 vs dp=1");
}

#[test]
fn attnrl_tree_sampling_under_data_parallelism_matches_one_process() {
    // ATB with the all-correct FCI filter and the dynamic batch: questions split over the ranks,
    // the adaptive state kept identical on every rank
    // and the one-step off-policy pipeline (each rank carries its own pending batch)
    for off in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let text_cfg = grpo_config()
            + "\n[attnrl]\nstep_separators = [\"\\n\"]\nfci_step_gap = 1\nmin_branch_distance = 2\ninitial_responses = 4\n"
            + &format!("off_policy = {off}\n");
        let (one, two) = one_and_two(dir.path(), &write_config(dir.path(), &text_cfg));
        let m = metrics(&one);
        assert!(m.iter().any(|l| l["branch_points"].as_u64().unwrap_or(0) > 0), "trees were branched: {m:?}");
        compare_runs(&one, &two, "checkpoints/step-3", &format!("AttnRL (off-policy {off}) dp=2 vs dp=1"));
    }
}

#[test]
fn asyppo_critics_under_data_parallelism_match_one_process() {
    // two mini-critics with AsyPPO's masks (default fractions) and whitened advantages: the
    // percentiles, the whitening and the diagnostics are over the step's whole batch, gathered
    // from both ranks, so value models, GAE, masks and the critics' all-reduced updates match
    // one process (the diagnostics too: they are compared with the other metrics)
    let dir = tempfile::tempdir().unwrap();
    let text_cfg = grpo_config()
        + "\n[critic]\ncount = 2\nhidden_size = 32\nintermediate_size = 64\nnum_layers = 1\nnum_heads = 2\nnum_kv_heads = 1\nlr = 1e-2\nwhiten = true\n";
    let (one, two) = one_and_two(dir.path(), &write_config(dir.path(), &text_cfg));
    compare_runs(&one, &two, "checkpoints/step-3", "critics dp=2 vs dp=1");
    let m = metrics(&two);
    assert!(m.iter().any(|l| l["critic_1_value_loss"].as_f64().unwrap_or(0.0) > 0.0), "the critics trained");
    let masked: Vec<f64> = m.iter().filter_map(|l| l.get("adv_masked_frac")?.as_f64()).collect();
    assert!(masked.iter().any(|&f| f > 0.0), "the masks masked something: {masked:?}");
}

#[test]
fn multi_turn_environments_under_data_parallelism_lose_and_duplicate_nothing() {
    // the guess game with latencies and failures (retried once): without redundancy the kept
    // groups are a function of the seed, so dp = 2 must train exactly what dp = 1 trains; with
    // redundant groups every step still keeps all its groups, each with n distinct trajectories
    let dir = tempfile::tempdir().unwrap();
    let env = |extra: usize, mode: &str| {
        grpo_config().replace("max_new_tokens = 32", "max_new_tokens = 4").replace("samples_per_prompt = 8", "samples_per_prompt = 3")
            + "\n[env]\nkind = \"guess\"\nhigh = 3\nmax_turns = 2\neval_games = 6\nfailure_rate = 0.15\nmax_retries = 1\n"
            + "step_latency_ms = { kind = \"lognormal\", median = 2, sigma = 1.0, max = 20 }\n"
            + &format!("extra_groups = {extra}\nmode = \"{mode}\"\n")
    };
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let run = |n: &str| dir.path().join(n).join("default");
    let (one, two) = one_and_two(dir.path(), &write_config(dir.path(), &env(0, "sync")));
    compare_runs(&one, &two, "checkpoints/step-3", "[env] dp=2 vs dp=1");
    let m = metrics(&one);
    assert!(m.iter().any(|l| l["grad_norm"].as_f64().unwrap_or(0.0) > 0.0), "some games were won: {m:?}");
    assert!(m.iter().any(|l| l["env_retries"].as_u64().unwrap_or(0) > 0), "failures were retried");
    // [env] on a rollout rank ([async], batch mode, α = 0) trains what one process trains
    let p = dir.path().join("env-async.toml");
    std::fs::write(&p, env(0, "sync") + "\n[async]\nrollout_ranks = 1\nalpha = 0\n").unwrap();
    let o = mpirun(2, &["--threads", "1", "train", "--config", p.to_str().unwrap(), "--out-dir", &out("ea")], &[]);
    assert!(o.status.success(), "{}", text(&o));
    compare_runs(&one, &run("ea"), "checkpoints/step-3", "[env] + [async] α = 0 vs one process");
    let p = dir.path().join("redundant.toml");
    std::fs::write(&p, env(4, "async")).unwrap();
    let o = mpirun(2, &["--threads", "1", "train", "--config", p.to_str().unwrap(), "--out-dir", &out("red")], &[]);
    assert!(o.status.success(), "{}", text(&o));
    for name in ["one", "two", "red"] {
        let steps: Vec<_> = metrics(&run(name)).into_iter().filter(|m| m.get("env_groups_kept").is_some()).collect();
        assert_eq!(steps.len(), 3, "{name}");
        for m in &steps {
            let kept = m["env_groups_kept"].as_u64().unwrap();
            assert_eq!(m["env_trajectories"].as_u64().unwrap(), 3 * kept, "{name}: n per kept group: {m}");
            if name == "red" {
                assert_eq!(kept, 5, "redundant groups keep the batch whole: {m}");
            } else {
                assert_eq!(kept + m["env_groups_failed"].as_u64().unwrap(), 5, "{name}: {m}");
            }
        }
    }
}

#[test]
fn data_and_tensor_parallel_grpo_match_one_process_after_3_rl_steps() {
    let dir = tempfile::tempdir().unwrap();
    let text_cfg = grpo_config();
    let (one, two) = one_and_two(dir.path(), &write_config(dir.path(), &text_cfg));
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    // the RL steps really trained: some samples carried advantage
    let m = metrics(&one);
    assert!(m.iter().any(|l| l["trained_samples"].as_u64().unwrap_or(0) > 0), "no RL signal: {m:?}");
    compare_runs(&one, &two, "checkpoints/step-3", "GRPO dp=2 vs dp=1");
    // tensor parallelism: generation, the reference model, the KL term and the update on shards
    let tp_path = dir.path().join("tp.toml");
    std::fs::write(&tp_path, text_cfg.clone() + "\n[parallel]\ntp = 2\n").unwrap();
    let tp =
        mpirun(2, &["--threads", "1", "train", "--config", tp_path.to_str().unwrap(), "--out-dir", &out("tp")], &[]);
    assert!(tp.status.success(), "{}", text(&tp));
    // Shards sum the o_proj/down_proj products in another order, so log-probs differ by ~1e-7 and
    // PPO ratios by as much; every metric (rewards, lengths, losses, KL) still agrees to 1e-5, except
    // the gradient norm after two updates (1.3e-5 relative on an AVX-512 machine): metrics to 5e-5. AdamW's
    // early updates move each weight by about lr·sign(m), so a weight whose gradient is ~0 may step
    // either way: the weight bound is one update, lr = 1e-4 (measured 6.8e-5; SFT under TP: 6.3e-7).
    let tp_run = dir.path().join("tp").join("default");
    compare_runs_within(&one, &tp_run, "checkpoints/step-3", "GRPO tp=2 vs one process", 1e-4, 5e-5);
}

/// The numbers `arbor selftest tp` prints, by name.
fn selftest_figures(out: &str) -> Vec<(String, f64)> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, value) = (w.next()?, w.next()?);
            Some((name.to_string(), value.parse::<f64>().ok()?))
        })
        .collect()
}

#[test]
fn tensor_parallel_shards_compute_what_one_process_computes() {
    // every rank checks its shard against the full model it also builds: logits, log-probs,
    // entropy, loss, all gradients (gathered), the gradient norm and sampled generation; and its
    // shard's gradients with gradient checkpointing, bit for bit
    for np in [2, 4] {
        let o = mpirun(np, &["--threads", "1", "selftest", "tp", "--tp", "2"], &[]);
        let all = text(&o);
        assert!(o.status.success(), "np {np}: {all}");
        assert!(all.contains(&format!("dp {} × tp 2", np / 2)), "{all}");
        let figs = selftest_figures(&all);
        for name in ["logits", "logprobs", "entropy", "loss", "gradients", "grad_norm", "generated_logprobs"] {
            let v = figs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing:\n{all}")).1;
            assert!(v <= 1e-5, "np {np}: {name} differs by {v:e}");
        }
        let ckpt = figs.iter().find(|(n, _)| n == "checkpointed_gradients");
        assert_eq!(ckpt.map(|f| f.1), Some(0.0), "np {np}: checkpointed gradients differ:\n{all}");
        assert!(all.contains("generated tokens ≠     0"), "{all}");
    }
    // and it does fail when the tolerance is below float rounding
    let o = mpirun(2, &["--threads", "1", "selftest", "tp", "--tp", "2", "--tol", "1e-12"], &[]);
    assert!(!o.status.success() && text(&o).contains("FAILED"), "{}", text(&o));
    // a Qwen3 model: its query and key head norms are replicated, each shard's part of their
    // gradients (from its heads) summed over the group
    let dir = tempfile::tempdir().unwrap();
    let qwen3 = sft_config().replace("arch = \"qwen2\"", "arch = \"qwen3\"");
    assert!(qwen3.contains("arch = \"qwen3\""));
    let cfg = write_config(dir.path(), &qwen3);
    let o = mpirun(2, &["--threads", "1", "selftest", "tp", "--tp", "2", "--config", &cfg], &[]);
    let all = text(&o);
    assert!(o.status.success(), "qwen3: {all}");
    for (name, v) in selftest_figures(&all) {
        assert!(v <= 1e-5, "qwen3: {name} differs by {v:e}");
    }
}

#[test]
fn tensor_parallel_2_and_tp2_x_dp2_match_one_process_after_3_supervised_steps() {
    let dir = tempfile::tempdir().unwrap();
    let one_cfg = write_config(dir.path(), &sft_config());
    let tp_path = dir.path().join("tp.toml");
    std::fs::write(&tp_path, sft_config() + "\n[parallel]\ntp = 2\n").unwrap();
    let tp_cfg = tp_path.to_str().unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let one = single(&["--threads", "1", "train", "--config", &one_cfg, "--out-dir", &out("one")]);
    assert!(one.status.success(), "{}", text(&one));
    // (the dp 2 × tp 2 run with gradient checkpointing: its recomputed layers sum over the group
    // again, and its gradients are the kept ones')
    for (np, grid, ckpt) in [(2, "dp 1 × tp 2", "false"), (4, "dp 2 × tp 2", "true")] {
        let name = format!("np{np}");
        let set = format!("train.gradient_checkpointing={ckpt}");
        let args = ["--threads", "1", "train", "--config", tp_cfg, "--out-dir", &out(&name), "--set", &set];
        let o = mpirun(np, &args, &[]);
        assert!(o.status.success(), "mpirun -np {np}: {}", text(&o));
        assert!(text(&o).contains(grid), "rank 0 prints the grid: {}", text(&o));
        let run = |n: &str| dir.path().join(n).join("addition-sft");
        let recorded = std::fs::read_to_string(run(&name).join("config.toml")).unwrap();
        assert!(recorded.contains(&format!("gradient_checkpointing = {ckpt}")), "{recorded}");
        // checkpoints hold the gathered full model (same config and tensor shapes as tp = 1)
        compare_runs_within(
            &run("one"),
            &run(&name),
            "checkpoints/step-3",
            &format!("{grid} vs 1 process"),
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn a_tensor_parallel_run_resumes_exactly_from_its_gathered_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tp.toml");
    std::fs::write(&path, sft_config() + "\n[parallel]\ntp = 2\n").unwrap();
    let cfg = path.to_str().unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let full = mpirun(2, &["--threads", "1", "train", "--config", cfg, "--out-dir", &out("full")], &[]);
    assert!(full.status.success(), "{}", text(&full));
    // a copy of the run that lost its last step: resume it from step 2
    let copy = Command::new("cp").args(["-r", &out("full"), &out("part")]).status().unwrap();
    assert!(copy.success());
    let cks = dir.path().join("part/addition-sft/checkpoints");
    std::fs::remove_dir_all(cks.join("step-3")).unwrap();
    let ck = cks.join("step-2");
    let resumed = mpirun(
        2,
        &["--threads", "1", "train", "--config", cfg, "--out-dir", &out("part"), "--resume", ck.to_str().unwrap()],
        &[],
    );
    assert!(resumed.status.success(), "{}", text(&resumed));
    let run = |n: &str| dir.path().join(n).join("addition-sft");
    compare_runs_within(&run("full"), &run("part"), "checkpoints/step-3", "tp=2 resumed vs uninterrupted", 0.0, 1e-5);
}

/// `--time-limit` (the flag a preemption signal sets) under `[async]`: the training ranks stop
/// together at the first step end past it, the leader checkpoints and halts the rollout ranks (the
/// batch loop and the streaming loop), every rank exits 75, and `--resume latest` continues. In
/// batch mode (replicated or not, with [attnrl] trees too) the resumed run is the uninterrupted one bit for bit, at α = 2
/// too, stopped twice (the checkpoints keep the older policy versions the next batches need, and
/// the phase's first one); a continuous run (timing-dependent) stops and resumes to its end.
#[test]
fn an_async_run_stops_at_its_time_limit_on_every_rank_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let run = |n: &str| dir.path().join(n).join("default");
    // (name, launcher, ranks, [async] table, stops before the end)
    // ([attnrl]'s rollout ranks all-reduce their counts while sampling: they stop at the same batch)
    let trees = "rollout_ranks = 2\nalpha = 1\n[attnrl]\nstep_separators = [\"\\n\"]\nfci_step_gap = 1\nmin_branch_distance = 2\ninitial_responses = 4";
    let cases: [(&str, Launcher, usize, &str, usize); 5] = [
        ("a0", launch, 2, "rollout_ranks = 1\nalpha = 0", 1),
        ("a2", mpirun, 2, "rollout_ranks = 1\nalpha = 2", 2),
        ("trees", mpirun, 3, trees, 1),
        ("replicated", mpirun, 3, "rollout_ranks = 2\nalpha = 2\nreplicate = true", 2),
        ("continuous", launch, 3, "rollout_ranks = 2\nalpha = 1\nmode = \"continuous\"", 1),
    ];
    for (name, launcher, np, table, stops) in cases {
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, format!("{}\n[async]\n{table}\n", grpo_config())).unwrap();
        let cfg = p.to_str().unwrap().to_string();
        let job = |at: &str, more: &[&str]| {
            let base = ["--threads", "1", "train", "--config", &cfg, "--out-dir", &out(at)];
            let o = launcher(np, &[&base[..], &["--set", "train.checkpoint_every=1"], more].concat(), &[]);
            (o.status.code(), text(&o))
        };
        let part = format!("{name}-part");
        for stop in 1..=stops {
            let resume: &[&str] = if stop == 1 { &[] } else { &["--resume", "latest"] };
            let (code, all) = job(&part, &[resume, &["--time-limit", "0"]].concat());
            assert_eq!(code, Some(75), "{name}: exit 75 (requeue): {all}");
            let said = format!("stopped by its time limit (--time-limit 0) after step {stop}, checkpoint written");
            // every rank says why it stopped (under arbor launch; mpirun ends the others once one
            // has exited non-zero, after the world's barrier, so after the checkpoint, and may
            // end before it has passed on what they printed)
            if std::ptr::fn_addr_eq(launcher, launch as Launcher) {
                assert_eq!(all.matches(&said).count(), np, "{name}: {all}");
            }
            let ck = run(&part).join(format!("checkpoints/step-{stop}"));
            assert!(ck.is_dir() && !ck.with_file_name(format!("step-{}", stop + 1)).exists(), "{name}: {all}");
        }
        let (code, all) = job(&part, &["--resume", "latest"]);
        assert_eq!(code, Some(0), "{name}: the resume: {all}");
        assert!(run(&part).join("checkpoints/step-3").is_dir(), "{name}: {all}");
        if name != "continuous" {
            let (code, all) = job(&format!("{name}-full"), &[]);
            assert_eq!(code, Some(0), "{name}: {all}");
            let what = format!("{name}: stopped at its time limit and resumed vs uninterrupted");
            compare_runs_within(&run(&format!("{name}-full")), &run(&part), "checkpoints/step-3", &what, 0.0, 1e-9);
        }
    }
}

/// `arbor launch` (no MPI: collectives and messages over TCP through the launcher) runs what
/// mpirun runs: two-rank data parallelism and an `[async]` job (weights and batches sent on their
/// own threads) give mpirun's weights and metrics bit for bit (two ranks sum the same in either
/// order); a rank that fails, hangs or dies takes the job down naming itself, no rank left behind.
#[test]
fn arbor_launch_runs_what_mpirun_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let sft = write_config(dir.path(), &sft_config());
    let p = dir.path().join("async.toml");
    std::fs::write(&p, format!("{}\n[async]\nrollout_ranks = 1\nalpha = 1\n", grpo_config())).unwrap();
    let asy = p.to_str().unwrap().to_string();
    let cases = [(&sft, "addition-sft", "dp 2 × tp 1"), (&asy, "default", "1 rollout rank(s)")];
    for (cfg, run_name, what) in cases {
        let mut runs = Vec::new();
        for (name, launcher) in [("mpirun", mpirun as Launcher), ("launch", launch)] {
            let at = format!("{name}-{run_name}");
            let o = launcher(2, &["--threads", "1", "train", "--config", cfg, "--out-dir", &out(&at)], &[]);
            assert!(o.status.success(), "{what} under {name}: {}", text(&o));
            assert!(text(&o).contains(what), "{name} runs {what}: {}", text(&o));
            runs.push(dir.path().join(&at).join(run_name));
        }
        let what = format!("{what}: arbor launch vs mpirun");
        compare_runs_within(&runs[0], &runs[1], "checkpoints/step-3", &what, 0.0, 1e-9);
    }
    fault_run_with(launch, "error", &["rank 1", "injected fault at step 4", "the job was stopped"]);
    fault_run_with(launch, "hang", &["rank 0", "did not finish in time", "rank 1 had not entered it"]);
    fault_run_with(launch, "exit", &["rank 1 exited with exit status: 9"]);
    fault_run_with(launch, "crash", &["rank 1 exited with signal: 6"]);
}

/// `arbor bench allreduce` and `arbor bench broadcast` measure both transports: one JSON line
/// from rank 0 naming its transport and ranks, the buckets of the buffer or the relay's chunk,
/// and positive bandwidths or times (the broadcast's receivers check every byte they got).
#[test]
fn bench_allreduce_and_broadcast_run_under_mpirun_and_arbor_launch() {
    let allreduce = ["--threads", "1", "bench", "allreduce", "--mb", "1", "--bucket-mb", "0.25", "--reps", "2"];
    let broadcast = ["--threads", "1", "bench", "broadcast", "--mb", "1", "--chunk-mb", "0.25", "--reps", "2"];
    for (transport, launcher) in [("mpi", mpirun as Launcher), ("arbor launch", launch)] {
        let line = |np: usize, args: &[&str]| -> serde_json::Value {
            let o = launcher(np, args, &[]);
            assert!(o.status.success(), "{transport} {args:?}: {}", text(&o));
            let stdout = String::from_utf8_lossy(&o.stdout);
            let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
            assert_eq!(lines.len(), 1, "{transport}: one line from rank 0: {stdout}");
            let j: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
            assert_eq!((j["transport"].as_str(), j["ranks"].as_u64()), (Some(transport), Some(np as u64)), "{j}");
            j
        };
        let j = line(2, &allreduce);
        assert_eq!(j["buckets"].as_u64(), Some(4), "{j}");
        assert!(j["bucketed_gb_per_s"].as_f64().unwrap() > 0.0 && j["raw_gb_per_s"].as_f64().unwrap() > 0.0);
        let j = line(3, &broadcast);
        assert_eq!((j["bytes"].as_u64(), j["chunk_bytes"].as_u64()), (Some(1 << 20), Some(1 << 18)), "{j}");
        assert!(j["direct_s"].as_f64().unwrap() > 0.0 && j["relay_s"].as_f64().unwrap() > 0.0, "{j}");
    }
}
