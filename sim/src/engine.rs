//! The simulation core: state, event loop and inference dispatch.
//!
//! The trajectory life cycle (`env reset → gen 1 → env step → … → gen T → reward`) lives in
//! [`crate::trajectory`]; step control (barriers, async budget, training, weight sync) in [`crate::control`].

use crate::cost::CostModel;
use crate::event::{ns_from_s, s_from_ns, Event, EventQueue, TimeNs, TraceHash};
use crate::iheap::MinTree;
use crate::metrics::{summarize, Metrics, PolicyResult, RunInfo};
use crate::scenario::{Dispatch, Mode, Placement, Policy, Scenario};
use crate::worker::Worker;
use anyhow::{bail, Result};
use std::collections::VecDeque;

/// Where a sample is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Free,
    Env,
    Queued,
    Gen,
    Barrier,
    Reward,
    WaitReward,
    Done,
    Paused,
}

/// One trajectory (one response of a prompt).
#[derive(Clone, Debug)]
pub struct Sample {
    pub group: u32,
    pub idx: u32,
    /// Bumped on abort/pause/restart; events and queue entries carrying an old tag are ignored.
    pub tag: u32,
    pub phase: Phase,
    /// Phase to resume after a pause.
    pub paused_phase: Phase,
    /// Completed generation turns.
    pub turn: u32,
    pub turns: u32,
    /// Restarts after environment crashes.
    pub attempt: u32,
    /// Cached context tokens (prompt + generated + observations) outside generation.
    pub ctx: u64,
    /// Tokens generated over all turns.
    pub resp_tokens: u64,
    /// Tokens still to generate in the current turn.
    pub gen_left: u64,
    /// Tokens to prefill at the next admission.
    pub prefill: u64,
    pub worker: u32,
    pub admit_step: u64,
    /// The pending environment phase crashes.
    pub env_fails: bool,
    /// Moves in lockstep with the batch (synchronous multi-turn barrier).
    pub lockstep: bool,
    /// Waiting at the barrier after an environment phase (else after a generation turn).
    pub after_env: bool,
    /// Holds one unit of reserved load on its group's pinned worker until first queued.
    pub holds_reservation: bool,
}

/// Life cycle of a prompt's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Free,
    Live,
    Complete,
    Paused,
}

/// A prompt with its n (+ redundancy) responses.
#[derive(Clone, Debug)]
pub struct Group {
    pub prompt: u64,
    pub attempt: u32,
    pub start_version: u32,
    pub target: u32,
    pub done: u32,
    pub samples: Vec<u32>,
    pub pinned: Option<u32>,
    /// Holds one of its pinned engine's group slots (`inference.max_groups_per_engine`).
    pub engine_slot: bool,
    pub difficulty: f64,
    /// The prompt's standard-normal length deviate `Z_prompt` (`workload.prompt_correlation`; 0 without).
    pub latent: f64,
    pub state: GroupState,
}

/// One policy run.
pub struct Sim<'a> {
    pub sc: &'a Scenario,
    pub pol: &'a Policy,
    pub cost: CostModel,
    pub seed: u64,
    pub q: EventQueue,
    pub now: TimeNs,
    pub hash: TraceHash,
    pub events: u64,
    pub workers: Vec<Worker>,
    /// Load per worker (least loaded first, ties by lowest index).
    pub load_heap: MinTree,
    pub rr: u32,
    pub global_queue: VecDeque<(u32, u32)>,
    pub queued: u64,
    pub dirty: Vec<u32>,
    pub is_dirty: Vec<bool>,
    pub samples: Vec<Sample>,
    pub free_samples: Vec<u32>,
    pub groups: Vec<Group>,
    pub free_groups: Vec<u32>,
    pub next_prompt: u64,
    pub retry: VecDeque<(u64, u32)>,
    pub version: u32,
    pub trained: u32,
    pub trainer_busy: bool,
    pub consumed_groups: u64,
    pub live_groups: Vec<u32>,
    pub live_count: u64,
    pub buffer: VecDeque<u32>,
    pub step_groups: Vec<u32>,
    pub paused_groups: Vec<u32>,
    pub barrier_expected: u64,
    pub barrier_arrived: Vec<u32>,
    pub step_start_ns: TimeNs,
    pub finished: bool,
    /// Launching a batch: barrier checks wait until every sample of the batch exists.
    pub launching: bool,
    pub alpha_steps: u32,
    /// Streaming training: groups of the current step already taken by the trainer.
    pub step_taken: u32,
    /// Synchronous mode: groups of the current step complete so far.
    pub step_complete: u32,
    /// Long rounds: prompts aborted at a tail-batching cutoff, waiting for a long round.
    pub long_pool: VecDeque<(u64, u32)>,
    /// Long rounds: the step being launched draws its prompts from `long_pool`.
    pub launch_long: bool,
    /// Environment and reward events (`EnvDone`, `RewardDone`) queued and not yet popped: samples in
    /// an environment phase or a reward computation, which async launching counts as in flight.
    pub pending_latency: u64,
    /// Sequences decoding on the inference workers (the sum of their `active`, kept as they
    /// admit and drop sequences: an async launch asks for it at every event).
    pub generating: u64,
    pub m: Metrics,
}

impl<'a> Sim<'a> {
    /// Prepare a run of `pol` with `train_fraction` (disaggregated split) and `seed`.
    pub fn new(sc: &'a Scenario, pol: &'a Policy, train_fraction: f64, seed: u64) -> Sim<'a> {
        let cost = CostModel::new(sc, pol, train_fraction);
        let k = cost.workers as usize;
        let alpha_steps = match pol.mode {
            Mode::Sync => 0,
            Mode::OneStepOffPolicy => 1,
            Mode::Async if pol.alpha.is_finite() => pol.alpha.ceil().min(1e6) as u32,
            Mode::Async => u32::MAX,
        };
        Sim {
            sc,
            pol,
            cost,
            seed,
            q: EventQueue::with_workers(k),
            now: 0,
            hash: TraceHash::default(),
            events: 0,
            workers: (0..k).map(|_| Worker::default()).collect(),
            load_heap: MinTree::new(k),
            rr: 0,
            global_queue: VecDeque::new(),
            queued: 0,
            dirty: Vec::new(),
            is_dirty: vec![false; k],
            samples: Vec::new(),
            free_samples: Vec::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            next_prompt: 0,
            retry: VecDeque::new(),
            version: 0,
            trained: 0,
            trainer_busy: false,
            consumed_groups: 0,
            live_groups: Vec::new(),
            live_count: 0,
            buffer: VecDeque::new(),
            step_groups: Vec::new(),
            paused_groups: Vec::new(),
            barrier_expected: 0,
            barrier_arrived: Vec::new(),
            step_start_ns: 0,
            finished: false,
            launching: false,
            alpha_steps,
            step_taken: 0,
            step_complete: 0,
            long_pool: VecDeque::new(),
            launch_long: false,
            pending_latency: 0,
            generating: 0,
            m: Metrics::default(),
        }
    }

    /// Run until `steps` training steps are done; returns the summary.
    pub fn run(mut self, train_fraction: Option<f64>) -> Result<(PolicyResult, Metrics)> {
        let wall = std::time::Instant::now();
        let limit_ns = ns_from_s(self.sc.limits.sim_time_s_max);
        self.start();
        self.flush_dirty();
        while !self.finished {
            let Some((t, ev)) = self.q.pop() else {
                bail!(
                    "policy {:?}: simulation stalled at t = {:.3} s after {} steps (no events left); seed {}",
                    self.pol.name,
                    s_from_ns(self.now),
                    self.trained,
                    self.seed
                );
            };
            if let Event::WorkerNext { worker, epoch } = ev {
                if self.workers[worker as usize].epoch != epoch {
                    continue;
                }
            }
            self.now = t;
            self.events += 1;
            self.hash.event(t, &ev);
            if self.events > self.sc.limits.events_max || t > limit_ns {
                bail!(
                    "policy {:?}: limit reached (limits.events_max = {}, limits.sim_time_s_max = {}) at step {}; seed {}",
                    self.pol.name,
                    self.sc.limits.events_max,
                    self.sc.limits.sim_time_s_max,
                    self.trained,
                    self.seed
                );
            }
            self.handle(ev);
            self.flush_dirty();
            // (the running count of decoding sequences, checked against the workers now and then)
            if (self.events & 0xffff == 0 || self.finished) && !self.generating_is_counted() {
                bail!(
                    "policy {:?}: internal error: the count of decoding sequences drifted at event {}",
                    self.pol.name,
                    self.events
                );
            }
        }
        let info = RunInfo {
            policy: &self.pol.name,
            seed: self.seed,
            gpus: self.sc.hardware.gpus,
            workers: self.cost.workers,
            tp: self.cost.tp,
            train_gpus: self.cost.train_gpus,
            colocated: self.pol.placement == Placement::Colocated,
            train_fraction,
            warmup_steps: self.sc.warmup_steps,
            events: self.events,
            trace_hash: self.hash.0,
            wall_s: wall.elapsed().as_secs_f64(),
        };
        let res = summarize(&self.m, info);
        Ok((res, self.m))
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::WorkerNext { worker, .. } => self.worker_next(worker),
            // (a stale event, of a sample aborted or paused since, only frees its latency slot,
            // which launching may have been waiting for)
            Event::EnvDone { sample, tag } => {
                self.pending_latency -= 1;
                if self.samples[sample as usize].tag == tag {
                    self.env_done(sample);
                } else {
                    self.after_capacity_freed();
                }
            }
            Event::RewardDone { sample, tag } => {
                self.pending_latency -= 1;
                if self.samples[sample as usize].tag == tag {
                    self.sample_done(sample);
                } else {
                    self.after_capacity_freed();
                }
            }
            Event::RewardPhaseDone { step } => self.reward_phase_done(step),
            Event::TrainDone { step } => self.train_done(step),
            Event::SyncDone { version } => self.sync_done(version),
        }
    }

    // ---------------------------------------------------------------- workers and dispatch

    pub fn mark_dirty_inner(&mut self, w: u32) {
        self.mark_dirty(w)
    }

    fn mark_dirty(&mut self, w: u32) {
        if !self.is_dirty[w as usize] {
            self.is_dirty[w as usize] = true;
            self.dirty.push(w);
        }
    }

    /// Settle every worker whose batch changed during the last event: resolve a KV-cache overflow,
    /// let a worker with free slots take queued requests (a slot freed by an abort or preemption is
    /// refilled as soon as the event is over), then reschedule its next event. Handling a worker can
    /// mark more workers dirty; they are settled in the same pass.
    fn flush_dirty(&mut self) {
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

    fn load(&self, w: u32) -> u32 {
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
    fn least_loaded(&mut self) -> u32 {
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
    fn fill(&mut self, w: u32) {
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
    fn preempt_overflow(&mut self, w: u32) {
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
