//! Countdown: reach a target from a pool of numbers with + − × ÷ (ALGORITHMS.md §9).
//!
//! Prompt `15 12 15->18:`; a response writes one operation per line and ends with the whole
//! expression on its last line, e.g. `15+15=30\n30-12=18\n(15+15)-12`. The reward checks the last
//! line only: a well-formed expression using each pool number at most once (or exactly once) that
//! evaluates exactly (rational arithmetic) to the target.

use crate::rng::Rng;
use crate::tasks::rational::{parse_expression, Rational};

/// Generator settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CountdownConfig {
    /// Numbers in the pool (3 or 4).
    pub numbers: usize,
    /// Pool numbers are drawn from 1..=max_number.
    pub max_number: u64,
    /// Targets lie in 1..=max_target.
    pub max_target: u64,
    /// Every number must be used exactly once (else: at most once).
    pub exactly_once: bool,
    /// Fraction of number multisets reserved for the held-out split.
    pub heldout_fraction: f64,
}

impl Default for CountdownConfig {
    fn default() -> Self {
        CountdownConfig { numbers: 3, max_number: 20, max_target: 100, exactly_once: true, heldout_fraction: 0.1 }
    }
}

/// One instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Countdown {
    pub pool: Vec<u64>,
    pub target: u64,
}

/// A solution: the operation lines and the final expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solution {
    pub steps: Vec<String>,
    pub expression: String,
}

/// Apply `a op b` when the result is a positive integer (the generator's and solver's rule).
fn apply(a: u64, op: char, b: u64) -> Option<u64> {
    match op {
        '+' => a.checked_add(b),
        '-' if a > b => Some(a - b),
        '*' => a.checked_mul(b),
        '/' if b > 0 && a % b == 0 => Some(a / b),
        _ => None,
    }
}

/// Exhaustive search: combine two numbers at a time (positive-integer intermediates) until one
/// number is left; returns a solution reaching `target` using every number exactly once.
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

/// All targets in 1..=max reachable with every number used once.
fn reachable(pool: &[u64], max: u64) -> Vec<u64> {
    let mut out = std::collections::BTreeSet::new();
    fn go(vals: &[u64], max: u64, out: &mut std::collections::BTreeSet<u64>) {
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
    go(pool, max, &mut out);
    out.into_iter().collect()
}

/// Whether a number multiset belongs to the held-out split (a fixed hash of the sorted pool).
fn is_heldout(pool: &[u64], fraction: f64) -> bool {
    let mut sorted = pool.to_vec();
    sorted.sort_unstable();
    let h = sorted.iter().fold(0xC0DE_u64, |h, &x| crate::rng::mix64(h ^ x));
    (h % 10_000) as f64 / 10_000.0 < fraction
}

impl Countdown {
    /// The instance for (seed, split, index): split 0 = train, 1 = held-out (disjoint multisets).
    pub fn sample(cfg: &CountdownConfig, seed: u64, split: u64, index: u64) -> Self {
        let mut rng = Rng::derive(seed, &[0xC0_0D, split, index]);
        // Bounded: a draw is accepted with probability ≳ heldout_fraction·(solvable share).
        for _ in 0..100_000 {
            let pool: Vec<u64> = (0..cfg.numbers).map(|_| 1 + rng.below(cfg.max_number)).collect();
            if is_heldout(&pool, cfg.heldout_fraction) != (split == 1) {
                continue;
            }
            let targets = reachable(&pool, cfg.max_target);
            if targets.is_empty() {
                continue;
            }
            let target = targets[rng.below(targets.len() as u64) as usize];
            return Countdown { pool, target };
        }
        unreachable!("Countdown::sample: no instance in 100000 draws (config {cfg:?})")
    }

    /// The prompt, e.g. `15 12 15->18:`.
    pub fn prompt(&self) -> String {
        let nums: Vec<String> = self.pool.iter().map(u64::to_string).collect();
        format!("{}->{}:", nums.join(" "), self.target)
    }

    /// A step-by-step solution using every number once.
    pub fn solve(&self) -> Option<Solution> {
        let items: Vec<(u64, String)> = self.pool.iter().map(|&x| (x, x.to_string())).collect();
        let mut steps = Vec::new();
        let expression = search(&items, self.target, &mut steps)?;
        Some(Solution { steps, expression })
    }

    /// The solution as a response text (steps, then the expression), without EOS.
    pub fn solution_text(&self) -> Option<String> {
        let s = self.solve()?;
        Some(format!("{}\n{}", s.steps.join("\n"), s.expression))
    }

    /// 1 if the response's last non-empty line is a correct expression, else 0.
    pub fn reward(&self, response: &str, exactly_once: bool) -> f32 {
        let Some(last) = response.lines().rev().find(|l| !l.trim().is_empty()) else { return 0.0 };
        let Ok((value, used)) = parse_expression(last) else { return 0.0 };
        let mut pool = self.pool.clone();
        for n in used {
            match pool.iter().position(|&p| p == n) {
                Some(i) => {
                    pool.swap_remove(i);
                }
                None => return 0.0,
            }
        }
        if exactly_once && !pool.is_empty() {
            return 0.0;
        }
        (value == Rational::from_int(self.target as i64)) as u8 as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_checks_value_pool_and_usage() {
        let c = Countdown { pool: vec![15, 12, 15], target: 18 };
        assert_eq!(c.reward("15+15=30\n30-12=18\n(15+15)-12", true), 1.0);
        assert_eq!(c.reward("(15+15)-12\n", true), 1.0);
        assert_eq!(c.reward("15+15-12", true), 1.0);
        assert_eq!(c.reward("(15+15)-13", true), 0.0, "13 is not in the pool");
        assert_eq!(c.reward("(15+15+15)-12", true), 0.0, "15 used three times");
        assert_eq!(c.reward("15+3", true), 0.0, "wrong value");
        assert_eq!(c.reward("15/(12-12)", true), 0.0, "division by zero");
        assert_eq!(c.reward("(15+15-12", true), 0.0, "malformed");
        assert_eq!(c.reward("", true), 0.0);
        let d = Countdown { pool: vec![3, 4, 5], target: 7 };
        assert_eq!(d.reward("3+4", true), 0.0, "5 unused in exactly-once mode");
        assert_eq!(d.reward("3+4", false), 1.0, "at-most-once mode");
        let e = Countdown { pool: vec![6, 4, 3], target: 8 };
        assert_eq!(e.reward("6/3*4", true), 1.0, "exact rational arithmetic");
        assert_eq!(e.reward("4/6*3*6", true), 0.0);
    }

    #[test]
    fn generator_is_seeded_solvable_and_splits_are_disjoint() {
        let cfg = CountdownConfig::default();
        assert_eq!(Countdown::sample(&cfg, 1, 0, 5), Countdown::sample(&cfg, 1, 0, 5));
        for i in 0..300 {
            for split in [0, 1] {
                let c = Countdown::sample(&cfg, 9, split, i);
                assert_eq!(is_heldout(&c.pool, cfg.heldout_fraction), split == 1);
                let text = c.solution_text().expect("generated instances are solvable");
                assert_eq!(c.reward(&text, true), 1.0, "solver trace must earn the reward: {c:?} {text}");
                assert!(c.target >= 1 && c.target <= cfg.max_target);
            }
        }
        let four = CountdownConfig { numbers: 4, ..cfg };
        let c = Countdown::sample(&four, 2, 0, 0);
        assert_eq!(c.pool.len(), 4);
        assert_eq!(c.reward(&c.solution_text().unwrap(), true), 1.0);
    }
}
