//! `arbor plot RUN_DIR`: PNG plots of a run's `metrics.jsonl`, drawn with the simulator's plot API
//! ([`arbor_sim::plot`]).
//!
//! Lines with `rl_step` belong to the RL phase, other lines with `step` to the supervised phase; lines
//! with neither and keys that no plot uses are ignored. A plotted key must hold a number (or `null`,
//! which JSON writers emit for NaN: a gap in the line). Files written, each only when it has data:
//! - `reward.png`: RL reward mean per step and its moving average;
//! - `solve_rate.png`: RL train solve rate (and moving average), held-out sampled and greedy solve rates;
//! - `length.png`: RL response length, mean and max;
//! - `loss.png`: supervised loss with held-out answer NLL, and RL loss, one panel per phase;
//! - `rl_stats.png`: RL entropy, approximate KL between the updated policy and the trainer's π_old
//!   (not the rollout policy: π_old is the trainer's recompute before the step's updates, or the
//!   off-policy pipeline's fixed π_old, so the KL is 0 for a single update from a recompute), clip
//!   fraction and gradient norm;
//! - `async.png` (`[async]` runs): staleness mean and max, trainer idle and rollout-slot busy
//!   fractions with the fraction of samples spanning a weight update, and the reward queue latency.

use anyhow::{bail, Context};
use arbor_sim::plot::{Figure, LinePlot, Series};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Size of single-panel figures, pixels.
pub const SINGLE: (u32, u32) = (900, 500);
/// Size of each panel of `loss.png` (stacked) and `rl_stats.png` (2 × 2), pixels.
pub const LOSS_PANEL: (u32, u32) = (900, 420);
pub const STATS_PANEL: (u32, u32) = (600, 380);

/// Keys read from supervised lines.
const SFT_KEYS: [&str; 3] = ["loss", "eval_answer_nll", "eval_answer_exact"];
/// Keys read from RL lines.
const RL_KEYS: [&str; 19] = [
    "reward_mean",
    "reward_std",
    "solve_rate",
    "response_len_mean",
    "response_len_max",
    "loss",
    "eval_solve_rate",
    "eval_solve_rate_greedy",
    "eval_pass_at_k",
    "entropy",
    "approx_kl",
    "clip_frac",
    "grad_norm",
    "staleness_mean",
    "staleness_max",
    "trainer_idle_frac",
    "rollout_slot_util",
    "reward_queue_s",
    "mixed_version_frac",
];

/// Arguments of `arbor plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directory holding metrics.jsonl (or the path of a metrics.jsonl file).
    pub run_dir: PathBuf,
    /// Directory for the PNG files (default: RUN_DIR/plots).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One metrics line: its step and the plotted keys it has (NaN where the value was `null`).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub step: f64,
    pub values: BTreeMap<&'static str, f64>,
}

/// A run's metrics split by phase, each in file order.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub sft: Vec<Row>,
    pub rl: Vec<Row>,
}

/// The (step, value) points of `key`, sorted by step (stable: equal steps keep file order).
fn points(rows: &[Row], key: &str) -> Vec<(f64, f64)> {
    let mut p: Vec<(f64, f64)> = rows.iter().filter_map(|r| r.values.get(key).map(|&v| (r.step, v))).collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    p
}

/// Parse `metrics.jsonl` text; `name` is the file name used in errors (`name:line: ...`). An
/// unfinished last line (a run writing it now, or killed while writing it) is left out with a warning
/// ([`parse_lines`](crate::train::metrics::parse_lines)).
pub fn parse_metrics(name: &str, bytes: &[u8]) -> anyhow::Result<Metrics> {
    let mut m = Metrics::default();
    let lines = crate::train::metrics::parse_lines(name, bytes)?;
    for (at, value) in &lines {
        let Some(obj) = value.as_object() else {
            bail!("{name}:{at}: expected a JSON object, found {}", kind(value));
        };
        let (step_key, keys, dest): (&str, &[&'static str], &mut Vec<Row>) = if obj.contains_key("event") {
            continue; // an event (a config change on resume), not a step's metrics
        } else if obj.contains_key("rl_step") {
            ("rl_step", &RL_KEYS, &mut m.rl)
        } else if obj.contains_key("step") {
            ("step", &SFT_KEYS, &mut m.sft)
        } else {
            continue;
        };
        let step = match obj[step_key].as_u64() {
            Some(s) => s as f64,
            None => bail!("{name}:{at}: key `{step_key}`: expected a non-negative integer, found {}", obj[step_key]),
        };
        let mut values = BTreeMap::new();
        for &k in keys {
            match obj.get(k) {
                None => {}
                Some(serde_json::Value::Null) => {
                    values.insert(k, f64::NAN);
                }
                Some(v) => match v.as_f64() {
                    Some(x) => {
                        values.insert(k, x);
                    }
                    None => bail!("{name}:{at}: key `{k}`: expected a number, found {}", kind(v)),
                },
            }
        }
        dest.push(Row { step, values });
    }
    if lines.is_empty() {
        bail!("{name}: empty, no metrics to plot");
    }
    Ok(m)
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Centred moving average over `window` points (odd), ignoring non-finite values; NaN where a
/// window holds none.
pub fn moving_average(p: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let half = window / 2;
    // Prefix sums of finite values and of their count.
    let mut sum = vec![0.0; p.len() + 1];
    let mut cnt = vec![0usize; p.len() + 1];
    for (i, &(_, y)) in p.iter().enumerate() {
        let ok = y.is_finite();
        sum[i + 1] = sum[i] + if ok { y } else { 0.0 };
        cnt[i + 1] = cnt[i] + ok as usize;
    }
    (0..p.len())
        .map(|i| {
            let (lo, hi) = (i.saturating_sub(half), (i + half + 1).min(p.len()));
            let n = cnt[hi] - cnt[lo];
            (p[i].0, if n == 0 { f64::NAN } else { (sum[hi] - sum[lo]) / n as f64 })
        })
        .collect()
}

/// Smoothing window for `n` points: about n/10, odd, in 3..=101; `None` when too few points to smooth.
fn window(n: usize) -> Option<usize> {
    (n >= 10).then(|| ((n / 20).clamp(1, 50)) * 2 + 1)
}

/// A faint raw series named `raw` with a bold moving average named `smooth (N steps)` on top; the raw
/// series alone, with dots, when it is too short to smooth.
fn raw_and_smoothed(plot: LinePlot, raw: &str, smooth: &str, p: Vec<(f64, f64)>, colour: usize) -> LinePlot {
    match window(p.len()) {
        Some(w) => {
            let avg = moving_average(&p, w);
            plot.series(Series::line(raw, p).colour(colour).width(1).opacity(0.35))
                .series(Series::line(format!("{smooth} ({w} steps)"), avg).colour(colour).width(3))
        }
        None => plot.series(Series::line_dots(raw, p).colour(colour)),
    }
}

/// The figures `m` has data for, with their file names.
pub fn figures(m: &Metrics) -> Vec<(&'static str, Figure)> {
    let mut out = vec![];
    let rl = |k: &str| points(&m.rl, k);

    let reward = raw_and_smoothed(
        LinePlot::new("Reward per RL step", "RL step", "reward"),
        "mean over the step's samples",
        "moving average",
        rl("reward_mean"),
        0,
    );
    if reward.has_data() {
        out.push(("reward.png", Figure::single(reward, SINGLE)));
    }

    let solve = raw_and_smoothed(
        LinePlot::new("Solve rate", "RL step", "solve rate (fraction solved)"),
        "train (sampled), per step",
        "train, moving average",
        rl("solve_rate"),
        0,
    )
    .series(Series::line_dots("held-out, sampled", rl("eval_solve_rate")).colour(1))
    .series(Series::line_dots("held-out, greedy", rl("eval_solve_rate_greedy")).colour(2))
    .series(Series::line_dots("held-out, pass@k (k = eval_samples)", rl("eval_pass_at_k")).colour(3));
    if solve.has_data() {
        out.push(("solve_rate.png", Figure::single(solve, SINGLE)));
    }

    let length = LinePlot::new("Response length", "RL step", "tokens")
        .series(Series::line("mean", rl("response_len_mean")).colour(0))
        .series(Series::line("max", rl("response_len_max")).colour(1).width(1));
    if length.has_data() {
        out.push(("length.png", Figure::single(length, SINGLE)));
    }

    // A supervised panel needs training losses or several evaluations (a warm-started run has just one,
    // at step 0, which alone says nothing).
    let (sft_train, sft_eval) = (points(&m.sft, "loss"), points(&m.sft, "eval_answer_nll"));
    let sft_useful =
        sft_train.iter().any(|p| p.1.is_finite()) || sft_eval.iter().filter(|p| p.1.is_finite()).count() > 1;
    let sft_loss = LinePlot::new("Supervised loss", "step", "nats per token")
        .series(Series::line("train loss", sft_train).colour(0))
        .series(Series::line_dots("held-out answer NLL", sft_eval).colour(1));
    let rl_loss = raw_and_smoothed(
        LinePlot::new("RL policy loss", "RL step", "loss"),
        "per step",
        "moving average",
        rl("loss"),
        0,
    );
    let losses: Vec<LinePlot> = [(sft_loss, sft_useful), (rl_loss, true)]
        .into_iter()
        .filter(|(p, ok)| *ok && p.has_data())
        .map(|p| p.0)
        .collect();
    if !losses.is_empty() {
        out.push(("loss.png", Figure::grid(losses, 1, LOSS_PANEL)));
    }

    let stats: Vec<LinePlot> = [
        ("Entropy", "entropy (nats per token)", "entropy"),
        // `approx_kl` compares the policy being updated with the trainer's own π_old (its recompute
        // before the step's first update, or the pipeline's fixed π_old): not with the rollout policy,
        // and 0 when a step makes a single update from a recomputed π_old
        ("Approximate KL to the trainer's pi_old", "approx. KL(pi_old || pi)", "approx_kl"),
        ("Clipped fraction", "fraction of tokens clipped", "clip_frac"),
        ("Gradient norm", "norm before clipping", "grad_norm"),
    ]
    .into_iter()
    .map(|(title, y, key)| {
        raw_and_smoothed(LinePlot::new(title, "RL step", y), "per step", "moving average", rl(key), 0)
    })
    .filter(LinePlot::has_data)
    .collect();
    if !stats.is_empty() {
        out.push(("rl_stats.png", Figure::grid(stats, 2, STATS_PANEL)));
    }

    // `[async]`: how old the samples were, who waited, and the rollout ranks' pace
    let staleness = LinePlot::new("Staleness", "RL step", "policy versions behind the trainer")
        .series(Series::line("mean over samples", rl("staleness_mean")).colour(0))
        .series(Series::line("max", rl("staleness_max")).colour(1).width(1));
    let idle = LinePlot::new("Idle and busy", "RL step", "fraction")
        .series(Series::line("trainer idle (waiting for the batch)", rl("trainer_idle_frac")).colour(0))
        .series(Series::line("rollout slots busy", rl("rollout_slot_util")).colour(1))
        .series(Series::line("samples spanning a weight update", rl("mixed_version_frac")).colour(2).width(1));
    let queue = LinePlot::new("Reward queue latency", "RL step", "seconds")
        .series(Series::line("completion → sent, mean", rl("reward_queue_s")).colour(0));
    let panels: Vec<LinePlot> = [staleness, idle, queue].into_iter().filter(LinePlot::has_data).collect();
    if !panels.is_empty() {
        out.push(("async.png", Figure::grid(panels, 2, STATS_PANEL)));
    }
    out
}

/// Run `arbor plot`.
pub fn run(args: &PlotArgs) -> anyhow::Result<()> {
    let dir = &args.run_dir;
    if !dir.exists() {
        bail!("{}: no such run directory", dir.display());
    }
    let (file, default_out) = if dir.is_file() {
        (dir.clone(), dir.parent().unwrap_or(Path::new(".")).join("plots"))
    } else {
        (dir.join("metrics.jsonl"), dir.join("plots"))
    };
    if !file.is_file() {
        bail!("{}: no such file (RUN_DIR must be a run directory such as runs/default)", file.display());
    }
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.display().to_string();
    let metrics = parse_metrics(&name, &bytes)?;
    let figs = figures(&metrics);
    if figs.is_empty() {
        bail!(
            "{name}: no plottable data ({} supervised and {} RL lines; plotted keys: {} / {})",
            metrics.sft.len(),
            metrics.rl.len(),
            SFT_KEYS.join(", "),
            RL_KEYS.join(", ")
        );
    }
    let out = args.out.clone().unwrap_or(default_out);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for (file_name, fig) in figs {
        let path = out.join(file_name);
        let text = fig.save(&path).with_context(|| format!("plot {}", path.display()))?;
        if !text {
            eprintln!("warning: {}: text could not be drawn; the plot has no labels", path.display());
        }
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_phases_and_rejects_bad_values() {
        let text = b"{\"step\":1,\"loss\":2.5,\"lr\":0.1}\n\n{\"rl_step\":3,\"reward_mean\":0.5,\"loss\":null,\"new\":\"x\"}\n{\"note\":1}\n";
        let m = parse_metrics("m.jsonl", text).unwrap();
        assert_eq!(m.sft.len(), 1);
        assert_eq!(m.sft[0].values.get("loss"), Some(&2.5));
        assert!(!m.sft[0].values.contains_key("lr"));
        assert_eq!(m.rl[0].step, 3.0);
        assert!(m.rl[0].values["loss"].is_nan());
        let e = parse_metrics("m.jsonl", b"{\"rl_step\":1}\n{\"rl_step\":2,\"reward_mean\":\"high\"}\n").unwrap_err();
        assert_eq!(e.to_string(), "m.jsonl:2: key `reward_mean`: expected a number, found a string");
        let e = parse_metrics("m.jsonl", b"{\"step\":-1}\n").unwrap_err();
        assert!(e.to_string().starts_with("m.jsonl:1: key `step`"), "{e}");
        let e = parse_metrics("m.jsonl", b"[1,2]\n").unwrap_err();
        assert_eq!(e.to_string(), "m.jsonl:1: expected a JSON object, found an array");
        assert!(parse_metrics("m.jsonl", b"\n \n").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn a_line_being_written_is_left_out() {
        let text = b"{\"rl_step\":1,\"reward_mean\":0.5}\n{\"rl_step\":2,\"reward_mean\":0.25}\n{\"rl_step\":3,\"rew";
        let m = parse_metrics("m.jsonl", text).unwrap();
        assert_eq!(m.rl.iter().map(|r| r.step).collect::<Vec<_>>(), [1.0, 2.0]);
        let e = parse_metrics("m.jsonl", b"{\"rl_step\":1,\"rew\n{\"rl_step\":2}\n").unwrap_err();
        assert!(e.to_string().starts_with("m.jsonl:1: invalid JSON"), "{e}");
    }

    #[test]
    fn moving_average_is_centred_and_skips_gaps() {
        let p: Vec<(f64, f64)> =
            [1.0, 2.0, f64::NAN, 4.0, 5.0].iter().enumerate().map(|(i, &y)| (i as f64, y)).collect();
        let s: Vec<f64> = moving_average(&p, 3).iter().map(|q| q.1).collect();
        assert_eq!(s, [1.5, 1.5, 3.0, 4.5, 4.5]);
        assert!(moving_average(&[(0.0, f64::NAN)], 3)[0].1.is_nan());
        assert_eq!(window(9), None);
        assert_eq!(window(100), Some(11));
        assert_eq!(window(1_000_000), Some(101));
    }

    #[test]
    fn figures_follow_the_data() {
        let m = parse_metrics("m", b"{\"step\":0,\"loss\":3.0}\n{\"step\":1,\"loss\":2.0}\n").unwrap();
        let names: Vec<&str> = figures(&m).iter().map(|f| f.0).collect();
        assert_eq!(names, ["loss.png"]);
        let m = parse_metrics("m", b"{\"rl_step\":0,\"eval_solve_rate\":0.2}\n").unwrap();
        let names: Vec<&str> = figures(&m).iter().map(|f| f.0).collect();
        assert_eq!(names, ["solve_rate.png"]);
        let line = b"{\"rl_step\":1,\"staleness_mean\":1.5,\"staleness_hist\":[1,2],\"trainer_idle_frac\":0.1}\n";
        let m = parse_metrics("m", line).unwrap();
        let names: Vec<&str> = figures(&m).iter().map(|f| f.0).collect();
        assert_eq!(names, ["async.png"]);
    }
}
