//! The shipped sbatch scripts under a real one-node Slurm (scripts/slurm-local.sh: slurmctld, slurmd
//! and munge in a scratch directory, stopped at the end): `slurm/train.sbatch` (srun + PMIx) and
//! `slurm/train-mpirun.sbatch` with 2 tasks give rank 0's metrics and the same weights as one
//! process (dp 2 = dp 1); a job signalled mid-run (`scancel --signal=USR1`) checkpoints, requeues
//! itself and ends bit-identical to the uninterrupted job; so do a training sweep's job-array task
//! (`slurm/train-sweep.sbatch`) and an `arbor experiment` job (`slurm/experiment.sbatch`).
//!
//! Needs root (the daemons run as root; scripts/slurm-local.sh installs the packages).
#![cfg(feature = "mpi")]

mod common;
use arbor::config::ADDITION_CONFIG;
use arbor::io::load_hf_dir;
use common::metrics_without_clock as metrics;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const RL_STEPS: u64 = 80;

/// The local cluster; stopped (only the daemons it started) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let o = Command::new("bash")
            .arg(format!("{REPO}/scripts/slurm-local.sh"))
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "slurm-local.sh start failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Cluster { dir }
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.conf())
            .env("ARBOR", env!("CARGO_BIN_EXE_arbor"))
            .env("ARBOR_SIM", format!("{} sim", env!("CARGO_BIN_EXE_arbor")))
            .envs(common::OMPI_TEST_ENV)
            .env("PMIX_MCA_gds", "hash");
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let o = self.cmd(program).args(args).output().unwrap();
        assert!(o.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Submit `script` (2 tasks on the one node) with `args`; returns the job id.
    fn submit(&self, script: &str, log: &Path, args: &[&str]) -> String {
        let output = format!("--output={}", log.display());
        let mut all = vec!["--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", &output];
        all.extend(["--chdir", REPO, script]);
        all.extend(args);
        self.run("sbatch", &all)
    }

    /// A field of `scontrol show job` (e.g. JobState, Restarts).
    fn field(&self, job: &str, key: &str) -> String {
        let text = self.run("scontrol", &["show", "job", job]);
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in: {text}"))
            .to_string()
    }

    /// Send `job` (writing `metrics`, its output in `log`) a preemption notice once its RL phase is
    /// under way (RL step 5 done), wait until it has checkpointed and requeued itself, and let it
    /// start again at once.
    fn preempt_in_rl_phase(&self, job: &str, metrics: &Path, log: &Path) {
        let t0 = Instant::now();
        while read(metrics).lines().filter(|l| l.contains("\"rl_step\"")).count() < 6 {
            assert!(t0.elapsed() < Duration::from_secs(120), "job {job} did not reach RL step 5:\n{}", read(log));
            std::thread::sleep(Duration::from_millis(200));
        }
        self.run("scancel", &["--signal=USR1", job]);
        // the job checkpoints, exits 75 and requeues itself; Slurm holds a requeued job back for a
        // while (its begin time), which an operator may lift: here at once
        let t0 = Instant::now();
        while !(self.field(job, "Restarts") != "0" && self.field(job, "JobState") == "PENDING") {
            assert!(t0.elapsed() < Duration::from_secs(120), "job {job} did not requeue:\n{}", read(log));
            std::thread::sleep(Duration::from_millis(300));
        }
        // slurmd refuses a job credential created in the same second as the job's last revocation
        // ("Job credential revoked"): a requeued job started at once can fail that way, which is
        // why Slurm holds it back; lift the hold only once two seconds have passed
        std::thread::sleep(Duration::from_millis(2500));
        self.run("scontrol", &["update", &format!("JobId={job}"), "StartTime=now"]);
    }

    /// Wait until `job` ends; panics with its output if it fails or runs past `limit`.
    fn wait(&self, job: &str, log: &Path, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let state = self.field(job, "JobState");
            match state.as_str() {
                "COMPLETED" => return,
                "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | "OUT_OF_MEMORY" | "BOOT_FAIL" | "DEADLINE" => {
                    panic!(
                        "job {job} ended {state}:\n{}\n{}\nslurmctld log:\n{}",
                        self.run("scontrol", &["show", "job", job]),
                        std::fs::read_to_string(log).unwrap_or_default(),
                        std::fs::read_to_string(self.dir.path().join("log/slurmctld.log")).unwrap_or_default()
                    )
                }
                _ => {}
            }
            if t0.elapsed() > limit {
                let _ = self.cmd("scancel").arg(job).output();
                panic!(
                    "job {job} still {state} after {limit:?}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(format!("{REPO}/scripts/slurm-local.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// A tiny supervised + GRPO run long enough to be signalled mid-way (~10 s for 2 ranks on 2 cores).
fn config(dir: &Path) -> PathBuf {
    let text = ADDITION_CONFIG
        .replace("name = \"addition-sft\"", "name = \"slurm\"")
        .replace("threads = 2", "threads = 1")
        .replace("hidden_size = 128", "hidden_size = 32")
        .replace("intermediate_size = 384", "intermediate_size = 64")
        .replace("num_layers = 4", "num_layers = 2")
        .replace("steps = 400", "steps = 2")
        .replace("batch_size = 64", "batch_size = 8")
        .replace("eval_problems = 256", "eval_problems = 8")
        + "keep_checkpoints = 3\n"
        + &format!("\n[rl]\nsteps = {RL_STEPS}\nprompts_per_step = 4\nsamples_per_prompt = 4\nmax_new_tokens = 5\n")
        + "eval_problems = 8\neval_samples = 2\nlog_every = 10\nfilter_zero_std = false\nlr = 1e-3\n";
    let path = dir.join("slurm.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn weights(run: &Path) -> Vec<f32> {
    let (_, p) = load_hf_dir(&run.join(format!("checkpoints/step-{}", 2 + RL_STEPS))).unwrap();
    p.data
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

#[test]
fn sbatch_scripts_train_under_slurm_and_a_signalled_job_requeues_and_ends_bit_identical() {
    if !is_root() {
        eprintln!("SKIPPED: the local Slurm cluster needs root (slurmd and munged run as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let cfg_s = cfg.to_str().unwrap();
    let out = |n: &str| dir.path().join(n);
    // one process: the reference of data parallelism
    let one = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["train", "--config", cfg_s, "--out-dir"])
        .arg(out("one"))
        .output()
        .unwrap();
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));

    let cluster = Cluster::start();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (log_a, log_m, log_b) = (out("a.log"), out("m.log"), out("b.log"));
    let (dir_a, dir_m, dir_b) = (s(&out("srun")), s(&out("mpirun")), s(&out("preempted")));
    let a = cluster.submit("slurm/train.sbatch", &log_a, &[cfg_s, "--out-dir", &dir_a]);
    let m = cluster.submit("slurm/train-mpirun.sbatch", &log_m, &[cfg_s, "--out-dir", &dir_m]);
    let b = cluster.submit("slurm/train.sbatch", &log_b, &[cfg_s, "--out-dir", &dir_b]);
    // a simulator sweep as a 3-task job array, merged by a job that waits for it
    let scenario = format!("{REPO}/sim/scenarios/rlvr-small.toml");
    let pieces = s(&out("sweep"));
    let sweep = ["--gpus", "16,32,64", "--alpha", "0,1,inf"];
    let mut array_args = vec!["--parsable", "--array=0-2"];
    let array_out = format!("--output={}/sweep-%a.log", dir.path().display());
    array_args.extend([array_out.as_str(), "--chdir", REPO, "slurm/sim-sweep.sbatch", &scenario, &pieces]);
    array_args.extend(sweep);
    let array = cluster.run("sbatch", &array_args);
    let log_merge = out("merge.log");
    let (merge_out, after) = (format!("--output={}", log_merge.display()), format!("--dependency=afterok:{array}"));
    let merge = cluster
        .run("sbatch", &["--parsable", &after, &merge_out, "--chdir", REPO, "slurm/sim-sweep-merge.sbatch", &pieces]);

    // signal job b once its RL phase is under way (metrics written by rank 0)
    cluster.preempt_in_rl_phase(&b, &out("preempted").join("slurm/metrics.jsonl"), &log_b);
    for (job, log) in [(&a, &log_a), (&m, &log_m), (&b, &log_b)] {
        cluster.wait(job, log, Duration::from_secs(150));
    }
    cluster.wait(&merge, &log_merge, Duration::from_secs(120));
    // the merged table is the one-process sweep's
    let local = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["sim", "sweep", "--scenario", &scenario])
        .args(sweep)
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let table = String::from_utf8_lossy(&local.stdout).trim().to_string();
    let merged = std::fs::read_to_string(&log_merge).unwrap();
    assert!(!table.is_empty() && merged.contains(&table), "merged:\n{merged}\nlocal:\n{table}");
    assert_eq!(
        std::fs::read_dir(&pieces)
            .unwrap()
            .filter(|e| { e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("point-")) })
            .count(),
        9,
        "one piece per point"
    );
    let log = std::fs::read_to_string(&log_b).unwrap();
    assert!(log.contains("preempted after a checkpoint; requeueing") && log.contains("restart 1"), "{log}");
    assert!(log.contains("resumed from step"), "the requeued job did not resume:\n{log}");

    let run = |d: &str| Path::new(d).join("slurm");
    let (w_a, w_m, w_b) = (weights(&run(&dir_a)), weights(&run(&dir_m)), weights(&run(&dir_b)));
    // srun and mpirun launch the same dp = 2 computation
    assert!(w_a == w_m, "srun and mpirun jobs differ");
    // the preempted, requeued job equals the uninterrupted one bit for bit
    assert!(w_a == w_b, "the preempted job's final weights differ from the uninterrupted job's");
    assert_eq!(metrics(&run(&dir_a)), metrics(&run(&dir_b)), "metrics differ after preemption");
    // dp 2 = dp 1: reductions in another order agree within rounding, as in tests/mpi/, for the
    // supervised steps and the first RL steps (later, one sampled token flipped by a rounding
    // difference sends the two runs down different trajectories)
    let (lines, reference) = (metrics(&run(&dir_a)), metrics(&out("one").join("slurm")));
    let early = |v: &serde_json::Value| v.get("step").is_some() || v["rl_step"].as_u64().is_some_and(|s| s <= 2);
    let (x, y): (Vec<_>, Vec<_>) =
        (lines.iter().filter(|v| early(v)).collect(), reference.iter().filter(|v| early(v)).collect());
    assert_eq!(x.len(), y.len());
    assert!(x.len() >= 6, "{x:?}");
    for (a, b) in x.iter().zip(&y) {
        // (`tokens` is the rank's own share of the batch)
        for (k, va) in a.as_object().unwrap().iter().filter(|(k, _)| k.as_str() != "tokens") {
            let (fa, fb) = (va.as_f64(), b[k].as_f64());
            if let (Some(fa), Some(fb)) = (fa, fb) {
                assert!((fa - fb).abs() <= 1e-4 * fb.abs().max(1.0), "{k}: dp 2 {fa} vs dp 1 {fb}\n{a}\n{b}");
            }
        }
    }
    assert_eq!(
        lines.iter().filter(|l| l.get("rl_step").is_some() && l.get("reward_mean").is_some()).count() as u64,
        RL_STEPS
    );
    training_sweep_array(&cluster, dir.path(), cfg_s);
    experiment_job(&cluster, dir.path(), cfg_s);
}

/// `slurm/train-sweep.sbatch`: a 2-point training sweep as a job array; task 1 is signalled in its
/// RL phase, checkpoints, requeues itself and resumes, and the report of the array's runs is the
/// table of the same sweep run in one process.
fn training_sweep_array(cluster: &Cluster, dir: &Path, cfg: &str) {
    let flags = |out: &Path| {
        let out = out.to_str().unwrap().to_string();
        // (400 RL steps: the signal reaches task 1 well before its end)
        let args =
            ["--config", cfg, "--set", "rl.steps=400", "--grid", "rl.lr=1e-3,2e-3", "--seeds", "7", "--out-dir", &out];
        args.map(String::from).to_vec()
    };
    let (array_dir, local_dir) = (dir.join("train-sweep"), dir.join("train-sweep-local"));
    let log = dir.join("train-sweep-1.log");
    let output = format!("--output={}/train-sweep-%a.log", dir.display());
    let mut args: Vec<String> =
        ["--parsable", "--array=0-1", "--ntasks=1", "--cpus-per-task=1", &output, "--chdir", REPO]
            .map(String::from)
            .to_vec();
    args.push("slurm/train-sweep.sbatch".into());
    args.extend(flags(&array_dir));
    let job = cluster.run("sbatch", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let task = format!("{job}_1");
    cluster.preempt_in_rl_phase(&task, &array_dir.join("p1-seed7/metrics.jsonl"), &log);
    // the same sweep in one process meanwhile
    let arbor = |extra: &[String]| {
        let o = Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["--threads", "1", "experiment", "sweep"])
            .args(extra)
            .output();
        let o = o.unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    arbor(&flags(&local_dir));
    cluster.wait(&format!("{job}_0"), &dir.join("train-sweep-0.log"), Duration::from_secs(150));
    cluster.wait(&task, &log, Duration::from_secs(150));
    let text = read(&log);
    assert!(text.contains("preempted after a checkpoint; requeueing task") && text.contains("restart 1"), "{text}");
    assert!(text.contains("seed 7: resumed from"), "the requeued task did not resume:\n{text}");
    let other = read(&dir.join("train-sweep-0.log"));
    assert!(other.contains("restart 0") && !other.contains("restart 1"), "task 0 was not requeued with it:\n{other}");
    arbor(&[flags(&array_dir), vec!["--report".into()]].concat());
    assert_eq!(read(&array_dir.join("sweep.md")), read(&local_dir.join("sweep.md")), "the array's table");
}

/// `slurm/experiment.sbatch`: an `arbor experiment seeds` job signalled in its RL phase checkpoints,
/// requeues itself and resumes; its run ends with the weights of the same experiment run in one
/// process, and its table with the same RL figures.
fn experiment_job(cluster: &Cluster, dir: &Path, cfg: &str) {
    let flags = |out: &Path| {
        let out = out.to_str().unwrap().to_string();
        ["seeds", "--config", cfg, "--set", "rl.steps=400", "--seeds", "7", "--out-dir", &out]
            .map(String::from)
            .to_vec()
    };
    let (job_dir, local_dir, log) = (dir.join("experiment"), dir.join("experiment-local"), dir.join("experiment.log"));
    let output = format!("--output={}", log.display());
    let mut args: Vec<String> =
        ["--parsable", "--ntasks=1", "--cpus-per-task=1", &output, "--chdir", REPO].map(String::from).to_vec();
    args.push("slurm/experiment.sbatch".into());
    args.extend(flags(&job_dir));
    let job = cluster.run("sbatch", &args.iter().map(String::as_str).collect::<Vec<_>>());
    cluster.preempt_in_rl_phase(&job, &job_dir.join("seed7/metrics.jsonl"), &log);
    let local = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["--threads", "1", "experiment"])
        .args(flags(&local_dir))
        .output();
    let local = local.unwrap();
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    cluster.wait(&job, &log, Duration::from_secs(150));
    let text = read(&log);
    assert!(text.contains("preempted after a checkpoint; requeueing job") && text.contains("restart 1"), "{text}");
    assert!(text.contains("== seed 7: resumed from"), "the requeued job did not resume:\n{text}");
    let last = |d: &Path| std::fs::read(d.join("seed7/checkpoints/step-402/model.safetensors")).unwrap();
    assert!(last(&job_dir) == last(&local_dir), "the requeued experiment's weights differ from the one-process run's");
    // the RL columns of the seed's row (its wall time differs)
    let rl_cells = |d: &Path| {
        let md = read(&d.join("seeds.md"));
        let row = md.lines().find(|l| l.starts_with("| 7 |")).unwrap_or_else(|| panic!("no row of seed 7: {md}"));
        row.split('|').take(8).collect::<Vec<_>>().join("|")
    };
    assert_eq!(rl_cells(&job_dir), rl_cells(&local_dir));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
