//! Multi-digit addition problems `a+b=c` (answers checkable exactly), seeded per example index.

use crate::rng::Rng;

/// One problem: the prompt `a+b=` and the answer `c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addition {
    pub a: u64,
    pub b: u64,
}

impl Addition {
    /// The problem for (seed, split, index): operands with 1..=max_digits digits.
    pub fn sample(seed: u64, split: u64, index: u64, max_digits: u32) -> Self {
        let mut rng = Rng::derive(seed, &[0xADD, split, index]);
        let operand = |rng: &mut Rng| {
            let digits = 1 + rng.below(max_digits as u64) as u32;
            rng.below(10u64.pow(digits))
        };
        let a = operand(&mut rng);
        let b = operand(&mut rng);
        Addition { a, b }
    }

    /// The prompt text, e.g. `17+5=`.
    pub fn prompt(&self) -> String {
        format!("{}+{}=", self.a, self.b)
    }

    /// The answer text followed by a newline, e.g. `22\n`.
    pub fn answer(&self) -> String {
        format!("{}\n", self.a + self.b)
    }

    /// Reward: 1 when `response` (up to the first newline) is the exact sum.
    pub fn reward(&self, response: &str) -> f32 {
        let line = response.split('\n').next().unwrap_or("").trim();
        if line.parse::<u64>().ok() == Some(self.a + self.b) {
            1.0
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_seeded_and_checkable() {
        let p = Addition::sample(1, 0, 7, 3);
        assert_eq!(p, Addition::sample(1, 0, 7, 3));
        assert_ne!(p, Addition::sample(1, 1, 7, 3));
        assert!(p.a < 1000 && p.b < 1000);
        assert_eq!(p.reward(&format!("{}\nextra", p.a + p.b)), 1.0);
        assert_eq!(p.reward(&format!("{}", p.a + p.b + 1)), 0.0);
        assert_eq!(p.reward("abc"), 0.0);
    }
}
