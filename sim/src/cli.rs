//! `arbor sim ...` subcommands (parsed by the `arbor` binary, executed here).

use crate::report;
use crate::run::{options_log, run_scenario};
use crate::scenario::Scenario;
use crate::sweep::{SweepSpec, TaskSelection, TaskSource};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};

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
    /// Sweep one policy over GPU counts and async ratios (progress bar on stderr); split it over the tasks
    /// of a Slurm job array (`--task/--tasks` or SLURM_ARRAY_TASK_*) and merge the pieces (`--merge`).
    Sweep {
        /// Scenario TOML file (not with --merge).
        #[arg(long, required_unless_present = "merge")]
        scenario: Option<PathBuf>,
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
        /// Run only the points of task I (0-based) of --tasks N: points I, I+N, I+2N, ... Both flags
        /// override SLURM_ARRAY_TASK_ID/_COUNT/_MIN/_STEP; without them those variables select the task.
        #[arg(long, value_name = "I")]
        task: Option<usize>,
        /// Number of tasks the sweep is split into (with --task).
        #[arg(long, value_name = "N")]
        tasks: Option<usize>,
        /// Sweep directory: one piece per point (point-000007.json); when this process runs every point
        /// (or with --merge) also sweep.csv and sweep.png. Required when the sweep is split over tasks.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Merge the pieces in these directories: print the table and write sweep.csv and sweep.png
        /// (into --out, default the first DIR).
        #[arg(long, value_name = "DIR", num_args = 1.., conflicts_with_all = ["scenario", "policy", "seed", "task", "tasks", "gpus", "alpha"])]
        merge: Vec<PathBuf>,
    },
    /// Fit one constant on one case's published value (how a hardware profile's case-fitted constant
    /// is obtained; the value then goes into the profile, and that case keeps its own literature value).
    Fit {
        /// Scenario file holding the case.
        #[arg(long, value_name = "FILE")]
        scenario: PathBuf,
        /// Case name.
        #[arg(long)]
        case: String,
        /// Constant to fit: bandwidth_efficiency, decode_overhead or train_mfu.
        #[arg(long, default_value = "train_mfu")]
        knob: String,
        /// Search bracket LO,HI (default: the knob's whole range).
        #[arg(long, value_name = "LO,HI")]
        range: Option<String>,
        /// Seed (default 1).
        #[arg(long, default_value_t = 1)]
        seed: u64,
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
        SimCommand::Sweep { scenario, policy, gpus, alpha, seed, json, task, tasks, out, merge } => {
            if !merge.is_empty() {
                return merge_sweep(&merge, out.as_deref(), json);
            }
            let scenario = scenario.context("--scenario FILE is required (or --merge DIR)")?;
            let sel = crate::sweep::select_task(task, tasks, |k| std::env::var(k).ok())?;
            let sc = Scenario::load(&scenario)?;
            let seed = seed.unwrap_or(sc.seed);
            eprintln!("{}", options_log(&sc, seed));
            let spec = SweepSpec::new(sc, scenario.display().to_string(), policy.as_deref(), &gpus, &alpha, seed)
                .with_context(|| format!("sweep of scenario {}", scenario.display()))?;
            run_sweep(&spec, sel, out.as_deref(), json)
        }
        SimCommand::Fit { scenario, case, knob, range, seed } => {
            let sc = Scenario::load(&scenario)?;
            let range = match range {
                None => None,
                Some(r) => {
                    let bad = || anyhow::anyhow!("--range {r:?}: expected LO,HI (two numbers)");
                    let (a, b) = r.split_once(',').ok_or_else(bad)?;
                    Some((a.trim().parse::<f64>().map_err(|_| bad())?, b.trim().parse::<f64>().map_err(|_| bad())?))
                }
            };
            let k: crate::scenario::Knob =
                serde_json::from_value(serde_json::Value::String(knob.clone())).map_err(|_| {
                    anyhow::anyhow!("--knob {knob:?}: expected bandwidth_efficiency, decode_overhead or train_mfu")
                })?;
            let (v, pred) = crate::validate::fit_case(&sc, &case, k, range, seed)?;
            emit(&format!("fitted {knob} = {v:.4} on case {case} of {}: predicted {pred:.4}\n", sc.name))?;
            Ok(())
        }
        SimCommand::Validate { json, dir, seed } => {
            let mut cals = Vec::new();
            let mut rows = Vec::new();
            let mut loaded = Vec::new();
            for f in crate::validate::validation_files(&dir)? {
                let sc = Scenario::load(&f)?;
                loaded.push(sc.clone());
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
            let checks = crate::validate::profile_fit_checks(&loaded, seed)?;
            if json {
                for c in &checks {
                    emit(&format!("{}\n", serde_json::to_string(c)?))?;
                }
            } else {
                emit(&crate::validate::table(&checks, &cals, &rows))?;
            }
            Ok(())
        }
    }
}

/// Run this process's share of a sweep. The whole sweep (one task) prints the table and, with `out`,
/// writes every piece plus `sweep.csv` and `sweep.png`; a task of several writes its pieces only and
/// prints their paths.
fn run_sweep(spec: &SweepSpec, sel: TaskSelection, out: Option<&Path>, json: bool) -> Result<()> {
    let info = spec.info();
    let indices = crate::sweep::task_points(spec.len(), sel.task, sel.tasks);
    let whole = sel.tasks == 1;
    let via = match sel.source {
        TaskSource::Flags => "--task/--tasks",
        TaskSource::SlurmArray => "SLURM_ARRAY_TASK_*",
        TaskSource::Whole => "",
    };
    if !whole && out.is_none() {
        bail!(
            "this process is task {} of {} (from {via}) and writes its points as pieces: --out DIR is required \
             (--task 0 --tasks 1 runs the whole sweep here)",
            sel.task,
            sel.tasks
        );
    }
    if !whole {
        eprintln!(
            "sweep {}: task {} of {} (from {via}) runs {} of {} points: {}",
            info.fingerprint(),
            sel.task,
            sel.tasks,
            indices.len(),
            spec.len(),
            if indices.is_empty() {
                "none (more tasks than points)".to_string()
            } else {
                indices.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
            }
        );
    }
    let (points, written) = crate::pieces::run_task(spec, sel.task, sel.tasks, out)?;
    if whole {
        emit(&crate::sweep::table(&points, json)?)?;
        if let Some(dir) = out {
            let files = crate::sweep::write_summary(&info, &points, dir)?;
            eprintln!("wrote {} pieces and {} into {}", written.len(), file_names(&files), dir.display());
        }
    } else {
        for p in &written {
            emit(&format!("{}\n", p.display()))?;
        }
        eprintln!(
            "task {} of {}: {} piece(s) in {}; merge when all tasks are done: arbor sim sweep --merge {}",
            sel.task,
            sel.tasks,
            written.len(),
            out.map(|d| d.display().to_string()).unwrap_or_default(),
            out.map(|d| d.display().to_string()).unwrap_or_default()
        );
    }
    Ok(())
}

fn file_names(files: &[PathBuf]) -> String {
    files.iter().filter_map(|f| f.file_name()).map(|n| n.to_string_lossy().into_owned()).collect::<Vec<_>>().join(", ")
}

/// `arbor sim sweep --merge DIR...`: the table on stdout, `sweep.csv` and `sweep.png` in `out` (default:
/// the first directory).
fn merge_sweep(dirs: &[PathBuf], out: Option<&Path>, json: bool) -> Result<()> {
    let m = crate::pieces::merge(dirs)?;
    eprintln!("merged {} pieces of sweep {} ({})", m.files.len(), m.fingerprint, m.info.describe());
    if !m.temporary.is_empty() {
        eprintln!(
            "note: ignored {} unfinished temporary file(s), e.g. {}",
            m.temporary.len(),
            m.temporary[0].display()
        );
    }
    emit(&crate::sweep::table(&m.points, json)?)?;
    let dir = out.unwrap_or(&dirs[0]);
    let files = crate::sweep::write_summary(&m.info, &m.points, dir)?;
    eprintln!("wrote {} into {}", file_names(&files), dir.display());
    Ok(())
}
