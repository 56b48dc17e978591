//! One inference worker (a GPU or a TP group) doing continuous batching, simulated analytically.
//!
//! Between two changes of its batch the worker decodes one token per active sequence per step, and
//! a step costs `a + b · kv` (see [`crate::cost`]). So instead of one event per decode step the
//! worker keeps an anchor (time, step count, cached tokens) and jumps straight to the step at which
//! its next sequence finishes: O(log n) per sequence instead of O(length).
//!
//! KV-cache capacity: the batch's cached tokens grow by one per sequence per step, so the step at
//! which they would exceed the worker's capacity is also known in closed form; the worker's next
//! event is the earlier of that step and the next completion, and at an overflow the engine
//! preempts its newest sequences (see `Sim::preempt_overflow`).

use crate::cost::CostModel;
use crate::event::{ns_from_s, TimeNs};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// A sequence in a worker's batch: finishes when the worker's step counter reaches `finish_step`.
type Entry = Reverse<(u64, u32, u32)>;

/// Continuous-batching inference worker.
#[derive(Default)]
pub struct Worker {
    /// Time of the last step boundary the anchor refers to (plus pending prefill/sync stalls).
    pub anchor_ns: TimeNs,
    /// Decode steps completed up to the anchor.
    pub anchor_step: u64,
    /// Sequences in the batch.
    pub active: u32,
    /// Cached tokens of all active sequences at the anchor.
    pub kv_tokens: u64,
    /// Bumped whenever the next-completion time changes; stale events are ignored.
    pub epoch: u32,
    /// Requests pinned to this worker (static dispatch or a prompt's group), FIFO.
    pub local_queue: VecDeque<(u32, u32)>,
    /// Sequences of groups pinned here that are not queued yet (counted as load).
    pub reserved: u32,
    /// Pinned groups holding one of this engine's group slots.
    pub groups_running: u32,
    /// Start of the current busy interval.
    pub busy_since: Option<TimeNs>,
    heap: BinaryHeap<Entry>,
    /// Heap entries whose sequence was removed ([`Worker::remove`]) and that are still in the heap;
    /// while 0, the heap top is live without asking.
    stale: u32,
    /// The completion last computed by [`Worker::next_completion`]: the worker reaches step
    /// `sched_step` at `sched_ns` unless its batch changes first (`sched_ok` cleared).
    sched_step: u64,
    sched_ns: TimeNs,
    sched_ok: bool,
    /// (sample, tag) in admission order, newest last: preemption takes the newest live entry.
    /// Entries of sequences that left the batch stay until popped or compacted.
    pub order: Vec<(u32, u32)>,
}

impl Worker {
    /// Move the anchor to the last step boundary at or before `now`.
    pub fn advance(&mut self, now: TimeNs, cost: &CostModel) {
        if self.active == 0 {
            self.anchor_ns = self.anchor_ns.max(now);
            return;
        }
        if now <= self.anchor_ns {
            return;
        }
        // One extra nanosecond absorbs the rounding of event times to whole nanoseconds.
        let dt_s = (now - self.anchor_ns + 1) as f64 * 1e-9;
        let m = cost.steps_within(dt_s, self.active as u64, self.kv_tokens);
        if m == 0 {
            return;
        }
        let t = cost.steps_time_s(m, self.active as u64, self.kv_tokens);
        self.anchor_ns += ns_from_s(t).min(now - self.anchor_ns);
        self.anchor_step += m;
        self.kv_tokens += m * self.active as u64;
    }

    /// Move the anchor to the completion computed by [`Worker::next_completion`] when `now` is its
    /// time (the usual case: the worker's own completion event), without solving for the step count.
    /// Falls back to [`Worker::advance`] otherwise.
    #[inline]
    pub fn advance_to_completion(&mut self, now: TimeNs, cost: &CostModel) {
        if self.sched_ok && now == self.sched_ns && self.active > 0 && self.sched_step > self.anchor_step {
            let m = self.sched_step - self.anchor_step;
            self.anchor_ns = self.sched_ns;
            self.anchor_step = self.sched_step;
            self.kv_tokens += m * self.active as u64;
        } else {
            self.advance(now, cost);
        }
    }

    /// Add a sequence with `ctx` cached tokens that will generate `gen` more tokens; `stall_s` of prefill.
    pub fn admit(&mut self, sample: u32, tag: u32, ctx: u64, gen: u64, stall_s: f64) {
        self.sched_ok = false;
        self.heap.push(Reverse((self.anchor_step + gen.max(1), sample, tag)));
        self.active += 1;
        self.kv_tokens += ctx;
        self.anchor_ns = self.anchor_ns.saturating_add(ns_from_s(stall_s));
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// Delay the worker by `stall_s` from `now` (weight sync in place).
    pub fn stall(&mut self, now: TimeNs, stall_s: f64, cost: &CostModel) {
        self.advance(now, cost);
        self.sched_ok = false;
        self.anchor_ns = self.anchor_ns.max(now).saturating_add(ns_from_s(stall_s));
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// Remove an active sequence that currently holds `ctx_now` cached tokens (abort or pause).
    /// Its heap entry stays and is skipped later because its tag no longer matches.
    pub fn remove(&mut self, ctx_now: u64) {
        self.stale += 1;
        self.drop_one(ctx_now);
    }

    /// One active sequence leaves the batch with `ctx_now` cached tokens.
    fn drop_one(&mut self, ctx_now: u64) {
        self.sched_ok = false;
        self.active -= 1;
        self.kv_tokens = self.kv_tokens.saturating_sub(ctx_now);
        if self.active == 0 {
            self.kv_tokens = 0;
        }
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// Drop heap entries whose sample is no longer live here.
    #[inline]
    fn skip_stale(&mut self, live: &impl Fn(u32, u32) -> bool) {
        if self.active == 0 {
            self.heap.clear();
            self.stale = 0;
            return;
        }
        while self.stale > 0 {
            let Some(&Reverse((_, s, tag))) = self.heap.peek() else { break };
            if live(s, tag) {
                break;
            }
            self.heap.pop();
            self.stale -= 1;
        }
    }

    /// Pop one sequence that has finished by the anchor step, with its cached tokens removed.
    pub fn pop_finished(&mut self, live: &impl Fn(u32, u32) -> bool, ctx_of: impl Fn(u32) -> u64) -> Option<u32> {
        self.skip_stale(live);
        let &Reverse((finish, s, _)) = self.heap.peek()?;
        if finish > self.anchor_step {
            return None;
        }
        self.heap.pop();
        self.drop_one(ctx_of(s));
        Some(s)
    }

    /// True when the batch has no room for one more token per sequence (and more than one sequence,
    /// so that preempting one can help).
    #[inline]
    pub fn kv_overflow(&self, cost: &CostModel) -> bool {
        self.active > 1 && self.kv_tokens.saturating_add(self.active as u64) > cost.kv_capacity
    }

    /// Time of the next completion or KV-cache overflow, if any sequence is active.
    pub fn next_completion(&mut self, live: &impl Fn(u32, u32) -> bool, cost: &CostModel) -> Option<TimeNs> {
        self.skip_stale(live);
        let &Reverse((finish, _, _)) = self.heap.peek()?;
        let mut m = finish.saturating_sub(self.anchor_step);
        if self.active > 1 && cost.kv_capacity != u64::MAX {
            // Steps that still fit: kv + active · steps <= capacity.
            let fit = cost.kv_capacity.saturating_sub(self.kv_tokens) / self.active as u64;
            m = m.min(fit);
        }
        let finish = self.anchor_step + m;
        let t = self.anchor_ns.saturating_add(ns_from_s(cost.steps_time_s(m, self.active as u64, self.kv_tokens)));
        (self.sched_step, self.sched_ns, self.sched_ok) = (finish.max(self.anchor_step), t, true);
        Some(t)
    }

    /// Steps this worker has decoded since `step` (tokens generated by a sequence admitted then).
    pub fn steps_since(&self, step: u64) -> u64 {
        self.anchor_step.saturating_sub(step)
    }
}
