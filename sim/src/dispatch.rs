//! Inference dispatch of the simulation: which worker a queued generation goes to (least loaded,
//! with reservations), admission into a worker's running batch, preemption when the KV cache
//! overflows, eviction, and each worker's next decode step. Methods of [`Sim`], whose state and
//! event loop live in [`crate::engine`].

use crate::engine::{Phase, Sim};
use crate::scenario::Dispatch;

impl Sim<'_> {
    /// Mark worker `w` for rescheduling of its next event (at the end of the current event).
    pub(crate) fn mark_dirty(&mut self, w: u32) {
        if !self.is_dirty[w as usize] {
            self.is_dirty[w as usize] = true;
            self.dirty.push(w);
        }
    }

    /// Settle every worker whose batch changed during the last event: resolve a KV-cache overflow,
    /// let a worker with free slots take queued requests (a slot freed by an abort or preemption is
    /// refilled as soon as the event is over), then reschedule its next event. Handling a worker can
    /// mark more workers dirty; they are settled in the same pass.
    pub(crate) fn flush_dirty(&mut self) {
        let cap = self.sc.inference.max_concurrency;
        let mut i = 0;
        while i < self.dirty.len() {
            let w = self.dirty[i];
            i += 1;
            if self.workers[w as usize].kv_overflow(&self.cost) {
                self.preempt_overflow(w);
            }
            let wk = &self.workers[w as usize];
            if wk.active < cap && !(wk.local_queue.is_empty() && self.global_queue.is_empty()) {
                self.fill(w);
            }
            self.is_dirty[w as usize] = false;
            let samples = &self.samples;
            let live = |s: u32, tag: u32| {
                let x = &samples[s as usize];
                x.tag == tag && x.phase == Phase::Gen
            };
            let wk = &mut self.workers[w as usize];
            wk.epoch = wk.epoch.wrapping_add(1);
            let t = wk.next_completion(&live, &self.cost).map(|t| t.max(self.now));
            self.q.set_worker(w, t, wk.epoch);
        }
        self.dirty.clear();
    }

    pub(crate) fn load(&self, w: u32) -> u32 {
        let wk = &self.workers[w as usize];
        wk.active + wk.local_queue.len() as u32 + wk.reserved
    }

    /// A group leaves its engine (complete, aborted or paused): free its group slot.
    pub fn release_engine_slot(&mut self, g: u32) {
        let grp = &mut self.groups[g as usize];
        if std::mem::take(&mut grp.engine_slot) {
            if let Some(w) = grp.pinned {
                let wk = &mut self.workers[w as usize];
                wk.groups_running = wk.groups_running.saturating_sub(1);
                self.mark_dirty(w);
            }
        }
    }

    /// Give back one unit of reserved load.
    pub fn release_reservation(&mut self, w: u32) {
        let wk = &mut self.workers[w as usize];
        wk.reserved = wk.reserved.saturating_sub(1);
        self.push_load(w);
    }

    /// Reserve `n` sequences of load on worker `w` (a group pinned there).
    pub fn reserve(&mut self, w: u32, n: u32) {
        self.workers[w as usize].reserved += n;
        self.push_load(w);
    }

    pub(crate) fn push_load(&mut self, w: u32) {
        let l = self.load(w);
        self.load_heap.set(w, l);
    }

    /// Least-loaded worker (ties by lowest index).
    pub(crate) fn least_loaded(&mut self) -> u32 {
        self.load_heap.least()
    }

    /// Choose the worker a new request (or pinned group) goes to.
    pub fn pick_worker(&mut self) -> u32 {
        match self.pol.dispatch {
            Dispatch::Static => {
                let w = self.rr % self.workers.len() as u32;
                self.rr = self.rr.wrapping_add(1);
                w
            }
            Dispatch::Queue => self.least_loaded(),
        }
    }

    /// Queue a sample's next generation turn.
    pub fn enqueue_gen(&mut self, s: u32) {
        let (g, tag, held) = {
            let x = &mut self.samples[s as usize];
            x.phase = Phase::Queued;
            let held = std::mem::take(&mut x.holds_reservation);
            (x.group, x.tag, held)
        };
        let w = match self.groups[g as usize].pinned {
            Some(w) => {
                if held {
                    self.release_reservation(w);
                }
                w
            }
            None if self.pol.dispatch == Dispatch::Queue => {
                let w = self.least_loaded();
                if self.workers[w as usize].active >= self.sc.inference.max_concurrency {
                    self.global_queue.push_back((s, tag));
                    self.queued += 1;
                    return;
                }
                w
            }
            None => self.pick_worker(),
        };
        self.workers[w as usize].local_queue.push_back((s, tag));
        self.queued += 1;
        self.fill(w);
    }

    /// Admit queued sequences while the worker has free slots.
    pub(crate) fn fill(&mut self, w: u32) {
        let cap = self.sc.inference.max_concurrency;
        let kv_cap = self.cost.kv_capacity;
        self.workers[w as usize].advance(self.now, &self.cost);
        let mut guard = 0usize;
        while self.workers[w as usize].active < cap {
            guard += 1;
            if guard > 1 << 24 {
                break;
            }
            let wk = &self.workers[w as usize];
            let local = !wk.local_queue.is_empty();
            let next = if local { wk.local_queue.front() } else { self.global_queue.front() };
            let Some(&(mut s, mut tag)) = next else { break };
            // Position in the local queue of the entry taken (0: the head).
            let mut at = 0usize;
            let mut take_slot = false;
            if local {
                if let Some(limit) = self.sc.inference.max_groups_per_engine {
                    // Engine group limit: a group pinned here waits until one of the engine's slots is
                    // free; sequences of groups already holding a slot (their next turn, a preempted
                    // sequence) go past it.
                    let (samples, groups) = (&self.samples, &self.groups);
                    let waits = |&(y, t): &(u32, u32)| {
                        let x = &samples[y as usize];
                        let g = &groups[x.group as usize];
                        x.tag == t && x.phase == Phase::Queued && g.pinned == Some(w) && !g.engine_slot
                    };
                    if waits(&(s, tag)) {
                        if wk.groups_running < limit {
                            take_slot = true;
                        } else {
                            match wk.local_queue.iter().position(|e| !waits(e)) {
                                Some(i) => (at, (s, tag)) = (i, wk.local_queue[i]),
                                None => break,
                            }
                        }
                    }
                }
            }
            let x = &self.samples[s as usize];
            let live = x.tag == tag && x.phase == Phase::Queued;
            // KV admission (vLLM-style, first come first served): the head waits until its context
            // plus one more token for every sequence fits; an idle worker always admits.
            if live && wk.active > 0 && wk.kv_tokens + x.ctx + wk.active as u64 + 1 > kv_cap {
                break;
            }
            if live && local && self.request_grouped(s, w) {
                // Request admission: the group's queued samples together, or none (admission.rs).
                if !self.admit_request(w, s) {
                    break;
                }
                if take_slot {
                    let g = self.samples[s as usize].group;
                    self.groups[g as usize].engine_slot = true;
                    self.workers[w as usize].groups_running += 1;
                }
                continue;
            }
            if local {
                self.workers[w as usize].local_queue.remove(at);
            } else {
                self.global_queue.pop_front();
            }
            self.queued -= 1;
            if take_slot {
                let g = self.samples[s as usize].group;
                self.groups[g as usize].engine_slot = true;
                self.workers[w as usize].groups_running += 1;
            }
            if live {
                self.admit(s, w);
            }
        }
        self.push_load(w);
    }

    /// KV-cache overflow on worker `w` (no room for the next decode step): preempt the newest
    /// sequences, as vLLM's recompute preemption does, until the rest fit. A preempted sequence keeps
    /// the tokens it generated, goes back to the front of this worker's queue and, when readmitted,
    /// prefills its whole context again.
    pub(crate) fn preempt_overflow(&mut self, w: u32) {
        let mut guard = 0usize;
        while self.workers[w as usize].kv_overflow(&self.cost) && guard < 1 << 24 {
            guard += 1;
            let Some((s, tag)) = self.workers[w as usize].order.pop() else { break };
            let x = &self.samples[s as usize];
            if !(x.tag == tag && x.phase == Phase::Gen && x.worker == w) {
                continue;
            }
            self.preempt_one(w, s);
            if self.request_grouped(s, w) {
                self.preempt_request_rest(w, s);
            }
        }
    }

    pub(crate) fn admit(&mut self, s: u32, w: u32) {
        let now = self.now;
        let cost = &self.cost;
        let wk = &mut self.workers[w as usize];
        wk.advance(now, cost);
        if wk.active == 0 {
            wk.busy_since = Some(now);
            self.m.infer_busy.push((now, cost.tp as i32));
        }
        let x = &mut self.samples[s as usize];
        let stall = x.prefill as f64 * cost.prefill_per_token_s;
        x.prefill = 0;
        x.phase = Phase::Gen;
        x.worker = w;
        x.admit_step = wk.anchor_step;
        wk.admit(s, x.tag, x.ctx, x.gen_left, stall);
        self.generating += 1;
        if cost.kv_capacity != u64::MAX {
            wk.order.push((s, x.tag));
            if wk.order.len() > 2 * wk.active as usize + 64 {
                // Drop entries of sequences that left the batch (keeps the stack O(batch)).
                let samples = &self.samples;
                wk.order.retain(|&(y, tag)| {
                    let x = &samples[y as usize];
                    x.tag == tag && x.phase == Phase::Gen && x.worker == w
                });
            }
        }
        self.log_engine(w, s, 0);
        self.mark_dirty(w);
    }

    /// Take a generating sample off its worker, crediting the tokens it decoded so far.
    pub fn evict(&mut self, s: u32) {
        let (w, admit_step) = {
            let x = &self.samples[s as usize];
            (x.worker, x.admit_step)
        };
        let now = self.now;
        let wk = &mut self.workers[w as usize];
        wk.advance(now, &self.cost);
        let done = wk.steps_since(admit_step);
        let x = &mut self.samples[s as usize];
        let done = done.min(x.gen_left.saturating_sub(1));
        wk.remove(x.ctx + done);
        self.generating -= 1;
        x.ctx += done;
        x.resp_tokens += done;
        x.gen_left -= done;
        if wk.active == 0 {
            wk.busy_since = None;
            self.m.infer_busy.push((now, -(self.cost.tp as i32)));
        }
        self.mark_dirty(w);
        self.push_load(w);
    }

    pub(crate) fn worker_next(&mut self, w: u32) {
        let now = self.now;
        self.workers[w as usize].advance_to_completion(now, &self.cost);
        // Pop and handle finished sequences one at a time: handling one can pause or abort others
        // (a batch cutoff, a complete group's redundant members), and a sequence popped but not yet
        // handled would otherwise be evicted a second time and lost.
        loop {
            let popped = {
                let samples = &self.samples;
                let live = |s: u32, tag: u32| {
                    let x = &samples[s as usize];
                    x.tag == tag && x.phase == Phase::Gen
                };
                let wk = &mut self.workers[w as usize];
                let s = wk.pop_finished(&live, |s| {
                    let x = &samples[s as usize];
                    x.ctx + x.gen_left
                });
                if s.is_some() && wk.active == 0 {
                    wk.busy_since = None;
                    self.m.infer_busy.push((now, -(self.cost.tp as i32)));
                }
                s
            };
            let Some(s) = popped else { break };
            self.generating -= 1;
            self.log_engine(w, s, 2);
            self.mark_dirty(w);
            self.push_load(w);
            self.turn_generated(s);
        }
        self.mark_dirty(w);
        self.push_load(w);
        self.fill(w);
        self.after_capacity_freed();
    }
}
