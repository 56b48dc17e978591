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
        /// Write CSV, JSON and PNG plots into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
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

/// Execute a simulator subcommand.
pub fn run(cmd: SimCommand) -> Result<()> {
    match cmd {
        SimCommand::Run { scenario, seed, json, out } => {
            let sc = Scenario::load(&scenario)?;
            let seed = seed.unwrap_or(sc.seed);
            eprintln!("{}", options_log(&sc, seed));
            let r = run_scenario(&sc, seed).with_context(|| format!("scenario {}", scenario.display()))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print!("{}", report::table(&r));
            }
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                std::fs::write(dir.join("results.csv"), report::csv(&r))?;
                std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&r)?)?;
            }
            Ok(())
        }
        SimCommand::Validate { json, dir, seed } => {
            let mut cals = Vec::new();
            let mut rows = Vec::new();
            for f in crate::validate::validation_files(&dir)? {
                let sc = Scenario::load(&f)?;
                let (cal, r) = crate::validate::validate_scenario(&sc, seed).with_context(|| format!("{}", f.display()))?;
                if json {
                    for row in &r {
                        println!("{}", serde_json::to_string(row)?);
                    }
                }
                cals.extend(cal);
                rows.extend(r);
            }
            if !json {
                print!("{}", crate::validate::table(&cals, &rows));
            }
            Ok(())
        }
    }
}
