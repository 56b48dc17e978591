//! Format-independent reading helpers: how many samples of a dump are complete given the dataset lengths
//! found on disk, and the per-step statistics of a [`TrajectorySummary`].

use super::{DatasetInfo, StepStats, TrajectorySummary};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Number of complete samples given the lengths found on disk: the largest `n` such that every per-sample
/// column has `n` entries, the offsets `n + 1`, and the flat arrays reach `offsets[n]`. Also checks that the
/// offsets used start at 0 and never decrease. `what` names the file in errors.
#[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
pub(super) fn complete_samples(
    what: &Path,
    per_sample_lens: &[usize],
    prompt_offsets: &[u64],
    response_offsets: &[u64],
    prompt_flat_len: usize,
    response_flat_len: usize,
) -> Result<usize> {
    let mut n = per_sample_lens.iter().copied().min().unwrap_or(0);
    for (name, offs) in [("prompt_offsets", prompt_offsets), ("response_offsets", response_offsets)] {
        if offs.first() != Some(&0) {
            return Err(Error::format(what, format!("dataset `{name}` must start with 0")));
        }
        n = n.min(offs.len() - 1);
    }
    for (name, offs) in [("prompt_offsets", prompt_offsets), ("response_offsets", response_offsets)] {
        if let Some(i) = offs[..=n].windows(2).position(|w| w[1] < w[0]) {
            let msg = format!("dataset `{name}` decreases at index {} ({} -> {})", i + 1, offs[i], offs[i + 1]);
            return Err(Error::format(what, msg));
        }
    }
    while n > 0 && (prompt_offsets[n] > prompt_flat_len as u64 || response_offsets[n] > response_flat_len as u64) {
        n -= 1;
    }
    Ok(n)
}

/// The per-sample columns a summary is computed from (n samples; offsets have n + 1 entries).
#[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
pub(super) struct SampleColumns<'a> {
    pub(super) step: &'a [u64],
    pub(super) policy_version: &'a [u64],
    pub(super) reward: &'a [f32],
    pub(super) prompt_offsets: &'a [u64],
    pub(super) response_offsets: &'a [u64],
}

/// Per-step and overall statistics from the per-sample columns.
#[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
pub(super) fn summarise(
    path: &Path,
    format_version: i64,
    arbor_version: String,
    attributes: BTreeMap<String, String>,
    columns: SampleColumns<'_>,
    incomplete_rows: u64,
    datasets: Vec<DatasetInfo>,
) -> TrajectorySummary {
    let SampleColumns { step, policy_version, reward, prompt_offsets, response_offsets } = columns;
    let n = step.len();
    let resp_len = |i: usize| response_offsets[i + 1] - response_offsets[i];
    // step -> (samples, reward sum, response token sum)
    let mut per_step: BTreeMap<u64, (u64, f64, u64)> = BTreeMap::new();
    for i in 0..n {
        let e = per_step.entry(step[i]).or_default();
        e.0 += 1;
        e.1 += reward[i] as f64;
        e.2 += resp_len(i);
    }
    let steps = per_step
        .into_iter()
        .map(|(step, (samples, rsum, lsum))| StepStats {
            step,
            samples,
            reward_mean: rsum / samples as f64,
            response_len_mean: lsum as f64 / samples as f64,
        })
        .collect();
    let policy_versions = policy_version.iter().min().zip(policy_version.iter().max()).map(|(a, b)| (*a, *b));
    let response_tokens = response_offsets[n];
    TrajectorySummary {
        path: path.to_path_buf(),
        format_version,
        arbor_version,
        attributes,
        samples: n as u64,
        incomplete_rows,
        steps,
        policy_versions,
        reward_mean: (n > 0).then(|| reward.iter().map(|&r| r as f64).sum::<f64>() / n as f64),
        response_len_mean: (n > 0).then(|| response_tokens as f64 / n as f64),
        response_len_max: (0..n).map(resp_len).max().unwrap_or(0),
        prompt_tokens: prompt_offsets[n],
        response_tokens,
        datasets,
    }
}
