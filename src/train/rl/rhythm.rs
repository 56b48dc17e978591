//! Attention-rhythm credit (ROLL, ALGORITHMS.md §7) applied to a step's training sequences: one
//! statistics pass (look-back → local/global heads, WAAD, FAI on the configured layers), then
//! per-token γ from the configured scheme, and Ã_t = γ_t·A_t (detached).

use super::{Rollouts, Sample};
use crate::attention::stats::{default_rhythm_layers, SeqSteps, StatsConfig};
use crate::attnrl::{batch_thresholds, rhythm_marks, shape_advantages, RhythmConfig};
use crate::error::{Error, Result};
use crate::model::micro_batch::MicroBatch;
use crate::model::{Model, Workspace};
use crate::parallel::Comm;
use crate::train::engine::Engine;

/// WAAD and FAI of every response token of one sample.
pub type TokenRhythm = (Vec<f32>, Vec<f32>);

/// Every rank's rows, in rank order (a rank with none still takes part): each row is sent as its
/// length (u32) and its values (f32), little-endian.
fn gather_rows(dp: &dyn Comm, rows: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
    let mut bytes = Vec::new();
    for r in rows {
        bytes.extend((r.len() as u32).to_le_bytes());
        bytes.extend(r.iter().flat_map(|v| v.to_le_bytes()));
    }
    let mut out = Vec::new();
    for (rank, b) in dp.all_gather_bytes(&bytes)?.iter().enumerate() {
        let bad = || Error::collective(rank, "rhythm WAAD all-gather", format!("{} bytes of malformed rows", b.len()));
        let mut at = 0;
        while at < b.len() {
            let n = b.get(at..at + 4).ok_or_else(bad)?;
            let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
            let vals = b.get(at + 4..at + 4 + 4 * n).ok_or_else(bad)?;
            out.push(vals.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
            at += 4 + 4 * n;
        }
    }
    Ok(out)
}

/// Shape the advantages of `train` in place; returns the fraction of tokens amplified (γ > 1)
/// over the whole batch and each sample's WAAD and FAI. The statistics pass runs on at most
/// `micro` at a time (`rl.micro_batch`, `rl.micro_batch_tokens`). The thresholds τ left to the batch are
/// the medians over the step's whole batch: with `dp`, every data-parallel rank's share (each rank
/// calls this, with or without samples), so the shaping does not depend on the world size.
pub fn shape(
    engine: &mut Engine,
    model: &Model,
    ws: &mut Workspace,
    (rc, micro): (&RhythmConfig, MicroBatch),
    train: &mut [Sample],
    dp: Option<&dyn Comm>,
) -> Result<(f64, Vec<TokenRhythm>)> {
    let dp = dp.filter(|d| d.size() > 1);
    let gather = dp.filter(|_| rc.tau_waad.is_none() || rc.tau_delta.is_none());
    if train.is_empty() && dp.is_none() {
        return Ok((0.0, Vec::new()));
    }
    let seqs: Vec<(Vec<u32>, SeqSteps)> = train
        .iter()
        .map(|s| {
            let seq: Vec<u32> = s.prompt.iter().chain(&s.response).copied().collect();
            (seq, SeqSteps { bounds: Vec::new(), response_start: s.prompt.len(), end_of_thinking: None })
        })
        .collect();
    let cfg = StatsConfig {
        fci: false,
        rhythm: true,
        rhythm_layers: default_rhythm_layers(model.cfg.num_layers, rc.layers),
        window: rc.waad_window,
        h_lo: rc.fai_min_offset,
        h_hi: rc.fai_max_offset,
        local_frac: rc.local_head_frac,
        global_frac: rc.global_head_frac,
        ..StatsConfig::default()
    };
    let stats =
        if seqs.is_empty() { Vec::new() } else { engine.attention_stats_chunked(model, ws, &seqs, &cfg, micro)? };
    let waads: Vec<&[f32]> = stats.iter().map(|s| s.waad.as_slice()).collect();
    let th = match gather {
        Some(d) => {
            let all = gather_rows(d, &waads)?;
            batch_thresholds(&all.iter().map(Vec::as_slice).collect::<Vec<_>>(), rc)?
        }
        None => batch_thresholds(&waads, rc)?,
    };
    let (mut amplified, mut total) = (0usize, 0usize);
    for (s, st) in train.iter_mut().zip(&stats) {
        let marks = rhythm_marks(&st.waad, &st.fai, rc, th)?;
        amplified += marks.gamma.iter().filter(|&&g| g > 1.0).count();
        total += marks.gamma.len();
        s.advantages = shape_advantages(&marks.gamma, &s.advantages)?;
    }
    // the fraction over the whole batch's tokens
    let mut counts = [amplified as f64, total as f64];
    if let Some(d) = dp {
        d.all_reduce_sum_f64(&mut counts)?;
    }
    let frac = if counts[1] > 0.0 { counts[0] / counts[1] } else { 0.0 };
    Ok((frac, stats.into_iter().map(|st| (st.waad, st.fai)).collect()))
}

/// [`shape`] on a step's training batch (`dp`: the ranks that share it); the statistics and the
/// shaped advantages also go into the dump with each generated sample. Returns the fraction of
/// tokens amplified.
pub fn shape_rollouts(
    engine: &mut Engine,
    model: &Model,
    ws: &mut Workspace,
    rc: (&RhythmConfig, MicroBatch),
    rollouts: &mut Rollouts,
    dp: Option<&dyn Comm>,
) -> Result<f64> {
    let (shaped, marks) = shape(engine, model, ws, rc, &mut rollouts.batch.samples, dp)?;
    let batch = &rollouts.batch;
    for ((i, (waad, fai)), s) in batch.generated_index.iter().zip(marks).zip(&batch.samples) {
        if let Some(g) = i.and_then(|i| rollouts.generated.get_mut(i)) {
            (g.trace.waad, g.trace.fai) = (waad, fai);
            g.data.advantages.clone_from(&s.advantages);
        }
    }
    Ok(shaped)
}
