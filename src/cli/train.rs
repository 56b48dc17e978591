//! `arbor train`: run a training job from a TOML config (or the embedded default).

use crate::config::RunConfig;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `arbor train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Run configuration (TOML); without it the embedded default job runs (configs/default.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override `train.steps`.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override `run.out_dir`.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Override `run.seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from a checkpoint directory, or `latest` (the newest under the run's directory).
    #[arg(long)]
    pub resume: Option<String>,
}

/// Load the config with overrides applied.
pub fn resolve(args: &TrainArgs) -> anyhow::Result<RunConfig> {
    let mut cfg = match &args.config {
        Some(path) => RunConfig::load(path)?,
        None => RunConfig::default_job(),
    };
    if let Some(s) = args.steps {
        anyhow::ensure!(s > 0, "--steps must be positive");
        cfg.train.steps = s;
    }
    if let Some(d) = &args.out_dir {
        cfg.run.out_dir = d.clone();
    }
    if let Some(s) = args.seed {
        cfg.run.seed = s;
    }
    Ok(cfg)
}

/// Run `arbor train` (the thread pool is set up by the caller from `run.threads`).
pub fn run(cfg: &RunConfig, resume: Option<&str>) -> anyhow::Result<()> {
    let dir = match resume {
        None => None,
        Some("latest") => {
            let run_dir = cfg.run.out_dir.join(&cfg.run.name);
            let all = crate::train::checkpoint::list_checkpoints(&run_dir)?;
            let (_, dir) = all
                .last()
                .ok_or_else(|| anyhow::anyhow!("--resume latest: no checkpoint under {}", run_dir.display()))?;
            Some(dir.clone())
        }
        Some(path) => Some(std::path::PathBuf::from(path)),
    };
    let report = crate::train::pretrain::run(cfg, dir.as_deref(), &mut std::io::stdout())?;
    if let (Some(first), false) = (report.losses.first(), report.losses.is_empty()) {
        let last_k = report.losses.len().min(10);
        let last = report.losses[report.losses.len() - last_k..].iter().sum::<f64>() / last_k as f64;
        println!(
            "supervised: loss {first:.4} → {last:.4} (mean of the last {last_k} steps), {:.0} tokens/s",
            report.tokens_per_s
        );
    }
    if let Some((before, after)) = report.rl {
        println!(
            "rl: held-out solve rate (sampled, T = 1) {:.1}% → {:.1}% ({:+.1} points), greedy {:.1}% → {:.1}%",
            100.0 * before.sampled,
            100.0 * after.sampled,
            100.0 * (after.sampled - before.sampled),
            100.0 * before.greedy,
            100.0 * after.greedy
        );
    }
    println!("done: output in {}", report.out_dir.display());
    Ok(())
}
