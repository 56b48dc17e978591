//! Never hang: a background thread aborts the whole job when a step or a collective runs past its
//! deadline, naming this rank and what it was waiting in. Under MPI the abort is `MPI_Abort` on
//! the world (every rank dies, mpirun exits non-zero); in one process it exits with status 3.
//!
//! A rank stuck in a collective cannot see the others (they are busy, hung or dead), but it knows
//! which ranks the collective is over: the message names the collective, its number on this rank,
//! how long it waited and during which step, and the ranks that had not entered it — exactly
//! when the group has two ranks, else the candidates ("at least one of ranks ...").

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type AbortFn = Box<dyn Fn(&str) + Send + Sync>;

struct Slot {
    armed: Instant,
    deadline: Instant,
    what: String,
    /// Collectives: their number on this rank (1-based) and the world ranks of the group's other
    /// members, when known.
    seq: u64,
    others: Option<Vec<usize>>,
}

struct Inner {
    rank: usize,
    collective_timeout: Duration,
    /// A longer timeout for the collectives armed while a [`Longer`] guard lives.
    longer: Mutex<Option<Duration>>,
    step: Mutex<Option<Slot>>,
    collective: Mutex<Option<Slot>>,
    /// Collectives armed so far.
    collectives: AtomicU64,
    stop: AtomicBool,
    abort: AbortFn,
}

/// What an expired slot says: `kind` is "collective" or "step"; `step` is the step in progress
/// (for a collective); `others` the other members of the collective's group (world ranks).
fn timeout_message(rank: usize, kind: &str, slot: &Slot, now: Instant, step: Option<&str>) -> String {
    let waited = now.duration_since(slot.armed).as_secs_f64();
    if kind != "collective" {
        return format!(
            "rank {rank}: watchdog: step `{}` did not finish in time ({waited:.1} s); aborting the job",
            slot.what
        );
    }
    let during = step.map(|s| format!(", during `{s}`")).unwrap_or_default();
    let missing = match slot.others.as_deref() {
        None => String::new(),
        Some([]) => "; it is over this rank alone".to_string(),
        Some([one]) => format!("; rank {one} had not entered it (stalled, failed or in another collective)"),
        Some(many) => {
            let list: Vec<String> = many.iter().map(usize::to_string).collect();
            format!(
                "; at least one of ranks {} had not entered it (this rank cannot see which: \
                 a rank waiting in it reports the same)",
                list.join(", ")
            )
        }
    };
    format!(
        "rank {rank}: watchdog: collective `{}` (#{} on this rank{during}) did not finish in time: \
         waited {waited:.1} s{missing}; aborting the job",
        slot.what, slot.seq
    )
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

/// Restores the configured collective timeout when dropped ([`Watchdog::lengthen_collectives`]).
pub struct Longer {
    inner: Arc<Inner>,
}

impl Drop for Longer {
    fn drop(&mut self) {
        if let Ok(mut l) = self.inner.longer.lock() {
            *l = None;
        }
    }
}

impl Watchdog {
    /// Start the thread. `abort(msg)` must not return (MPI_Abort / exit).
    pub fn start(rank: usize, collective_timeout: Duration, abort: AbortFn) -> Self {
        let inner = Arc::new(Inner {
            rank,
            collective_timeout,
            longer: Mutex::new(None),
            step: Mutex::new(None),
            collective: Mutex::new(None),
            collectives: AtomicU64::new(0),
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
                    let step = || inner.step.lock().ok().and_then(|s| s.as_ref().map(|s| s.what.clone()));
                    let expired = slot.lock().ok().and_then(|s| {
                        s.as_ref().filter(|s| now >= s.deadline).map(|s| {
                            let step = if kind == "collective" { step() } else { None };
                            timeout_message(inner.rank, kind, s, now, step.as_deref())
                        })
                    });
                    if let Some(msg) = expired {
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
            let now = Instant::now();
            *s = Some(Slot { armed: now, deadline: now + timeout, what: what.to_string(), seq: 0, others: None });
        }
        Armed { inner: self.inner.clone(), collective: false }
    }

    /// Arm the collective deadline (the configured collective timeout); the group is not known.
    pub fn watch_collective(&self, what: &str) -> Armed {
        self.arm_collective(what, None)
    }

    /// Arm the collective deadline for a collective over this rank and the world ranks `others`
    /// (named in the message if it times out).
    pub fn watch_collective_among(&self, what: &str, others: &[usize]) -> Armed {
        self.arm_collective(what, Some(others.to_vec()))
    }

    /// Until the returned guard drops, collectives get `timeout` where it is longer than the
    /// configured collective timeout: for a collective that some ranks reach long before the
    /// others by design (the rollout ranks of an `[async]` run wait at the job's final barrier
    /// while the trainer evaluates and writes its last checkpoint).
    pub fn lengthen_collectives(&self, timeout: Duration) -> Longer {
        if let Ok(mut l) = self.inner.longer.lock() {
            *l = Some(timeout);
        }
        Longer { inner: self.inner.clone() }
    }

    fn arm_collective(&self, what: &str, others: Option<Vec<usize>>) -> Armed {
        let seq = self.inner.collectives.fetch_add(1, Ordering::Relaxed) + 1;
        let longer = self.inner.longer.lock().ok().and_then(|l| *l).unwrap_or_default();
        let timeout = self.inner.collective_timeout.max(longer);
        if let Ok(mut s) = self.inner.collective.lock() {
            let now = Instant::now();
            // (a timeout too long to add is as good as none: a century)
            let deadline = now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
            *s = Some(Slot { armed: now, deadline, what: what.to_string(), seq, others });
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

    /// A watchdog of `rank` with a 100 ms timeout whose abort records its messages.
    fn recording(rank: usize) -> (Watchdog, Arc<Mutex<Vec<String>>>) {
        let hits = Arc::new(Mutex::new(Vec::<String>::new()));
        let h = hits.clone();
        let wd = Watchdog::start(
            rank,
            Duration::from_millis(100),
            Box::new(move |m| {
                h.lock().unwrap().push(m.to_string());
            }),
        );
        (wd, hits)
    }

    #[test]
    fn an_expired_deadline_calls_abort_with_the_rank_and_what() {
        let (wd, hits) = recording(3);
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
    fn a_collective_timeout_names_the_ranks_that_had_not_entered_it() {
        let (wd, hits) = recording(0);
        let _step = wd.watch_step("step 4", Duration::from_secs(60));
        drop(wd.watch_collective("barrier"));
        {
            let _g = wd.watch_collective_among("all_reduce_sum_f64", &[1]);
            std::thread::sleep(Duration::from_millis(400));
        }
        let got = hits.lock().unwrap().clone();
        assert!(!got.is_empty(), "the watchdog did not fire");
        let m = &got[0];
        for part in [
            "rank 0",
            "`all_reduce_sum_f64` (#2 on this rank, during `step 4`)",
            "did not finish in time",
            "rank 1 had not entered it",
        ] {
            assert!(m.contains(part), "{part:?} missing from {m}");
        }
        wd.stop();

        let now = Instant::now();
        let slot = |others: Option<Vec<usize>>| Slot {
            armed: now - Duration::from_millis(5000),
            deadline: now,
            what: "all_gather".into(),
            seq: 12,
            others,
        };
        let m = timeout_message(2, "collective", &slot(Some(vec![0, 1, 3])), now, None);
        assert!(m.contains("#12 on this rank)") && m.contains("waited 5.0 s"), "{m}");
        assert!(m.contains("at least one of ranks 0, 1, 3 had not entered it"), "{m}");
        let m = timeout_message(2, "collective", &slot(None), now, None);
        assert!(!m.contains("entered"), "{m}");
        let m = timeout_message(2, "step", &slot(None), now, None);
        assert!(m.starts_with("rank 2: watchdog: step `all_gather` did not finish in time"), "{m}");
    }

    /// While a lengthening guard lives, a collective waits past the configured timeout; after it
    /// drops, the configured timeout holds again; an unbounded length does not overflow.
    #[test]
    fn a_lengthened_collective_waits_longer_until_the_guard_drops() {
        let (wd, hits) = recording(1);
        {
            let _long = wd.lengthen_collectives(Duration::from_secs(60));
            let _g = wd.watch_collective("barrier");
            std::thread::sleep(Duration::from_millis(400));
        }
        assert!(hits.lock().unwrap().is_empty(), "a lengthened collective fired");
        {
            let _long = wd.lengthen_collectives(Duration::MAX);
            let _g = wd.watch_collective("barrier");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(hits.lock().unwrap().is_empty(), "an unbounded collective fired");
        {
            let _g = wd.watch_collective("barrier");
            std::thread::sleep(Duration::from_millis(400));
        }
        assert!(!hits.lock().unwrap().is_empty(), "the configured timeout no longer holds");
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
