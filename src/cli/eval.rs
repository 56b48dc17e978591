//! `arbor eval`: the held-out solve rate of a model directory, measured exactly as the RL phase
//! measures it (same problems, same sampling streams), so that a model trained elsewhere (a peer
//! script, another run) is compared with arbor's own evaluations on equal terms. With an `[env]`
//! table the evaluation plays the environment's `eval_games` held-out games instead of task problems,
//! and reports how many games it played.

use crate::config::{Override, RlSection, RunConfig};
use crate::parallel::Local;
use crate::train::rl::{evaluate, SolveRate};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `arbor eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run configuration naming the task, the prompt template and the `[rl]` evaluation settings;
    /// without it, the config a checkpoint of arbor's was trained with (its `run_config.toml`), else
    /// the embedded default job.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set a config key as the file would (repeatable; the last wins), e.g. `--set
    /// rl.max_new_tokens=256`; applied to whichever config the evaluation reads (see `arbor
    /// train --help`).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = Override::parse)]
    pub set: Vec<Override>,
    /// HF model directory to evaluate (default: the config's `model.hf_dir`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Override `run.seed` (the task's problem stream and the sampling seed derive from it).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The evaluation's sampling stream: that of the RL phase's eval after this many steps
    /// (0 = the eval before RL).
    #[arg(long, default_value_t = 0)]
    pub step: u64,
    /// Override `rl.eval_problems`. Refused when the config has an `[env]` table: its evaluation
    /// plays `env.eval_games` held-out games (set that key to change their number).
    #[arg(long)]
    pub problems: Option<usize>,
    /// Override `rl.eval_samples`.
    #[arg(long)]
    pub samples: Option<u32>,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// Evaluate and print the solve rates.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let recorded = args
        .model
        .as_ref()
        .map(|d| d.join(crate::train::checkpoint::RUN_CONFIG_FILE))
        .filter(|p| args.config.is_none() && p.is_file());
    let mut cfg = match &recorded {
        // a checkpoint is scored on its run's task, in its run's prompt format
        Some(p) => RunConfig::load_with(p, &args.set)?,
        None => RunConfig::load_or_default_with(args.config.as_deref(), &args.set)?,
    };
    if let Some(s) = args.seed {
        cfg.run.seed = s;
    }
    if let Some(dir) = &args.model {
        cfg.model.hf_dir = Some(dir.clone());
    }
    let source = recorded.clone().or_else(|| args.config.clone());
    let (rl, scope) = settings(args, &cfg, &source)?;
    anyhow::ensure!(cfg.model.hf_dir.is_some(), "no model to evaluate: pass --model DIR or set model.hf_dir");
    let codec = cfg.text_codec()?;
    let task = cfg.task(&codec)?;
    // a finite held-out split scores each of its problems once (rl::eval::eval_problem_count)
    let scope = match scope {
        Scope::Problems(n) => Scope::Problems(crate::train::rl::eval::eval_problem_count(task.as_ref(), n)),
        games => games,
    };
    let model = crate::train::pretrain::build_model(&cfg, &codec).with_context(|| {
        format!("loading {}", cfg.model.hf_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default())
    })?;
    let mut engine = crate::train::engine::Engine::inference(cfg.train.compute(), &model)?;
    let rate = evaluate(&mut engine, &model, &cfg, (task.as_ref(), &codec), &rl, args.step, &Local)?;
    println!("{}", report(&rate, &rl, scope, args.step, args.json));
    Ok(())
}

/// What the evaluation plays: `rl.eval_problems` problems of the task, or under `[env]` the
/// environment's `eval_games` held-out games.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Problems(usize),
    Games(usize),
}

/// The config's `[rl]` settings with the overrides of `args` applied, and what the evaluation plays
/// (`source`: the config's file, for errors; none for the default job).
fn settings(args: &EvalArgs, cfg: &RunConfig, source: &Option<PathBuf>) -> anyhow::Result<(RlSection, Scope)> {
    let Some(mut rl) = cfg.rl.clone() else {
        anyhow::bail!("{}: `arbor eval` needs an [rl] section (its eval_* keys)", config_name(source));
    };
    if let Some(n) = args.problems {
        anyhow::ensure!(n > 0, "--problems must be positive");
        if let Some(env) = &cfg.env {
            anyhow::bail!(
                "{}: --problems does not apply to an [env] config, whose evaluation plays env.eval_games = {} \
                 held-out games; set env.eval_games to change their number",
                config_name(source),
                env.eval_games
            );
        }
        rl.eval_problems = n;
    }
    if let Some(k) = args.samples {
        anyhow::ensure!(k > 0, "--samples must be positive");
        rl.eval_samples = k;
    }
    let scope = match &cfg.env {
        Some(env) => Scope::Games(env.eval_games),
        None => Scope::Problems(rl.eval_problems),
    };
    Ok((rl, scope))
}

/// The printed result: a sentence, or one JSON object (`eval_problems` or, under `[env]`, `eval_games`).
fn report(rate: &SolveRate, rl: &RlSection, scope: Scope, step: u64, json: bool) -> String {
    let (key, count, what, unit) = match scope {
        Scope::Problems(n) => ("eval_problems", n, "solve rate", "problem"),
        Scope::Games(n) => ("eval_games", n, "win rate", "game"),
    };
    if json {
        let mut v = serde_json::json!({
            "eval_solve_rate": rate.sampled,
            "eval_solve_rate_greedy": rate.greedy,
            "eval_samples": rl.eval_samples,
            "step": step,
        });
        v[key] = count.into();
        if let Some(p) = rate.pass {
            v["eval_pass_at_k"] = p.rate.into();
        }
        v.to_string()
    } else {
        format!(
            "held-out {what} on {count} {unit}s: greedy {:.1}%, sampled (T = 1, {} per {unit}) {:.1}%{}",
            100.0 * rate.greedy,
            rl.eval_samples,
            100.0 * rate.sampled,
            rate.pass_note()
        )
    }
}

fn config_name(path: &Option<PathBuf>) -> String {
    path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the default job".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rl::PassAtK;

    fn args(problems: Option<usize>) -> EvalArgs {
        EvalArgs {
            config: None,
            set: Vec::new(),
            model: None,
            seed: None,
            step: 0,
            problems,
            samples: None,
            json: true,
        }
    }

    fn with_env(games: usize) -> RunConfig {
        let mut cfg = RunConfig::load_or_default(None).unwrap();
        let text = format!("kind = \"guess\"\neval_games = {games}\n");
        cfg.env = Some(toml::from_str(&text).unwrap());
        cfg
    }

    #[test]
    fn an_env_evaluation_reports_its_games_and_refuses_problems() {
        let rate = SolveRate { greedy: 0.5, sampled: 0.25, pass: Some(PassAtK { k: 4, rate: 0.75 }) };
        let cfg = with_env(12);
        let (rl, scope) = settings(&args(None), &cfg, &None).unwrap();
        assert_eq!(scope, Scope::Games(12));
        let v: serde_json::Value = serde_json::from_str(&report(&rate, &rl, scope, 3, true)).unwrap();
        assert_eq!((v["eval_games"].as_u64(), v.get("eval_problems")), (Some(12), None));
        assert_eq!(v["eval_pass_at_k"].as_f64(), Some(0.75));
        let text = report(&rate, &rl, scope, 3, false);
        assert!(
            text.starts_with("held-out win rate on 12 games: greedy 50.0%") && text.ends_with(", pass@4 75.0%"),
            "{text}"
        );
        let e = settings(&args(Some(5)), &cfg, &None).unwrap_err().to_string();
        assert!(e.contains("--problems does not apply to an [env] config") && e.contains("eval_games = 12"), "{e}");
    }

    #[test]
    fn a_task_evaluation_reports_its_problems() {
        let rate = SolveRate { greedy: 0.5, sampled: 0.25, pass: None };
        let cfg = RunConfig::load_or_default(None).unwrap();
        let (rl, scope) = settings(&args(Some(7)), &cfg, &None).unwrap();
        assert_eq!((scope, rl.eval_problems), (Scope::Problems(7), 7));
        let v: serde_json::Value = serde_json::from_str(&report(&rate, &rl, scope, 3, true)).unwrap();
        assert_eq!((v["eval_problems"].as_u64(), v.get("eval_games")), (Some(7), None));
        assert!(v.get("eval_pass_at_k").is_none());
        assert!(report(&rate, &rl, scope, 3, false).starts_with("held-out solve rate on 7 problems"));
    }
}
