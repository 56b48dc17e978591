//! Verifiable tasks end to end: the Countdown checker's verdicts, seeded solvable generation at every
//! difficulty, held-out disjointness, solver traces that earn reward 1, JSONL loading and the
//! answer checker, plus property tests of the exact expression evaluator.

use std::collections::HashSet;
use std::io::Write;

use arbor::error::Error;
use arbor::tasks::answer::{check_answer, parse_answer};
use arbor::tasks::countdown::{is_heldout, Countdown, CountdownConfig, Verdict};
use arbor::tasks::jsonl::JsonlTask;
use arbor::tasks::rational::{parse_expression, ExprError, Rational};
use arbor::tasks::{build, CountdownTask, Task, TaskConfig, TaskKind, SPLIT_EVAL, SPLIT_TRAIN};
use arbor::tokenizer::char::DEFAULT_ALPHABET;
use proptest::prelude::*;

fn cd(pool: &[u64], target: u64) -> Countdown {
    Countdown { pool: pool.to_vec(), target }
}

#[test]
fn countdown_checker_verdicts() {
    let c = cd(&[15, 12, 15], 18);
    assert_eq!(c.check("15+15=30\n30-12=18\n(15+15)-12", true), Verdict::Correct);
    assert_eq!(c.check("15 + 15 - 12", true), Verdict::Correct, "spaces and precedence");
    assert_eq!(c.check("(15-12)*15", true), Verdict::WrongValue(Rational::from_int(45)));
    assert_eq!(c.check("15+15+15-12", true), Verdict::Reused(15));
    assert_eq!(c.check("15+12-9", true), Verdict::NotInPool(9));
    assert!(matches!(c.check("15+15-12=18", true), Verdict::Invalid(ExprError::Malformed(_))));
    assert!(matches!(c.check("15+*15-12", true), Verdict::Invalid(ExprError::Malformed(_))));
    assert!(matches!(c.check("((15+15)-12", true), Verdict::Invalid(ExprError::Malformed(_))));
    assert_eq!(c.check("15/(15-15)+12", false), Verdict::Invalid(ExprError::DivisionByZero));
    assert_eq!(c.check("", true), Verdict::Empty);
    // Exactly-once versus at-most-once.
    let d = cd(&[3, 4, 5], 7);
    assert_eq!(d.check("3+4", true), Verdict::Unused(vec![5]));
    assert_eq!(d.check("3+4", false), Verdict::Correct);
    // Exact rational arithmetic: a fractional intermediate is fine, a near miss is not.
    let e = cd(&[1, 3, 4, 6], 24);
    assert_eq!(e.check("6/(1-3/4)", true), Verdict::Correct);
    assert_eq!(e.check("6/(1-3/4)+0", true), Verdict::NotInPool(0));
    let f = cd(&[1, 3, 4, 6, 8], 24);
    assert_eq!(f.check("6/(1-3/4)", false), Verdict::Correct);
    assert_eq!(f.check("6/(1-3/4)", true), Verdict::Unused(vec![8]));
    assert_eq!(cd(&[1, 3, 7], 2).check("7/3-1/3", false), Verdict::Reused(3));
    // Through the Task trait: well-formedness drives the format penalty.
    let task = CountdownTask { seed: 0, cfg: CountdownConfig::default() };
    let p = arbor::tasks::Problem { id: 0, prompt: c.prompt(), answer: "18".into(), solution: None };
    assert!(task.grade(&p, "(15+15)-12").correct);
    let wrong = task.grade(&p, "15+15+12");
    assert!(!wrong.correct && wrong.well_formed && wrong.score == 0.0);
    let malformed = task.grade(&p, "I think 18");
    assert!(!malformed.correct && !malformed.well_formed);
}

/// Every step line `a op b=c` is a true equation and the final line earns the reward.
fn assert_trace_is_valid(c: &Countdown, text: &str, exactly_once: bool) {
    let lines: Vec<&str> = text.lines().collect();
    for step in &lines[..lines.len() - 1] {
        let (lhs, rhs) = step.split_once('=').unwrap_or_else(|| panic!("step without `=`: {step}"));
        let v = parse_expression(lhs).unwrap().0;
        assert_eq!(v.to_string(), rhs, "{c:?}: step {step} is false");
        assert!(v.is_integer() && v.numer() > 0, "positive-integer intermediates: {step}");
    }
    assert_eq!(lines.len(), c.pool.len(), "n numbers take n-1 steps plus the expression line");
    assert_eq!(c.check(text, exactly_once), Verdict::Correct, "{c:?}\n{text}");
    assert!(text.chars().all(|ch| DEFAULT_ALPHABET.contains(ch)), "char-tokenizer alphabet: {text:?}");
}

#[test]
fn generator_is_deterministic_and_solver_traces_earn_reward_one() {
    let cfg = CountdownConfig::default();
    assert_eq!(Countdown::sample(&cfg, 1, SPLIT_TRAIN, 5), Countdown::sample(&cfg, 1, SPLIT_TRAIN, 5));
    assert_ne!(Countdown::sample(&cfg, 1, SPLIT_TRAIN, 5), Countdown::sample(&cfg, 2, SPLIT_TRAIN, 5));
    for level in 1..=4 {
        let cfg = CountdownConfig::level(level).unwrap();
        let n = if level <= 2 { 300 } else { 100 };
        for seed in 0..2 {
            for split in [SPLIT_TRAIN, SPLIT_EVAL] {
                for i in 0..n / 2 {
                    let c = Countdown::sample(&cfg, seed, split, i);
                    assert_eq!(c.pool.len(), cfg.numbers);
                    assert!(c.pool.iter().all(|&x| (1..=cfg.max_number).contains(&x)), "{c:?}");
                    assert!((1..=cfg.max_target).contains(&c.target), "{c:?}");
                    let text = c.solution_text().unwrap_or_else(|| panic!("unsolvable instance {c:?}"));
                    assert_trace_is_valid(&c, &text, true);
                }
            }
        }
    }
    // The default prompt/response pair of ALGORITHMS.md §9 fits a 64-position model.
    let task = build(&TaskConfig::new(TaskKind::Countdown), 1234, &arbor::tokenizer::TextCodec::default()).unwrap();
    let longest = (0..500)
        .map(|i| task.problem(SPLIT_TRAIN, i))
        .map(|p| p.prompt.len() + task.solution(&p).unwrap().len())
        .max()
        .unwrap();
    assert!(longest + 2 <= 64, "prompt + solution + BOS/EOS = {}", longest + 2);
}

#[test]
fn held_out_multisets_never_appear_in_training() {
    let cfg = CountdownConfig::default();
    let key = |c: &Countdown| {
        let mut p = c.pool.clone();
        p.sort_unstable();
        p
    };
    let train: HashSet<Vec<u64>> = (0..3000).map(|i| key(&Countdown::sample(&cfg, 7, SPLIT_TRAIN, i))).collect();
    let eval: HashSet<Vec<u64>> = (0..300).map(|i| key(&Countdown::sample(&cfg, 7, SPLIT_EVAL, i))).collect();
    assert!(train.is_disjoint(&eval));
    assert!(eval.len() > 50, "the held-out split is varied: {}", eval.len());
    // About 10 % of all multisets of 3 numbers in 1..=20 are held out.
    let mut all = 0;
    let mut held = 0;
    for a in 1..=20u64 {
        for b in a..=20 {
            for c in b..=20 {
                all += 1;
                held += usize::from(is_heldout(&[c, a, b], cfg.heldout_fraction));
            }
        }
    }
    let share = held as f64 / all as f64;
    assert!((0.07..0.13).contains(&share), "held-out share {share}");
    // Through the trait, for every generated kind: splits differ (nor does a held-out sum or
    // product appear in training with its operands swapped) and solutions earn 1.
    let swapped = |prompt: &str| {
        let body = prompt.strip_suffix('=')?;
        let at = body.find(['+', '*'])?;
        Some(format!("{}{}{}=", &body[at + 1..], &body[at..at + 1], &body[..at]))
    };
    for (kind, digits) in
        [(TaskKind::Countdown, 3), (TaskKind::Arithmetic, 1), (TaskKind::Arithmetic, 3), (TaskKind::Addition, 1)]
    {
        let mut cfg = TaskConfig::new(kind);
        cfg.max_digits = digits;
        let task = build(&cfg, 11, &arbor::tokenizer::TextCodec::default()).unwrap();
        let train: HashSet<String> = (0..5000).map(|i| task.problem(SPLIT_TRAIN, i).prompt).collect();
        for i in 0..200 {
            let p = task.problem(SPLIT_EVAL, i);
            assert!(!train.contains(&p.prompt), "{kind:?}: held-out prompt {} seen in training", p.prompt);
            if let Some(q) = swapped(&p.prompt) {
                assert!(!train.contains(&q), "{kind:?}: held-out {} seen in training as {q}", p.prompt);
            }
            assert_eq!(p, task.problem(SPLIT_EVAL, i));
            assert_eq!(task.reward(&p, &task.solution(&p).unwrap()), 1.0, "{kind:?} {p:?}");
        }
    }
}

#[test]
fn a_held_out_fraction_that_empties_a_split_is_refused() {
    for (kind, ops, digits, fraction) in [
        (TaskKind::Arithmetic, "-", 1, 0.01),
        (TaskKind::Arithmetic, "*", 1, 0.01),
        (TaskKind::Arithmetic, "+", 1, 0.98),
        (TaskKind::Addition, "", 1, 0.98),
        (TaskKind::Addition, "", 1, 0.05),
    ] {
        let mut cfg = TaskConfig::new(kind);
        if kind == TaskKind::Arithmetic {
            cfg.ops = ops.into();
        }
        cfg.max_digits = digits;
        cfg.heldout_fraction = fraction;
        let e =
            build(&cfg, 1, &arbor::tokenizer::TextCodec::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("heldout_fraction") && e.contains("distinct problems"), "{kind:?} {ops} {fraction}: {e:?}");
    }
    // the default fraction leaves both splits problems at one digit too
    let mut cfg = TaskConfig::new(TaskKind::Addition);
    cfg.max_digits = 1;
    assert!(build(&cfg, 1, &arbor::tokenizer::TextCodec::default()).is_ok());
}

/// A jsonl task's config: `path`, its held-out file and `more` keys.
fn jsonl_config(path: &std::path::Path, eval: &std::path::Path, more: &str) -> TaskConfig {
    let (path, eval) = (path.display().to_string(), eval.display().to_string());
    toml::from_str(&format!("kind = \"jsonl\"\npath = {path:?}\neval_path = {eval:?}\n{more}")).unwrap()
}

fn write_jsonl(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
    path
}

#[test]
fn jsonl_loads_grades_and_reports_malformed_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..60 {
        text += &format!("{{\"prompt\": \"What is {i}/4?\", \"answer\": \"{i}/4\", \"source\": \"gen\"}}\n");
    }
    let good = write_jsonl(&dir, "good.jsonl", &text);
    let task = JsonlTask::load(&good).unwrap();
    let (n_train, n_eval) = (task.len(SPLIT_TRAIN).unwrap(), task.len(SPLIT_EVAL).unwrap());
    assert_eq!(n_train + n_eval, 60);
    assert!(n_eval >= 1 && n_train >= 40);
    let train: HashSet<String> = (0..n_train).map(|i| task.problem(SPLIT_TRAIN, i).prompt).collect();
    assert!((0..n_eval).all(|i| !train.contains(&task.problem(SPLIT_EVAL, i).prompt)));
    assert_eq!(task.problem(SPLIT_TRAIN, n_train + 2), task.problem(SPLIT_TRAIN, 2), "finite splits wrap");
    let p = (0..n_train).map(|i| task.problem(SPLIT_TRAIN, i)).find(|p| p.answer == "2/4").unwrap();
    assert_eq!(task.grade(&p, "so the answer is \\boxed{0.5}").score, 1.0);
    assert_eq!(task.grade(&p, "1/2").score, 1.0);
    assert_eq!(task.grade(&p, "\\boxed{\\frac{1}{2}} is wrong, it is 3").score, 1.0, "boxed wins");
    let miss = task.grade(&p, "no idea");
    assert!(!miss.correct && !miss.well_formed);
    assert_eq!(task.solution(&p), None);

    let bad = write_jsonl(&dir, "bad.jsonl", &format!("{}\n{{\"prompt\": \"x\", \"answer\": 1\n", text.trim_end()));
    match JsonlTask::load(&bad) {
        Err(Error::Dataset { file, line, .. }) => assert_eq!((file, line), (bad.clone(), 61)),
        other => panic!("expected a dataset error, got {other:?}"),
    }
    let msg = JsonlTask::load(&bad).unwrap_err().to_string();
    assert!(msg.contains("bad.jsonl:61:"), "{msg}");
    let missing = write_jsonl(&dir, "missing.jsonl", "{\"prompt\": \"x\", \"answer\": 1}\n{\"answer\": 2}\n");
    assert!(JsonlTask::load(&missing).unwrap_err().to_string().contains("missing.jsonl:2: missing `prompt`"));
    assert!(matches!(JsonlTask::load(dir.path().join("absent.jsonl")), Err(Error::Io { .. })));

    // Separate eval file through the config hook, with a format penalty.
    let eval = write_jsonl(&dir, "eval.jsonl", "{\"prompt\": \"2+2=\", \"answer\": 4, \"solution\": \"4\"}\n");
    let cfg = jsonl_config(&good, &eval, "format_penalty = 0.1");
    let task = build(&cfg, 0, &arbor::tokenizer::TextCodec::default()).unwrap();
    assert_eq!((task.len(SPLIT_TRAIN), task.len(SPLIT_EVAL)), (Some(60), Some(1)));
    let p = task.problem(SPLIT_EVAL, 5);
    assert_eq!((p.id, task.solution(&p).as_deref()), (0, Some("4")));
    assert_eq!(task.reward(&p, "4.0"), 1.0);
    assert_eq!(task.reward(&p, "five"), -0.1);
}

#[test]
fn dataset_references_must_state_an_exact_answer_and_held_out_prompts_stay_out_of_training() {
    let dir = tempfile::tempdir().unwrap();
    let rows =
        |last: &str| format!("{{\"prompt\": \"a\", \"answer\": 1}}\n{{\"prompt\": \"b\", \"answer\": 2}}\n{last}\n");
    for (name, last, why) in [
        ("empty.jsonl", "{\"prompt\": \"c\", \"answer\": \" \"}", "`answer` is empty"),
        ("hashes.jsonl", "{\"prompt\": \"c\", \"answer\": \"so it is\\n#### \"}", "states no final answer"),
        ("huge.jsonl", "{\"prompt\": \"c\", \"answer\": 18446744073709551617}", "write it as a string"),
    ] {
        let f = write_jsonl(&dir, name, &rows(last));
        let e = JsonlTask::load(&f).unwrap_err().to_string();
        assert!(e.contains(&format!("{name}:3:")) && e.contains(why), "{e}");
    }
    // a big integer written as a string keeps its digits
    let f = write_jsonl(&dir, "big.jsonl", &rows("{\"prompt\": \"c\", \"answer\": \"18446744073709551617\"}"));
    let cfg = jsonl_config(&f, &f, "");
    // (every prompt of the training file is held out: nothing is left to train on)
    let e = build(&cfg, 0, &arbor::tokenizer::TextCodec::default()).err().unwrap().to_string();
    assert!(e.contains("every prompt is also in the held-out file"), "{e}");
    let eval = write_jsonl(&dir, "eval.jsonl", "{\"prompt\": \" c\", \"answer\": \"18446744073709551617\"}\n");
    let cfg = jsonl_config(&f, &eval, "");
    let task = build(&cfg, 0, &arbor::tokenizer::TextCodec::default()).unwrap();
    assert_eq!((task.len(SPLIT_TRAIN), task.len(SPLIT_EVAL)), (Some(2), Some(1)), "the held-out prompt left training");
    let p = task.problem(SPLIT_EVAL, 0);
    assert!(task.grade(&p, "\\boxed{18446744073709551617}").correct);
    assert!(!task.grade(&p, "\\boxed{18446744073709551616}").correct);
    // nothing is held out by hash beside a held-out file
    let mut cfg = cfg;
    cfg.heldout_fraction = 0.2;
    let e = build(&cfg, 0, &arbor::tokenizer::TextCodec::default()).err().unwrap().to_string();
    assert!(e.contains("heldout_fraction") && e.contains("eval_path"), "{e}");
}

#[test]
fn answer_checker_equivalences() {
    let same = [
        ("0.5", "1/2"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{1/2}", "\\frac{1}{2}"),
        ("x = 3/4, done", "0.75"),
        ("-2", "-2.00"),
        ("\\boxed{-\\frac{6}{4}}", "-1.5"),
        ("Total: 12,345 apples", "12345"),
        ("$\\boxed{7}$", "7"),
        // a worked solution as the reference (GSM8K): its final answer after `####`
        ("\\boxed{72}", "She sold 48/2 = 24 clips in May.\n#### 72"),
        ("so 1,234", "#### 1,234"),
        ("\\boxed{5}", "The sum is \\boxed{5}."),
        // a leading-dot decimal and scientific notation
        ("so x = .5", "0.5"),
        ("x = -.25", "-1/4"),
        ("= 2.5e3", "2500"),
        ("\\boxed{1E-2}", "0.01"),
        ("x = -\\frac{1}{2}", "-1/2"),
        ("\\boxed{1,234.5}", "1234.5"),
    ];
    for (response, reference) in same {
        assert!(check_answer(response, reference).correct, "{response:?} should match {reference:?}");
    }
    for (response, reference) in [
        ("0.5", "1/3"),
        ("\\boxed{2} 1/2", "1/2"),
        ("12", "-12"),
        ("", "0"),
        // an empty reference matches nothing, not an empty answer
        ("\\boxed{}", ""),
        ("$", ""),
        ("\\boxed{}", "#### "),
        // a list is not a number with thousands groups, nor is a group of 4 digits
        ("\\boxed{1, 234}", "1234"),
        ("\\boxed{12,3456}", "123456"),
        ("3,14159", "314159"),
        // `5-\frac12` is a difference, not -1/2
        ("x = 5-\\frac{1}{2}", "-1/2"),
        // an exponent belongs to its number
        ("= 2.5e3", "3"),
    ] {
        assert!(!check_answer(response, reference).correct, "{response:?} must not match {reference:?}");
    }
    assert_eq!(parse_answer("\\tfrac{10}{4}"), Rational::new(5, 2));
    assert!(check_answer("so x = .5", "0.5").found, "a leading-dot decimal is an answer");
}

/// A random arithmetic expression tree over small literals.
#[derive(Debug, Clone)]
enum Expr {
    Lit(u64),
    Bin(Box<Expr>, char, Box<Expr>),
}

fn prec(op: char) -> u8 {
    if op == '+' || op == '-' {
        1
    } else {
        2
    }
}

impl Expr {
    /// Direct exact evaluation; `None` on division by zero.
    fn eval(&self) -> Option<Rational> {
        match self {
            Expr::Lit(n) => Some(Rational::from_int(*n as i64)),
            Expr::Bin(a, op, b) => {
                let (x, y) = (a.eval()?, b.eval()?);
                if *op == '/' && y.numer() == 0 {
                    return None;
                }
                x.apply(*op, y)
            }
        }
    }
    /// Render with the fewest parentheses the left-associative precedence rules need.
    fn render(&self, out: &mut String) {
        match self {
            Expr::Lit(n) => out.push_str(&n.to_string()),
            Expr::Bin(a, op, b) => {
                let side = |e: &Expr, out: &mut String, paren: &dyn Fn(char) -> bool| match e {
                    Expr::Bin(_, o, _) if paren(*o) => {
                        out.push('(');
                        e.render(out);
                        out.push(')');
                    }
                    _ => e.render(out),
                };
                side(a, out, &|o| prec(o) < prec(*op));
                out.push(*op);
                side(b, out, &|o| prec(o) <= prec(*op));
            }
        }
    }
    fn literals(&self, out: &mut Vec<u64>) {
        match self {
            Expr::Lit(n) => out.push(*n),
            Expr::Bin(a, _, b) => {
                a.literals(out);
                b.literals(out);
            }
        }
    }
}

fn expr_tree() -> impl Strategy<Value = Expr> {
    (0u64..30).prop_map(Expr::Lit).prop_recursive(4, 16, 2, |inner| {
        (inner.clone(), prop::sample::select(vec!['+', '-', '*', '/']), inner)
            .prop_map(|(a, op, b)| Expr::Bin(Box::new(a), op, Box::new(b)))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn evaluator_agrees_with_direct_rational_evaluation(e in expr_tree()) {
        let mut text = String::new();
        e.render(&mut text);
        let mut literals = Vec::new();
        e.literals(&mut literals);
        match (parse_expression(&text), e.eval()) {
            (Ok((v, used)), Some(expected)) => {
                prop_assert_eq!(v, expected, "{}", text);
                prop_assert_eq!(used, literals);
            }
            (Err(ExprError::DivisionByZero), None) => {}
            (got, want) => prop_assert!(false, "{text}: parser {got:?}, direct {want:?}"),
        }
    }

    #[test]
    fn fractions_decimals_and_boxes_agree(num in -500i128..500, den in 1i128..50) {
        let r = Rational::new(num, den).unwrap();
        let (n, d) = (r.numer(), r.denom());
        let frac = if n < 0 { format!("-\\frac{{{}}}{{{d}}}", -n) } else { format!("\\frac{{{n}}}{{{d}}}") };
        for response in [format!("{n}/{d}"), format!("\\boxed{{{frac}}}"), format!("so {n}/{d}.")] {
            prop_assert!(check_answer(&response, &r.to_string()).correct, "{} vs {}", response, r);
        }
        if 1_000_000 % d == 0 {
            let decimal = format!("{:.6}", n as f64 / d as f64);
            prop_assert!(check_answer(&decimal, &format!("{n}/{d}")).correct, "{}", decimal);
        }
    }
}
