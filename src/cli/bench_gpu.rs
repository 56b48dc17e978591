//! `arbor bench gpu`: the CUDA backend on a GPU. `--kind train-step`: forward + backward + AdamW
//! of a model (random tokens) in tokens/s and model FLOPs utilisation; `--kind attention`: the
//! flash attention kernels' forward + backward on one shape (the peer is PyTorch's
//! scaled_dot_product_attention, scripts/peer/sdpa_bench.py). One JSON line each.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// What `arbor bench gpu` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GpuBench {
    TrainStep,
    Attention,
    /// Greedy generation with the device KV cache (`--batch` prompts of `--prompt-len` tokens,
    /// `--new-tokens` each).
    Generate,
    /// One GRPO step on the device (`--prompts` × `--samples` completions of up to `--new-tokens`,
    /// training in micro-batches of `--batch` sequences): generation, recompute, backward and
    /// optimizer seconds.
    RlStep,
    /// The device's ceilings: copy bandwidth and the product rate of each dtype
    /// (`cli::bench_ceilings`).
    Ceilings,
}

/// Arguments of `arbor bench gpu`.
#[derive(Debug, Args)]
pub struct GpuArgs {
    #[arg(long, value_enum, default_value = "train-step")]
    pub kind: GpuBench,
    /// HF model directory or config.json (train-step; random weights without safetensors).
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 1024)]
    pub seq: usize,
    /// Attention shape: query heads, kv heads, head dim.
    #[arg(long, default_value_t = 14)]
    pub heads: usize,
    #[arg(long, default_value_t = 2)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    #[arg(long, default_value_t = 16)]
    pub prompt_len: usize,
    /// New tokens per sequence (default: 112 for `generate`, 256 for `rl-step`).
    #[arg(long)]
    pub new_tokens: Option<usize>,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Peak dense TFLOP/s the MFU is relative to (H100 SXM bf16: 989).
    #[arg(long, default_value_t = 989.0)]
    pub peak_tflops: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `--kind generate`: sample at temperature 1 instead of greedy (tokens are drawn on the device
    /// either way: only ids and log-probs cross to the host).
    #[arg(long)]
    pub sample: bool,
    /// Operand type of the matrix products (`[train] dtype`): f32, tf32 or bf16 (f32 accumulation
    /// either way). `--kind attention` with bf16: the tensor-core kernels (cuda/attention_mma.cu).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: crate::config::Dtype,
    /// `--kind generate`: replay decode steps as CUDA graphs (`cuda::graphs`; also
    /// `ARBOR_CUDA_GRAPHS=1`, which reaches the rl-step's decoder too).
    #[arg(long)]
    pub graphs: bool,
    /// `--kind attention`: how the backward sums dK/dV over a GQA group, `per-head`
    /// (the default: a group's heads in parallel, then a fixed-order sum) or `grouped` (one block
    /// loops over the group's heads); `cuda::DkdvPlan`.
    #[arg(long, default_value = "per-head", value_enum)]
    pub dkdv: DkdvPlanArg,
    /// `--kind attention` / `train-step` / `rl-step` with bf16: the tensor-core products of the
    /// attention, forward and backward, `mma` (the default: each warp's mma.sync, sm_80 and later)
    /// or `wgmma` (the block's warpgroup wgmma, Hopper only: cuda/wgmma.cuh `WgmmaOps`; also
    /// `ARBOR_ATTN_MMA=wgmma`, which reaches any job); `cuda::AttnMma`.
    #[arg(long, default_value = "mma", value_enum)]
    pub attn_mma: AttnMmaArg,
    /// `--kind attention` / `train-step` / `rl-step` with bf16: query rows (forward, dQ) or keys
    /// (dK/dV) per block of the tensor-core attention, 128 (the default: two warpgroups share
    /// each streamed tile) or 64 (one); the same bits either way; `cuda::AttnRows`.
    #[arg(long, default_value = "128", value_enum)]
    pub attn_rows: AttnRowsArg,
    /// `--kind generate` / `rl-step`: the decode attention kernel, `per-group` (the default: one
    /// block per GQA group, each cached key and value read once per group) or `per-head`;
    /// `cuda::DecodeAttn`.
    #[arg(long, default_value = "per-group", value_enum)]
    pub decode_attn: DecodeAttnArg,
    /// `--kind generate` / `rl-step`: positions per split of each row in the per-group decode
    /// attention (0, the default: as many splits as fill the GPU; a length over the context: one).
    #[arg(long, default_value_t = 0)]
    pub decode_split: usize,
    /// `--kind rl-step`: prompts per step.
    #[arg(long, default_value_t = 64)]
    pub prompts: usize,
    /// `--kind rl-step`: completions per prompt (the GRPO group).
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// `--kind train-step` / `generate` / `rl-step`: after the timed steps, one more with every
    /// kernel and product timed by CUDA events (`cuda::profile`); the JSON's `profile` holds the
    /// largest GPU times by operation, their sum (`busy_ms`) and the step's span (`span_ms`).
    #[arg(long)]
    pub profile: bool,
    /// `--kind train-step`: gradient checkpointing (`[train] gradient_checkpointing`): the
    /// backward recomputes each layer's activations; `workspace_mib` says what the step's buffers
    /// hold.
    #[arg(long)]
    pub checkpointing: bool,
}

fn parse_dtype(s: &str) -> Result<crate::config::Dtype, String> {
    use crate::config::Dtype;
    [Dtype::F32, Dtype::Tf32, Dtype::Bf16]
        .into_iter()
        .find(|d| d.name() == s)
        .ok_or_else(|| format!("{s:?} is not f32, tf32 or bf16"))
}

/// `--dkdv`: the attention backward's dK/dV plan (a name here, so builds without `cuda` parse it; clap names the variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DkdvPlanArg {
    PerHead,
    Grouped,
}

/// `--attn-mma`: the bf16 attention's tensor-core products (a name here, so builds without `cuda`
/// parse it; clap names the variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttnMmaArg {
    Mma,
    Wgmma,
}

/// `--attn-rows`: rows per block of the bf16 attention (a name here, so builds without `cuda`
/// parse it; clap names the variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttnRowsArg {
    #[value(name = "64")]
    R64,
    #[value(name = "128")]
    R128,
}

/// `--decode-attn`: the decode attention kernel (a name here, so builds without `cuda` parse it; clap names the variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecodeAttnArg {
    PerGroup,
    PerHead,
}

#[cfg(not(feature = "cuda"))]
pub fn run(_args: &GpuArgs) -> anyhow::Result<()> {
    anyhow::bail!("this arbor was built without the `cuda` feature (cargo build --features cuda)")
}

#[cfg(feature = "cuda")]
pub fn run(args: &GpuArgs) -> anyhow::Result<()> {
    use crate::cuda::Gpu;
    anyhow::ensure!(args.batch > 0 && args.seq > 0 && args.steps > 0, "--batch, --seq and --steps must be positive");
    let gpu = std::sync::Arc::new(Gpu::new(0)?);
    gpu.set_dtype(args.dtype);
    gpu.set_dkdv_plan(match args.dkdv {
        DkdvPlanArg::PerHead => crate::cuda::DkdvPlan::PerHead,
        DkdvPlanArg::Grouped => crate::cuda::DkdvPlan::Grouped,
    });
    gpu.set_decode_attn(match args.decode_attn {
        DecodeAttnArg::PerGroup => crate::cuda::DecodeAttn::PerGroup,
        DecodeAttnArg::PerHead => crate::cuda::DecodeAttn::PerHead,
    });
    gpu.set_decode_split(args.decode_split);
    if args.attn_mma == AttnMmaArg::Wgmma {
        // (f32 and tf32 run the attention on the f32 kernels: no tensor-core products to choose)
        anyhow::ensure!(args.dtype == crate::config::Dtype::Bf16, "--attn-mma wgmma needs --dtype bf16");
        gpu.set_attn_mma(crate::cuda::AttnMma::Wgmma)?;
    }
    gpu.set_attn_rows(match args.attn_rows {
        AttnRowsArg::R64 => crate::cuda::AttnRows::R64,
        AttnRowsArg::R128 => crate::cuda::AttnRows::R128,
    });
    match args.kind {
        GpuBench::TrainStep => train_step(&gpu, args),
        GpuBench::Attention => attention(&gpu, args),
        GpuBench::Generate => generate(&gpu, args),
        GpuBench::Ceilings => {
            let a = crate::cli::bench_ceilings::CeilingArgs {
                rows: args.batch * args.seq,
                steps: args.steps,
                warmup: args.warmup,
                seed: args.seed,
            };
            crate::cli::bench_ceilings::ceilings(&gpu, &a)
        }
        GpuBench::RlStep => {
            let a = crate::cli::bench_rl_step::RlStepArgs {
                model_config: args.model_config.clone(),
                prompts: args.prompts,
                samples: args.samples,
                prompt_len: args.prompt_len,
                new_tokens: args.new_tokens.unwrap_or(256),
                batch: args.batch,
                steps: args.steps,
                warmup: args.warmup,
                seed: args.seed,
                profile: args.profile,
            };
            crate::cli::bench_rl_step::rl_step(&gpu, &a)
        }
    }
}

#[cfg(feature = "cuda")]
fn generate(gpu: &std::sync::Arc<crate::cuda::Gpu>, args: &GpuArgs) -> anyhow::Result<()> {
    use crate::cli::bench_common::{load_model, median};
    use crate::cuda::GpuDecoder;
    use crate::rng::Rng;
    use crate::rollout::{GenerateConfig, Request, SamplingParams};
    use anyhow::Context;
    use std::time::Instant;
    let path = args.model_config.as_ref().context("--model-config is required for --kind generate")?;
    let model = load_model(path, args.seed).with_context(|| format!("loading {}", path.display()))?;
    let new_tokens = args.new_tokens.unwrap_or(112);
    anyhow::ensure!(args.prompt_len > 0 && new_tokens > 0, "--prompt-len and --new-tokens must be positive");
    anyhow::ensure!(
        args.prompt_len + new_tokens <= model.cfg.max_position_embeddings,
        "--prompt-len + --new-tokens exceeds max_position_embeddings"
    );
    let mut rng = Rng::new(args.seed);
    let v = model.cfg.vocab_size as u64;
    let prompts: Vec<Vec<u32>> =
        (0..args.batch).map(|_| (0..args.prompt_len).map(|_| rng.below(v) as u32).collect()).collect();
    let requests: Vec<Request> = prompts
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| Request { prompt_id: i as u64, sample_index: 0, prompt })
        .collect();
    // the weights on the device, forward only, read in place by the decoder
    let weights = crate::cuda::GpuModel::frozen(gpu.clone(), &model)?;
    let mut dec = GpuDecoder::new(gpu, &model)?;
    if args.graphs {
        dec.set_graphs(true);
    }
    let mut times = Vec::new();
    let mut produced = 0;
    let timed = args.steps.min(5);
    for i in 0..args.warmup + timed + usize::from(args.profile) {
        let profiling = crate::cli::bench_common::profiled_step(gpu, args.profile, i, args.warmup + timed);
        let t = Instant::now();
        let gen_cfg = GenerateConfig {
            sampling: SamplingParams {
                temperature: if args.sample { 1.0 } else { 0.0 },
                top_p: 1.0,
                top_k: 0,
                max_new_tokens: new_tokens,
            },
            stop_tokens: Vec::new(),
            seed: args.seed,
            step: i as u64,
            max_batch: requests.len(),
            workload: None,
        };
        let lens: Vec<usize> =
            dec.generate(&model, weights.weights(), &requests, &gen_cfg)?.iter().map(|c| c.tokens.len()).collect();
        if i >= args.warmup && !profiling {
            times.push(t.elapsed().as_secs_f64());
            produced = lens.iter().sum::<usize>();
        }
    }
    let s = median(times);
    let mut line = serde_json::json!({
        "impl": "arbor-cuda",
        "device": gpu.describe(),
        "dtype": gpu.dtype().name(),
        "decoding": if args.sample { "sampled, T = 1" } else { "greedy" },
        "decode_attn": gpu.decode_attn().name(),
        "decode_split": gpu.decode_split(),
        "graphs": dec.graphs_held(),
        "graphs_refused": dec.graphs_refused(),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": new_tokens,
        "generated_tokens": produced,
        "seconds": s,
        "tokens_per_s": produced as f64 / s,
    });
    crate::cli::bench_common::add_profile(gpu, args.profile, &mut line)?;
    println!("{line}");
    Ok(())
}

#[cfg(feature = "cuda")]
fn train_step(gpu: &std::sync::Arc<crate::cuda::Gpu>, args: &GpuArgs) -> anyhow::Result<()> {
    use crate::cli::bench_common::{load_model, median, train_step_flops};
    use crate::cuda::GpuModel;
    use crate::model::Batch;
    use crate::rng::Rng;
    use crate::train::adamw::{AdamW, AdamWConfig};
    use anyhow::Context;
    use std::time::Instant;
    let path = args.model_config.as_ref().context("--model-config is required for --kind train-step")?;
    let model = load_model(path, args.seed).with_context(|| format!("loading {}", path.display()))?;
    let cfg = model.cfg.clone();
    anyhow::ensure!(args.seq <= cfg.max_position_embeddings, "--seq exceeds max_position_embeddings");
    let mut rng = Rng::new(args.seed);
    let mut batch = Batch::new();
    for _ in 0..args.batch {
        let toks: Vec<u32> = (0..args.seq).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
        batch.push_lm(&toks, 0)?;
    }
    let n = batch.len();
    let dlogp = vec![-1.0 / n as f32; n];
    let mut gm = GpuModel::new(gpu.clone(), &model)?;
    gm.set_checkpointing(args.checkpointing);
    let mut opt = AdamW::for_layout(AdamWConfig::default(), &model.params.layout);
    // each phase ends on the host (forward returns log-probs; the backward and AdamW, which
    // reads back only the norm and queues its update, are synchronised), so the phase times add
    // up to the step
    let (mut times, mut phases) = (Vec::new(), [Vec::new(), Vec::new(), Vec::new()]);
    for i in 0..args.warmup + args.steps + usize::from(args.profile) {
        let profiling = crate::cli::bench_common::profiled_step(gpu, args.profile, i, args.warmup + args.steps);
        let t = Instant::now();
        gm.zero_grads()?;
        gm.forward(&model, &batch)?;
        let t1 = Instant::now();
        gm.backward(&model, &batch, &dlogp, None)?;
        gpu.sync()?;
        let t2 = Instant::now();
        gm.adamw_step(&mut opt, 1e-5, 1.0)?;
        gpu.sync()?;
        if i >= args.warmup && !profiling {
            let end = Instant::now();
            times.push((end - t).as_secs_f64());
            for (p, d) in phases.iter_mut().zip([t1 - t, t2 - t1, end - t2]) {
                p.push(d.as_secs_f64());
            }
        }
    }
    let step_s = median(times);
    let [fwd_s, bwd_s, opt_s] = phases.map(median);
    let flops = train_step_flops(&cfg, args.batch, args.seq);
    let mut line = serde_json::json!({
        "impl": "arbor-cuda",
        "device": gpu.describe(),
        "dtype": gpu.dtype().name(),
        "attn_mma": gpu.attn_mma().name(),
        "attn_rows": gpu.attn_rows().name(),
        "checkpointing": args.checkpointing,
        "params": cfg.num_params(),
        "batch": args.batch,
        "seq": args.seq,
        "step_ms": step_s * 1e3,
        "forward_ms": fwd_s * 1e3,
        "backward_ms": bwd_s * 1e3,
        "optimizer_ms": opt_s * 1e3,
        "tokens_per_s": n as f64 / step_s,
        "tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / 1e12 / args.peak_tflops,
        // this process's buffers at their peak over the run (the memory pool's high-water mark;
        // the peer reports torch.cuda.max_memory_allocated)
        "device_peak_mib": gpu.take_peak_bytes().map(|b| b as f64 / (1u64 << 20) as f64),
        "workspace_mib": gm.workspace_bytes() as f64 / (1u64 << 20) as f64,
    });
    crate::cli::bench_common::add_profile(gpu, args.profile, &mut line)?;
    println!("{line}");
    Ok(())
}

#[cfg(feature = "cuda")]
fn attention(gpu: &crate::cuda::Gpu, args: &GpuArgs) -> anyhow::Result<()> {
    use crate::attention::{AttnSaved, AttnShape};
    use crate::cli::bench_common::median;
    use crate::cuda::Gpu;
    use crate::model::Batch;
    use crate::rng::Rng;
    use crate::tensor::Backend;
    use std::time::Instant;
    let (h, kv, d) = (args.heads, args.kv_heads, args.head_dim);
    anyhow::ensure!(kv > 0 && h % kv == 0, "--heads must be a multiple of --kv-heads");
    let shape = AttnShape { num_heads: h, num_kv_heads: kv, head_dim: d };
    let mut batch = Batch::new();
    for _ in 0..args.batch {
        batch.push(&vec![0; args.seq], &vec![0; args.seq])?;
    }
    let n = batch.len();
    let stride = (h + 2 * kv) * d;
    let mut rng = Rng::new(args.seed);
    let qkv: Vec<f32> = (0..n * stride).map(|_| rng.normal() as f32).collect();
    let dev = gpu.batch(batch.packed())?;
    let qg = gpu.upload(&qkv)?;
    let zeros = |len: usize| gpu.upload(&vec![0.0; len]);
    let (mut out, mut lse, mut dqkv) = (zeros(n * h * d)?, zeros(n * h)?, zeros(n * stride)?);
    let sl = gpu.attn_scratch_len(shape, n);
    let mut scratch = zeros(sl)?;
    let dout = gpu.upload(&qkv[..n * h * d])?;
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for i in 0..args.warmup + args.steps {
        let t = Instant::now();
        gpu.attention_forward(
            Gpu::m(&mut out, 0..n * h * d),
            Gpu::m(&mut lse, 0..n * h),
            Gpu::m(&mut scratch, 0..sl),
            Gpu::r(&qg, 0..n * stride),
            &dev,
            shape,
        )?;
        gpu.synchronize()?;
        let t1 = Instant::now();
        gpu.attention_backward(
            Gpu::m(&mut dqkv, 0..n * stride),
            Gpu::m(&mut scratch, 0..sl),
            Gpu::r(&dout, 0..n * h * d),
            AttnSaved { qkv: Gpu::r(&qg, 0..n * stride), out: Gpu::r(&out, 0..n * h * d), lse: Gpu::r(&lse, 0..n * h) },
            &dev,
            shape,
        )?;
        gpu.synchronize()?;
        if i >= args.warmup {
            fwd.push((t1 - t).as_secs_f64());
            bwd.push(t1.elapsed().as_secs_f64());
        }
    }
    let (f, b) = (median(fwd), median(bwd));
    // causal: half of the 4·T²·H·D multiply-adds of the forward; the backward does 2.5× the forward
    let fwd_flops = 2.0 * (args.batch * args.seq * args.seq * h * d) as f64;
    let line = serde_json::json!({
        "impl": "arbor-cuda",
        "device": gpu.describe(),
        "dtype": match (gpu.dtype(), gpu.attn_on_tensor_cores(d)) {
            (crate::config::Dtype::Bf16, true) => "bf16 products on the tensor cores (forward and backward)",
            (crate::config::Dtype::Bf16, false) => "f32 (the tensor-core tiles do not fit this GPU at this head dim)",
            _ => "f32",
        },
        "dkdv": gpu.dkdv_plan().name(),
        "attn_mma": gpu.attn_mma().name(),
        "attn_rows": gpu.attn_rows().name(),
        "attn_kernels": gpu.attn_kernels(d),
        "batch": args.batch, "seq": args.seq, "heads": h, "kv_heads": kv, "head_dim": d,
        "fwd_ms": f * 1e3,
        "bwd_ms": b * 1e3,
        "fwd_bwd_ms": (f + b) * 1e3,
        "fwd_bwd_tflops": 3.5 * fwd_flops / (f + b) / 1e12,
    });
    println!("{line}");
    Ok(())
}
