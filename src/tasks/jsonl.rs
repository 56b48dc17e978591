//! JSONL datasets: one JSON object per line with string `prompt` and `answer` (a string or a
//! number), an optional string `solution` (a reference response for supervised training) and any
//! other fields (kept in [`Record::extra`]). Responses are graded by [`crate::tasks::answer`].
//!
//! The held-out split is either a second file or, by default, the records whose prompt hashes
//! into `eval_fraction` (so duplicated prompts never straddle the splits).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::rng::mix64;
use crate::tasks::answer::check_answer;
use crate::tasks::{Problem, Reward, Task, SPLIT_EVAL};
use crate::tokenizer::{CharTokenizer, DEFAULT_ALPHABET};

/// One dataset record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The text the model continues.
    pub prompt: String,
    /// The reference answer (a JSON number is kept in its JSON spelling).
    pub answer: String,
    /// An optional reference response.
    pub solution: Option<String>,
    /// 1-based line number in the source file.
    pub line: usize,
    /// Other fields of the object.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn bad(file: &Path, line: usize, msg: impl Into<String>) -> Error {
    Error::Dataset { file: file.to_path_buf(), line, msg: msg.into() }
}

/// Parse JSONL text (blank lines are skipped); errors name `file` and the 1-based line.
pub fn parse_records(text: &str, file: &Path) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| bad(file, line, format!("invalid JSON: {e}")))?;
        let serde_json::Value::Object(mut obj) = value else {
            return Err(bad(file, line, "expected a JSON object with `prompt` and `answer`"));
        };
        let prompt = match obj.remove("prompt") {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err(bad(file, line, "`prompt` must be a string")),
            None => return Err(bad(file, line, "missing `prompt`")),
        };
        let answer = match obj.remove("answer") {
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(_) => return Err(bad(file, line, "`answer` must be a string or a number")),
            None => return Err(bad(file, line, "missing `answer`")),
        };
        let solution = match obj.remove("solution") {
            Some(serde_json::Value::String(s)) => Some(s),
            None | Some(serde_json::Value::Null) => None,
            Some(_) => return Err(bad(file, line, "`solution` must be a string")),
        };
        out.push(Record { prompt, answer, solution, line, extra: obj });
    }
    Ok(out)
}

fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let records = parse_records(&text, path)?;
    if records.is_empty() {
        return Err(bad(path, 0, "no records"));
    }
    Ok(records)
}

/// Whether a prompt belongs to the derived held-out split.
fn prompt_heldout(prompt: &str, fraction: f64) -> bool {
    let h = prompt.bytes().fold(0x0150_u64, |h, c| mix64(h ^ u64::from(c)));
    (h % 10_000) as f64 / 10_000.0 < fraction
}

/// A task over JSONL records; splits are finite and wrap around.
#[derive(Debug, Clone)]
pub struct JsonlTask {
    /// The dataset file.
    pub path: PathBuf,
    /// Training records.
    pub train: Vec<Record>,
    /// Held-out records.
    pub eval: Vec<Record>,
    /// The held-out file, when the held-out records come from one (else they come from `path`).
    pub eval_path: Option<PathBuf>,
}

/// The first field of `r` with a character `tok` cannot encode: (field, character position, character).
fn unencodable(r: &Record, tok: &CharTokenizer) -> Option<(&'static str, usize, char)> {
    let fields = [("prompt", Some(&r.prompt)), ("answer", Some(&r.answer)), ("solution", r.solution.as_ref())];
    fields.into_iter().find_map(|(name, text)| text.and_then(|t| tok.first_unknown(t)).map(|(pos, c)| (name, pos, c)))
}

impl JsonlTask {
    /// Load `path`, holding out 10 % of the prompts.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_split(path, None, 0.1)
    }

    /// Load `path`; the held-out split is `eval_path` when given, else the records whose prompt
    /// hashes into `eval_fraction` (both splits must end up non-empty).
    pub fn load_split(path: impl AsRef<Path>, eval_path: Option<&Path>, eval_fraction: f64) -> Result<Self> {
        let path = path.as_ref();
        let records = read_records(path)?;
        let (train, eval) = match eval_path {
            Some(e) => (records, read_records(e)?),
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
        Ok(JsonlTask { path: path.to_path_buf(), train, eval, eval_path: eval_path.map(Path::to_path_buf) })
    }

    /// Check that every record's `prompt`, `answer` and `solution` is written in `tok`'s alphabet:
    /// the trainer encodes prompts and solutions with it, and a model can only write an answer
    /// whose characters it has. The error names the file and line of the first offending record
    /// (in file order), the field and the character, and counts the others.
    pub fn check_alphabet(&self, tok: &CharTokenizer) -> Result<()> {
        let eval_file = self.eval_path.as_deref().unwrap_or(&self.path);
        let mut first: Option<(usize, &Path, usize, &str, usize, char)> = None;
        let mut count = 0usize;
        let eval_rank = usize::from(self.eval_path.is_some());
        for (rank, file, records) in [(0, self.path.as_path(), &self.train), (eval_rank, eval_file, &self.eval)] {
            for r in records {
                if let Some((field, pos, c)) = unencodable(r, tok) {
                    count += 1;
                    if first.is_none_or(|f| (rank, r.line) < (f.0, f.2)) {
                        first = Some((rank, file, r.line, field, pos, c));
                    }
                }
            }
        }
        let Some((_, file, line, field, pos, c)) = first else {
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

    fn records(&self, split: u64) -> &[Record] {
        if split == SPLIT_EVAL {
            &self.eval
        } else {
            &self.train
        }
    }
}

impl Task for JsonlTask {
    fn name(&self) -> &str {
        "jsonl"
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
    fn grade(&self, problem: &Problem, response: &str) -> Reward {
        let m = check_answer(response, &problem.answer);
        Reward::new(m.correct, m.found, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_name_their_line() {
        let f = Path::new("data.jsonl");
        let line_of = |text: &str| match parse_records(text, f) {
            Err(Error::Dataset { line, msg, .. }) => (line, msg),
            other => panic!("expected a dataset error, got {other:?}"),
        };
        let ok = "{\"prompt\": \"1+1=\", \"answer\": 2}\n";
        assert_eq!(line_of(&format!("{ok}\n{{\"prompt\": \"x\"}}")).0, 3);
        assert_eq!(line_of(&format!("{ok}{{oops")).0, 2);
        assert_eq!(line_of("[1, 2]").0, 1);
        assert!(line_of("{\"prompt\": 1, \"answer\": \"2\"}").1.contains("prompt"));
        assert!(line_of("{\"prompt\": \"a\", \"answer\": [2]}").1.contains("answer"));
        let r = parse_records(&format!("{ok}{{\"prompt\": \"p\", \"answer\": \"1/2\", \"level\": 3}}"), f).unwrap();
        assert_eq!((r[0].answer.as_str(), r[1].line, r[1].extra["level"].as_u64()), ("2", 2, Some(3)));
        let err = parse_records("{}", f).unwrap_err().to_string();
        assert!(err.starts_with("data.jsonl:1:"), "{err}");
    }

    #[test]
    fn characters_outside_the_alphabet_name_file_line_field_and_character() {
        let task = |train: &str, eval: &str| JsonlTask {
            path: "train.jsonl".into(),
            train: parse_records(train, Path::new("train.jsonl")).unwrap(),
            eval: parse_records(eval, Path::new("eval.jsonl")).unwrap(),
            eval_path: Some("eval.jsonl".into()),
        };
        let tok = CharTokenizer::default();
        let ok = "{\"prompt\": \"1+1=<eos>\", \"answer\": 2, \"solution\": \"2\"}\n";
        task(ok, ok).check_alphabet(&tok).unwrap();
        let e = task(&format!("{ok}{{\"prompt\": \"2+2=\", \"answer\": \"4\", \"solution\": \"4 ✓\"}}\n"), ok)
            .check_alphabet(&tok)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("train.jsonl:2: `solution`: character '✓' (U+2713) at position 2"), "{e}");
        assert!(!e.contains("more record"), "{e}");
        // the held-out file counts too, and the first bad record in file order is named
        let e = task(ok, &format!("{ok}{ok}{{\"prompt\": \"café\", \"answer\": \"é\"}}\n"))
            .check_alphabet(&tok)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("eval.jsonl:3: `prompt`: character 'é'"), "{e}");
        let mut one_file = task(&format!("{ok}{{\"prompt\": \"x\", \"answer\": \"½\"}}\n"), "");
        one_file.eval_path = None;
        one_file.eval = parse_records("\n\n\n{\"prompt\": \"π\", \"answer\": 3}", Path::new("train.jsonl")).unwrap();
        let e = one_file.check_alphabet(&tok).unwrap_err().to_string();
        assert!(e.starts_with("train.jsonl:2: `answer`: character '½'"), "{e}");
        assert!(e.contains("1 more record(s)"), "{e}");
        let small = CharTokenizer::new("0123456789+=").unwrap();
        task(ok, ok).check_alphabet(&small).unwrap();
        let e = task("{\"prompt\": \"a=\", \"answer\": 1}", ok).check_alphabet(&small).unwrap_err().to_string();
        assert!(
            e.starts_with("train.jsonl:1: `prompt`: character 'a'") && e.contains("alphabet of 12 characters"),
            "{e}"
        );
    }
}
