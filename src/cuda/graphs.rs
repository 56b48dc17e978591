//! Decode steps replayed as CUDA graphs (opt-in: `ARBOR_CUDA_GRAPHS=1` or
//! [`crate::cuda::GpuDecoder::set_graphs`]). A decode step is a few hundred small launches whose
//! cost, at small batches, is mostly the launching; a graph replays them in one launch. A graph
//! bakes in every device address and shape it was captured with, so one is kept per row count
//! (steps whose every row picks a token: the steady state of continuous batching; steps with
//! prompt chunks run eagerly), and all are dropped when any address they use changes (a buffer
//! grew, a new KV cache, a reallocated scratch). With graphs on, such a step's rows are padded
//! up to a bucket ([`bucket`]: 1, 2, 4, then multiples of 8 and 16) with rows that decode into
//! a spare cache slot and are never read, so that the shrinking row counts of a batch whose
//! sequences finish one by one replay a few graphs instead of capturing one per count. A row count is captured on its second use: the
//! first runs eagerly and grows every buffer and loads every kernel, since a capture may neither
//! allocate nor load modules. Replays launch exactly the captured kernels with the same arguments,
//! so results are bit-identical to eager steps.

use std::collections::{HashMap, HashSet};

/// What to do with a step of a given row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Launch the kernels directly (graphs off, a step with prompt rows, or a first use).
    Eager,
    /// Capture the step into a graph, then launch the graph.
    Capture,
    /// Launch the graph captured for this row count.
    Replay,
}

/// The graphs of one decoder, generic over the graph type (host tests use a stand-in).
pub struct StepGraphs<G> {
    enabled: bool,
    /// The device addresses and shapes the graphs were captured with.
    fingerprint: Vec<u64>,
    graphs: HashMap<usize, G>,
    /// Row counts that ran eagerly once under the current fingerprint.
    warm: HashSet<usize>,
    /// Why graphs were given up, if they were.
    refused: Option<String>,
}

impl<G> StepGraphs<G> {
    pub fn new(enabled: bool) -> Self {
        StepGraphs { enabled, fingerprint: Vec::new(), graphs: HashMap::new(), warm: HashSet::new(), refused: None }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Turn graphs on or off (off drops every graph).
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
        if !on {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.graphs.clear();
        self.warm.clear();
    }

    /// The action for a step of `rows` rows that all pick a token (`uniform`, else it runs
    /// eagerly) with the addresses and shapes `fingerprint`: graphs captured under another
    /// fingerprint are dropped first.
    pub fn plan(&mut self, rows: usize, uniform: bool, fingerprint: &[u64]) -> Action {
        if !self.enabled || !uniform {
            return Action::Eager;
        }
        if self.fingerprint != fingerprint {
            self.clear();
            self.fingerprint = fingerprint.to_vec();
        }
        if self.graphs.contains_key(&rows) {
            Action::Replay
        } else if self.warm.insert(rows) {
            Action::Eager
        } else {
            Action::Capture
        }
    }

    /// How many row counts have a graph.
    pub fn len(&self) -> usize {
        self.graphs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.graphs.is_empty()
    }

    /// The graph for `rows` (after [`Action::Replay`]).
    pub fn get(&self, rows: usize) -> Option<&G> {
        self.graphs.get(&rows)
    }

    /// Keep the graph captured for `rows`.
    pub fn insert(&mut self, rows: usize, graph: G) {
        self.graphs.insert(rows, graph);
    }

    /// A capture failed (the driver or a library refused to be captured), or its graph failed to
    /// launch: graphs stay off for this decoder, which runs eagerly from now on; `why` is kept
    /// ([`StepGraphs::refused`]).
    pub fn give_up(&mut self, why: String) {
        self.set_enabled(false);
        self.refused = Some(why);
    }

    /// Why graphs were given up (None while they were not).
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }
}

/// The most rows a padded, captured step has; larger steps run eagerly at their own row count
/// (their launches are a small part of their time).
pub const MAX_BUCKET: usize = 512;

/// The row count a step of `rows` decoding rows is padded to: `rows` itself up to 2, then the
/// next of 4, multiples of 8 up to 64 and multiples of 16 up to [`MAX_BUCKET`] (at most 3 + 8 +
/// 28 graphs; a step padded by fewer than 8 rows up to 64, fewer than 16 above); `rows` above that.
pub fn bucket(rows: usize) -> usize {
    match rows {
        0..=2 => rows,
        3..=4 => 4,
        5..=64 => rows.next_multiple_of(8),
        65..=MAX_BUCKET => rows.next_multiple_of(16),
        _ => rows,
    }
}

/// Whether `ARBOR_CUDA_GRAPHS=1` asks for decode graphs.
pub fn requested() -> bool {
    std::env::var("ARBOR_CUDA_GRAPHS").is_ok_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off or with prompt rows: always eager. On: a row count runs eagerly first, is captured
    /// second, replayed after; a new fingerprint drops every graph and starts over; giving up
    /// turns graphs off for good.
    #[test]
    fn a_row_count_is_captured_on_its_second_use_and_dropped_when_addresses_change() {
        let mut off = StepGraphs::<u32>::new(false);
        assert_eq!(off.plan(4, true, &[1]), Action::Eager);
        assert_eq!(off.plan(4, true, &[1]), Action::Eager);

        let mut g = StepGraphs::<u32>::new(true);
        assert_eq!(g.plan(4, false, &[1]), Action::Eager, "prompt rows run eagerly");
        assert_eq!(g.plan(4, true, &[1]), Action::Eager, "first use warms");
        assert_eq!(g.plan(4, true, &[1]), Action::Capture);
        g.insert(4, 40);
        assert_eq!(g.plan(4, true, &[1]), Action::Replay);
        assert_eq!(g.get(4), Some(&40));
        assert_eq!(g.plan(3, true, &[1]), Action::Eager, "another row count warms on its own");
        assert_eq!(g.plan(4, true, &[1]), Action::Replay);
        assert_eq!(g.plan(4, true, &[2]), Action::Eager, "new addresses: graphs dropped, warm again");
        assert_eq!(g.get(4), None);
        assert_eq!(g.plan(4, true, &[2]), Action::Capture);
        assert_eq!(g.refused(), None);
        g.give_up("refused".into());
        assert!(!g.enabled());
        assert_eq!(g.refused(), Some("refused"), "the reason is kept");
        assert_eq!(g.plan(4, true, &[2]), Action::Eager);
    }

    /// Buckets hold their rows, pad by fewer than 8 rows up to 64 and fewer than 16 (under a
    /// quarter) above, are few, and leave steps over the largest bucket alone.
    #[test]
    fn buckets_are_few_and_pad_little() {
        let mut seen = HashSet::new();
        for rows in 1..=MAX_BUCKET {
            let b = bucket(rows);
            assert!(b >= rows && b - rows < 16, "{rows} rows padded to {b}");
            assert!(if rows <= 64 { b - rows < 8 } else { (b - rows) * 4 < rows }, "{rows} rows padded to {b}");
            assert_eq!(bucket(b), b, "a bucket is its own bucket");
            seen.insert(b);
        }
        assert_eq!(seen.len(), 3 + 8 + 28);
        assert_eq!((bucket(3), bucket(9), bucket(65), bucket(MAX_BUCKET + 1)), (4, 16, 80, MAX_BUCKET + 1));
    }
}
