//! A progress bar for the training loops (indicatif), drawn on stderr only when stderr is a
//! terminal; log lines go through [`Progress::say`] so they never tear the bar. In CI, tests and
//! redirected runs the bar is hidden and only the log lines appear.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};

/// A bar over `total` steps with a message of key numbers.
pub struct Progress {
    bar: ProgressBar,
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
        Progress { bar }
    }

    /// Move to step `pos` with `msg` (e.g. "reward 0.31  len 24.8").
    pub fn set(&self, pos: u64, msg: String) {
        self.bar.set_position(pos);
        self.bar.set_message(msg);
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
