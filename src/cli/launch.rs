//! `arbor launch --nproc N -- ARGS`: run `arbor ARGS` as an N-rank SPMD job on this machine
//! without MPI. The launcher serves the ranks' collectives and messages over TCP on the loopback
//! interface (`parallel::hub`; the ranks' side is `parallel::tcp_comm`), gives each rank
//! `LOCAL_RANK` (so with `device = "cuda"` rank i takes GPU i modulo the visible ones), and ends
//! the job as soon as one rank fails: the others are stopped and the launcher exits with the
//! failed rank's status. SIGTERM and SIGUSR1 sent to the launcher (Slurm's preemption and time
//! limit) are passed on to every rank, which checkpoints and stops as `arbor train` does
//! (`train::preempt`); the launcher then exits with the ranks' status (75: requeue).

use crate::parallel::hub::{serve, HubEnd};
use crate::parallel::tcp_comm::{HUB_VAR, RANK_VAR, SIZE_VAR};
use std::net::TcpListener;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// The last signal the launcher caught and has not yet passed on (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // async-signal-safe: one atomic store
    CAUGHT.store(sig, Ordering::SeqCst);
}

/// Catch SIGTERM and SIGUSR1, to pass them on to the ranks instead of dying before them.
fn catch_stop_signals() -> anyhow::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGUSR1] {
        // SAFETY: a zeroed sigaction with a plain handler, an empty mask and SA_RESTART; the
        // handler only stores to an atomic.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        anyhow::ensure!(rc == 0, "cannot catch signal {sig}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

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
    let n = a.nproc;
    anyhow::ensure!((1..=MAX_NPROC).contains(&n), "--nproc {n}: between 1 and {MAX_NPROC}");
    catch_stop_signals()?;
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
        match c.spawn() {
            Ok(child) => children.push(child),
            Err(e) => stop(&mut children, &format!("could not start rank {rank} ({}): {e}", exe.display()), 1),
        }
    }
    let mut done = vec![false; n];
    loop {
        let sig = CAUGHT.swap(0, Ordering::SeqCst);
        if sig != 0 {
            for (child, _) in children.iter().zip(&done).filter(|(_, &d)| !d) {
                // SAFETY: kill(2) on the pid of a child not yet reaped (so not reused)
                unsafe {
                    libc::kill(child.id() as libc::pid_t, sig);
                }
            }
        }
        match hub_end.try_recv() {
            Ok(Ok(HubEnd::Aborted(why))) => stop(&mut children, &why, 1),
            Ok(Err(e)) => stop(&mut children, &e.to_string(), 1),
            _ => {}
        }
        for (rank, child) in children.iter_mut().enumerate() {
            if done[rank] {
                continue;
            }
            if let Some(status) = child.try_wait()? {
                done[rank] = true;
                if !status.success() {
                    let code = status.code().unwrap_or(1);
                    stop(&mut children, &format!("rank {rank} exited with {status}"), code);
                }
            }
        }
        if done.iter().all(|&d| d) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
