//! AttnRL and attention-rhythm decision logic (ALGORITHMS.md §1–3, §7), model-free: the statistics (FCI y_k per
//! step, WAAD_t, FAI_t, token entropies) come from the attention pass, rewards from the task; these functions
//! decide where to branch, which responses to branch, what every tree node's advantage is, which problems and
//! how many prompts to train on, and how the rhythm reshapes per-token advantages. docs/attnrl.md has the formulas.
//!
//! - [`steps`]: step bounds from token texts (prompt = pseudo-step 0).
//! - [`branch`]: ATB branch points (earliest high-FCI steps) and the entropy / −log p baseline.
//! - [`tree`]: depth-1 tree values V, leaf counts L, node advantages and per-leaf training sequences.
//! - [`adaptive`]: trees per problem, which responses to branch, the all-correct FCI filter, the zero-advantage
//!   filter, the dynamic batch.
//! - [`rhythm`]: pre-plan tokens, anchors and γ_t of the local / global / coupled schemes.
//! - [`config`]: the `[attnrl]` and `[rhythm]` tables.

pub mod adaptive;
pub mod branch;
pub mod config;
pub mod rhythm;
pub mod steps;
pub mod tree;

pub use adaptive::{
    keep_nonzero_advantage, next_batch_size, question_fci, responses_to_branch, trees_per_problem, AllCorrectFciFilter,
    DynamicBatch,
};
pub use branch::{
    atb_branch_points, atb_candidates, branch_points, quantile_linear, token_branch_points, BranchChoice,
};
pub use config::{AttnRlConfig, AttnRlConfigError, BranchBy, DistanceRule, RhythmConfig, RhythmScheme, TreeRounding};
pub use rhythm::{batch_thresholds, rhythm_marks, shape_advantages, RhythmMarks, RhythmThresholds};
pub use steps::{response_step_bounds, response_step_bounds_from_texts, sequence_step_bounds};
pub use tree::{
    question_root_value, question_trees, tree_advantages, Continuation, Leaf, LeafSequence, QuestionTrees,
    ResponseTree, Segment, Source, SplitPoint, TreeAdvantages,
};
