//! The run plan: what a validated config does, resolved from its sections once, so that later
//! code matches on enums instead of asking which sections exist.

use super::{AsyncConfig, CriticConfig, RlSection, RunConfig};
use crate::attnrl::{AttnRlConfig, RhythmConfig};
use crate::env::EnvConfig;

/// What the run does, resolved from its sections once.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub supervised_steps: u64,
    pub rl: Option<RlPlan>,
}

/// The RL phase, resolved.
#[derive(Debug, Clone)]
pub struct RlPlan {
    /// `[rl]`
    pub section: RlSection,
    /// `[loss]` or its default.
    pub loss: crate::rl::LossConfig,
    pub sampler: Sampler,
    pub advantage: AdvantageSource,
    /// `[rhythm]`: per-token shaping of the advantages (applies after `advantage`).
    pub shaping: Option<RhythmConfig>,
    pub schedule: Schedule,
    pub workload: Option<crate::rollout::WorkloadConfig>,
}

/// Where a step's samples come from.
#[derive(Debug, Clone)]
pub enum Sampler {
    /// n samples per prompt (GRPO family).
    Groups,
    /// AttnRL trees (`[attnrl]`), on-policy.
    Trees(AttnRlConfig),
    /// AttnRL trees sampled one step ahead (`[attnrl]` off_policy = true).
    OffPolicyTrees(AttnRlConfig),
    /// Multi-turn environments ([env]), env-level async inside the trainer.
    Env(EnvConfig),
}

/// Where the advantages come from.
#[derive(Debug, Clone)]
pub enum AdvantageSource {
    /// Group-normalised rewards (`[rl] advantage`), with zero-std filtering per `[rl] filter_zero_std`.
    Group(crate::rl::AdvantageKind),
    /// GAE on value models (`[critic]`; count >= 2 = AsyPPO mini-critics).
    Gae(CriticConfig),
    /// Tree node values (AttnRL).
    Tree,
}

/// How generation and training take turns.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Generate then train, in the trainer's ranks.
    Sync,
    /// `[async]`: rollout ranks + staleness bound.
    Async(AsyncConfig),
}

impl RunConfig {
    /// The plan of this config. Every config `parse` accepts has one; the precedence below
    /// (`[attnrl]` over [env] and `[critic]`) only matters for combinations that `config::rules`
    /// refuses.
    pub fn plan(&self) -> RunPlan {
        RunPlan { supervised_steps: self.train.steps, rl: self.rl.as_ref().map(|rl| self.rl_plan(rl)) }
    }

    fn rl_plan(&self, rl: &RlSection) -> RlPlan {
        let sampler = match (&self.attnrl, &self.env) {
            (Some(a), _) if a.off_policy => Sampler::OffPolicyTrees(a.clone()),
            (Some(a), _) => Sampler::Trees(a.clone()),
            (None, Some(e)) => Sampler::Env(e.clone()),
            (None, None) => Sampler::Groups,
        };
        let advantage = match (&self.attnrl, &self.critic) {
            (Some(_), _) => AdvantageSource::Tree,
            (None, Some(c)) => AdvantageSource::Gae(c.clone()),
            (None, None) => AdvantageSource::Group(rl.advantage),
        };
        let schedule = match &self.async_rl {
            Some(a) => Schedule::Async(a.clone()),
            None => Schedule::Sync,
        };
        RlPlan {
            section: rl.clone(),
            loss: {
                let mut loss = self.loss.clone().unwrap_or_default();
                // Dr.GRPO's T_max is a constant, the generation budget (the batch's longest response
                // would change the loss's scale from one mini-batch to the next)
                if loss.agg == crate::rl::Aggregation::SeqMeanTokenSumNorm && loss.t_max.is_none() {
                    loss.t_max = Some(rl.max_new_tokens);
                }
                loss
            },
            sampler,
            advantage,
            shaping: self.rhythm.clone(),
            schedule,
            workload: self.workload.clone(),
        }
    }
}

impl RlPlan {
    /// Tree sampling, on- or off-policy.
    pub fn is_trees(&self) -> bool {
        matches!(self.sampler, Sampler::Trees(_) | Sampler::OffPolicyTrees(_))
    }

    /// `[attnrl]` of tree sampling.
    pub fn attnrl(&self) -> Option<&AttnRlConfig> {
        match &self.sampler {
            Sampler::Trees(a) | Sampler::OffPolicyTrees(a) => Some(a),
            Sampler::Groups | Sampler::Env(_) => None,
        }
    }

    /// `[critic]` of GAE advantages.
    pub fn critic(&self) -> Option<&CriticConfig> {
        match &self.advantage {
            AdvantageSource::Gae(c) => Some(c),
            AdvantageSource::Group(_) | AdvantageSource::Tree => None,
        }
    }

    /// `[env]` of environment sampling.
    pub fn env(&self) -> Option<&EnvConfig> {
        match &self.sampler {
            Sampler::Env(e) => Some(e),
            Sampler::Groups | Sampler::Trees(_) | Sampler::OffPolicyTrees(_) => None,
        }
    }

    /// `[async]` of the asynchronous schedule.
    pub fn async_cfg(&self) -> Option<&AsyncConfig> {
        match &self.schedule {
            Schedule::Async(a) => Some(a),
            Schedule::Sync => None,
        }
    }
}
