//! Do a task's problems fit the run? [`check_fits`] is meant to run before a job sets up its run
//! directory, so that a dataset record the trainer cannot use is refused up front, by file and
//! line, instead of failing mid-run with an error that names neither:
//!
//! - with supervised steps (`train.steps` ≥ 1) every problem needs a reference solution, and its
//!   sequence, prompt (as [`TextCodec::prompt`] encodes it: `<bos>` or the HF tokenizer's own
//!   specials, the run's template) then solution then end of sequence, may have at most
//!   `max_position_embeddings` tokens;
//! - with an RL phase, the prompt's ids must leave room for at least one generated token. Generation stops at the end of the context, so a prompt that
//!   leaves less than `rl.max_new_tokens` is allowed (its responses may be cut short): the
//!   generators of the committed configs leave the full room, a dataset's longest prompts need not.
//!
//! Both splits count: the supervised phase evaluates on held-out sequences (solutions included)
//! and the RL phase generates for held-out prompts.
//!
//! A finite task (a dataset) is checked record by record. A generator cannot be checked whole; its
//! first [`GENERATOR_SAMPLE`] problems of each split are (every run uses the first problems of
//! each split), which catches a context too short for the task's kind and size at the cost of a
//! few microseconds; a rarer longer problem still fails when it comes.
//!
//! Lengths are counted as the run's [`TextCodec`] encodes: with the character tokenizer one token
//! per character, one per literal special token such as `<eos>`, counted without encoding (that
//! the characters are in its alphabet is checked by
//! [`crate::tasks::dataset::DatasetTask::check_alphabet`]); with an HF tokenizer by encoding.

use std::path::Path;

use crate::error::{Error, Result};
use crate::tasks::{Task, SPLIT_EVAL, SPLIT_TRAIN};
use crate::tokenizer::TextCodec;

/// Problems of each split of a generator (a task without a length) that [`check_fits`] checks.
pub const GENERATOR_SAMPLE: u64 = 32;

/// What a run builds from a task's problems, for [`check_fits`].
#[derive(Debug, Clone, Copy)]
pub struct ContextCheck<'a> {
    /// How the run encodes prompts and solutions.
    pub codec: &'a TextCodec,
    /// The model's context: its `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// Where that value is set, as errors name it: `"model.max_position_embeddings"` for a
    /// fresh model, e.g. `"max_position_embeddings of <hf_dir>/config.json"` for a loaded one.
    pub context_key: &'a str,
    /// `train.steps`, or 0 when no supervised step will run: with at least one, every problem
    /// needs a reference solution and prompt, solution and end of sequence must fit.
    pub supervised_steps: u64,
    /// `rl.max_new_tokens` when an RL phase generates responses to the task's prompts (`None`:
    /// no RL phase, or its prompts come from an `[env]`): the prompt must leave room for one.
    pub rl_max_new_tokens: Option<usize>,
}

/// Why a problem does not fit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Misfit {
    /// Supervised steps, and no reference solution.
    NoSolution,
    /// Prompt, solution and end of sequence are longer than the context (token counts of the
    /// prompt, its `<bos>` or template included, and of the solution).
    Sequence { prompt: usize, solution: usize },
    /// An RL phase, and the prompt encodes to no id at all (an empty prompt, no template, a
    /// tokenizer that adds no `<bos>`): there is nothing to generate after.
    EmptyPrompt,
    /// The prompt fills the context (its token count, `<bos>` or template included).
    Prompt { prompt: usize },
}

/// Whether a problem with `prompt` and `solution` fits what `ctx` asks.
fn misfit(prompt: &str, solution: Option<&str>, ctx: &ContextCheck) -> Result<Option<Misfit>> {
    let (max, codec) = (ctx.max_position_embeddings, ctx.codec);
    // where a token is at least one byte, most problems fit without counting
    let bound = codec.prompt_len_bound(prompt.len());
    if ctx.supervised_steps > 0 {
        let Some(solution) = solution else { return Ok(Some(Misfit::NoSolution)) };
        if bound.is_none_or(|b| b + solution.len() + 1 > max) {
            let (p, s) = (codec.prompt_len(prompt)?, codec.text_len(solution)?);
            if p + s + 1 > max {
                return Ok(Some(Misfit::Sequence { prompt: p, solution: s }));
            }
        }
    }
    // (a tokenizer without a cheap bound, an HF one, is counted: its empty prompt has no id)
    if ctx.rl_max_new_tokens.is_some() && bound.is_none_or(|b| b >= max) {
        let p = codec.prompt_len(prompt)?;
        if p == 0 {
            return Ok(Some(Misfit::EmptyPrompt));
        }
        if p >= max {
            return Ok(Some(Misfit::Prompt { prompt: p }));
        }
    }
    Ok(None)
}

/// What the error says of a misfit.
fn describe(m: Misfit, ctx: &ContextCheck) -> String {
    let (key, max) = (ctx.context_key, ctx.max_position_embeddings);
    match m {
        Misfit::NoSolution => format!(
            "no \"solution\": train.steps = {} needs a \"solution\" in every record, held-out records included \
             (the supervised phase trains and evaluates on prompt, solution and end of sequence); add one (a JSONL \
             record's `solution` field; parquet rows have none), or set train.steps = 0 to train by RL alone",
            ctx.supervised_steps
        ),
        Misfit::Sequence { prompt, solution } => format!(
            "prompt, solution and end of sequence are {} tokens (prompt {prompt} with its <bos> or template, solution \
             {solution}), more than {key} = {max} (train.steps = {} trains on the whole sequence); shorten the record \
             or use a model with a longer context",
            prompt + solution + 1,
            ctx.supervised_steps
        ),
        Misfit::EmptyPrompt => "the prompt is empty and encodes to no token (the model's tokenizer adds no <bos>): \
             the RL phase has nothing to generate after; give the record a prompt, or set model.prompt_template"
            .to_string(),
        Misfit::Prompt { prompt } => format!(
            "the prompt is {prompt} tokens with its <bos> or template, which leaves no room for a response under \
             {key} = {max} (the RL phase generates up to rl.max_new_tokens = {} tokens after it); shorten the prompt \
             or use a model with a longer context",
            ctx.rl_max_new_tokens.unwrap_or(0)
        ),
    }
}

/// Where a misfit is: a dataset record, or a generated problem (split, index).
enum Place<'t> {
    Record(&'t Path, usize),
    Problem(u64, u64),
}

/// Check that the run `ctx` describes can use every problem of `task` (see the module doc):
/// every record of a finite task's training and held-out splits, in that order, or the first
/// [`GENERATOR_SAMPLE`] problems of each split of a generator. Nothing to check (no supervised
/// step, no RL phase) is Ok at once.
///
/// Errors: for a dataset record, [`Error::Dataset`] naming the file and line of the first record
/// that does not fit, why (no `"solution"` for `train.steps = N`, or the token count against
/// `ctx.context_key = N`), and how many more records do not fit; for a generated problem,
/// [`Error::Invalid`] naming the task, split and problem index.
pub fn check_fits(task: &dyn Task, ctx: &ContextCheck) -> Result<()> {
    if ctx.supervised_steps == 0 && ctx.rl_max_new_tokens.is_none() {
        return Ok(());
    }
    let mut first: Option<(Place, Misfit)> = None;
    let mut more = 0usize;
    for split in [SPLIT_TRAIN, SPLIT_EVAL] {
        for index in 0..task.len(split).unwrap_or(GENERATOR_SAMPLE) {
            let found = match task.record(split, index) {
                Some(r) => misfit(r.prompt, r.solution, ctx)
                    .map_err(|e| Error::Dataset { file: r.file.to_path_buf(), line: r.line, msg: e.to_string() })?
                    .map(|m| (Place::Record(r.file, r.line), m)),
                None => {
                    let p = task.problem(split, index);
                    misfit(&p.prompt, p.solution.as_deref(), ctx)?.map(|m| (Place::Problem(split, index), m))
                }
            };
            match (found, &first) {
                (Some(f), None) => first = Some(f),
                (Some(_), Some(_)) => more += 1,
                (None, _) => {}
            }
        }
    }
    let Some((place, m)) = first else {
        return Ok(());
    };
    let mut msg = describe(m, ctx);
    Err(match place {
        Place::Record(file, line) => {
            if more > 0 {
                msg.push_str(&format!("; {more} more record(s) of the dataset do not fit either"));
            }
            Error::Dataset { file: file.to_path_buf(), line, msg }
        }
        Place::Problem(split, index) => {
            let which = if split == SPLIT_EVAL { "held-out" } else { "training" };
            if more > 0 {
                msg.push_str(&format!(
                    "; {more} more of the {} problems checked do not fit either",
                    2 * GENERATOR_SAMPLE
                ));
            }
            Error::Invalid(format!("task `{}`: {which} problem {index}: {msg}", task.name()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::jsonl::{parse_records, JsonlTask};
    use crate::tasks::{AdditionTask, FormatPenalty};
    use crate::tokenizer::{char_token_count, CharTokenizer, SPECIAL_TOKENS};

    const KEY: &str = "model.max_position_embeddings";
    static CHAR: std::sync::LazyLock<TextCodec> = std::sync::LazyLock::new(TextCodec::default);

    fn ctx(max: usize, steps: u64, rl: Option<usize>) -> ContextCheck<'static> {
        ContextCheck {
            codec: &CHAR,
            max_position_embeddings: max,
            context_key: KEY,
            supervised_steps: steps,
            rl_max_new_tokens: rl,
        }
    }

    fn task(train: &str, eval: &str) -> JsonlTask {
        let (train, eval) = (
            parse_records(train, Path::new("train.jsonl")).unwrap(),
            parse_records(eval, Path::new("eval.jsonl")).unwrap(),
        );
        JsonlTask::from_records("jsonl", Path::new("train.jsonl"), train, eval, Some(Path::new("eval.jsonl")))
    }

    #[test]
    fn special_tokens_start_with_the_only_angle_bracket() {
        // what char_token_count relies on
        for s in SPECIAL_TOKENS {
            assert!(s.is_ascii() && s.starts_with('<') && !s[1..].contains('<'), "{s}");
        }
    }

    #[test]
    fn token_counts_match_the_tokenizer() {
        let tok = CharTokenizer::default();
        for text in [
            "",
            "8+1=",
            "<bos>",
            "<eos><pad>x",
            "<<bos>>",
            "a<b>c<eos",
            "<bo<eos>s>",
            "line\n\tsecond <pad><pad>",
            "<",
            "<eos><",
        ] {
            assert_eq!(char_token_count(text), tok.encode(text).unwrap().len(), "{text:?}");
        }
        // characters outside the alphabet count one each (encode refuses them)
        assert_eq!(char_token_count("½·é<eos>"), 4);
    }

    #[test]
    fn a_record_without_a_solution_is_named_by_file_and_line() {
        let ok = "{\"prompt\": \"1+1=\", \"answer\": 2, \"solution\": \"2\"}\n";
        let t = task(&format!("{ok}{{\"prompt\": \"8+1=\", \"answer\": 9}}\n{ok}"), ok);
        let e = check_fits(&t, &ctx(64, 400, None)).unwrap_err();
        assert!(matches!(&e, Error::Dataset { line: 2, .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.starts_with("train.jsonl:2: no \"solution\": train.steps = 400 needs a \"solution\""), "{e}");
        assert!(!e.contains("more record"), "{e}");
        // without supervised steps a solution is not needed
        check_fits(&t, &ctx(64, 0, Some(8))).unwrap();
        // the held-out file is checked too (the supervised phase evaluates on it); the training
        // split's record comes first, and the others are counted
        let t =
            task(&format!("{ok}{{\"prompt\": \"8+1=\", \"answer\": 9}}\n"), "{\"prompt\": \"2+2=\", \"answer\": 4}\n");
        let e = check_fits(&t, &ctx(64, 1, None)).unwrap_err().to_string();
        assert!(e.starts_with("train.jsonl:2:") && e.contains("1 more record(s)"), "{e}");
        let t = task(ok, &format!("{ok}{ok}{{\"prompt\": \"2+2=\", \"answer\": 4, \"solution\": null}}\n"));
        let e = check_fits(&t, &ctx(64, 1, None)).unwrap_err().to_string();
        assert!(e.starts_with("eval.jsonl:3: no \"solution\""), "{e}");
    }

    #[test]
    fn a_sequence_longer_than_the_context_names_the_key() {
        let ok = "{\"prompt\": \"1+1=\", \"answer\": 2, \"solution\": \"2\"}\n";
        // <bos> + 10 + 3 + <eos> = 15 tokens: the `<eos>` written in the solution is one token
        let long = "{\"prompt\": \"0123456789\", \"answer\": 1, \"solution\": \"12<eos>\"}\n";
        let t = task(&format!("{ok}{ok}{long}"), ok);
        check_fits(&t, &ctx(15, 5, None)).unwrap();
        let e = check_fits(&t, &ctx(14, 5, None)).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "train.jsonl:3: prompt, solution and end of sequence are 15 tokens (prompt 11 with its <bos>"
            ) && e.contains("solution 3)")
                && e.contains("more than model.max_position_embeddings = 14"),
            "{e}"
        );
        // the RL check alone: <bos> + 10 = 11 tokens leave 1 of 12 positions, and none of 11
        check_fits(&t, &ctx(12, 0, Some(32))).unwrap();
        let e = check_fits(&t, &ctx(11, 0, Some(32))).unwrap_err().to_string();
        assert!(
            e.starts_with("train.jsonl:3: the prompt is 11 tokens with its <bos> or template, which leaves no room")
                && e.contains("model.max_position_embeddings = 11")
                && e.contains("rl.max_new_tokens = 32"),
            "{e}"
        );
        // the key the caller names (a loaded model's config.json)
        let key = "max_position_embeddings of ckpt/config.json";
        let e = check_fits(&t, &ContextCheck { context_key: key, ..ctx(11, 0, Some(32)) }).unwrap_err().to_string();
        assert!(e.contains("under max_position_embeddings of ckpt/config.json = 11"), "{e}");
    }

    #[test]
    fn nothing_to_run_checks_nothing_and_wrappers_keep_the_records() {
        let t = task("{\"prompt\": \"0123456789\", \"answer\": 1}\n", "{\"prompt\": \"1\", \"answer\": 1}\n");
        check_fits(&t, &ctx(2, 0, None)).unwrap();
        let wrapped = FormatPenalty { task: Box::new(t), penalty: 0.5 };
        let e = check_fits(&wrapped, &ctx(64, 3, None)).unwrap_err();
        assert!(matches!(&e, Error::Dataset { line: 1, .. }), "{e:?}");
        let r = wrapped.record(SPLIT_EVAL, 3).unwrap();
        assert_eq!((r.file, r.prompt, r.line), (Path::new("eval.jsonl"), "1", 1), "records wrap around");
    }

    #[test]
    fn generators_are_checked_on_a_sample() {
        let add = AdditionTask { seed: 1, max_digits: 2, heldout_fraction: 0.1 };
        check_fits(&add, &ctx(64, 400, Some(5))).unwrap();
        // "ab+cd=" and a short solution cannot fit in 6 positions
        let e = check_fits(&add, &ctx(6, 1, None)).unwrap_err();
        assert!(matches!(&e, Error::Invalid(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.starts_with("task `addition`: training problem 0: prompt, solution and end of sequence are"), "{e}");
        assert!(e.contains("more of the 64 problems checked"), "{e}");
    }
}
