//! Exact rational arithmetic and a parser for arithmetic expressions (+ − × ÷, parentheses,
//! non-negative integer literals) used by answer checkers.

/// A reduced fraction num/den with den > 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// n/1.
    pub fn from_int(n: i64) -> Self {
        Rational { num: n as i128, den: 1 }
    }

    fn new(num: i128, den: i128) -> Option<Self> {
        if den == 0 || num.abs() > 1 << 100 || den.abs() > 1 << 100 {
            return None;
        }
        let g = gcd(num, den);
        let s = if den < 0 { -1 } else { 1 };
        Some(Rational { num: s * num / g, den: s * den / g })
    }

    fn op(self, o: Rational, c: char) -> Option<Rational> {
        let (a, b, x, y) = (self.num, self.den, o.num, o.den);
        match c {
            '+' => Rational::new(a.checked_mul(y)?.checked_add(x.checked_mul(b)?)?, b.checked_mul(y)?),
            '-' => Rational::new(a.checked_mul(y)?.checked_sub(x.checked_mul(b)?)?, b.checked_mul(y)?),
            '*' => Rational::new(a.checked_mul(x)?, b.checked_mul(y)?),
            '/' => Rational::new(a.checked_mul(y)?, b.checked_mul(x)?),
            _ => None,
        }
    }
}

/// Why an expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExprError {
    Malformed(usize),
    DivisionByZero,
    Overflow,
}

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
            v = v.op(r, c as char).ok_or(ExprError::Overflow)?;
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
            v = v.op(r, if c == b'/' { '/' } else { '*' }).ok_or(ExprError::Overflow)?;
        }
        Ok(v)
    }
    fn atom(&mut self, depth: usize) -> Result<Rational, ExprError> {
        if depth > 64 {
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

/// Evaluate an expression exactly; returns its value and the integer literals it used.
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
        assert_eq!(v("1/(2-2)"), Err(ExprError::DivisionByZero));
        assert!(matches!(v("2+"), Err(ExprError::Malformed(_))));
        assert!(matches!(v("(2"), Err(ExprError::Malformed(_))));
        assert!(matches!(v("2 3"), Err(ExprError::Malformed(_))));
        assert!(matches!(v("a+1"), Err(ExprError::Malformed(_))));
        assert!(matches!(v("99999999999999999999999"), Err(ExprError::Overflow)));
        assert_eq!(parse_expression("(15+15)-12").unwrap().1, vec![15, 15, 12]);
    }
}
