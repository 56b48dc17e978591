//! Final-answer extraction and numeric comparison for free-form (JSONL / math) responses.
//!
//! The candidate answer is the content of the last `\boxed{...}` in the response if there is one,
//! else the last number in the text. Numbers are compared exactly as rationals: integers (`-12`,
//! `1,000`), decimals (`0.5`, `.5`), scientific notation (`2.5e3`), fractions (`1/2`) and LaTeX
//! fractions (`\frac{1}{2}`, `\dfrac`, `\tfrac`), so `0.5`, `1/2` and `\boxed{\frac{1}{2}}` are the
//! same answer. Answers that are not numbers are compared as text after removing spaces, `$` and
//! case. A reference written as a worked solution (GSM8K's `... #### 72`) is compared by its final
//! answer (after the last `####`, else its last `\boxed{}`); an empty reference matches nothing.

use crate::tasks::rational::Rational;

/// The content of the last `\boxed{...}` (balanced braces), if any.
pub fn last_boxed(text: &str) -> Option<&str> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The span of the last LaTeX fraction `[-]\\frac{..}{..}` (also `\\dfrac`, `\\tfrac`) in `text`.
fn last_frac(text: &str) -> Option<(usize, usize)> {
    let at = text.rfind("frac{")?;
    let start =
        text[..at].strip_suffix("\\d").or(text[..at].strip_suffix("\\t")).or(text[..at].strip_suffix('\\'))?.len();
    // a `-` is a sign only where it does not follow a letter, digit or `)` (as in last_number)
    let start = match text[..start].strip_suffix('-') {
        Some(before) if !before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == ')') => start - 1,
        _ => start,
    };
    let mut end = at + "frac".len();
    for _ in 0..2 {
        let inner = brace_group(&text[end..])?;
        end += inner;
    }
    Some((start, end))
}

/// Length of the balanced `{...}` group at the start of `text`.
fn brace_group(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => return Some(i + 1),
            '}' => depth = depth.checked_sub(1)?,
            _ if depth == 0 => return None,
            _ => {}
        }
    }
    None
}

/// The last number in `text`: `[-]digits[,ddd]*[.digits][e[+-]digits][/digits]` or `[-].digits`; a
/// `-` is a sign only when it does not follow a letter, digit or `)` (so `5-3` ends in `3`).
pub fn last_number(text: &str) -> Option<&str> {
    last_number_span(text).map(|(s, e)| &text[s..e])
}

/// Byte span of [`last_number`].
fn last_number_span(text: &str) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let digits_from = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut found = None;
    let mut i = 0;
    while i < b.len() {
        // a number starts at a digit that continues no number, or at a `.` before a digit that
        // follows no digit (`.5`)
        let leading_dot = b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit);
        let starts = (b[i].is_ascii_digit() || leading_dot)
            && (i == 0 || !(b[i - 1].is_ascii_digit() || (b[i - 1] == b'.' && !leading_dot)));
        if !starts {
            i += 1;
            continue;
        }
        let sign = i > 0 && b[i - 1] == b'-' && (i < 2 || !(b[i - 2].is_ascii_alphanumeric() || b[i - 2] == b')'));
        let start = if sign { i - 1 } else { i };
        let mut end = if leading_dot { digits_from(i + 1) } else { digits_from(i) };
        if !leading_dot {
            // Thousands groups: `,ddd` not followed by another digit.
            while end < b.len() && b[end] == b',' && digits_from(end + 1) == end + 4 {
                end += 4;
            }
            // A decimal part.
            if end + 1 < b.len() && b[end] == b'.' && b[end + 1].is_ascii_digit() {
                end = digits_from(end + 1);
            }
        }
        // An exponent (`2.5e3`, `1E-4`): part of the number, not a number of its own.
        if end < b.len() && (b[end] == b'e' || b[end] == b'E') {
            let at = end + 1 + usize::from(matches!(b.get(end + 1), Some(b'+' | b'-')));
            if b.get(at).is_some_and(u8::is_ascii_digit) {
                end = digits_from(at);
            }
        }
        // A denominator.
        if end + 1 < b.len() && b[end] == b'/' && b[end + 1].is_ascii_digit() {
            end = digits_from(end + 1);
        }
        found = Some((start, end));
        i = end;
    }
    found
}

/// Strip LaTeX and formatting noise: spaces, `$` and `\$`, `\left`, `\right`, `\,`, `\!`, a
/// percent sign (`18\%` is 18), a trailing unit in `\text{..}` (`18 \text{ dollars}`; a `\text{..}`
/// elsewhere is unwrapped: `\text{Paris}` is Paris), a leading one-letter variable (`x = 18`),
/// `{}` around a plain value; `\frac12` is `\frac{1}{2}`.
fn normalize(text: &str) -> String {
    let mut t = text.to_string();
    for noise in ["\\left", "\\right", "\\,", "\\!", "\\ ", "\\$", "$", "\\%", "%", " ", "\t", "\n"] {
        t = t.replace(noise, "");
    }
    for frac in ["\\dfrac", "\\tfrac"] {
        t = t.replace(frac, "\\frac");
    }
    t = strip_text_groups(t);
    // `x=18`: the value of a one-letter variable
    if let [v, b'=', _, ..] = t.as_bytes() {
        if v.is_ascii_alphabetic() {
            t = t[2..].to_string();
        }
    }
    // `\frac12`: one-digit numerator and denominator without braces
    if let Some(at) = t.find("\\frac") {
        let d = &t.as_bytes()[at + 5..];
        if d.len() >= 2 && d[0].is_ascii_digit() && d[1].is_ascii_digit() {
            let (p, q) = (d[0] as char, d[1] as char);
            t = format!("{}\\frac{{{p}}}{{{q}}}{}", &t[..at], &t[at + 7..]);
        }
    }
    while t.len() >= 2 && t.starts_with('{') && t.ends_with('}') {
        t = t[1..t.len() - 1].to_string();
    }
    t
}

/// `\text{..}` (and `\textbf`, `\mathrm`, `\mbox`) groups of `t` (spaces removed): one that ends
/// the text after something else is a unit and goes; the others are unwrapped.
fn strip_text_groups(mut t: String) -> String {
    const COMMANDS: [&str; 4] = ["\\text{", "\\textbf{", "\\mathrm{", "\\mbox{"];
    // each round removes a command: at most as many rounds as the text has backslashes
    while let Some((at, cmd)) = COMMANDS.iter().filter_map(|c| t.rfind(c).map(|i| (i, c.len()))).max() {
        let open = at + cmd - 1;
        let Some(len) = brace_group(&t[open..]) else { break };
        let inner = t[open + 1..open + len - 1].to_string();
        let unit = open + len == t.len() && at > 0;
        t = match unit {
            true => t[..at].to_string(),
            false => format!("{}{inner}{}", &t[..at], &t[open + len..]),
        };
    }
    t
}

/// Parse an answer as an exact number: a plain number (see [`Rational::parse_number`], with
/// thousands commas allowed: groups of exactly three digits, no space after a comma, so `1, 234` is
/// a list, not 1234), a number in scientific notation (`2.5e3`) or `[-]\frac{p}{q}` with plain
/// numbers p, q.
pub fn parse_answer(text: &str) -> Option<Rational> {
    if text.contains(", ") || text.contains(",\t") || text.contains(",\n") {
        return None;
    }
    let t = normalize(text);
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) if rest.starts_with("\\frac") => (true, rest),
        _ => (false, t.as_str()),
    };
    if let Some(rest) = body.strip_prefix("\\frac{") {
        let (p, rest) = rest.split_once('}')?;
        let q = rest.strip_prefix('{')?.strip_suffix('}')?;
        let v = parse_answer(p)?.apply('/', parse_answer(q)?)?;
        return if neg { Rational::from_int(0).apply('-', v) } else { Some(v) };
    }
    if let Some(v) = parse_scientific(body) {
        return Some(v);
    }
    let three_digits = |g: &str| g.len() == 3 && g.bytes().all(|c| c.is_ascii_digit());
    let grouped = body.contains(',') && {
        let mut groups = body.split(',');
        let first = groups.next().unwrap_or("");
        let lead = first.trim_start_matches(['-', '+']);
        // the first group: 1 to 3 digits; the others: exactly 3, the last with an optional
        // decimal part
        (1..=3).contains(&lead.len())
            && lead.bytes().all(|c| c.is_ascii_digit())
            && groups.all(|g| three_digits(g.split_once('.').map_or(g, |(int, _)| int)))
    };
    if body.contains(',') && !grouped {
        return None;
    }
    Rational::parse_number(&if grouped { body.replace(',', "") } else { body.to_string() })
}

/// `mantissa e exponent` (`2.5e3`, `1E-4`) exactly, for exponents up to 30 in size.
fn parse_scientific(body: &str) -> Option<Rational> {
    let (mantissa, exp) = body.split_once(['e', 'E'])?;
    let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) || mantissa.contains('/') {
        return None;
    }
    let e: i32 = exp.parse().ok().filter(|e: &i32| e.unsigned_abs() <= 30)?;
    let m = Rational::parse_number(mantissa)?;
    let scale = Rational::new(10i128.pow(e.unsigned_abs()), 1)?;
    m.apply(if e < 0 { '/' } else { '*' }, scale)
}

/// The final answer a reference states: the text after its last `####` (GSM8K's worked
/// solutions), else its last `\boxed{}` content, else the whole reference.
pub fn reference_answer(reference: &str) -> &str {
    if let Some((_, tail)) = reference.rsplit_once("####") {
        return tail.trim();
    }
    last_boxed(reference).unwrap_or(reference)
}

/// The candidate final answer of a response: the last `\boxed{}` content, else the last number
/// or LaTeX fraction, whichever ends later.
pub fn extract_answer(response: &str) -> Option<&str> {
    if let Some(b) = last_boxed(response) {
        return Some(b);
    }
    let number = last_number_span(response);
    let (s, e) = match (number, last_frac(response)) {
        (Some(n), Some(f)) if n.1 > f.1 => n,
        (_, Some(f)) => f,
        (n, None) => n?,
    };
    Some(&response[s..e])
}

/// Outcome of comparing a response with a reference answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerMatch {
    /// A candidate answer was found in the response.
    pub found: bool,
    /// It equals the reference (numerically when the reference is a number).
    pub correct: bool,
}

/// Compare `response` with `reference` (its final answer: [`reference_answer`]): numerically when
/// the reference parses as a number, else as normalized text (the last `\boxed{}` content, else
/// the last non-empty line). An empty reference, or an empty candidate, is never correct.
pub fn check_answer(response: &str, reference: &str) -> AnswerMatch {
    let reference = reference_answer(reference);
    if let Some(expected) = parse_answer(reference) {
        let candidate = extract_answer(response);
        let correct = candidate.and_then(parse_answer).is_some_and(|v| v == expected);
        return AnswerMatch { found: candidate.is_some(), correct };
    }
    let candidate = last_boxed(response).or_else(|| response.lines().rev().find(|l| !l.trim().is_empty()));
    let norm = |s: &str| normalize(s).to_lowercase();
    let expected = norm(reference);
    AnswerMatch {
        found: candidate.is_some(),
        correct: !expected.is_empty() && candidate.is_some_and(|c| norm(c) == expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_prefers_the_last_box_then_the_last_number() {
        assert_eq!(last_boxed("a \\boxed{1} b \\boxed{\\frac{3}{4}} c"), Some("\\frac{3}{4}"));
        assert_eq!(last_boxed("\\boxed{1"), None);
        assert_eq!(last_number("so 12 apples, then -3.5."), Some("-3.5"));
        assert_eq!(last_number("5-3"), Some("3"));
        assert_eq!(last_number("x=(-2)"), Some("-2"));
        assert_eq!(last_number("about 1,234,567 people"), Some("1,234,567"));
        assert_eq!(last_number("1, 2, 3"), Some("3"));
        assert_eq!(last_number("ratio 3/4"), Some("3/4"));
        assert_eq!(last_number("no digits"), None);
        assert_eq!(extract_answer("7 then \\boxed{8} then 9"), Some("8"));
        assert_eq!(extract_answer("so x = -\\dfrac{1}{2}."), Some("-\\dfrac{1}{2}"));
        assert_eq!(extract_answer("\\frac{1}{2} or 7"), Some("7"));
    }

    #[test]
    fn numbers_compare_exactly() {
        for (response, reference) in [
            ("0.5", "1/2"),
            ("\\boxed{\\frac{1}{2}}", "0.5"),
            ("The answer is $\\boxed{\\dfrac{2}{4}}$.", "1/2"),
            ("-\\frac{3}{6}", "-0.5"),
            ("\\boxed{-\\frac{1}{2}}", "-1/2"),
            ("1,000", "1000"),
            ("\\boxed{ 12 }", "12.0"),
            ("it is 42.", "42"),
        ] {
            assert!(check_answer(response, reference).correct, "{response} vs {reference}");
        }
        assert_eq!(check_answer("0.51", "1/2"), AnswerMatch { found: true, correct: false });
        assert_eq!(check_answer("none", "1/2"), AnswerMatch { found: false, correct: false });
        assert_eq!(check_answer("\\boxed{x}", "3"), AnswerMatch { found: true, correct: false });
        assert!(check_answer("I pick \\boxed{Paris}", "paris").correct);
        assert!(!check_answer("London", "Paris").correct);
        assert_eq!(parse_answer("\\frac{1}{0}"), None);
    }

    /// Correct answers in the formats a model trained on LaTeX writes: a dollar or percent sign, a
    /// unit, a variable, `\frac12`, text in `\text{}`; and an exponent at i32's edge is no number
    /// (it overflowed in `abs`).
    #[test]
    fn common_latex_forms_of_an_answer_are_read() {
        for (response, reference) in [
            ("\\boxed{\\$18}", "18"),
            ("\\boxed{18\\%}", "18"),
            ("so 18%", "18"),
            ("\\boxed{18 \\text{ dollars}}", "18"),
            ("\\boxed{18\\mathrm{cm}}", "18"),
            ("\\boxed{x = 18}", "18"),
            ("\\boxed{\\frac12}", "0.5"),
            ("\\boxed{-\\frac34}", "-0.75"),
            ("\\boxed{\\text{Paris}}", "Paris"),
            ("\\boxed{\\textbf{(B)}}", "(B)"),
            ("#### 1,234", "1234"),
        ] {
            assert!(check_answer(response, reference).correct, "{response} vs {reference}");
        }
        // the forms do not make a wrong answer right
        for (response, reference) in [
            ("\\boxed{\\$19}", "18"),
            ("\\boxed{x = 17}", "18"),
            ("\\boxed{\\frac13}", "0.5"),
            ("\\boxed{\\text{dollars}}", "18"),
            ("\\boxed{\\text{London}}", "Paris"),
            ("\\boxed{xy=18}", "18"),
        ] {
            assert!(!check_answer(response, reference).correct, "{response} vs {reference}");
        }
        assert_eq!(parse_answer("1e-2147483648"), None);
        assert_eq!(parse_answer("1E-2147483648"), None);
        assert_eq!(parse_answer("1e-3"), Rational::new(1, 1000));
    }
}
