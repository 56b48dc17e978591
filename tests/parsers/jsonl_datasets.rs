//! JSONL datasets.

use super::*;

const GOOD_JSONL: &str = concat!(
    "{\"prompt\": \"12+30=\", \"answer\": 42, \"solution\": \"42\"}\n",
    "{\"prompt\": \"What is 1/2 + 1/4?\", \"answer\": \"3/4\", \"level\": 2}\n",
    "\n",
    "{\"prompt\": \"Say \\\"hi\\\"\\n\", \"answer\": \"hi\", \"solution\": null, \"tags\": [\"a\", {\"b\": 1}]}\n",
    "{\"prompt\": \"2*3=\", \"answer\": 6.0e0}\n",
);

/// Parse `text`; an error must be a dataset error naming the file and a line of the text, and
/// the alphabet check on what parsed must not panic either.
fn check_jsonl(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("fuzzed.jsonl");
    let lines = text.lines().count();
    match parse_records(text, file) {
        Ok(records) => {
            prop_assert!(records.iter().all(|r| (1..=lines).contains(&r.line)));
            let task = JsonlTask::from_records("jsonl", file, records, Vec::new(), None);
            if let Err(e) = task.check_alphabet(&CharTokenizer::default()) {
                let msg = e.to_string();
                prop_assert!(msg.starts_with("fuzzed.jsonl:") && msg.contains("is not in"), "{msg}");
            }
        }
        Err(Error::Dataset { file: f, line, msg }) => {
            prop_assert_eq!(f.as_path(), file);
            prop_assert!((1..=lines).contains(&line), "line {} of {}: {}", line, lines, msg);
        }
        Err(e) => prop_assert!(false, "not a dataset error: {}", e),
    }
    Ok(())
}

fn write_dataset(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write dataset");
    path
}

#[test]
fn jsonl_records_outside_the_alphabet_fail_when_the_task_is_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut good = String::new();
    for i in 0..40 {
        good += &format!("{{\"prompt\": \"{i}+1=\", \"answer\": {}}}\n", i + 1);
    }
    let cfg = |path: PathBuf, eval: Option<PathBuf>| TaskConfig {
        path: Some(path),
        eval_path: eval,
        ..TaskConfig::new(TaskKind::Jsonl)
    };
    build(&cfg(write_dataset(dir.path(), "good.jsonl", &good), None), 1, &arbor::tokenizer::TextCodec::default())
        .expect("an ASCII dataset builds");
    let bad = format!("{good}{{\"prompt\": \"1+1=\", \"answer\": \"2\", \"solution\": \"two → 2\"}}\n");
    let path = write_dataset(dir.path(), "bad.jsonl", &bad);
    let msg = build(&cfg(path.clone(), None), 1, &arbor::tokenizer::TextCodec::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let at = format!("{}:41: `solution`: character '→' (U+2192)", path.display());
    assert!(msg.starts_with(&at), "{msg}");
    // the held-out file is checked as well, before any training or evaluation
    let eval = write_dataset(dir.path(), "eval.jsonl", "{\"prompt\": \"3×4=\", \"answer\": 12}\n");
    let msg = build(
        &cfg(write_dataset(dir.path(), "train.jsonl", &good), Some(eval.clone())),
        1,
        &arbor::tokenizer::TextCodec::default(),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(msg.starts_with(&format!("{}:1: `prompt`: character '×'", eval.display())), "{msg}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn jsonl_parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_jsonl(&text)?;
    }

    #[test]
    fn jsonl_parse_never_panics_on_json_like_lines(
        lines in proptest::collection::vec("\\{(\"(prompt|answer|solution|x)\": ([-0-9.e]{1,6}|\"[ -~é∞]{0,6}\"|null|\\[\\]|\\{\\}|true), ?){0,4}\\}", 0..6)
    ) {
        check_jsonl(&lines.join("\n"))?;
    }

    #[test]
    fn jsonl_parse_never_panics_on_mutated_datasets(edits in edits(4)) {
        check_jsonl(&mutate_text(GOOD_JSONL, &edits))?;
    }
}
