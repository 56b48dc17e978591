//! Learning-rate schedules (`[train] schedule`, `[rl] schedule`): constant, or linear warmup then
//! constant / linear decay / cosine decay.

use serde::{Deserialize, Serialize};

/// Shape of the learning rate after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// lr stays at its peak.
    Constant,
    /// Linear decay from the peak to min_lr at `total_steps`.
    Linear,
    /// Half-cosine decay from the peak to min_lr at `total_steps`.
    Cosine,
}

/// lr(step) = peak·(step+1)/warmup during warmup, then the decay of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub peak_lr: f32,
    #[serde(default)]
    pub min_lr: f32,
    #[serde(default)]
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// A constant schedule without warmup.
    pub fn constant(lr: f32) -> Self {
        LrSchedule { kind: ScheduleKind::Constant, peak_lr: lr, min_lr: lr, warmup_steps: 0, total_steps: 1 }
    }

    /// Learning rate for a 0-based step.
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let (lo, hi) = (self.min_lr as f64, self.peak_lr as f64);
        let lr = match self.kind {
            ScheduleKind::Constant => hi,
            ScheduleKind::Linear => hi + (lo - hi) * progress,
            ScheduleKind::Cosine => lo + 0.5 * (hi - lo) * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        lr as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_shapes() {
        let s = LrSchedule { kind: ScheduleKind::Cosine, peak_lr: 1.0, min_lr: 0.1, warmup_steps: 4, total_steps: 104 };
        assert!((s.lr(0) - 0.25).abs() < 1e-6);
        assert!((s.lr(3) - 1.0).abs() < 1e-6);
        assert!((s.lr(4) - 1.0).abs() < 1e-6);
        assert!((s.lr(54) - 0.55).abs() < 1e-5, "cosine midpoint {}", s.lr(54));
        assert!((s.lr(104) - 0.1).abs() < 1e-6);
        assert!((s.lr(500) - 0.1).abs() < 1e-6, "clamped after the end");
        let l = LrSchedule { kind: ScheduleKind::Linear, ..s };
        assert!((l.lr(54) - 0.55).abs() < 1e-5);
        assert!((l.lr(29) - 0.775).abs() < 1e-5);
        let c = LrSchedule::constant(3e-4);
        assert_eq!(c.lr(0), 3e-4);
        assert_eq!(c.lr(10_000), 3e-4);
    }
}
