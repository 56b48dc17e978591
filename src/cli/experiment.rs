//! `arbor experiment compare`: the comparison a paper would show. From one base run config (the
//! same warm start, seed and budget), run GRPO, TreeRL (entropy branching), AttnRL (ATB + adaptive
//! sampling) and the three attention-rhythm schemes one after the other, then write `compare.md`
//! (a table per method: held-out solve rate before and after, effective-sample ratio, all-correct /
//! all-wrong prompt ratios, valid tokens, trained sequences and seconds per step, training-state
//! size) and three PNGs: held-out solve rate vs RL steps (`solve_rate_vs_step.png`) and vs wall time
//! (`solve_rate_vs_time.png`), and the effective-sample ratio per step (`effective_ratio.png`).

use crate::attnrl::{AttnRlConfig, BranchBy, RhythmConfig, RhythmScheme};
use crate::config::RunConfig;
use anyhow::{bail, Context};
use arbor_sim::plot::{Figure, LinePlot, Series};
use clap::{Args, Subcommand};
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `arbor experiment` subcommands.
#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Run several RL methods from the same start and compare them (compare.md + PNGs).
    Compare(CompareArgs),
    /// Run one job per seed and report mean ± sd of its before/after figures (seeds.md), with an
    /// optional SFT-only control at equal wall time.
    Seeds(super::seeds::SeedsArgs),
    /// Run a grid of config settings (`--grid rl.lr=1e-4,2e-4`), one job per point and seed, and
    /// report each point's before/after held-out solve rates (sweep.md).
    Sweep(super::sweep::SweepArgs),
}

/// Arguments of `arbor experiment compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Comparison config (TOML with a `[compare]` table), e.g. configs/compare-countdown.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// Set a key of the base run config (`compare.base`) as its file would, for every method
    /// (repeatable; see `arbor train --help`).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = crate::config::Override::parse)]
    pub set: Vec<crate::config::Override>,
    /// Override `compare.out_dir`.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Override `compare.rl_steps` (e.g. a quick smoke run).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Also run the SFT-only control: supervised training from the same start for the first
    /// method's RL wall time, scored by the same held-out evaluation (a line under the table).
    #[arg(long)]
    pub control: bool,
    /// `--resume` (a finished method's run is kept, a checkpointed one continues) and `--time-limit`.
    #[command(flatten)]
    pub stop: super::experiment_runs::Resumable,
}

/// The comparison file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareFile {
    compare: CompareSection,
    /// Settings of the tree methods (branch_by is set per method).
    #[serde(default)]
    attnrl: AttnRlConfig,
    /// Settings of the rhythm methods (scheme is set per method).
    #[serde(default)]
    rhythm: RhythmConfig,
    /// Critics of `asyppo` (count 2 unless set); `ppo` uses one critic of the policy's size with
    /// the same learning settings.
    #[serde(default)]
    critic: crate::train::critic::CriticConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareSection {
    /// Base run config (relative to the working directory).
    base: PathBuf,
    /// RL steps of every method.
    rl_steps: u64,
    /// RL steps between held-out evaluations.
    eval_every: u64,
    /// Held-out problems per evaluation.
    #[serde(default = "d_eval")]
    eval_problems: usize,
    /// Methods, in order: grpo, treerl, attnrl, rhythm-local, rhythm-global, rhythm-coupled.
    methods: Vec<String>,
    /// Output directory (one run directory per method + compare.md + PNGs).
    out_dir: PathBuf,
}

fn d_eval() -> usize {
    200
}

/// The run config of `method` from the base.
fn method_config(base: &RunConfig, file: &CompareFile, method: &str, out: &Path) -> anyhow::Result<RunConfig> {
    let c = &file.compare;
    let mut cfg = base.clone();
    cfg.run.name = method.to_string();
    cfg.run.out_dir = out.to_path_buf();
    cfg.train.checkpoint_every = c.rl_steps.max(1);
    let rl = cfg.rl.as_mut().context("the base config needs an [rl] table")?;
    rl.steps = c.rl_steps;
    rl.eval_every = c.eval_every;
    rl.eval_problems = c.eval_problems;
    rl.dump_trajectories = false;
    match method {
        "grpo" => {}
        "treerl" => cfg.attnrl = Some(AttnRlConfig { branch_by: BranchBy::Entropy, off_policy: false, ..file.attnrl.clone() }),
        // AttnRL as the paper runs it: ATB + adaptive sampling + the one-step off-policy pipeline
        "attnrl" => {
            cfg.attnrl = Some(AttnRlConfig { branch_by: BranchBy::Fci, off_policy: true, ..file.attnrl.clone() })
        }
        "rhythm-local" | "rhythm-global" | "rhythm-coupled" => {
            let scheme = match method {
                "rhythm-local" => RhythmScheme::Local,
                "rhythm-global" => RhythmScheme::Global,
                _ => RhythmScheme::Coupled,
            };
            cfg.rhythm = Some(RhythmConfig { scheme, ..file.rhythm.clone() });
        }
        "ppo" => {
            let c = &file.critic;
            cfg.critic = Some(crate::train::critic::CriticConfig {
                count: 1,
                hidden_size: None,
                intermediate_size: None,
                num_layers: None,
                num_heads: None,
                num_kv_heads: None,
                ..c.clone()
            })
        }
        "asyppo" => cfg.critic = Some(file.critic.clone()),
        other => bail!(
            "compare.methods: unknown method {other:?} (grpo, treerl, attnrl, rhythm-local, rhythm-global, rhythm-coupled, ppo, asyppo)"
        ),
    }
    Ok(cfg)
}

/// What one method's metrics.jsonl says.
#[derive(Debug, Default)]
struct Summary {
    method: String,
    /// (rl step, seconds since the phase began, sampled, greedy)
    evals: Vec<(f64, f64, f64, f64)>,
    effective: Vec<f64>,
    all_correct: Vec<f64>,
    all_wrong: Vec<f64>,
    valid_tokens: Vec<f64>,
    trained: Vec<f64>,
    step_s: Vec<f64>,
    state_mib: Vec<f64>,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn summarise(method: &str, metrics: &Path) -> anyhow::Result<Summary> {
    let bytes = std::fs::read(metrics).with_context(|| format!("{}", metrics.display()))?;
    let mut s = Summary { method: method.to_string(), ..Summary::default() };
    let mut clock = 0.0;
    // an unfinished last line (a killed run) is left out with a warning; a bad line before it is an error
    for (_, v) in crate::train::metrics::parse_lines(&metrics.display().to_string(), &bytes)? {
        let Some(step) = v.get("rl_step").and_then(|x| x.as_f64()) else { continue };
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
        if let Some(rate) = f("eval_solve_rate") {
            s.evals.push((step, clock, rate, f("eval_solve_rate_greedy").unwrap_or(f64::NAN)));
            continue;
        }
        clock += f("step_s").unwrap_or(0.0);
        s.step_s.push(f("step_s").unwrap_or(0.0));
        s.effective.push(f("effective_sample_ratio").unwrap_or(f64::NAN));
        s.all_correct.push(f("all_correct_ratio").unwrap_or(f64::NAN));
        s.all_wrong.push(f("all_wrong_ratio").unwrap_or(f64::NAN));
        s.valid_tokens.push(f("valid_tokens").unwrap_or(f64::NAN));
        s.trained.push(f("trained_samples").unwrap_or(f64::NAN));
        s.state_mib.push(f("train_state_mib").unwrap_or(f64::NAN));
    }
    if s.evals.is_empty() {
        bail!("{}: no eval_solve_rate lines", metrics.display());
    }
    Ok(s)
}

/// The comparison table (markdown).
fn table(rows: &[Summary], steps: u64) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| method | held-out solve rate before → after (sampled) | Δ points | greedy after | effective-sample ratio | all-correct prompts | all-wrong prompts | valid tokens / step | trained seqs / step | s / step | train state MiB |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (first, last) = (r.evals[0], r.evals[r.evals.len() - 1]);
        let _ = writeln!(
            md,
            "| {} | {:.1} % → {:.1} % | {:+.1} | {:.1} % | {:.3} | {:.3} | {:.3} | {:.0} | {:.1} | {:.2} | {:.1} |",
            r.method,
            100.0 * first.2,
            100.0 * last.2,
            100.0 * (last.2 - first.2),
            100.0 * last.3,
            mean(&r.effective),
            mean(&r.all_correct),
            mean(&r.all_wrong),
            mean(&r.valid_tokens),
            mean(&r.trained),
            mean(&r.step_s),
            mean(&r.state_mib),
        );
    }
    let _ = writeln!(
        md,
        "\n{steps} RL steps per method; ratios are means over the steps. Train state = f32 weights, gradients and AdamW moments of the policy and its critics, plus the KL reference."
    );
    md
}

/// What `compare` writes beside the method's run directories: compare.md first, then the figures
/// it shows.
const SUMMARY_FILES: [&str; 4] =
    ["compare.md", "solve_rate_vs_step.png", "solve_rate_vs_time.png", "effective_ratio.png"];

/// Parse and validate a comparison file and build every method's run config (nothing runs).
pub fn plan(path: &Path) -> anyhow::Result<Vec<RunConfig>> {
    let args = CompareArgs {
        config: path.to_path_buf(),
        set: Vec::new(),
        out_dir: None,
        steps: None,
        control: false,
        stop: Default::default(),
    };
    Ok(load(&args)?.2)
}

fn load(args: &CompareArgs) -> anyhow::Result<(CompareFile, RunConfig, Vec<RunConfig>)> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("{}", args.config.display()))?;
    // every number finite, as in a run config
    let tree: toml::Table =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", args.config.display(), e.to_string().trim()))?;
    if let Some((key, v)) = crate::config::first_non_finite(&tree, "") {
        anyhow::bail!("{}: {key}: {v} is not a finite number", args.config.display());
    }
    let mut file: CompareFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", args.config.display(), e.to_string().trim()))?;
    if let Some(d) = &args.out_dir {
        file.compare.out_dir = d.clone();
    }
    if let Some(s) = args.steps {
        file.compare.rl_steps = s;
    }
    file.attnrl.validate().map_err(|e| anyhow::anyhow!("{}: attnrl.{e}", args.config.display()))?;
    file.rhythm.validate().map_err(|e| anyhow::anyhow!("{}: rhythm.{e}", args.config.display()))?;
    anyhow::ensure!(!file.compare.methods.is_empty(), "{}: compare.methods is empty", args.config.display());
    // each method runs in <out_dir>/<method>: a second run of one would move the first aside
    let mut seen = std::collections::BTreeSet::new();
    for m in &file.compare.methods {
        anyhow::ensure!(
            seen.insert(m.as_str()),
            "{}: compare.methods: method {m:?} is given twice",
            args.config.display()
        );
    }
    let base = RunConfig::load_with(&file.compare.base, &args.set)?;
    let out = file.compare.out_dir.clone();
    // check every method before running any
    let cfgs: Vec<RunConfig> = file
        .compare
        .methods
        .iter()
        .map(|m| {
            // a method's config is built in code from the base and this file: it passes the checks
            // of a run config file (each section's values, the rules across sections) before any runs
            let cfg = method_config(&base, &file, m, &out)?;
            cfg.validate().map_err(|(key, msg)| anyhow::anyhow!("method {m}: {key}: {msg}"))?;
            Ok(cfg)
        })
        .collect::<anyhow::Result<_>>()
        .with_context(|| format!("{}", args.config.display()))?;
    Ok((file, base, cfgs))
}

/// Run `arbor experiment compare`.
pub fn run(cmd: &ExperimentCommand) -> anyhow::Result<()> {
    let args = match cmd {
        ExperimentCommand::Compare(args) => args,
        ExperimentCommand::Seeds(args) => return super::seeds::run(args),
        ExperimentCommand::Sweep(args) => return super::sweep::run(args),
    };
    let (file, base, cfgs) = load(args)?;
    let out = file.compare.out_dir.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
    args.stop.arm()?;
    // an earlier comparison's summary is kept, as its runs are (moved aside to <method>.N)
    args.stop.keep_earlier_summary(&out, &SUMMARY_FILES)?;
    let mut rows = Vec::new();
    for (m, cfg) in file.compare.methods.iter().zip(&cfgs) {
        args.stop.run(cfg, m, &mut std::io::stdout())?;
        rows.push(summarise(m, &out.join(m).join("metrics.jsonl"))?);
    }
    let mut control = String::new();
    if args.control {
        let (first, cfg) = (&file.compare.methods[0], &cfgs[0]);
        let secs = super::seeds::rl_seconds(&out.join(first).join("metrics.jsonl"))?;
        let super::seeds::Control { steps, secs: trained, rate } =
            super::seeds::run_control(cfg, secs, &out, &args.stop)?;
        let before = rows[0].evals.first().map_or(f64::NAN, |e| e.2);
        control = format!(
            "\nSFT-only control: {steps} supervised steps from the same start in {first}'s RL wall time ({secs:.0} s; they took {trained:.0} s): held-out solve rate sampled {:.1} % ({:+.1} points), greedy {:.1} %.\n",
            100.0 * rate.sampled,
            100.0 * (rate.sampled - before),
            100.0 * rate.greedy
        );
    }
    let md = format!(
        "# arbor experiment compare\n\nBase: `{}`, config `{}`, seed {}.\n\n{}{control}\n![solve rate](solve_rate_vs_step.png)\n![solve rate vs time](solve_rate_vs_time.png)\n",
        file.compare.base.display(),
        args.config.display(),
        base.run.seed,
        table(&rows, file.compare.rl_steps)
    );
    crate::io::atomic::write_atomic(&out.join("compare.md"), md.as_bytes())?;
    let mut by_step = LinePlot::new("Held-out solve rate (sampled)", "RL step", "solve rate");
    let mut by_time = LinePlot::new("Held-out solve rate (sampled)", "wall time of the RL steps (s)", "solve rate");
    let mut eff = LinePlot::new("Effective-sample ratio", "RL step", "fraction with non-zero advantage");
    for (i, r) in rows.iter().enumerate() {
        by_step = by_step.series(Series::line_dots(&r.method, r.evals.iter().map(|e| (e.0, e.2)).collect()).colour(i));
        by_time = by_time.series(Series::line_dots(&r.method, r.evals.iter().map(|e| (e.1, e.2)).collect()).colour(i));
        let pts = r.effective.iter().enumerate().map(|(k, &v)| ((k + 1) as f64, v)).collect();
        eff = eff.series(Series::line(&r.method, pts).colour(i));
    }
    for (name, plot) in
        [("solve_rate_vs_step.png", by_step), ("solve_rate_vs_time.png", by_time), ("effective_ratio.png", eff)]
    {
        Figure::single(plot, (900, 500)).save(&out.join(name))?;
    }
    println!("\n{md}");
    println!("wrote {}", out.join("compare.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_leaves_out_an_unfinished_last_line_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let good = "{\"rl_step\":0,\"eval_solve_rate\":0.25}\n{\"rl_step\":1,\"step_s\":2.0}\n";
        std::fs::write(&path, format!("{good}{{\"rl_step\":2,\"st")).unwrap();
        let s = summarise("grpo", &path).unwrap();
        assert_eq!((s.evals.len(), s.step_s.as_slice()), (1, [2.0].as_slice()));
        std::fs::write(&path, format!("{{\"rl_step\":2,\"st\n{good}")).unwrap();
        let e = format!("{:#}", summarise("grpo", &path).unwrap_err());
        assert!(e.contains("metrics.jsonl:1: invalid JSON"), "{e}");
    }
}
