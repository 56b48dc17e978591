//! How a pass over a step's sequences is cut into forwards (and backwards): `[rl] micro_batch`
//! sequences and `[rl] micro_batch_tokens` positions at most. The cut bounds the workspace (device
//! memory on a GPU) and changes no result beyond float summation order: the update normalises each
//! micro-batch by its whole mini-batch's denominators, and the other passes are per sequence.
//!
//! RL responses vary in length by an order of magnitude, so a count alone must be sized for the
//! longest case and leaves the short ones' forwards small; a token budget keeps every forward near
//! the same size (verl's "dynamic batch size" plays this part).

use std::ops::Range;

/// The most sequences and positions of one forward; 0 leaves that bound off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MicroBatch {
    /// Sequences per forward (0: any number).
    pub samples: usize,
    /// Positions (prompt and response tokens) per forward (0: any number); a longer sequence runs
    /// alone.
    pub tokens: usize,
}

impl From<usize> for MicroBatch {
    /// A bound on the sequences only.
    fn from(samples: usize) -> Self {
        MicroBatch { samples, tokens: 0 }
    }
}

impl MicroBatch {
    /// Contiguous, in-order ranges covering `range`, whose item `i` has `len(i)` positions: a range
    /// closes before the item that would take it past either bound. Never an empty range.
    pub fn ranges(&self, range: Range<usize>, len: impl Fn(usize) -> usize) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut tokens) = (range.start, 0usize);
        for i in range.clone() {
            let n = len(i);
            let full_count = self.samples > 0 && i - start == self.samples;
            let full_tokens = self.tokens > 0 && i > start && tokens + n > self.tokens;
            if full_count || full_tokens {
                out.push(start..i);
                (start, tokens) = (i, 0);
            }
            tokens += n;
        }
        if start < range.end {
            out.push(start..range.end);
        }
        out
    }

    /// [`MicroBatch::ranges`] of whole slices: the chunks of `items`, item `i` of `len(&items[i])`
    /// positions.
    pub fn chunks<'a, T>(&self, items: &'a [T], len: impl Fn(&T) -> usize) -> impl Iterator<Item = &'a [T]> {
        self.ranges(0..items.len(), |i| len(&items[i])).into_iter().map(move |r| &items[r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(m: MicroBatch, lens: &[usize]) -> Vec<Range<usize>> {
        m.ranges(0..lens.len(), |i| lens[i])
    }

    #[test]
    fn a_count_alone_cuts_every_n_sequences() {
        assert_eq!(cut(3.into(), &[1; 7]), vec![0..3, 3..6, 6..7]);
        assert_eq!(cut(0.into(), &[1; 7]), vec![0..7]);
        assert_eq!(MicroBatch::from(3).ranges(3..10, |_| 5), vec![3..6, 6..9, 9..10]);
        assert!(cut(2.into(), &[]).is_empty() && MicroBatch::from(0).ranges(4..4, |_| 1).is_empty());
    }

    #[test]
    fn a_token_budget_packs_short_sequences_and_runs_a_long_one_alone() {
        let m = MicroBatch { samples: 0, tokens: 10 };
        assert_eq!(cut(m, &[4, 4, 4, 2, 10, 11, 1, 9]), vec![0..2, 2..4, 4..5, 5..6, 6..8]);
        // both bounds: whichever closes first
        let m = MicroBatch { samples: 2, tokens: 10 };
        assert_eq!(cut(m, &[1, 1, 1, 8, 3]), vec![0..2, 2..4, 4..5]);
        // every range is within the budget unless it holds one sequence
        let lens: Vec<usize> = (0..200).map(|i| (i * 37 + 11) % 29 + 1).collect();
        for budget in [1, 7, 29, 30, 64, 1000] {
            let m = MicroBatch { samples: 0, tokens: budget };
            let got = cut(m, &lens);
            assert_eq!(got.first().unwrap().start, 0);
            assert_eq!(got.last().unwrap().end, lens.len());
            for w in got.windows(2) {
                assert_eq!(w[0].end, w[1].start, "contiguous, in order");
                // closed only because the next sequence would not fit
                let sum: usize = lens[w[0].clone()].iter().sum();
                assert!(sum + lens[w[1].start] > budget, "{budget}: {w:?} closed early");
            }
            for r in &got {
                let sum: usize = lens[r.clone()].iter().sum();
                assert!(!r.is_empty() && (sum <= budget || r.len() == 1), "{budget}: {r:?} holds {sum}");
            }
        }
    }

    #[test]
    fn chunks_follow_the_ranges() {
        let seqs = vec![vec![0u32; 3], vec![0; 3], vec![0; 5], vec![0; 1]];
        let m = MicroBatch { samples: 0, tokens: 6 };
        let got: Vec<usize> = m.chunks(&seqs, |s| s.len()).map(|c| c.len()).collect();
        assert_eq!(got, vec![2, 2]);
        assert_eq!(m.chunks(&Vec::<Vec<u32>>::new(), |s| s.len()).count(), 0);
    }
}
