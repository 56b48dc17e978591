//! Every committed run configuration parses, validates and builds its task.

use arbor::config::RunConfig;

#[test]
fn a_bad_comparison_method_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/default.toml");
    let text = format!(
        "[compare]\nbase = {:?}\nrl_steps = 2\neval_every = 1\nmethods = [\"grpo\", \"magic\"]\nout_dir = \"x\"\n",
        base.to_str().unwrap()
    );
    std::fs::write(&p, text).unwrap();
    let e = format!("{:#}", arbor::cli::experiment::plan(&p).unwrap_err());
    assert!(e.contains("c.toml") && e.contains("magic"), "{e}");
    // the methods' configs pass a run config's checks; the file's numbers are finite
    let asyppo =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/compare-asyppo.toml"))
            .unwrap()
            .replace("configs/default.toml", base.to_str().unwrap());
    for (from, to, says) in [
        ("count = 2", "count = 0", "critic.count"),
        ("lr = 5e-4", "lr = nan", "critic.lr"),
        ("eval_problems = 300", "eval_problems = 0", "rl.eval_problems"),
    ] {
        assert!(asyppo.contains(from), "{from}");
        std::fs::write(&p, asyppo.replace(from, to)).unwrap();
        let e = format!("{:#}", arbor::cli::experiment::plan(&p).unwrap_err());
        assert!(e.contains("c.toml") && e.contains(says), "{to}: {e}");
    }
}

#[test]
fn committed_configs_parse_and_build_their_tasks() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("compare-") {
            // comparison presets: every method's run config validates
            let cfgs = arbor::cli::experiment::plan(&path).unwrap_or_else(|e| panic!("{e:#}"));
            let counts: Vec<usize> = cfgs.iter().filter_map(|c| c.critic.as_ref().map(|k| k.count)).collect();
            match name.as_str() {
                "compare-asyppo.toml" => {
                    // PPO's one critic has the policy's size; AsyPPO's two are smaller
                    assert_eq!(counts, [1, 2]);
                    let ppo = cfgs[1].critic.as_ref().unwrap();
                    assert!(ppo.hidden_size.is_none() && cfgs[2].critic.as_ref().unwrap().hidden_size == Some(64));
                }
                _ => assert!(cfgs.iter().any(|c| c.attnrl.is_some()) && cfgs.iter().any(|c| c.rhythm.is_some())),
            }
            continue;
        }
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = RunConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let task = cfg.task(&cfg.text_codec().unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let p = task.problem(arbor::tasks::SPLIT_TRAIN, 0);
            assert!(!p.prompt.is_empty() && p.solution.is_some(), "{}: {p:?}", path.display());
            n += 1;
        }
    }
    assert!(n >= 3, "expected the default, addition-grpo and countdown-grpo configs");
}

/// The configs for Hub models (`configs/hub/`) name inputs a user downloads first, so their tasks
/// are not built here; they parse and validate, their prompt templates are in their model's
/// chat format, and their device memory plan (`train::memory_plan`, on their model's dimensions,
/// `configs/models/*-shape`, with GSM8K prompts of up to 256 tokens) fits an 80 GB GPU.
#[test]
fn hub_model_configs_parse_and_validate() {
    use arbor::train::memory_plan::{Lengths, MemoryPlan, LARGE_GPU_HEAD_CHUNK};
    let shape = |file: &str| match file {
        "qwen2.5-0.5b-gsm8k.toml" => "qwen2-0.5b-shape",
        "qwen3-1.7b-base-gsm8k.toml" => "qwen3-1.7b-shape",
        other => panic!("configs/hub/{other}: name its model's shape (configs/models) here"),
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/hub");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cfg = RunConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let template = cfg.model.prompt_template.as_deref().unwrap_or_else(|| panic!("{}", path.display()));
        assert!(template.starts_with("<|im_start|>") && template.ends_with("<|im_start|>assistant\n"), "{template:?}");
        assert!(cfg.model.hf_dir.is_some() && cfg.rl.is_some(), "{}", path.display());
        let file = path.file_name().unwrap().to_str().unwrap();
        let dims = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/models").join(shape(file));
        let model = arbor::model::ModelConfig::from_hf_file(&dims.join("config.json")).unwrap();
        let lengths = Lengths { prompt: 256, sequence: 0 };
        let plan = MemoryPlan::of(&cfg, (&model, &model), lengths, 1, LARGE_GPU_HEAD_CHUNK).unwrap();
        println!("{file}:\n{}", plan.lines(Some(80 << 30)).join("\n"));
        assert!(plan.over(76 << 30).is_none(), "{file}: {:?}", plan.over(76 << 30));
        n += 1;
    }
    assert!(n >= 1);
}
