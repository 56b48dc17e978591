//! `arbor launch --nproc N -- ARGS`: run `arbor ARGS` as an N-rank SPMD job on this machine
//! without MPI. The launcher serves the ranks' collectives and messages over TCP on the loopback
//! interface (`parallel::hub`; the ranks' side is `parallel::tcp_comm`), gives each rank
//! `LOCAL_RANK` (so with `device = "cuda"` rank i takes GPU i modulo the visible ones), and ends
//! the job as soon as one rank fails: the others are stopped and the launcher exits with the
//! failed rank's status. SIGTERM and SIGUSR1 sent to the launcher (Slurm's preemption and time
//! limit) are passed on to every rank, which checkpoints and stops as `arbor train` does
//! (`train::preempt`); the launcher then exits with the ranks' status (75: requeue). A second
//! SIGTERM ends the ranks at once (an `[async]` run does not stop at a step end), and a rank dies
//! with its launcher.

use crate::parallel::hub::{serve, HubEnd};
use crate::parallel::tcp_comm::{HUB_VAR, RANK_VAR, SIZE_VAR};
use crate::train::preempt::EXIT_PREEMPTED;
use std::net::TcpListener;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// The last stop signal the launcher caught and has not yet passed on (0: none), and how many
/// SIGTERMs it has caught in all.
static CAUGHT: AtomicI32 = AtomicI32::new(0);
static TERMS: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // async-signal-safe: atomic operations only
    if sig == libc::SIGTERM {
        TERMS.fetch_add(1, Ordering::SeqCst);
    }
    CAUGHT.store(sig, Ordering::SeqCst);
}

/// Catch SIGTERM and SIGUSR1, to pass them on to the ranks instead of dying before them.
fn catch_stop_signals() -> anyhow::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGUSR1] {
        crate::train::preempt::catch_signal(sig, on_signal)?;
    }
    Ok(())
}

/// Raise the open-file limit to its hard limit: the hub holds two descriptors per rank.
fn raise_file_limit() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// How long the other ranks have to finish after one stopped for a preemption (their
/// checkpoint is written by then; they are past the last barrier).
const PREEMPT_GRACE: Duration = Duration::from_secs(60);

/// The largest job `arbor launch` starts (one machine).
const MAX_NPROC: usize = 1024;

#[derive(Debug, clap::Args)]
pub struct LaunchArgs {
    /// Ranks to start, all on this machine.
    #[arg(long)]
    pub nproc: usize,
    /// What each rank runs: arbor's own arguments, e.g. `--threads 2 train --config job.toml`
    /// (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

/// Run the job; returns only when every rank finished cleanly (a failure exits the process with
/// the failed rank's status, after stopping the others).
pub fn run(a: &LaunchArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let n = a.nproc;
    anyhow::ensure!((1..=MAX_NPROC).contains(&n), "--nproc {n}: between 1 and {MAX_NPROC}");
    catch_stop_signals()?;
    raise_file_limit();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let (to_main, hub_end) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = to_main.send(serve(listener, n));
    });
    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for rank in 0..n {
        let mut c = Command::new(&exe);
        c.args(&a.args)
            .env(HUB_VAR, &addr)
            .env(RANK_VAR, rank.to_string())
            .env(SIZE_VAR, n.to_string())
            .env("LOCAL_RANK", rank.to_string());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent: a rank dies
        // with the launcher instead of running on without its hub
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        match c.spawn() {
            Ok(child) => children.push(child),
            Err(e) => stop(&mut children, &format!("could not start rank {rank} ({}): {e}", exe.display()), 1),
        }
    }
    let mut done = vec![false; n];
    let mut preempted: Option<std::time::Instant> = None;
    let mut hub_running = true;
    loop {
        let sig = CAUGHT.swap(0, Ordering::SeqCst);
        if TERMS.load(Ordering::SeqCst) >= 2 {
            // a second SIGTERM: the ranks did not stop in time (an [async] run does not stop
            // at a step end), end them now
            stop(&mut children, "a second SIGTERM", 128 + libc::SIGTERM);
        }
        if sig != 0 {
            for (child, _) in children.iter().zip(&done).filter(|(_, &d)| !d) {
                // SAFETY: kill(2) on the pid of a child not yet reaped (so not reused)
                unsafe {
                    libc::kill(child.id() as libc::pid_t, sig);
                }
            }
        }
        // the ranks' own statuses first: they say more than the hub's view of a lost rank
        check_children(&mut children, &mut done, &mut preempted);
        match if hub_running { hub_end.try_recv() } else { Err(mpsc::TryRecvError::Empty) } {
            Ok(Ok(HubEnd::Aborted(why))) => {
                std::thread::sleep(Duration::from_millis(200));
                check_children(&mut children, &mut done, &mut preempted);
                stop(&mut children, &why, 1)
            }
            Ok(Err(e)) => stop(&mut children, &e.to_string(), 1),
            Err(mpsc::TryRecvError::Disconnected) => stop(&mut children, "the launcher's hub stopped", 1),
            // every rank left the hub: their statuses end the job
            Ok(Ok(HubEnd::Done)) => hub_running = false,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if done.iter().all(|&d| d) {
            if preempted.is_some() {
                eprintln!("arbor launch: the ranks stopped for a preemption after a checkpoint");
                std::process::exit(EXIT_PREEMPTED);
            }
            return Ok(());
        }
        if preempted.is_some_and(|t| t.elapsed() > PREEMPT_GRACE) {
            stop(&mut children, "ranks still running after the others stopped for a preemption", EXIT_PREEMPTED);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reap the ranks that exited: a failure stops the job with the rank's status (128 + the signal
/// for a rank a signal killed); a preemption's status (75) starts the others' grace period.
/// Ranks that fail together (one's failure makes the launcher end the others' collectives) are
/// reported together, after a moment for the rest to exit, the job's status being the first that
/// is not 1 (the status of a rank that lost its job).
fn check_children(children: &mut [Child], done: &mut [bool], preempted: &mut Option<std::time::Instant>) {
    let mut failed = reap(children, done, preempted);
    if failed.is_empty() {
        return;
    }
    std::thread::sleep(Duration::from_millis(200));
    failed.extend(reap(children, done, preempted));
    let why: Vec<String> = failed.iter().map(|(rank, status, _)| format!("rank {rank} exited with {status}")).collect();
    let code = failed.iter().map(|f| f.2).find(|&c| c != 1).unwrap_or(1);
    stop(children, &why.join("; "), code)
}

/// The ranks that exited since the last call and failed: (rank, status, exit code).
fn reap(
    children: &mut [Child],
    done: &mut [bool],
    preempted: &mut Option<std::time::Instant>,
) -> Vec<(usize, std::process::ExitStatus, i32)> {
    use std::os::unix::process::ExitStatusExt;
    let mut failed = Vec::new();
    for rank in 0..children.len() {
        if done[rank] {
            continue;
        }
        let status = match children[rank].try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => continue,
            Err(e) => stop(children, &format!("cannot watch rank {rank}: {e}"), 1),
        };
        done[rank] = true;
        match status.code() {
            Some(0) => {}
            Some(EXIT_PREEMPTED) => {
                preempted.get_or_insert_with(std::time::Instant::now);
            }
            code => failed.push((rank, status, code.or(status.signal().map(|s| 128 + s)).unwrap_or(1))),
        }
    }
    failed
}

/// Stop every rank still running, say why, and exit with `code`.
fn stop(children: &mut [Child], why: &str, code: i32) -> ! {
    for c in children.iter_mut() {
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
        }
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
    eprintln!("arbor launch: {why}; the job was stopped");
    std::process::exit(if code == 0 { 1 } else { code })
}
