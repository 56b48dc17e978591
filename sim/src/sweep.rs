//! `arbor sim sweep`: one policy over GPU counts × async ratios, with a progress bar on stderr.
//!
//! A sweep is a grid of points, `gpus`-major: point `i` is `(gpus[i / alphas.len()], alphas[i % alphas.len()])`.
//! Each point is a pure function of (scenario, policy, point, seed), so the points can be computed in
//! any process, in any order: [`task_points`] splits them round-robin over the tasks of a Slurm job array,
//! each task writes one piece per point ([`crate::pieces`]), and a merge rebuilds the same table
//! ([`table`]) and plots ([`write_summary`]) as a sweep run in one process.

use crate::plot::{Figure, LinePlot, Series};
use crate::run::run_policy_best;
use crate::scenario::{Mode, Placement, Scenario};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Largest GPU count a sweep point may ask for (the scenario file's own `hardware.gpus` bound).
pub const GPUS_MAX: u32 = 1_000_000;

/// Most points one sweep may have (`--gpus` values × `--alpha` values).
pub const POINTS_MAX: usize = 1_000_000;

/// One sweep point.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SweepPoint {
    pub gpus: u32,
    pub alpha: f64,
    pub step_time_s_mean: f64,
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
    pub staleness_mean: f64,
    pub inference_busy_fraction: f64,
    pub trace_hash: String,
}

/// What a sweep is: the identity every piece of it records. Two runs with equal [`SweepInfo::fingerprint`]s
/// compute identical points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepInfo {
    /// Scenario `name`.
    pub scenario: String,
    /// The scenario path as given on the command line (informative only: not part of the fingerprint,
    /// tasks may see the same file under different paths).
    pub scenario_file: String,
    /// Hash of the parsed scenario, CSV data of empirical distributions included (comments and
    /// formatting of the file do not count).
    pub scenario_hash: String,
    /// Version of arbor-sim that computed the points.
    pub arbor_sim_version: String,
    pub policy: String,
    pub gpus: Vec<u32>,
    #[serde(with = "crate::pieces::exact_vec")]
    pub alpha: Vec<f64>,
    pub seed: u64,
    /// Number of points, `gpus.len() * alpha.len()`.
    pub points: usize,
}

impl SweepInfo {
    /// Hash of everything that determines the points (all fields but `scenario_file`).
    pub fn fingerprint(&self) -> String {
        let mut h = Fnv128::default();
        h.str(crate::pieces::PIECE_FORMAT);
        h.str(&self.scenario);
        h.str(&self.scenario_hash);
        h.str(&self.arbor_sim_version);
        h.str(&self.policy);
        h.u64(self.gpus.len() as u64);
        for &g in &self.gpus {
            h.u64(g as u64);
        }
        h.u64(self.alpha.len() as u64);
        for a in &self.alpha {
            h.u64(a.to_bits());
        }
        h.u64(self.seed);
        h.u64(self.points as u64);
        h.hex()
    }

    /// `(gpus, alpha)` of point `index`, `None` when out of range.
    pub fn point(&self, index: usize) -> Option<(u32, f64)> {
        let n = self.alpha.len();
        if n == 0 || index >= self.points {
            return None;
        }
        Some((*self.gpus.get(index / n)?, self.alpha[index % n]))
    }

    /// One line naming the sweep, for messages.
    pub fn describe(&self) -> String {
        format!(
            "scenario {} (hash {}), policy {}, gpus {}, alpha {}, seed {}, arbor-sim {}",
            self.scenario,
            self.scenario_hash.chars().take(12).collect::<String>(),
            self.policy,
            join(self.gpus.iter()),
            join(self.alpha.iter()),
            self.seed,
            self.arbor_sim_version
        )
    }
}

fn join<T: std::fmt::Display>(it: impl Iterator<Item = T>) -> String {
    it.map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

/// 128-bit FNV-1a, length-prefixed fields (stable across builds and platforms, unlike `std`'s hasher).
#[derive(Clone, Copy)]
pub(crate) struct Fnv128(u128);

impl Default for Fnv128 {
    fn default() -> Self {
        Fnv128(0x6c62272e07bb014262b821756295c58d)
    }
}

impl Fnv128 {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= x as u128;
            self.0 = self.0.wrapping_mul(0x0000000001000000000000000000013B);
        }
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
    pub(crate) fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// A validated sweep: the scenario plus the grid.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    pub scenario: Scenario,
    pub scenario_file: String,
    pub policy: String,
    pub gpus: Vec<u32>,
    pub alphas: Vec<f64>,
    pub seed: u64,
}

impl SweepSpec {
    /// Check the grid up front (before any point runs); errors name the option and the value.
    /// `policy = None` takes the scenario's first policy.
    pub fn new(
        scenario: Scenario,
        scenario_file: impl Into<String>,
        policy: Option<&str>,
        gpus: &[u32],
        alphas: &[f64],
        seed: u64,
    ) -> Result<SweepSpec> {
        let policy = match policy {
            Some(p) => p.to_string(),
            None => scenario.policies.first().map(|p| p.name.clone()).context("the scenario has no [[policy]]")?,
        };
        if scenario.policy(&policy).is_none() {
            bail!(
                "--policy {policy:?}: no such policy in scenario {} (policies: {})",
                scenario.name,
                join(scenario.policies.iter().map(|p| &p.name))
            );
        }
        if gpus.is_empty() {
            bail!("--gpus: at least one GPU count is needed");
        }
        if alphas.is_empty() {
            bail!("--alpha: at least one async ratio is needed");
        }
        if gpus.len().saturating_mul(alphas.len()) > POINTS_MAX {
            bail!("--gpus ({} values) x --alpha ({} values): more than {POINTS_MAX} points", gpus.len(), alphas.len());
        }
        let tp = scenario.inference.tp;
        for &g in gpus {
            if g == 0 || g > GPUS_MAX || g < tp {
                bail!(
                    "--gpus {g}: must be in {}..={GPUS_MAX} (inference.tp of scenario {} is {tp})",
                    tp.max(1),
                    scenario.name
                );
            }
        }
        for &a in alphas {
            if a.is_nan() || a < 0.0 {
                bail!("--alpha {a}: values must be >= 0 (inf allowed)");
            }
        }
        let spec = SweepSpec {
            scenario,
            scenario_file: scenario_file.into(),
            policy,
            gpus: gpus.to_vec(),
            alphas: alphas.to_vec(),
            seed,
        };
        // Every point is checked as a scenario file would be (one copy, changed in place). The checks
        // see alpha only as 0, finite or inf, so one alpha of each kind stands for the others.
        let k = spec.policy_index()?;
        let mut kinds = Vec::new();
        let mut reps = Vec::new();
        for &a in alphas {
            let kind = (a > 0.0, a.is_finite());
            if !kinds.contains(&kind) {
                kinds.push(kind);
                reps.push(a);
            }
        }
        let mut s = spec.scenario.clone();
        for &g in gpus {
            for &a in &reps {
                spec.set_point(&mut s, k, g, a);
                s.check_derived(&[k]).with_context(|| spec.point_label(g, a))?;
            }
        }
        Ok(spec)
    }

    fn policy_index(&self) -> Result<usize> {
        self.scenario
            .policies
            .iter()
            .position(|p| p.name == self.policy)
            .with_context(|| format!("no policy {:?}", self.policy))
    }

    /// Turn `s` (a copy of the scenario) into point `(g, a)`: `hardware.gpus = g`, and policy `k` as
    /// given at alpha = 0, async on a disaggregated split with `alpha = a` otherwise.
    fn set_point(&self, s: &mut Scenario, k: usize, g: u32, a: f64) {
        s.hardware.gpus = g;
        let mut p = self.scenario.policies[k].clone();
        if a > 0.0 {
            p.mode = Mode::Async;
            p.placement = Placement::Disaggregated;
            p.alpha = a;
            // the synchronous policy's own cutoff mechanisms have no meaning in async mode
            p.tail_eta = 1.0;
            p.redundant_groups = 0;
            p.partial_rollout = false;
        }
        s.policies[k] = p;
    }

    fn point_label(&self, g: u32, a: f64) -> String {
        let how = if a > 0.0 {
            format!("policy {:?} run async, disaggregated, alpha = {a}", self.policy)
        } else {
            format!("policy {:?} as configured", self.policy)
        };
        format!("--gpus {g} --alpha {a} ({how})")
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.gpus.len() * self.alphas.len()
    }

    /// True when the grid is empty (never, for a spec built by [`SweepSpec::new`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sweep's identity, recorded in each piece.
    pub fn info(&self) -> SweepInfo {
        let mut h = Fnv128::default();
        h.str(&format!("{:?}", self.scenario));
        SweepInfo {
            scenario: self.scenario.name.clone(),
            scenario_file: self.scenario_file.clone(),
            scenario_hash: h.hex(),
            arbor_sim_version: env!("CARGO_PKG_VERSION").to_string(),
            policy: self.policy.clone(),
            gpus: self.gpus.clone(),
            alpha: self.alphas.clone(),
            seed: self.seed,
            points: self.len(),
        }
    }

    /// Run point `index` (`gpus`-major order). alpha = 0 runs the policy in its own mode; alpha > 0 runs
    /// it async on a disaggregated split.
    pub fn run_point(&self, index: usize) -> Result<SweepPoint> {
        anyhow::ensure!(index < self.len(), "point {index}: the sweep has {} points", self.len());
        let (g, a) = (self.gpus[index / self.alphas.len()], self.alphas[index % self.alphas.len()]);
        let k = self.policy_index()?;
        let mut s = self.scenario.clone();
        self.set_point(&mut s, k, g, a);
        s.check_derived(&[k]).with_context(|| self.point_label(g, a))?;
        let r = run_policy_best(&s, &s.policies[k], self.seed)
            .with_context(|| format!("sweep point {index} (gpus={g}, alpha={a}, seed {})", self.seed))?;
        Ok(SweepPoint {
            gpus: g,
            alpha: a,
            step_time_s_mean: r.step_time_s_mean,
            samples_per_s: r.samples_per_s,
            tokens_per_s: r.tokens_per_s,
            staleness_mean: r.staleness_mean,
            inference_busy_fraction: r.inference_busy_fraction,
            trace_hash: r.trace_hash,
        })
    }

    /// Run the points `indices` in order with a progress bar on stderr; `done` sees each result as soon
    /// as it exists (a task writes its piece there, so a killed task keeps the points it finished).
    pub fn run_points(
        &self,
        indices: &[usize],
        mut done: impl FnMut(usize, &SweepPoint) -> Result<()>,
    ) -> Result<Vec<SweepPoint>> {
        let bar = ProgressBar::new(indices.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut out = Vec::with_capacity(indices.len());
        for &i in indices {
            if let Some((g, a)) = self.info_point(i) {
                bar.set_message(format!("point {i}: gpus={g} alpha={a}"));
            }
            let p = self.run_point(i)?;
            done(i, &p)?;
            out.push(p);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(out)
    }

    fn info_point(&self, index: usize) -> Option<(u32, f64)> {
        let n = self.alphas.len();
        (index < self.len()).then(|| (self.gpus[index / n], self.alphas[index % n]))
    }
}

/// Run `policy` (alpha = 0 → its own mode; alpha > 0 → async, disaggregated) for every (gpus, alpha).
pub fn sweep(sc: &Scenario, policy: &str, gpus: &[u32], alphas: &[f64], seed: u64) -> Result<Vec<SweepPoint>> {
    let spec = SweepSpec::new(sc.clone(), "", Some(policy), gpus, alphas, seed)?;
    let all: Vec<usize> = (0..spec.len()).collect();
    spec.run_points(&all, |_, _| Ok(()))
}

/// The points of task `task` of `tasks`: round-robin by point index (`task, task + tasks, ...`), so task
/// loads differ by at most one point and neighbouring (similar-cost) points go to different tasks.
pub fn task_points(points: usize, task: usize, tasks: usize) -> Vec<usize> {
    if tasks == 0 || task >= tasks {
        return Vec::new();
    }
    (task..points).step_by(tasks).collect()
}

/// Where a task selection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSource {
    /// `--task I --tasks N`.
    Flags,
    /// `SLURM_ARRAY_TASK_ID` and friends.
    SlurmArray,
    /// Neither: the whole sweep in this process.
    Whole,
}

/// Which share of the points this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSelection {
    /// 0-based task index, `< tasks`.
    pub task: usize,
    pub tasks: usize,
    pub source: TaskSource,
}

/// Pick the task: `--task`/`--tasks` when given (both or neither), else the Slurm array variables read
/// through `env`, else the whole sweep (task 0 of 1).
///
/// From Slurm: task = (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN`) / `SLURM_ARRAY_TASK_STEP` and
/// tasks = `SLURM_ARRAY_TASK_COUNT` (MIN defaults to 0 and STEP to 1 when unset). That maps `--array=0-3`,
/// `--array=1-4` and `--array=0-9:3` onto tasks 0..N; an index list with gaps (`--array=0,2,7`) does not
/// map and is refused, naming the variables (pass `--task/--tasks` there).
pub fn select_task(
    task: Option<usize>,
    tasks: Option<usize>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<TaskSelection> {
    match (task, tasks) {
        (Some(task), Some(tasks)) => {
            if tasks == 0 {
                bail!("--tasks 0: must be >= 1");
            }
            if task >= tasks {
                bail!("--task {task}: must be < --tasks {tasks} (tasks are numbered from 0)");
            }
            return Ok(TaskSelection { task, tasks, source: TaskSource::Flags });
        }
        (Some(t), None) => bail!("--task {t} needs --tasks N (the number of tasks the sweep is split into)"),
        (None, Some(n)) => bail!("--tasks {n} needs --task I (which of the {n} tasks this process runs)"),
        (None, None) => {}
    }
    let var = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let Some(id_text) = var("SLURM_ARRAY_TASK_ID") else {
        return Ok(TaskSelection { task: 0, tasks: 1, source: TaskSource::Whole });
    };
    let num = |name: &str, text: &str| -> Result<usize> {
        text.parse::<usize>().map_err(|_| anyhow::anyhow!("{name} = {text:?}: not a whole number >= 0"))
    };
    let id = num("SLURM_ARRAY_TASK_ID", &id_text)?;
    let count_text = var("SLURM_ARRAY_TASK_COUNT").with_context(|| {
        format!("SLURM_ARRAY_TASK_ID = {id} is set but SLURM_ARRAY_TASK_COUNT is not; pass --task I --tasks N")
    })?;
    let count = num("SLURM_ARRAY_TASK_COUNT", &count_text)?;
    let min = var("SLURM_ARRAY_TASK_MIN").map(|t| num("SLURM_ARRAY_TASK_MIN", &t)).transpose()?.unwrap_or(0);
    let step = var("SLURM_ARRAY_TASK_STEP").map(|t| num("SLURM_ARRAY_TASK_STEP", &t)).transpose()?.unwrap_or(1);
    let vars = format!(
        "SLURM_ARRAY_TASK_ID = {id}, SLURM_ARRAY_TASK_MIN = {min}, SLURM_ARRAY_TASK_STEP = {step}, \
         SLURM_ARRAY_TASK_COUNT = {count}"
    );
    if count == 0 || step == 0 {
        bail!("{vars}: COUNT and STEP must be >= 1");
    }
    if id < min || (id - min) % step != 0 || (id - min) / step >= count {
        bail!(
            "{vars}: the array indices are not MIN, MIN+STEP, ..., MIN+(COUNT-1)*STEP (an index list with \
             gaps?); submit a range such as --array=0-{} or pass --task I --tasks N",
            count - 1
        );
    }
    Ok(TaskSelection { task: (id - min) / step, tasks: count, source: TaskSource::SlurmArray })
}

/// Header of the CSV table.
pub const CSV_HEADER: &str =
    "gpus,alpha,step_time_s_mean,samples_per_s,tokens_per_s,staleness_mean,inference_busy_fraction,trace_hash\n";

/// The sweep's table as printed on stdout: CSV (header + one row per point), or one JSON object per line.
pub fn table(points: &[SweepPoint], json: bool) -> Result<String> {
    let mut out = String::new();
    if !json {
        out.push_str(CSV_HEADER);
    }
    for p in points {
        if json {
            out.push_str(&serde_json::to_string(p)?);
            out.push('\n');
        } else {
            let _ = writeln!(
                out,
                "{},{},{:.4},{:.4},{:.1},{:.3},{:.4},{}",
                p.gpus,
                p.alpha,
                p.step_time_s_mean,
                p.samples_per_s,
                p.tokens_per_s,
                p.staleness_mean,
                p.inference_busy_fraction,
                p.trace_hash
            );
        }
    }
    Ok(out)
}

/// Panels of `sweep.png`: samples/s, step time, mean staleness and inference busy fraction against the
/// GPU count, one line per async ratio (in `--alpha` order).
pub fn plots(info: &SweepInfo, points: &[SweepPoint]) -> Vec<LinePlot> {
    let name = |a: f64| if a == 0.0 { format!("α = 0 ({} as configured)", info.policy) } else { format!("α = {a}") };
    let panel = |title: &str, y: &str, f: fn(&SweepPoint) -> f64| {
        let mut plot = LinePlot::new(format!("{title}: {} / {}", info.scenario, info.policy), "GPUs", y);
        for &a in &info.alpha {
            let mut pts: Vec<(f64, f64)> =
                points.iter().filter(|p| p.alpha.to_bits() == a.to_bits()).map(|p| (p.gpus as f64, f(p))).collect();
            pts.sort_by(|x, y| x.0.total_cmp(&y.0));
            plot = plot.series(Series::line_dots(name(a), pts));
        }
        plot
    };
    vec![
        panel("throughput", "samples/s", |p| p.samples_per_s),
        panel("step time", "mean step time, s", |p| p.step_time_s_mean),
        panel("staleness", "mean staleness, versions", |p| p.staleness_mean),
        panel("inference busy", "inference busy fraction", |p| p.inference_busy_fraction),
    ]
}

/// Write `sweep.csv` (the CSV table) and `sweep.png` (the [`plots`], 2 × 2 panels) into `dir`, each via a
/// temporary file and a rename. Returns the paths written.
pub fn write_summary(info: &SweepInfo, points: &[SweepPoint], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let csv = dir.join("sweep.csv");
    crate::pieces::write_atomic(&csv, table(points, false)?.as_bytes())?;
    let png = dir.join("sweep.png");
    // The PNG encoder picks the format from the extension, so the temporary name ends in `.png`.
    let tmp = dir.join(format!(".sweep.tmp-{}.png", std::process::id()));
    let fig = Figure::grid(plots(info, points), 2, (700, 450));
    let saved = fig.save(&tmp).and_then(|text| {
        std::fs::rename(&tmp, &png).with_context(|| format!("cannot rename {} to {}", tmp.display(), png.display()))?;
        Ok(text)
    });
    match saved {
        Ok(true) => {}
        Ok(false) => eprintln!("warning: {}: text could not be drawn; the plot has no labels", png.display()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("cannot write {}", png.display())));
        }
    }
    Ok(vec![csv, png])
}
