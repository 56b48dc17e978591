//! `[data] kind = "parquet"`: a Hugging Face style shard directory loads every row in order and
//! trains end to end; Parquet and JSONL files with the same rows give the same task; malformed
//! files fail at load time naming the file, row group, column and row; and random byte mutations
//! of a good file never panic the reader. Fixtures: tests/fixtures/parquet (written by
//! scripts/make_parquet_fixtures.py, committed, so no pyarrow is needed here).

use arbor::config::{RunConfig, ADDITION_CONFIG};
use arbor::error::Error;
use arbor::tasks::dataset::DatasetTask;
use arbor::tasks::parquet::{read_records, Columns};
use arbor::tasks::{build, Task, TaskConfig, SPLIT_EVAL, SPLIT_TRAIN};
use arbor::train::job;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet").join(name)
}

/// The 60 (question, answer) rows of the three shards, in order, from the script's rows.tsv.
fn expected_rows() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(fixture("rows.tsv")).unwrap();
    text.lines()
        .map(|l| {
            let (q, a) = l.split_once('\t').unwrap();
            (q.to_string(), a.to_string())
        })
        .collect()
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn task_config(text: &str) -> TaskConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The message of the dataset error of loading `path` with default columns (file, line, message).
fn load_error(path: &Path, columns: &Columns) -> (PathBuf, usize, String) {
    match read_records(path, columns) {
        Err(Error::Dataset { file, line, msg }) => (file, line, msg),
        other => panic!("{}: expected a dataset error, got {other:?}", path.display()),
    }
}

#[test]
fn shard_directory_loads_every_row_in_order_and_trains() {
    let rows = read_records(&fixture("hf"), &Columns::default()).unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.prompt.clone(), r.answer.clone())).collect();
    assert_eq!(got, expected_rows(), "shards in name order, rows in file order (shard 1 has 3 row groups)");
    let lines: Vec<usize> = rows.iter().map(|r| r.line).collect();
    assert_eq!(lines, (0..3).flat_map(|_| 1..=20).collect::<Vec<_>>(), "Record::line is the row of its file");
    assert!(rows.iter().all(|r| r.solution.is_none() && r.extra.is_empty()));
    // each row knows its shard, so a bad record is named by the shard's file and row, not by the
    // directory and a row number three shards share
    let shards: Vec<(usize, String)> = rows
        .iter()
        .map(|r| r.shard.as_ref().map(|(k, f)| (*k, f.file_name().unwrap().to_string_lossy().into_owned())).unwrap())
        .collect();
    assert_eq!(shards[0].0, 0);
    assert_eq!(shards[59].0, 2);
    assert!(shards[59].1.starts_with("train-00002-of-00003"), "{:?}", shards[59]);
    let mut bad = rows.clone();
    bad[45].prompt.push('é');
    bad[50].answer.push('ü');
    let task =
        arbor::tasks::dataset::DatasetTask::from_records("parquet", &fixture("hf"), bad, rows[..5].to_vec(), None);
    let e = task.check_alphabet(&arbor::tokenizer::CharTokenizer::default()).unwrap_err().to_string();
    assert!(e.contains("train-00002-of-00003") && e.contains(":6:") && e.contains("1 more record"), "{e}");
    let r = task.record(SPLIT_TRAIN, 45).unwrap();
    assert!(r.file.ends_with(&shards[45].1) && r.line == 6, "{} {}", r.file.display(), r.line);

    let dir = tempfile::tempdir().unwrap();
    let text = ADDITION_CONFIG
        .replace("name = \"addition-sft\"", "name = \"parquet-rl\"")
        .replace("hidden_size = 128", "hidden_size = 32")
        .replace("intermediate_size = 384", "intermediate_size = 64")
        .replace("num_layers = 4", "num_layers = 2")
        .replace("steps = 400", "steps = 0")
        .replace("warmup_steps = 20", "warmup_steps = 0")
        .replace("batch_size = 64", "batch_size = 8")
        .replace("eval_problems = 256", "eval_problems = 8")
        .replace(
            "task = \"addition\"\nmax_digits = 2",
            &format!("kind = \"parquet\"\npath = {}\nheldout_fraction = 0.2", toml_path(&fixture("hf"))),
        )
        + "\n[rl]\nsteps = 2\nprompts_per_step = 4\nsamples_per_prompt = 4\nmax_new_tokens = 6\n"
        + "eval_problems = 8\neval_samples = 2\nlog_every = 1\nfilter_zero_std = false\n";
    let mut cfg = RunConfig::parse(&text, Path::new("parquet.toml")).unwrap();
    cfg.run.out_dir = dir.path().to_path_buf();
    let mut log = Vec::new();
    let report = job::run(&cfg, None, &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("task parquet"), "{log}");
    let (before, after) = report.rl.expect("the config has an [rl] phase");
    assert!((0.0..=1.0).contains(&before.sampled) && (0.0..=1.0).contains(&after.greedy));
    let metrics = std::fs::read_to_string(dir.path().join("parquet-rl/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|v| v.get("reward_mean").is_some()).collect();
    assert_eq!(steps.len(), 2, "{metrics}");
    assert!(steps.iter().all(|s| s["reward_mean"].as_f64().is_some_and(|r| (0.0..=1.0).contains(&r))));
    assert_eq!(lines.iter().filter(|v| v.get("eval_solve_rate").is_some()).count(), 2, "{metrics}");
}

/// Every problem of both splits, past the end (finite splits wrap around).
fn problems(task: &dyn Task) -> Vec<(u64, u64, String, String)> {
    let mut out = Vec::new();
    for split in [SPLIT_TRAIN, SPLIT_EVAL] {
        let n = task.len(split).unwrap();
        for i in 0..n + 3 {
            let p = task.problem(split, i);
            out.push((split, p.id, p.prompt, p.answer));
        }
    }
    out
}

#[test]
fn parquet_and_jsonl_with_the_same_rows_are_the_same_task() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("rows.jsonl");
    let line = |(q, a): &(String, String)| serde_json::json!({"prompt": q, "answer": a}).to_string() + "\n";
    let rows = expected_rows();
    std::fs::write(&jsonl, rows.iter().map(line).collect::<String>()).unwrap();
    let eval_jsonl = dir.path().join("eval.jsonl");
    std::fs::write(&eval_jsonl, rows[40..].iter().map(line).collect::<String>()).unwrap();

    for fraction in [0.1, 0.25, 0.5] {
        let pq = DatasetTask::load_parquet(&fixture("hf"), None, fraction, &Columns::default()).unwrap();
        let js = DatasetTask::load_split(&jsonl, None, fraction).unwrap();
        assert_eq!(pq.len(SPLIT_TRAIN).unwrap() + pq.len(SPLIT_EVAL).unwrap(), 60);
        assert!(pq.len(SPLIT_EVAL).unwrap() > 0);
        assert_eq!(problems(&pq), problems(&js), "heldout_fraction {fraction}");
    }

    // through the config, with a separate held-out file (parquet: shard 2, jsonl: its rows)
    let pq_cfg = task_config(&format!(
        "kind = \"parquet\"\npath = {}\neval_path = {}\nformat_penalty = 0.5",
        toml_path(&fixture("hf")),
        toml_path(&fixture("hf/train-00002-of-00003.parquet"))
    ));
    let js_cfg = task_config(&format!(
        "kind = \"jsonl\"\npath = {}\neval_path = {}\nformat_penalty = 0.5",
        toml_path(&jsonl),
        toml_path(&eval_jsonl)
    ));
    let (pq, js) = (
        build(&pq_cfg, 3, &arbor::tokenizer::TextCodec::default()).unwrap(),
        build(&js_cfg, 3, &arbor::tokenizer::TextCodec::default()).unwrap(),
    );
    assert_eq!((pq.name(), js.name()), ("parquet", "jsonl"));
    // (the held-out file is one of the three training shards: its 20 prompts leave training)
    assert_eq!((pq.len(SPLIT_TRAIN), pq.len(SPLIT_EVAL)), (Some(40), Some(20)));
    assert_eq!(problems(pq.as_ref()), problems(js.as_ref()));
    // the same answer checker and format penalty
    for i in 0..60 {
        let (p, q) = (pq.problem(SPLIT_TRAIN, i), js.problem(SPLIT_TRAIN, i));
        for response in [format!("so \\boxed{{{}}}", p.answer), format!("{}.0", p.answer), "17/3".into(), "?".into()] {
            assert_eq!(pq.grade(&p, &response), js.grade(&q, &response), "{response}");
        }
        assert_eq!(pq.reward(&p, &p.answer), 1.0);
        assert_eq!(pq.reward(&p, "no idea"), -0.5);
    }

    // integer answers read as their decimal text; a `prompt` column is found without configuration
    let ints = read_records(&fixture("int_answers.parquet"), &Columns::default()).unwrap();
    let strings = read_records(&fixture("prompt_answer.parquet"), &Columns::default()).unwrap();
    let explicit = Columns { prompt: Some("prompt".into()), answer: Some("answer".into()) };
    assert_eq!(strings, read_records(&fixture("prompt_answer.parquet"), &explicit).unwrap());
    assert_eq!(ints.len(), 12);
    assert_eq!(ints, strings, "int64 answers equal the same answers stored as strings");
    assert!(ints.iter().all(|r| r.answer.parse::<i64>().is_ok()));
    assert!(ints.iter().any(|r| r.answer.starts_with('-')), "negative answers keep their sign");
    let numeric = |column: &str| {
        let columns = Columns { prompt: None, answer: Some(column.into()) };
        read_records(&fixture("numeric_answers.parquet"), &columns).map(|rows| rows.into_iter().map(|r| r.answer))
    };
    let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(numeric("f64").unwrap().collect::<Vec<_>>(), texts(&["0.5", "-1.25", "3", "0.1"]));
    assert_eq!(numeric("f32").unwrap().collect::<Vec<_>>(), texts(&["0.5", "-1.25", "3", "0.1"]));
    let u64s = texts(&["0", "7", "9223372036854775809", "18446744073709551615"]);
    assert_eq!(numeric("u64").unwrap().collect::<Vec<_>>(), u64s, "unsigned columns are not read as signed");
    assert_eq!(numeric("i8").unwrap().collect::<Vec<_>>(), texts(&["-128", "-1", "0", "127"]));
    match numeric("nan").map(|_| ()) {
        Err(Error::Dataset { line: 3, msg, .. }) => {
            assert!(msg.contains("column `nan` (answer_column): row 3: NaN"), "{msg}")
        }
        other => panic!("expected the NaN in row 3 to be refused, got {other:?}"),
    }
    for codec in ["zstd", "gzip"] {
        let rows = read_records(&fixture(&format!("{codec}.parquet")), &Columns::default()).unwrap();
        assert_eq!(rows, strings, "{codec}-compressed rows");
    }
}

#[test]
fn malformed_files_name_the_file_row_group_column_and_row() {
    let cols = Columns::default();
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();

    let missing = fixture("missing_answer.parquet");
    let (file, line, msg) = load_error(&missing, &cols);
    assert_eq!((file, line), (missing.clone(), 0));
    assert!(msg.contains("no column `answer` (answer_column)") && msg.contains("`question`, `solution`"), "{msg}");
    let err = Error::Dataset { file: missing.clone(), line, msg }.to_string();
    assert!(err.contains(&name(&missing)), "{err}");

    let (_, _, msg) = load_error(&fixture("list_answer.parquet"), &cols);
    assert!(msg.contains("column `answer` (answer_column) is a list"), "{msg}");
    let wrong_prompt = Columns { prompt: Some("answer".into()), answer: None };
    let (_, _, msg) = load_error(&fixture("int_answers.parquet"), &wrong_prompt);
    assert!(msg.contains("column `answer` (prompt_column) is of type INT64") && msg.contains("strings"), "{msg}");
    let absent = Columns { prompt: Some("problem".into()), answer: None };
    let (file, _, msg) = load_error(&fixture("hf"), &absent);
    assert_eq!(name(&file), "train-00000-of-00003.parquet");
    assert!(msg.contains("no column `problem`") && msg.contains("`id`, `question`, `answer`, `source`"), "{msg}");

    let (file, line, msg) = load_error(&fixture("null_answer.parquet"), &cols);
    assert_eq!((name(&file), line), ("null_answer.parquet".into(), 4));
    assert!(msg.contains("row group 1 of 1, column `answer` (answer_column): row 4: null value"), "{msg}");

    let (file, line, msg) = load_error(&fixture("truncated.parquet"), &cols);
    assert_eq!((name(&file), line), ("truncated.parquet".into(), 0));
    assert!(msg.contains("not a readable Parquet file"), "{msg}");
    let (file, _, msg) = load_error(&fixture("bad_page.parquet"), &cols);
    assert_eq!(name(&file), "bad_page.parquet");
    assert!(msg.contains("row group 1 of 1, column `answer` (answer_column)"), "{msg}");

    let (_, _, msg) = load_error(&fixture("brotli.parquet"), &cols);
    assert!(msg.contains("row group 1 of 1, column `question` (prompt_column): compressed with BROTLI,"), "{msg}");

    // no rows, no files, mixed or incomplete shard sets: errors at build time, before training
    let build_error = |path: &Path| {
        let cfg = task_config(&format!("kind = \"parquet\"\npath = {}", toml_path(path)));
        build(&cfg, 0, &arbor::tokenizer::TextCodec::default()).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let empty = fixture("empty.parquet");
    assert_eq!(build_error(&empty), format!("{}:0: no records", empty.display()));
    let dir = tempfile::tempdir().unwrap();
    assert!(build_error(dir.path()).contains("no *.parquet files"));
    for k in [0, 2] {
        let shard = format!("train-0000{k}-of-00003.parquet");
        std::fs::copy(fixture("hf").join(&shard), dir.path().join(&shard)).unwrap();
    }
    let msg = build_error(dir.path());
    assert!(msg.contains("expected 3 shards") && msg.contains("train-00002-of-00003.parquet"), "{msg}");
    std::fs::copy(fixture("hf/train-00001-of-00003.parquet"), dir.path().join("train-00001-of-00003.parquet")).unwrap();
    std::fs::copy(fixture("prompt_answer.parquet"), dir.path().join("test-00000-of-00001.parquet")).unwrap();
    assert!(build_error(dir.path()).contains("several splits (test, train)"));
    std::fs::remove_file(dir.path().join("test-00000-of-00001.parquet")).unwrap();
    let cfg = task_config(&format!("kind = \"parquet\"\npath = {}", toml_path(dir.path())));
    assert_eq!(
        build(&cfg, 0, &arbor::tokenizer::TextCodec::default()).unwrap().len(SPLIT_TRAIN).map(|n| n > 40),
        Some(true)
    );
    let bad_eval = format!(
        "kind = \"parquet\"\npath = {}\neval_path = {}",
        toml_path(dir.path()),
        toml_path(&fixture("list_answer.parquet"))
    );
    let msg = build(&task_config(&bad_eval), 0, &arbor::tokenizer::TextCodec::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("list_answer.parquet:0:") && msg.contains("is a list"), "{msg}");
}

/// SplitMix64, for reproducible mutations.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn random_byte_mutations_never_panic_the_reader() {
    let good = std::fs::read(fixture("hf/train-00001-of-00003.parquet")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutant.parquet");
    let (mut state, mut failed, mut in_pages, mut caught, mut read) = (2024u64, 0, 0, 0, 0);
    for case in 0..1000 {
        let mut bytes = good.clone();
        let edits = 1 + next(&mut state) % 4;
        for _ in 0..edits {
            let at = (next(&mut state) % bytes.len() as u64) as usize;
            match next(&mut state) % 16 {
                0 => bytes.truncate(at.max(1)),
                1..=5 => bytes[at] ^= 1 << (next(&mut state) % 8),
                6..=10 => bytes[at] = next(&mut state) as u8,
                _ => bytes[at] = [0x00, 0xff, 0x7f, 0x80, 0x01][(next(&mut state) % 5) as usize],
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        match read_records(&path, &Columns::default()) {
            Ok(rows) => {
                assert!(rows.len() <= 20, "case {case}: {} rows from a 20-row file", rows.len());
                read += 1;
            }
            Err(Error::Dataset { file, msg, .. }) => {
                assert_eq!(file, path, "case {case}");
                failed += 1;
                in_pages += usize::from(msg.starts_with("row group "));
                caught += usize::from(msg.contains("the Parquet decoder failed"));
            }
            Err(other) => panic!("case {case}: expected a dataset error, got {other}"),
        }
    }
    // `caught`: panics inside the parquet crate that the reader turned into errors (2 of these 1000)
    eprintln!(
        "{failed} mutants refused ({in_pages} while decoding a column chunk, {caught} decoder panics), {read} read"
    );
    assert!(
        failed > 100 && in_pages > 20 && read > 50,
        "{failed} mutants refused ({in_pages} in column chunks), {read} read: the mutations should reach all three"
    );
}

/// Shard names without zero padding are complete and read in their numbers' order; a shard count
/// no directory could hold is refused by name, before anything its size is made.
#[test]
fn shards_are_ordered_by_number_and_absurd_counts_refused() {
    use arbor::tasks::parquet::dataset_files;
    let dir = tempfile::tempdir().unwrap();
    for k in 0..12 {
        std::fs::write(dir.path().join(format!("train-{k}-of-12.parquet")), b"").unwrap();
    }
    let order: Vec<String> = dataset_files(dir.path())
        .unwrap()
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let want: Vec<String> = (0..12).map(|k| format!("train-{k}-of-12.parquet")).collect();
    assert_eq!(order, want);
    let odd = tempfile::tempdir().unwrap();
    std::fs::write(odd.path().join("train-00000-of-99999999999.parquet"), b"").unwrap();
    let e = dataset_files(odd.path()).unwrap_err().to_string();
    assert!(e.contains("99999999999") && e.contains("incomplete"), "{e}");
}
