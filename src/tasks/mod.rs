//! Verifiable tasks: problems are a pure function of (seed, split, index); rewards are exact.

pub mod arithmetic;
pub mod countdown;
pub mod rational;

/// Data splits: training problems and held-out problems never overlap.
pub const SPLIT_TRAIN: u64 = 0;
/// The held-out split.
pub const SPLIT_EVAL: u64 = 1;

/// One problem: its prompt and, when the task can produce one, a reference solution text
/// (the response a solver writes, used for supervised warm starts).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub prompt: String,
    pub solution: Option<String>,
}

/// A verifiable task: seeded problems and an exact reward (1 correct, 0 wrong).
pub trait Task: Send + Sync {
    /// Short name (config value).
    fn name(&self) -> &str;
    /// The problem for (split, index).
    fn problem(&self, split: u64, index: u64) -> Problem;
    /// Reward of `response` (EOS stripped) to the problem with this prompt.
    fn reward(&self, problem: &Problem, response: &str) -> f32;
}

/// `a+b=` → `c` with operands of up to `max_digits` digits.
pub struct AdditionTask {
    pub seed: u64,
    pub max_digits: u32,
}

impl AdditionTask {
    fn parse(prompt: &str) -> Option<arithmetic::Addition> {
        let (a, b) = prompt.strip_suffix('=')?.split_once('+')?;
        Some(arithmetic::Addition { a: a.parse().ok()?, b: b.parse().ok()? })
    }
}

impl Task for AdditionTask {
    fn name(&self) -> &str {
        "addition"
    }
    fn problem(&self, split: u64, index: u64) -> Problem {
        let p = arithmetic::Addition::sample(self.seed, split, index, self.max_digits);
        let answer = p.answer();
        Problem { prompt: p.prompt(), solution: Some(answer.trim_end().to_string()) }
    }
    fn reward(&self, problem: &Problem, response: &str) -> f32 {
        Self::parse(&problem.prompt).map_or(0.0, |p| p.reward(response))
    }
}

/// Countdown (see `countdown`).
pub struct CountdownTask {
    pub seed: u64,
    pub cfg: countdown::CountdownConfig,
}

impl CountdownTask {
    fn parse(prompt: &str) -> Option<countdown::Countdown> {
        let (nums, target) = prompt.strip_suffix(':')?.split_once("->")?;
        let pool = nums.split_whitespace().map(|n| n.parse().ok()).collect::<Option<Vec<u64>>>()?;
        Some(countdown::Countdown { pool, target: target.trim().parse().ok()? })
    }
}

impl Task for CountdownTask {
    fn name(&self) -> &str {
        "countdown"
    }
    fn problem(&self, split: u64, index: u64) -> Problem {
        let c = countdown::Countdown::sample(&self.cfg, self.seed, split, index);
        Problem { prompt: c.prompt(), solution: c.solution_text() }
    }
    fn reward(&self, problem: &Problem, response: &str) -> f32 {
        Self::parse(&problem.prompt).map_or(0.0, |c| c.reward(response, self.cfg.exactly_once))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_reward_their_own_solutions() {
        let tasks: Vec<Box<dyn Task>> = vec![
            Box::new(AdditionTask { seed: 3, max_digits: 3 }),
            Box::new(CountdownTask { seed: 3, cfg: countdown::CountdownConfig::default() }),
        ];
        for t in &tasks {
            for i in 0..50 {
                let p = t.problem(SPLIT_TRAIN, i);
                let sol = p.solution.clone().unwrap();
                assert_eq!(t.reward(&p, &sol), 1.0, "{} {:?}", t.name(), p);
                assert_eq!(t.reward(&p, "garbage"), 0.0);
                assert_ne!(p, t.problem(SPLIT_EVAL, i));
            }
        }
    }
}
