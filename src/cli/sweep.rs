//! `arbor experiment sweep`: a grid of config settings (`--grid rl.lr=1e-4,2e-4 --grid
//! loss.kind=ppo,cispo`), one job per point and seed, then `sweep.md`: each point's held-out solve
//! rates before and after its RL phase, mean ± sd over the seeds. Every point's config is read and
//! checked (as `--set` reads a key) before the first job starts, so a bad value does not stop the
//! sweep hours in; the table is rewritten after each point, so an interrupted sweep keeps what it
//! measured.

use super::experiment_runs::{before_after, evals, move_summary_aside, Resumable};
use crate::config::{Override, RunConfig};
use crate::train::rl::{PassAtK, SolveRate};
use anyhow::Context;
use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Arguments of `arbor experiment sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Run configuration with an `[rl]` phase; without it, the embedded default job.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set a config key of every point (repeatable; see `arbor train --help`).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = Override::parse)]
    pub set: Vec<Override>,
    /// One axis of the grid: a config key and its values, comma-separated (commas inside `[...]`,
    /// `{...}` or quotes belong to the value). Repeatable: every combination runs, the first axis
    /// varying slowest.
    #[arg(long = "grid", value_name = "KEY=V1,V2,...", value_parser = parse_axis, required = true)]
    pub grid: Vec<Axis>,
    /// Seeds of each point, comma-separated (default: the config's `run.seed`).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Output directory: one run directory per point and seed (`p<i>-seed<S>`) plus sweep.md.
    #[arg(long, default_value = "runs/sweep")]
    pub out_dir: PathBuf,
    /// Run only point I (0-based, in the grid's order) and write no summary: one task of a job
    /// array (`--point $SLURM_ARRAY_TASK_ID`); `--report` with the same flags writes it after.
    #[arg(long, value_name = "I", conflicts_with = "report")]
    pub point: Option<usize>,
    /// Run nothing: write sweep.md and sweep.png from the points' finished runs (after `--point`
    /// jobs); a point without its finished runs is an error naming them.
    #[arg(long, conflicts_with_all = ["resume", "time_limit"])]
    pub report: bool,
    /// `--resume` (a finished run is kept, a checkpointed one continues: a requeued job-array task)
    /// and `--time-limit`.
    #[command(flatten)]
    pub stop: Resumable,
}

/// One axis of the grid: its settings, one `KEY=VALUE` override per value.
#[derive(Debug, Clone)]
pub struct Axis {
    pub settings: Vec<Override>,
}

/// `KEY=V1,V2,...` split at the commas outside brackets, braces and quotes.
pub fn parse_axis(raw: &str) -> std::result::Result<Axis, String> {
    let (key, values) =
        raw.split_once('=').ok_or_else(|| "expects KEY=V1,V2,... e.g. --grid rl.lr=1e-4,2e-4".to_string())?;
    let (mut parts, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None);
    for c in values.chars() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            ('[' | '{', None) => depth += 1,
            (']' | '}', None) => depth -= 1,
            (',', None) if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    let mut settings: Vec<Override> = Vec::new();
    for v in parts.iter().map(|p| p.trim()) {
        if v.is_empty() {
            return Err(format!("{key}: an empty value (two commas, or one at an end)"));
        }
        let o = Override::parse(&format!("{key}={v}"))?;
        if settings.iter().any(|s| s.value == o.value) {
            return Err(format!("{key}: the value {v} is given twice"));
        }
        settings.push(o);
    }
    Ok(Axis { settings })
}

/// Every combination of the axes' settings, the first axis varying slowest.
fn points(grid: &[Axis]) -> Vec<Vec<Override>> {
    grid.iter().fold(vec![Vec::new()], |acc, axis| {
        acc.iter()
            .flat_map(|p| {
                axis.settings.iter().map(move |s| {
                    let mut q = p.clone();
                    q.push(s.clone());
                    q
                })
            })
            .collect()
    })
}

/// One point's figures over its seeds.
struct PointResult {
    settings: String,
    runs: Vec<(u64, SolveRate, SolveRate)>,
    /// Held-out solve rate (sampled) by RL step, the mean over the seeds evaluated at that step.
    curve: Vec<(f64, f64)>,
}

/// The files the sweep writes beside its runs: the table first, then the figure it shows.
const SUMMARY_FILES: [&str; 2] = ["sweep.md", "sweep.png"];

/// Point `i`'s row, read from its finished runs under `out` (one per seed): the evaluation before
/// its RL phase and after its last step (`cfg`: the point's config).
fn point_row(out: &Path, i: usize, settings: &str, seeds: &[u64], cfg: &RunConfig) -> anyhow::Result<PointResult> {
    let (rl_steps, k) = cfg.rl.as_ref().map_or((0, 0), |r| (r.steps, r.eval_samples));
    let mut row = PointResult { settings: settings.to_string(), runs: Vec::new(), curve: Vec::new() };
    let mut per_seed = Vec::new();
    for &seed in seeds {
        let run = out.join(format!("p{i}-seed{seed}"));
        let Some((before, after)) = before_after(&run, cfg) else {
            anyhow::bail!(
                "sweep point p{i} ({settings}): {} holds no finished run (its evaluations before RL and after RL step \
                 {rl_steps}): run `--point {i}` first",
                run.display()
            );
        };
        let found = evals(&run.join("metrics.jsonl"), k)?;
        row.runs.push((seed, before, after));
        per_seed.push(found.iter().map(|e| (e.0, e.1.sampled)).collect::<Vec<_>>());
    }
    row.curve = mean_curve(&per_seed);
    Ok(row)
}

/// Write sweep.md and sweep.png of `rows` under `out`.
fn write_summary(rows: &[PointResult], name: &str, out: &Path) -> anyhow::Result<()> {
    crate::io::atomic::write_atomic(&out.join(SUMMARY_FILES[0]), table(rows, name).as_bytes())?;
    figure(rows, out)
}

/// The mean over the seeds' evaluations at each RL step.
fn mean_curve(per_seed: &[Vec<(u64, f64)>]) -> Vec<(f64, f64)> {
    let mut by_step: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for (step, v) in per_seed.iter().flatten() {
        by_step.entry(*step).or_default().push(*v);
    }
    by_step.into_iter().map(|(s, v)| (s as f64, v.iter().sum::<f64>() / v.len() as f64)).collect()
}

/// sweep.png: each point's held-out solve rate by RL step.
fn figure(rows: &[PointResult], out: &Path) -> anyhow::Result<()> {
    use arbor_sim::plot::{Figure, LinePlot, Series};
    let mut plot = LinePlot::new("Held-out solve rate (sampled, mean over seeds)", "RL step", "solve rate");
    for (i, r) in rows.iter().enumerate() {
        plot = plot.series(Series::line_dots(format!("p{i}: {}", r.settings), r.curve.clone()).colour(i));
    }
    Figure::single(plot, (900, 500)).save(&out.join(SUMMARY_FILES[1]))?;
    Ok(())
}

fn cell(v: impl Iterator<Item = f64>, signed: bool) -> String {
    let v: Vec<f64> = v.collect();
    let (m, sd) = super::seeds::mean_sd(&v);
    match (signed, v.len()) {
        (true, 1) => format!("{:+.1}", 100.0 * m),
        (false, 1) => format!("{:.1}", 100.0 * m),
        (true, _) => format!("{:+.1} ± {:.1}", 100.0 * m, 100.0 * sd),
        (false, _) => format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * sd),
    }
}

/// The sweep.md table (pass@k columns where every run's evaluations have it).
fn table(rows: &[PointResult], config: &str) -> String {
    let runs = || rows.iter().flat_map(|r| &r.runs);
    let pass = runs().all(|(_, b, a)| b.pass.is_some() && a.pass.is_some());
    let ks: std::collections::BTreeSet<u32> =
        runs().flat_map(|(_, b, a)| [b.pass, a.pass]).flatten().map(|p| p.k).collect();
    let k = match ks.iter().collect::<Vec<_>>()[..] {
        [k] => k.to_string(),
        _ => "k".to_string(),
    };
    let mut md = format!(
        "# arbor experiment sweep\n\nConfig: `{config}`. Held-out solve rates (%) before and after the RL phase, sampled at \
         T = 1 and greedy{}; mean ± sd over the seeds. Runs: `p<i>-seed<S>/`.\n\n",
        if pass { ", and pass@k (the problems one of their k = rl.eval_samples samples solves)" } else { "" }
    );
    md.push_str("| point | settings | seeds | before | after | gain | greedy before | greedy after |");
    if pass {
        let _ = writeln!(md, " pass@{k} before | pass@{k} after |");
    } else {
        md.push('\n');
    }
    md.push_str(&"|---".repeat(if pass { 10 } else { 8 }));
    md.push_str("|\n");
    for (i, r) in rows.iter().enumerate() {
        let seeds: Vec<String> = r.runs.iter().map(|(s, _, _)| s.to_string()).collect();
        let _ = write!(
            md,
            "| p{i} | `{}` | {} | {} | {} | {} | {} | {} |",
            r.settings,
            seeds.join(", "),
            cell(r.runs.iter().map(|(_, b, _)| b.sampled), false),
            cell(r.runs.iter().map(|(_, _, a)| a.sampled), false),
            cell(r.runs.iter().map(|(_, b, a)| a.sampled - b.sampled), true),
            cell(r.runs.iter().map(|(_, b, _)| b.greedy), false),
            cell(r.runs.iter().map(|(_, _, a)| a.greedy), false),
        );
        if pass {
            let rate = |p: Option<PassAtK>| p.map(|p| p.rate);
            let (b, a) = (r.runs.iter().map(|(_, b, _)| rate(b.pass)), r.runs.iter().map(|(_, _, a)| rate(a.pass)));
            let _ = write!(md, " {} | {} |", cell(b.flatten(), false), cell(a.flatten(), false));
        }
        md.push('\n');
    }
    md.push_str("\n![held-out solve rate by RL step](sweep.png)\n");
    md
}

/// The config of every point, read and checked before anything runs.
fn point_configs(args: &SweepArgs) -> anyhow::Result<Vec<(String, RunConfig)>> {
    let mut out = Vec::new();
    for (i, point) in points(&args.grid).into_iter().enumerate() {
        let settings = point.iter().map(|o| o.raw.as_str()).collect::<Vec<_>>().join(", ");
        let sets: Vec<Override> = args.set.iter().chain(&point).cloned().collect();
        let cfg = RunConfig::load_or_default_with(args.config.as_deref(), &sets)
            .with_context(|| format!("sweep point p{i} ({settings})"))?;
        anyhow::ensure!(
            cfg.rl.is_some(),
            "sweep point p{i} ({settings}): `experiment sweep` compares before/after an [rl] phase; the config has none"
        );
        out.push((settings, cfg));
    }
    Ok(out)
}

/// Run `arbor experiment sweep`.
pub fn run(args: &SweepArgs) -> anyhow::Result<()> {
    let configs = point_configs(args)?;
    let mut seen = std::collections::BTreeSet::new();
    for s in &args.seeds {
        anyhow::ensure!(seen.insert(*s), "--seeds: seed {s} is given twice");
    }
    if let Some(p) = args.point {
        anyhow::ensure!(
            p < configs.len(),
            "--point {p}: the grid has {} points (0..{})",
            configs.len(),
            configs.len() - 1
        );
    }
    let mut name = args.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the default job".into());
    for o in &args.set {
        name.push_str(&format!(" --set {}", o.raw));
    }
    let out: &Path = &args.out_dir;
    let seeds_of = |cfg: &RunConfig| if args.seeds.is_empty() { vec![cfg.run.seed] } else { args.seeds.clone() };
    if args.report {
        let rows = configs
            .iter()
            .enumerate()
            .map(|(i, (settings, cfg))| point_row(out, i, settings, &seeds_of(cfg), cfg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(note) = move_summary_aside(out, &SUMMARY_FILES)? {
            println!("{note}");
        }
        write_summary(&rows, &name, out)?;
        println!("{}", table(&rows, &name));
        println!("wrote {}", out.join(SUMMARY_FILES[0]).display());
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    args.stop.arm()?;
    if args.point.is_none() {
        args.stop.keep_earlier_summary(out, &SUMMARY_FILES)?;
    }
    let mut rows = Vec::new();
    for (i, (settings, base)) in configs.iter().enumerate() {
        if args.point.is_some_and(|p| p != i) {
            continue;
        }
        for seed in seeds_of(base) {
            let mut cfg = base.clone();
            cfg.run.seed = seed;
            cfg.run.name = format!("p{i}-seed{seed}");
            cfg.run.out_dir = out.to_path_buf();
            args.stop.run(&cfg, &format!("p{i} ({settings}), seed {seed}"), &mut std::io::stdout())?;
        }
        // the table so far, so that an interrupted sweep keeps what it measured (not for one
        // point of an array: the other tasks write beside it)
        if args.point.is_none() {
            rows.push(point_row(out, i, settings, &seeds_of(base), base)?);
            write_summary(&rows, &name, out)?;
        }
    }
    match args.point {
        Some(p) => println!("point p{p} done; after every point: the same command with --report instead of --point"),
        None => {
            println!("\n{}", table(&rows, &name));
            println!("wrote {}", out.join(SUMMARY_FILES[0]).display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(p: &[Override]) -> String {
        p.iter().map(|o| o.raw.as_str()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn axes_split_at_top_level_commas_and_points_cover_the_grid_in_order() {
        let a = parse_axis("rl.lr=1e-4, 2e-4").unwrap();
        let b = parse_axis("loss.kind=ppo,cispo,tis").unwrap();
        let grid = points(&[a, b]);
        assert_eq!(grid.len(), 6);
        assert_eq!(keys(&grid[0]), "rl.lr=1e-4 loss.kind=ppo");
        assert_eq!(keys(&grid[1]), "rl.lr=1e-4 loss.kind=cispo");
        assert_eq!(keys(&grid[5]), "rl.lr=2e-4 loss.kind=tis");
        let c = parse_axis("critic={ lr = 1e-5, count = 2 },{ lr = 2e-5 }").unwrap();
        assert_eq!(c.settings.len(), 2);
        assert_eq!(c.settings[0].value.get("count").and_then(|v| v.as_integer()), Some(2));
        let q = parse_axis("run.name=\"a,b\",c").unwrap();
        assert_eq!(q.settings[0].value.as_str(), Some("a,b"));
        for (bad, says) in [
            ("rl.lr", "expects KEY=V1"),
            ("rl.lr=1,,2", "empty value"),
            ("rl.lr=1e-4,1e-4", "given twice"),
            ("r l=1", "not a key"),
        ] {
            let e = parse_axis(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_table_gives_each_points_mean_and_sd_over_its_seeds() {
        let r = |s: f64, g: f64| SolveRate { greedy: g, sampled: s, pass: None };
        let rows = [
            PointResult {
                settings: "rl.lr=1e-4".into(),
                runs: vec![(1, r(0.2, 0.3), r(0.4, 0.5)), (2, r(0.2, 0.3), r(0.3, 0.4))],
                curve: vec![],
            },
            PointResult { settings: "rl.lr=2e-4".into(), runs: vec![(1, r(0.2, 0.3), r(0.1, 0.3))], curve: vec![] },
        ];
        let md = table(&rows, "x.toml");
        assert!(
            md.contains(
                "| p0 | `rl.lr=1e-4` | 1, 2 | 20.0 ± 0.0 | 35.0 ± 7.1 | +15.0 ± 7.1 | 30.0 ± 0.0 | 45.0 ± 7.1 |"
            ),
            "{md}"
        );
        assert!(md.contains("| p1 | `rl.lr=2e-4` | 1 | 20.0 | 10.0 | -10.0 | 30.0 | 30.0 |"), "{md}");
        assert!(md.contains("](sweep.png)"), "{md}");
        assert!(!md.contains("pass@k"), "no run has pass@k: {md}");
        // every run with pass@k: two more columns
        let mut rows = rows;
        for r in &mut rows {
            for (_, b, a) in &mut r.runs {
                let pass = |rate| Some(PassAtK { k: 4, rate });
                (b.pass, a.pass) = (pass(b.sampled + 0.5), pass(a.sampled + 0.25));
            }
        }
        let md = table(&rows, "x.toml");
        assert!(
            md.contains("| greedy after | pass@4 before | pass@4 after |\n|---|---|---|---|---|---|---|---|---|---|\n"),
            "{md}"
        );
        assert!(md.contains("| 30.0 ± 0.0 | 45.0 ± 7.1 | 70.0 ± 0.0 | 60.0 ± 7.1 |\n"), "{md}");
        assert!(md.contains("| p1 | `rl.lr=2e-4` | 1 | 20.0 | 10.0 | -10.0 | 30.0 | 30.0 | 70.0 | 35.0 |\n"), "{md}");
        // the curve: the seeds' mean where both evaluated, the one value where one did
        let curve = mean_curve(&[vec![(0, 0.2), (2, 0.4)], vec![(0, 0.4), (2, 0.2), (3, 0.5)]]);
        assert_eq!(curve, [(0.0, 0.30000000000000004), (2.0, 0.30000000000000004), (3.0, 0.5)]);
    }
}
