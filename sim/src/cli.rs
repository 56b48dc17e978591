//! `arbor sim ...` subcommands (parsed by the `arbor` binary, executed here).

use crate::report;
use crate::run::{options_log, run_scenario};
use crate::scenario::Scenario;
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

/// Simulator subcommands.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run one scenario file: every policy, a comparison table (or JSON), optional CSV and PNG plots.
    Run {
        /// Scenario TOML file.
        #[arg(long)]
        scenario: PathBuf,
        /// Seed (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Write results.csv, results.json, busy.png and steps.png into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sweep one policy over GPU counts and async ratios (progress bar on stderr).
    Sweep {
        /// Scenario TOML file.
        #[arg(long)]
        scenario: PathBuf,
        /// Policy to sweep (default: the first). alpha > 0 runs it async on a disaggregated split.
        #[arg(long)]
        policy: Option<String>,
        /// Comma-separated GPU counts.
        #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
        gpus: Vec<u32>,
        /// Comma-separated async ratios (0 = the policy's own mode; inf allowed).
        #[arg(long, value_delimiter = ',', default_value = "0,1,2,4")]
        alpha: Vec<f64>,
        /// Seed (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Print JSON lines instead of CSV.
        #[arg(long)]
        json: bool,
    },
    /// Run every validation scenario: calibrate on the sync baseline, predict the published figures.
    Validate {
        /// One JSON object per case per line (`case`, `predicted`, `published`, `error`).
        #[arg(long)]
        json: bool,
        /// Directory of scenario files with `[[case]]` entries.
        #[arg(long, default_value = "sim/scenarios")]
        dir: PathBuf,
        /// Seed (default 1).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Write `text` to stdout. A closed pipe (`arbor sim run --json | head`) is not an error: output
/// stops quietly and the command still finishes (and writes its `--out` files).
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        r => Ok(r?),
    }
}

/// Execute a simulator subcommand.
pub fn run(cmd: SimCommand) -> Result<()> {
    match cmd {
        SimCommand::Run { scenario, seed, json, out } => {
            let sc = Scenario::load(&scenario)?;
            let seed = seed.unwrap_or(sc.seed);
            eprintln!("{}", options_log(&sc, seed));
            let r = run_scenario(&sc, seed).with_context(|| format!("scenario {}", scenario.display()))?;
            if json {
                emit(&format!("{}\n", serde_json::to_string(&r)?))?;
            } else {
                emit(&report::table(&r))?;
            }
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                std::fs::write(dir.join("results.csv"), report::csv(&r))?;
                std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&r)?)?;
                crate::plot::write_plots(&r, &dir)?;
                eprintln!("wrote {0}/results.csv, {0}/results.json, {0}/busy.png, {0}/steps.png", dir.display());
            }
            Ok(())
        }
        SimCommand::Sweep { scenario, policy, gpus, alpha, seed, json } => {
            let sc = Scenario::load(&scenario)?;
            let seed = seed.unwrap_or(sc.seed);
            eprintln!("{}", options_log(&sc, seed));
            let policy = policy.unwrap_or_else(|| sc.policies[0].name.clone());
            if alpha.iter().any(|a| a.is_nan() || *a < 0.0) {
                anyhow::bail!("--alpha: values must be >= 0 (inf allowed)");
            }
            let points = crate::sweep::sweep(&sc, &policy, &gpus, &alpha, seed)?;
            if !json {
                emit("gpus,alpha,step_time_s_mean,samples_per_s,tokens_per_s,staleness_mean,inference_busy_fraction,trace_hash\n")?;
            }
            for p in points {
                if json {
                    emit(&format!("{}\n", serde_json::to_string(&p)?))?;
                } else {
                    emit(&format!(
                        "{},{},{:.4},{:.4},{:.1},{:.3},{:.4},{}\n",
                        p.gpus,
                        p.alpha,
                        p.step_time_s_mean,
                        p.samples_per_s,
                        p.tokens_per_s,
                        p.staleness_mean,
                        p.inference_busy_fraction,
                        p.trace_hash
                    ))?;
                }
            }
            Ok(())
        }
        SimCommand::Validate { json, dir, seed } => {
            let mut cals = Vec::new();
            let mut rows = Vec::new();
            for f in crate::validate::validation_files(&dir)? {
                let sc = Scenario::load(&f)?;
                let (cal, r) =
                    crate::validate::validate_scenario(&sc, seed).with_context(|| format!("{}", f.display()))?;
                if json {
                    for row in &r {
                        emit(&format!("{}\n", serde_json::to_string(row)?))?;
                    }
                }
                cals.extend(cal);
                rows.extend(r);
            }
            if !json {
                emit(&crate::validate::table(&cals, &rows))?;
            }
            Ok(())
        }
    }
}
