//! A run trains with its model's own tokenizer: a Hub-style model directory (byte-level BPE
//! `tokenizer.json`, chat special tokens, several `eos_token_id`s) is encoded, stopped, rewarded,
//! checkpointed and resumed with that tokenizer; arbor's own models keep the character tokenizer.

mod common;

use arbor::config::RunConfig;
use arbor::tokenizer::{TextCodec, Tokenizer};
use common::{write_bpe_model, BPE_ENDOFTEXT, BPE_IM_END, BPE_IM_START, BPE_TEMPLATE};
use std::path::Path;

fn bytes(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

#[test]
fn the_model_directory_decides_the_tokenizer() {
    let warm = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/warmstart/countdown-sft-1800");
    // arbor's own checkpoints (and a directory with weights only) keep the character tokenizer
    assert!(TextCodec::for_model(Some(&warm), None).unwrap().as_char().is_some());
    let empty = tempfile::tempdir().unwrap();
    assert!(TextCodec::for_model(Some(empty.path()), None).unwrap().as_char().is_some());
    assert!(TextCodec::for_model(None, None).unwrap().as_char().is_some());
    // a tokenizer arbor cannot read, without a tokenizer.json, is refused naming its file
    for f in ["tokenizer.model", "vocab.json"] {
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(f), b"x").unwrap();
        let e = TextCodec::for_model(Some(other.path()), None).unwrap_err().to_string();
        assert!(e.contains(f) && e.contains("format arbor does not read"), "{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    write_bpe_model(dir.path(), 1);
    let codec = TextCodec::for_model(Some(dir.path()), None).unwrap();
    assert!(codec.as_char().is_none());
    // the tokenizer's eos first, then config.json's and generation_config.json's, each once
    assert_eq!(codec.stop_ids(), [BPE_IM_END, BPE_ENDOFTEXT]);
    assert_eq!(codec.eos_id(), BPE_IM_END);
    assert_eq!(codec.pad_id(), BPE_ENDOFTEXT);
    // no tokenizer-level eos (none named, none of the usual names) and no eos_token_id anywhere:
    // responses could not end
    std::fs::write(dir.path().join("tokenizer_config.json"), "{}").unwrap();
    let tokenizer = std::fs::read_to_string(dir.path().join("tokenizer.json")).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.replace("<|endoftext|>", "<|sep|>")).unwrap();
    std::fs::remove_file(dir.path().join("generation_config.json")).unwrap();
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("eos_token_id");
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    let e = TextCodec::for_model(Some(dir.path()), None).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("no end-of-sequence token"), "{e}");
}

#[test]
fn prompts_responses_and_supervised_sequences_use_the_hf_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    write_bpe_model(dir.path(), 1);
    let codec = TextCodec::for_model(Some(dir.path()), Some(BPE_TEMPLATE)).unwrap();
    // the template's special tokens are one id each; "10" and " =" are merges, the rest bytes
    let mut want = vec![BPE_IM_START];
    want.extend(bytes("user\n"));
    want.extend([257, 256]);
    want.extend(bytes("1"));
    want.extend([BPE_IM_END]);
    want.extend(bytes("\n"));
    want.push(BPE_IM_START);
    want.extend(bytes("assistant\n"));
    assert_eq!(codec.prompt("10 =1").unwrap(), want);
    assert_eq!(codec.prompt_len("10 =1").unwrap(), want.len());
    // without a template the prompt is encoded as it is (Qwen2 adds no <bos>)
    let plain = TextCodec::for_model(Some(dir.path()), None).unwrap();
    assert_eq!(plain.prompt("10 =1").unwrap(), [257, 256, 49]);
    // a supervised sequence: prompt, solution, the tokenizer's eos
    let (ids, start) = codec.supervised("10 =1", "café").unwrap();
    assert_eq!(&ids[..start], &want[..]);
    let mut solution = bytes("café");
    solution.push(BPE_IM_END);
    assert_eq!(&ids[start..], &solution[..]);
    // a response's text: stop ids dropped wherever they are, bytes joined into characters
    let parts: [&[u32]; 2] = [&bytes("x = 1")[..], &[257, BPE_ENDOFTEXT, BPE_IM_END]];
    assert_eq!(codec.response_text(&parts), "x = 110");
    assert_eq!(codec.response_text(&[&bytes("é")]), "é");
    assert_eq!(codec.piece(257), "10");
    assert_eq!(codec.text_len("10 =").unwrap(), 2);
    // a file that asks for truncation and padding: a prompt is still encoded whole and unpadded
    let path = dir.path().join("tokenizer.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["truncation"] =
        serde_json::json!({"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0});
    v["padding"] = serde_json::json!({"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null,
                                      "pad_id": BPE_ENDOFTEXT, "pad_type_id": 0, "pad_token": "<|endoftext|>"});
    std::fs::write(&path, v.to_string()).unwrap();
    let cut = TextCodec::for_model(Some(dir.path()), Some(BPE_TEMPLATE)).unwrap();
    assert_eq!(cut.prompt("10 =1").unwrap(), want);
    assert_eq!(cut.encode("café").unwrap(), bytes("café"));
}

/// The run's config: 2 supervised steps, then 2 GRPO steps, every checkpoint kept.
fn job(run_dir: &Path, model: &Path, data: &Path) -> String {
    format!(
        r#"
[run]
name = "hub"
seed = 5
out_dir = {out:?}
threads = 1

[model]
hf_dir = {model:?}
prompt_template = {template:?}

[data]
task = "jsonl"
path = {train:?}
eval_path = {eval:?}

[train]
steps = 2
batch_size = 4
lr = 1e-3
eval_problems = 3
log_every = 1
checkpoint_every = 1
keep_checkpoints = 10

[rl]
steps = 2
prompts_per_step = 2
samples_per_prompt = 4
max_new_tokens = 12
temperature = 1.0
lr = 1e-3
advantage = "grpo"
eval_problems = 3
eval_samples = 1
log_every = 1
"#,
        out = run_dir,
        template = BPE_TEMPLATE,
        train = data.join("train.jsonl"),
        eval = data.join("eval.jsonl"),
    )
}

/// A Hub-style model (seed `seed`) in `tmp/model` and a JSONL dataset in `tmp/data`
/// (`train.jsonl`, `eval.jsonl`); returns the two directories.
fn hub(tmp: &Path, seed: u64, train: &str, eval: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (model, data) = (tmp.join("model"), tmp.join("data"));
    write_bpe_model(&model, seed);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("train.jsonl"), train).unwrap();
    std::fs::write(data.join("eval.jsonl"), eval).unwrap();
    (model, data)
}

#[test]
fn a_hub_style_model_trains_checkpoints_and_resumes_with_its_own_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    // prompts outside the character tokenizer's alphabet are fine for a byte-level tokenizer
    let rows = |range: std::ops::Range<u32>| -> String {
        range
            .map(|i| {
                format!("{{\"prompt\": \"café {i}+10=\", \"answer\": \"{}\", \"solution\": \"{}\"}}\n", i + 10, i + 10)
            })
            .collect()
    };
    let (model, data) = hub(tmp.path(), 3, &rows(0..12), &rows(20..23));
    let text = job(&tmp.path().join("runs"), &model, &data);
    let cfg = RunConfig::parse(&text, Path::new("hub.toml")).unwrap();
    let report = arbor::train::job::run(&cfg, None, &mut Vec::new()).unwrap();
    let run = tmp.path().join("runs/hub");
    let last = run.join("checkpoints/step-4");

    // the checkpoint carries the model's tokenizer and every stop id: it evaluates and resumes alike
    let source = TextCodec::for_model(Some(&model), Some(BPE_TEMPLATE)).unwrap();
    let saved = TextCodec::for_model(Some(&last), Some(BPE_TEMPLATE)).unwrap();
    assert_eq!(saved.stop_ids(), source.stop_ids());
    for s in ["café 3+10=", "<|im_start|>x<|im_end|>", "10 = 10"] {
        assert_eq!(saved.prompt(s).unwrap(), source.prompt(s).unwrap(), "{s:?}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(last.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["eos_token_id"], serde_json::json!([BPE_IM_END, BPE_ENDOFTEXT]));
    assert!(matches!(Tokenizer::from_dir(&last).unwrap(), Some(Tokenizer::Hf(_))));

    // every rollout's prompt is the templated prompt; responses end at the first stop id; rewards
    // are the task's grade of the decoded text
    #[cfg(feature = "hdf5")]
    {
        let task = cfg.task(&source).unwrap();
        let t = arbor::io::trajectories::read_trajectories(&run.join("trajectories.h5")).unwrap();
        assert_eq!(t.len(), 2 * 2 * 4);
        for i in 0..t.len() {
            let r = t.record(i).unwrap();
            let problem = task.problem(arbor::tasks::SPLIT_TRAIN, r.prompt_id);
            assert_eq!(r.prompt, &source.prompt(&problem.prompt).unwrap()[..], "sample {i}");
            assert_eq!(r.prompt[0], BPE_IM_START);
            let inner = &r.response[..r.response.len().saturating_sub(1)];
            assert!(inner.iter().all(|id| !source.stop_ids().contains(id)), "sample {i} ran past a stop");
            assert_eq!(r.reward, task.reward(&problem, &source.response_text(&[r.response])), "sample {i}");
        }
    }

    // another revision of the tokenizer downloaded into the model directory since (no merges): the
    // resume reads text with the checkpoint's tokenizer, so it still ends with the same weights
    let path = model.join("tokenizer.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["model"]["merges"] = serde_json::json!([]);
    std::fs::write(&path, v.to_string()).unwrap();
    let newer = TextCodec::for_model(Some(&model), Some(BPE_TEMPLATE)).unwrap();
    assert_ne!(newer.prompt("café 3+10=").unwrap(), source.prompt("café 3+10=").unwrap());
    // and the model directory's weights are gone (a resume takes the checkpoint's, reading none of
    // the directory's): a resume from the first RL step's checkpoint ends with the same weights
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    let again = tmp.path().join("again");
    let text = job(&again, &model, &data);
    let cfg = RunConfig::parse(&text, Path::new("hub.toml")).unwrap();
    let resumed = arbor::train::job::run(&cfg, Some(&run.join("checkpoints/step-3")), &mut Vec::new()).unwrap();
    assert_eq!(resumed.final_params, report.final_params);
    // the model directory purged altogether (a scratch file system's policy): the checkpoint holds
    // the model's config, weights and tokenizer, and the resume says what it took them from
    std::fs::remove_dir_all(&model).unwrap();
    let third = tmp.path().join("third");
    let text = job(&third, &model, &data);
    let cfg = RunConfig::parse(&text, Path::new("hub.toml")).unwrap();
    let mut log = Vec::new();
    let resumed = arbor::train::job::run(&cfg, Some(&run.join("checkpoints/step-3")), &mut log).unwrap();
    assert_eq!(resumed.final_params, report.final_params);
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("has no config.json any more") && log.contains("step-3"), "{log}");
}

#[test]
fn a_model_smaller_than_its_tokenizer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, eval) = (
        "{\"prompt\": \"1+1=\", \"answer\": \"2\", \"solution\": \"2\"}\n",
        "{\"prompt\": \"2+1=\", \"answer\": \"3\", \"solution\": \"3\"}\n",
    );
    let (model, data) = hub(tmp.path(), 3, train, eval);
    // the tokenizer has 261 ids; a model of 200 rows has none for the others
    let cfg = arbor::model::ModelConfig {
        vocab_size: 200,
        ..arbor::model::ModelConfig::from_hf_file(&model.join("config.json")).unwrap()
    };
    let params = arbor::model::init::init_params(&cfg, 1, 0.02);
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    arbor::io::save_hf_dir(&model, &cfg, &params, &arbor::io::SaveOptions::default()).unwrap();
    let text = job(&tmp.path().join("runs"), &model, &data);
    let cfg = RunConfig::parse(&text, Path::new("hub.toml")).unwrap();
    let e = arbor::train::job::run(&cfg, None, &mut Vec::new()).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("vocab_size") && e.contains("261 ids of its tokenizer"), "{e}");
    assert!(!tmp.path().join("runs/hub").exists(), "a refused job wrote its run directory");
}

#[test]
fn a_prompt_template_is_checked_by_key() {
    let with = |template: &str| {
        let text =
            arbor::config::ADDITION_CONFIG.replace("[model]\n", &format!("[model]\nprompt_template = {template:?}\n"));
        RunConfig::parse(&text, Path::new("t.toml")).and_then(|cfg| cfg.text_codec().map(|_| cfg))
    };
    for bad in ["Q: {prompt} {prompt}", "no placeholder"] {
        let e = with(bad).unwrap_err().to_string();
        assert!(e.contains("model.prompt_template") && e.contains("placeholder"), "{bad:?}: {e}");
    }
    // the character tokenizer encodes the template too
    let e = with("Frage: {prompt} → ").unwrap_err().to_string();
    assert!(e.contains("model.prompt_template") && e.contains("'→'"), "{e}");
    let cfg = with("Q: {prompt}\nA: ").unwrap();
    let codec = cfg.text_codec().unwrap();
    let char = arbor::tokenizer::CharTokenizer::default();
    let mut want = vec![arbor::tokenizer::BOS_ID];
    want.extend(char.encode("Q: 1+2=\nA: ").unwrap());
    assert_eq!(codec.prompt("1+2=").unwrap(), want);
}

/// A Qwen2-style tokenizer adds no `<bos>`: an empty prompt without a template has no id to
/// generate after, and is refused by file and line before the run starts.
#[test]
fn an_empty_prompt_without_a_bos_is_refused_by_line() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = "{\"prompt\": \"1+1=\", \"answer\": \"2\"}\n{\"prompt\": \"\", \"answer\": \"3\"}\n";
    let (model, data) = hub(tmp.path(), 3, rows, "{\"prompt\": \"2+1=\", \"answer\": \"3\"}\n");
    let text = job(&tmp.path().join("runs"), &model, &data)
        .replace(&format!("prompt_template = {BPE_TEMPLATE:?}\n"), "")
        .replace("steps = 2\nbatch_size", "steps = 0\nbatch_size");
    let cfg = RunConfig::parse(&text, Path::new("hub.toml")).unwrap();
    assert!(cfg.model.prompt_template.is_none() && cfg.train.steps == 0);
    let e = arbor::train::job::run(&cfg, None, &mut Vec::new()).unwrap_err().to_string();
    assert!(e.contains("train.jsonl:2") && e.contains("the prompt is empty"), "{e}");
    // with a template the same record has a prompt
    let text = job(&tmp.path().join("runs"), &model, &data).replace("steps = 2\nbatch_size", "steps = 0\nbatch_size");
    let cfg = RunConfig::parse(&text, Path::new("hub.toml")).unwrap();
    let codec = cfg.text_codec().unwrap();
    let check = arbor::tasks::ContextCheck {
        codec: &codec,
        max_position_embeddings: 128,
        context_key: "k",
        supervised_steps: 0,
        rl_max_new_tokens: Some(8),
    };
    arbor::tasks::check_fits(cfg.task(&codec).unwrap().as_ref(), &check).unwrap();
}

/// `arbor eval --model CHECKPOINT` without `--config` scores the checkpoint on its own run's task,
/// template and tokenizer: on the stream of the run's last evaluation it gives that evaluation.
#[test]
fn eval_of_a_checkpoint_uses_the_run_it_came_from() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = |range: std::ops::Range<u32>| -> String {
        range.map(|i| format!("{{\"prompt\": \"{i}+10=\", \"answer\": \"{}\"}}\n", i + 10)).collect()
    };
    let (model, data) = hub(tmp.path(), 4, &rows(0..8), &rows(20..26));
    let text = job(&tmp.path().join("runs"), &model, &data)
        .replace("steps = 2\nbatch_size", "steps = 0\nbatch_size")
        .replace("eval_samples = 1", "eval_samples = 2");
    let cfg = RunConfig::parse(&text, Path::new("hub.toml")).unwrap();
    arbor::train::job::run(&cfg, None, &mut Vec::new()).unwrap();
    let run = tmp.path().join("runs/hub");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value =
        metrics.lines().rfind(|l| l.contains("eval_solve_rate")).map(|l| serde_json::from_str(l).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["--threads", "1", "eval", "--model", run.join("checkpoints/step-2").to_str().unwrap()])
        .args(["--step", "2", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // the run's evaluation settings (the default job's are 500 problems × 4 samples)
    assert_eq!((&got["eval_problems"], &got["eval_samples"]), (&serde_json::json!(3), &serde_json::json!(2)));
    assert_eq!(got["eval_solve_rate"], last["eval_solve_rate"]);
    assert_eq!(got["eval_solve_rate_greedy"], last["eval_solve_rate_greedy"]);
}
