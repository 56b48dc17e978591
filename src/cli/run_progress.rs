//! A run's progress, for `arbor inspect runs/NAME`: where the run is (phase and step of the
//! total), its last step's figures, its held-out evaluations, its speed and the time left, and
//! how long ago it last wrote a line. Read from the run's `config.toml` and `metrics.jsonl` only
//! (never the weights), so it is cheap to ask on a login node while the run goes on.

use crate::config::RunConfig;
use crate::train::progress::human_duration;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Step lines whose `step_s` the speed is the median of.
const SPEED_WINDOW: usize = 20;

/// What the run's metrics say so far.
#[derive(Debug, Default)]
struct Seen {
    /// The last supervised step line and the last RL step line.
    sft: Option<Value>,
    rl: Option<Value>,
    /// `step_s` of the supervised and of the RL step lines, in order.
    sft_secs: Vec<f64>,
    rl_secs: Vec<f64>,
    /// RL evaluations: (rl_step, sampled, greedy).
    evals: Vec<(u64, f64, f64)>,
    /// Config changes recorded at resumes.
    changes: usize,
}

fn read_metrics(lines: Vec<(usize, Value)>) -> Seen {
    let mut seen = Seen::default();
    for (_, v) in lines {
        let num = |k: &str| v.get(k).and_then(Value::as_f64);
        if v.get("event").is_some() {
            seen.changes += 1;
        } else if v.get("rl_step").is_some() && v.get("reward_mean").is_some() {
            seen.rl_secs.extend(num("step_s"));
            seen.rl = Some(v);
        } else if let (Some(r), Some(s)) = (v.get("rl_step").and_then(Value::as_u64), num("eval_solve_rate")) {
            seen.evals.push((r, s, num("eval_solve_rate_greedy").unwrap_or(f64::NAN)));
        } else if v.get("step").is_some() && v.get("loss").is_some() {
            seen.sft_secs.extend(num("step_s"));
            seen.sft = Some(v);
        }
    }
    seen
}

/// The median of the last [`SPEED_WINDOW`] of `secs`.
fn recent_median(secs: &[f64]) -> Option<f64> {
    let mut last: Vec<f64> =
        secs[secs.len().saturating_sub(SPEED_WINDOW)..].iter().copied().filter(|s| s.is_finite()).collect();
    last.sort_by(f64::total_cmp);
    (!last.is_empty()).then(|| last[last.len() / 2])
}

/// The lines `arbor inspect` prints about the progress of the run in `run` (none where it has no
/// metrics.jsonl), `now` being the time of asking.
pub fn describe(run: &Path, now: SystemTime) -> Vec<String> {
    let metrics_path = run.join("metrics.jsonl");
    let Ok(bytes) = std::fs::read(&metrics_path) else { return Vec::new() };
    // (a last line cut short by a kill, or being written now, is left out)
    let seen = match crate::train::metrics::parse_lines(&metrics_path.display().to_string(), &bytes) {
        Ok(lines) => read_metrics(lines),
        Err(e) => return vec![format!("progress: unknown ({e})")],
    };
    let mut out = Vec::new();
    let cfg = RunConfig::load(&run.join("config.toml"));
    let (sft_total, rl_total) = match &cfg {
        Ok(c) => (c.train.steps, c.rl.as_ref().map_or(0, |r| r.steps)),
        Err(e) => {
            out.push(format!("config.toml: {e} (no totals)"));
            (0, 0)
        }
    };
    let sft_done = seen.sft.as_ref().and_then(|v| v["step"].as_u64()).unwrap_or(0);
    let rl_done = seen.rl.as_ref().and_then(|v| v["rl_step"].as_u64()).unwrap_or(0);
    let in_rl = seen.rl.is_some();
    let (done, total) = (if in_rl { sft_total + rl_done } else { sft_done }, sft_total + rl_total);
    let total_known = cfg.is_ok();
    let phase = match (in_rl, total_known) {
        (true, true) => format!("RL step {rl_done} of {rl_total}"),
        (true, false) => format!("RL step {rl_done}"),
        (false, true) if sft_total == 0 => "the RL phase has not finished a step".to_string(),
        (false, true) => format!(
            "supervised step {sft_done} of {sft_total}{}",
            if rl_total > 0 { format!(", then {rl_total} RL steps") } else { String::new() }
        ),
        (false, false) => format!("supervised step {sft_done}"),
    };
    let finished = total_known && done >= total;
    out.push(match (finished, total_known) {
        (true, _) => format!("progress: done, all {total} steps ({phase})"),
        (false, true) => format!(
            "progress: {phase}; global step {done} of {total} ({:.0} %)",
            100.0 * done as f64 / total.max(1) as f64
        ),
        (false, false) => format!("progress: {phase}"),
    });
    let fig = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    if let Some(v) = &seen.rl {
        let mut parts = Vec::new();
        for (k, name) in
            [("reward_mean", "reward"), ("solve_rate", "solve rate"), ("response_len_mean", "response length")]
        {
            if let Some(x) = fig(v, k) {
                parts.push(format!("{name} {x:.3}"));
            }
        }
        if let Some(x) = fig(v, "loss") {
            parts.push(format!("loss {x:.4}"));
        }
        out.push(format!("last RL step: {}", parts.join(", ")));
    } else if let Some(x) = seen.sft.as_ref().and_then(|v| fig(v, "loss")) {
        out.push(format!("last supervised step: loss {x:.4}"));
    }
    match (seen.evals.first(), seen.evals.last()) {
        (Some(only), _) if seen.evals.len() == 1 => out.push(format!(
            "held-out solve rate (sampled): {:.1}% at RL step {}; greedy {:.1}%",
            100.0 * only.1,
            only.0,
            100.0 * only.2
        )),
        (Some(first), Some(last)) => out.push(format!(
            "held-out solve rate (sampled): {:.1}% at RL step {} → {:.1}% at RL step {}; greedy {:.1}% → {:.1}%",
            100.0 * first.1,
            first.0,
            100.0 * last.1,
            last.0,
            100.0 * first.2,
            100.0 * last.2
        )),
        _ => {}
    }
    let (secs, left) = match in_rl {
        true => (&seen.rl_secs, rl_total.saturating_sub(rl_done)),
        false => (&seen.sft_secs, sft_total.saturating_sub(sft_done)),
    };
    if let Some(med) = recent_median(secs) {
        let eta = match (finished || !total_known, !in_rl && rl_total > 0) {
            (true, _) => String::new(),
            (false, false) => {
                format!("; {} left for {left} steps", human_duration(Duration::from_secs_f64(med * left as f64)))
            }
            (false, true) => format!(
                "; {} left for the supervised phase's {left} steps, then the RL phase",
                human_duration(Duration::from_secs_f64(med * left as f64))
            ),
        };
        out.push(format!("speed: {med:.3} s a step (median of the last {}){eta}", secs.len().min(SPEED_WINDOW)));
    }
    if seen.changes > 0 {
        out.push(format!("config changed at {} resume(s): config-history.jsonl", seen.changes));
    }
    if let Some(age) =
        std::fs::metadata(&metrics_path).and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok())
    {
        out.push(format!("metrics.jsonl last written {} ago", human_duration(age)));
    }
    out
}

/// Whether `dir` is a run's directory (it has metrics or checkpoints; a model directory has a
/// config.json instead).
pub fn is_run_dir(dir: &Path) -> bool {
    let record = dir.join("metrics.jsonl").is_file() || dir.join("checkpoints").is_dir();
    record && !dir.join(crate::io::hf::CONFIG_FILE).is_file()
}

/// The summaries `arbor experiment` writes beside its runs.
const SUMMARIES: [&str; 3] = ["compare.md", "seeds.md", "sweep.md"];

/// The lines `arbor inspect` prints about a directory of runs (an `arbor experiment` directory, or
/// `runs/`): a line per run in name order (its progress, its held-out solve rates, when it last
/// wrote while unfinished), and how many are done. `None` when `dir` holds no run directory.
pub fn describe_runs(dir: &Path, now: SystemTime) -> Option<Vec<String>> {
    let mut runs: Vec<std::path::PathBuf> =
        std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| is_run_dir(p)).collect();
    if runs.is_empty() {
        return None;
    }
    runs.sort();
    let summaries: Vec<&str> = SUMMARIES.into_iter().filter(|f| dir.join(f).is_file()).collect();
    let mut out = vec![format!(
        "{}: {} run(s){}",
        dir.display(),
        runs.len(),
        if summaries.is_empty() { String::new() } else { format!(", summary {}", summaries.join(", ")) }
    )];
    let mut done = 0;
    for run in &runs {
        let lines = describe(run, now);
        let pick = |prefix: &str| lines.iter().find_map(|l| l.strip_prefix(prefix));
        let progress = pick("progress: ").unwrap_or("no step written yet");
        let finished = progress.starts_with("done");
        done += finished as usize;
        let name = run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut line = format!("  {name}: {progress}");
        if let Some(h) = pick("held-out solve rate (sampled): ") {
            line.push_str(&format!("; held-out (sampled) {h}"));
        }
        if let Some(age) = pick("metrics.jsonl last written ").filter(|_| !finished) {
            line.push_str(&format!("; last written {age}"));
        }
        out.push(line);
    }
    out.push(format!(
        "{done} of {} done (a run's checkpoints and details: arbor inspect {}/NAME)",
        runs.len(),
        dir.display()
    ));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir(config: &str, metrics: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.toml"), config).unwrap();
        std::fs::write(d.path().join("metrics.jsonl"), metrics).unwrap();
        d
    }

    fn config(sft: u64, rl: u64) -> String {
        let base = crate::config::ADDITION_CONFIG.replace("steps = 400", &format!("steps = {sft}"));
        if rl == 0 {
            return base;
        }
        format!("{base}\n[rl]\nsteps = {rl}\n")
    }

    #[test]
    fn a_supervised_run_midway_reports_its_step_speed_and_time_left() {
        let mut m = String::new();
        for s in 1..=30u64 {
            // the last 20 steps take 2 s each, the first 10 take 9 s
            let secs = if s <= 10 { 9.0 } else { 2.0 };
            m.push_str(&format!("{{\"step\":{s},\"loss\":{},\"step_s\":{secs}}}\n", 3.0 - s as f64 * 0.01));
        }
        m.push_str("{\"step\":30,\"eval_answer_nll\":1.0}\n{\"step\":31,\"lo");
        let d = run_dir(&config(100, 10), &m);
        let later = SystemTime::now() + Duration::from_secs(125);
        let lines = describe(d.path(), later);
        let text = lines.join("\n");
        assert!(
            text.contains("progress: supervised step 30 of 100, then 10 RL steps; global step 30 of 110 (27 %)"),
            "{text}"
        );
        assert!(text.contains("last supervised step: loss 2.7000"), "{text}");
        // 70 steps left at the median 2 s of the last 20
        assert!(
            text.contains(
                "speed: 2.000 s a step (median of the last 20); 2m 20s left for the supervised phase's 70 steps"
            ),
            "{text}"
        );
        assert!(text.contains("metrics.jsonl last written 2m 0"), "{text}");
        assert!(!text.contains("held-out"), "no RL evaluation yet: {text}");
    }

    #[test]
    fn an_rl_run_reports_its_evaluations_and_a_finished_run_says_so() {
        let mut m = String::from("{\"step\":0,\"eval_answer_nll\":1.0}\n{\"eval_solve_rate\":0.25,\"eval_solve_rate_greedy\":0.5,\"rl_step\":0}\n");
        for r in 1..=4u64 {
            m.push_str(&format!("{{\"rl_step\":{r},\"reward_mean\":0.{r},\"solve_rate\":0.{r},\"response_len_mean\":20.0,\"loss\":0.01,\"step_s\":1.5}}\n"));
        }
        m.push_str("{\"step\":4,\"event\":\"config_change\",\"changes\":{}}\n");
        m.push_str("{\"eval_solve_rate\":0.375,\"eval_solve_rate_greedy\":0.625,\"rl_step\":4}\n");
        let d = run_dir(&config(0, 6), &m);
        let text = describe(d.path(), SystemTime::now()).join("\n");
        assert!(text.contains("progress: RL step 4 of 6; global step 4 of 6 (67 %)"), "{text}");
        assert!(
            text.contains("last RL step: reward 0.400, solve rate 0.400, response length 20.000, loss 0.0100"),
            "{text}"
        );
        assert!(
            text.contains(
                "held-out solve rate (sampled): 25.0% at RL step 0 → 37.5% at RL step 4; greedy 50.0% → 62.5%"
            ),
            "{text}"
        );
        assert!(text.contains("speed: 1.500 s a step (median of the last 4); 3s left for 2 steps"), "{text}");
        assert!(text.contains("config changed at 1 resume(s)"), "{text}");
        let d = run_dir(&config(0, 4), &m);
        let text = describe(d.path(), SystemTime::now()).join("\n");
        assert!(text.contains("progress: done, all 4 steps (RL step 4 of 4)") && !text.contains("left"), "{text}");
        // an unreadable config: the steps without totals
        let d = run_dir("[run]\nname = 3\n", &m);
        let text = describe(d.path(), SystemTime::now()).join("\n");
        assert!(text.contains("config.toml:") && text.contains("progress: RL step 4\n"), "{text}");
        assert!(describe(&d.path().join("nothing"), SystemTime::now()).is_empty());
        let first = m.lines().take(4).collect::<Vec<_>>().join("\n");
        let d = run_dir(&config(0, 6), &first);
        let text = describe(d.path(), SystemTime::now()).join("\n");
        assert!(text.contains("held-out solve rate (sampled): 25.0% at RL step 0; greedy 50.0%\n"), "{text}");
    }

    #[test]
    fn a_directory_of_runs_gets_a_line_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let rl = |r: u64| format!("{{\"rl_step\":{r},\"reward_mean\":0.5,\"step_s\":1.0}}\n");
        let eval =
            |r: u64, s: f64| format!("{{\"eval_solve_rate\":{s},\"eval_solve_rate_greedy\":0.5,\"rl_step\":{r}}}\n");
        let write = |name: &str, metrics: &str| {
            let run = dir.path().join(name);
            std::fs::create_dir_all(&run).unwrap();
            std::fs::write(run.join("config.toml"), config(0, 2)).unwrap();
            std::fs::write(run.join("metrics.jsonl"), metrics).unwrap();
        };
        write("seed2", &[eval(0, 0.25), rl(1)].concat());
        write("seed1", &[eval(0, 0.25), rl(1), rl(2), eval(2, 0.75)].concat());
        // a started run with a checkpoint folder and no metrics yet; a model directory and a summary
        // file, which are not runs
        std::fs::create_dir_all(dir.path().join("seed3/checkpoints")).unwrap();
        std::fs::create_dir_all(dir.path().join("model")).unwrap();
        std::fs::write(dir.path().join("model/config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("model/metrics.jsonl"), "").unwrap();
        std::fs::write(dir.path().join("seeds.md"), "# table\n").unwrap();
        let lines = describe_runs(dir.path(), SystemTime::now()).expect("runs");
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(lines[0].ends_with(": 3 run(s), summary seeds.md"), "{lines:#?}");
        assert_eq!(
            lines[1],
            "  seed1: done, all 2 steps (RL step 2 of 2); held-out (sampled) 25.0% at RL step 0 → 75.0% at RL step 2; greedy 50.0% → 50.0%"
        );
        assert!(lines[2].starts_with("  seed2: RL step 1 of 2; global step 1 of 2 (50 %); held-out (sampled) 25.0% at RL step 0; greedy 50.0%; last written "), "{lines:#?}");
        assert_eq!(lines[3], "  seed3: no step written yet");
        assert!(lines[4].starts_with("1 of 3 done"), "{lines:#?}");
        assert!(describe_runs(&dir.path().join("seed1"), SystemTime::now()).is_none(), "a run holds no runs");
        assert!(describe_runs(&dir.path().join("absent"), SystemTime::now()).is_none());
    }

    #[test]
    fn the_median_is_of_the_recent_steps() {
        assert_eq!(recent_median(&[]), None);
        assert_eq!(recent_median(&[5.0, 1.0, 3.0]), Some(3.0));
    }
}
