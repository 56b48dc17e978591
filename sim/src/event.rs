//! Event queue ordered by integer time in ns with deterministic tie-breaks, and the trace hash.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::iheap::IndexedHeap;

/// Simulated time in integer nanoseconds.
pub type TimeNs = u64;

/// Seconds → nanoseconds (rounded, saturating at 0).
#[inline]
pub fn ns_from_s(s: f64) -> TimeNs {
    // Round half up without libm's `round` (hot path); `as` saturates, so +inf maps to u64::MAX and NaN to 0.
    if s > 0.0 {
        (s * 1e9 + 0.5) as TimeNs
    } else {
        0
    }
}

/// Nanoseconds → seconds.
#[inline]
pub fn s_from_ns(t: TimeNs) -> f64 {
    t as f64 * 1e-9
}

/// What happens at an event; payloads are slab indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// Next sequence completion on an inference worker (stale if `epoch` is old).
    WorkerNext { worker: u32, epoch: u32 },
    /// An environment phase (reset or step) of a trajectory finished.
    EnvDone { sample: u32, tag: u32 },
    /// Reward of a sample computed.
    RewardDone { sample: u32, tag: u32 },
    /// Barrier-mode reward phase finished for a step.
    RewardPhaseDone { step: u32 },
    /// Training of a step finished.
    TrainDone { step: u32 },
    /// Weight synchronisation to inference finished; `version` is now served.
    SyncDone { version: u32 },
}

impl Event {
    /// Priority class: lower runs first at equal time (completions before control decisions).
    pub fn class(&self) -> u8 {
        match self {
            Event::WorkerNext { .. } => 0,
            Event::EnvDone { .. } => 1,
            Event::RewardDone { .. } => 2,
            Event::RewardPhaseDone { .. } => 3,
            Event::TrainDone { .. } => 4,
            Event::SyncDone { .. } => 5,
        }
    }

    fn words(&self) -> (u64, u64, u64) {
        match *self {
            Event::WorkerNext { worker, epoch } => (1, worker as u64, epoch as u64),
            Event::EnvDone { sample, tag } => (2, sample as u64, tag as u64),
            Event::RewardDone { sample, tag } => (3, sample as u64, tag as u64),
            Event::RewardPhaseDone { step } => (4, step as u64, 0),
            Event::TrainDone { step } => (5, step as u64, 0),
            Event::SyncDone { version } => (6, version as u64, 0),
        }
    }
}

/// A scheduled event; ordered by (time, class << 56 | insertion sequence) only.
#[derive(Clone, Copy, Debug)]
struct Entry {
    at: TimeNs,
    order: u64,
    ev: Event,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    #[inline]
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// Min-priority queue of events with a deterministic tie-break.
///
/// Worker completions (`Event::WorkerNext`, class 0) live in an indexed heap with one slot per
/// worker that is rescheduled in place ([`EventQueue::set_worker`]), ordered by (time, worker
/// index); the other events in a binary heap ordered by (time, class, insertion sequence). At equal
/// times worker completions come first (class 0), so no stale entries are ever queued.
#[derive(Default)]
pub struct EventQueue {
    heap: BinaryHeap<Reverse<Entry>>,
    /// Worker slots keyed by time (ties by worker index).
    workers: IndexedHeap<TimeNs>,
    epochs: Vec<u32>,
    seq: u64,
    /// A worker whose event was just popped; its slot stays in the heap (at the root) so that the
    /// usual reschedule ([`EventQueue::set_worker`]) updates it in place instead of a remove + insert.
    /// Removed for real if anything else happens first.
    popped: Option<u32>,
}

impl EventQueue {
    /// Empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty queue with worker slots `0..workers`.
    pub fn with_workers(workers: usize) -> Self {
        EventQueue { workers: IndexedHeap::new(workers), epochs: vec![0; workers], ..Self::default() }
    }

    /// Schedule `ev` at absolute time `at` (a `WorkerNext` replaces that worker's pending one).
    #[inline]
    pub fn push(&mut self, at: TimeNs, ev: Event) {
        self.seq += 1;
        if let Event::WorkerNext { worker, epoch } = ev {
            if (worker as usize) < self.epochs.len() {
                if self.popped == Some(worker) {
                    self.popped = None;
                }
                self.epochs[worker as usize] = epoch;
                self.workers.set(worker, at);
                return;
            }
        }
        self.heap.push(Reverse(Entry { at, order: ((ev.class() as u64) << 56) | self.seq, ev }));
    }

    /// Schedule worker `w`'s next completion at `at` (replacing any pending one), or cancel it.
    #[inline]
    pub fn set_worker(&mut self, w: u32, at: Option<TimeNs>, epoch: u32) {
        match at {
            Some(at) => self.push(at, Event::WorkerNext { worker: w, epoch }),
            None => {
                if self.popped == Some(w) {
                    self.popped = None;
                }
                self.workers.remove(w)
            }
        }
    }

    /// Pop the earliest event.
    #[inline]
    pub fn pop(&mut self) -> Option<(TimeNs, Event)> {
        if let Some(w) = self.popped.take() {
            self.workers.remove(w);
        }
        let main = self.heap.peek().map(|r| r.0.at);
        match (self.workers.peek(), main) {
            (Some((w, at)), m) if !matches!(m, Some(m) if m < at) => {
                self.popped = Some(w);
                Some((at, Event::WorkerNext { worker: w, epoch: self.epochs[w as usize] }))
            }
            (_, Some(_)) => self.heap.pop().map(|Reverse(e)| (e.at, e.ev)),
            _ => None,
        }
    }

    /// Number of queued events.
    pub fn len(&self) -> usize {
        self.heap.len() + self.workers.len() - self.popped.is_some() as usize
    }

    /// True when no event is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Order-sensitive 64-bit hash over the processed event stream (one multiply-xorshift round per word).
#[derive(Clone, Copy, Debug)]
pub struct TraceHash(pub u64);

impl Default for TraceHash {
    fn default() -> Self {
        TraceHash(0xcbf2_9ce4_8422_2325)
    }
}

impl TraceHash {
    /// Fold one 64-bit word: `h = (h ^ w) · K; h ^= h >> 29` (every input bit reaches the high half
    /// through the multiply and comes back down through the shift, so later words mix with earlier ones).
    #[inline]
    pub fn word(&mut self, w: u64) {
        let h = (self.0 ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }

    /// Fold an event at time `t`.
    #[inline]
    pub fn event(&mut self, t: TimeNs, e: &Event) {
        let (a, b, c) = e.words();
        self.word(t);
        self.word(a | (b << 8) | (c << 40));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_time_class_then_sequence() {
        let mut q = EventQueue::new();
        q.push(5, Event::TrainDone { step: 1 });
        q.push(5, Event::WorkerNext { worker: 2, epoch: 0 });
        q.push(5, Event::WorkerNext { worker: 1, epoch: 0 });
        q.push(3, Event::SyncDone { version: 1 });
        assert_eq!(q.pop().unwrap(), (3, Event::SyncDone { version: 1 }));
        assert_eq!(q.pop().unwrap(), (5, Event::WorkerNext { worker: 2, epoch: 0 }));
        assert_eq!(q.pop().unwrap(), (5, Event::WorkerNext { worker: 1, epoch: 0 }));
        assert_eq!(q.pop().unwrap(), (5, Event::TrainDone { step: 1 }));
        assert!(q.is_empty());
    }

    #[test]
    fn worker_slots_tie_by_index_and_come_first() {
        let mut q = EventQueue::with_workers(4);
        q.push(5, Event::TrainDone { step: 1 });
        q.push(5, Event::WorkerNext { worker: 2, epoch: 7 });
        q.push(5, Event::WorkerNext { worker: 1, epoch: 3 });
        q.push(9, Event::WorkerNext { worker: 0, epoch: 1 });
        q.set_worker(0, Some(4), 2);
        assert_eq!(q.len(), 4);
        assert_eq!(q.pop().unwrap(), (4, Event::WorkerNext { worker: 0, epoch: 2 }));
        // Popped but not rescheduled: dropped at the next pop.
        assert_eq!(q.pop().unwrap(), (5, Event::WorkerNext { worker: 1, epoch: 3 }));
        q.set_worker(1, Some(6), 4);
        assert_eq!(q.pop().unwrap(), (5, Event::WorkerNext { worker: 2, epoch: 7 }));
        q.set_worker(2, None, 8);
        assert_eq!(q.pop().unwrap(), (5, Event::TrainDone { step: 1 }));
        assert_eq!(q.pop().unwrap(), (6, Event::WorkerNext { worker: 1, epoch: 4 }));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }
}
