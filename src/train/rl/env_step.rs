//! RL sampling from multi-turn environments (`[env]`): this rank's share of the step's groups
//! (plus its share of the redundant ones) played by `env::runner`, one training sample per
//! policy turn with its trajectory's group advantage.

use super::{AttnTrace, RlTrainer, Sampled, StepSample};
use crate::env::runner::Play;
use crate::env::{rollout, EnvConfig, EnvMode};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::parallel::{partition, Comm};
use crate::rl::{broadcast_to_tokens, group_advantages};
use crate::rollout::{GenerateConfig, SamplingParams};
use crate::tokenizer::char::{CharTokenizer, EOS_ID};
use crate::train::rl::Sample;

/// Game ids of the evaluation split start here (training games: see [`games_of`]).
pub const EVAL_GAMES: u64 = 1 << 48;

/// Game ids are (step << GAME_BITS) | index: a game's id does not depend on the redundancy.
pub const GAME_BITS: u32 = 24;

/// The games this rank plays at `step`: its share of the needed groups, then its share of the
/// redundant ones, and how many of them it must keep.
pub fn games_of(ec: &EnvConfig, groups: usize, step: u64, dp: &dyn Comm) -> (Vec<u64>, usize) {
    let mine = partition(groups, dp.size(), dp.rank());
    let extra = partition(ec.extra_groups, dp.size(), dp.rank());
    let mut games: Vec<u64> = mine.clone().map(|i| (step << GAME_BITS) | i as u64).collect();
    games.extend(extra.map(|i| (step << GAME_BITS) | (groups + i) as u64));
    (games, mine.len())
}

impl RlTrainer<'_> {
    pub(super) fn sample_env(&mut self, model: &Model, step: u64) -> Result<Sampled> {
        let ec = self.cfg.env.as_ref().ok_or_else(|| Error::Invalid("env sampling without [env]".into()))?;
        let rl = self.rl;
        let n = rl.samples_per_prompt;
        let (games, keep) = games_of(ec, rl.prompts_per_step, step, self.dp);
        let play = Play {
            model,
            tok: &self.tok,
            env: ec,
            gen: GenerateConfig {
                sampling: SamplingParams {
                    temperature: rl.temperature,
                    top_p: 1.0,
                    top_k: 0,
                    max_new_tokens: rl.max_new_tokens,
                },
                stop_tokens: vec![EOS_ID],
                seed: self.cfg.run.seed,
                step: step + 1,
                max_batch: rl.max_batch,
                workload: None,
            },
            seed: self.cfg.run.seed,
            latent: true,
            mode: ec.mode,
        };
        let r = rollout(&play, &games, keep, n, ec.extra_samples)?;
        let rewards: Vec<f32> = r.groups.iter().flatten().map(|t| t.reward).collect();
        let starts: Vec<usize> = (0..=r.groups.len()).map(|g| g * n as usize).collect();
        let adv = group_advantages(rl.advantage, &rewards, &starts)?;
        let mut out = Sampled {
            generated: Vec::new(),
            train: Vec::new(),
            train_of: Vec::new(),
            candidates: 0,
            effective: 0,
            all_correct: r.groups.iter().filter(|g| g.iter().all(|t| t.reward >= 1.0)).count(),
            all_wrong: r.groups.iter().filter(|g| g.iter().all(|t| t.reward < 1.0)).count(),
            prompts: r.groups.len(),
            zero_std: (adv.zero_std.iter().filter(|&&z| z).count(), adv.zero_std.len()),
            extra: serde_json::Map::new(),
        };
        let mut turns = 0usize;
        for (k, t) in r.groups.iter().flatten().enumerate() {
            let no_signal = rl.filter_zero_std && adv.zero_std[k / n as usize];
            for turn in &t.turns {
                turns += 1;
                let c = &turn.completion;
                let mut tok_adv = vec![0.0f32; c.tokens.len()];
                broadcast_to_tokens(&[adv.advantages[k]], &[0, c.tokens.len()], &mut tok_adv);
                let data = Sample {
                    prompt: turn.prompt.clone(),
                    response: c.tokens.clone(),
                    behav_logp: c.logprobs.clone(),
                    advantages: tok_adv,
                    reward: t.reward,
                };
                if !c.tokens.is_empty() {
                    out.candidates += 1;
                    out.effective += usize::from(adv.advantages[k] != 0.0);
                }
                if !no_signal && !c.tokens.is_empty() {
                    out.train.push(data.clone());
                    out.train_of.push(Some(out.generated.len()));
                }
                out.generated.push(StepSample {
                    prompt_id: c.prompt_id,
                    sample_index: c.sample_index,
                    logp: vec![f32::NAN; c.tokens.len()],
                    finish: c.finish,
                    data,
                    trace: AttnTrace::default(),
                });
            }
        }
        let mut counts = [
            r.groups.len() as f64,
            r.failed_groups as f64,
            r.aborted_groups as f64,
            r.failed_trajectories as f64,
            r.retries as f64,
            turns as f64,
            r.groups.iter().map(Vec::len).sum::<usize>() as f64,
        ];
        self.dp.all_reduce_sum_f64(&mut counts)?;
        let names = [
            "env_groups_kept",
            "env_groups_failed",
            "env_groups_aborted",
            "env_trajectories_failed",
            "env_retries",
            "env_turns",
            "env_trajectories",
        ];
        for (name, v) in names.iter().zip(counts) {
            out.note(name, (v as u64).into());
        }
        out.note("time_env_rollout_s", r.wall_s.into());
        Ok(out)
    }
}

/// Win rate on `games` held-out games (no latency, no failures), greedy or sampled; the games
/// are partitioned over `dp` and the counts all-reduced.
#[allow(clippy::too_many_arguments)]
pub fn env_win_rate(
    model: &Model,
    ec: &EnvConfig,
    seed: u64,
    temperature: f32,
    samples: u32,
    max_new: usize,
    max_batch: usize,
    step: u64,
    dp: &dyn Comm,
) -> Result<f64> {
    let tok = CharTokenizer::default();
    let mine = partition(ec.eval_games, dp.size(), dp.rank());
    let games: Vec<u64> = mine.map(|i| EVAL_GAMES + i as u64).collect();
    let play = Play {
        model,
        tok: &tok,
        env: ec,
        gen: GenerateConfig {
            sampling: SamplingParams { temperature, top_p: 1.0, top_k: 0, max_new_tokens: max_new },
            stop_tokens: vec![EOS_ID],
            seed: seed ^ 0xE7A1,
            step,
            max_batch,
            workload: None,
        },
        seed,
        latent: false,
        mode: EnvMode::Async,
    };
    let r = rollout(&play, &games, games.len(), samples.max(1), 0)?;
    let mut sums = [
        r.groups.iter().flatten().map(|t| f64::from(t.reward)).sum::<f64>(),
        (games.len() * samples.max(1) as usize) as f64,
    ];
    dp.all_reduce_sum_f64(&mut sums)?;
    Ok(sums[0] / sums[1].max(1.0))
}
