//! Streaming rollout's unit of transfer and its assembly on the trainer side.
//!
//! In the streaming modes (`[async] mode = "continuous"` or `replicate = true`) a rollout rank
//! sends a [`Piece`] as soon as its share of one group (one prompt of one batch) is finished and
//! rewarded: the completions, their rewards, and the policy version each sample started with.
//! The training leader buffers pieces by batch and, for step s, assembles batch s from every
//! rank's pieces in prompt and sample order, so the batch (and the run) does not depend on the
//! order in which pieces arrived. Group advantages are computed here, on whole groups, which is
//! what lets a group's samples be generated on several ranks (replication).

use crate::error::{Error, Result};
use crate::parallel::{partition, Comm};
use crate::rollout::{Completion, Finish};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// One finished sample of a streaming rollout rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "WireSample", from = "WireSample")]
pub struct PieceSample {
    pub completion: Completion,
    pub reward: f32,
    /// Policy version in force when the sample was admitted: its staleness is measured from it.
    pub start_version: u64,
    /// Policy version in force when it finished (newer when weights changed mid-sample).
    pub end_version: u64,
    /// Seconds from the sample's completion to its piece being sent (its reward, then waiting
    /// for the rest of the group share on the rank).
    pub queue_s: f64,
}

/// [`PieceSample`] as sent: every f32 as its bit pattern, so training data crosses ranks exactly.
#[derive(Serialize, Deserialize)]
struct WireSample {
    prompt_id: u64,
    sample_index: u32,
    tokens: Vec<u32>,
    logprobs: Vec<u32>,
    entropies: Vec<u32>,
    finish: Finish,
    reward: u32,
    start_version: u64,
    end_version: u64,
    queue_s: f64,
}

impl From<PieceSample> for WireSample {
    fn from(s: PieceSample) -> Self {
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect();
        let c = s.completion;
        WireSample {
            prompt_id: c.prompt_id,
            sample_index: c.sample_index,
            tokens: c.tokens,
            logprobs: bits(c.logprobs),
            entropies: bits(c.entropies),
            finish: c.finish,
            reward: s.reward.to_bits(),
            start_version: s.start_version,
            end_version: s.end_version,
            queue_s: s.queue_s,
        }
    }
}

impl From<WireSample> for PieceSample {
    fn from(w: WireSample) -> Self {
        let floats = |v: Vec<u32>| v.into_iter().map(f32::from_bits).collect();
        PieceSample {
            completion: Completion {
                prompt_id: w.prompt_id,
                sample_index: w.sample_index,
                tokens: w.tokens,
                logprobs: floats(w.logprobs),
                entropies: floats(w.entropies),
                finish: w.finish,
            },
            reward: f32::from_bits(w.reward),
            start_version: w.start_version,
            end_version: w.end_version,
            queue_s: w.queue_s,
        }
    }
}

/// A weight install on a rollout rank: version `version` (weights checksum `sum`) was installed
/// before decode step `decode_step` of the rank's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    pub version: u64,
    pub sum: u64,
    pub decode_step: u64,
}

/// A rollout rank's share of one group, with what the rank did since its previous piece.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Piece {
    pub batch: u64,
    /// The prompt's index within its batch.
    pub prompt: u32,
    pub samples: Vec<PieceSample>,
    /// Weight installs since the rank's previous piece, in order.
    pub installs: Vec<Install>,
    /// The rank's cumulative busy slot-seconds and slot-seconds (slots × wall time) so far.
    pub slot_busy_s: f64,
    pub slot_total_s: f64,
    /// Seconds of the rank's clock at the first admission of a sample of the piece and at its
    /// last completion (the batch's generation span).
    pub first_admit_s: f64,
    pub last_done_s: f64,
}

impl Piece {
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Invalid(format!("async: encoding a piece: {e}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<Piece> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Invalid(format!("async: a piece message of {} bytes is malformed: {e}", bytes.len())))
    }
}

/// The policy version batch `b` is generated with in batch mode, in a phase that started at
/// version `first` with lag ⌈α⌉ = `lag`.
pub fn batch_version(b: u64, lag: u64, first: u64) -> u64 {
    b.saturating_sub(lag).max(first)
}

/// Which prompts and samples of every batch rollout rank `r` of `ranks` generates: whole groups
/// of a contiguous share of the prompts, or (replication) a contiguous share of every group.
pub fn share(
    prompts: usize,
    n: usize,
    ranks: usize,
    r: usize,
    replicate: bool,
) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    if replicate {
        let samples = partition(n, ranks, r);
        let prompts = if samples.is_empty() { 0..0 } else { 0..prompts };
        (prompts, samples)
    } else {
        (partition(prompts, ranks, r), 0..n)
    }
}

/// One batch as assembled from pieces: its groups' samples in prompt and sample order, and the
/// figures of its transfer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssembledBatch {
    /// `prompts × n` samples, group by group.
    pub samples: Vec<PieceSample>,
    /// Slowest rank's generation span of the batch, seconds.
    pub gen_s: f64,
    /// Rollout slots busy over the interval since the previous batch (all rollout ranks).
    pub slot_util: f64,
    /// Mean seconds from a sample's completion to its piece being sent.
    pub queue_s: f64,
}

/// The leader's buffer of pieces from the rollout ranks.
pub struct Assembler {
    /// World ranks of the rollout ranks.
    pub rollout: Vec<usize>,
    pub prompts: usize,
    pub n: usize,
    pub replicate: bool,
    /// The model's vocabulary size (every token must be below it).
    pub vocab: usize,
    /// Batches of the phase: `first..steps`.
    pub first: u64,
    pub steps: u64,
    /// Pieces received per (batch, rollout index), and the samples per (batch, prompt).
    got: HashMap<(u64, usize), usize>,
    groups: BTreeMap<(u64, usize), Vec<PieceSample>>,
    /// Batch span per (batch, rollout index): (first admission, last completion).
    spans: HashMap<(u64, usize), (f64, f64)>,
    /// Per rollout index: (busy, total) slot-seconds at its newest piece, and at the previous batch.
    slots_now: Vec<(f64, f64)>,
    slots_then: Vec<(f64, f64)>,
    /// Installs received and not yet taken by [`Assembler::take_installs`]: (world rank, install).
    installs: Vec<(usize, Install)>,
}

impl Assembler {
    pub fn new(
        rollout: Vec<usize>,
        prompts: usize,
        n: usize,
        replicate: bool,
        vocab: usize,
        batches: std::ops::Range<u64>,
    ) -> Self {
        let r = rollout.len();
        let (first, steps) = (batches.start, batches.end);
        Assembler {
            rollout,
            prompts,
            n,
            replicate,
            vocab,
            first,
            steps,
            got: HashMap::new(),
            groups: BTreeMap::new(),
            spans: HashMap::new(),
            slots_now: vec![(0.0, 0.0); r],
            slots_then: vec![(0.0, 0.0); r],
            installs: Vec::new(),
        }
    }

    /// Pieces rollout index `i` sends for each batch.
    fn expected(&self, i: usize) -> usize {
        share(self.prompts, self.n, self.rollout.len(), i, self.replicate).0.len()
    }

    /// Check and store one piece from rollout index `i`.
    pub fn add(&mut self, i: usize, piece: Piece) -> Result<()> {
        let from = self.rollout[i];
        let bad = |msg: String| Err(Error::collective(from, format!("async batch {}", piece.batch), msg));
        let (prompts, samples) = share(self.prompts, self.n, self.rollout.len(), i, self.replicate);
        if !(self.first..self.steps).contains(&piece.batch) {
            return bad(format!(
                "a piece of batch {} outside the phase's batches {}..{}",
                piece.batch, self.first, self.steps
            ));
        }
        let p = piece.prompt as usize;
        if !prompts.contains(&p) {
            return bad(format!("a piece of prompt {p}, which is not this rank's (its prompts: {prompts:?})"));
        }
        let id = |s: usize| piece.batch * self.prompts as u64 + s as u64;
        let indices: Vec<u32> = piece.samples.iter().map(|s| s.completion.sample_index).collect();
        let want: Vec<u32> = samples.clone().map(|s| s as u32).collect();
        if indices != want || piece.samples.iter().any(|s| s.completion.prompt_id != id(p)) {
            return bad(format!(
                "a piece of prompt {p} with samples {indices:?}, expected samples {want:?} of prompt id {}",
                id(p)
            ));
        }
        for s in &piece.samples {
            let c = &s.completion;
            if c.logprobs.len() != c.tokens.len() || c.entropies.len() != c.tokens.len() {
                return bad(format!(
                    "sample {} of prompt {p}: {} tokens with {} log-probs and {} entropies",
                    c.sample_index,
                    c.tokens.len(),
                    c.logprobs.len(),
                    c.entropies.len()
                ));
            }
            if let Some(t) = c.tokens.iter().find(|&&t| t as usize >= self.vocab) {
                return bad(format!(
                    "sample {} of prompt {p}: token {t} outside the vocabulary of {}",
                    c.sample_index, self.vocab
                ));
            }
        }
        let group = self.groups.entry((piece.batch, p)).or_default();
        if group.iter().any(|s| indices.contains(&s.completion.sample_index)) {
            return bad(format!("prompt {p}'s samples {indices:?} arrived twice"));
        }
        group.extend(piece.samples);
        *self.got.entry((piece.batch, i)).or_default() += 1;
        let span = self.spans.entry((piece.batch, i)).or_insert((f64::INFINITY, 0.0));
        *span = (span.0.min(piece.first_admit_s), span.1.max(piece.last_done_s));
        self.slots_now[i] = (piece.slot_busy_s, piece.slot_total_s);
        self.installs.extend(piece.installs.into_iter().map(|x| (from, x)));
        Ok(())
    }

    /// Receive from every rollout rank until batch `b` is complete (buffering pieces of later
    /// batches), and return it in prompt and sample order.
    pub fn receive(&mut self, comm: &dyn Comm, b: u64) -> Result<AssembledBatch> {
        for i in 0..self.rollout.len() {
            while self.got.get(&(b, i)).copied().unwrap_or(0) < self.expected(i) {
                let from = self.rollout[i];
                let msg = comm.recv_bytes(from)?;
                let piece = Piece::decode(&msg)
                    .map_err(|e| Error::collective(from, format!("async batch {b}"), e.to_string()))?;
                if piece.batch < b {
                    return Err(Error::collective(
                        from,
                        format!("async batch {b}"),
                        format!("a late piece of batch {}", piece.batch),
                    ));
                }
                self.add(i, piece)?;
            }
        }
        self.take(b)
    }

    /// Remove complete batch `b` from the buffer.
    fn take(&mut self, b: u64) -> Result<AssembledBatch> {
        let mut out = AssembledBatch::default();
        for p in 0..self.prompts {
            let mut group = self.groups.remove(&(b, p)).unwrap_or_default();
            group.sort_by_key(|s| s.completion.sample_index);
            if group.len() != self.n {
                return Err(Error::Invalid(format!(
                    "async batch {b}: prompt {p} has {} of its {} samples",
                    group.len(),
                    self.n
                )));
            }
            out.samples.extend(group);
        }
        let mut util = (0.0, 0.0);
        for i in 0..self.rollout.len() {
            self.got.remove(&(b, i));
            if let Some((a, z)) = self.spans.remove(&(b, i)) {
                out.gen_s = out.gen_s.max((z - a).max(0.0));
            }
            let (now, then) = (self.slots_now[i], self.slots_then[i]);
            util.0 += now.0 - then.0;
            util.1 += now.1 - then.1;
            self.slots_then[i] = now;
        }
        out.slot_util = if util.1 > 0.0 { (util.0 / util.1).clamp(0.0, 1.0) } else { 0.0 };
        let q: f64 = out.samples.iter().map(|s| s.queue_s).sum();
        out.queue_s = q / out.samples.len().max(1) as f64;
        Ok(out)
    }

    /// The weight installs received since the last call, with the world rank that made each.
    pub fn take_installs(&mut self) -> Vec<(usize, Install)> {
        std::mem::take(&mut self.installs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(prompt_id: u64, s: u32, start: u64) -> PieceSample {
        PieceSample {
            completion: Completion {
                prompt_id,
                sample_index: s,
                tokens: vec![3, 4],
                logprobs: vec![-0.5, -1.25],
                entropies: vec![0.1, 0.2],
                finish: Finish::Stop,
            },
            reward: s as f32,
            start_version: start,
            end_version: start,
            queue_s: 0.5,
        }
    }

    fn piece(batch: u64, prompt: u32, prompts: u64, samples: std::ops::Range<u32>) -> Piece {
        Piece {
            batch,
            prompt,
            samples: samples.map(|s| sample(batch * prompts + u64::from(prompt), s, batch)).collect(),
            installs: vec![Install { version: batch, sum: 7, decode_step: 3 }],
            slot_busy_s: 1.0,
            slot_total_s: 2.0,
            first_admit_s: 0.0,
            last_done_s: 1.5,
        }
    }

    #[test]
    fn shares_cover_every_sample_once_with_and_without_replication() {
        for (prompts, n, ranks) in [(5, 4, 2), (3, 8, 3), (4, 2, 3), (1, 1, 2)] {
            for replicate in [false, true] {
                let mut seen = vec![0u32; prompts * n];
                for r in 0..ranks {
                    let (ps, ss) = share(prompts, n, ranks, r, replicate);
                    for p in ps {
                        for s in ss.clone() {
                            seen[p * n + s] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "{prompts}×{n} over {ranks}, replicate {replicate}: {seen:?}");
            }
        }
    }

    #[test]
    fn batches_assemble_in_order_whatever_the_arrival_order() {
        // 2 prompts × 4 samples, replicated over 2 ranks: each rank sends 2 samples of each prompt
        let mut a = Assembler::new(vec![2, 3], 2, 4, true, 16, 0..3);
        let mut b = Assembler::new(vec![2, 3], 2, 4, true, 16, 0..3);
        let pieces = [
            (0, piece(0, 1, 2, 0..2)),
            (1, piece(0, 1, 2, 2..4)),
            (1, piece(0, 0, 2, 2..4)),
            (0, piece(0, 0, 2, 0..2)),
        ];
        for (i, p) in pieces.iter().cloned() {
            a.add(i, p).unwrap();
        }
        for (i, p) in pieces.iter().rev().cloned() {
            b.add(i, p).unwrap();
        }
        let (x, y) = (a.take(0).unwrap(), b.take(0).unwrap());
        assert_eq!(x, y);
        let order: Vec<(u64, u32)> =
            x.samples.iter().map(|s| (s.completion.prompt_id, s.completion.sample_index)).collect();
        assert_eq!(order, [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]);
        assert_eq!(x.gen_s, 1.5);
        assert!((x.slot_util - 0.5).abs() < 1e-12 && x.queue_s == 0.5);
        assert_eq!(a.take_installs().len(), 4);
    }

    #[test]
    fn wrong_duplicate_or_foreign_pieces_are_errors_naming_the_rank() {
        let mut a = Assembler::new(vec![1, 2], 4, 2, false, 16, 0..2);
        // rank index 0 owns prompts 0..2 of every batch
        let e = a.add(0, piece(0, 3, 4, 0..2)).unwrap_err().to_string();
        assert!(e.contains("rank 1") && e.contains("prompt 3"), "{e}");
        let e = a.add(0, piece(5, 0, 4, 0..2)).unwrap_err().to_string();
        assert!(e.contains("batch 5"), "{e}");
        let e = a.add(1, piece(0, 2, 4, 0..1)).unwrap_err().to_string();
        assert!(e.contains("rank 2") && e.contains("expected samples [0, 1]"), "{e}");
        a.add(0, piece(0, 0, 4, 0..2)).unwrap();
        let e = a.add(0, piece(0, 0, 4, 0..2)).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        let mut odd = piece(0, 1, 4, 0..2);
        odd.samples[1].completion.logprobs.pop();
        assert!(a.add(0, odd).unwrap_err().to_string().contains("2 tokens with 1 log-probs"));
        let mut odd = piece(0, 1, 4, 0..2);
        odd.samples[0].completion.tokens[0] = 16;
        assert!(a.add(0, odd).unwrap_err().to_string().contains("token 16 outside"));
        let e = a.take(0).unwrap_err().to_string();
        assert!(e.contains("prompt 1 has 0 of its 2 samples"), "{e}");
    }

    #[test]
    fn pieces_round_trip_and_garbage_is_an_error() {
        let p = piece(2, 1, 3, 0..3);
        assert_eq!(Piece::decode(&p.encode().unwrap()).unwrap(), p);
        let bytes = p.encode().unwrap();
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(Piece::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
    }
}
