//! Step control: launching prompts, batch cutoff, async budget and staleness, training, weight sync.

use crate::engine::{GroupState, Phase, Sim};
use crate::event::{ns_from_s, s_from_ns, Event};
use crate::scenario::{Dispatch, Mode};
use std::collections::VecDeque;

impl<'a> Sim<'a> {
    /// Kick off the run.
    pub fn start(&mut self) {
        if self.sc.steps == 0 {
            self.finished = true;
            return;
        }
        match self.pol.mode {
            Mode::Sync => self.start_step(0),
            _ => self.maybe_launch(),
        }
    }

    fn ledger(&mut self, prompt: u64, attempt: u32, what: u8) {
        if let Some(l) = self.m.ledger.as_mut() {
            l.push((prompt, attempt, what));
        }
    }

    /// Launch one prompt group at the current policy version.
    fn launch_group(&mut self) -> u32 {
        let from_long = if self.launch_long { self.long_pool.pop_front() } else { None };
        let (prompt, attempt) = from_long.or_else(|| self.retry.pop_front()).unwrap_or_else(|| {
            self.next_prompt += 1;
            (self.next_prompt - 1, 0)
        });
        self.ledger(prompt, attempt, 0);
        let g = self.free_groups.pop().unwrap_or_else(|| {
            self.groups.push(crate::engine::Group {
                prompt: 0,
                attempt: 0,
                start_version: 0,
                target: 0,
                done: 0,
                samples: Vec::new(),
                pinned: None,
                engine_slot: false,
                difficulty: 1.0,
                latent: 0.0,
                state: GroupState::Free,
            });
            self.groups.len() as u32 - 1
        });
        let n = self.sc.workload.responses_per_prompt;
        let pinned = if self.pol.prompt_replication { None } else { Some(self.pick_worker()) };
        if let Some(w) = pinned {
            self.reserve(w, n + self.pol.group_size_redundancy);
        }
        let difficulty = self.difficulty(prompt);
        let latent = self.latent(prompt);
        let grp = &mut self.groups[g as usize];
        grp.prompt = prompt;
        grp.attempt = attempt;
        grp.start_version = self.version;
        grp.target = n;
        grp.done = 0;
        grp.samples.clear();
        grp.pinned = pinned;
        grp.engine_slot = false;
        grp.difficulty = difficulty;
        grp.latent = latent;
        grp.state = GroupState::Live;
        self.live_groups.push(g);
        self.live_count += 1;
        for idx in 0..n + self.pol.group_size_redundancy {
            self.new_sample(g, idx);
        }
        g
    }

    /// Synchronous mode: begin step `s` (resume paused groups, launch ⌈η·P⌉ + redundant groups).
    fn start_step(&mut self, s: u32) {
        self.step_start_ns = self.now;
        self.step_groups.clear();
        self.live_groups.clear();
        self.barrier_expected = 0;
        self.barrier_arrived.clear();
        self.launching = true;
        self.step_taken = 0;
        self.step_complete = 0;
        let p = self.sc.workload.prompts_per_step;
        // Long rounds: once P tail-aborted prompts wait, this step trains exactly them.
        self.launch_long = self.pol.long_rounds && self.long_pool.len() >= p as usize;
        let target = if self.launch_long {
            self.m.long_rounds += 1;
            p
        } else {
            (self.pol.tail_eta * p as f64).ceil() as u32 + self.pol.redundant_groups
        };
        let paused = std::mem::take(&mut self.paused_groups);
        for &g in &paused {
            self.groups[g as usize].state = GroupState::Live;
            self.live_groups.push(g);
            self.live_count += 1;
            let members = self.groups[g as usize].samples.clone();
            for x in members {
                self.resume(x);
            }
        }
        let launched = paused.len() as u32;
        for _ in launched..target.max(launched) {
            self.launch_group();
        }
        self.launch_long = false;
        self.launching = false;
        self.check_barrier();
        let _ = s;
    }

    fn resume(&mut self, s: u32) {
        let x = &mut self.samples[s as usize];
        if x.phase != Phase::Paused {
            return;
        }
        x.lockstep = false;
        x.tag = x.tag.wrapping_add(1);
        match x.paused_phase {
            Phase::Gen | Phase::Queued => {
                x.prefill = x.ctx;
                self.enqueue_gen(s)
            }
            Phase::Reward | Phase::WaitReward => self.sample_done(s),
            Phase::Barrier if x.after_env => self.start_gen_turn(s),
            _ => self.start_env(s),
        }
    }

    /// A sample's response is complete (rewarded, or generated under batched rewards).
    pub fn sample_done(&mut self, s: u32) {
        let g = self.samples[s as usize].group;
        self.samples[s as usize].phase = Phase::Done;
        let grp = &mut self.groups[g as usize];
        if grp.state != GroupState::Live {
            return;
        }
        grp.done += 1;
        if grp.done == grp.target {
            self.group_complete(g);
        }
    }

    fn group_complete(&mut self, g: u32) {
        self.groups[g as usize].state = GroupState::Complete;
        self.release_engine_slot(g);
        for i in 0..self.groups[g as usize].samples.len() {
            let s = self.groups[g as usize].samples[i];
            if self.samples[s as usize].phase != Phase::Done {
                self.abort_sample(s);
            }
        }
        match self.pol.mode {
            Mode::Sync => {
                self.step_groups.push(g);
                self.step_complete += 1;
                if self.step_complete == self.sc.workload.prompts_per_step {
                    self.cutoff();
                } else if self.streaming() {
                    self.stream_train_sync();
                }
            }
            _ => {
                self.buffer.push_back(g);
                self.try_train();
            }
        }
    }

    /// Abort one sample (its tokens are wasted work).
    pub fn abort_sample(&mut self, s: u32) {
        let phase = self.samples[s as usize].phase;
        if phase == Phase::Gen {
            self.evict(s);
        }
        if std::mem::take(&mut self.samples[s as usize].holds_reservation) {
            if let Some(w) = self.groups[self.samples[s as usize].group as usize].pinned {
                self.release_reservation(w);
            }
        }
        let x = &mut self.samples[s as usize];
        if phase == Phase::Free {
            return;
        }
        self.m.aborted_samples += 1;
        self.m.aborted_tokens += x.resp_tokens;
        x.tag = x.tag.wrapping_add(1);
        x.phase = Phase::Free;
        if x.lockstep {
            x.lockstep = false;
            if phase == Phase::Barrier {
                self.barrier_arrived.retain(|&y| y != s);
            }
            self.leave_barrier();
        }
    }

    fn pause_sample(&mut self, s: u32) {
        let phase = self.samples[s as usize].phase;
        if matches!(phase, Phase::Done | Phase::Free | Phase::Paused) {
            return;
        }
        if phase == Phase::Gen {
            self.evict(s);
        }
        self.m.paused_samples += 1;
        let x = &mut self.samples[s as usize];
        x.tag = x.tag.wrapping_add(1);
        x.paused_phase = phase;
        x.phase = Phase::Paused;
    }

    /// Abort a group; its prompt goes back to the pool with attempt + 1.
    fn abort_group(&mut self, g: u32) {
        self.abort_group_to(g, false)
    }

    /// Abort a group; its prompt is relaunched with attempt + 1, from the long-prompt pool when `long`.
    fn abort_group_to(&mut self, g: u32, long: bool) {
        self.release_engine_slot(g);
        let members = std::mem::take(&mut self.groups[g as usize].samples);
        for &s in &members {
            self.abort_sample(s);
            self.free_samples.push(s);
        }
        let grp = &mut self.groups[g as usize];
        grp.samples = members;
        grp.samples.clear();
        grp.state = GroupState::Free;
        let (prompt, attempt) = (grp.prompt, grp.attempt);
        self.ledger(prompt, attempt, 1);
        if long {
            self.long_pool.push_back((prompt, attempt + 1));
        } else {
            self.retry.push_back((prompt, attempt + 1));
        }
        self.free_groups.push(g);
        self.live_count -= 1;
    }

    /// Synchronous mode: P groups are complete; stop (abort or pause) the rest, then reward/train.
    fn cutoff(&mut self) {
        let live = std::mem::take(&mut self.live_groups);
        for &g in &live {
            match self.groups[g as usize].state {
                GroupState::Live if self.pol.partial_rollout => {
                    self.release_engine_slot(g);
                    self.groups[g as usize].state = GroupState::Paused;
                    let members = self.groups[g as usize].samples.clone();
                    for s in members {
                        self.pause_sample(s);
                    }
                    self.paused_groups.push(g);
                    self.live_count -= 1;
                }
                GroupState::Live => self.abort_group_to(g, self.pol.long_rounds),
                _ => {}
            }
        }
        self.barrier_expected = 0;
        self.barrier_arrived.clear();
        self.m.gen_phase_s += s_from_ns(self.now - self.step_start_ns);
        let step = self.trained;
        if self.pol.dispatch == Dispatch::Static {
            let groups = self.step_groups.clone();
            let mut lat: f64 = 0.0;
            for g in groups {
                for &s in &self.groups[g as usize].samples {
                    if self.samples[s as usize].phase == Phase::Done {
                        lat = lat.max(self.reward_latency_s(s));
                    }
                }
            }
            self.m.reward_phase_s += lat;
            self.q.push(self.now.saturating_add(ns_from_s(lat)), Event::RewardPhaseDone { step });
        } else if self.streaming() {
            self.stream_train_sync();
        } else {
            let groups = std::mem::take(&mut self.step_groups);
            self.begin_train(step, groups, true);
        }
    }

    /// Streaming training is on (`train_mini_batches > 1`).
    #[inline]
    pub fn streaming(&self) -> bool {
        self.pol.train_mini_batches > 1
    }

    /// Groups the trainer takes next: a mini-batch of ⌈P/k⌉ (the last one of a step may be smaller),
    /// or the whole batch when training is batch-locked.
    fn next_take(&self) -> u32 {
        let p = self.sc.workload.prompts_per_step;
        if self.streaming() {
            p.div_ceil(self.pol.train_mini_batches).min(p - self.step_taken)
        } else {
            p
        }
    }

    /// Synchronous streaming: train the next mini-batch once its groups are complete.
    fn stream_train_sync(&mut self) {
        if self.trainer_busy || self.finished {
            return;
        }
        let need = self.next_take() as usize;
        if need == 0 || self.step_groups.len() < need {
            return;
        }
        let groups: Vec<u32> = self.step_groups.drain(..need).collect();
        self.step_taken += need as u32;
        let last = self.step_taken == self.sc.workload.prompts_per_step;
        self.begin_train(self.trained, groups, last);
    }

    /// Barrier-mode rewards are in; train.
    pub fn reward_phase_done(&mut self, step: u32) {
        let groups = std::mem::take(&mut self.step_groups);
        self.begin_train(step, groups, true);
    }

    /// Consume `groups` for training step `step` (`last`: the step's last mini-batch, which pays
    /// the step's fixed costs).
    fn begin_train(&mut self, step: u32, groups: Vec<u32>, last: bool) {
        let mut tokens = 0u64;
        let mut sq_tokens = 0.0f64;
        for g in groups {
            let (sv, prompt, attempt) = {
                let grp = &self.groups[g as usize];
                (grp.start_version, grp.prompt, grp.attempt)
            };
            let staleness = step.saturating_sub(sv);
            let members = std::mem::take(&mut self.groups[g as usize].samples);
            for &s in &members {
                let x = &mut self.samples[s as usize];
                if x.phase == Phase::Done {
                    tokens += x.ctx;
                    sq_tokens += x.ctx as f64 * x.ctx as f64;
                    self.m.consumed_samples += 1;
                    self.m.consumed_response_tokens += x.resp_tokens;
                    self.m.staleness(staleness);
                }
                x.phase = Phase::Free;
                x.tag = x.tag.wrapping_add(1);
                self.free_samples.push(s);
            }
            self.groups[g as usize].samples = members;
            self.groups[g as usize].samples.clear();
            self.groups[g as usize].state = GroupState::Free;
            self.free_groups.push(g);
            self.ledger(prompt, attempt, 2);
            self.consumed_groups += 1;
            self.live_count -= 1;
        }
        self.m.trained_tokens += tokens;
        self.trainer_busy = true;
        let t = self.now.saturating_add(ns_from_s(self.cost.train_part_s(tokens, sq_tokens, last)));
        self.m.train_intervals.push((self.now, t));
        self.q.push(t, Event::TrainDone { step });
    }

    /// Training of `step` finished: record it, then synchronise weights.
    pub fn train_done(&mut self, step: u32) {
        self.trainer_busy = false;
        if self.streaming() && self.step_taken < self.sc.workload.prompts_per_step {
            // A mini-batch of a streamed step: take the next one when it is complete.
            self.m.mini_batches += 1;
            match self.pol.mode {
                Mode::Sync => self.stream_train_sync(),
                _ => self.try_train(),
            }
            return;
        }
        self.step_taken = 0;
        self.trained = step + 1;
        self.m.step_end_ns.push(self.now);
        if self.trained >= self.sc.steps {
            self.finished = true;
            return;
        }
        let sync_s = self.cost.sync_s;
        self.m.sync_phase_s += sync_s;
        if self.pol.mode != Mode::Sync {
            // Interruptible generation: every inference worker pauses while new weights load.
            for w in 0..self.workers.len() {
                let mut stall = sync_s;
                if self.pol.interruptible {
                    // In-flight sequences recompute their KV cache under the new weights.
                    self.workers[w].advance(self.now, &self.cost);
                    stall += self.workers[w].kv_tokens as f64 * self.cost.prefill_per_token_s;
                }
                self.workers[w].stall(self.now, stall, &self.cost);
                self.mark_dirty(w as u32);
            }
        }
        self.q.push(self.now.saturating_add(ns_from_s(sync_s)), Event::SyncDone { version: step + 1 });
        if self.pol.mode != Mode::Sync {
            self.try_train();
        }
    }

    /// New weights are served.
    pub fn sync_done(&mut self, version: u32) {
        self.version = version;
        if self.pol.interruptible && self.pol.mode != Mode::Sync {
            // Interruptible generation: unfinished groups continue under the new weights.
            for i in 0..self.live_groups.len() {
                let g = self.live_groups[i] as usize;
                if self.groups[g].state == GroupState::Live {
                    self.groups[g].start_version = version;
                }
            }
        }
        match self.pol.mode {
            Mode::Sync => self.start_step(version),
            _ => self.maybe_launch(),
        }
    }

    /// Something finished on a worker: async rollout may refill.
    pub fn after_capacity_freed(&mut self) {
        if self.pol.mode != Mode::Sync {
            self.maybe_launch();
        }
    }

    /// Async: launch prompts while the groups consumed plus those live (launched, not yet trained or
    /// aborted) stay within the budget P·(version + 1) + ⌈α·P⌉, the queues are short, and the samples in
    /// flight (generating, queued, in an environment phase or a reward) fit the workers' slots plus
    /// the queue allowance.
    pub fn maybe_launch(&mut self) {
        let p = self.sc.workload.prompts_per_step as u64;
        let ahead = if self.alpha_steps == u32::MAX {
            u64::MAX / 4
        } else if self.pol.fixed_batches {
            // whole batches: a prompt of batch b launches once b ≤ version + ⌈α⌉
            p * self.pol.alpha.ceil() as u64
        } else if self.pol.mode == Mode::Async {
            (self.pol.alpha * p as f64).ceil() as u64
        } else {
            p * self.alpha_steps as u64
        };
        let allowed = (p * (self.version as u64 + 1)).saturating_add(ahead);
        if self.pol.batch_rollout {
            // one whole batch at a time, once the previous one has finished generating
            let in_flight = self.live_count.saturating_sub(self.buffer.len() as u64);
            if in_flight == 0 && self.consumed_groups + self.live_count + p <= allowed {
                for _ in 0..p {
                    self.launch_group();
                }
            }
            return;
        }
        let n = (self.sc.workload.responses_per_prompt + self.pol.group_size_redundancy) as u64;
        let queue_cap = self.workers.len() as u64 + n;
        // Samples in an environment phase or a reward are not in the queues, so the queue cap alone
        // would let launching run away while they wait (at α = ∞, without bound). Without such phases
        // generating + queued < slots + queue_cap already holds whenever queued < queue_cap does.
        let slots = self.workers.len() as u64 * u64::from(self.sc.inference.max_concurrency);
        let mut guard = 0;
        while self.consumed_groups + self.live_count < allowed
            && self.queued < queue_cap
            && (self.pending_latency == 0 || self.generating + self.queued + self.pending_latency < slots + queue_cap)
            && guard < 1 << 20
        {
            self.launch_group();
            guard += 1;
        }
    }

    /// Whether the running count of decoding sequences equals the sum over the workers (`run` checks
    /// it now and then).
    pub fn generating_is_counted(&self) -> bool {
        self.generating == self.workers.iter().map(|w| u64::from(w.active)).sum::<u64>()
    }

    /// Async: train step `trained` once P fresh-enough groups are complete; abort stale ones.
    pub fn try_train(&mut self) {
        if self.trainer_busy || self.finished {
            return;
        }
        let p = self.next_take() as usize;
        if self.buffer.len() < p {
            return;
        }
        let step = self.trained;
        if self.pol.fixed_batches {
            // exactly batch `step`'s prompts, once every one of them is complete
            let mine = (u64::from(step) * p as u64)..(u64::from(step + 1) * p as u64);
            let of_step = |g: &u32| mine.contains(&self.groups[*g as usize].prompt);
            if self.buffer.iter().filter(|g| of_step(g)).count() < p {
                return;
            }
            let (batch, rest): (Vec<u32>, Vec<u32>) = self.buffer.iter().copied().partition(|g| of_step(g));
            self.buffer = VecDeque::from(rest);
            self.begin_train(step, batch, true);
            self.maybe_launch();
            return;
        }
        let min_version = step.saturating_sub(self.alpha_steps);
        let mut stale = Vec::new();
        self.buffer.retain(|&g| {
            let fresh = self.groups[g as usize].start_version >= min_version;
            if !fresh {
                stale.push(g);
            }
            fresh
        });
        for g in stale {
            self.groups[g as usize].state = GroupState::Live;
            self.abort_group(g);
        }
        if self.buffer.len() < p {
            return;
        }
        let batch: Vec<u32> = self.buffer.drain(..p).collect();
        let last = if self.streaming() {
            self.step_taken += p as u32;
            self.step_taken == self.sc.workload.prompts_per_step
        } else {
            true
        };
        // Older in-flight prompts can never be used: abort them (they are regenerated).
        let live = std::mem::take(&mut self.live_groups);
        let mut keep = Vec::with_capacity(live.len());
        for g in live {
            let grp = &self.groups[g as usize];
            match grp.state {
                GroupState::Live if grp.start_version < min_version => self.abort_group(g),
                GroupState::Live => keep.push(g),
                _ => {}
            }
        }
        self.live_groups = keep;
        self.begin_train(step, batch, last);
        self.maybe_launch();
    }
}
