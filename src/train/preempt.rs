//! Preemption: Slurm signals a job before it kills it (`#SBATCH --signal=USR1@120`, `scancel
//! --signal=USR1`, or SIGTERM at the time limit and on preemption). `arbor train` catches SIGUSR1
//! and SIGTERM; at the end of the step in progress the ranks agree (one all-reduce of a flag per
//! step, so a signal seen by any rank stops them all at the same step), rank 0 writes a checkpoint
//! (the dump is flushed every step), and the run returns [`Error::Preempted`]: the process exits
//! with [`EXIT_PREEMPTED`], which the shipped sbatch scripts answer with `scontrol requeue`, and the
//! requeued job's `--resume auto` continues from that checkpoint. A request agreed at the job's
//! last step stops nothing: the run ends finished (its final checkpoint written), exit status 0.

use crate::error::{Error, Result};
use crate::parallel::Comm;
use std::sync::atomic::{AtomicBool, Ordering};

/// Exit status of a run stopped by a signal after checkpointing (EX_TEMPFAIL: "try again").
pub const EXIT_PREEMPTED: i32 = 75;

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// `--time-limit` as given, and whether it has passed (how messages name the stop).
static TIME_LIMIT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static TIME_UP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // async-signal-safe: one atomic store
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Catch SIGUSR1 and SIGTERM for the rest of the process: they request a stop at the next step end
/// instead of killing it. (A second SIGTERM still arrives as a request; Slurm's SIGKILL after its
/// grace period ends the process regardless.)
pub fn install_handlers() -> Result<()> {
    for sig in [libc::SIGUSR1, libc::SIGTERM] {
        catch_signal(sig, on_signal)?;
    }
    Ok(())
}

/// Arm a process that runs training steps: catch the preemption signals and start `--time-limit`'s
/// clock (`limit`: the duration and the text as given) from now. Once, before the first step. Under
/// `[async]` every rank arms it; the training ranks decide (they agree at each step end, as at a
/// signal) and the leader halts the rollout ranks.
pub fn arm(limit: Option<&(std::time::Duration, String)>) -> Result<()> {
    install_handlers()?;
    if let Some((limit, shown)) = limit {
        stop_after(*limit, shown);
    }
    Ok(())
}

/// Call `handler` on signal `sig` from now on, interrupted system calls resuming (SA_RESTART).
/// `handler` must be async-signal-safe (atomic operations only).
pub fn catch_signal(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) -> Result<()> {
    // SAFETY: a zeroed sigaction with a plain handler, an empty mask and SA_RESTART; the caller's
    // handler is async-signal-safe.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        let why = std::io::Error::last_os_error();
        return Err(Error::Invalid(format!("cannot install the handler of signal {sig}: {why}")));
    }
    Ok(())
}

/// Whether this process has received a stop request.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Request a stop as a signal would (tests, and callers that embed the trainer).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Request a stop once `limit` of wall time has passed from now, as a signal would (`arbor train
/// --time-limit`): the ranks stop together at the first step end after it, checkpointed, and the
/// process exits with [`EXIT_PREEMPTED`]. `shown` is the limit as the user gave it. A zero limit
/// requests the stop at once (the first step end).
pub fn stop_after(limit: std::time::Duration, shown: &str) {
    let _ = TIME_LIMIT.set(shown.to_string());
    let up = || {
        TIME_UP.store(true, Ordering::SeqCst);
        request();
    };
    if limit.is_zero() {
        return up();
    }
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        up();
    });
}

/// What stopped the run, for messages: its time limit, else a signal (on this rank or another).
pub fn why() -> String {
    match TIME_LIMIT.get() {
        Some(shown) if TIME_UP.load(Ordering::SeqCst) => format!("its time limit (--time-limit {shown})"),
        _ => "a signal".to_string(),
    }
}

/// Whether any rank of `comm` has a stop request (a collective: every rank calls it at the same
/// step end).
pub fn agreed(comm: &dyn Comm) -> Result<bool> {
    let mut flag = [requested() as u8 as f64];
    comm.all_reduce_max_f64(&mut flag)?;
    Ok(flag[0] > 0.0)
}
