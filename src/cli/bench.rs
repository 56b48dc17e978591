//! `arbor bench`: throughput of the numerical core, printed as one JSON line.

use crate::cli::bench_common::{load_model, median, train_step_flops};
use crate::model::host_memory::HostMemory;
use crate::model::{Batch, Workspace};
use crate::rng::Rng;
use crate::tensor::cpu::matmul::GEMM_PARALLEL_NANOS;
use crate::tensor::cpu::matmul_nt;
use crate::train::{clip_and_step, AdamW, AdamWConfig};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// `arbor bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// One full training step (forward, backward, clip, AdamW) on random tokens.
    TrainStep(TrainStepArgs),
    /// Batched generation with the KV cache (continuous batching), random prompts, no stop token.
    Generate(GenerateArgs),
    /// Gradient all-reduce bandwidth under mpirun: bucketed vs one raw MPI all-reduce.
    Allreduce(crate::cli::bench_comm::AllreduceArgs),
    /// One rank's message to all others under mpirun (`[async]` weights): a copy to each vs a relay.
    Broadcast(crate::cli::bench_comm::BroadcastArgs),
    /// Multi-turn environments with latency: sync vs env-level async vs redundant groups.
    Env(crate::cli::bench_env::EnvArgs),
    /// CUDA backend (feature `cuda`): a train step (tokens/s, MFU) or attention fwd+bwd on a GPU.
    Gpu(crate::cli::bench_gpu::GpuArgs),
    /// f32 GEMM throughput of the gemm crate at one square size.
    Gemm {
        #[arg(long, default_value_t = 1024)]
        n: usize,
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
}

/// Arguments of `arbor bench train-step`.
#[derive(Debug, Args)]
pub struct TrainStepArgs {
    /// HF model directory or config.json (random weights when there are no safetensors).
    #[arg(long)]
    pub model_config: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Gradient checkpointing (`[train] gradient_checkpointing`): the backward recomputes each
    /// layer's activations; `workspace_mib` says what the step's buffers hold.
    #[arg(long)]
    pub checkpointing: bool,
}

/// Arguments of `arbor bench generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// HF model directory or config.json (random weights when there are no safetensors).
    #[arg(long)]
    pub model_config: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 16)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 112)]
    pub new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Run `arbor bench generate` and print one JSON line (new tokens per second, median of reps).
pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    use crate::rollout::{generate, GenerateConfig, Request, SamplingParams};
    let model = load_model(&args.model_config, args.seed)
        .with_context(|| format!("loading {}", args.model_config.display()))?;
    anyhow::ensure!(
        args.batch > 0 && args.prompt_len > 0 && args.new_tokens > 0,
        "--batch, --prompt-len and --new-tokens must be positive"
    );
    anyhow::ensure!(
        args.temperature.is_finite() && args.temperature >= 0.0,
        "--temperature {}: must be a finite number ≥ 0 (0 = greedy)",
        args.temperature
    );
    let v = model.cfg.vocab_size as u64;
    let mut rng = Rng::new(args.seed);
    let requests: Vec<Request> = (0..args.batch as u64)
        .map(|p| Request {
            prompt_id: p,
            sample_index: 0,
            prompt: (0..args.prompt_len).map(|_| rng.below(v) as u32).collect(),
        })
        .collect();
    let cfg = GenerateConfig {
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: args.new_tokens,
        },
        stop_tokens: vec![],
        seed: args.seed,
        step: 0,
        max_batch: args.batch,
        workload: None,
    };
    let mut times = Vec::new();
    let mut produced = 0;
    for _ in 0..args.reps.max(1) {
        let t = Instant::now();
        let out = generate(&model, &requests, &cfg)?;
        times.push(t.elapsed().as_secs_f64());
        produced = out.iter().map(|c| c.tokens.len()).sum::<usize>();
    }
    let secs = median(times);
    let line = serde_json::json!({
        "impl": "arbor",
        "threads": rayon::current_num_threads(),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "generated_tokens": produced,
        "seconds": secs,
        "tokens_per_s": produced as f64 / secs,
    });
    println!("{line}");
    Ok(())
}

/// GFLOP/s of an n×n×n f32 product (best of `reps`: the peak the machine gives right now); `n`
/// must pass [`check_gemm_size`].
pub fn gemm_gflops(n: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.01).collect();
    let b = a.clone();
    let mut c = vec![0.0f32; n * n];
    matmul_nt(&mut c, &a, &b, n, n, n, false);
    let times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            matmul_nt(&mut c, &a, &b, n, n, n, false);
            t.elapsed().as_secs_f64()
        })
        .collect();
    2.0 * (n as f64).powi(3) / times.iter().copied().fold(f64::INFINITY, f64::min) / 1e9
}

/// Run `arbor bench train-step` and print one JSON line.
pub fn train_step(args: &TrainStepArgs) -> anyhow::Result<()> {
    let mut model = load_model(&args.model_config, args.seed)
        .with_context(|| format!("loading {}", args.model_config.display()))?;
    let cfg = model.cfg.clone();
    anyhow::ensure!(
        args.seq >= 2 && args.seq <= cfg.max_position_embeddings,
        "--seq {} must be in 2..={}",
        args.seq,
        cfg.max_position_embeddings
    );
    anyhow::ensure!(args.batch > 0 && args.steps > 0, "--batch and --steps must be positive");
    let mut rng = Rng::new(args.seed);
    let mut batch = Batch::new();
    for _ in 0..args.batch {
        let toks: Vec<u32> = (0..args.seq).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
        batch.push_lm(&toks, 0)?;
    }
    let n = batch.len();
    let dlogp = vec![-1.0 / n as f32; n];
    let mut ws = Workspace::default();
    ws.set_checkpointing(args.checkpointing);
    ws.ensure(&cfg, n);
    let mut grads = vec![0.0f32; model.params.data.len()];
    let mut opt = AdamW::for_layout(AdamWConfig::default(), &model.params.layout);
    let mut times = Vec::new();
    let mut gemm_nanos = 0usize;
    for i in 0..args.warmup + args.steps {
        let t = Instant::now();
        let g0 = GEMM_PARALLEL_NANOS.load(Ordering::Relaxed);
        grads.iter_mut().for_each(|g| *g = 0.0);
        model.forward(&batch, &mut ws)?;
        model.backward(&batch, &dlogp, &mut ws, &mut grads)?;
        clip_and_step(&mut opt, &mut model.params.data, &grads, 1e-4, 1.0);
        if i >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
            gemm_nanos += GEMM_PARALLEL_NANOS.load(Ordering::Relaxed) - g0;
        }
    }
    let step_s = median(times.clone());
    let flops = train_step_flops(&cfg, args.batch, args.seq);
    let gemm_peak = gemm_gflops(1024, 7);
    let gflops = flops / step_s / 1e9;
    let line = serde_json::json!({
        "impl": "arbor",
        "threads": rayon::current_num_threads(),
        "batch": args.batch,
        "seq": args.seq,
        "checkpointing": args.checkpointing,
        "workspace_mib": ws.bytes() as f64 / (1u64 << 20) as f64,
        "params": cfg.num_params(),
        "step_ms": step_s * 1e3,
        "step_ms_min": times.iter().copied().fold(f64::INFINITY, f64::min) * 1e3,
        "tokens_per_s": n as f64 / step_s,
        "gflops": gflops,
        "gemm_peak_gflops": gemm_peak,
        "fraction_of_gemm_peak": gflops / gemm_peak,
        "projection_gemm_time_fraction": gemm_nanos as f64 * 1e-9 / times.iter().sum::<f64>(),
    });
    println!("{line}");
    Ok(())
}

/// `--n` of `arbor bench gemm`: positive, its three n×n f32 matrices countable without overflow
/// and, where the machine's memory is known (`available` bytes), held in it.
pub fn check_gemm_size(n: usize, available: Option<HostMemory>) -> anyhow::Result<()> {
    anyhow::ensure!(n > 0, "--n must be positive");
    let bytes = n.checked_mul(n).and_then(|nn| nn.checked_mul(3 * std::mem::size_of::<f32>()));
    let Some(bytes) = bytes.filter(|&b| b <= isize::MAX as usize) else {
        anyhow::bail!("--n {n}: three {n}×{n} f32 matrices are more bytes than this machine can address");
    };
    if let Some(mem) = available.filter(|m| bytes as u128 > u128::from(m.bytes)) {
        anyhow::bail!(
            "--n {n}: three {n}×{n} f32 matrices need {bytes} bytes, more than the memory this process may use, {} \
             bytes ({})",
            mem.bytes,
            mem.source
        );
    }
    Ok(())
}

/// Run `arbor bench gemm`.
pub fn gemm(n: usize, reps: usize) -> anyhow::Result<()> {
    check_gemm_size(n, crate::model::host_memory::host_memory())?;
    let line = serde_json::json!({"impl": "gemm-crate", "n": n, "threads": rayon::current_num_threads(), "gflops": gemm_gflops(n, reps)});
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--n` whose matrices overflow a count or exceed the machine is refused by the flag.
    #[test]
    fn gemm_sizes_are_checked_before_anything_is_allocated() {
        let e =
            |n: usize, mem: Option<u64>| check_gemm_size(n, mem.map(HostMemory::mem_total)).unwrap_err().to_string();
        assert!(e(0, None).contains("--n"));
        for n in [1 << 32, usize::MAX, 1 << 31] {
            assert!(e(n, None).contains(&format!("--n {n}")), "{n}");
        }
        // 3 × 100000² × 4 bytes = 120 GB
        let msg = e(100_000, Some(24 << 30));
        assert!(msg.contains("--n 100000") && msg.contains("120000000000 bytes") && msg.contains("MemTotal"), "{msg}");
        let small = Some(HostMemory::mem_total(24 << 30));
        assert!(check_gemm_size(100_000, None).is_ok() && check_gemm_size(1024, small).is_ok());
    }
}
