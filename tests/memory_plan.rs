//! The device memory plan (`train::memory_plan`): its parts follow the config's keys (the state's
//! bytes a parameter, the KL reference, the critics, the KV cache, the micro-batch bounds,
//! gradient checkpointing), the largest phase counts once, a plan over the device's memory names
//! the keys that size it, and `arbor train --check` of a GPU config prints it without a GPU.

use arbor::config::RunConfig;
use arbor::model::workspace::{planned_bytes, BufferSizes};
use arbor::model::ModelConfig;
use arbor::train::memory_plan::{Lengths, MemoryPlan, LARGE_GPU_HEAD_CHUNK};
use std::path::Path;

/// Qwen3-0.6B's dimensions.
fn qwen3() -> ModelConfig {
    ModelConfig::from_hf_file(Path::new("configs/models/qwen3-0.6b-shape/config.json")).unwrap()
}

/// A zero-RL GPU job (the addition task's config, no supervised steps): 64 prompts × 8 samples of
/// up to 1024 new tokens, bf16.
fn job(extra_train: &str, extra_rl: &str, tail: &str) -> RunConfig {
    let text = arbor::config::ADDITION_CONFIG
        .replace("steps = 400", "steps = 0")
        .replace("[train]\n", &format!("[train]\ndevice = \"cuda\"\ndtype = \"bf16\"\n{extra_train}\n"))
        + &format!(
            "\n[rl]\nsteps = 10\nprompts_per_step = 64\nsamples_per_prompt = 8\nmax_new_tokens = 1024\n\
             max_batch = 256\nlr = 1e-6\neval_problems = 64\neval_samples = 1\n{extra_rl}\n{tail}"
        );
    RunConfig::parse(&text, Path::new("plan.toml")).unwrap()
}

fn part<'a>(plan: &'a MemoryPlan, starts: &str) -> &'a arbor::train::memory_plan::Part {
    plan.resident
        .iter()
        .chain(&plan.phases)
        .find(|p| p.what.starts_with(starts))
        .unwrap_or_else(|| panic!("no part {starts:?} in {plan:#?}"))
}

const GIB: u128 = 1 << 30;

#[test]
fn the_plan_follows_the_keys_that_size_each_part() {
    let m = qwen3();
    let lengths = Lengths { prompt: 200, sequence: 0 };
    let p = m.num_params() as u128;
    let plan = |cfg: &RunConfig| MemoryPlan::of(cfg, (&m, &m), lengths, 1, LARGE_GPU_HEAD_CHUNK).unwrap();

    let base = plan(&job("", "", "[loss]\nkl_coef = 0.0\n"));
    assert_eq!(part(&base, "policy").bytes, 18 * p, "f32 weights, gradients, moments and a bf16 image");
    assert!(base.resident.len() == 1 && base.phases.len() == 2, "{base:#?}");
    // the KV cache: 257 slots (256 + the spare) × 1224 positions × 28 layers × (K, V) × 8 × 128 × bf16
    let kv = 2 * 28 * 257 * 8 * 1224 * 128 * 2;
    let generation = part(&base, "generation");
    assert!(generation.what.contains("256 sequences × 1224 positions"), "{}", generation.what);
    assert!(generation.bytes > kv && generation.bytes < kv + 2 * GIB, "{} vs {kv}", generation.bytes);
    // the whole mini-batch at once: 512 sequences of 1224 positions
    let update = part(&base, "RL update");
    assert!(update.what.contains("up to 626688 tokens (every layer kept)"), "{}", update.what);
    assert_eq!(base.total(), 18 * p + update.bytes, "the largest phase counts, once");

    // a token budget, then checkpointing: the same n, the workspace's own sizes
    let sizes = |ckpt| {
        let s = BufferSizes { act_bytes: 2, head_chunk_elems: LARGE_GPU_HEAD_CHUNK, attn_scratch: 16384 * m.num_heads };
        planned_bytes(&m, 16384, ckpt, s)
    };
    let budget = plan(&job("", "micro_batch_tokens = 16384", "[loss]\nkl_coef = 0.0\n"));
    let update = part(&budget, "RL update");
    assert!(update.what.contains("up to 16384 tokens"), "{}", update.what);
    assert_eq!(update.bytes, sizes(false));
    let ckpt = plan(&job("gradient_checkpointing = true", "micro_batch_tokens = 16384", "[loss]\nkl_coef = 0.0\n"));
    let update = part(&ckpt, "RL update");
    assert!(update.what.contains("(checkpointed)"), "{}", update.what);
    assert_eq!(update.bytes, sizes(true));
    assert!(sizes(true) * 2 < sizes(false), "checkpointing saves most of the activations");
    // a micro-batch of 4 sequences: 4 × 1224 tokens
    let micro = plan(&job("", "micro_batch = 4", "[loss]\nkl_coef = 0.0\n"));
    assert!(part(&micro, "RL update").what.contains("up to 4896 tokens"));

    // the KL reference's weights and image; two critics of the policy's size
    let kl = plan(&job("", "", "[loss]\nkl_coef = 0.01\n"));
    assert_eq!(part(&kl, "KL reference").bytes, 6 * p);
    let critics = plan(&job("", "", "[loss]\nkl_coef = 0.0\n[critic]\ncount = 2\n"));
    assert_eq!(part(&critics, "2 critics").bytes, 2 * 18 * p);
    // data parallelism splits the step's samples (and the slots they need) over the ranks
    let dp8 =
        MemoryPlan::of(&job("", "", "[loss]\nkl_coef = 0.0\n"), (&m, &m), lengths, 8, LARGE_GPU_HEAD_CHUNK).unwrap();
    assert!(part(&dp8, "RL update").what.contains("up to 78336 tokens"));
    assert!(part(&dp8, "generation").what.contains("64 sequences"));
    // the optimizer's moments sharded over the 8 ranks: 8 + 1 + 2 bytes a parameter
    let mut sharded = job("", "", "[loss]\nkl_coef = 0.0\n");
    sharded.parallel.shard_optimizer = true;
    let sharded = MemoryPlan::of(&sharded, (&m, &m), lengths, 8, LARGE_GPU_HEAD_CHUNK).unwrap();
    assert_eq!(part(&sharded, "policy").bytes, 8 * p + p + 2 * p);
    assert!(part(&sharded, "policy").what.contains("1/8 of the AdamW moments"));
    // the held-out evaluation's generation where it takes more slots than a step's
    let mut evals = job("", "", "[loss]\nkl_coef = 0.0\n");
    let rl = evals.rl.as_mut().unwrap();
    (rl.eval_problems, rl.eval_samples) = (500, 4);
    let evals = MemoryPlan::of(&evals, (&m, &m), lengths, 8, LARGE_GPU_HEAD_CHUNK).unwrap();
    assert!(part(&evals, "generation").what.contains("250 sequences"));
}

#[test]
fn a_plan_over_the_devices_memory_names_its_keys() {
    let m = qwen3();
    let cfg = job("", "", "[loss]\nkl_coef = 0.0\n");
    let plan = MemoryPlan::of(&cfg, (&m, &m), Lengths { prompt: 200, sequence: 0 }, 1, LARGE_GPU_HEAD_CHUNK).unwrap();
    let over = plan.over(80 << 30).expect("626688 tokens of activations do not fit 80 GiB");
    assert!(over.contains("rl.micro_batch_tokens") && over.contains("GiB"), "{over}");
    assert!(plan.over(u64::MAX).is_none());
    let lines = plan.lines(Some(80 << 30));
    assert!(lines[0].contains("of the device's 80.0 GiB"), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.contains("<- the largest phase")).count(), 1, "{lines:?}");
}

#[test]
fn check_prints_a_gpu_configs_plan_without_a_gpu() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args([
            "train",
            "--check",
            "--config",
            "configs/countdown-gpu.toml",
            "--set",
            "train.gradient_checkpointing=true",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("device memory plan, a training rank of dp 1 × tp 1: about"), "{out}");
    for part in ["policy: 25285120 parameters", "supervised step", "generation: KV cache", "RL update"] {
        assert!(out.contains(part), "{part}: {out}");
    }
    assert!(out.contains("(checkpointed)") && out.contains("<- the largest phase"), "{out}");
    assert!(out.contains("(no device here to compare with)") && !out.contains("warning:"), "{out}");
    // against the GPU it will run on: a 1 GiB one is too small, and the warning names the keys
    let check = |gib: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["train", "--check", "--config", "configs/countdown-gpu.toml", "--device-memory", gib])
            .output()
            .unwrap()
    };
    let o = check("1");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("of the device's 1.0 GiB"), "{out}");
    assert!(out.contains("warning: the plan needs about") && out.contains("rl.micro_batch_tokens"), "{out}");
    let o = check("80");
    assert!(o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("warning:"));
    let o = check("0");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--device-memory 0"), "{err}");
    // for a job of 8 ranks, tp 2 with its optimizer sharded: a rank's shard, share and part
    let ranks = |n: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["train", "--check", "--config", "configs/countdown-gpu.toml", "--ranks", n])
            .args(["--set", "parallel.tp=2", "--set", "parallel.shard_optimizer=true"])
            .output()
            .unwrap()
    };
    let o = ranks("8");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("a training rank of dp 4 × tp 2"), "{out}");
    assert!(out.contains("1/4 of the AdamW moments") && !out.contains("policy: 25285120 parameters"), "{out}");
    let o = ranks("3");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--ranks 3: a multiple of parallel.tp = 2"), "{err}");
    // a CPU job has no plan
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["train", "--check", "--config", "configs/addition-sft.toml"])
        .output()
        .unwrap();
    assert!(o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("device memory plan"));
}
