//! The trajectory life cycle and the synchronous multi-turn barrier.
//!
//! `env reset → gen turn 1 → env step → … → gen turn T → reward`: a sample alternates environment
//! phases (latency, fail-slow, fail-stop → restart) and generation turns on an inference worker.

use crate::engine::{Phase, Sample, Sim};
use crate::event::{ns_from_s, Event};
use crate::rng::Rng;
use crate::scenario::{Dispatch, Mode};

const PURPOSE_LENGTH: u64 = 1;
const PURPOSE_TURNS: u64 = 2;
const PURPOSE_ENV: u64 = 3;
const PURPOSE_REWARD: u64 = 4;
const PURPOSE_DIFFICULTY: u64 = 5;
const PURPOSE_CORRELATION: u64 = 6;

impl<'a> Sim<'a> {
    // ---------------------------------------------------------------- trajectory life cycle

    pub(crate) fn rng(&self, purpose: u64, s: u32, turn: u32) -> Rng {
        let x = &self.samples[s as usize];
        let g = &self.groups[x.group as usize];
        // Coordinates packed into three words (turns are clamped to 1e6 < 2^24, purposes < 2^8).
        let sub = purpose | ((turn as u64 & 0xFF_FFFF) << 8) | ((x.attempt as u64) << 32);
        Rng::for_coords(self.seed, &[g.prompt, ((g.attempt as u64) << 32) | x.idx as u64, sub])
    }

    /// Allocate a sample of group `g`, draw its turn count and start its environment reset.
    pub fn new_sample(&mut self, g: u32, idx: u32) -> u32 {
        let s = self.free_samples.pop().unwrap_or_else(|| {
            self.samples.push(Sample {
                group: 0,
                idx: 0,
                tag: 0,
                phase: Phase::Free,
                paused_phase: Phase::Free,
                turn: 0,
                turns: 1,
                attempt: 0,
                ctx: 0,
                resp_tokens: 0,
                gen_left: 0,
                prefill: 0,
                worker: 0,
                admit_step: 0,
                env_fails: false,
                lockstep: false,
                after_env: false,
                holds_reservation: false,
            });
            self.samples.len() as u32 - 1
        });
        let lockstep = self.pol.mode == Mode::Sync && !self.pol.env_async;
        let x = &mut self.samples[s as usize];
        x.group = g;
        x.idx = idx;
        x.tag = x.tag.wrapping_add(1);
        x.attempt = 0;
        x.lockstep = lockstep;
        x.holds_reservation = self.groups[g as usize].pinned.is_some();
        if lockstep {
            self.barrier_expected += 1;
        }
        self.groups[g as usize].samples.push(s);
        self.begin_trajectory(s);
        s
    }

    pub(crate) fn begin_trajectory(&mut self, s: u32) {
        let turns = match &self.sc.workload.turns {
            Some(d) => {
                let mut r = self.rng(PURPOSE_TURNS, s, 0);
                d.sample(&mut r).round().clamp(1.0, 1e6) as u32
            }
            None => 1,
        };
        let x = &mut self.samples[s as usize];
        x.turns = turns;
        x.turn = 0;
        x.ctx = 0;
        x.resp_tokens = 0;
        x.gen_left = 0;
        self.start_env(s);
    }

    /// Start an environment phase (reset before turn 1, step after later turns).
    pub fn start_env(&mut self, s: u32) {
        let w = &self.sc.workload;
        let turn = self.samples[s as usize].turn;
        let dist = if turn == 0 { w.env_reset_s.as_ref() } else { w.env_step_s.as_ref() };
        let (lat, fails) = if dist.is_none() && w.fail_slow_prob <= 0.0 && w.fail_stop_prob <= 0.0 {
            // Nothing to draw: skip deriving the stream (same result, no hashing cost).
            (0.0, false)
        } else {
            let mut r = self.rng(PURPOSE_ENV, s, turn);
            let mut lat = dist.map(|d| d.sample(&mut r)).unwrap_or(0.0);
            if r.chance(w.fail_slow_prob) {
                lat *= w.fail_slow_factor;
            }
            (lat, r.chance(w.fail_stop_prob))
        };
        let x = &mut self.samples[s as usize];
        x.phase = Phase::Env;
        x.env_fails = fails;
        if lat <= 0.0 && !fails {
            self.env_done(s);
        } else {
            let tag = x.tag;
            self.pending_latency += 1;
            self.q.push(self.now.saturating_add(ns_from_s(lat)), Event::EnvDone { sample: s, tag });
        }
    }

    pub(crate) fn env_done(&mut self, s: u32) {
        if self.samples[s as usize].env_fails {
            self.restart(s);
            return;
        }
        let prompt_tokens = self.sc.workload.prompt_tokens as u64;
        let obs = self.sc.workload.obs_tokens_per_turn as u64;
        let x = &mut self.samples[s as usize];
        if x.turn == 0 {
            x.ctx = prompt_tokens;
            x.prefill = prompt_tokens;
        } else {
            x.ctx += obs;
            x.prefill = obs;
        }
        if x.lockstep {
            x.after_env = true;
            self.arrive(s);
        } else {
            self.start_gen_turn(s);
        }
    }

    /// Draw the length of the next turn and queue it.
    pub fn start_gen_turn(&mut self, s: u32) {
        let turn = self.samples[s as usize].turn;
        let mut r = self.rng(PURPOSE_LENGTH, s, turn);
        let grp = &self.groups[self.samples[s as usize].group as usize];
        let (diff, latent) = (grp.difficulty, grp.latent);
        let w = &self.sc.workload;
        let rho = w.prompt_correlation;
        let base = if rho == 0.0 {
            w.response_tokens.sample(&mut r)
        } else {
            // Gaussian copula: the per-sample deviate mixed with the prompt's; the marginal is unchanged.
            w.response_tokens.sample_from_normal(rho.sqrt() * latent + (1.0 - rho).sqrt() * r.normal())
        };
        // Round half up by truncation (no libm call on the hot path); NaN and negatives become 0, then 1.
        let len = ((base * diff + 0.5) as u64).clamp(1, w.max_response_tokens as u64);
        self.samples[s as usize].gen_left = len;
        self.enqueue_gen(s);
    }

    pub(crate) fn restart(&mut self, s: u32) {
        self.m.restarts += 1;
        let x = &mut self.samples[s as usize];
        self.m.aborted_tokens += x.resp_tokens;
        x.attempt += 1;
        x.tag = x.tag.wrapping_add(1);
        if x.lockstep {
            x.lockstep = false;
            self.leave_barrier();
        }
        self.begin_trajectory(s);
    }

    pub(crate) fn turn_generated(&mut self, s: u32) {
        let x = &mut self.samples[s as usize];
        x.ctx += x.gen_left;
        x.resp_tokens += x.gen_left;
        x.gen_left = 0;
        x.turn += 1;
        if x.turn >= x.turns {
            if x.lockstep {
                x.lockstep = false;
                self.leave_barrier();
            }
            self.generation_finished(s);
        } else if x.lockstep {
            x.after_env = false;
            self.arrive(s);
        } else {
            self.start_env(s);
        }
    }

    pub(crate) fn generation_finished(&mut self, s: u32) {
        if self.pol.mode == Mode::Sync && self.pol.dispatch == Dispatch::Static {
            self.samples[s as usize].phase = Phase::WaitReward;
            self.sample_done(s);
            return;
        }
        let lat = match &self.sc.workload.reward_s {
            Some(d) => d.sample(&mut self.rng(PURPOSE_REWARD, s, 0)),
            None => 0.0,
        };
        let x = &mut self.samples[s as usize];
        if lat <= 0.0 {
            self.sample_done(s);
        } else {
            x.phase = Phase::Reward;
            let tag = x.tag;
            self.pending_latency += 1;
            self.q.push(self.now.saturating_add(ns_from_s(lat)), Event::RewardDone { sample: s, tag });
        }
    }

    /// Reward latency of a sample (used by barrier-mode batched rewards).
    pub fn reward_latency_s(&self, s: u32) -> f64 {
        match &self.sc.workload.reward_s {
            Some(d) => d.sample(&mut self.rng(PURPOSE_REWARD, s, 0)),
            None => 0.0,
        }
    }

    /// Per-prompt difficulty factor exp(σ_p · Z).
    pub fn difficulty(&self, prompt: u64) -> f64 {
        let sigma = self.sc.workload.prompt_difficulty_sigma;
        if sigma == 0.0 {
            return 1.0;
        }
        (sigma * Rng::for_coords(self.seed, &[PURPOSE_DIFFICULTY, prompt]).normal()).exp()
    }

    /// The prompt's standard-normal length deviate shared by its samples (0 when
    /// `workload.prompt_correlation` is 0; drawn from its own stream, so other draws do not move).
    pub fn latent(&self, prompt: u64) -> f64 {
        if self.sc.workload.prompt_correlation == 0.0 {
            return 0.0;
        }
        Rng::for_coords(self.seed, &[PURPOSE_CORRELATION, prompt]).normal()
    }

    // ---------------------------------------------------------------- synchronous multi-turn barrier

    pub(crate) fn arrive(&mut self, s: u32) {
        self.samples[s as usize].phase = Phase::Barrier;
        self.barrier_arrived.push(s);
        self.check_barrier();
    }

    /// A lockstep sample stops taking part in the barrier.
    pub fn leave_barrier(&mut self) {
        self.barrier_expected = self.barrier_expected.saturating_sub(1);
        self.check_barrier();
    }

    /// Release the barrier when every lockstep sample has arrived.
    pub fn check_barrier(&mut self) {
        if self.launching
            || self.barrier_arrived.is_empty()
            || (self.barrier_arrived.len() as u64) < self.barrier_expected
        {
            return;
        }
        let mut released = std::mem::take(&mut self.barrier_arrived);
        for &s in &released {
            let x = &self.samples[s as usize];
            if x.phase != Phase::Barrier {
                continue;
            }
            if x.after_env {
                self.start_gen_turn(s);
            } else {
                self.start_env(s);
            }
        }
        if self.barrier_arrived.is_empty() {
            released.clear();
            self.barrier_arrived = released;
        }
    }
}
