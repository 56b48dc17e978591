//! `arbor launch` on its own (no MPI): a job across machines (two launchers on this one), and the
//! signals a launcher passes on to its ranks. (tests/mpi/ compares it with mpirun.)

mod common;
use common::spmd::compare_runs_within;
use common::spmd::{grpo_config, launch, sft_config, text, write_config};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One machine's `arbor launch` of a two-machine job (one rank each) meeting at `master`, training
/// `cfg` into `out`, with `flags` and `env` added.
fn node_launch(master: &str, flags: &[&str], env: &[(&str, &str)], cfg: &str, out: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["launch", "--nproc", "1", "--nnodes", "2", "--master", master])
        .args(flags)
        .args(["--", "--threads", "1", "train", "--config", cfg, "--out-dir", out])
        .env_remove("SLURM_NODEID")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A free loopback address for a hub, below the ephemeral range, each test on its own `stride`.
fn free_master(stride: u32) -> String {
    let port = (0..10_000u32)
        .map(|i| 20_000 + ((std::process::id() + stride * (i + 1)) % 10_000) as u16)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port");
    format!("127.0.0.1:{port}")
}

/// `arbor launch` across machines (here two launchers on this one, meeting at `--master`): the
/// job of `arbor launch --nproc 2` bit for bit, though node 1 starts first (its rank waits for
/// the hub) and takes its index from $SLURM_NODEID. A machine whose shape disagrees (--nproc 2
/// where node 0 says 1) ends the job naming the mismatch, and a machine that never comes ends it
/// after `--join-timeout-s`, naming the missing rank.
#[test]
fn arbor_launch_spans_machines() {
    let dir = tempfile::tempdir().unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let sft = write_config(dir.path(), &sft_config());
    let o = launch(2, &["--threads", "1", "train", "--config", &sft, "--out-dir", &out("one")], &[]);
    assert!(o.status.success(), "one machine: {}", text(&o));
    // (a port below the ephemeral range: no other test's listener or outgoing connection takes it
    // between this check and the hub's bind, and a rank retrying a connection to it cannot
    // connect to itself)
    let next = std::sync::atomic::AtomicUsize::new(std::process::id() as usize);
    let free_port = || loop {
        let k = next.fetch_add(7919, std::sync::atomic::Ordering::Relaxed);
        let p = 20_000 + (k % 10_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    };
    let master = format!("127.0.0.1:{}", free_port());
    let second = node_launch(&master, &[], &[("SLURM_NODEID", "1")], &sft, &out("two"));
    std::thread::sleep(Duration::from_millis(1500));
    let first = node_launch(&master, &["--node-rank", "0"], &[], &sft, &out("two"));
    let (o0, o1) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    assert!(o0.status.success() && o1.status.success(), "node 0: {}\nnode 1: {}", text(&o0), text(&o1));
    assert!(text(&o0).contains("dp 2 × tp 1"), "{}", text(&o0));
    let runs = [dir.path().join("one/addition-sft"), dir.path().join("two/addition-sft")];
    compare_runs_within(&runs[0], &runs[1], "checkpoints/step-3", "two machines vs one", 0.0, 1e-9);

    // node 1 says it runs 2 ranks where node 0 says 1: a job of 4 ranks against one of 2
    let master = format!("127.0.0.1:{}", free_port());
    let bad = ["--nproc", "2", "--node-rank", "1", "--join-timeout-s", "30"];
    let first = node_launch(&master, &["--node-rank", "0", "--join-timeout-s", "30"], &[], &sft, &out("bad"));
    let second = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["launch", "--nnodes", "2", "--master", &master])
        .args(bad)
        .args(["--", "--threads", "1", "train", "--config", &sft, "--out-dir", &out("bad")])
        .output()
        .unwrap();
    let o0 = first.wait_with_output().unwrap();
    assert!(!o0.status.success() && !second.status.success(), "a mismatched shape must fail both machines");
    assert!(text(&o0).contains("(the job has 2)") && text(&o0).contains("of 4"), "node 0: {}", text(&o0));
    let named = |r: usize| text(&second).contains(&format!("rank {r} exited"));
    assert!((named(2) || named(3)) && !named(0), "node 1 names its ranks by world rank: {}", text(&second));

    // node 1 never comes
    let master = format!("127.0.0.1:{}", free_port());
    let t0 = Instant::now();
    let alone = node_launch(&master, &["--node-rank", "0", "--join-timeout-s", "2"], &[], &sft, &out("alone"));
    let o = alone.wait_with_output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("rank(s) 1 of 2 did not connect to the hub within 2 s"), "{}", text(&o));
    assert!(t0.elapsed() < Duration::from_secs(60), "the join timeout ends the job");
    // flags that cannot make a job are refused before anything starts
    for (flags, says) in [
        (&["--nnodes", "2", "--master", "h:1"][..], "--node-rank"),
        (&["--nnodes", "2", "--node-rank", "0"], "needs --master"),
        (&["--nnodes", "2", "--node-rank", "2", "--master", "h:1"], "--node-rank 2"),
        (&["--nnodes", "2", "--node-rank", "1", "--master", "h"], "HOST:PORT"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["launch", "--nproc", "1"])
            .args(flags)
            .args(["--", "train", "--config", &sft])
            .env_remove("SLURM_NODEID")
            .output()
            .unwrap();
        assert!(!o.status.success() && text(&o).contains(says), "{flags:?}: {}", text(&o));
    }
}

/// `arbor launch --nproc 2` of a `train` of `cfg` into `out`, returned once its run `name` has
/// written three metrics lines (with the metrics file).
fn launch_running(cfg: &str, out: &Path, name: &str) -> (std::process::Child, PathBuf) {
    let child = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["launch", "--nproc", "2", "--", "--threads", "1", "train", "--config", cfg, "--out-dir"])
        .arg(out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics_file = out.join(name).join("metrics.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&metrics_file).map_or(0, |t| t.lines().count()) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the job made no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, metrics_file)
}

/// SIGUSR1 (Slurm's preemption signal) sent to `arbor launch` reaches every rank: the job stops
/// at a step end with a checkpoint and the launcher exits 75 (requeue), before the last step. So
/// does a SIGTERM sent twice 10 ms apart, as srun and slurmstepd both send it at a time limit: the
/// repeat is not taken for the second SIGTERM that kills the ranks.
#[test]
fn arbor_launch_passes_a_preemption_signal_to_its_ranks() {
    for signals in [&[libc::SIGUSR1][..], &[libc::SIGTERM, libc::SIGTERM]] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &sft_config().replace("steps = 3", "steps = 100000"));
        let out = dir.path().join("out");
        // a few steps' metrics, then signal the launcher only
        let (child, metrics_file) = launch_running(&cfg, &out, "addition-sft");
        for &sig in signals {
            // SAFETY: kill(2) on our own child's pid, not yet waited for
            assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
            std::thread::sleep(Duration::from_millis(10));
        }
        let o = child.wait_with_output().unwrap();
        let all = text(&o);
        assert_eq!(
            o.status.code(),
            Some(75),
            "{signals:?}: the launcher exits with the ranks' preemption status: {all}"
        );
        let cks: Vec<_> = std::fs::read_dir(out.join("addition-sft/checkpoints")).unwrap().collect();
        assert!(!cks.is_empty(), "{signals:?}: a checkpoint was written: {all}");
        let steps = std::fs::read_to_string(&metrics_file).unwrap().lines().count();
        assert!(steps < 100000, "stopped early");
    }
}

/// A second SIGTERM to `arbor launch`, 5 s or more after the first, ends its ranks at once (exit
/// 128 + 15), none left running, when the first could not stop them at a step end in time: here
/// every RL step outlasts the pause (its ~24 decode steps each last 500 ms, `[workload]`).
#[test]
fn a_second_sigterm_ends_a_job_whose_step_outlasts_it_under_arbor_launch() {
    let dir = tempfile::tempdir().unwrap();
    let slow = grpo_config().replace("steps = 3", "steps = 100000")
        + "\n[workload]\nlengths = { kind = \"lognormal\", median = 24, sigma = 0.01, max = 30 }\ndecode_step_ms = 500\n";
    let cfg = write_config(dir.path(), &slow);
    let out = dir.path().join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["launch", "--nproc", "2", "--", "--threads", "1", "train", "--config", &cfg, "--out-dir"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // the evaluation before RL is written as the first step (over 12 s) begins
    let metrics_file = out.join("default/metrics.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&metrics_file).map_or(0, |t| t.lines().count()) < 1 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the job made no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    for pause in [5500, 300] {
        // SAFETY: kill(2) on our own child's pid, not yet waited for
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
        std::thread::sleep(Duration::from_millis(pause));
    }
    let t1 = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(128 + 15), "{}", text(&o));
    assert!(t1.elapsed() < Duration::from_secs(20), "took {:?}", t1.elapsed());
    let lines = std::fs::read_to_string(&metrics_file).unwrap().lines().count();
    assert_eq!(lines, 1, "no step ended before the second SIGTERM");
    let ps = Command::new("pgrep").args(["-f", &format!("--out-dir {}", out.display())]).output().unwrap();
    assert!(String::from_utf8_lossy(&ps.stdout).trim().is_empty(), "ranks still running");
}

/// The end of an `[async]` job: the rollout rank waits at the job's last barrier while the trainer
/// runs its final evaluation (longer here than the collective timeout) and is not taken for
/// stalled; and `--resume auto` on the finished run (a requeue after its last checkpoint) tells the
/// rollout rank at once that no step is left, instead of leaving it waiting for a publication.
#[test]
fn an_async_job_ends_cleanly_and_its_finished_run_resumes_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    // (the final evaluation of 900 problems takes seconds; a rollout rank left waiting for a
    // publication would be stopped by the step timeout, 60 s, instead of hanging the test; 20 s
    // once stopped the phase's start, its evaluation of 900 problems, on a loaded machine)
    let short = grpo_config().replace("steps = 3", "steps = 2").replace("eval_problems = 11", "eval_problems = 900");
    let cfg = write_config(
        dir.path(),
        &format!(
            "{short}\n[async]\nrollout_ranks = 1\nalpha = 1\n\n[parallel]\ncollective_timeout_s = 1\nstep_timeout_s = 60\n"
        ),
    );
    let out = dir.path().join("out");
    let args = ["--threads", "1", "train", "--config", &cfg, "--out-dir", out.to_str().unwrap()];
    let t0 = Instant::now();
    let o = launch(2, &args, &[]);
    let first = t0.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    let rates = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with("rl: held-out solve rate"))
            .map(str::to_string)
    };
    let ran = rates(&o).unwrap_or_else(|| panic!("{}", text(&o)));
    let mut resumed = args.to_vec();
    resumed.extend(["--resume", "auto"]);
    let t1 = Instant::now();
    let o = launch(2, &resumed, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(t1.elapsed() < first + Duration::from_secs(30), "the resume took {:?}", t1.elapsed());
    // the finished run's figures, not its starting point's as after
    assert_eq!(rates(&o), Some(ran));
}

/// A rank that crashes on another machine (no abort sent: its launcher only sees it die) fails
/// the ranks waiting for its messages at once, naming it, instead of at their step timeout: here
/// the rollout rank of an `[async]` job across two machines, which the trainer waits for.
#[test]
fn a_crashed_rank_on_another_machine_fails_its_peers_waiting_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let long = grpo_config().replace("steps = 3", "steps = 20");
    let cfg = write_config(
        dir.path(),
        &format!("{long}\n[async]\nrollout_ranks = 1\nalpha = 1\n\n[parallel]\nstep_timeout_s = 120\n"),
    );
    let out = dir.path().join("out");
    // (below the ephemeral range, as in arbor_launch_spans_machines, on another stride)
    let master = free_master(6_007);
    let crash = [("ARBOR_INJECT_FAULT", "crash:1:1"), ("SLURM_NODEID", "1")];
    let t0 = Instant::now();
    let second = node_launch(&master, &[], &crash, &cfg, out.to_str().unwrap());
    let first = node_launch(
        &master,
        &["--node-rank", "0"],
        &[("ARBOR_INJECT_FAULT", "crash:1:1")],
        &cfg,
        out.to_str().unwrap(),
    );
    let (o0, o1) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    assert!(!o0.status.success() && !o1.status.success(), "node 0: {}\nnode 1: {}", text(&o0), text(&o1));
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}: {}", t0.elapsed(), text(&o0));
    assert!(text(&o0).contains("world rank 1 exited"), "node 0: {}", text(&o0));
}

/// Node 0's launcher that finds `--master`'s port taken (another job's hub on a shared machine)
/// fails at once, naming the port and how to give each job its own.
#[test]
fn a_master_port_in_use_is_refused_naming_it() {
    let master = free_master(3_001);
    let _held = std::net::TcpListener::bind(&master).unwrap();
    let o = node_launch(&master, &["--node-rank", "0"], &[], "unused.toml", "unused").wait_with_output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    let port = master.rsplit_once(':').unwrap().1;
    assert!(text(&o).contains(&format!("cannot listen on port {port}")), "{}", text(&o));
    assert!(text(&o).contains("SLURM_JOB_ID"), "{}", text(&o));
}

/// A rank that dies on another machine ends the job at once though no rank waits for it at the
/// hub: its connection ends without the goodbye of an orderly exit. Here node 0's rank is stuck
/// in a computation of its own (a hang injected in its step, as a GPU collective would hold it),
/// which without the goodbye rule ran on to its step timeout (120 s).
#[test]
fn a_rank_that_dies_ends_peers_that_do_not_wait_on_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let long = sft_config().replace("steps = 3", "steps = 100000");
    let cfg = write_config(dir.path(), &format!("{long}\n[parallel]\nstep_timeout_s = 120\n"));
    let out = dir.path().join("out");
    let master = free_master(4_001);
    let crash = [("ARBOR_INJECT_FAULT", "crash:1:2"), ("SLURM_NODEID", "1")];
    let t0 = Instant::now();
    let second = node_launch(&master, &[], &crash, &cfg, out.to_str().unwrap());
    let first =
        node_launch(&master, &["--node-rank", "0"], &[("ARBOR_INJECT_FAULT", "hang:0:2")], &cfg, out.to_str().unwrap());
    let (o0, o1) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    assert!(!o0.status.success() && !o1.status.success(), "node 0: {}\nnode 1: {}", text(&o0), text(&o1));
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}: {}", t0.elapsed(), text(&o0));
    assert!(text(&o0).contains("world rank 1 exited without saying goodbye"), "node 0: {}", text(&o0));
}

/// A machine whose launcher dies takes the job's hub with it: the ranks on the other machines,
/// even one stuck in a computation that never waits on the hub (here a hang injected in rank 1's
/// step, which would otherwise run to its step timeout, 120 s), end themselves within seconds,
/// and so does their launcher.
#[test]
fn ranks_on_other_machines_end_when_the_hub_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let long = sft_config().replace("steps = 3", "steps = 100000");
    let cfg = write_config(dir.path(), &format!("{long}\n[parallel]\nstep_timeout_s = 120\n"));
    let out = dir.path().join("out");
    let master = free_master(7_919);
    let hang = [("ARBOR_INJECT_FAULT", "hang:1:2"), ("SLURM_NODEID", "1")];
    let second = node_launch(&master, &[], &hang, &cfg, out.to_str().unwrap());
    let mut first = node_launch(&master, &["--node-rank", "0"], &[], &cfg, out.to_str().unwrap());
    // rank 1 hangs in step 2; rank 0 waits for it in the step's all-reduce
    std::thread::sleep(Duration::from_secs(8));
    first.kill().unwrap();
    let _ = first.wait();
    let t0 = Instant::now();
    let o = second.wait_with_output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(t0.elapsed() < Duration::from_secs(40), "took {:?}: {}", t0.elapsed(), text(&o));
    assert!(text(&o).contains("lost the launcher's hub"), "{}", text(&o));
}
