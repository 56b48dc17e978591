//! A progress bar for the training loops (indicatif), drawn on stderr only when stderr is a
//! terminal; log lines go through [`Progress::say`] so they never tear the bar. In CI, tests and
//! redirected runs the bar is hidden and only the log lines appear, with the time left
//! ([`Progress::eta_note`]) for a Slurm log's reader.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bar over `total` steps with a message of key numbers.
pub struct Progress {
    bar: ProgressBar,
    total: u64,
    /// When and at which step the first [`Progress::set`] came (the rate is measured from there,
    /// so neither the setup nor the steps a resume skipped count).
    first: Mutex<Option<(Instant, u64)>>,
}

impl Progress {
    /// A bar labelled `prefix`; hidden unless stderr is a terminal.
    pub fn new(total: u64, prefix: &str) -> Self {
        let target =
            if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}  {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(prefix.to_string());
        Progress { bar, total, first: Mutex::new(None) }
    }

    /// Move to step `pos` with `msg` (e.g. "reward 0.31  len 24.8").
    pub fn set(&self, pos: u64, msg: String) {
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert((Instant::now(), pos));
        }
        self.bar.set_position(pos);
        self.bar.set_message(msg);
    }

    /// `"  eta 1h 02m"`: the steps left at the mean rate since the first [`Progress::set`]; empty
    /// before a second step or after the last.
    pub fn eta_note(&self) -> String {
        let pos = self.bar.position();
        let Some((t0, p0)) = self.first.lock().ok().and_then(|f| *f) else { return String::new() };
        match eta(t0.elapsed(), pos.saturating_sub(p0), self.total.saturating_sub(pos)) {
            Some(left) => format!("  eta {}", human_duration(left)),
            None => String::new(),
        }
    }

    /// Write one log line without tearing the bar.
    pub fn say(&self, log: &mut dyn Write, line: &str) {
        self.bar.suspend(|| {
            let _ = writeln!(log, "{line}");
        });
    }

    /// Remove the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The time `left` steps take at the rate of `done` steps in `elapsed` (none without a step done,
/// or with none left).
fn eta(elapsed: Duration, done: u64, left: u64) -> Option<Duration> {
    (done > 0 && left > 0).then(|| elapsed.mul_f64(left as f64 / done as f64))
}

/// `d` as a person writes it: `45s`, `3m 20s`, `1h 02m`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_is_the_steps_left_at_the_rate_so_far() {
        assert_eq!(eta(Duration::from_secs(10), 5, 20), Some(Duration::from_secs(40)));
        assert_eq!(eta(Duration::from_secs(10), 0, 20), None, "no step measured yet");
        assert_eq!(eta(Duration::from_secs(10), 5, 0), None, "done");
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(200)), "3m 20s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h 02m");
        let p = Progress::new(10, "t");
        assert_eq!(p.eta_note(), "");
        p.set(3, String::new());
        assert_eq!(p.eta_note(), "", "one position: no rate yet");
        std::thread::sleep(Duration::from_millis(20));
        p.set(5, String::new());
        let note = p.eta_note();
        assert!(note.starts_with("  eta ") && note.ends_with('s'), "{note}");
        p.set(10, String::new());
        assert_eq!(p.eta_note(), "");
    }
}
