//! Run-config values that used to pass validation and then panicked, aborted or were silently
//! ignored: each is refused when the file is read, with the file, the dotted key and the value.

use arbor::config::{RunConfig, ADDITION_CONFIG, DEFAULT_CONFIG};
use arbor::model::host_memory::HostMemory;
use std::path::Path;

/// The error of a refused config text, with the file and `key` named (`key` as in `key \`…\``).
fn refused(text: &str, key: &str) -> String {
    match RunConfig::parse(text, Path::new("bad.toml")) {
        Ok(_) => panic!("accepted (expected a refusal naming {key}):\n{text}"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with("bad.toml: key `") && e.contains(key), "expected {key}: {e}");
            e
        }
    }
}

/// The character tokenizer's vocabulary, which a fresh model gets.
fn vocab() -> usize {
    arbor::tokenizer::char::CharTokenizer::default().vocab_size()
}

fn accepted(text: &str) -> RunConfig {
    RunConfig::parse(text, Path::new("ok.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The addition job with an `[rl]` phase and `extra` appended.
fn with_rl(rl: &str) -> String {
    format!("{ADDITION_CONFIG}\n[rl]\nsteps = 10\n{rl}\n")
}

/// `[parallel]` timeouts become `Duration`s and deadlines: beyond 1e9 s they overflowed
/// (`Duration::from_secs_f64` panicked at 1e20).
#[test]
fn timeouts_beyond_the_longest_are_refused_by_key() {
    for key in ["step_timeout_s", "collective_timeout_s"] {
        for v in ["1e20", "1.8446744073709552e19", "1e10", "1000000000.5"] {
            let e = refused(&format!("{ADDITION_CONFIG}\n[parallel]\n{key} = {v}\n"), &format!("parallel.{key}"));
            assert!(e.contains("1e9"), "{e}");
        }
        let ok = accepted(&format!("{ADDITION_CONFIG}\n[parallel]\n{key} = 1e9\n"));
        assert_eq!(ok.parallel.step_timeout_s.max(ok.parallel.collective_timeout_s), 1e9);
        accepted(&format!("{ADDITION_CONFIG}\n[parallel]\n{key} = 0\n"));
    }
}

/// A model loaded from `hf_dir` takes its shape from its config.json: a `[model]` shape key set
/// beside it did nothing.
#[test]
fn model_keys_that_hf_dir_overrides_are_refused() {
    let hf = "hf_dir = \"configs/warmstart/countdown-sft-1800\"";
    assert!(DEFAULT_CONFIG.contains(hf));
    for (line, key) in [
        ("arch = \"llama\"", "model.arch"),
        ("max_position_embeddings = 128", "model.max_position_embeddings"),
        ("rope_theta = 500000.0", "model.rope_theta"),
        ("tie_word_embeddings = true", "model.tie_word_embeddings"),
        ("init_std = 0.5", "model.init_std"),
    ] {
        let e = refused(&DEFAULT_CONFIG.replace(hf, &format!("{hf}\n{line}")), key);
        assert!(e.contains("hf_dir") && e.contains("no effect"), "{e}");
    }
    // defaults written out (a run's recorded config.toml holds every key) are not a change
    let spelled = "arch = \"qwen2\"\nmax_position_embeddings = 256\nrope_theta = 10000.0\ntie_word_embeddings = false\ninit_std = 0.02";
    accepted(&DEFAULT_CONFIG.replace(hf, &format!("{hf}\n{spelled}")));
    // an empty hf_dir would load ./config.json from wherever the job started
    let e = refused(&DEFAULT_CONFIG.replace(hf, "hf_dir = \"\""), "model.hf_dir");
    assert!(e.contains("empty path"), "{e}");
    // a [critic]'s fresh value models read init_std beside a loaded policy
    let critic = DEFAULT_CONFIG.replace(hf, &format!("{hf}\ninit_std = 0.05")) + "\n[critic]\ncount = 1\n";
    assert_eq!(accepted(&critic).model.init_std, 0.05);
}

/// `[loss]` keys the chosen kind or aggregation does not read.
#[test]
fn loss_keys_the_kind_does_not_read_are_refused() {
    let loss = |keys: &str| with_rl("") + "\n[loss]\n" + keys + "\n";
    for kind in ["tis", "topr"] {
        for (line, key) in [
            ("eps_low = 0.1", "loss.eps_low"),
            ("eps_high = 0.3", "loss.eps_high"),
            ("dual_clip = 5.0", "loss.dual_clip"),
            ("decoupled_cap = 2.0", "loss.decoupled_cap"),
        ] {
            let e = refused(&loss(&format!("kind = \"{kind}\"\n{line}")), key);
            assert!(e.contains(kind) && e.contains("no effect"), "{e}");
        }
        accepted(&loss(&format!("kind = \"{kind}\"")));
    }
    refused(&loss("kind = \"cispo\"\ndual_clip = 5.0"), "loss.dual_clip");
    refused(&loss("kind = \"ppo\"\ndecoupled_cap = 2.0"), "loss.decoupled_cap");
    accepted(&loss("kind = \"cispo\"\neps_low = 0.2\neps_high = 0.2"));
    accepted(&loss("kind = \"decoupled_ppo\"\neps_low = 0.1\neps_high = 0.3\ndual_clip = 5.0\ndecoupled_cap = 2.0"));
    // t_max is Dr.GRPO's T_max: only seq-mean-token-sum-norm divides by it
    for agg in ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] {
        let e = refused(&loss(&format!("agg = \"{agg}\"\nt_max = 64")), "loss.t_max");
        assert!(e.contains(agg), "{e}");
    }
    refused(&loss("t_max = 64"), "loss.t_max");
    accepted(&loss("agg = \"seq-mean-token-sum-norm\"\nt_max = 64"));
    // the ratio's π_old: decoupled_ppo reads both log-probs; μ is the tempered distribution at T ≠ 1
    let e = refused(&loss("kind = \"decoupled_ppo\"\nold_logprobs = \"behaviour\""), "loss.old_logprobs");
    assert!(e.contains("no effect"), "{e}");
    for kind in ["ppo", "tis", "topr", "cispo"] {
        let ok = accepted(&loss(&format!("kind = \"{kind}\"\nold_logprobs = \"behaviour\"")));
        assert_eq!(ok.loss.unwrap().old_logprobs, arbor::rl::OldLogprobs::Behaviour);
    }
    let tempered =
        format!("{ADDITION_CONFIG}\n[rl]\nsteps = 10\ntemperature = 0.7\n\n[loss]\nold_logprobs = \"behaviour\"\n");
    let e = refused(&tempered, "loss.old_logprobs");
    assert!(e.contains("0.7") && e.contains("temperature"), "{e}");
    accepted(&tempered.replace("old_logprobs = \"behaviour\"", "old_logprobs = \"recompute\""));
}

/// `min_lr` is where linear/cosine decay ends; a constant schedule never reads it.
#[test]
fn min_lr_with_a_constant_schedule_is_refused() {
    let e = refused(&with_rl("min_lr = 1e-5"), "rl.min_lr");
    assert!(e.contains("constant"), "{e}");
    refused(&with_rl("schedule = \"constant\"\nmin_lr = 1e-5"), "rl.min_lr");
    accepted(&with_rl("schedule = \"cosine\"\nmin_lr = 1e-5"));
    let constant = ADDITION_CONFIG.replace("schedule = \"cosine\"", "schedule = \"constant\"");
    assert_ne!(constant, ADDITION_CONFIG);
    refused(&constant, "train.min_lr");
    accepted(&constant.replace("min_lr = 3e-4", "min_lr = 0"));
}

/// `[rl] steps = 0` ran no RL step; `max_batch` beyond 65,535 passed on the CPU (the GPU refused it).
#[test]
fn an_rl_phase_of_no_steps_and_an_unbounded_max_batch_are_refused() {
    let rl = |steps: &str| format!("{ADDITION_CONFIG}\n[rl]\n{steps}\n");
    let e = refused(&rl("steps = 0"), "rl.steps");
    assert!(e.contains("at least 1"), "{e}");
    for b in ["65536", "1000000000000"] {
        let e = refused(&with_rl(&format!("max_batch = {b}")), "rl.max_batch");
        assert!(e.contains(b) && e.contains("65,535"), "{e}");
    }
    assert_eq!(accepted(&with_rl("max_batch = 65535")).rl.unwrap().max_batch, 65_535);
}

/// A RoPE table of 2^35 positions aborted the process (`memory allocation of 549755813888 bytes
/// failed`); a model whose training state is larger than the machine did too.
#[test]
fn models_larger_than_arbor_or_the_machine_are_refused_by_key() {
    for v in ["34359738368", "1048577"] {
        let text = ADDITION_CONFIG.replace("max_position_embeddings = 64", &format!("max_position_embeddings = {v}"));
        let e = refused(&text, "model.max_position_embeddings");
        assert!(e.contains(v) && e.contains("2^20"), "{e}");
    }
    accepted(&ADDITION_CONFIG.replace("max_position_embeddings = 64", "max_position_embeddings = 1048576"));
    // ~1.2e11 parameters: 1.9 TB of weights, gradients and moments
    let huge = ADDITION_CONFIG
        .replace("hidden_size = 128", "hidden_size = 32768")
        .replace("intermediate_size = 384", "intermediate_size = 131072")
        .replace("num_layers = 4", "num_layers = 8")
        .replace("num_heads = 4", "num_heads = 256");
    let cfg: RunConfig = toml::from_str(&huge).unwrap();
    let mc = cfg.model.fresh_config(vocab());
    let need = mc.training_bytes();
    assert!(need > 1_900_000_000_000 && need < 2_000_000_000_000, "{need}");
    let gib24 = HostMemory::mem_total(24 << 30);
    let e = mc.memory_shortfall(&gib24).expect("1.9 TB do not fit in 24 GiB");
    for part in ["hidden_size 32768", "intermediate_size 131072", "num_layers 8", "num_heads 256", &need.to_string()] {
        assert!(e.contains(part), "{part}: {e}");
    }
    assert!(e.contains("MemTotal in /proc/meminfo"), "the message says where the figure comes from: {e}");
    assert_eq!(mc.memory_shortfall(&HostMemory::mem_total(u64::MAX)), None);
    match arbor::model::host_memory::host_memory() {
        Some(mem) if u128::from(mem.bytes) < need => {
            let e = refused(&huge, "`model`");
            let named = e.contains(&mem.bytes.to_string()) && e.contains(&mem.source);
            assert!(e.contains(&need.to_string()) && named, "{e}");
        }
        other => println!("machine memory {other:?}: the parse-time check is not exercised here"),
    }
    // every shipped model shape still fits a 24 GiB machine (CI's)
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [
        "configs/models/qwen2-0.5b-shape",
        "configs/models/bench-tiny",
        "configs/models/rehearsal-tiny",
        "configs/warmstart/countdown-sft",
    ] {
        let mc = arbor::model::ModelConfig::from_hf_file(&root.join(dir).join("config.json")).unwrap();
        assert_eq!(mc.memory_shortfall(&gib24), None, "{dir}: {} bytes", mc.training_bytes());
    }
    let addition: RunConfig = toml::from_str(ADDITION_CONFIG).unwrap();
    assert_eq!(addition.model.fresh_config(vocab()).memory_shortfall(&gib24), None);
}

/// TOML's own errors (an integer beyond i64) named `line 27` instead of the key.
#[test]
fn an_out_of_range_integer_is_named_by_its_key() {
    for (from, to, key) in [
        ("steps = 400", "steps = 99999999999999999999", "train.steps"),
        ("seed = 1234", "seed = 18446744073709551616", "run.seed"),
    ] {
        assert!(ADDITION_CONFIG.contains(from));
        let e = refused(&ADDITION_CONFIG.replace(from, to), key);
        assert!(e.contains("line"), "{e}");
    }
    let e = refused(&with_rl("max_new_tokens = 99999999999999999999"), "rl.max_new_tokens");
    assert!(e.contains("too large"), "{e}");
}

/// An `hf_dir` model whose training needs more than the memory this process may use (16 bytes a
/// parameter) is refused, naming its config.json and the figures, before its weights are read or
/// the run directory is made. Before, it was read into memory and the allocation aborted the job.
#[test]
fn an_hf_dir_model_larger_than_the_memory_is_refused_before_it_is_read() {
    let Some(mem) = arbor::model::host_memory::host_memory() else {
        println!("skipped: this machine's memory cannot be read");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("big");
    std::fs::create_dir(&hf).unwrap();
    // layers of 4096 wide (about 2.7e8 parameters each), enough to need more than `mem`
    let mut mc = arbor::model::ModelConfig {
        hidden_size: 4096,
        intermediate_size: 16384,
        num_layers: 1,
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 128,
        vocab_size: vocab(),
        max_position_embeddings: 256,
        ..common_shape()
    };
    let per_layer = {
        let two = arbor::model::ModelConfig { num_layers: 2, ..mc.clone() };
        two.num_params() - mc.num_params()
    };
    mc.num_layers = (mem.bytes / 16 / per_layer as u64) as usize + 2;
    let need = mc.training_bytes();
    assert!(need > u128::from(mem.bytes));
    std::fs::write(hf.join("config.json"), serde_json::to_string_pretty(&mc.to_hf_json()).unwrap()).unwrap();
    // weights files as large as bf16 weights would be (sparse: nothing is written)
    let weights = std::fs::File::create(hf.join("model.safetensors")).unwrap();
    weights.set_len(2 * mc.num_params() as u64).unwrap();
    let text = ADDITION_CONFIG
        .replace("hidden_size = 128\n", "")
        .replace("intermediate_size = 384\n", "")
        .replace("num_layers = 4\n", "")
        .replace("num_heads = 4\n", "")
        .replace("num_kv_heads = 2\n", "")
        .replace("max_position_embeddings = 64\n", "")
        .replace("[model]\n", &format!("[model]\nhf_dir = {:?}\n", hf.display().to_string()));
    let mut cfg = RunConfig::parse(&text, Path::new("hf.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    cfg.run.out_dir = dir.path().join("runs");
    let e = arbor::train::job::run(&cfg, None, &mut Vec::new()).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("model.hf_dir") && e.contains("num_hidden_layers"), "{e}");
    assert!(e.contains(&need.to_string()) && e.contains(&mem.bytes.to_string()) && e.contains(&mem.source), "{e}");
    assert!(!cfg.run.out_dir.exists(), "nothing is written for a refused model");
}

/// A fresh Qwen2 shape to build others from.
fn common_shape() -> arbor::model::ModelConfig {
    RunConfig::parse(ADDITION_CONFIG, Path::new("a.toml")).unwrap().fresh_model(vocab(), 1, Path::new("m")).unwrap()
}

/// An evaluation of more sequences than a step may hold (they are built together) is refused by
/// key when the file is read, not in an allocation after the supervised phase.
#[test]
fn an_evaluation_beyond_the_sequence_bound_is_refused() {
    let e = refused(&with_rl("eval_problems = 1000000000"), "rl.eval_problems");
    assert!(e.contains("at most 2^24"), "{e}");
    accepted(&with_rl("eval_problems = 4000000\neval_samples = 3"));
}
