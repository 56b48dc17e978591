//! `arbor::tasks::check_fits`: a dataset record the run cannot use (no `solution` for supervised
//! steps, a sequence or prompt longer than the model's context) is refused before the run starts,
//! naming the file, the line and the setting; a dataset that fits passes, as do the committed
//! configs; and a large dataset checks quickly.

use arbor::config::RunConfig;
use arbor::error::Error;
use arbor::tasks::dataset::Record;
use arbor::tasks::jsonl::JsonlTask;
use arbor::tasks::{build, check_fits, ContextCheck, TaskConfig, TaskKind};
use std::path::{Path, PathBuf};

const KEY: &str = "model.max_position_embeddings";

static CHAR: std::sync::LazyLock<arbor::tokenizer::TextCodec> = std::sync::LazyLock::new(Default::default);

fn ctx(max: usize, steps: u64, rl: Option<usize>) -> ContextCheck<'static> {
    ContextCheck {
        codec: &CHAR,
        max_position_embeddings: max,
        context_key: KEY,
        supervised_steps: steps,
        rl_max_new_tokens: rl,
    }
}

/// The task `[data]` builds for the JSONL file `name` holding `text` (the held-out file `eval`, when given).
fn dataset(dir: &Path, name: &str, text: &str, eval: Option<&str>) -> (PathBuf, Box<dyn arbor::tasks::Task>) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let eval_path = eval.map(|e| {
        let p = dir.join(format!("eval-{name}"));
        std::fs::write(&p, e).unwrap();
        p
    });
    let cfg = TaskConfig { path: Some(path.clone()), eval_path, ..TaskConfig::new(TaskKind::Jsonl) };
    (path, build(&cfg, 1, &arbor::tokenizer::TextCodec::default()).unwrap())
}

/// The file, line and message of a dataset error.
fn dataset_error(e: Error) -> (PathBuf, usize, String) {
    match e {
        Error::Dataset { file, line, msg } => (file, line, msg),
        other => panic!("expected a dataset error, got {other:?}"),
    }
}

const EVAL: &str = "{\"prompt\": \"5+5=\", \"answer\": 10, \"solution\": \"10\"}\n";

#[test]
fn a_record_without_a_solution_is_refused_for_supervised_steps() {
    let dir = tempfile::tempdir().unwrap();
    let text = "{\"prompt\": \"1+1=\", \"answer\": 2, \"solution\": \"2\"}\n{\"prompt\": \"8+1=\", \"answer\": 9}\n";
    let (path, task) = dataset(dir.path(), "nosol.jsonl", text, Some(EVAL));
    let (file, line, msg) = dataset_error(check_fits(task.as_ref(), &ctx(64, 400, None)).unwrap_err());
    assert_eq!((file, line), (path.clone(), 2));
    assert!(msg.contains("no \"solution\"") && msg.contains("train.steps = 400"), "{msg}");
    let shown = check_fits(task.as_ref(), &ctx(64, 400, None)).unwrap_err().to_string();
    assert!(shown.starts_with(&format!("{}:2: ", path.display())), "{shown}");
    // RL alone does not need solutions
    check_fits(task.as_ref(), &ctx(64, 0, Some(32))).unwrap();
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let long = "9".repeat(100);
    let text = format!(
        "{{\"prompt\": \"1+1=\", \"answer\": 2, \"solution\": \"2\"}}\n\n{{\"prompt\": \"{long}+1=\", \"answer\": 1, \"solution\": \"1\"}}\n"
    );
    let (path, task) = dataset(dir.path(), "long.jsonl", &text, Some(EVAL));
    // supervised: <bos> + 103 + 1 + <eos> = 106 tokens; the blank line 2 still counts as a line
    let (file, line, msg) = dataset_error(check_fits(task.as_ref(), &ctx(64, 1, None)).unwrap_err());
    assert_eq!((file, line), (path.clone(), 3));
    assert!(msg.contains("106 tokens") && msg.contains("model.max_position_embeddings = 64"), "{msg}");
    // RL: <bos> + 103 = 104 tokens leave no room
    let (file, line, msg) = dataset_error(check_fits(task.as_ref(), &ctx(64, 0, Some(32))).unwrap_err());
    assert_eq!((file, line), (path, 3));
    assert!(msg.contains("104 tokens") && msg.contains("leaves no room") && msg.contains(KEY), "{msg}");
    // a context that holds it passes (a prompt may leave less than max_new_tokens)
    check_fits(task.as_ref(), &ctx(106, 1, Some(32))).unwrap();
    assert!(check_fits(task.as_ref(), &ctx(105, 1, Some(32))).is_err());
    // the held-out file is checked as well
    let (path, task) = dataset(dir.path(), "short.jsonl", EVAL, Some(&text));
    let (file, line, _) = dataset_error(check_fits(task.as_ref(), &ctx(64, 0, Some(8))).unwrap_err());
    assert_eq!((file, line), (path.with_file_name("eval-short.jsonl"), 3));
}

#[test]
fn a_dataset_that_fits_passes() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..50)
        .map(|i| format!("{{\"prompt\": \"{i}+{i}=\", \"answer\": {}, \"solution\": \"{}\"}}\n", 2 * i, 2 * i))
        .collect();
    let (_, task) = dataset(dir.path(), "ok.jsonl", &text, None);
    check_fits(task.as_ref(), &ctx(64, 400, Some(5))).unwrap();
    check_fits(task.as_ref(), &ctx(10, 400, Some(5))).unwrap(); // "49+49=" "98": 1 + 6 + 2 + 1
    assert!(check_fits(task.as_ref(), &ctx(9, 400, Some(5))).is_err());
}

#[test]
fn parquet_rows_have_no_solution_for_supervised_steps() {
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet/hf");
    let cfg = TaskConfig { path: Some(hf.clone()), ..TaskConfig::new(TaskKind::Parquet) };
    let task = build(&cfg, 1, &arbor::tokenizer::TextCodec::default()).unwrap();
    let (file, line, msg) = dataset_error(check_fits(task.as_ref(), &ctx(512, 3, None)).unwrap_err());
    let first = task.record(arbor::tasks::SPLIT_TRAIN, 0).map(|r| (r.file.to_path_buf(), r.line));
    assert_eq!(Some((file, line)), first, "the first training row");
    // (the row's own shard, not the directory)
    assert_eq!(first.map(|f| f.0), Some(hf.join("train-00000-of-00003.parquet")));
    assert!(msg.contains("no \"solution\"") && msg.contains("more record(s)"), "{msg}");
    check_fits(task.as_ref(), &ctx(512, 0, Some(16))).unwrap();
}

#[test]
fn committed_configs_fit_their_models() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("compare-") || path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let cfg = RunConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let codec = cfg.text_codec().unwrap();
        let task = cfg.task(&codec).unwrap();
        let max = match &cfg.model.hf_dir {
            Some(d) => {
                let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(d).join("config.json"));
                let v: serde_json::Value = serde_json::from_str(&text.unwrap()).unwrap();
                v["max_position_embeddings"].as_u64().unwrap() as usize
            }
            None => cfg.model.max_position_embeddings,
        };
        let rl = cfg.rl.as_ref().filter(|_| cfg.env.is_none()).map(|r| r.max_new_tokens);
        let check = ContextCheck {
            codec: &codec,
            max_position_embeddings: max,
            context_key: KEY,
            supervised_steps: cfg.train.steps,
            rl_max_new_tokens: rl,
        };
        check_fits(task.as_ref(), &check).unwrap_or_else(|e| panic!("{name}: {e}"));
        n += 1;
    }
    assert!(n >= 3, "{n}");
}

#[test]
fn every_record_of_a_large_dataset_is_counted() {
    let record = |i: usize| Record {
        prompt: format!("What is {i} + {i}? Think step by step, then write the answer on the last line.\n"),
        answer: (2 * i).to_string(),
        solution: Some(format!("{i} + {i} = {}\nThe answer is {}.\n", 2 * i, 2 * i)),
        line: i + 1,
        shard: None,
        extra: Default::default(),
    };
    let (train, eval) = ((0..100_000).map(record).collect(), (100_000..110_000).map(record).collect());
    let task = JsonlTask::from_records("jsonl", Path::new("big.jsonl"), train, eval, None);
    check_fits(&task, &ctx(256, 400, Some(64))).unwrap();
    // every record is counted and refused (the first named, the rest counted)
    let e = check_fits(&task, &ctx(64, 400, Some(64))).unwrap_err().to_string();
    assert!(e.starts_with("big.jsonl:1: ") && e.contains("109999 more record(s)"), "{e}");
}

#[test]
fn a_job_on_a_dataset_without_solutions_stops_before_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"1+1=\", \"answer\": \"2\", \"solution\": \"2\"}\n{\"prompt\": \"8+1=\", \"answer\": \"9\"}\n\
         {\"prompt\": \"2+2=\", \"answer\": \"4\", \"solution\": \"4\"}\n{\"prompt\": \"3+3=\", \"answer\": \"6\", \"solution\": \"6\"}\n",
    )
    .unwrap();
    let text = arbor::config::ADDITION_CONFIG
        .replace(
            "task = \"addition\"\nmax_digits = 2\n",
            &format!("task = \"jsonl\"\npath = {data:?}\nheldout_fraction = 0.25\n"),
        )
        .replace("steps = 400", "steps = 2")
        .replace("warmup_steps = 20", "warmup_steps = 0");
    let mut cfg = arbor::config::RunConfig::parse(&text, std::path::Path::new("d.toml")).unwrap();
    cfg.run.out_dir = dir.path().join("out");
    let e = arbor::train::job::run(&cfg, None, &mut Vec::new()).unwrap_err().to_string();
    assert!(e.contains("d.jsonl:2:") && e.contains("solution"), "{e}");
    assert!(!cfg.run.out_dir.exists(), "the refused job wrote its run directory");
}

/// A resume on a dataset whose records changed since the checkpoint (appended, re-exported,
/// re-sorted) is refused naming data.path before the run directory is touched: problem i would
/// be another record. The same records resume; `--allow-config-change` goes on with the new ones.
#[test]
fn a_resume_on_changed_dataset_records_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    let line = |a: u32, b: u32| {
        format!("{{\"prompt\": \"{a}+{b}=\", \"answer\": \"{}\", \"solution\": \"{}\"}}\n", a + b, a + b)
    };
    let records: String = (1..9).map(|i| line(i, i + 1)).collect();
    std::fs::write(&data, &records).unwrap();
    let text = arbor::config::ADDITION_CONFIG
        .replace(
            "task = \"addition\"\nmax_digits = 2\n",
            &format!("task = \"jsonl\"\npath = {data:?}\nheldout_fraction = 0.25\n"),
        )
        .replace("steps = 400", "steps = 2")
        .replace("warmup_steps = 20", "warmup_steps = 0")
        .replace("batch_size = 64", "batch_size = 4\ncheckpoint_every = 1\nkeep_checkpoints = 5");
    let mut cfg = RunConfig::parse(&text, Path::new("d.toml")).unwrap();
    cfg.run.out_dir = dir.path().join("out");
    arbor::train::job::run(&cfg, None, &mut Vec::new()).unwrap();
    let run = cfg.run.out_dir.join(&cfg.run.name);
    let ck = run.join("checkpoints/step-1");
    assert!(ck.is_dir(), "no checkpoint at step 1");
    let state = std::fs::read_to_string(ck.join("trainer_state.json")).unwrap();
    assert!(state.contains("data_fingerprint"), "{state}");
    // the same records resume
    arbor::train::job::run(&cfg, Some(&ck), &mut Vec::new()).unwrap();
    // a record appended: refused before anything is written
    std::fs::write(&data, records.clone() + &line(20, 21)).unwrap();
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let e = arbor::train::job::run(&cfg, Some(&ck), &mut Vec::new()).unwrap_err().to_string();
    assert!(e.contains("data.path") && e.contains("records differ"), "{e}");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before, "the refused resume wrote");
    cfg.allow_config_change = true;
    arbor::train::job::run(&cfg, Some(&ck), &mut Vec::new()).unwrap();
}
