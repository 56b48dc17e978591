//! `arbor experiment seeds`: one job per seed, then mean ± sd of every before/after figure. With
//! `--control`, each seed also runs the honest control ALGORITHMS.md §9 asks for: supervised
//! training continued from the same start for the RL phase's wall time, scored by the same
//! held-out evaluation (same problems, same sampling stream) as the RL arm's last eval.

use super::experiment_runs::{before_after, finished, Resumable};
use crate::config::RunConfig;
use crate::parallel::Local;
use crate::train::rl::{evaluate, SolveRate};
use anyhow::Context;
use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Arguments of `arbor experiment seeds`.
#[derive(Debug, Args)]
pub struct SeedsArgs {
    /// Run configuration with an `[rl]` phase; without it, the embedded default job.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set a config key of every seed's job as the file would (repeatable; see `arbor train --help`).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = crate::config::Override::parse)]
    pub set: Vec<crate::config::Override>,
    /// Seeds, comma-separated (each replaces `run.seed`: SFT data order, sampling, the problem
    /// stream and the held-out problems as the task derives them).
    #[arg(long, value_delimiter = ',', required = true)]
    pub seeds: Vec<u64>,
    /// Output directory: one run directory per seed (and per control) plus seeds.md.
    #[arg(long, default_value = "runs/seeds")]
    pub out_dir: PathBuf,
    /// Also run, per seed, supervised training from the same start for the RL phase's wall time.
    #[arg(long)]
    pub control: bool,
    /// `--resume` (a finished run is kept, a checkpointed one continues) and `--time-limit`.
    #[command(flatten)]
    pub stop: Resumable,
}

/// An SFT-only control's run: its steps, their wall time (seconds, evaluations excluded: what it
/// was meant to match with the RL phase's) and its held-out solve rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Control {
    pub steps: u64,
    pub secs: f64,
    pub rate: SolveRate,
}

/// One seed's figures.
#[derive(Debug, Clone)]
struct SeedResult {
    seed: u64,
    before: SolveRate,
    after: SolveRate,
    /// Wall time of the RL steps (evaluations excluded), seconds.
    rl_secs: f64,
    /// The control's supervised steps and its held-out solve rate.
    control: Option<Control>,
}

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() < 2 { 0.0 } else { (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() };
    (m, sd)
}

/// Which steps' times [`step_times`] reads.
#[derive(Debug, Clone, Copy)]
enum Steps {
    /// The RL steps.
    Rl,
    /// The supervised steps after this one.
    SupervisedAfter(u64),
}

/// `step_s` of a run's step lines in its metrics.jsonl, in order (a last line cut short by a kill
/// is left out, as `arbor inspect` leaves it).
fn step_times(metrics: &Path, which: Steps) -> anyhow::Result<Vec<f64>> {
    let bytes = std::fs::read(metrics).with_context(|| format!("{}", metrics.display()))?;
    let lines = crate::train::metrics::parse_lines(&metrics.display().to_string(), &bytes)?;
    let counts = |v: &serde_json::Value| match which {
        Steps::Rl => v.get("rl_step").is_some(),
        Steps::SupervisedAfter(after) => {
            v.get("loss").is_some() && v.get("rl_step").is_none() && v["step"].as_u64().is_some_and(|s| s > after)
        }
    };
    Ok(lines.iter().map(|(_, v)| v).filter(|v| counts(v)).filter_map(|v| v.get("step_s")?.as_f64()).collect())
}

/// Sum of the RL steps' `step_s` in a run's metrics.jsonl.
pub(crate) fn rl_seconds(metrics: &Path) -> anyhow::Result<f64> {
    Ok(step_times(metrics, Steps::Rl)?.iter().sum())
}

/// Mean seconds per supervised step in a run's metrics.jsonl (the first step, which warms up, excluded).
fn sft_step_seconds(metrics: &Path) -> anyhow::Result<f64> {
    let times = step_times(metrics, Steps::SupervisedAfter(1))?;
    anyhow::ensure!(!times.is_empty(), "{}: no supervised step times", metrics.display());
    Ok(times.iter().sum::<f64>() / times.len() as f64)
}

/// The control's config: the same start and data, no RL phase, `steps` supervised steps at the
/// config's `[train]` settings (its schedule stretched over them), written under `out`.
fn control_config(cfg: &RunConfig, steps: u64, name: &str, out: &Path) -> RunConfig {
    let mut c = cfg.clone();
    c.rl = None;
    c.loss = None;
    c.run.name = name.to_string();
    c.run.out_dir = out.to_path_buf();
    c.train.steps = steps.max(1);
    c.train.eval_every = 0;
    c.train.checkpoint_every = steps.max(1);
    c.train.log_every = (steps / 4).max(1);
    c
}

/// Run the control of one seed: calibrate the supervised step time, then train for `secs` and
/// score the control's last checkpoint. Under `--resume` (`stop`) a finished calibration or control
/// is kept and an interrupted one continues: the control's length is a function of the RL arm's
/// metrics and the calibration's, both finished, so a resumed control is the planned one.
pub(crate) fn run_control(cfg: &RunConfig, secs: f64, out: &Path, stop: &Resumable) -> anyhow::Result<Control> {
    let seed = cfg.run.seed;
    let calib = control_config(cfg, 10, &format!("sft-calibrate-seed{seed}"), out);
    stop.run(&calib, &format!("seed {seed}: SFT step time, 10 steps"), &mut std::io::sink())?;
    let step_s = sft_step_seconds(&out.join(&calib.run.name).join("metrics.jsonl"))?;
    // the RL arm's own supervised steps (if any), then as many more as fit in its RL wall time
    let extra = ((secs / step_s.max(1e-6)).round() as u64).max(1);
    let steps = cfg.train.steps + extra;
    let ctl = control_config(cfg, steps, &format!("sft-control-seed{seed}"), out);
    let label =
        format!("seed {seed}: SFT control, {steps} steps ({extra} × {step_s:.3} s ≈ the RL phase's {secs:.0} s)");
    stop.run(&ctl, &label, &mut std::io::stdout())?;
    // scored from its last checkpoint (the one the run just wrote, or an earlier invocation's)
    let ck =
        super::train::resume_dir(&ctl, Some("latest"), None)?.filter(|ck| finished(ck, &ctl)).with_context(|| {
            format!("{}: the control has no checkpoint of its last step {steps}", out.join(&ctl.run.name).display())
        })?;
    let rl = cfg.rl.as_ref().context("the control needs the config's [rl] evaluation settings")?;
    let codec = cfg.text_codec()?;
    let task = cfg.task(&codec)?;
    let mut scored = cfg.clone();
    scored.model.hf_dir = Some(ck);
    let model = crate::train::pretrain::build_model(&scored, &codec)?;
    // the RL arm's last eval used the stream of step rl.steps
    let mut engine = crate::train::engine::Engine::inference(cfg.train.compute(), &model)?;
    let rate = evaluate(&mut engine, &model, cfg, (task.as_ref(), &codec), rl, rl.steps, &Local)?;
    let trained = step_times(&out.join(&ctl.run.name).join("metrics.jsonl"), Steps::SupervisedAfter(cfg.train.steps))?;
    let secs = trained.iter().sum();
    Ok(Control { steps, secs, rate })
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn pm(v: &[f64]) -> String {
    let (m, sd) = mean_sd(v);
    format!("{:+.1} ± {:.1}", 100.0 * m, 100.0 * sd)
}

/// The seeds.md table.
fn table(rows: &[SeedResult], config: &str) -> String {
    let mut md = format!("# arbor experiment seeds\n\nConfig: `{config}`. Held-out solve rates (%), sampled at T = 1 and greedy, before and after the RL phase.\n\n");
    let control = rows.iter().all(|r| r.control.is_some());
    md.push_str("| seed | sampled before | sampled after | gain | greedy before | greedy after | gain | RL wall (s) |");
    if control {
        md.push_str(
            " SFT control steps | control wall (s) | control sampled | gain | control greedy | gain | RL − control (sampled) |",
        );
    }
    md.push('\n');
    md.push_str(&"|---".repeat(if control { 15 } else { 8 }));
    md.push_str("|\n");
    for r in rows {
        let _ = write!(
            md,
            "| {} | {} | {} | {:+.1} | {} | {} | {:+.1} | {:.0} |",
            r.seed,
            pct(r.before.sampled),
            pct(r.after.sampled),
            100.0 * (r.after.sampled - r.before.sampled),
            pct(r.before.greedy),
            pct(r.after.greedy),
            100.0 * (r.after.greedy - r.before.greedy),
            r.rl_secs
        );
        if let Some(Control { steps, secs, rate: c }) = r.control {
            let _ = write!(
                md,
                " {steps} | {secs:.0} | {} | {:+.1} | {} | {:+.1} | {:+.1} |",
                pct(c.sampled),
                100.0 * (c.sampled - r.before.sampled),
                pct(c.greedy),
                100.0 * (c.greedy - r.before.greedy),
                100.0 * (r.after.sampled - c.sampled)
            );
        }
        md.push('\n');
    }
    let col = |f: &dyn Fn(&SeedResult) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    let _ = write!(
        md,
        "| mean ± sd | | | {} | | | {} | |",
        pm(&col(&|r| r.after.sampled - r.before.sampled)),
        pm(&col(&|r| r.after.greedy - r.before.greedy))
    );
    if control {
        let c = |r: &SeedResult| r.control.map_or(r.before, |c| c.rate);
        let _ = write!(
            md,
            " | | | {} | | {} | {} |",
            pm(&col(&|r| c(r).sampled - r.before.sampled)),
            pm(&col(&|r| c(r).greedy - r.before.greedy)),
            pm(&col(&|r| r.after.sampled - c(r).sampled))
        );
    }
    md.push('\n');
    // a control whose 10-step calibration was thrown by a passing slowdown trained for another
    // budget than the RL phase's: say so, with the way to rerun it
    for r in rows {
        let off = |c: &Control| r.rl_secs >= 30.0 && (c.secs / r.rl_secs - 1.0).abs() > CONTROL_BUDGET_SLACK;
        if let Some(c) = r.control.filter(off) {
            let seed = r.seed;
            let _ = write!(
                md,
                "\nSeed {seed}'s control trained {:.0} s against the RL phase's {:.0} s ({:+.0} %): its step-time \
                 calibration was off (a machine busy while it ran). To rerun it, move `sft-calibrate-seed{seed}` and \
                 `sft-control-seed{seed}` aside and run the same command with `--resume`.\n",
                c.secs,
                r.rl_secs,
                100.0 * (c.secs / r.rl_secs - 1.0)
            );
        }
    }
    md
}

/// How far (relative) a control's training time may be from the RL phase's before seeds.md says so
/// (for RL phases of 30 s or more: a shorter one's time is mostly noise).
const CONTROL_BUDGET_SLACK: f64 = 0.15;

/// Run `arbor experiment seeds`.
pub fn run(args: &SeedsArgs) -> anyhow::Result<()> {
    let base = RunConfig::load_or_default_with(args.config.as_deref(), &args.set)?;
    let mut name = args.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the default job".into());
    for o in &args.set {
        name.push_str(&format!(" --set {}", o.raw));
    }
    anyhow::ensure!(
        base.rl.is_some(),
        "{name}: `experiment seeds` compares before/after an [rl] phase; the config has none"
    );
    let mut seen = std::collections::BTreeSet::new();
    for s in &args.seeds {
        anyhow::ensure!(seen.insert(*s), "--seeds: seed {s} is given twice");
    }
    std::fs::create_dir_all(&args.out_dir).with_context(|| format!("{}", args.out_dir.display()))?;
    args.stop.arm()?;
    // an earlier experiment's table is kept, as its runs are (moved aside to seed<S>.N)
    args.stop.keep_earlier_summary(&args.out_dir, &["seeds.md"])?;
    let mut rows = Vec::new();
    for &seed in &args.seeds {
        let mut cfg = base.clone();
        cfg.run.seed = seed;
        cfg.run.name = format!("seed{seed}");
        cfg.run.out_dir = args.out_dir.clone();
        args.stop.run(&cfg, &format!("seed {seed}"), &mut std::io::stdout())?;
        let run = args.out_dir.join(&cfg.run.name);
        let (before, after) = before_after(&run, &cfg).with_context(|| {
            format!("{}: no held-out evaluations before RL and after its last RL step", run.display())
        })?;
        let rl_secs = rl_seconds(&run.join("metrics.jsonl"))?;
        let control = if args.control { Some(run_control(&cfg, rl_secs, &args.out_dir, &args.stop)?) } else { None };
        rows.push(SeedResult { seed, before, after, rl_secs, control });
        // the table so far, so that an interrupted experiment keeps what it measured
        let md = table(&rows, &name);
        crate::io::atomic::write_atomic(&args.out_dir.join("seeds.md"), md.as_bytes())?;
    }
    println!("\n{}", table(&rows, &name));
    println!("wrote {}", args.out_dir.join("seeds.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd() {
        let (m, sd) = mean_sd(&[2.0, 4.0, 9.0]);
        assert!((m - 5.0).abs() < 1e-12);
        assert!((sd - 13.0f64.sqrt()).abs() < 1e-12);
        assert_eq!(mean_sd(&[3.0]), (3.0, 0.0));
    }

    #[test]
    fn step_times_read_the_steps_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let sft = |s: u64, t: f64| format!("{{\"loss\":1.0,\"step\":{s},\"step_s\":{t}}}\n");
        let rl = |s: u64, t: f64| format!("{{\"reward_mean\":0.5,\"rl_step\":{s},\"step_s\":{t}}}\n");
        let eval = "{\"eval_solve_rate\":0.5,\"eval_solve_rate_greedy\":0.5,\"rl_step\":0}\n";
        // (the last line cut short by a kill is left out)
        let text = [sft(1, 9.0), sft(2, 1.0), sft(3, 2.0), eval.into(), rl(1, 4.0), rl(2, 5.0)].concat() + "{\"rl_st";
        std::fs::write(&path, text).unwrap();
        assert_eq!(rl_seconds(&path).unwrap(), 9.0);
        assert_eq!(sft_step_seconds(&path).unwrap(), 1.5, "step 1, the warm-up, left out");
        assert_eq!(step_times(&path, Steps::SupervisedAfter(2)).unwrap(), [2.0]);
        assert!(rl_seconds(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn table_reports_gains_and_the_control_margin() {
        let r = |seed, b: f64, a: f64, c: f64| SeedResult {
            seed,
            before: SolveRate { greedy: b, sampled: b, pass: None },
            after: SolveRate { greedy: a, sampled: a, pass: None },
            rl_secs: 300.0,
            control: Some(Control { steps: 1000, secs: 290.0, rate: SolveRate { greedy: c, sampled: c, pass: None } }),
        };
        let md = table(&[r(1, 0.2, 0.4, 0.3), r(2, 0.2, 0.3, 0.25)], "x.toml");
        assert!(md.contains("| 1 | 20.0 | 40.0 | +20.0 |"), "{md}");
        // mean gain (20 + 10) / 2 = 15, sd of {20, 10} = 7.07
        assert!(md.contains("+15.0 ± 7.1"), "{md}");
        // RL − control: 10 and 5 → 7.5 ± 3.5
        assert!(md.contains("+7.5 ± 3.5"), "{md}");
        // the control's steps and the wall time they took, beside the RL phase's
        assert!(
            md.contains("| 1 | 20.0 | 40.0 | +20.0 | 20.0 | 40.0 | +20.0 | 300 | 1000 | 290 | 30.0 | +10.0 |"),
            "{md}"
        );
        let header = md.lines().find(|l| l.starts_with("| seed |")).unwrap();
        let (cells, rule) = (header.matches('|').count(), md.lines().find(|l| l.starts_with("|---")).unwrap());
        assert_eq!(rule.matches('|').count(), cells, "{md}");
        let mean = md.lines().find(|l| l.starts_with("| mean ± sd |")).unwrap();
        assert_eq!(mean.matches('|').count(), cells, "{md}");
        assert!(!md.contains("control trained"), "both controls within 15 % of 300 s: {md}");
        // a control that trained 200 s of the RL phase's 300 s is named
        let mut short = r(3, 0.2, 0.3, 0.25);
        short.control.as_mut().unwrap().secs = 200.0;
        let md = table(&[r(1, 0.2, 0.4, 0.3), short], "x.toml");
        assert!(md.contains("Seed 3's control trained 200 s against the RL phase's 300 s (-33 %)"), "{md}");
        assert!(!md.contains("Seed 1's control"), "{md}");
    }
}
