//! `[run] tensorboard = true`: the run's metrics as TensorBoard scalars, beside metrics.jsonl
//! (`tensorboard --logdir runs` shows each run directory as a run).
//!
//! metrics.jsonl stays the record; the event file mirrors it. Every metrics line with a step
//! becomes one event: a supervised line's keys as `sft/<key>` at its `step`, an RL line's as
//! `rl/<key>` at the global step (supervised steps + `rl_step`, so that one axis serves both
//! phases), every number but the step itself (a `null`, a non-finite value, is left out). A job
//! start (fresh or a resume, whose metrics.jsonl was just trimmed to its checkpoint's step) writes
//! a new event file from the lines metrics.jsonl holds, with the wall times the run's earlier
//! event files gave them (now, for lines they lack), and removes those files: the event file says
//! what metrics.jsonl says, whatever a resume or rollback dropped. Its first events are a file
//! version and a session start (TensorBoard drops what it showed of an earlier file of the run
//! when it reads one), and its name sorts after theirs: `events.out.tfevents.<unix seconds>.arbor`.

use crate::error::{Error, Result};
use crate::io::space::SpaceCheckedFile;
use crate::io::tfevents::{read_events, record, Event, What, FILE_VERSION};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const PREFIX: &str = "events.out.tfevents.";
const SUFFIX: &str = ".arbor";

/// The event files arbor wrote into `dir` (its own names only: a file another tool wrote there is
/// left alone), oldest first.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let secs = name.strip_prefix(PREFIX).and_then(|r| r.strip_suffix(SUFFIX));
        if secs.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())) && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The event of one metrics line written at `wall_time` (None for a line with no step: a config
/// change's, or one with nothing to plot).
pub fn line_event(line: &serde_json::Value, sft_steps: u64, wall_time: f64) -> Option<Event> {
    let map = line.as_object()?;
    if map.contains_key("event") {
        return None;
    }
    let (phase, step) = match (map.get("step").and_then(|s| s.as_u64()), map.get("rl_step").and_then(|s| s.as_u64())) {
        (Some(s), _) => ("sft", s),
        (None, Some(r)) => ("rl", sft_steps + r),
        _ => return None,
    };
    let values: Vec<(String, f32)> = map
        .iter()
        .filter(|(k, _)| *k != "step" && *k != "rl_step")
        .filter_map(|(k, v)| v.as_f64().map(|x| (format!("{phase}/{k}"), x as f32)))
        .filter(|(_, x)| x.is_finite())
        .collect();
    let step = i64::try_from(step).ok()?;
    (!values.is_empty()).then_some(Event { wall_time, step, what: What::Scalars(values) })
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The wall time of each line in the run's earlier event files, by its event's first tag and step
/// (a step's supervised line and its evaluation's differ by their first tags). A file that does
/// not parse gives none (the times are all it is read for: the lines come from metrics.jsonl).
fn earlier_wall_times(files: &[PathBuf]) -> Result<HashMap<(String, i64), f64>> {
    let mut times = HashMap::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let events = match read_events(&path.display().to_string(), &bytes) {
            Ok(events) => events,
            Err(e) => {
                eprintln!("warning: {e}; the wall times of its steps are taken as now");
                continue;
            }
        };
        for e in events {
            if let What::Scalars(values) = &e.what {
                if let Some((first, _)) = values.first() {
                    times.entry((first.clone(), e.step)).or_insert(e.wall_time);
                }
            }
        }
    }
    Ok(times)
}

/// The event file's bytes for metrics.jsonl's `lines`: a file version, a session start, then one
/// event per line with its earlier wall time where `times` has it, else `now`.
fn history(
    lines: &[(usize, serde_json::Value)],
    sft_steps: u64,
    times: &HashMap<(String, i64), f64>,
    now: f64,
) -> Vec<u8> {
    let mut out = record(&Event { wall_time: now, step: 0, what: What::FileVersion(FILE_VERSION.into()) }.encode());
    out.extend(record(&Event { wall_time: now, step: 0, what: What::SessionStart }.encode()));
    for (_, line) in lines {
        if let Some(mut e) = line_event(line, sft_steps, now) {
            if let What::Scalars(values) = &e.what {
                e.wall_time = times.get(&(values[0].0.clone(), e.step)).copied().unwrap_or(now);
            }
            out.extend(record(&e.encode()));
        }
    }
    out
}

/// A metrics stream that also writes each line it receives, once the line is complete, as a
/// TensorBoard event.
pub struct Mirror<W: Write> {
    inner: W,
    events: SpaceCheckedFile,
    path: PathBuf,
    sft_steps: u64,
    /// The bytes of a line not yet ended by its newline.
    pending: Vec<u8>,
}

/// Mirror `inner`, the run's open metrics.jsonl (`metrics_path`, whose lines are the run's so far),
/// into a new event file in `run_dir` that starts with those lines (module docs); the run's
/// earlier event files are removed once it is in place.
pub fn mirror<W: Write>(inner: W, run_dir: &Path, metrics_path: &Path, sft_steps: u64) -> Result<Mirror<W>> {
    let bytes = match std::fs::read(metrics_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(Error::io(metrics_path, e)),
    };
    let lines = crate::train::metrics::parse_lines(&metrics_path.display().to_string(), &bytes)?;
    let earlier = event_files(run_dir)?;
    let now = now();
    let bytes = history(&lines, sft_steps, &earlier_wall_times(&earlier)?, now);
    // a name after every earlier one (a second start within the same second included)
    let newest = earlier.last().and_then(|p| {
        let name = p.file_name()?.to_str()?;
        name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.parse::<u64>().ok()
    });
    let secs = newest.map_or(now as u64, |n| (now as u64).max(n + 1));
    let path = run_dir.join(format!("{PREFIX}{secs:010}{SUFFIX}"));
    crate::io::space::ensure_space(run_dir, bytes.len() as u64, "the TensorBoard event file")?;
    crate::io::atomic::write_atomic(&path, &bytes)?;
    for old in earlier {
        std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
    }
    let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
    Ok(Mirror { inner, events: SpaceCheckedFile::new(file, &path), path, sft_steps, pending: Vec::new() })
}

impl<W: Write> Mirror<W> {
    /// The event file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write the events of the complete lines in `pending`.
    fn mirror_complete_lines(&mut self) -> std::io::Result<()> {
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else { return Ok(()) };
        let lines: Vec<u8> = self.pending.drain(..=end).collect();
        let now = now();
        let mut out = Vec::new();
        for line in lines.split(|&b| b == b'\n') {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
            if let Some(e) = line_event(&value, self.sft_steps, now) {
                out.extend(record(&e.encode()));
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        // one write of whole records: a full disk refuses them all
        self.events.write_all(&out).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }
}

impl<W: Write> Write for Mirror<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        self.mirror_complete_lines()?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()?;
        self.events.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tfevents::read_events;
    use serde_json::json;

    fn scalars(e: &Event) -> Vec<(String, f32)> {
        match &e.what {
            What::Scalars(v) => v.clone(),
            w => panic!("not scalars: {w:?}"),
        }
    }

    #[test]
    fn a_line_becomes_one_event_at_its_global_step() {
        let sft = json!({"step": 7, "loss": 1.5, "grad_norm": null, "lr": 0.001, "tokens": 96});
        let e = line_event(&sft, 100, 5.0).unwrap();
        assert_eq!((e.step, e.wall_time), (7, 5.0));
        let tags: Vec<String> = scalars(&e).into_iter().map(|(t, _)| t).collect();
        assert_eq!(tags, ["sft/loss", "sft/lr", "sft/tokens"]);
        let rl = json!({"rl_step": 3, "reward_mean": 0.25, "policy_version": 2});
        let e = line_event(&rl, 100, 5.0).unwrap();
        assert_eq!(e.step, 103);
        assert_eq!(scalars(&e), [("rl/policy_version".to_string(), 2.0), ("rl/reward_mean".to_string(), 0.25)]);
        // no step, a config change's line, nothing to plot
        assert!(line_event(&json!({"loss": 1.0}), 0, 0.0).is_none());
        assert!(line_event(&json!({"step": 2, "event": "config_change", "changes": {}}), 0, 0.0).is_none());
        assert!(line_event(&json!({"rl_step": 2, "note": "text"}), 0, 0.0).is_none());
    }

    #[test]
    fn the_mirror_writes_each_complete_line_and_a_restart_rewrites_the_history() {
        let t = tempfile::tempdir().unwrap();
        let (run, metrics) = (t.path(), t.path().join("metrics.jsonl"));
        let open = || std::fs::OpenOptions::new().create(true).append(true).open(&metrics).unwrap();
        let mut m = mirror(open(), run, &metrics, 2).unwrap();
        let first = m.path().to_path_buf();
        // a line handed over in two pieces becomes one event once its newline arrives
        m.write_all(b"{\"step\":1,\"loss\":2.0}\n{\"step\":2,").unwrap();
        m.write_all(b"\"loss\":1.0}\n{\"rl_step\":1,\"reward_mean\":0.5}\n").unwrap();
        let read = |p: &Path| read_events("e", &std::fs::read(p).unwrap()).unwrap();
        let events = read(&first);
        assert_eq!(events[0].what, What::FileVersion(FILE_VERSION.into()));
        assert_eq!(events[1].what, What::SessionStart);
        let steps: Vec<i64> = events[2..].iter().map(|e| e.step).collect();
        assert_eq!(steps, [1, 2, 3]);
        let times: Vec<f64> = events[2..].iter().map(|e| e.wall_time).collect();
        drop(m);
        // a resume that kept the first two lines: a new file with them, at their first times
        std::fs::write(&metrics, b"{\"step\":1,\"loss\":2.0}\n{\"step\":2,\"loss\":1.0}\n").unwrap();
        let m = mirror(open(), run, &metrics, 2).unwrap();
        assert!(m.path() > first.as_path(), "{:?} sorts before {first:?}", m.path());
        assert_eq!(event_files(run).unwrap(), [m.path().to_path_buf()]);
        let again = read(m.path());
        assert_eq!(again.len(), 4);
        assert_eq!(again[2..].iter().map(|e| e.wall_time).collect::<Vec<_>>(), times[..2]);
        assert_eq!(
            again[2..].iter().map(scalars).collect::<Vec<_>>(),
            [vec![("sft/loss".to_string(), 2.0)], vec![("sft/loss".to_string(), 1.0)]]
        );
        // another tool's event file in the run directory is left alone
        std::fs::write(run.join("events.out.tfevents.123.host"), b"").unwrap();
        let kept = m.path().to_path_buf();
        drop(m);
        let m = mirror(open(), run, &metrics, 2).unwrap();
        assert!(!kept.exists() && run.join("events.out.tfevents.123.host").exists());
        assert_eq!(event_files(run).unwrap(), [m.path().to_path_buf()]);
    }
}
