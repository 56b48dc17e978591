//! Reinforcement-learning math (ALGORITHMS.md §5): group advantages (GRPO, Dr.GRPO, RLOO) and the policy losses
//! (ppo with clip-higher and dual clip, tis, topr, cispo, decoupled_ppo) with k3 KL, entropy bonus and the four
//! aggregation modes. Pure functions over packed per-token slices; the training loop calls them.
//!
//! Gradient accumulation: compute [`Denominators`] once for the full batch (combined over data-parallel ranks)
//! and pass them to [`policy_loss()`] for every micro-batch; the per-token gradients are then identical to the
//! full-batch ones and the micro-batch losses sum to the full-batch loss.

pub mod advantages;
pub mod gae;
pub mod loss_config;
pub mod policy_loss;

pub use advantages::{broadcast_to_tokens, group_advantages, AdvantageKind, GroupAdvantages};
pub use loss_config::{Aggregation, Denominators, LossConfig, LossConfigError, LossKind, OldLogprobs};
pub use policy_loss::{k3_kl, policy_loss, policy_term, LossOutput, LossStats, PolicyTerm, TokenBatch};
