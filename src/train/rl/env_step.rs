//! RL sampling from multi-turn environments (`[env]`): this rank's share of the step's groups
//! (plus its share of the redundant ones) played by `env::runner`, one training sample per
//! policy turn with its trajectory's group advantage.

use super::report::EnvNotes;
use super::rollouts::{rollout_config, RolloutCtx, Rollouts};
use crate::env::runner::Play;
use crate::env::{rollout, EnvConfig};
use crate::error::Result;
use crate::model::Model;
use crate::parallel::{partition, Comm};
use crate::rl::group_advantages;
use crate::train::engine::Engine;

/// Game ids are (step << GAME_BITS) | index: a game's id does not depend on the redundancy.
pub const GAME_BITS: u32 = 24;

/// The games this rank plays at `step`: its share of the needed groups, then its share of the
/// redundant ones, and how many of them it must keep.
pub fn games_of(ec: &EnvConfig, groups: usize, step: u64, dp: &dyn Comm) -> (Vec<u64>, usize) {
    games_of_rank(ec.extra_groups, groups, step, dp.rank(), dp.size())
}

/// [`games_of`] for rank `rank` of `size`: the redundant groups go to the ranks that have groups
/// to keep (a rank with none would play its spares only to discard them).
pub fn games_of_rank(extra_groups: usize, groups: usize, step: u64, rank: usize, size: usize) -> (Vec<u64>, usize) {
    let mine = partition(groups, size, rank);
    let keeping = groups.min(size).max(1);
    let extra = if rank < keeping { partition(extra_groups, keeping, rank) } else { 0..0 };
    let mut games: Vec<u64> = mine.clone().map(|i| (step << GAME_BITS) | i as u64).collect();
    games.extend(extra.map(|i| (step << GAME_BITS) | (groups + i) as u64));
    (games, mine.len())
}

/// Stages 1–3 with `[env]`: this rank's games played to the end, one training sample per policy
/// turn with its trajectory's group advantage.
pub fn sample_env(ctx: &RolloutCtx, ec: &EnvConfig, engine: &mut Engine, model: &Model, step: u64) -> Result<Rollouts> {
    let rl = ctx.rl;
    let n = rl.samples_per_prompt;
    let (games, keep) = games_of(ec, rl.prompts_per_step, step, ctx.dp);
    let gen = rollout_config(ctx.cfg, rl, ctx.codec, step, rl.max_new_tokens);
    let play = Play { model, codec: ctx.codec, env: ec, gen, seed: ctx.cfg.run.seed, latent: true, mode: ec.mode };
    let r = rollout(&play, &mut |reqs, cfg| engine.generate(model, reqs, cfg), &games, keep, n, ec.extra_samples)?;
    let rewards: Vec<f32> = r.groups.iter().flatten().map(|t| t.reward).collect();
    let starts: Vec<usize> = (0..=r.groups.len()).map(|g| g * n as usize).collect();
    let adv = group_advantages(rl.advantage, &rewards, &starts)?;
    let mut out = Rollouts::default();
    out.counts.all_correct = r.groups.iter().filter(|g| g.iter().all(|t| t.reward >= 1.0)).count();
    out.counts.all_wrong = r.groups.iter().filter(|g| g.iter().all(|t| t.reward < 1.0)).count();
    out.counts.prompts = r.groups.len();
    out.counts.zero_std = adv.zero_std.iter().filter(|&&z| z).count();
    out.counts.groups = adv.zero_std.len();
    // one training sample per policy turn, moved out of the rollout
    let trajectories: usize = r.groups.iter().map(Vec::len).sum();
    for (k, t) in r.groups.into_iter().flatten().enumerate() {
        let train = !(rl.filter_zero_std && adv.zero_std[k / n as usize]);
        for turn in t.turns {
            out.push(turn.prompt, turn.completion, adv.advantages[k], t.reward, train);
        }
    }
    let mut counts = [
        out.counts.prompts as f64,
        r.failed_groups as f64,
        r.aborted_groups as f64,
        r.failed_trajectories as f64,
        r.retries as f64,
        out.generated.len() as f64,
        trajectories as f64,
    ];
    ctx.dp.all_reduce_sum_f64(&mut counts)?;
    let [kept, failed, aborted, trajectories_failed, retries, turns, trajectories] = counts.map(|v| v as u64);
    out.notes.env = Some(EnvNotes {
        env_groups_kept: kept,
        env_groups_failed: failed,
        env_groups_aborted: aborted,
        env_trajectories_failed: trajectories_failed,
        env_retries: retries,
        env_turns: turns,
        env_trajectories: trajectories,
        time_env_rollout_s: r.wall_s,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redundant_groups_go_to_the_ranks_that_keep_groups() {
        // one group over two ranks: rank 0 keeps it and plays both spares; rank 1 plays nothing
        assert_eq!(games_of_rank(2, 1, 0, 0, 2), (vec![0, 1, 2], 1));
        assert_eq!(games_of_rank(2, 1, 0, 1, 2), (vec![], 0));
        // enough groups for every rank: the spares are shared as before
        let all: Vec<u64> = (0..3).flat_map(|r| games_of_rank(2, 6, 1, r, 3).0).collect();
        let step = 1u64 << GAME_BITS;
        assert_eq!(all, vec![step, step | 1, step | 6, step | 2, step | 3, step | 7, step | 4, step | 5]);
    }
}
