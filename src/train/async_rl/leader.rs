//! The training leader's side of streaming rollout: assemble step s's batch from the pieces,
//! check every sample's staleness and every weight install's checksum, record the install
//! schedule, and turn the groups into [`Rollouts`] (group advantages on whole groups).

use super::pieces::{Assembler, Install};
use super::schedule;
use crate::error::{Error, Result};
use crate::parallel::Comm;
use crate::rl::AdvantageKind;
use crate::tasks::{Task, SPLIT_TRAIN};
use crate::tokenizer::TextCodec;
use crate::train::rl::report::StreamNotes;
use crate::train::rl::rollouts::problem;
use crate::train::rl::sampler::group_rollouts;
use crate::train::rl::Rollouts;
use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

/// The leader's state in the streaming modes.
pub(super) struct StreamLeader<'g> {
    pub assembler: Assembler,
    pub task: &'g dyn Task,
    /// How prompts are encoded (the groups' prompt ids).
    pub codec: &'g TextCodec,
    pub kind: AdvantageKind,
    pub filter_zero_std: bool,
    pub lag: u64,
    pub first: u64,
    /// Where the install schedule is recorded (continuous mode, not when replaying).
    pub schedule: Option<Box<dyn Write>>,
}

/// A batch ready to train: its rollouts, generation span, oldest start version and notes.
pub(super) struct StreamBatch {
    pub rollouts: Rollouts,
    pub gen_s: f64,
    pub oldest: u64,
    pub staleness_mean: f64,
    pub notes: StreamNotes,
}

impl StreamLeader<'_> {
    /// Receive batch `step` from the rollout ranks on `comm`; `published`: the checksum of every
    /// policy version published so far.
    pub fn receive(&mut self, comm: &dyn Comm, step: u64, published: &HashMap<u64, u64>) -> Result<StreamBatch> {
        let batch = self.assembler.receive(comm, step)?;
        let t = Instant::now();
        let installs = self.assembler.take_installs();
        check_installs(&installs, published)?;
        if let Some(out) = self.schedule.as_mut() {
            schedule::append(out.as_mut(), &installs)?;
        }
        let mut hist = vec![0u64; self.lag as usize + 1];
        let (mut oldest, mut mixed, mut sum) = (step, 0usize, 0.0f64);
        for s in &batch.samples {
            let v = s.start_version;
            let stale = step.checked_sub(v).filter(|&d| d <= self.lag && v >= self.first);
            let Some(stale) = stale else {
                return Err(Error::Invalid(format!(
                    "async batch {step}: prompt {} sample {} started with policy version {v}, outside the staleness bound [{}, {step}] (⌈α⌉ = {})",
                    s.completion.prompt_id,
                    s.completion.sample_index,
                    step.saturating_sub(self.lag).max(self.first),
                    self.lag
                )));
            };
            hist[stale as usize] += 1;
            oldest = oldest.min(v);
            mixed += usize::from(s.end_version != v);
            sum += stale as f64;
        }
        let count = batch.samples.len().max(1) as f64;
        let a = &self.assembler;
        let prompts = (0..a.prompts as u64)
            .map(|p| problem(self.task, self.codec, SPLIT_TRAIN, step * a.prompts as u64 + p).map(|x| x.0))
            .collect::<Result<Vec<_>>>()?;
        let rewards: Vec<f32> = batch.samples.iter().map(|s| s.reward).collect();
        let versions: Vec<u64> = batch.samples.iter().map(|s| s.start_version).collect();
        let completions = batch.samples.into_iter().map(|s| s.completion).collect();
        let mut rollouts = group_rollouts(&prompts, completions, &rewards, a.n, self.kind, self.filter_zero_std)?;
        // (one generated sample per completion, in order) each keeps the version it started under
        for (g, v) in rollouts.generated.iter_mut().zip(versions) {
            g.policy_version = Some(v);
        }
        rollouts.notes.time_reward_s = Some(t.elapsed().as_secs_f64());
        let notes = StreamNotes {
            staleness_hist: hist,
            rollout_slot_util: batch.slot_util,
            reward_queue_s: batch.queue_s,
            mixed_version_frac: mixed as f64 / count,
        };
        Ok(StreamBatch { rollouts, gen_s: batch.gen_s, oldest, staleness_mean: sum / count, notes })
    }
}

/// Every install a rollout rank reports must be of weights the trainer published.
fn check_installs(installs: &[(usize, Install)], published: &HashMap<u64, u64>) -> Result<()> {
    for &(rank, x) in installs {
        if published.get(&x.version) != Some(&x.sum) {
            return Err(Error::collective(
                rank,
                "async weights",
                format!(
                    "installed policy version {} with weights checksum {:016x}, which the trainer did not publish",
                    x.version, x.sum
                ),
            ));
        }
    }
    Ok(())
}
