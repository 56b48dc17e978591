//! Training-time guard against non-finite numbers: a step whose loss or gradient norm is NaN or
//! infinite has its update skipped (the optimizer refuses a non-finite gradient norm, see
//! [`crate::train::clip_and_step`]), is counted in metrics.jsonl (`skipped_updates`), and the run
//! stops with an error after more than `[train] max_nonfinite_steps` such steps in a row. So a
//! diverged run never writes a checkpoint of NaN weights, and never ends "successfully".

use crate::error::{Error, Result};

/// Counts consecutive steps whose update was skipped for a non-finite loss or gradient norm.
#[derive(Debug, Clone)]
pub struct NonFiniteGuard {
    limit: u64,
    in_a_row: u64,
}

impl NonFiniteGuard {
    /// A guard tolerating up to `limit` bad steps in a row (0: the first stops the run).
    pub fn new(limit: u64) -> Self {
        NonFiniteGuard { limit, in_a_row: 0 }
    }

    /// A guard resumed from a checkpoint written after `in_a_row` bad steps in a row.
    pub fn resumed(limit: u64, in_a_row: u64) -> Self {
        NonFiniteGuard { limit, in_a_row }
    }

    /// Bad steps in a row so far (what a checkpoint records).
    pub fn in_a_row(&self) -> u64 {
        self.in_a_row
    }

    /// Whether a step with this loss and pre-clip gradient norm had its update skipped.
    pub fn is_bad(loss: f64, grad_norm: f64) -> bool {
        !(loss.is_finite() && grad_norm.is_finite())
    }

    /// Record `step` (1-based, for the message) of `phase`; `skipped` updates of the step were
    /// non-finite. Errors once more than `limit` steps in a row had one.
    pub fn record(&mut self, phase: &str, step: u64, skipped: usize, loss: f64, grad_norm: f64) -> Result<()> {
        if skipped == 0 {
            self.in_a_row = 0;
            return Ok(());
        }
        self.in_a_row += 1;
        if self.in_a_row > self.limit {
            return Err(Error::Invalid(format!(
                "{phase} step {step}: loss {loss} / gradient norm {grad_norm} is not finite for the {} step in a \
                 row (train.max_nonfinite_steps = {}); the run stops before writing diverged weights: the last \
                 checkpoint holds the weights before the first skipped update (try a lower lr or grad_clip)",
                ordinal(self.in_a_row),
                self.limit
            )));
        }
        Ok(())
    }
}

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, r) if r != 11 => "st",
        (2, r) if r != 12 => "nd",
        (3, r) if r != 13 => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_the_limit_in_a_row_and_resets_on_a_good_step() {
        let mut g = NonFiniteGuard::new(2);
        assert!(NonFiniteGuard::is_bad(f64::NAN, 1.0) && NonFiniteGuard::is_bad(1.0, f64::INFINITY));
        assert!(!NonFiniteGuard::is_bad(1.0, 1.0));
        g.record("rl", 1, 1, f64::NAN, f64::NAN).unwrap();
        g.record("rl", 2, 1, f64::NAN, f64::NAN).unwrap();
        g.record("rl", 3, 0, 0.5, 1.0).unwrap();
        g.record("rl", 4, 2, f64::NAN, f64::NAN).unwrap();
        g.record("rl", 5, 1, f64::NAN, f64::NAN).unwrap();
        let e = g.record("rl", 6, 1, f64::NAN, f64::NAN).unwrap_err().to_string();
        assert!(e.contains("rl step 6") && e.contains("3rd") && e.contains("max_nonfinite_steps = 2"), "{e}");
        let mut strict = NonFiniteGuard::new(0);
        assert!(strict.record("sft", 1, 1, f64::INFINITY, 2.0).is_err());
    }
}
