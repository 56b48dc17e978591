//! Tree values and node advantages of depth-1 trees, and the per-leaf training sequences (ALGORITHMS.md §2).
//!
//! A response o of length T with split points 0 < t_1 < … < t_K < T and continuations C_i sampled from prefix
//! o[..t_i] forms the segments S_0 = o[0, t_1), S_i = o[t_i, t_{i+1}), S_K = o[t_K, T). Node S_j has parent S_{j−1}
//! (S_0's parent is the question root); the continuations from t_i are leaves whose parent is S_{i−1}. The
//! leaves under S_j are o itself and every continuation from t_i with i > j; the tail S_K has the single leaf o.
//!
//! - V(node) = mean reward of the leaves under it, L(node) = their count, V(root) = mean reward over **all**
//!   leaves of the question (every tree and every unbranched response; an input, see [`question_root_value`]).
//! - A(node) = [(V(node) − V(root)) + (V(node) − V(parent))] / √L(node); every token of the node's segment gets
//!   A(node). No std normalisation.
//! - One training sequence per leaf of a branched tree (K ≥ 1): the shared prefix segments S_0..S_{i−1} then the
//!   leaf's own tail (S_K for o itself, the continuation's tokens for a continuation from t_i). Unbranched
//!   responses count towards V(root) but yield no training sequence here.
//!
//! Values are computed in f64; per-token advantages are stored as f32.

use crate::{Error, Result};

/// One continuation sampled from a split point: its token count (after the split) and its reward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Continuation {
    /// Tokens generated after the prefix.
    pub len: usize,
    /// Outcome reward of the continued response.
    pub reward: f32,
}

/// A split point of a response: continuations start at response token `at` (prefix = response[..at]).
#[derive(Debug, Clone, PartialEq)]
pub struct SplitPoint {
    /// Token offset into the response, 0 < at < response length.
    pub at: usize,
    /// The continuations sampled from this prefix (at least one).
    pub continuations: Vec<Continuation>,
}

/// One initial response of a question and, if branched, its split points (depth 1).
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseTree {
    /// Response length T in tokens.
    pub len: usize,
    /// Outcome reward of the original response.
    pub reward: f32,
    /// Split points with strictly increasing `at`; empty = unbranched.
    pub splits: Vec<SplitPoint>,
}

impl ResponseTree {
    /// An unbranched response (a single leaf).
    pub fn unbranched(len: usize, reward: f32) -> Self {
        ResponseTree { len, reward, splits: Vec::new() }
    }

    /// Whether the response was branched (it then contributes training sequences).
    pub fn is_branched(&self) -> bool {
        !self.splits.is_empty()
    }

    /// Rewards of every leaf: the original response, then the continuations split by split.
    pub fn leaf_rewards(&self) -> impl Iterator<Item = f32> + '_ {
        std::iter::once(self.reward).chain(self.splits.iter().flat_map(|s| s.continuations.iter().map(|c| c.reward)))
    }

    /// Check: splits strictly increasing in (0, T), at least one continuation each, finite rewards.
    pub fn validate(&self) -> Result<()> {
        let mut prev = 0;
        for (i, s) in self.splits.iter().enumerate() {
            if s.at <= prev || s.at >= self.len {
                return Err(Error::shape(
                    format!("split {i} at token {}", s.at),
                    format!("must be after the previous split ({prev}) and inside (0, {}) of the response", self.len),
                ));
            }
            if s.continuations.is_empty() {
                return Err(Error::Invalid(format!("split {i} at token {} has no continuations", s.at)));
            }
            prev = s.at;
        }
        if let Some(r) = self.leaf_rewards().find(|r| !r.is_finite()) {
            return Err(Error::Invalid(format!("leaf reward {r} must be finite")));
        }
        Ok(())
    }
}

/// V(root) = mean reward over all leaves of the question's trees (each unbranched response is one leaf).
pub fn question_root_value(trees: &[ResponseTree]) -> Result<f64> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (i, t) in trees.iter().enumerate() {
        for r in t.leaf_rewards() {
            if !r.is_finite() {
                return Err(Error::Invalid(format!("response {i}: leaf reward {r} must be finite")));
            }
            sum += f64::from(r);
            n += 1;
        }
    }
    if n == 0 {
        return Err(Error::Invalid("a question needs at least one response to have a root value".into()));
    }
    Ok(sum / n as f64)
}

/// Statistics of one node (segment) of a tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeStat {
    /// Token range of the segment in its own coordinates (response tokens, or the continuation's tokens).
    pub start: usize,
    /// End (exclusive) of the segment.
    pub end: usize,
    /// V(node): mean reward of the leaves under it.
    pub value: f64,
    /// L(node): number of leaves under it.
    pub leaves: usize,
    /// V(parent) (V(root) for the first segment).
    pub parent_value: f64,
    /// A(node) = [(V − V_root) + (V − V_parent)]/√L.
    pub advantage: f64,
}

/// Node statistics of one tree.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeAdvantages {
    /// V(root) used.
    pub root_value: f64,
    /// Response segments S_0..S_K in order (one segment [0, T) for an unbranched response).
    pub segments: Vec<NodeStat>,
    /// `continuations[i][c]`: the c-th continuation from split i (its range is [0, len) of its own tokens).
    pub continuations: Vec<Vec<NodeStat>>,
}

fn node(start: usize, end: usize, sum: f64, leaves: usize, parent_value: f64, root_value: f64) -> NodeStat {
    let value = sum / leaves as f64;
    let advantage = ((value - root_value) + (value - parent_value)) / (leaves as f64).sqrt();
    NodeStat { start, end, value, leaves, parent_value, advantage }
}

/// Node values, leaf counts and advantages of one tree given the question's V(root).
pub fn tree_advantages(tree: &ResponseTree, root_value: f64) -> Result<TreeAdvantages> {
    tree.validate()?;
    if !root_value.is_finite() {
        return Err(Error::Invalid(format!("root value {root_value} must be finite")));
    }
    let k = tree.splits.len();
    // With 0-based split indices (split i is t_{i+1}), the leaves under S_j are o plus the continuations of every
    // split i ≥ j. suffix[j] = (reward sum, count) of those continuations, accumulated from the tail.
    let mut suffix = vec![(0.0f64, 0usize); k + 1];
    for i in (0..k).rev() {
        let s = &tree.splits[i];
        let sum: f64 = s.continuations.iter().map(|c| f64::from(c.reward)).sum();
        suffix[i] = (suffix[i + 1].0 + sum, suffix[i + 1].1 + s.continuations.len());
    }
    let r = f64::from(tree.reward);
    let mut segments = Vec::with_capacity(k + 1);
    let mut parent = root_value;
    for (j, &(sum, n)) in suffix.iter().enumerate() {
        let start = if j == 0 { 0 } else { tree.splits[j - 1].at };
        let end = if j == k { tree.len } else { tree.splits[j].at };
        let seg = node(start, end, r + sum, 1 + n, parent, root_value);
        parent = seg.value;
        segments.push(seg);
    }
    // A continuation from split i shares the prefix S_0..S_i, so its parent is segments[i].
    let continuations = tree
        .splits
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let pv = segments[i].value;
            s.continuations.iter().map(|c| node(0, c.len, f64::from(c.reward), 1, pv, root_value)).collect()
        })
        .collect();
    Ok(TreeAdvantages { root_value, segments, continuations })
}

/// Which leaf a training sequence ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// The original response.
    Original,
    /// Continuation `index` of split `split` (0-based, in split order).
    Continuation { split: usize, index: usize },
}

/// Where a segment's tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The original response's tokens.
    Response,
    /// The tokens of continuation `index` of split `split`.
    Continuation { split: usize, index: usize },
}

/// A token range of a training sequence with the advantage of every token in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// Token source.
    pub source: Source,
    /// Start in the source's coordinates.
    pub start: usize,
    /// End (exclusive) in the source's coordinates.
    pub end: usize,
    /// A(node) of the segment.
    pub advantage: f32,
}

/// One root-to-leaf training sequence: prompt + the segments in order.
#[derive(Debug, Clone, PartialEq)]
pub struct LeafSequence {
    /// The leaf it ends in.
    pub leaf: Leaf,
    /// The leaf's outcome reward.
    pub reward: f32,
    /// Shared prefix segments of the response, then the leaf's own tail.
    pub segments: Vec<Segment>,
}

impl LeafSequence {
    /// Response tokens in the sequence (prompt excluded).
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.end - s.start).sum()
    }

    /// Whether the sequence has no response tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per-token advantages over the sequence's response tokens.
    pub fn token_advantages(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len());
        for s in &self.segments {
            out.resize(out.len() + (s.end - s.start), s.advantage);
        }
        out
    }
}

/// Training sequences of one tree (none for an unbranched response): the original leaf first, then the
/// continuations split by split. `adv` must come from [`tree_advantages`] of the same tree.
pub fn leaf_sequences(tree: &ResponseTree, adv: &TreeAdvantages) -> Vec<LeafSequence> {
    if !tree.is_branched() {
        return Vec::new();
    }
    let resp = |j: usize| {
        let s = &adv.segments[j];
        Segment { source: Source::Response, start: s.start, end: s.end, advantage: s.advantage as f32 }
    };
    let mut out = Vec::with_capacity(1 + tree.splits.iter().map(|s| s.continuations.len()).sum::<usize>());
    out.push(LeafSequence {
        leaf: Leaf::Original,
        reward: tree.reward,
        segments: (0..adv.segments.len()).map(resp).collect(),
    });
    for (i, split) in tree.splits.iter().enumerate() {
        for (c, cont) in split.continuations.iter().enumerate() {
            let mut segments: Vec<Segment> = (0..=i).map(resp).collect();
            let n = &adv.continuations[i][c];
            segments.push(Segment {
                source: Source::Continuation { split: i, index: c },
                start: n.start,
                end: n.end,
                advantage: n.advantage as f32,
            });
            out.push(LeafSequence { leaf: Leaf::Continuation { split: i, index: c }, reward: cont.reward, segments });
        }
    }
    out
}

/// A question's trees evaluated together.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionTrees {
    /// V(root) over all leaves of the question.
    pub root_value: f64,
    /// Node statistics per tree, in input order.
    pub trees: Vec<TreeAdvantages>,
    /// (tree index, sequence) for every leaf of every branched tree, tree by tree.
    pub sequences: Vec<(usize, LeafSequence)>,
}

/// V(root), node advantages and leaf training sequences of all of a question's responses.
pub fn question_trees(trees: &[ResponseTree]) -> Result<QuestionTrees> {
    let root_value = question_root_value(trees)?;
    let mut out = QuestionTrees { root_value, trees: Vec::with_capacity(trees.len()), sequences: Vec::new() };
    for (i, t) in trees.iter().enumerate() {
        let adv = tree_advantages(t, root_value).map_err(|e| e.within(format!("response {i}")))?;
        out.sequences.extend(leaf_sequences(t, &adv).into_iter().map(|s| (i, s)));
        out.trees.push(adv);
    }
    Ok(out)
}
