//! The simulation core: state and event loop.
//!
//! Inference dispatch (workers, admission, preemption) lives in [`crate::dispatch`]; the trajectory life cycle (`env reset → gen 1 → env step → … → gen T → reward`) lives in
//! [`crate::trajectory`]; step control (barriers, async budget, training, weight sync) in [`crate::control`].

use crate::cost::CostModel;
use crate::event::{ns_from_s, s_from_ns, Event, EventQueue, TimeNs, TraceHash};
use crate::iheap::MinTree;
use crate::metrics::{summarize, Metrics, PolicyResult, RunInfo};
use crate::scenario::{Mode, Placement, Policy, Scenario};
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
}
