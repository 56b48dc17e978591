//! The dataset task: prompt/answer [`Record`]s read from a file, split into training and held-out
//! problems, graded by [`crate::tasks::answer`]. One task, two readers: [`super::jsonl`] (one JSON
//! object per line) and [`super::parquet`] (string columns of Parquet files) both produce the same
//! record list, and [`DatasetTask::load_with`] splits it the same way whatever the format.
//!
//! The held-out split is either a second file or, by default, the records whose prompt hashes into
//! `eval_fraction` (so duplicated prompts never straddle the splits). Problem `i` of a split is its
//! record `i mod len`, in file order.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::rng::mix64;
use crate::tasks::answer::{check_answer, reference_answer};
use crate::tasks::{Problem, Reward, SourceRecord, Task, SPLIT_EVAL};
use crate::tokenizer::{CharTokenizer, DEFAULT_ALPHABET};

/// One dataset record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The text the model continues.
    pub prompt: String,
    /// The reference answer (a JSON number keeps its JSON spelling, a Parquet integer its decimal one).
    pub answer: String,
    /// An optional reference response.
    pub solution: Option<String>,
    /// 1-based position in the source file: the line of a JSONL file, the row of a Parquet file.
    pub line: usize,
    /// The shard it was read from when the dataset is a directory of Parquet shards: (the shard's
    /// place in reading order, its file); `line` is then the row in that shard. None for a file.
    pub shard: Option<(usize, std::sync::Arc<Path>)>,
    /// Other fields of a JSONL object (Parquet reads only its two columns: always empty).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Record {
    /// The file the record was read from: its shard, else `path` (the file its split was read from).
    pub fn source<'a>(&'a self, path: &'a Path) -> &'a Path {
        self.shard.as_ref().map_or(path, |s| &s.1)
    }
}

/// A [`Error::Dataset`] naming `file` and the 1-based line or row (0 = the file as a whole).
pub(crate) fn bad(file: &Path, line: usize, msg: impl Into<String>) -> Error {
    Error::Dataset { file: file.to_path_buf(), line, msg: msg.into() }
}

/// Whether a prompt belongs to the derived held-out split.
fn prompt_heldout(prompt: &str, fraction: f64) -> bool {
    let h = prompt.bytes().fold(0x0150_u64, |h, c| mix64(h ^ u64::from(c)));
    (h % 10_000) as f64 / 10_000.0 < fraction
}

/// A task over dataset records; splits are finite and wrap around.
#[derive(Debug, Clone)]
pub struct DatasetTask {
    /// The task's name: the config `kind` it was loaded for (`"jsonl"`, `"parquet"`).
    pub kind: &'static str,
    /// The dataset file or directory.
    pub path: PathBuf,
    /// Training records.
    pub train: Vec<Record>,
    /// Held-out records.
    pub eval: Vec<Record>,
    /// The held-out file, when the held-out records come from one (else they come from `path`).
    pub eval_path: Option<PathBuf>,
    /// [`Task::fingerprint`], computed on first use.
    fingerprint: std::sync::OnceLock<u64>,
}

/// The first field of `r` with a character `tok` cannot encode: (field, character position, character).
fn unencodable(r: &Record, tok: &CharTokenizer) -> Option<(&'static str, usize, char)> {
    let fields = [("prompt", Some(&r.prompt)), ("answer", Some(&r.answer)), ("solution", r.solution.as_ref())];
    fields.into_iter().find_map(|(name, text)| text.and_then(|t| tok.first_unknown(t)).map(|(pos, c)| (name, pos, c)))
}

impl DatasetTask {
    /// Read `path` with `read`; the held-out split is `eval_path` (read the same way) when given,
    /// else the records whose prompt hashes into `eval_fraction`. Every file read must hold
    /// records, and both splits must end up non-empty.
    pub fn load_with(
        kind: &'static str,
        path: &Path,
        eval_path: Option<&Path>,
        eval_fraction: f64,
        read: impl Fn(&Path) -> Result<Vec<Record>>,
    ) -> Result<Self> {
        let read_some = |p: &Path| {
            let records = read(p)?;
            if records.is_empty() {
                return Err(bad(p, 0, "no records"));
            }
            // an empty reference would match an empty final answer (`\boxed{}`): free reward
            if let Some(r) = records.iter().find(|r| reference_answer(&r.answer).trim().is_empty()) {
                let what =
                    if r.answer.trim().is_empty() { "`answer` is empty" } else { "`answer` states no final answer" };
                return Err(bad(r.source(p), r.line, format!("{what} ({:?})", r.answer)));
            }
            Ok(records)
        };
        let records = read_some(path)?;
        let (train, eval) = match eval_path {
            Some(e) => {
                let eval = read_some(e)?;
                // a prompt of the held-out file is held out: its training copies go
                let held: std::collections::HashSet<&str> = eval.iter().map(|r| r.prompt.trim()).collect();
                let total = records.len();
                let train: Vec<Record> = records.into_iter().filter(|r| !held.contains(r.prompt.trim())).collect();
                if train.is_empty() {
                    return Err(bad(path, 0, format!("every prompt is also in the held-out file {}", e.display())));
                }
                if train.len() < total {
                    eprintln!(
                        "data: {} of {total} training records of {} have a prompt of the held-out file {}: not trained on",
                        total - train.len(),
                        path.display(),
                        e.display()
                    );
                }
                (train, eval)
            }
            None => {
                let (eval, train): (Vec<Record>, Vec<Record>) =
                    records.into_iter().partition(|r| prompt_heldout(&r.prompt, eval_fraction));
                if train.is_empty() || eval.is_empty() {
                    return Err(bad(
                        path,
                        0,
                        format!(
                            "holding out {eval_fraction} of the prompts leaves {} train and {} eval records; \
                             give a separate eval file",
                            train.len(),
                            eval.len()
                        ),
                    ));
                }
                (train, eval)
            }
        };
        Ok(DatasetTask::from_records(kind, path, train, eval, eval_path))
    }

    /// A task over records already read: `train` and `eval` from `path` (`eval` from `eval_path`
    /// when given).
    pub fn from_records(
        kind: &'static str,
        path: &Path,
        train: Vec<Record>,
        eval: Vec<Record>,
        eval_path: Option<&Path>,
    ) -> Self {
        let (path, eval_path) = (path.to_path_buf(), eval_path.map(Path::to_path_buf));
        DatasetTask { kind, path, train, eval, eval_path, fingerprint: Default::default() }
    }

    /// Check that every record's `prompt`, `answer` and `solution` is written in `tok`'s alphabet:
    /// the trainer encodes prompts and solutions with it, and a model can only write an answer
    /// whose characters it has. The error names the file and line (JSONL) or row (Parquet) of the
    /// first offending record (in file order), the field and the character, and counts the others.
    pub fn check_alphabet(&self, tok: &CharTokenizer) -> Result<()> {
        let eval_file = self.eval_path.as_deref().unwrap_or(&self.path);
        // (first in reading order: the file, the shard, the line)
        type At = (usize, usize, usize);
        let mut first: Option<(At, &Path, &str, usize, char)> = None;
        let mut count = 0usize;
        let eval_rank = usize::from(self.eval_path.is_some());
        for (rank, file, records) in [(0, self.path.as_path(), &self.train), (eval_rank, eval_file, &self.eval)] {
            for r in records {
                if let Some((field, pos, c)) = unencodable(r, tok) {
                    count += 1;
                    let at = (rank, r.shard.as_ref().map_or(0, |s| s.0), r.line);
                    if first.as_ref().is_none_or(|f| at < f.0) {
                        first = Some((at, r.source(file), field, pos, c));
                    }
                }
            }
        }
        let Some(((_, _, line), file, field, pos, c)) = first else {
            return Ok(());
        };
        let alphabet = if tok.alphabet() == DEFAULT_ALPHABET {
            "the character tokenizer's alphabet (printable ASCII, newline and tab)".to_string()
        } else {
            format!("the character tokenizer's alphabet of {} characters", tok.alphabet().chars().count())
        };
        let more = match count - 1 {
            0 => String::new(),
            n => format!("; {n} more record(s) of the dataset have characters outside it"),
        };
        let msg =
            format!("`{field}`: character {c:?} (U+{:04X}) at position {pos} is not in {alphabet}{more}", u32::from(c));
        Err(bad(file, line, msg))
    }

    /// The file of `split`'s records: `eval_path` for the held-out split when there is one, else
    /// `path` (for a Parquet shard directory, the directory: a record names its shard, [`Record::source`]).
    pub fn file(&self, split: u64) -> &Path {
        match &self.eval_path {
            Some(e) if split == SPLIT_EVAL => e,
            _ => &self.path,
        }
    }

    fn records(&self, split: u64) -> &[Record] {
        if split == SPLIT_EVAL {
            &self.eval
        } else {
            &self.train
        }
    }
}

impl Task for DatasetTask {
    fn name(&self) -> &str {
        self.kind
    }
    fn problem(&self, split: u64, index: u64) -> Problem {
        let records = self.records(split);
        let id = index % records.len() as u64;
        let r = &records[id as usize];
        Problem { id, prompt: r.prompt.clone(), answer: r.answer.clone(), solution: r.solution.clone() }
    }
    fn len(&self, split: u64) -> Option<u64> {
        Some(self.records(split).len() as u64)
    }
    fn record(&self, split: u64, index: u64) -> Option<SourceRecord<'_>> {
        let records = self.records(split);
        let r = records.get((index % records.len().max(1) as u64) as usize)?;
        let file = r.source(self.file(split));
        Some(SourceRecord { file, line: r.line, prompt: &r.prompt, solution: r.solution.as_deref() })
    }
    fn grade(&self, problem: &Problem, response: &str) -> Reward {
        let m = check_answer(response, &problem.answer);
        Reward::new(m.correct, m.found, 0.0)
    }
    fn fingerprint(&self) -> Option<u64> {
        Some(*self.fingerprint.get_or_init(|| {
            // every field a problem is made of, each split's records in order, lengths first so
            // that no two different datasets concatenate to the same bytes
            let mut h = 0x5d_u64;
            let mut eat = |bytes: &[u8]| {
                h = mix64(h ^ bytes.len() as u64);
                for c in bytes.chunks(8) {
                    let mut w = [0u8; 8];
                    w[..c.len()].copy_from_slice(c);
                    h = mix64(h ^ u64::from_le_bytes(w));
                }
            };
            for split in [&self.train, &self.eval] {
                eat(&(split.len() as u64).to_le_bytes());
                for r in split {
                    eat(r.prompt.as_bytes());
                    eat(r.answer.as_bytes());
                    eat(r.solution.as_deref().unwrap_or("\0none").as_bytes());
                }
            }
            h
        }))
    }
}
