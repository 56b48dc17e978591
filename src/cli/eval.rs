//! `arbor eval`: the held-out solve rate of a model directory, measured exactly as the RL phase
//! measures it (same problems, same sampling streams), so that a model trained elsewhere (a peer
//! script, another run) is compared with arbor's own evaluations on equal terms.

use crate::config::RunConfig;
use crate::parallel::Local;
use crate::tokenizer::char::CharTokenizer;
use crate::train::rl::evaluate;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `arbor eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run configuration naming the task and the `[rl]` evaluation settings; without it, the
    /// embedded default job.
    #[arg(long)]
    pub config: Option<PathBuf>,
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
    /// Override `rl.eval_problems`.
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
    let mut cfg = RunConfig::load_or_default(args.config.as_deref())?;
    if let Some(s) = args.seed {
        cfg.run.seed = s;
    }
    if let Some(dir) = &args.model {
        cfg.model.hf_dir = Some(dir.clone());
    }
    let Some(mut rl) = cfg.rl.clone() else {
        anyhow::bail!("{}: `arbor eval` needs an [rl] section (its eval_* keys)", config_name(&args.config));
    };
    if let Some(n) = args.problems {
        anyhow::ensure!(n > 0, "--problems must be positive");
        rl.eval_problems = n;
    }
    if let Some(k) = args.samples {
        anyhow::ensure!(k > 0, "--samples must be positive");
        rl.eval_samples = k;
    }
    anyhow::ensure!(cfg.model.hf_dir.is_some(), "no model to evaluate: pass --model DIR or set model.hf_dir");
    let tok = CharTokenizer::default();
    let task = cfg.task()?;
    let model = crate::train::pretrain::build_model(&cfg, &tok).with_context(|| {
        format!("loading {}", cfg.model.hf_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default())
    })?;
    let mut engine = crate::train::engine::Engine::inference(cfg.train.compute(), &model)?;
    let rate = evaluate(&mut engine, &model, &cfg, task.as_ref(), &rl, args.step, &Local)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "eval_solve_rate": rate.sampled,
                "eval_solve_rate_greedy": rate.greedy,
                "eval_problems": rl.eval_problems,
                "eval_samples": rl.eval_samples,
                "step": args.step,
            })
        );
    } else {
        println!(
            "held-out solve rate on {} problems: greedy {:.1}%, sampled (T = 1, {} per problem) {:.1}%",
            rl.eval_problems,
            100.0 * rate.greedy,
            rl.eval_samples,
            100.0 * rate.sampled
        );
    }
    Ok(())
}

fn config_name(path: &Option<PathBuf>) -> String {
    path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the default job".into())
}
