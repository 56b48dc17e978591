//! `[critic]`: the schema of PPO with GAE on value models (the models themselves: `train::critic`).

use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::rl::gae::Aggregate;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `[critic]`: PPO with GAE on one or more value models (≥ 2: AsyPPO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriticConfig {
    /// Number of critics M (1 = PPO with one critic; 2 = AsyPPO's default).
    pub count: usize,
    /// Critic width (default: the policy's); heads default to the policy's, head_dim = hidden / heads.
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_layers: Option<usize>,
    pub num_heads: Option<usize>,
    pub num_kv_heads: Option<usize>,
    /// Start from the policy's embeddings and lower layers (needs the policy's width and heads).
    pub init_from_policy: bool,
    /// Critic AdamW learning rate.
    pub lr: f32,
    /// Value clip ε around the step's starting values (0 = off; ALGORITHMS.md: 0.5).
    pub value_clip: f32,
    /// RL steps that train only the critics (the policy waits for a useful baseline).
    pub warmup_steps: u64,
    /// GAE λ and γ.
    pub gae_lambda: f32,
    pub gae_gamma: f32,
    /// V̄ from the critics: mean (default) or min.
    pub aggregate: Aggregate,
    /// AsyPPO: advantages of the tokens with the lowest k of σ (critics agree) are set to 0.
    pub mask_low_frac: f64,
    /// AsyPPO: tokens with the highest h of σ (critics disagree) get no entropy bonus.
    pub entropy_exclude_high_frac: f64,
    /// Normalise the batch's advantages to zero mean and unit variance (local batch).
    pub whiten: bool,
}

impl Default for CriticConfig {
    fn default() -> Self {
        CriticConfig {
            count: 2,
            hidden_size: None,
            intermediate_size: None,
            num_layers: None,
            num_heads: None,
            num_kv_heads: None,
            init_from_policy: false,
            lr: 1e-4,
            value_clip: 0.0,
            warmup_steps: 0,
            gae_lambda: 0.95,
            gae_gamma: 1.0,
            aggregate: Aggregate::Mean,
            mask_low_frac: 0.2,
            entropy_exclude_high_frac: 0.2,
            whiten: false,
        }
    }
}

impl CriticConfig {
    /// Check the values: (key, message) on error.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("critic.{k}"), m));
        if self.count == 0 || self.count > 16 {
            return bad("count", format!("{} must be in 1..=16", self.count));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("{} must be positive", self.lr));
        }
        for (k, v) in [("gae_lambda", self.gae_lambda), ("gae_gamma", self.gae_gamma)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(k, format!("{v} must be in [0, 1]"));
            }
        }
        if !(self.value_clip >= 0.0 && self.value_clip.is_finite()) {
            return bad("value_clip", format!("{} must be ≥ 0", self.value_clip));
        }
        let (k, h) = (self.mask_low_frac, self.entropy_exclude_high_frac);
        for (key, v) in [("mask_low_frac", k), ("entropy_exclude_high_frac", h)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, format!("{v} must be a fraction in [0, 1]"));
            }
        }
        if k + h > 1.0 {
            return bad(
                "mask_low_frac",
                format!("k = {k} and h = {h} (entropy_exclude_high_frac) must have k + h ≤ 1"),
            );
        }
        Ok(())
    }

    /// The critic's model configuration, from the policy's (full) configuration.
    pub fn model_config(&self, policy: &ModelConfig) -> Result<ModelConfig> {
        let mut c = policy.clone();
        c.hidden_size = self.hidden_size.unwrap_or(c.hidden_size);
        c.intermediate_size = self.intermediate_size.unwrap_or(c.intermediate_size);
        c.num_layers = self.num_layers.unwrap_or(c.num_layers);
        c.num_heads = self.num_heads.unwrap_or(c.num_heads);
        c.num_kv_heads = self.num_kv_heads.unwrap_or(c.num_kv_heads);
        if self.hidden_size.is_some() || self.num_heads.is_some() {
            if c.num_heads == 0 || !c.hidden_size.is_multiple_of(c.num_heads) {
                return Err(Error::Config {
                    file: "[critic]".into(),
                    key: "critic.num_heads".into(),
                    msg: format!("{} heads do not divide hidden_size {}", c.num_heads, c.hidden_size),
                });
            }
            c.head_dim = c.hidden_size / c.num_heads;
        }
        c.validate(Path::new("[critic]"))?;
        Ok(c)
    }
}
