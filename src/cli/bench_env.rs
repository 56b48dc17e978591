//! `arbor bench env`: what env-level async and redundant environments buy on a latency-injected
//! multi-turn environment. Plays the `[env]` of a config for a few steps in three ways (sync with
//! a barrier per turn; env-level async; env-level async with redundant groups) with the same
//! model, games, latencies and failures, and prints the wall time per step and the speedups.

use crate::config::RunConfig;
use crate::env::runner::Play;
use crate::env::{rollout, EnvMode};
use crate::train::pretrain::build_model;
use crate::train::rl::env_step::games_of;
use crate::train::rl::rollout_config;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `arbor bench env`.
#[derive(Debug, Args)]
pub struct EnvArgs {
    /// A config with `[rl]` and `[env]` (its model: warm start or random init).
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub steps: u64,
    /// Redundant groups of the third mode (default: the config's extra_groups, or ¼ of the groups).
    #[arg(long)]
    pub extra_groups: Option<usize>,
}

/// Run the benchmark and print one line per mode plus a JSON summary.
pub fn run(args: &EnvArgs) -> anyhow::Result<()> {
    let cfg = RunConfig::load(&args.config)?;
    let (rl, ec) = match (&cfg.rl, &cfg.env) {
        (Some(rl), Some(ec)) => (rl, ec),
        _ => anyhow::bail!("{}: bench env needs [rl] and [env] sections", args.config.display()),
    };
    let codec = cfg.text_codec()?;
    let model = build_model(&cfg, &codec).context("building the model")?;
    let extra = args.extra_groups.unwrap_or(if ec.extra_groups > 0 {
        ec.extra_groups
    } else {
        rl.prompts_per_step.div_ceil(4)
    });
    let modes = [
        ("sync", EnvMode::Sync, 0usize),
        ("env_async", EnvMode::Async, 0),
        ("env_async_redundant", EnvMode::Async, extra),
    ];
    let mut secs = Vec::new();
    for (name, mode, extra_groups) in modes {
        let mut env = ec.clone();
        env.extra_groups = extra_groups;
        let (mut wall, mut kept, mut failed) = (0.0, 0usize, 0usize);
        for step in 0..args.steps {
            let (games, keep) = games_of(&env, rl.prompts_per_step, step, &crate::parallel::Local);
            let gen = rollout_config(&cfg, rl, &codec, step, rl.max_new_tokens);
            let play = Play { model: &model, codec: &codec, env: &env, gen, seed: cfg.run.seed, latent: true, mode };
            let mut cpu = |reqs: &[crate::rollout::Request], gen: &crate::rollout::GenerateConfig| {
                crate::rollout::generate(&model, reqs, gen)
            };
            let r = rollout(&play, &mut cpu, &games, keep, rl.samples_per_prompt, ec.extra_samples)?;
            wall += r.wall_s;
            kept += r.groups.len();
            failed += r.failed_groups;
        }
        let per_step = wall / args.steps.max(1) as f64;
        println!(
            "bench env: {name:<20} {per_step:7.3} s/step  groups kept {kept}/{}  failed {failed}  (extra groups {extra_groups})",
            rl.prompts_per_step as u64 * args.steps
        );
        secs.push(per_step);
    }
    let summary = serde_json::json!({
        "bench": "env",
        "steps": args.steps,
        "groups": rl.prompts_per_step,
        "samples_per_group": rl.samples_per_prompt,
        "sync_s_per_step": secs[0],
        "env_async_s_per_step": secs[1],
        "redundant_s_per_step": secs[2],
        "env_async_speedup": secs[0] / secs[1].max(1e-9),
        "redundant_speedup": secs[0] / secs[2].max(1e-9),
    });
    println!("{summary}");
    Ok(())
}
