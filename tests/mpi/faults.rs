//! A rank that fails, hangs, dies or is stuck in its phase setup takes the whole job down (under
//! mpirun and under `arbor launch`, synchronous and `[async]` jobs), with a message naming it,
//! within the timeouts.

use super::*;

fn fault_run(kind: &str, expect: &[&str]) {
    fault_run_with(mpirun, kind, expect)
}

pub(crate) fn fault_run_with(launcher: Launcher, kind: &str, expect: &[&str]) {
    let text_cfg = sft_config().replace("steps = 3", "steps = 50")
        + "\n[parallel]\ncollective_timeout_s = 3\nstep_timeout_s = 20\n";
    failing_job(launcher, &text_cfg, &format!("{kind}:1:4"), expect);
}

/// Run the config `text_cfg` on 2 ranks started by `launcher`, with the fault `spec`
/// (`ARBOR_INJECT_FAULT`: kind:rank:step) injected: the job fails within 30 s, its output holds
/// each of `expect`, and no rank is left running.
fn failing_job(launcher: Launcher, text_cfg: &str, spec: &str, expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), text_cfg);
    let out = dir.path().join("out").to_str().unwrap().to_string();
    let t0 = Instant::now();
    let o =
        launcher(2, &["--threads", "1", "train", "--config", &cfg, "--out-dir", &out], &[("ARBOR_INJECT_FAULT", spec)]);
    let took = t0.elapsed();
    let all = text(&o);
    assert!(!o.status.success(), "{spec}: the job must fail:\n{all}");
    assert!(took < Duration::from_secs(30), "{spec}: took {took:?}");
    for e in expect {
        assert!(all.contains(e), "{spec}: output lacks {e:?}:\n{all}");
    }
    // no rank is left behind
    let ps = Command::new("pgrep").args(["-f", &format!("--out-dir {out}")]).output().unwrap();
    assert!(String::from_utf8_lossy(&ps.stdout).trim().is_empty(), "{spec}: ranks still running");
}

#[test]
fn a_failing_or_hanging_rollout_rank_takes_the_async_job_down() {
    for (kind, expect, mode) in [
        ("error", vec!["rank 1 (rollout)", "injected fault at step 2"], "batch"),
        ("hang", vec!["rank 0", "rl step 2"], "batch"),
        ("error", vec!["rank 1 (rollout)", "injected fault at step 2"], "continuous"),
    ] {
        let text_cfg = grpo_config()
            + &format!(
                "\n[parallel]\nstep_timeout_s = 4\n\n[async]\nrollout_ranks = 1\nalpha = 1\nmode = \"{mode}\"\n"
            );
        failing_job(mpirun, &text_cfg, &format!("{kind}:1:2"), &expect);
    }
}

#[test]
fn a_failing_rank_aborts_the_job_naming_itself() {
    fault_run("error", &["rank 1", "injected fault at step 4"]);
}

#[test]
fn a_hanging_rank_trips_the_watchdog_of_the_others() {
    // rank 1 sleeps at step 4; rank 0 waits in the loss all-reduce until the 3 s collective
    // timeout, and says which rank it waited for
    fault_run(
        "hang",
        &["rank 0", "all_reduce_sum_f64", "did not finish in time", "during `step 4`", "rank 1 had not entered it"],
    );
}

/// A rank stuck before its first step (here a hang injected in the phase's setup; on a GPU, a
/// peer that never joins NCCL's initialisation) trips its step watchdog, which names the setup:
/// the setup is bounded by `step_timeout_s` as a step is, not only by the others' collective
/// timeout (600 s here, so the test fails without the setup's deadline).
#[test]
fn a_rank_stuck_in_its_phase_setup_trips_the_step_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let text_cfg = sft_config() + "\n[parallel]\ncollective_timeout_s = 600\nstep_timeout_s = 4\n";
    let cfg = write_config(dir.path(), &text_cfg);
    let out = dir.path().join("out").to_str().unwrap().to_string();
    let t0 = Instant::now();
    let o = mpirun(
        2,
        &["--threads", "1", "train", "--config", &cfg, "--out-dir", &out],
        &[("ARBOR_INJECT_FAULT", "hang:1:0")],
    );
    let all = text(&o);
    assert!(!o.status.success(), "the job must fail:\n{all}");
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}:\n{all}", t0.elapsed());
    for e in ["rank 1", "did not finish in time", "sft phase start"] {
        assert!(all.contains(e), "output lacks {e:?}:\n{all}");
    }
}

#[test]
fn a_dying_rank_takes_the_job_down() {
    // mpirun reports the first rank that died, with its exit status or signal
    fault_run("exit", &["exited with non-zero status", "Exit code:    9"]);
    fault_run("crash", &["rank 1", "signal 6"]);
}
