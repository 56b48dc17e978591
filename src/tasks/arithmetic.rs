//! Multi-digit arithmetic: the small `a+b=c` [`Addition`] problem (answer only) and
//! [`Column`] problems (`+ - *`) whose reference solutions are column-method traces, one step per
//! line, ending in the answer:
//!
//! - `457+68=`: `7+8+0=15`, `5+6+1=12`, `4+0+1=5`, `525` (digit + digit + carry per column);
//! - `502-68=`: `12-0-8=4`, `10-1-6=3`, `5-1-0=4`, `434` (a borrowed ten is written in front of the top digit);
//! - `457*68=`: `457*8=3656`, `457*60=27420`, `3656+27420=31076`, `31076` (partial products, running sums).
//!
//! The reward reads the last non-empty line as the answer.

use crate::rng::{mix64, Rng};
use crate::tasks::{Problem, Reward, Task, SPLIT_EVAL};

/// Whether the problem `a op b` belongs to the held-out split: a fixed hash (independent of the
/// seed) of the problem with the operands of `+` and `*` in order, so `3+8` and `8+3` (the same
/// fact) fall in the same split.
fn heldout(a: u64, op: char, b: u64, fraction: f64) -> bool {
    let (a, b) = if matches!(op, '+' | '*') { (a.min(b), a.max(b)) } else { (a, b) };
    let h = mix64(mix64(mix64(0xA217 ^ a) ^ op as u64) ^ b);
    (h % 10_000) as f64 / 10_000.0 < fraction
}

/// For operand ranges small enough to list (at most 2^22 pairs an operation), the number of
/// problems `(a, op, b)` with `a`, `b` in `lo..hi` (`-`: `a ≥ b`) of each split: (training,
/// held-out). `None`: too many to list (then both splits hold many, for a fraction in
/// 0.01..=0.99).
fn split_sizes(ops: &[char], lo: u64, hi: u64, fraction: f64) -> Option<(u64, u64)> {
    let n = hi - lo;
    if n.checked_mul(n)? > 1 << 22 {
        return None;
    }
    let (mut train, mut eval) = (0, 0);
    for &op in ops {
        for a in lo..hi {
            let first_b = if matches!(op, '+' | '*') { a } else { lo };
            for b in first_b..hi {
                if op == '-' && a < b {
                    continue;
                }
                if heldout(a, op, b, fraction) {
                    eval += 1;
                } else {
                    train += 1;
                }
            }
        }
    }
    Some((train, eval))
}

/// The error of a held-out fraction that leaves a split without problems, if it does.
fn check_split_sizes(ops: &[char], lo: u64, hi: u64, fraction: f64) -> Result<(), (&'static str, String)> {
    match split_sizes(ops, lo, hi, fraction) {
        Some((train, eval)) if train == 0 || eval == 0 => Err((
            "heldout_fraction",
            format!(
                "{fraction} of the {} distinct problems leaves {train} for training and {eval} held out; \
                 choose another fraction or more digits",
                train + eval
            ),
        )),
        _ => Ok(()),
    }
}

/// One problem: the prompt `a+b=` and the answer `c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addition {
    /// First operand.
    pub a: u64,
    /// Second operand.
    pub b: u64,
}

impl Addition {
    /// The problem for (seed, split, index): operands with 1..=max_digits digits; the held-out
    /// split ([`SPLIT_EVAL`]) holds the sums whose operand pair hashes into `heldout_fraction`
    /// (either order), the other splits the rest. Panics only for settings that fail
    /// [`Addition::validate`].
    pub fn sample(seed: u64, split: u64, index: u64, max_digits: u32, heldout_fraction: f64) -> Self {
        let mut rng = Rng::derive(seed, &[0xADD, split, index]);
        let operand = |rng: &mut Rng| {
            let digits = 1 + rng.below(max_digits as u64) as u32;
            rng.below(10u64.pow(digits))
        };
        for _ in 0..MAX_DRAWS {
            let a = operand(&mut rng);
            let b = operand(&mut rng);
            if heldout(a, '+', b, heldout_fraction) == (split == SPLIT_EVAL) {
                return Addition { a, b };
            }
        }
        panic!("Addition::sample: no problem in {MAX_DRAWS} draws; max_digits {max_digits} fails validate()")
    }

    /// Check the settings of the `addition` task; on error returns the offending key and why.
    pub fn validate(max_digits: u32, heldout_fraction: f64) -> Result<(), (&'static str, String)> {
        if !(1..=18).contains(&max_digits) {
            return Err(("max_digits", format!("{max_digits} is not in 1..=18")));
        }
        if !(0.01..=0.99).contains(&heldout_fraction) {
            return Err(("heldout_fraction", format!("{heldout_fraction} is not in 0.01..=0.99")));
        }
        check_split_sizes(&['+'], 0, 10u64.pow(max_digits.min(4)), heldout_fraction)
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

/// A column-arithmetic operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `+` with carries.
    Add,
    /// `-` with borrows (the generator keeps `a ≥ b`).
    Sub,
    /// `*` by partial products.
    Mul,
}

impl Op {
    /// The operator character.
    pub fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
        }
    }
    /// The operation for `c` in `+ - *`.
    pub fn from_symbol(c: char) -> Option<Op> {
        match c {
            '+' => Some(Op::Add),
            '-' => Some(Op::Sub),
            '*' => Some(Op::Mul),
            _ => None,
        }
    }
}

/// Settings of the column-arithmetic generator.
#[derive(Debug, Clone, PartialEq)]
pub struct ArithmeticConfig {
    /// Operations drawn uniformly, e.g. `"+-*"`.
    pub ops: String,
    /// Operands have min_digits..=max_digits digits (1..=9).
    pub min_digits: u32,
    /// See `min_digits`.
    pub max_digits: u32,
    /// Fraction of (a, op, b) triples reserved for the held-out split.
    pub heldout_fraction: f64,
}

impl Default for ArithmeticConfig {
    /// `+ - *` on operands of 1..=3 digits, 10 % held out.
    fn default() -> Self {
        ArithmeticConfig { ops: "+-*".into(), min_digits: 1, max_digits: 3, heldout_fraction: 0.1 }
    }
}

impl ArithmeticConfig {
    /// Check the settings; on error returns the offending key and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.ops.is_empty() || !self.ops.chars().all(|c| Op::from_symbol(c).is_some()) {
            return Err(("ops", format!("{:?} must be a non-empty string of `+`, `-`, `*`", self.ops)));
        }
        if !(1..=9).contains(&self.max_digits) {
            return Err(("max_digits", format!("{} is not in 1..=9", self.max_digits)));
        }
        if !(1..=self.max_digits).contains(&self.min_digits) {
            return Err(("min_digits", format!("{} is not in 1..=max_digits ({})", self.min_digits, self.max_digits)));
        }
        if !(0.01..=0.99).contains(&self.heldout_fraction) {
            return Err(("heldout_fraction", format!("{} is not in 0.01..=0.99", self.heldout_fraction)));
        }
        let ops: Vec<char> = self.ops.chars().collect();
        let lo = if self.min_digits == 1 { 0 } else { 10u64.pow(self.min_digits - 1) };
        check_split_sizes(&ops, lo, 10u64.pow(self.max_digits), self.heldout_fraction)
    }
}

/// One column-arithmetic problem `a op b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// First operand.
    pub a: u64,
    /// The operation.
    pub op: Op,
    /// Second operand.
    pub b: u64,
}

/// Decimal digits of `x`, least significant first (`0` → `[0]`).
fn digits(mut x: u64) -> Vec<u64> {
    let mut d = vec![x % 10];
    x /= 10;
    while x > 0 {
        d.push(x % 10);
        x /= 10;
    }
    d
}

/// Whether a problem belongs to the held-out split (see [`heldout`]).
fn column_heldout(c: &Column, fraction: f64) -> bool {
    heldout(c.a, c.op.symbol(), c.b, fraction)
}

/// Bound on generator draws per problem.
const MAX_DRAWS: usize = 100_000;

impl Column {
    /// The problem for (seed, split, index); held-out problems ([`SPLIT_EVAL`]) never occur in
    /// other splits. Panics only for configs that fail [`ArithmeticConfig::validate`].
    pub fn sample(cfg: &ArithmeticConfig, seed: u64, split: u64, index: u64) -> Self {
        let ops: Vec<Op> = cfg.ops.chars().filter_map(Op::from_symbol).collect();
        let mut rng = Rng::derive(seed, &[0xA217, split, index]);
        let operand = |rng: &mut Rng| {
            let d = cfg.min_digits + rng.below(u64::from(cfg.max_digits - cfg.min_digits + 1)) as u32;
            let lo = if d == 1 { 0 } else { 10u64.pow(d - 1) };
            lo + rng.below(10u64.pow(d) - lo)
        };
        for _ in 0..MAX_DRAWS {
            let op = ops[rng.below(ops.len() as u64) as usize];
            let (mut a, mut b) = (operand(&mut rng), operand(&mut rng));
            if op == Op::Sub && a < b {
                std::mem::swap(&mut a, &mut b);
            }
            let c = Column { a, op, b };
            if column_heldout(&c, cfg.heldout_fraction) == (split == SPLIT_EVAL) {
                return c;
            }
        }
        panic!("Column::sample: no problem in {MAX_DRAWS} draws; the config {cfg:?} fails validate()")
    }

    /// Parse a prompt `a op b=` back.
    pub fn from_prompt(prompt: &str) -> Option<Self> {
        let body = prompt.trim_end().strip_suffix('=')?;
        let at = body.find(['+', '-', '*'])?;
        let op = Op::from_symbol(body[at..].chars().next()?)?;
        Some(Column { a: body[..at].parse().ok()?, op, b: body[at + 1..].parse().ok()? })
    }

    /// The prompt, e.g. `457+68=`.
    pub fn prompt(&self) -> String {
        format!("{}{}{}=", self.a, self.op.symbol(), self.b)
    }

    /// The exact result (`None` if it does not fit: a − b < 0 or overflow).
    pub fn answer(&self) -> Option<u64> {
        match self.op {
            Op::Add => self.a.checked_add(self.b),
            Op::Sub => self.a.checked_sub(self.b),
            Op::Mul => self.a.checked_mul(self.b),
        }
    }

    /// The column-method trace, one step per line, the last line being the answer.
    pub fn trace(&self) -> Option<Vec<String>> {
        let answer = self.answer()?;
        let (da, db) = (digits(self.a), digits(self.b));
        let at = |d: &[u64], i: usize| d.get(i).copied().unwrap_or(0);
        let mut lines = Vec::new();
        match self.op {
            Op::Add => {
                let mut carry = 0;
                for i in 0..da.len().max(db.len()) {
                    let s = at(&da, i) + at(&db, i) + carry;
                    lines.push(format!("{}+{}+{carry}={s}", at(&da, i), at(&db, i)));
                    carry = s / 10;
                }
            }
            Op::Sub => {
                let mut borrow = 0;
                for i in 0..da.len() {
                    let (top, bottom) = (at(&da, i), at(&db, i));
                    let out = u64::from(top < borrow + bottom);
                    let r = top + 10 * out - borrow - bottom;
                    lines.push(format!("{}-{borrow}-{bottom}={r}", top + 10 * out));
                    borrow = out;
                }
            }
            Op::Mul => {
                let mut partials = Vec::new();
                for (j, &d) in db.iter().enumerate() {
                    if d != 0 || (j == 0 && self.b == 0) {
                        let m = d * 10u64.pow(j as u32);
                        partials.push(self.a * m);
                        lines.push(format!("{}*{m}={}", self.a, self.a * m));
                    }
                }
                let mut sum = partials[0];
                for &p in &partials[1..] {
                    lines.push(format!("{sum}+{p}={}", sum + p));
                    sum += p;
                }
            }
        }
        lines.push(answer.to_string());
        Some(lines)
    }
}

/// The column-arithmetic [`Task`]: the last non-empty response line must be the exact answer.
pub struct ArithmeticTask {
    /// Seed of the problem stream.
    pub seed: u64,
    /// Generator settings.
    pub cfg: ArithmeticConfig,
}

impl Task for ArithmeticTask {
    fn name(&self) -> &str {
        "arithmetic"
    }
    fn problem(&self, split: u64, index: u64) -> Problem {
        let c = Column::sample(&self.cfg, self.seed, split, index);
        let answer = c.answer().map_or_else(String::new, |x| x.to_string());
        Problem { id: index, prompt: c.prompt(), answer, solution: c.trace().map(|l| l.join("\n")) }
    }
    fn grade(&self, problem: &Problem, response: &str) -> Reward {
        let last = response.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        let value = last.parse::<u64>().ok();
        let expected = Column::from_prompt(&problem.prompt).and_then(|c| c.answer());
        Reward::new(value.is_some() && value == expected, value.is_some(), 0.0)
    }
}

/// `a+b=` → `c` with operands of up to `max_digits` digits; the answer is the response's first line.
pub struct AdditionTask {
    /// Seed of the problem stream.
    pub seed: u64,
    /// Operands have 1..=max_digits digits.
    pub max_digits: u32,
    /// Share of the operand pairs held out for evaluation (see [`Addition::sample`]).
    pub heldout_fraction: f64,
}

impl AdditionTask {
    fn parse(prompt: &str) -> Option<Addition> {
        let (a, b) = prompt.strip_suffix('=')?.split_once('+')?;
        Some(Addition { a: a.parse().ok()?, b: b.parse().ok()? })
    }
}

impl Task for AdditionTask {
    fn name(&self) -> &str {
        "addition"
    }
    fn problem(&self, split: u64, index: u64) -> Problem {
        let p = Addition::sample(self.seed, split, index, self.max_digits, self.heldout_fraction);
        let answer = p.answer().trim_end().to_string();
        Problem { id: index, prompt: p.prompt(), solution: Some(answer.clone()), answer }
    }
    fn grade(&self, problem: &Problem, response: &str) -> Reward {
        let first = response.split('\n').next().unwrap_or("").trim();
        let well_formed = first.parse::<u64>().is_ok();
        let correct = Self::parse(&problem.prompt).is_some_and(|p| p.reward(response) == 1.0);
        Reward::new(correct, well_formed, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_seeded_and_checkable() {
        let p = Addition::sample(1, 0, 7, 3, 0.1);
        assert_eq!(p, Addition::sample(1, 0, 7, 3, 0.1));
        assert_ne!(p, Addition::sample(1, 1, 7, 3, 0.1));
        assert!(p.a < 1000 && p.b < 1000);
        assert_eq!(p.reward(&format!("{}\nextra", p.a + p.b)), 1.0);
        assert_eq!(p.reward(&format!("{}", p.a + p.b + 1)), 0.0);
        assert_eq!(p.reward("abc"), 0.0);
    }

    fn trace(a: u64, op: char, b: u64) -> String {
        Column { a, op: Op::from_symbol(op).unwrap(), b }.trace().unwrap().join("\n")
    }

    #[test]
    fn traces_follow_the_column_method() {
        assert_eq!(trace(457, '+', 68), "7+8+0=15\n5+6+1=12\n4+0+1=5\n525");
        assert_eq!(trace(99, '+', 1), "9+1+0=10\n9+0+1=10\n100");
        assert_eq!(trace(502, '-', 68), "12-0-8=4\n10-1-6=3\n5-1-0=4\n434");
        assert_eq!(trace(7, '-', 7), "7-0-7=0\n0");
        assert_eq!(trace(457, '*', 68), "457*8=3656\n457*60=27420\n3656+27420=31076\n31076");
        assert_eq!(trace(12, '*', 0), "12*0=0\n0");
        assert_eq!(trace(12, '*', 300), "12*300=3600\n3600");
        assert_eq!(Column { a: 3, op: Op::Sub, b: 5 }.trace(), None);
    }

    #[test]
    fn column_problems_are_seeded_disjoint_and_graded() {
        let cfg = ArithmeticConfig { min_digits: 2, max_digits: 4, ..Default::default() };
        let task = ArithmeticTask { seed: 5, cfg: cfg.clone() };
        for i in 0..200 {
            let c = Column::sample(&cfg, 5, 0, i);
            assert_eq!(c, Column::sample(&cfg, 5, 0, i));
            assert!((10..10_000).contains(&c.a) && (10..10_000).contains(&c.b), "{c:?}");
            assert!(!column_heldout(&c, cfg.heldout_fraction));
            assert!(column_heldout(&Column::sample(&cfg, 5, SPLIT_EVAL, i), cfg.heldout_fraction));
            assert_eq!(Column::from_prompt(&c.prompt()), Some(c));
            let p = task.problem(0, i);
            let full = p.solution.clone().unwrap();
            assert!(full.ends_with(&format!("\n{}", p.answer)));
            for (line, expect) in full.lines().filter_map(|l| l.split_once('=')) {
                let lhs = crate::tasks::rational::parse_expression(line).unwrap().0;
                assert_eq!(lhs.to_string(), expect, "every step is true: {line}={expect}");
            }
            assert!(task.grade(&p, &full).correct);
            assert!(task.grade(&p, &format!("{}\n", p.answer)).correct);
            let wrong = task.grade(&p, "12x");
            assert!(!wrong.correct && !wrong.well_formed);
        }
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(ArithmeticConfig { ops: "+/".into(), ..Default::default() }.validate().unwrap_err().0, "ops");
        assert_eq!(ArithmeticConfig { min_digits: 5, ..Default::default() }.validate().unwrap_err().0, "min_digits");
    }
}
