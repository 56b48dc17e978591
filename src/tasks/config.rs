//! Task configuration: a `[data]`-style TOML table that selects and parameterises a task.
//!
//! ```toml
//! kind = "countdown"     # "countdown" | "arithmetic" | "jsonl" | "parquet" | "addition"
//! numbers = 3            # countdown: pool size (2..=4)
//! max_number = 20        # countdown: pool numbers in 1..=max_number
//! max_target = 100       # countdown: targets in 1..=max_target (≥ numbers·max_number)
//! exactly_once = true    # countdown: every number used exactly once (false: at most once)
//! heldout_fraction = 0.1 # countdown, arithmetic, addition, jsonl, parquet: share held out for eval
//! format_penalty = 0.0   # reward of a malformed response is -format_penalty
//! ```
//! `arithmetic` takes `ops` (e.g. `"+-*"`), `min_digits`, `max_digits`; `addition` takes
//! `max_digits`; `jsonl` takes `path` and an optional `eval_path`; `parquet` takes `path` (a file or
//! a directory of shards), an optional `eval_path`, and the column names `prompt_column` (default
//! `"question"`, or `"prompt"` when a file has no `question`) and `answer_column` (default
//! `"answer"`) — see [`crate::tasks::parquet`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tasks::arithmetic::{ArithmeticConfig, ArithmeticTask};
use crate::tasks::countdown::{CountdownConfig, CountdownTask};
use crate::tasks::dataset::DatasetTask;
use crate::tasks::parquet::Columns;
use crate::tasks::{AdditionTask, FormatPenalty, Task};
use crate::tokenizer::TextCodec;

/// Which task to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// [`CountdownTask`] (the default RL task).
    Countdown,
    /// [`ArithmeticTask`]: multi-digit `+ - *` with column traces.
    Arithmetic,
    /// [`DatasetTask`]: prompts and answers from a JSONL file.
    Jsonl,
    /// [`DatasetTask`]: prompts and answers from two columns of Parquet files.
    Parquet,
    /// [`AdditionTask`]: `a+b=` answered on the first line.
    Addition,
}

/// Task settings; every key but `kind` has a default (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// The task (`task` is accepted as an alias).
    #[serde(alias = "task")]
    pub kind: TaskKind,
    /// Malformed responses score `-format_penalty` (≥ 0; 0 = plain 0/1 reward).
    #[serde(default)]
    pub format_penalty: f32,
    /// Share of problems (number multisets, operand triples or prompts) held out for eval.
    #[serde(default = "d_heldout")]
    pub heldout_fraction: f64,
    /// countdown: pool size.
    #[serde(default = "d_numbers")]
    pub numbers: usize,
    /// countdown: pool numbers in 1..=max_number.
    #[serde(default = "d_max_number")]
    pub max_number: u64,
    /// countdown: targets in 1..=max_target.
    #[serde(default = "d_max_target")]
    pub max_target: u64,
    /// countdown: use every number exactly once (else at most once).
    #[serde(default = "d_true")]
    pub exactly_once: bool,
    /// arithmetic: operations drawn, from `+-*`.
    #[serde(default = "d_ops")]
    pub ops: String,
    /// arithmetic: minimum operand digits.
    #[serde(default = "d_one")]
    pub min_digits: u32,
    /// arithmetic, addition: maximum operand digits.
    #[serde(default = "d_max_digits")]
    pub max_digits: u32,
    /// jsonl, parquet: the dataset file (parquet: or a directory of `*.parquet` shards).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// jsonl, parquet: a separate held-out file (else `heldout_fraction` of the prompts are held out).
    #[serde(default)]
    pub eval_path: Option<PathBuf>,
    /// parquet: the prompt column (unset: `question`, or `prompt` when a file has no `question`).
    #[serde(default)]
    pub prompt_column: Option<String>,
    /// parquet: the answer column (unset: `answer`).
    #[serde(default)]
    pub answer_column: Option<String>,
}

fn d_heldout() -> f64 {
    0.1
}
fn d_numbers() -> usize {
    3
}
fn d_max_number() -> u64 {
    20
}
fn d_max_target() -> u64 {
    100
}
fn d_true() -> bool {
    true
}
fn d_ops() -> String {
    "+-*".into()
}
fn d_one() -> u32 {
    1
}
fn d_max_digits() -> u32 {
    3
}

impl TaskConfig {
    /// The defaults for `kind`.
    pub fn new(kind: TaskKind) -> Self {
        TaskConfig {
            kind,
            format_penalty: 0.0,
            heldout_fraction: d_heldout(),
            numbers: d_numbers(),
            max_number: d_max_number(),
            max_target: d_max_target(),
            exactly_once: true,
            ops: d_ops(),
            min_digits: d_one(),
            max_digits: d_max_digits(),
            path: None,
            eval_path: None,
            prompt_column: None,
            answer_column: None,
        }
    }

    /// The Parquet columns read (`prompt_column`, `answer_column`).
    pub fn parquet_columns(&self) -> Columns {
        Columns { prompt: self.prompt_column.clone(), answer: self.answer_column.clone() }
    }

    /// The Countdown settings.
    pub fn countdown(&self) -> CountdownConfig {
        CountdownConfig {
            numbers: self.numbers,
            max_number: self.max_number,
            max_target: self.max_target,
            exactly_once: self.exactly_once,
            heldout_fraction: self.heldout_fraction,
        }
    }

    /// The column-arithmetic settings.
    pub fn arithmetic(&self) -> ArithmeticConfig {
        ArithmeticConfig {
            ops: self.ops.clone(),
            min_digits: self.min_digits,
            max_digits: self.max_digits,
            heldout_fraction: self.heldout_fraction,
        }
    }

    /// Check the settings for `kind`; on error returns the offending key and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.format_penalty.is_finite() && self.format_penalty >= 0.0) {
            return Err(("format_penalty", format!("{} must be finite and ≥ 0", self.format_penalty)));
        }
        if !(0.0..1.0).contains(&self.heldout_fraction) {
            return Err(("heldout_fraction", format!("{} is not in [0, 1)", self.heldout_fraction)));
        }
        let reads_files = matches!(self.kind, TaskKind::Jsonl | TaskKind::Parquet);
        for (key, path) in [("path", &self.path), ("eval_path", &self.eval_path)] {
            if path.is_some() && !reads_files {
                return Err((key, "only kind = \"jsonl\" or \"parquet\" reads files".into()));
            }
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err((key, "an empty path".into()));
            }
        }
        if self.eval_path.is_some() && self.heldout_fraction != d_heldout() {
            return Err((
                "heldout_fraction",
                "the held-out records come from `eval_path`: nothing is held out by hash".into(),
            ));
        }
        for (key, column) in [("prompt_column", &self.prompt_column), ("answer_column", &self.answer_column)] {
            match column {
                Some(_) if self.kind != TaskKind::Parquet => {
                    return Err((key, "only kind = \"parquet\" reads columns".into()));
                }
                Some(name) if name.is_empty() => return Err((key, "an empty column name".into())),
                _ => {}
            }
        }
        // a generator's key set for a kind that does not read it would be silently ignored
        use TaskKind::{Addition, Arithmetic, Countdown, Jsonl, Parquet};
        let d = TaskConfig::new(self.kind);
        for (key, set, kinds) in [
            ("numbers", self.numbers != d.numbers, &[Countdown][..]),
            ("max_number", self.max_number != d.max_number, &[Countdown]),
            ("max_target", self.max_target != d.max_target, &[Countdown]),
            ("exactly_once", self.exactly_once != d.exactly_once, &[Countdown]),
            ("ops", self.ops != d.ops, &[Arithmetic]),
            ("min_digits", self.min_digits != d.min_digits, &[Arithmetic]),
            ("max_digits", self.max_digits != d.max_digits, &[Arithmetic, Addition]),
            (
                "heldout_fraction",
                self.heldout_fraction != d.heldout_fraction,
                &[Countdown, Arithmetic, Addition, Jsonl, Parquet],
            ),
        ] {
            if set && !kinds.contains(&self.kind) {
                let names: Vec<String> = kinds.iter().map(|k| format!("{k:?}").to_lowercase()).collect();
                return Err((
                    key,
                    format!(
                        "kind = {:?} does not read it (only {})",
                        format!("{:?}", self.kind).to_lowercase(),
                        names.join(", ")
                    ),
                ));
            }
        }
        match self.kind {
            TaskKind::Countdown => self.countdown().validate(),
            TaskKind::Arithmetic => self.arithmetic().validate(),
            TaskKind::Addition => crate::tasks::arithmetic::Addition::validate(self.max_digits, self.heldout_fraction),
            TaskKind::Jsonl if self.path.is_none() => Err(("path", "kind = \"jsonl\" needs a dataset file".into())),
            TaskKind::Parquet if self.path.is_none() => {
                Err(("path", "kind = \"parquet\" needs a .parquet file or a directory of them".into()))
            }
            TaskKind::Jsonl | TaskKind::Parquet => Ok(()),
        }
    }
}

/// Build the task of `cfg` with problem seed `seed` (validated first; a JSONL or Parquet dataset is
/// loaded, so its errors come before any training).
/// Errors: [`Error::Invalid`] naming the key, or the dataset's [`Error::Dataset`] / [`Error::Io`].
pub fn build(cfg: &TaskConfig, seed: u64, codec: &TextCodec) -> Result<Box<dyn Task>> {
    cfg.validate().map_err(|(key, msg)| Error::Invalid(format!("task key `{key}`: {msg}")))?;
    let task: Box<dyn Task> = match cfg.kind {
        TaskKind::Countdown => Box::new(CountdownTask { seed, cfg: cfg.countdown() }),
        TaskKind::Arithmetic => Box::new(ArithmeticTask { seed, cfg: cfg.arithmetic() }),
        TaskKind::Addition => {
            Box::new(AdditionTask { seed, max_digits: cfg.max_digits, heldout_fraction: cfg.heldout_fraction })
        }
        TaskKind::Jsonl | TaskKind::Parquet => {
            let path = cfg.path.as_deref().unwrap_or_else(|| unreachable!("validated: datasets have a path"));
            let (eval, fraction) = (cfg.eval_path.as_deref(), cfg.heldout_fraction);
            let task = match cfg.kind {
                TaskKind::Parquet => DatasetTask::load_parquet(path, eval, fraction, &cfg.parquet_columns())?,
                _ => DatasetTask::load_split(path, eval, fraction)?,
            };
            // a run with the built-in character tokenizer (train::pretrain and train::rl) refuses a
            // record it cannot encode now, not at the first evaluation
            if let Some(tok) = codec.as_char() {
                task.check_alphabet(tok)?;
            }
            Box::new(task)
        }
    };
    Ok(if cfg.format_penalty > 0.0 { Box::new(FormatPenalty { task, penalty: cfg.format_penalty }) } else { task })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<TaskConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_defaults_and_rejects_bad_keys() {
        let cfg = parse("kind = \"countdown\"").unwrap();
        assert_eq!(cfg, TaskConfig::new(TaskKind::Countdown));
        assert_eq!(cfg.countdown(), CountdownConfig::default());
        assert_eq!(parse("task = \"arithmetic\"\nops = \"+\"").unwrap().ops, "+");
        assert!(parse("kind = \"countdown\"\nnumbrs = 3").unwrap_err().contains("numbrs"));
        assert!(parse("kind = \"chess\"").unwrap_err().contains("chess"));
        let err = |text: &str| {
            build(&parse(text).unwrap(), 1, &TextCodec::default()).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(err("kind = \"countdown\"\nnumbers = 7").contains("`numbers`"));
        assert!(err("kind = \"countdown\"\nformat_penalty = -1.0").contains("`format_penalty`"));
        assert!(err("kind = \"jsonl\"").contains("`path`"));
        assert!(err("kind = \"addition\"\npath = \"x.jsonl\"").contains("`path`"));
        assert!(err("kind = \"arithmetic\"\nmax_digits = 12").contains("`max_digits`"));
        assert!(err("kind = \"jsonl\"\npath = \"/nonexistent/x.jsonl\"").contains("/nonexistent/x.jsonl"));
        assert!(err("kind = \"parquet\"").contains("`path`"));
        assert!(err("kind = \"countdown\"\neval_path = \"e.parquet\"").contains("`eval_path`"));
        assert!(err("kind = \"jsonl\"\npath = \"\"").contains("empty path"));
        assert!(err("kind = \"jsonl\"\npath = \"x.jsonl\"\nprompt_column = \"q\"").contains("`prompt_column`"));
        assert!(err("kind = \"addition\"\nanswer_column = \"a\"").contains("`answer_column`"));
        assert!(err("kind = \"parquet\"\npath = \"x\"\nanswer_column = \"\"").contains("`answer_column`"));
        assert!(err("kind = \"parquet\"\npath = \"/nonexistent/d\"").contains("/nonexistent/d"));
        let cfg = parse("kind = \"parquet\"\npath = \"d\"\nprompt_column = \"prompt\"").unwrap();
        assert_eq!(cfg.parquet_columns(), Columns { prompt: Some("prompt".into()), answer: None });
    }

    #[test]
    fn builds_every_generated_kind() {
        for (kind, name) in
            [(TaskKind::Countdown, "countdown"), (TaskKind::Arithmetic, "arithmetic"), (TaskKind::Addition, "addition")]
        {
            let t =
                build(&TaskConfig { format_penalty: 0.25, ..TaskConfig::new(kind) }, 7, &TextCodec::default()).unwrap();
            assert_eq!(t.name(), name);
            let p = t.problem(crate::tasks::SPLIT_TRAIN, 3);
            assert_eq!(t.reward(&p, &t.solution(&p).unwrap()), 1.0);
            assert_eq!(t.reward(&p, "?"), -0.25);
        }
    }
}
