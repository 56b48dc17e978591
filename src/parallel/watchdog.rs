//! Never hang: a background thread aborts the whole job when a step or a collective runs past its
//! deadline, naming this rank and what it was waiting in. Under MPI the abort is `MPI_Abort` on
//! the world (every rank dies, mpirun exits non-zero); in one process it exits with status 3.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type AbortFn = Box<dyn Fn(&str) + Send + Sync>;

struct Slot {
    deadline: Instant,
    what: String,
}

struct Inner {
    rank: usize,
    collective_timeout: Duration,
    step: Mutex<Option<Slot>>,
    collective: Mutex<Option<Slot>>,
    stop: AtomicBool,
    abort: AbortFn,
}

/// A cloneable handle to the watchdog thread.
#[derive(Clone)]
pub struct Watchdog {
    inner: Arc<Inner>,
}

/// Disarms its slot when dropped.
pub struct Armed {
    inner: Arc<Inner>,
    collective: bool,
}

impl Drop for Armed {
    fn drop(&mut self) {
        let slot = if self.collective { &self.inner.collective } else { &self.inner.step };
        if let Ok(mut s) = slot.lock() {
            *s = None;
        }
    }
}

impl Watchdog {
    /// Start the thread. `abort(msg)` must not return (MPI_Abort / exit).
    pub fn start(rank: usize, collective_timeout: Duration, abort: AbortFn) -> Self {
        let inner = Arc::new(Inner {
            rank,
            collective_timeout,
            step: Mutex::new(None),
            collective: Mutex::new(None),
            stop: AtomicBool::new(false),
            abort,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("arbor-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(50));
                let Some(inner) = weak.upgrade() else { return };
                if inner.stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = Instant::now();
                for (slot, kind) in [(&inner.collective, "collective"), (&inner.step, "step")] {
                    let expired =
                        slot.lock().ok().and_then(|s| s.as_ref().filter(|s| now >= s.deadline).map(|s| s.what.clone()));
                    if let Some(what) = expired {
                        let msg = format!(
                            "rank {}: watchdog: {kind} `{what}` did not finish in time; aborting the job",
                            inner.rank
                        );
                        eprintln!("arbor {msg}");
                        (inner.abort)(&msg);
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| eprintln!("arbor rank {rank}: could not start the watchdog thread: {e}"));
        Watchdog { inner }
    }

    /// Arm the step deadline: `what` must finish within `timeout`.
    pub fn watch_step(&self, what: &str, timeout: Duration) -> Armed {
        if let Ok(mut s) = self.inner.step.lock() {
            *s = Some(Slot { deadline: Instant::now() + timeout, what: what.to_string() });
        }
        Armed { inner: self.inner.clone(), collective: false }
    }

    /// Arm the collective deadline (the configured collective timeout).
    pub fn watch_collective(&self, what: &str) -> Armed {
        if let Ok(mut s) = self.inner.collective.lock() {
            *s = Some(Slot { deadline: Instant::now() + self.inner.collective_timeout, what: what.to_string() });
        }
        Armed { inner: self.inner.clone(), collective: true }
    }

    /// Stop the thread (at the end of a run).
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn an_expired_deadline_calls_abort_with_the_rank_and_what() {
        let hits = Arc::new(Mutex::new(Vec::<String>::new()));
        let h = hits.clone();
        let wd = Watchdog::start(
            3,
            Duration::from_millis(100),
            Box::new(move |m| {
                h.lock().unwrap().push(m.to_string());
            }),
        );
        {
            let _g = wd.watch_collective("all_reduce_sum_f32");
            std::thread::sleep(Duration::from_millis(400));
        }
        let got = hits.lock().unwrap().clone();
        assert!(!got.is_empty(), "the watchdog did not fire");
        assert!(got[0].contains("rank 3") && got[0].contains("all_reduce_sum_f32"), "{got:?}");
        // disarmed: no further calls
        let n = got.len();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(hits.lock().unwrap().len(), n);
        wd.stop();
    }

    #[test]
    fn a_finished_step_does_not_fire() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let wd = Watchdog::start(
            0,
            Duration::from_secs(10),
            Box::new(move |_| {
                h.fetch_add(1, Ordering::Relaxed);
            }),
        );
        {
            let _g = wd.watch_step("step 1", Duration::from_millis(300));
        }
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(hits.load(Ordering::Relaxed), 0);
        wd.stop();
    }
}
