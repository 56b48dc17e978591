//! Multi-turn environments (ALGORITHMS.md §8: env-level async, redundant environments).
//!
//! An [`Env`] is an episode the policy plays turn by turn: `reset` gives the first observation,
//! each `step` takes the policy's response text and answers with the next observation, whether
//! the episode is over, and its reward. Environments may be slow and may fail; [`latency`] wraps
//! any environment with configured reset/step latency distributions (real sleeps) and a failure
//! rate, and [`runner`] plays many of them against the model: synchronously (a barrier at every
//! turn) or env-level async (each environment its own loop), with redundant groups and retries.
//!
//! Training takes every turn as one sample: prompt = the conversation so far, response = the
//! policy's tokens of that turn, advantage = its trajectory's group advantage. The environment's
//! observation tokens are never trained on (they sit in later turns' prompts).

pub mod config;
pub mod guess;
pub mod latency;
pub mod runner;

pub use config::{EnvConfig, EnvMode};
pub use runner::{rollout, EnvRollout, Generator, Trajectory, TurnRecord};

/// One answer of an environment to an action.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// Text appended to the conversation after the action (empty when done).
    pub observation: String,
    pub done: bool,
    /// Reward of the episode (read when `done`).
    pub reward: f32,
}

/// An environment call that failed (a crashed tool, a timeout); the runner may retry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFailure(pub String);

impl std::fmt::Display for EnvFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A multi-turn environment: one episode at a time.
pub trait Env: Send {
    /// Start the episode; returns the first observation (the prompt text).
    fn reset(&mut self) -> Result<String, EnvFailure>;
    /// Apply the policy's response text.
    fn step(&mut self, action: &str) -> Result<Turn, EnvFailure>;
}
