//! The RL step on the GPU against the CPU, through one test body run on each engine
//! (`train::engine::Engine`): sampling, the policy update with PPO clipping, the entropy bonus, the
//! KL reference, mini-batches and accumulation, device AdamW; then a whole `[rl]` job with
//! `device = "cuda"` and its resume. Without a GPU the engine's refusal is checked instead.

use super::common::{metrics_without_clock, small_addition, small_default, tiny_config};
use super::{close, emulated, gpu, gpu_required, request_groups};
use arbor::config::{Device, RunConfig};
use arbor::model::{init::init_params, Arch, Model};
use arbor::parallel::Local;
use arbor::rl::{Aggregation, LossConfig, LossKind};
use arbor::rollout::{Completion, GenerateConfig, Request, SamplingParams};
use arbor::train::adamw::{AdamW, AdamWConfig};
use arbor::train::engine::Engine;
use arbor::train::job;
use arbor::train::rl::{policy_update, Sample, UpdateBatch, UpdateBuffers, UpdatePlan, UpdateSettings};

/// What one engine did: the step's completions, the loss of each update, and the weights and
/// first moments after them (on the host).
struct Trace {
    completions: Vec<Completion>,
    losses: Vec<f64>,
    params: Vec<f32>,
    moments: Vec<f32>,
}

fn policy() -> Model {
    let mut cfg = tiny_config(Arch::Qwen2, false);
    cfg.max_position_embeddings = 64;
    Model::new(cfg.clone(), init_params(&cfg, 17, 1.0)).unwrap()
}

/// 4 prompts × 4 samples at T = 1, up to 12 new tokens, stop token 12.
fn rollout_case() -> (Vec<Request>, GenerateConfig) {
    let prompts = [vec![1, 2, 3], vec![4, 5, 6, 7, 8], vec![9], vec![10, 11, 0, 1, 2, 3]];
    let requests = request_groups(&prompts, 4);
    let cfg = GenerateConfig {
        sampling: SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 12 },
        stop_tokens: vec![12],
        seed: 9,
        step: 1,
        max_batch: 16,
        workload: None,
    };
    (requests, cfg)
}

/// GRPO samples of `completions`: reward = the share of even tokens in the response, advantage =
/// (r − group mean) / (group std + 1e-6), broadcast to every token.
fn grpo_samples(requests: &[Request], completions: &[Completion]) -> Vec<Sample> {
    let reward =
        |c: &Completion| c.tokens.iter().filter(|&&t| t % 2 == 0).count() as f32 / c.tokens.len().max(1) as f32;
    let mut out = Vec::new();
    for (r, c) in requests.iter().zip(completions) {
        let group: Vec<f32> = completions.iter().filter(|o| o.prompt_id == c.prompt_id).map(reward).collect();
        let mean = group.iter().sum::<f32>() / group.len() as f32;
        let std = (group.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / group.len() as f32).sqrt();
        let adv = (reward(c) - mean) / (std + 1e-6);
        if c.tokens.is_empty() {
            continue;
        }
        out.push(Sample {
            prompt: r.prompt.clone(),
            response: c.tokens.clone(),
            behav_logp: c.logprobs.clone(),
            advantages: vec![adv; c.tokens.len()],
            reward: reward(c),
        });
    }
    out
}

/// The test body, the same for every engine: generate the step's samples, then 3 updates (each 2
/// mini-batches of micro-batches of 3, PPO with entropy bonus and KL to the start) on `feed`'s
/// samples when given (so both engines train on the same sequences), else on its own.
fn grpo_on(engine: &mut Engine, base: &Model, feed: Option<&[Completion]>) -> Trace {
    let (requests, gen) = rollout_case();
    let completions = engine.generate(base, &requests, &gen).unwrap();
    let samples = grpo_samples(&requests, feed.unwrap_or(&completions));
    assert!(samples.iter().any(|s| s.advantages[0] != 0.0), "no sample has an advantage: the test tests nothing");
    let mut model = base.clone();
    // (eps 1e-6: with 1e-8 a gradient element within the f32 noise of 0, of opposite signs on the
    // two devices, would move by ±lr at the first step and fail the weights' 1e-5; at 1e-6 such
    // an element moves by lr·|g|/1e-6, far below it, while every other one steps as usual)
    let ocfg = AdamWConfig { eps: 1e-6, ..AdamWConfig::default() };
    let mut opt = AdamW::for_layout(ocfg, &model.params.layout);
    engine.load(&model, &opt).unwrap();
    let mut buf = UpdateBuffers::new(&model);
    let loss = LossConfig {
        kind: LossKind::Ppo,
        agg: Aggregation::TokenMean,
        kl_coef: 0.05,
        entropy_coef: 0.01,
        ..LossConfig::default()
    };
    let plan = UpdatePlan { epochs: 1, mini_batches: 2, micro_batch: 3.into(), grad_clip: 1.0 };
    let settings = UpdateSettings { loss: &loss, plan, lr: 1e-3, reference: Some(base) };
    let mut losses = Vec::new();
    for _ in 0..3 {
        let r = policy_update(engine, &mut model, &mut opt, UpdateBatch::of(&samples), &settings, &mut buf).unwrap();
        assert_eq!(r.skipped_updates, 0);
        losses.extend(r.losses);
    }
    engine.sync_host(&mut model, &mut opt).unwrap();
    Trace { completions, losses, params: model.params.data, moments: opt.m }
}

/// A GRPO step on the GPU equals the CPU's: the sampled tokens for all sequences but at most one
/// (a logit within rounding of a sampling boundary may flip a token), then 3 updates on the CPU's
/// samples with losses within 1e-4 and weights within 1e-5.
#[test]
fn a_grpo_step_on_the_gpu_matches_the_cpu() {
    let base = policy();
    let cpu = grpo_on(&mut Engine::cpu(), &base, None);
    assert!(cpu.params != base.params.data, "the updates changed nothing");
    if gpu().is_none() {
        return;
    }
    let mut dev = Engine::new(Device::Cuda, &base, &Local).unwrap();
    let gpu = grpo_on(&mut dev, &base, Some(&cpu.completions));
    let differ = cpu.completions.iter().zip(&gpu.completions).filter(|(a, b)| a.tokens != b.tokens).count();
    println!("{differ} of {} sampled completions differ between the engines", cpu.completions.len());
    assert!(differ <= 1, "{differ} completions differ");
    for (k, (a, b)) in cpu.losses.iter().zip(&gpu.losses).enumerate() {
        println!("update {k}: loss cpu {a:.8} gpu {b:.8}");
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "update {k}: loss {a} vs {b}");
    }
    assert_eq!(cpu.losses.len(), gpu.losses.len());
    close("weights after 3 RL updates", &gpu.params, &cpu.params, 1e-5);
    close("AdamW m after 3 RL updates", &gpu.moments, &cpu.moments, 1e-4);
}

/// A tiny `[rl]` job: 2 supervised steps, then `rl_steps` GRPO steps, on `device`.
fn rl_job(out: &std::path::Path, device: &str, rl_steps: u64) -> RunConfig {
    let text = small_addition(2).replace("[train]\n", &format!("[train]\ndevice = \"{device}\"\n"))
        + "checkpoint_every = 1\nkeep_checkpoints = 20\n"
        + &format!("\n[rl]\nsteps = {rl_steps}\nprompts_per_step = 4\nsamples_per_prompt = 4\nmax_new_tokens = 5\n")
        + "eval_problems = 8\neval_samples = 2\neval_every = 2\nlog_every = 1\nfilter_zero_std = false\n"
        + "mini_batches = 2\nmicro_batch = 3\nlr = 1e-3\n"
        + "\n[loss]\nkind = \"ppo\"\nkl_coef = 0.01\nentropy_coef = 0.01\n";
    let mut c = RunConfig::parse(&text, std::path::Path::new("rl_gpu.toml")).unwrap();
    c.run.out_dir = out.to_path_buf();
    c
}

/// `[rl]` with `device = "cuda"`: the job runs SFT and RL on the GPU, and 2 RL steps + resume + 2
/// equal 4 straight steps bit for bit (weights and metrics). Without a GPU it stops at once with
/// the engine's "no usable CUDA device", never a refusal of `[rl]`.
#[test]
fn an_rl_job_on_the_gpu_runs_and_resumes_bit_identically() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut log = Vec::new();
    let straight = job::run(&rl_job(a.path(), "cuda", 4), None, &mut log);
    if arbor::cuda::unavailable().is_some() {
        assert!(!gpu_required(), "ARBOR_REQUIRE_GPU=1 but no CUDA device is usable");
        let Err(err) = straight else { panic!("device = \"cuda\" without a GPU must fail") };
        let err = err.to_string();
        assert!(err.contains("no usable CUDA device") && !err.contains("[rl]"), "{err}");
        println!("skipped: no CUDA device; the RL job failed cleanly: {err}");
        return;
    }
    let straight = straight.unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("rl: generation and training on cuda"), "{log}");
    // (resumed into another directory, which takes the record of the steps before from the
    // checkpoint's run: the straight run's, so its steps are not run twice)
    let run_b = b.path().join("addition-sft");
    let ck = a.path().join("addition-sft/checkpoints/step-4"); // 2 SFT + 2 RL steps
    let resumed = job::run(&rl_job(b.path(), "cuda", 4), Some(&ck), &mut Vec::new()).unwrap();
    assert_eq!(straight.final_params, resumed.final_params, "GPU weights differ after an RL resume");
    let (ma, mb) = (metrics_without_clock(&a.path().join("addition-sft")), metrics_without_clock(&run_b));
    assert_eq!(ma, mb, "GPU metrics differ after an RL resume");
    // every step line says how much of the GPU is in use (left out of the comparison above)
    let text = std::fs::read_to_string(run_b.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps = steps.iter().filter(|v| v.get("loss").is_some());
    assert!(steps.clone().count() >= 4, "{text}");
    for v in steps {
        assert!(v["device_mem_mib"].as_f64().is_some_and(|m| m > 0.0), "no device memory figure in {v}");
        assert!(v["device_peak_mib"].as_f64().is_some_and(|m| m > 0.0), "no peak memory figure in {v}");
    }
    let (before, after) = straight.rl.unwrap();
    println!("GPU RL job: solve rate {:.3} → {:.3} (sampled)", before.sampled, after.sampled);
    // and the CPU engine runs the same job to the same supervised weights within f32 noise
    let c = tempfile::tempdir().unwrap();
    let cpu = job::run(&rl_job(c.path(), "cpu", 4), None, &mut Vec::new()).unwrap();
    assert_eq!(cpu.losses.len(), straight.losses.len());
    for (x, y) in cpu.losses.iter().zip(&straight.losses) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "SFT loss cpu {x} gpu {y}");
    }
}

/// The default job (Countdown warm start) shrunk to 4 RL steps of 4 prompts, on the GPU, with
/// `[rl]` with `dtype = "bf16"` on the GPU (tensor-core products and attention, weight images, a
/// bf16 KV cache): 2 RL steps + resume + 2 equal 4 straight steps bit for bit (the weight images
/// are rebuilt from the restored weights), with finite losses.
#[test]
fn a_bf16_rl_job_resumes_bit_identically() {
    if super::gpu().is_none() {
        return;
    }
    let job_at = |out: &std::path::Path| {
        let mut c = rl_job(out, "cuda", 4);
        c.train.dtype = arbor::config::Dtype::Bf16;
        c
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = job::run(&job_at(a.path()), None, &mut Vec::new()).unwrap();
    assert!(straight.losses.iter().all(|l| l.is_finite()), "{:?}", straight.losses);
    // (resumed from the straight run's checkpoint into another directory, as above)
    let run_b = b.path().join("addition-sft");
    let ck = a.path().join("addition-sft/checkpoints/step-4");
    let resumed = job::run(&job_at(b.path()), Some(&ck), &mut Vec::new()).unwrap();
    assert_eq!(straight.final_params, resumed.final_params, "bf16 GPU weights differ after an RL resume");
    let (ma, mb) = (metrics_without_clock(&a.path().join("addition-sft")), metrics_without_clock(&run_b));
    assert_eq!(ma, mb, "bf16 GPU metrics differ after an RL resume");
}

/// `extra` sections.
fn warm_job(out: &std::path::Path, extra: &str) -> RunConfig {
    let mut c = RunConfig::parse(&warm_text(extra), std::path::Path::new("warm_gpu.toml")).unwrap();
    c.run.out_dir = out.to_path_buf();
    c
}

/// The TOML of [`warm_job`].
fn warm_text(extra: &str) -> String {
    let mut text = small_default().replace("[train]\n", "[train]\ndevice = \"cuda\"\n") + extra;
    if emulated() {
        // on the SIMT emulator (docs/cuda.md), about 10^4 times slower than a GPU: fewer rollouts
        // and evaluation problems, the same code paths
        text = text
            .replace("prompts_per_step = 4", "prompts_per_step = 2")
            .replace("samples_per_prompt = 8", "samples_per_prompt = 4")
            .replace("eval_problems = 20", "eval_problems = 4");
    }
    text
}

/// The RL job with `extra` under `arbor launch --nproc N` (a GPU a rank, their collectives on the
/// devices through NCCL) against the same job in one process: the log says all of `says`, and the
/// weights after 2 updates agree within `tol`, every loss and gradient norm within `loss_tol`
/// (relative). Needs N devices: the SIMT emulator gives four (scripts/test.sh:
/// `ARBOR_SIMT_DEVICES=4`, NCCL through shared memory); with fewer it says it skipped.
fn gpus_equal_one(n: usize, extra: &str, says: &[&str], tol: f32, loss_tol: f64) {
    let text = warm_text("").replace("steps = 4", "steps = 2").replace("eval_every = 2", "eval_every = 100");
    gpus_equal_one_on(&text, "default", (n, extra), says, tol, loss_tol);
}

/// [`gpus_equal_one`] of the job `text` (its run named `name`, 2 steps in all).
fn gpus_equal_one_on(text: &str, name: &str, (n, extra): (usize, &str), says: &[&str], tol: f32, loss_tol: f64) {
    let grid = says[0];
    if gpu().is_none() {
        return;
    }
    if arbor::cuda::device_count() < n {
        assert!(!emulated(), "the emulated run of the tests has four devices (ARBOR_SIMT_DEVICES=4)");
        println!("skipped: {} CUDA device(s) ({grid} needs {n})", arbor::cuda::device_count());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (one_cfg, two_cfg) = (dir.path().join("one.toml"), dir.path().join("two.toml"));
    std::fs::write(&one_cfg, text).unwrap();
    std::fs::write(&two_cfg, text.to_string() + extra).unwrap();
    let run = |launch: bool, out: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_arbor"));
        if launch {
            // (as srun sets it for one launcher a machine: the ranks take their GPUs from
            // LOCAL_RANK, not from the launcher's own place)
            c.args(["launch", "--nproc", &n.to_string(), "--"]).env("SLURM_LOCALID", "0");
        }
        let out_dir = dir.path().join(out);
        let cfg = if launch { &two_cfg } else { &one_cfg };
        let o =
            c.args(["--threads", "1", "train", "--config"]).arg(cfg).arg("--out-dir").arg(&out_dir).output().unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{out}: {all}");
        assert_eq!(launch, says.iter().all(|s| all.contains(s)), "{out}: {all}");
        out_dir.join(name)
    };
    let (one, two) = (run(false, "one"), run(true, "two"));
    let ck = "checkpoints/step-2";
    let (c1, p1) = arbor::io::load_hf_dir(&one.join(ck)).unwrap();
    let (c2, p2) = arbor::io::load_hf_dir(&two.join(ck)).unwrap();
    assert_eq!(c1, c2, "the checkpoints hold the same (whole) model");
    assert_eq!(p1.data.len(), p2.data.len());
    let diff = p1.data.iter().zip(&p2.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("{grid} vs one GPU: max |weight difference| = {diff:.3e}");
    assert!(diff <= tol, "{grid}: weights differ from one GPU's by {diff}");
    // the losses, and the gradient norms (of the whole model: under tp both shards' parts)
    for key in ["loss", "grad_norm"] {
        let values = |d: &std::path::Path| -> Vec<f64> {
            metrics_without_clock(d).iter().filter_map(|m| m.get(key).and_then(|l| l.as_f64())).collect()
        };
        let (l1, l2) = (values(&one), values(&two));
        assert!(!l1.is_empty() && l1.len() == l2.len(), "{key}: {l1:?} vs {l2:?}");
        for (a, b) in l1.iter().zip(&l2) {
            assert!((a - b).abs() <= loss_tol * a.abs().max(1e-3), "{grid}: {key} {l1:?} vs {l2:?}");
        }
    }
}

/// Data parallelism on GPUs: the RL job with dp = 2, the gradients all-reduced on the devices by
/// NCCL, ends with the one-process job's weights (1e-5 after 2 updates: the global batch is the
/// same) and losses (1e-6 relative).
#[test]
fn data_parallel_rl_on_two_gpus_equals_one_gpu() {
    gpus_equal_one(2, "", &["dp 2 × tp 1", "NCCL"], 1e-5, 1e-6);
}

/// The same with the optimizer's state sharded over the two GPUs (`[parallel] shard_optimizer`,
/// ZeRO stage 1: each keeps the moments of half the weights, updates that half, and the halves are
/// broadcast by NCCL, the bf16 image refreshed): the unsharded job's bounds.
#[test]
fn a_sharded_optimizer_on_two_gpus_equals_one_gpu() {
    let says = ["dp 2 × tp 1", "NCCL", "optimizer state sharded over 2 data-parallel ranks"];
    gpus_equal_one(2, "\n[parallel]\nshard_optimizer = true\n", &says, 1e-5, 1e-6);
}

/// With bf16 products a sharded optimizer also refreshes the weights' bf16 image after the
/// broadcast (the other half of it would be a step old): on two GPUs the sharded job ends with
/// the unsharded two-GPU job's checkpoint byte for byte, weights and moments.
#[test]
fn a_sharded_bf16_rl_job_on_two_gpus_writes_the_unsharded_jobs_bytes() {
    if gpu().is_none() || arbor::cuda::device_count() < 2 {
        assert!(!emulated() || gpu().is_none(), "the emulated run of the tests has four devices");
        return;
    }
    let text = warm_text("").replace("steps = 4", "steps = 2").replace("eval_every = 2", "eval_every = 100");
    let text = text.replace("[train]\n", "[train]\ndtype = \"bf16\"\n");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bf16.toml");
    std::fs::write(&cfg, &text).unwrap();
    let run = |sharded: bool| {
        let out = dir.path().join(format!("sharded-{sharded}"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["launch", "--nproc", "2", "--", "--threads", "1", "train", "--config"])
            .arg(&cfg)
            .arg("--out-dir")
            .arg(&out)
            .args(["--set", &format!("parallel.shard_optimizer={sharded}")])
            .env("SLURM_LOCALID", "0")
            .output()
            .unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success() && all.contains("dp 2 × tp 1"), "{all}");
        assert_eq!(all.contains("optimizer state sharded over 2"), sharded, "{all}");
        let ck = out.join("default/checkpoints/step-2");
        ["model.safetensors", "optimizer.safetensors"].map(|f| std::fs::read(ck.join(f)).unwrap())
    };
    assert!(run(false) == run(true), "the sharded bf16 job's checkpoint differs from the unsharded one's");
}

/// Tensor parallelism on GPUs: the RL job with tp = 2 (each GPU holds half of every layer's
/// heads and MLP channels; the row-parallel outputs of the forward, the backward and every decode
/// step are summed on the devices by NCCL, the gradient norm over both shards) ends with the
/// one-process job's weights within 1e-4 and losses within 5e-5, the bounds of the CPU's tp = 2
/// test (tests/mpi/: the partial sums change the summation order).
#[test]
fn tensor_parallel_rl_on_two_gpus_equals_one_gpu() {
    gpus_equal_one(2, "\n[parallel]\ntp = 2\n", &["dp 1 × tp 2", "tensor-parallel sums through NCCL"], 1e-4, 5e-5);
}

/// A Qwen3 model (2 supervised steps of a fresh one) with tp = 2 on two GPUs: its query and key
/// head norms are replicated, and each shard's part of their gradients (its heads') is summed
/// through NCCL before it is added; it ends with the one-GPU job's weights within the tp = 2
/// test's bounds.
#[test]
fn a_qwen3_model_with_tensor_parallelism_on_two_gpus_equals_one_gpu() {
    let text = small_addition(2)
        .replace("arch = \"qwen2\"", "arch = \"qwen3\"")
        .replace("[train]\n", "[train]\ndevice = \"cuda\"\n");
    assert!(text.contains("arch = \"qwen3\"") && text.contains("device = \"cuda\""));
    let says = ["dp 1 × tp 2", "tensor-parallel sums through NCCL"];
    gpus_equal_one_on(&text, "addition-sft", (2, "\n[parallel]\ntp = 2\n"), &says, 1e-4, 5e-5);
}

/// Both on four GPUs: dp = 2 replicas of tp = 2 shards (the gradients of each shard summed over
/// its replicas by one NCCL group, the row-parallel sums of each replica by another, on the same
/// devices), again within the tp = 2 test's bounds of the one-GPU job.
#[test]
fn dp_and_tp_rl_on_four_gpus_equals_one_gpu() {
    gpus_equal_one(4, "\n[parallel]\ntp = 2\n", &["dp 2 × tp 2", "tensor-parallel sums through NCCL"], 1e-4, 5e-5);
}

/// `[critic]` (PPO with GAE on two mini-critics, their trunks on the GPU), `[attnrl]` trees (FCI
/// branching, one-step off-policy) and `[rhythm]` shaping with `device = "cuda"` (the attention-
/// statistics pass on the GPU, in a fixed order), each pass in micro-batches of 2 sequences: a
/// resume after 2 RL steps + 2 equals 4 straight steps bit for bit (weights, critics and metrics).
#[test]
fn critics_trees_and_rhythm_on_the_gpu_resume_bit_identically() {
    if gpu().is_none() {
        return;
    }
    let critics = "\n[critic]\ncount = 2\nwarmup_steps = 1\n";
    let trees = "\n[attnrl]\nstep_separators = [\"\\n\"]\nfci_step_gap = 1\nmin_branch_distance = 2\n";
    let rhythm = "\n[rhythm]\nscheme = \"coupled\"\nlayers = 2\nfai_min_offset = 2\nfai_max_offset = 16\n";
    for extra in [critics, trees, rhythm] {
        // micro-batches of 2 sequences: the critics' and the statistics passes' forwards in chunks
        let job_cfg = |out: &std::path::Path| {
            let mut c = warm_job(out, extra);
            c.rl.as_mut().expect("an [rl] phase").micro_batch = 2;
            c
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let straight = job::run(&job_cfg(a.path()), None, &mut Vec::new()).unwrap();
        // (resumed from the straight run's checkpoint into another directory, as above)
        let ck = a.path().join("default/checkpoints/step-2");
        let resumed = job::run(&job_cfg(b.path()), Some(&ck), &mut Vec::new()).unwrap();
        let what = extra.lines().nth(1).unwrap_or_default();
        assert_eq!(straight.final_params, resumed.final_params, "{what}: GPU weights differ after a resume");
        let (ma, mb) =
            (metrics_without_clock(&a.path().join("default")), metrics_without_clock(&b.path().join("default")));
        assert_eq!(ma, mb, "{what}: GPU metrics differ after a resume");
        let (before, after) = straight.rl.unwrap();
        println!("{what} on the GPU: solve rate {:.3} → {:.3}", before.sampled, after.sampled);
    }
}

/// One test body per engine for a value model: 3 updates of a critic toward fixed returns on the
/// CPU and on the GPU give the same values (1e-4), losses (1e-4), value heads (1e-4) and trunk
/// weights (1e-5), in one forward of 156 rows (the head's weight gradient then sums several row
/// chunks on the GPU) and in micro-batches of one sample.
#[test]
fn a_critic_on_the_gpu_matches_the_cpu() {
    use arbor::train::critic::{Critic, CriticConfig, ValueTargets};
    let policy = policy();
    let cc = CriticConfig { count: 1, lr: 3e-3, ..CriticConfig::default() };
    let mut rng = arbor::rng::Rng::new(41);
    let mut tokens = |n: usize| (0..n).map(|_| 1 + (rng.next_u64() % 12) as u32).collect::<Vec<u32>>();
    let samples: Vec<Sample> = (0..12)
        .map(|_| {
            let (prompt, response) = (tokens(3), tokens(10));
            Sample { behav_logp: vec![0.0; 10], advantages: vec![0.0; 10], prompt, response, reward: 1.0 }
        })
        .collect();
    let refs: Vec<&Sample> = samples.iter().collect();
    let returns: Vec<f32> = (0..120).map(|i| ((i * 7) % 11) as f32 / 10.0 - 0.3).collect();
    let run = |engine: &Engine, micro: usize| -> (Vec<f32>, Vec<f64>, Vec<f32>, Vec<f32>) {
        let critic = Critic::new(&cc, &policy, 0, 7, 0.02).unwrap().with_micro_batch(micro.into());
        let mut critic = critic.on_device_of(engine).unwrap();
        let mut losses = Vec::new();
        for _ in 0..3 {
            let old = critic.values(&refs).unwrap();
            let t = ValueTargets { returns: &returns, old: &old, tokens_total: 120.0 };
            losses.push(critic.train(&refs, t, 0.5, 3e-3, &Local, 1 << 20).unwrap());
        }
        let values = critic.values(&refs).unwrap();
        critic.sync_host().unwrap();
        (values, losses, critic.head.clone(), critic.model.params.data.clone())
    };
    let cpu: Vec<_> = [0, 1].map(|micro| run(&Engine::cpu(), micro)).into();
    for (cv, cl, _, _) in &cpu {
        assert_eq!(cv.len(), 120);
        assert!(cl[2] < cl[0], "the value loss should fall: {cl:?}");
    }
    if gpu().is_none() {
        return;
    }
    for (micro, (cv, cl, ch, cp)) in [0, 1].into_iter().zip(&cpu) {
        let dev = Engine::new(Device::Cuda, &policy, &Local).unwrap();
        let (gv, gl, gh, gp) = run(&dev, micro);
        close(&format!("critic values after 3 updates (micro {micro})"), &gv, cv, 1e-4);
        for (a, b) in cl.iter().zip(&gl) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "micro {micro}: critic loss cpu {a} gpu {b}");
        }
        close(&format!("critic value head (micro {micro})"), &gh, ch, 1e-4);
        close(&format!("critic trunk weights (micro {micro})"), &gp, cp, 1e-5);
    }
}

/// `[env]` with `device = "cuda"` (sync mode, no redundancy): the environments' turns are generated
/// on the GPU, and two runs of one config end with the same weights bit for bit.
#[test]
fn an_env_job_on_the_gpu_is_a_function_of_the_seed() {
    if gpu().is_none() {
        return;
    }
    let text = small_addition(5).replace("[train]\n", "[train]\ndevice = \"cuda\"\n")
        + "\n[rl]\nsteps = 3\nprompts_per_step = 4\nsamples_per_prompt = 3\nmax_new_tokens = 4\n"
        + "eval_samples = 2\nlog_every = 1\nfilter_zero_std = false\n"
        + "\n[env]\nkind = \"guess\"\nhigh = 8\nmax_turns = 3\neval_games = 6\nmode = \"sync\"\n"
        + "step_latency_ms = { kind = \"constant\", value = 1 }\nfailure_rate = 0.1\nmax_retries = 1\n";
    let run = |dir: &std::path::Path| {
        let mut cfg = RunConfig::parse(&text, std::path::Path::new("env_gpu.toml")).unwrap();
        cfg.run.out_dir = dir.to_path_buf();
        job::run(&cfg, None, &mut Vec::new()).unwrap()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ra, rb) = (run(a.path()), run(b.path()));
    assert_eq!(ra.final_params, rb.final_params, "a GPU env run is a pure function of the seed");
    let (before, after) = ra.rl.unwrap();
    println!("env on the GPU: win rate {:.3} → {:.3}", before.sampled, after.sampled);
}
