//! Opt-in GPU timing per operation, for benchmarks (`arbor bench gpu --profile`): while on, every
//! kernel launch and cuBLAS product on the device's stream is bracketed by two CUDA events, and
//! `Gpu::profile_report` reads them back as the GPU time of each operation summed by name (a
//! kernel's entry; a product's dtype and weight shape, which names the projection), with the span
//! from the first event to the last. Their difference is time the GPU spent idle between
//! operations: launch overhead and host work. Events are not recorded inside a CUDA graph capture.
//! Timing changes what it times a little (two event records per operation), so benchmarks report
//! their figures from unprofiled steps and the profile from extra ones.

use crate::cuda::device::{drv, Gpu, Profile};
use crate::error::Result;
use std::sync::atomic::Ordering;

/// One operation's total: its name, how many times it ran and its GPU time.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRow {
    pub name: String,
    pub calls: usize,
    pub ms: f64,
}

/// A profile read back: the rows by time (largest first), their sum, and the span from the first
/// operation's start to the last one's end.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileReport {
    pub rows: Vec<ProfileRow>,
    pub busy_ms: f64,
    pub span_ms: f64,
}

impl ProfileReport {
    /// The report as JSON: the span, the busy time, and the `top` largest rows.
    pub fn to_json(&self, top: usize) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .take(top)
            .map(|r| serde_json::json!({ "name": r.name, "calls": r.calls, "ms": r.ms }))
            .collect();
        serde_json::json!({ "span_ms": self.span_ms, "busy_ms": self.busy_ms, "top": rows })
    }
}

/// Sum timed operations by name; rows by time, largest first (then by name).
pub fn summarize(ops: impl IntoIterator<Item = (String, f64)>) -> Vec<ProfileRow> {
    let mut by: std::collections::HashMap<String, (usize, f64)> = std::collections::HashMap::new();
    for (name, ms) in ops {
        let e = by.entry(name).or_default();
        e.0 += 1;
        e.1 += ms;
    }
    let mut rows: Vec<ProfileRow> = by.into_iter().map(|(name, (calls, ms))| ProfileRow { name, calls, ms }).collect();
    rows.sort_by(|a, b| b.ms.total_cmp(&a.ms).then_with(|| a.name.cmp(&b.name)));
    rows
}

/// Operation timing (`cuda::profile`).
impl Gpu {
    /// Start (dropping any earlier record) or stop timing operations.
    pub fn set_profiling(&self, on: bool) {
        *self.profile.lock().unwrap_or_else(|p| p.into_inner()) = on.then(Profile::default);
        self.profiling.store(on, Ordering::Relaxed);
    }

    /// Run `op` (one launch or product on the stream), timed under `name()` while profiling is on
    /// and the stream is not being captured.
    pub(crate) fn profiled(&self, name: impl FnOnce() -> String, op: impl FnOnce() -> Result<()>) -> Result<()> {
        if !self.profiling.load(Ordering::Relaxed) {
            return op();
        }
        let mut guard = self.profile.lock().unwrap_or_else(|p| p.into_inner());
        let Some(profile) = guard.as_mut() else {
            drop(guard);
            return op();
        };
        let capturing = self.stream.capture_status().map_err(drv("capture status"))?;
        if capturing != cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            drop(guard);
            return op();
        }
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(timed).map_err(drv("profile event"))?;
        op()?;
        let end = self.stream.record_event(timed).map_err(drv("profile event"))?;
        profile.ops.push((name(), start, end));
        Ok(())
    }

    /// The operations timed since profiling started (waiting for them), then a fresh record.
    pub fn profile_report(&self) -> Result<ProfileReport> {
        let ops = {
            let mut guard = self.profile.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut() {
                Some(p) => std::mem::take(&mut p.ops),
                None => Vec::new(),
            }
        };
        self.sync()?;
        let mut timed = Vec::with_capacity(ops.len());
        for (name, start, end) in &ops {
            timed.push((name.clone(), start.elapsed_ms(end).map_err(drv("profile elapsed"))? as f64));
        }
        let span_ms = match (ops.first(), ops.last()) {
            (Some(first), Some(last)) => first.1.elapsed_ms(&last.2).map_err(drv("profile elapsed"))? as f64,
            _ => 0.0,
        };
        let rows = summarize(timed);
        let busy_ms = rows.iter().map(|r| r.ms).sum();
        Ok(ProfileReport { rows, busy_ms, span_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_summed_by_name_largest_first() {
        let ops = [("gemm a", 1.0), ("rmsnorm", 0.25), ("gemm a", 2.0), ("swiglu", 0.25), ("attn", 0.5)];
        let rows = summarize(ops.iter().map(|&(n, ms)| (n.to_string(), ms)));
        let got: Vec<(&str, usize, f64)> = rows.iter().map(|r| (r.name.as_str(), r.calls, r.ms)).collect();
        assert_eq!(got, [("gemm a", 2, 3.0), ("attn", 1, 0.5), ("rmsnorm", 1, 0.25), ("swiglu", 1, 0.25)]);
        let report = ProfileReport { busy_ms: 4.0, span_ms: 5.0, rows };
        let j = report.to_json(2);
        assert_eq!(j["top"].as_array().unwrap().len(), 2);
        assert_eq!(j["top"][0]["calls"], 2);
        assert_eq!(j["span_ms"], 5.0);
    }
}
