//! What the multi-run experiments (`arbor experiment compare`, `seeds`, `sweep`) share: their runs
//! survive a preemption as `arbor train` does. `--time-limit` and the preemption signals (SIGUSR1,
//! SIGTERM) stop the run in progress at its next step end, checkpointed (exit status 75); the same
//! command with `--resume` continues the experiment in place: a finished run is kept, a run with a
//! checkpoint continues from its newest intact one, the others start. A summary is written from
//! the runs' own records (`metrics.jsonl`, checkpoints), so a resumed experiment's summary is the
//! uninterrupted one's wherever its runs are functions of the seed.

use crate::config::RunConfig;
use crate::train::rl::{PassAtK, SolveRate};
use crate::train::run_dir::numbered;
use anyhow::Context;
use clap::Args;
use std::path::Path;

/// `--resume` and `--time-limit` of an experiment.
#[derive(Debug, Clone, Default, Args)]
pub struct Resumable {
    /// Continue an interrupted experiment in place (a requeued job): a finished run is kept, a run
    /// with a checkpoint continues from its newest intact one (as `arbor train --resume auto`), the
    /// others start. Without it an earlier run of the same name is moved aside.
    #[arg(long)]
    pub resume: bool,
    /// Stop before this much wall time has passed, as at a preemption signal (SIGUSR1, SIGTERM,
    /// which it also catches): the run in progress checkpoints at its next step end and arbor exits
    /// with status 75; the same command with `--resume` continues (see `arbor train --help`).
    #[arg(long, value_name = "DURATION", value_parser = super::train::parse_time_limit)]
    pub time_limit: Option<(std::time::Duration, String)>,
}

impl Resumable {
    /// Catch the preemption signals and start the time limit's clock: once, before the first run.
    pub fn arm(&self) -> anyhow::Result<()> {
        Ok(crate::train::preempt::arm(self.time_limit.as_ref())?)
    }

    /// Run the job of `cfg` to its end (`label` names it on stdout, the job's log goes to `log`),
    /// or under `--resume` keep it when finished or continue it from its newest intact checkpoint.
    /// A stop request ends the run at a step end with `Error::Preempted` (the caller passes it on:
    /// exit status 75).
    pub fn run(&self, cfg: &RunConfig, label: &str, log: &mut dyn std::io::Write) -> anyhow::Result<()> {
        let from = if self.resume { super::train::resume_dir(cfg, Some("auto"), None)? } else { None };
        match &from {
            Some(ck) if finished(ck, cfg) => {
                println!("== {label}: finished ({}), kept", ck.display());
                return Ok(());
            }
            Some(ck) => println!("== {label}: resumed from {}", ck.display()),
            None => println!("== {label}"),
        }
        crate::train::job::run(cfg, from.as_deref(), log)?;
        Ok(())
    }

    /// Keep an earlier experiment's summary files (see [`move_summary_aside`]); a resumed
    /// experiment rewrites its own instead.
    pub fn keep_earlier_summary(&self, dir: &Path, files: &[&str]) -> anyhow::Result<()> {
        if !self.resume {
            if let Some(note) = move_summary_aside(dir, files)? {
                println!("{note}");
            }
        }
        Ok(())
    }
}

/// Whether checkpoint `ck` (`checkpoints/step-N`) ends the run of `cfg`: N is its last step.
pub fn finished(ck: &Path, cfg: &RunConfig) -> bool {
    let total = cfg.train.steps + cfg.rl.as_ref().map_or(0, |r| r.steps);
    let step = ck.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step-")?.parse::<u64>().ok());
    step.is_some_and(|s| s >= total)
}

/// The held-out evaluations (RL step, solve rates) in a run's metrics.jsonl, read as `arbor plot`
/// reads them (pass@k where the line has it, `k` being the run's `rl.eval_samples`).
pub fn evals(metrics: &Path, k: u32) -> anyhow::Result<Vec<(u64, SolveRate)>> {
    let bytes = std::fs::read(metrics).with_context(|| format!("{}", metrics.display()))?;
    let m = super::plot::parse_metrics(&metrics.display().to_string(), &bytes)?;
    Ok(m.rl
        .iter()
        .filter_map(|r| {
            let v = |k: &str| r.values.get(k).copied();
            let pass = v("eval_pass_at_k").map(|rate| PassAtK { k, rate });
            let rate = SolveRate { sampled: v("eval_solve_rate")?, greedy: v("eval_solve_rate_greedy")?, pass };
            Some((r.step as u64, rate))
        })
        .collect())
}

/// A finished run's held-out solve rates before its RL phase and after its last RL step, from its
/// metrics.jsonl (a resume trims the file to its checkpoint, so each step has one line; the last
/// counts anyway); `None` where either is missing. `cfg` is the run's config.
pub fn before_after(run: &Path, cfg: &RunConfig) -> Option<(SolveRate, SolveRate)> {
    let rl = cfg.rl.as_ref()?;
    let found = evals(&run.join("metrics.jsonl"), rl.eval_samples).ok()?;
    let rl_steps = rl.steps;
    let rate = |step: u64| found.iter().rfind(|e| e.0 == step).map(|e| e.1);
    Some((rate(0)?, rate(rl_steps)?))
}

/// Keep an earlier experiment's summary in `dir`: `files` (the summary first, then the figures it
/// links) that exist are moved aside together to `<stem>.N.<ext>` for the first N ≥ 1 free for all
/// of them, and the moved summary's links to the figures follow them. As a fresh run moves an
/// earlier run's directory aside (`train::run_dir`), nothing an earlier experiment wrote is
/// overwritten. Returns a line for the log when something was moved.
pub fn move_summary_aside(dir: &Path, files: &[&str]) -> anyhow::Result<Option<String>> {
    let present: Vec<&str> = files.iter().copied().filter(|f| dir.join(f).exists()).collect();
    if present.is_empty() {
        return Ok(None);
    }
    let free = |i: u64| files.iter().all(|f| !dir.join(numbered(f, i)).exists());
    let i = (1u64..).find(|&i| free(i)).expect("an unbounded range has a free number");
    let summary = files[0];
    for f in &present {
        let (from, to) = (dir.join(f), dir.join(numbered(f, i)));
        std::fs::rename(&from, &to).with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    }
    if present.contains(&summary) && files.len() > 1 {
        let path = dir.join(numbered(summary, i));
        if let Ok(text) = std::fs::read_to_string(&path) {
            let relinked = files[1..]
                .iter()
                .fold(text.clone(), |t, f| t.replace(&format!("]({f})"), &format!("]({})", numbered(f, i))));
            if relinked != text {
                crate::io::atomic::write_atomic(&path, relinked.as_bytes())?;
            }
        }
    }
    Ok(Some(format!(
        "{} held an earlier experiment's {}: moved to {}",
        dir.display(),
        present.join(", "),
        present.iter().map(|f| numbered(f, i)).collect::<Vec<_>>().join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_finished_at_its_last_step_only() {
        let mut cfg = RunConfig::load_or_default(None).unwrap();
        cfg.train.steps = 3;
        cfg.rl.as_mut().expect("the default job has an [rl] phase").steps = 5;
        let ck = |s: &str| std::path::PathBuf::from("runs/x/checkpoints").join(s);
        assert!(finished(&ck("step-8"), &cfg));
        assert!(!finished(&ck("step-7"), &cfg));
        assert!(!finished(&ck("step-x"), &cfg), "not a step directory");
        cfg.rl = None;
        assert!(finished(&ck("step-3"), &cfg));
    }

    #[test]
    fn before_after_takes_the_last_line_of_each_evaluation_step() {
        let dir = tempfile::tempdir().unwrap();
        let line = |step: u64, s: f64| {
            format!(
                "{{\"eval_pass_at_k\":{},\"eval_solve_rate\":{s},\"eval_solve_rate_greedy\":{},\"rl_step\":{step}}}\n",
                s + 0.125,
                s / 2.0
            )
        };
        // step 2 logged twice: the later line counts; an evaluation without pass@k has none
        let text = [line(0, 0.25), line(2, 0.5), line(2, 0.75)].concat()
            + "{\"eval_solve_rate\":0.5,\"eval_solve_rate_greedy\":0.5,\"rl_step\":3}\n";
        std::fs::write(dir.path().join("metrics.jsonl"), text).unwrap();
        let mut cfg = RunConfig::load_or_default(None).unwrap();
        let rl = cfg.rl.as_mut().expect("the default job has an [rl] phase");
        (rl.steps, rl.eval_samples) = (2, 3);
        let (b, a) = before_after(dir.path(), &cfg).expect("both evaluations");
        let pass = |rate| Some(PassAtK { k: 3, rate });
        assert_eq!((b.sampled, b.greedy, b.pass), (0.25, 0.125, pass(0.375)));
        assert_eq!((a.sampled, a.greedy, a.pass), (0.75, 0.375, pass(0.875)));
        let steps = |n: u64| {
            let mut c = cfg.clone();
            c.rl.as_mut().unwrap().steps = n;
            c
        };
        assert_eq!(before_after(dir.path(), &steps(3)).map(|(_, a)| a.pass), Some(None));
        assert!(before_after(dir.path(), &steps(4)).is_none(), "no evaluation after step 4");
        assert!(before_after(&dir.path().join("absent"), &cfg).is_none());
    }
}
