//! Exact rational arithmetic (i128 with overflow checks) and a parser for arithmetic expressions
//! (+ − × ÷, parentheses, non-negative integer literals) used by the answer checkers.

use std::fmt;

/// Magnitude bound on numerators and denominators: results beyond it are reported as overflow,
/// so every intermediate product of two bounded values still fits in i128 before reduction.
const BOUND: i128 = 1 << 100;

/// A reduced fraction `num/den` with `den > 0` and `|num|, den ≤ 2^100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rational {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

impl Rational {
    /// `n/1`.
    pub fn from_int(n: i64) -> Self {
        Rational { num: n as i128, den: 1 }
    }

    /// `num/den` reduced; `None` when `den == 0` or a part exceeds 2^100 in magnitude.
    pub fn new(num: i128, den: i128) -> Option<Self> {
        if den == 0 || num.checked_abs()? > BOUND || den.checked_abs()? > BOUND {
            return None;
        }
        let g = gcd(num, den);
        let s = if den < 0 { -1 } else { 1 };
        Some(Rational { num: s * num / g, den: s * den / g })
    }

    /// The numerator (sign carrier) of the reduced fraction.
    pub fn numer(self) -> i128 {
        self.num
    }

    /// The denominator (> 0) of the reduced fraction.
    pub fn denom(self) -> i128 {
        self.den
    }

    /// Whether the value is an integer.
    pub fn is_integer(self) -> bool {
        self.den == 1
    }

    /// `self op rhs` for `op` in `+ - * /`; `None` on overflow, division by zero or an unknown op.
    pub fn apply(self, op: char, rhs: Rational) -> Option<Rational> {
        let (a, b, x, y) = (self.num, self.den, rhs.num, rhs.den);
        match op {
            '+' => Rational::new(a.checked_mul(y)?.checked_add(x.checked_mul(b)?)?, b.checked_mul(y)?),
            '-' => Rational::new(a.checked_mul(y)?.checked_sub(x.checked_mul(b)?)?, b.checked_mul(y)?),
            '*' => Rational::new(a.checked_mul(x)?, b.checked_mul(y)?),
            '/' => Rational::new(a.checked_mul(y)?, b.checked_mul(x)?),
            _ => None,
        }
    }

    /// Parse a plain number: an integer (`-12`), a decimal (`0.125`, `-.5`) or a fraction of
    /// integers (`3/4`, `-3/4`); surrounding whitespace is ignored. Decimals are exact (`0.1 = 1/10`).
    pub fn parse_number(text: &str) -> Option<Rational> {
        let t = text.trim();
        if let Some((n, d)) = t.split_once('/') {
            let n = Rational::parse_decimal(n.trim())?;
            let d = Rational::parse_decimal(d.trim())?;
            if d.num == 0 {
                return None;
            }
            return n.apply('/', d);
        }
        Rational::parse_decimal(t)
    }

    /// `[-+]digits[.digits]` (either digit run may be empty, not both) exactly.
    fn parse_decimal(t: &str) -> Option<Rational> {
        let (neg, body) = match t.as_bytes().first()? {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let all_digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) || int.len() + frac.len() > 30 {
            return None;
        }
        let digits: String = format!("{int}{frac}");
        let num: i128 = digits.parse().ok()?;
        let den = 10i128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        Rational::new(if neg { -num } else { num }, den)
    }
}

impl fmt::Display for Rational {
    /// `n` for integers, else `n/d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

/// Why an expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExprError {
    /// Not an expression: unexpected character, unbalanced parenthesis or missing operand at this byte offset.
    Malformed(usize),
    /// A division by an operand whose value is zero.
    DivisionByZero,
    /// A literal or an intermediate value beyond the exact range (2^100).
    Overflow,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExprError::Malformed(at) => write!(f, "malformed expression at byte {at}"),
            ExprError::DivisionByZero => write!(f, "division by zero"),
            ExprError::Overflow => write!(f, "number too large"),
        }
    }
}

/// Maximum parenthesis nesting accepted (bounds the recursion).
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    used: Vec<u64>,
}

impl Parser<'_> {
    fn skip(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.skip();
        self.s.get(self.i).copied()
    }
    fn expr(&mut self, depth: usize) -> Result<Rational, ExprError> {
        let mut v = self.term(depth)?;
        while let Some(c @ (b'+' | b'-')) = self.peek() {
            self.i += 1;
            let r = self.term(depth)?;
            v = v.apply(c as char, r).ok_or(ExprError::Overflow)?;
        }
        Ok(v)
    }
    fn term(&mut self, depth: usize) -> Result<Rational, ExprError> {
        let mut v = self.atom(depth)?;
        while let Some(c @ (b'*' | b'/' | b'x')) = self.peek() {
            self.i += 1;
            let r = self.atom(depth)?;
            if c == b'/' && r.num == 0 {
                return Err(ExprError::DivisionByZero);
            }
            v = v.apply(if c == b'/' { '/' } else { '*' }, r).ok_or(ExprError::Overflow)?;
        }
        Ok(v)
    }
    fn atom(&mut self, depth: usize) -> Result<Rational, ExprError> {
        if depth > MAX_DEPTH {
            return Err(ExprError::Malformed(self.i));
        }
        match self.peek() {
            Some(b'(') => {
                self.i += 1;
                let v = self.expr(depth + 1)?;
                if self.peek() != Some(b')') {
                    return Err(ExprError::Malformed(self.i));
                }
                self.i += 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| ExprError::Malformed(start))?;
                let n: u64 = text.parse().map_err(|_| ExprError::Overflow)?;
                self.used.push(n);
                Ok(Rational::from_int(i64::try_from(n).map_err(|_| ExprError::Overflow)?))
            }
            _ => Err(ExprError::Malformed(self.i)),
        }
    }
}

/// Evaluate an expression exactly (`*` and `/` bind tighter than `+` and `-`, left to right;
/// `x` is accepted for `*`); returns its value and the integer literals it used, in order.
pub fn parse_expression(text: &str) -> Result<(Rational, Vec<u64>), ExprError> {
    let mut p = Parser { s: text.as_bytes(), i: 0, used: Vec::new() };
    let v = p.expr(0)?;
    if p.peek().is_some() {
        return Err(ExprError::Malformed(p.i));
    }
    Ok((v, p.used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_exactly_and_rejects_bad_input() {
        let v = |s: &str| parse_expression(s).map(|r| r.0);
        assert_eq!(v("1/3+1/6*3"), Ok(Rational::new(5, 6).unwrap()));
        assert_eq!(v("(2+3)*4-6/4"), Ok(Rational::new(37, 2).unwrap()));
        assert_eq!(v(" 7 "), Ok(Rational::from_int(7)));
        assert_eq!(v("8-3-2"), Ok(Rational::from_int(3)), "left associative");
        assert_eq!(v("1/(2-2)"), Err(ExprError::DivisionByZero));
        assert!(matches!(v("2+"), Err(ExprError::Malformed(2))));
        assert!(matches!(v("(2"), Err(ExprError::Malformed(_))));
        assert!(matches!(v("2)"), Err(ExprError::Malformed(1))));
        assert!(matches!(v("2 3"), Err(ExprError::Malformed(_))));
        assert!(matches!(v("a+1"), Err(ExprError::Malformed(0))));
        assert!(matches!(v("-1+2"), Err(ExprError::Malformed(0))), "no unary minus");
        assert!(matches!(v(""), Err(ExprError::Malformed(0))));
        assert!(matches!(v(&"(".repeat(100)), Err(ExprError::Malformed(_))));
        assert!(matches!(v("99999999999999999999999"), Err(ExprError::Overflow)));
        assert_eq!(v("1000000000*".repeat(20).trim_end_matches('*')), Err(ExprError::Overflow));
        assert_eq!(parse_expression("(15+15)-12").unwrap().1, vec![15, 15, 12]);
    }

    #[test]
    fn numbers_parse_exactly() {
        let r = |n, d| Rational::new(n, d).unwrap();
        assert_eq!(Rational::parse_number("0.5"), Some(r(1, 2)));
        assert_eq!(Rational::parse_number(" 3/4 "), Some(r(3, 4)));
        assert_eq!(Rational::parse_number("-6/8"), Some(r(-3, 4)));
        assert_eq!(Rational::parse_number("-.25"), Some(r(-1, 4)));
        assert_eq!(Rational::parse_number("42"), Some(r(42, 1)));
        assert_eq!(Rational::parse_number("1/0"), None);
        assert_eq!(Rational::parse_number("1.2.3"), None);
        assert_eq!(Rational::parse_number("."), None);
        assert_eq!(Rational::parse_number("abc"), None);
        assert_eq!(r(6, -4).to_string(), "-3/2");
        assert_eq!(r(8, 4).to_string(), "2");
        assert!(r(4, 2).is_integer() && !r(1, 2).is_integer());
        assert_eq!(Rational::new(1, 0), None);
        assert_eq!(r(1, 3).apply('/', r(0, 1)), None);
    }
}
