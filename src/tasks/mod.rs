//! Verifiable tasks: problems are a pure function of (seed, split, index); rewards are exact.
//!
//! A [`Task`] hands out [`Problem`]s for the training and held-out splits and grades a model's
//! response with a [`Reward`] (1 correct, 0 wrong, minus an optional format penalty when the
//! response cannot be read at all). Tasks: [`countdown`] (the default RL task), multi-digit
//! [`arithmetic`] with column traces, datasets read from [`jsonl`] or [`parquet`] files (one
//! [`dataset::DatasetTask`], checked by [`answer`]), and the small `a+b=` [`AdditionTask`].
//! [`config::TaskConfig`] and [`config::build`] make one from TOML; [`fit::check_fits`] checks,
//! before a run starts, that its problems fit the model's context.

pub mod answer;
pub mod arithmetic;
pub mod config;
pub mod countdown;
pub mod dataset;
pub mod fit;
pub mod jsonl;
pub mod parquet;
pub mod rational;

pub use arithmetic::AdditionTask;
pub use config::{build, TaskConfig, TaskKind};
pub use countdown::CountdownTask;
pub use fit::{check_fits, ContextCheck};

/// Data splits: training problems and held-out problems never overlap.
pub const SPLIT_TRAIN: u64 = 0;
/// The held-out split.
pub const SPLIT_EVAL: u64 = 1;

/// One problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Identifier, unique within (task, split): the index for generators, the record number for datasets.
    pub id: u64,
    /// The text the model continues.
    pub prompt: String,
    /// The reference final answer (e.g. the Countdown target, the sum, the dataset's `answer`).
    pub answer: String,
    /// A reference response when the task can write one (solver trace ending in the final line),
    /// used for supervised warm starts; the same text as [`Task::solution`].
    pub solution: Option<String>,
}

/// The grade of one response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reward {
    /// The scalar reward: 1 correct, 0 wrong, `-format_penalty` when not well formed.
    pub score: f32,
    /// The response's answer is right.
    pub correct: bool,
    /// The response has the expected shape (e.g. its last line parses as an expression).
    pub well_formed: bool,
}

impl Reward {
    /// Score `correct` / `well_formed`: 1 if correct, else `-format_penalty` if malformed, else 0.
    pub fn new(correct: bool, well_formed: bool, format_penalty: f32) -> Self {
        let score = if correct {
            1.0
        } else if !well_formed {
            // (0 − p, not −p: without a penalty the score is +0.0, never a −0.0 that prints as "-0.0")
            0.0 - format_penalty
        } else {
            0.0
        };
        Reward { score, correct, well_formed: well_formed || correct }
    }
}

/// A verifiable task: seeded problems and an exact reward.
pub trait Task: Send + Sync {
    /// Short name (the config's `kind`).
    fn name(&self) -> &str;
    /// The problem for (split, index): a pure function of the task's seed, `split` and `index`.
    fn problem(&self, split: u64, index: u64) -> Problem;
    /// Number of distinct problems in `split`; `None` for an unbounded generator. Finite tasks
    /// wrap around: `problem(split, i)` equals `problem(split, i % len)`.
    fn len(&self, _split: u64) -> Option<u64> {
        None
    }
    /// Grade `response` (EOS stripped) to `problem`, without format penalty (see [`FormatPenalty`]).
    fn grade(&self, problem: &Problem, response: &str) -> Reward;
    /// The scalar reward, `grade(..).score`.
    fn reward(&self, problem: &Problem, response: &str) -> f32 {
        self.grade(problem, response).score
    }
    /// A reference response (step-by-step trace) for supervised training, if the task has one.
    fn solution(&self, problem: &Problem) -> Option<String> {
        problem.solution.clone()
    }
    /// The dataset record that `problem(split, index)` is made of, borrowed, with the file and
    /// line it was read from; `None` for a generated problem.
    fn record(&self, _split: u64, _index: u64) -> Option<SourceRecord<'_>> {
        None
    }
    /// A hash of the records a dataset task trains and evaluates on (each split's prompts,
    /// answers and solutions, in order): a resume compares it with the checkpoint's, since
    /// problem i is record i of whatever the file holds now. `None` for a generator, which its
    /// config determines.
    fn fingerprint(&self) -> Option<u64> {
        None
    }
}

/// A dataset record as [`Task::record`] lends it: where it was read and the text a run trains on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceRecord<'a> {
    pub file: &'a std::path::Path,
    /// 1-based line (or row) in `file`.
    pub line: usize,
    pub prompt: &'a str,
    pub solution: Option<&'a str>,
}

/// Wraps a task so that malformed responses score `-penalty` instead of 0.
pub struct FormatPenalty {
    /// The wrapped task.
    pub task: Box<dyn Task>,
    /// Subtracted from the reward of a response that is not well formed (≥ 0).
    pub penalty: f32,
}

impl Task for FormatPenalty {
    fn name(&self) -> &str {
        self.task.name()
    }
    fn problem(&self, split: u64, index: u64) -> Problem {
        self.task.problem(split, index)
    }
    fn len(&self, split: u64) -> Option<u64> {
        self.task.len(split)
    }
    fn grade(&self, problem: &Problem, response: &str) -> Reward {
        let r = self.task.grade(problem, response);
        Reward::new(r.correct, r.well_formed, self.penalty)
    }
    fn solution(&self, problem: &Problem) -> Option<String> {
        self.task.solution(problem)
    }
    fn record(&self, split: u64, index: u64) -> Option<SourceRecord<'_>> {
        self.task.record(split, index)
    }
    fn fingerprint(&self) -> Option<u64> {
        self.task.fingerprint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_reward_their_own_solutions() {
        let tasks: Vec<Box<dyn Task>> = vec![
            Box::new(AdditionTask { seed: 3, max_digits: 3, heldout_fraction: 0.1 }),
            Box::new(CountdownTask { seed: 3, cfg: countdown::CountdownConfig::default() }),
            Box::new(arithmetic::ArithmeticTask { seed: 3, cfg: arithmetic::ArithmeticConfig::default() }),
        ];
        for t in &tasks {
            for i in 0..50 {
                let p = t.problem(SPLIT_TRAIN, i);
                let sol = t.solution(&p).unwrap();
                assert_eq!(t.grade(&p, &sol), Reward { score: 1.0, correct: true, well_formed: true }, "{p:?}");
                assert_eq!(t.reward(&p, "garbage"), 0.0);
                assert_ne!(p, t.problem(SPLIT_EVAL, i));
                assert_eq!(p.id, i);
            }
        }
    }

    #[test]
    fn format_penalty_applies_only_to_malformed_responses() {
        let t = FormatPenalty {
            task: Box::new(AdditionTask { seed: 1, max_digits: 2, heldout_fraction: 0.1 }),
            penalty: 0.5,
        };
        let p = t.problem(SPLIT_TRAIN, 0);
        assert_eq!(t.reward(&p, &p.answer), 1.0);
        assert_eq!(t.reward(&p, "1000"), 0.0, "well formed but wrong");
        assert_eq!(t.grade(&p, "abc"), Reward { score: -0.5, correct: false, well_formed: false });
        assert_eq!(t.name(), "addition");
        assert_eq!(Reward::new(true, false, 1.0).score, 1.0);
    }
}
