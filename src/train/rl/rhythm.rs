//! Attention-rhythm credit (ROLL, ALGORITHMS.md §7) applied to a step's training sequences: one
//! statistics pass (look-back → local/global heads, WAAD, FAI on the configured layers), then
//! per-token γ from the configured scheme, and Ã_t = γ_t·A_t (detached).

use super::{Rollouts, Sample};
use crate::attention::stats::{default_rhythm_layers, SeqSteps, StatsConfig};
use crate::attnrl::{batch_thresholds, rhythm_marks, shape_advantages, RhythmConfig};
use crate::error::Result;
use crate::model::{Model, Workspace};
use crate::train::engine::Engine;

/// WAAD and FAI of every response token of one sample.
pub type TokenRhythm = (Vec<f32>, Vec<f32>);

/// Shape the advantages of `train` in place; returns the fraction of tokens amplified (γ > 1)
/// and each sample's WAAD and FAI. The statistics pass runs on at most `micro` samples at a time
/// (`rl.micro_batch`; 0: all).
pub fn shape(
    engine: &mut Engine,
    model: &Model,
    ws: &mut Workspace,
    (rc, micro): (&RhythmConfig, usize),
    train: &mut [Sample],
) -> Result<(f64, Vec<TokenRhythm>)> {
    if train.is_empty() {
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
    let stats = engine.attention_stats_chunked(model, ws, &seqs, &cfg, micro)?;
    let waads: Vec<&[f32]> = stats.iter().map(|s| s.waad.as_slice()).collect();
    let th = batch_thresholds(&waads, rc)?;
    let (mut amplified, mut total) = (0usize, 0usize);
    for (s, st) in train.iter_mut().zip(&stats) {
        let marks = rhythm_marks(&st.waad, &st.fai, rc, th)?;
        amplified += marks.gamma.iter().filter(|&&g| g > 1.0).count();
        total += marks.gamma.len();
        s.advantages = shape_advantages(&marks.gamma, &s.advantages)?;
    }
    let frac = if total > 0 { amplified as f64 / total as f64 } else { 0.0 };
    Ok((frac, stats.into_iter().map(|st| (st.waad, st.fai)).collect()))
}

/// [`shape`] on a step's training batch; the statistics and the shaped advantages also go into
/// the dump with each generated sample. Returns the fraction of tokens amplified.
pub fn shape_rollouts(
    engine: &mut Engine,
    model: &Model,
    ws: &mut Workspace,
    rc: (&RhythmConfig, usize),
    rollouts: &mut Rollouts,
) -> Result<f64> {
    let (shaped, marks) = shape(engine, model, ws, rc, &mut rollouts.batch.samples)?;
    let batch = &rollouts.batch;
    for ((i, (waad, fai)), s) in batch.generated_index.iter().zip(marks).zip(&batch.samples) {
        if let Some(g) = i.and_then(|i| rollouts.generated.get_mut(i)) {
            (g.trace.waad, g.trace.fai) = (waad, fai);
            g.data.advantages.clone_from(&s.advantages);
        }
    }
    Ok(shaped)
}
