//! JSONL datasets: one JSON object per line with string `prompt` and `answer` (a string or a
//! number), an optional string `solution` (a reference response for supervised training) and any
//! other fields (kept in [`Record::extra`]). The records make a [`DatasetTask`] (shared with the
//! Parquet reader): held-out split, problem indexing and grading are described in
//! [`super::dataset`].

use std::path::Path;

use crate::error::{Error, Result};
pub use crate::tasks::dataset::Record;
use crate::tasks::dataset::{bad, DatasetTask};

/// The JSONL task: the one [`DatasetTask`], loaded with [`DatasetTask::load`] / [`DatasetTask::load_split`].
pub type JsonlTask = DatasetTask;

/// Parse JSONL text (blank lines are skipped; a leading UTF-8 byte-order mark, as some Windows
/// tools write, is not part of the first line); errors name `file` and the 1-based line.
pub fn parse_records(text: &str, file: &Path) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
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
            // an integer beyond 64 bits (or a float of 2^53 or more) reaches us as an f64 that
            // has lost its digits: the reference must be exact
            Some(serde_json::Value::Number(n))
                if n.as_f64().is_some_and(|x| n.is_f64() && x.abs() >= 9.007_199_254_740_992e15) =>
            {
                return Err(bad(
                    file,
                    line,
                    format!("`answer` {n} is too large for a JSON number to hold exactly; write it as a string"),
                ));
            }
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(_) => return Err(bad(file, line, "`answer` must be a string or a number")),
            None => return Err(bad(file, line, "missing `answer`")),
        };
        let solution = match obj.remove("solution") {
            Some(serde_json::Value::String(s)) => Some(s),
            None | Some(serde_json::Value::Null) => None,
            Some(_) => return Err(bad(file, line, "`solution` must be a string")),
        };
        out.push(Record { prompt, answer, solution, line, shard: None, extra: obj });
    }
    Ok(out)
}

/// Read the records of the JSONL file `path` (an empty file gives an empty list).
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // the line of the first byte that is not UTF-8
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        bad(path, line, "not UTF-8 text")
    })?;
    parse_records(&text, path)
}

impl DatasetTask {
    /// Load the JSONL file `path`, holding out 10 % of the prompts.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_split(path, None, 0.1)
    }

    /// Load the JSONL file `path`; the held-out split is the JSONL file `eval_path` when given,
    /// else the records whose prompt hashes into `eval_fraction` (see [`DatasetTask::load_with`]).
    pub fn load_split(path: impl AsRef<Path>, eval_path: Option<&Path>, eval_fraction: f64) -> Result<Self> {
        Self::load_with("jsonl", path.as_ref(), eval_path, eval_fraction, read_records)
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
        // a byte-order mark before the first record (it failed as "invalid JSON" on line 1)
        let r = parse_records(&format!("\u{feff}{ok}{ok}"), f).unwrap();
        assert_eq!((r.len(), r[0].prompt.as_str()), (2, "1+1="));
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, b"{\"prompt\": \"1+1=\", \"answer\": 2}\n{\"prompt\": \"\xff\", \"answer\": 1}\n").unwrap();
        match read_records(&p) {
            Err(Error::Dataset { line, msg, .. }) => assert_eq!((line, msg.contains("UTF-8")), (2, true), "{msg}"),
            other => panic!("expected a dataset error, got {other:?}"),
        }
    }

    #[test]
    fn characters_outside_the_alphabet_name_file_line_field_and_character() {
        use crate::tokenizer::CharTokenizer;
        let task = |train: &str, eval: &str| {
            let (train, eval) = (
                parse_records(train, Path::new("train.jsonl")).unwrap(),
                parse_records(eval, Path::new("eval.jsonl")).unwrap(),
            );
            JsonlTask::from_records("jsonl", Path::new("train.jsonl"), train, eval, Some(Path::new("eval.jsonl")))
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
