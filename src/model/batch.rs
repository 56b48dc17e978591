//! Packed batches: sequences of different lengths laid end to end (no padding work).

use crate::error::{Error, Result};
use crate::tensor::backend::PackedBatch;

/// A packed batch of `num_seqs()` sequences, N = `len()` tokens in all.
///
/// Sequence s occupies tokens `seq_starts[s]..seq_starts[s+1]`; positions restart at 0 in each.
/// `targets[i]` is the token whose log-probability is read at position i (next token for
/// language modelling, the sampled token for RL); its value is irrelevant where the loss weight is 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
    pub positions: Vec<u32>,
    pub seq_starts: Vec<usize>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch { seq_starts: vec![0], ..Default::default() }
    }

    /// Append one sequence with its targets (same length).
    pub fn push(&mut self, tokens: &[u32], targets: &[u32]) -> Result<()> {
        if tokens.len() != targets.len() {
            return Err(Error::shape(
                format!("sequence {}", self.num_seqs()),
                format!("{} tokens but {} targets", tokens.len(), targets.len()),
            ));
        }
        if self.seq_starts.is_empty() {
            self.seq_starts.push(0);
        }
        self.tokens.extend_from_slice(tokens);
        self.targets.extend_from_slice(targets);
        self.positions.extend(0..tokens.len() as u32);
        self.seq_starts.push(self.tokens.len());
        Ok(())
    }

    /// Append one sequence for next-token prediction: targets are tokens shifted left by one
    /// (the last position's target is `pad`, to be given weight 0).
    pub fn push_lm(&mut self, tokens: &[u32], pad: u32) -> Result<()> {
        let mut targets: Vec<u32> = tokens.iter().skip(1).copied().collect();
        targets.push(pad);
        self.push(tokens, &targets)
    }

    /// Pack a right-padded [B, T] batch: row b keeps its first `lengths[b]` tokens.
    pub fn from_padded(ids: &[u32], targets: &[u32], lengths: &[usize], t: usize) -> Result<Self> {
        let mut batch = Batch::new();
        for (b, &len) in lengths.iter().enumerate() {
            if len > t || (b + 1) * t > ids.len() || (b + 1) * t > targets.len() {
                return Err(Error::shape(format!("row {b}"), format!("length {len} exceeds the padded width {t}")));
            }
            batch.push(&ids[b * t..b * t + len], &targets[b * t..b * t + len])?;
        }
        Ok(batch)
    }

    /// The batch as the operations of a backend read it (borrowed slices).
    pub fn packed(&self) -> PackedBatch<'_> {
        PackedBatch {
            tokens: &self.tokens,
            targets: &self.targets,
            positions: &self.positions,
            seq_starts: &self.seq_starts,
        }
    }

    /// Clear, keeping capacity.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.targets.clear();
        self.positions.clear();
        self.seq_starts.clear();
        self.seq_starts.push(0);
    }

    /// Total tokens N.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True if the batch holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Number of sequences.
    pub fn num_seqs(&self) -> usize {
        self.packed().num_seqs()
    }

    /// Longest sequence.
    pub fn max_seq_len(&self) -> usize {
        self.packed().max_seq_len()
    }
}
