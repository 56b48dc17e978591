//! Countdown: reach a target from a pool of numbers with + − × ÷ (ALGORITHMS.md §9).
//!
//! Prompt `15 12 15->18:`; a response writes one operation per line and ends with the whole
//! expression on its last line, e.g. `15+15=30\n30-12=18\n(15+15)-12`. The reward checks the last
//! non-empty line only: a well-formed expression using each pool number at most once (or exactly
//! once) that evaluates exactly (rational arithmetic) to the target.
//!
//! Instances are drawn so that the target is reachable using every pool number, combining two
//! numbers at a time with positive-integer intermediates (n numbers: n − 1 steps). A fixed hash of
//! the sorted pool sends about `heldout_fraction` of all number multisets to the held-out split only.

use std::collections::BTreeSet;

use crate::rng::{mix64, Rng};
use crate::tasks::rational::{parse_expression, ExprError, Rational};
use crate::tasks::{Problem, Reward, Task, SPLIT_EVAL};

/// Generator and checker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CountdownConfig {
    /// Numbers in the pool (2..=4).
    pub numbers: usize,
    /// Pool numbers are drawn from 1..=max_number.
    pub max_number: u64,
    /// Targets lie in 1..=max_target.
    pub max_target: u64,
    /// Every number must be used exactly once (else: at most once).
    pub exactly_once: bool,
    /// Fraction of number multisets reserved for the held-out split (0.01..=0.99).
    pub heldout_fraction: f64,
}

impl Default for CountdownConfig {
    /// ALGORITHMS.md §9: 3 numbers in 1..=20, targets in 1..=100, exactly once, 10 % held out.
    fn default() -> Self {
        CountdownConfig { numbers: 3, max_number: 20, max_target: 100, exactly_once: true, heldout_fraction: 0.1 }
    }
}

impl CountdownConfig {
    /// Difficulty presets: 1 = 3 numbers in 1..=10, targets ≤ 50; 2 = the default (3 in 1..=20,
    /// targets ≤ 100); 3 = 4 numbers in 1..=20, targets ≤ 100; 4 = 4 numbers in 1..=50, targets ≤ 500.
    pub fn level(level: u32) -> Option<Self> {
        let (numbers, max_number, max_target) = match level {
            1 => (3, 10, 50),
            2 => (3, 20, 100),
            3 => (4, 20, 100),
            4 => (4, 50, 500),
            _ => return None,
        };
        Some(CountdownConfig { numbers, max_number, max_target, ..Self::default() })
    }

    /// Check the settings; on error returns the offending key and why. Valid settings guarantee
    /// that both splits hold solvable instances (every pool reaches some target ≤ numbers·max_number).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(2..=4).contains(&self.numbers) {
            return Err(("numbers", format!("{} is not in 2..=4", self.numbers)));
        }
        if !(1..=1000).contains(&self.max_number) {
            return Err(("max_number", format!("{} is not in 1..=1000", self.max_number)));
        }
        let min_target = self.numbers as u64 * self.max_number;
        if self.max_target < min_target || self.max_target > 1_000_000 {
            return Err((
                "max_target",
                format!("{} is not in numbers*max_number ({min_target})..=1000000", self.max_target),
            ));
        }
        if !(0.01..=0.99).contains(&self.heldout_fraction) {
            return Err(("heldout_fraction", format!("{} is not in 0.01..=0.99", self.heldout_fraction)));
        }
        // Both splits must own at least one multiset: enumerate sorted pools until both are seen.
        let (mut train, mut eval) = (false, false);
        let mut pool = vec![1u64; self.numbers];
        loop {
            if is_heldout(&pool, self.heldout_fraction) {
                eval = true;
            } else {
                train = true;
            }
            if train && eval {
                return Ok(());
            }
            // Next non-decreasing sequence in 1..=max_number.
            let Some(k) = (0..pool.len()).rev().find(|&k| pool[k] < self.max_number) else {
                return Err(("max_number", "too few number multisets to hold out a split".into()));
            };
            let v = pool[k] + 1;
            pool[k..].iter_mut().for_each(|x| *x = v);
        }
    }
}

/// One instance: the pool and the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Countdown {
    /// The numbers, in prompt order.
    pub pool: Vec<u64>,
    /// The value to reach.
    pub target: u64,
}

/// A solution: the operation lines (`a op b = c`) and the final expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solution {
    /// One line per operation, e.g. `15+15=30`.
    pub steps: Vec<String>,
    /// The whole computation as one expression, e.g. `(15+15)-12`.
    pub expression: String,
}

/// The outcome of checking a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Uses the pool correctly and evaluates exactly to the target.
    Correct,
    /// Valid, but evaluates to this value.
    WrongValue(Rational),
    /// Uses a number that is not in the pool.
    NotInPool(u64),
    /// Uses a pool number more often than it occurs in the pool.
    Reused(u64),
    /// Exactly-once mode: these pool numbers are not used.
    Unused(Vec<u64>),
    /// The last line is not a valid expression (malformed, division by zero, overflow).
    Invalid(ExprError),
    /// The response has no non-empty line.
    Empty,
}

impl Verdict {
    /// Whether the response earns the reward.
    pub fn is_correct(&self) -> bool {
        *self == Verdict::Correct
    }
    /// Whether the last line parses as an expression (division by zero and overflow count as well formed).
    pub fn is_well_formed(&self) -> bool {
        !matches!(self, Verdict::Empty | Verdict::Invalid(ExprError::Malformed(_)))
    }
}

/// Apply `a op b` when the result is a positive integer (the generator's and solver's rule).
fn apply(a: u64, op: char, b: u64) -> Option<u64> {
    match op {
        '+' => a.checked_add(b),
        '-' if a > b => Some(a - b),
        '*' => a.checked_mul(b),
        '/' if b > 0 && (a / b) * b == a => Some(a / b),
        _ => None,
    }
}

/// Exhaustive search over operation orders: combine two numbers at a time (positive-integer
/// intermediates) until one is left; returns an expression reaching `target` using every item once.
fn search(items: &[(u64, String)], target: u64, steps: &mut Vec<String>) -> Option<String> {
    if items.len() == 1 {
        return (items[0].0 == target).then(|| items[0].1.clone());
    }
    for i in 0..items.len() {
        for j in 0..items.len() {
            if i == j {
                continue;
            }
            for op in ['+', '-', '*', '/'] {
                if (op == '+' || op == '*') && i > j {
                    continue; // commutative: try one order
                }
                let Some(v) = apply(items[i].0, op, items[j].0) else { continue };
                let wrap = |s: &str| if s.contains(['+', '-', '*', '/']) { format!("({s})") } else { s.to_string() };
                let expr = format!("{}{op}{}", wrap(&items[i].1), wrap(&items[j].1));
                let mut rest: Vec<(u64, String)> =
                    items.iter().enumerate().filter(|(k, _)| *k != i && *k != j).map(|(_, x)| x.clone()).collect();
                rest.push((v, expr));
                steps.push(format!("{}{op}{}={v}", items[i].0, items[j].0));
                if let Some(e) = search(&rest, target, steps) {
                    return Some(e);
                }
                steps.pop();
            }
        }
    }
    None
}

/// All targets in 1..=max reachable with every number used once (positive-integer intermediates).
fn reachable(pool: &[u64], max: u64) -> Vec<u64> {
    fn go(vals: &[u64], max: u64, out: &mut BTreeSet<u64>) {
        if vals.len() == 1 {
            if (1..=max).contains(&vals[0]) {
                out.insert(vals[0]);
            }
            return;
        }
        for i in 0..vals.len() {
            for j in 0..vals.len() {
                if i == j {
                    continue;
                }
                for op in ['+', '-', '*', '/'] {
                    if let Some(v) = apply(vals[i], op, vals[j]) {
                        let mut rest: Vec<u64> =
                            vals.iter().enumerate().filter(|(k, _)| *k != i && *k != j).map(|(_, &x)| x).collect();
                        rest.push(v);
                        go(&rest, max, out);
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    go(pool, max, &mut out);
    out.into_iter().collect()
}

/// Whether a number multiset belongs to the held-out split (a fixed hash of the sorted pool, so
/// every ordering of the same numbers lands in the same split, independent of the seed).
pub fn is_heldout(pool: &[u64], fraction: f64) -> bool {
    let mut sorted = pool.to_vec();
    sorted.sort_unstable();
    let h = sorted.iter().fold(0xC0DE_u64, |h, &x| mix64(h ^ x));
    (h % 10_000) as f64 / 10_000.0 < fraction
}

/// Bound on generator draws per instance (validated configs need ~1/heldout_fraction).
const MAX_DRAWS: usize = 1_000_000;

impl Countdown {
    /// The instance for (seed, split, index): split 1 ([`SPLIT_EVAL`]) = held-out multisets,
    /// any other split = training multisets. Panics only for configs that fail [`CountdownConfig::validate`].
    pub fn sample(cfg: &CountdownConfig, seed: u64, split: u64, index: u64) -> Self {
        let mut rng = Rng::derive(seed, &[0xC0_0D, split, index]);
        for _ in 0..MAX_DRAWS {
            let pool: Vec<u64> = (0..cfg.numbers).map(|_| 1 + rng.below(cfg.max_number.max(1))).collect();
            if is_heldout(&pool, cfg.heldout_fraction) != (split == SPLIT_EVAL) {
                continue;
            }
            let targets = reachable(&pool, cfg.max_target);
            if targets.is_empty() {
                continue;
            }
            let target = targets[rng.below(targets.len() as u64) as usize];
            return Countdown { pool, target };
        }
        panic!("Countdown::sample: no instance in {MAX_DRAWS} draws; the config {cfg:?} fails validate()")
    }

    /// Parse a prompt `a b c->t:` back into an instance.
    pub fn from_prompt(prompt: &str) -> Option<Self> {
        let (nums, target) = prompt.trim_end().strip_suffix(':')?.split_once("->")?;
        let pool = nums.split_whitespace().map(|n| n.parse().ok()).collect::<Option<Vec<u64>>>()?;
        Some(Countdown { pool, target: target.trim().parse().ok()? })
    }

    /// The prompt, e.g. `15 12 15->18:`.
    pub fn prompt(&self) -> String {
        let nums: Vec<String> = self.pool.iter().map(u64::to_string).collect();
        format!("{}->{}:", nums.join(" "), self.target)
    }

    /// A step-by-step solution using every number once (positive-integer intermediates).
    pub fn solve(&self) -> Option<Solution> {
        let items: Vec<(u64, String)> = self.pool.iter().map(|&x| (x, x.to_string())).collect();
        let mut steps = Vec::new();
        let expression = search(&items, self.target, &mut steps)?;
        Some(Solution { steps, expression })
    }

    /// Like [`Countdown::solve`]; when `exactly_once` is false and no full solution exists, also
    /// tries sub-pools, largest first.
    pub fn solve_with(&self, exactly_once: bool) -> Option<Solution> {
        if let Some(s) = self.solve() {
            return Some(s);
        }
        if exactly_once {
            return None;
        }
        let n = self.pool.len();
        let mut masks: Vec<u32> = (1..(1u32 << n) - 1).collect();
        masks.sort_by_key(|m| std::cmp::Reverse(m.count_ones()));
        masks.into_iter().find_map(|m| {
            let pool = (0..n).filter(|k| m & (1 << k) != 0).map(|k| self.pool[k]).collect();
            Countdown { pool, target: self.target }.solve()
        })
    }

    /// The solution as a response text (steps, then the expression line), without EOS.
    pub fn solution_text(&self) -> Option<String> {
        self.solution_text_with(true)
    }

    /// [`Countdown::solution_text`] for the given usage mode.
    pub fn solution_text_with(&self, exactly_once: bool) -> Option<String> {
        let s = self.solve_with(exactly_once)?;
        let mut lines = s.steps;
        lines.push(s.expression);
        Some(lines.join("\n"))
    }

    /// Check the response's last non-empty line against the pool and the target.
    pub fn check(&self, response: &str, exactly_once: bool) -> Verdict {
        let Some(last) = response.lines().rev().find(|l| !l.trim().is_empty()) else { return Verdict::Empty };
        let (value, used) = match parse_expression(last) {
            Ok(x) => x,
            Err(e) => return Verdict::Invalid(e),
        };
        let mut left = self.pool.clone();
        for n in used {
            match left.iter().position(|&p| p == n) {
                Some(i) => {
                    left.swap_remove(i);
                }
                None if self.pool.contains(&n) => return Verdict::Reused(n),
                None => return Verdict::NotInPool(n),
            }
        }
        if exactly_once && !left.is_empty() {
            left.sort_unstable();
            return Verdict::Unused(left);
        }
        let target = i64::try_from(self.target).map(Rational::from_int).ok();
        if Some(value) == target {
            Verdict::Correct
        } else {
            Verdict::WrongValue(value)
        }
    }

    /// 1 if the response's last non-empty line is a correct expression, else 0.
    pub fn reward(&self, response: &str, exactly_once: bool) -> f32 {
        if self.check(response, exactly_once).is_correct() {
            1.0
        } else {
            0.0
        }
    }
}

/// The Countdown [`Task`]: seeded instances, solver traces as solutions, exact checking.
pub struct CountdownTask {
    /// Seed of the problem stream.
    pub seed: u64,
    /// Generator and checker settings.
    pub cfg: CountdownConfig,
}

impl Task for CountdownTask {
    fn name(&self) -> &str {
        "countdown"
    }
    fn problem(&self, split: u64, index: u64) -> Problem {
        let c = Countdown::sample(&self.cfg, self.seed, split, index);
        Problem {
            id: index,
            prompt: c.prompt(),
            answer: c.target.to_string(),
            solution: c.solution_text_with(self.cfg.exactly_once),
        }
    }
    fn grade(&self, problem: &Problem, response: &str) -> Reward {
        let Some(c) = Countdown::from_prompt(&problem.prompt) else { return Reward::new(false, false, 0.0) };
        let v = c.check(response, self.cfg.exactly_once);
        Reward::new(v.is_correct(), v.is_well_formed(), 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_failure() {
        let c = Countdown { pool: vec![15, 12, 15], target: 18 };
        assert_eq!(c.check("15+15=30\n30-12=18\n(15+15)-12", true), Verdict::Correct);
        assert_eq!(c.check("(15+15)-12\n\n", true), Verdict::Correct);
        assert_eq!(c.check("(15+15)-13", true), Verdict::NotInPool(13));
        assert_eq!(c.check("(15+15+15)-12", true), Verdict::Reused(15));
        assert_eq!(c.check("15+12", false), Verdict::WrongValue(Rational::from_int(27)));
        assert_eq!(c.check("15+12", true), Verdict::Unused(vec![15]));
        assert_eq!(c.check("15/(12-12)", false), Verdict::Invalid(ExprError::DivisionByZero));
        assert!(matches!(c.check("(15+15-12", true), Verdict::Invalid(ExprError::Malformed(_))));
        assert_eq!(c.check(" \n", true), Verdict::Empty);
        assert!(!Verdict::Empty.is_well_formed() && Verdict::NotInPool(3).is_well_formed());
        let e = Countdown { pool: vec![6, 4, 3], target: 8 };
        assert_eq!(e.reward("6/3*4", true), 1.0, "exact rational arithmetic");
        assert_eq!(e.reward("4/(6/3)*4", false), 0.0, "4 is in the pool once");
    }

    #[test]
    fn prompt_round_trips_and_presets_validate() {
        let c = Countdown { pool: vec![15, 12, 15], target: 18 };
        assert_eq!(c.prompt(), "15 12 15->18:");
        assert_eq!(Countdown::from_prompt(&c.prompt()), Some(c));
        assert_eq!(Countdown::from_prompt("1 2->x:"), None);
        for level in 1..=4 {
            let cfg = CountdownConfig::level(level).unwrap();
            assert_eq!(cfg.validate(), Ok(()), "level {level}");
        }
        assert_eq!(CountdownConfig::level(5), None);
        assert_eq!(CountdownConfig { numbers: 5, ..Default::default() }.validate().unwrap_err().0, "numbers");
        assert_eq!(CountdownConfig { max_target: 10, ..Default::default() }.validate().unwrap_err().0, "max_target");
        let tiny = CountdownConfig { numbers: 2, max_number: 1, max_target: 2, ..Default::default() };
        assert_eq!(tiny.validate().unwrap_err().0, "max_number");
    }

    #[test]
    fn at_most_once_solver_uses_sub_pools() {
        let c = Countdown { pool: vec![3, 4, 50], target: 7 };
        assert_eq!(c.solve_with(true), None);
        let text = c.solution_text_with(false).unwrap();
        assert_eq!(c.reward(&text, false), 1.0, "{text}");
        let single = Countdown { pool: vec![7, 11, 13], target: 7 };
        assert_eq!(single.solution_text_with(false).as_deref(), Some("7"));
    }
}
