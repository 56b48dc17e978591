//! `arbor selftest tp`: a self-checking SPMD program. Under `mpirun -np N` (N a multiple of tp)
//! every rank builds the config's full model, runs a forward, a backward and a sampled
//! generation on it alone, then does the same as one shard of its tensor-parallel group, and the
//! job reports the largest differences (logits, log-probs, entropy, loss, every gradient, the
//! gradient norm, generated tokens), and the shard's gradients with gradient checkpointing
//! against its own without (the recomputed layers' sums run over the group again). It fails (exit 1) when any exceeds the tolerance, so a user
//! can check a cluster's TP setup before booking a long run, and the test suite runs it as is.

use crate::config::{RunConfig, ADDITION_CONFIG};
use crate::model::{Batch, Model, Workspace};
use crate::parallel::Grid;
use crate::rollout::{generate, GenerateConfig, Request, SamplingParams};
use crate::tasks::SPLIT_TRAIN;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

/// `arbor selftest ...`
#[derive(Debug, Subcommand)]
pub enum SelftestCommand {
    /// Tensor-parallel shards vs one process: logits, loss, gradients and generation (run under mpirun).
    Tp(TpArgs),
}

/// Arguments of `arbor selftest tp`.
#[derive(Debug, Args)]
pub struct TpArgs {
    /// Model and task to check (default: the addition config's model, freshly initialised).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tensor-parallel ranks per group (the world size must be a multiple).
    #[arg(long, default_value_t = 2)]
    pub tp: usize,
    /// Largest absolute difference allowed.
    #[arg(long, default_value_t = 1e-5)]
    pub tol: f64,
    /// Sequences in the checked batch.
    #[arg(long, default_value_t = 8)]
    pub sequences: usize,
}

/// The measured differences, in print order.
const NAMES: [&str; 8] =
    ["logits", "logprobs", "entropy", "loss", "gradients", "grad_norm", "generated_logprobs", "checkpointed_gradients"];

/// Forward + backward of a token-mean NLL over `batch`, with gradient checkpointing or without:
/// (logits [N, V], logprobs, entropy, loss, full-layout gradients, grad norm).
#[allow(clippy::type_complexity)]
fn pass(
    model: &Model,
    batch: &Batch,
    checkpointing: bool,
) -> crate::error::Result<(Vec<f32>, Vec<f32>, Vec<f32>, f64, Vec<f32>, f32)> {
    let n = batch.len();
    let mut ws = Workspace::default();
    ws.set_checkpointing(checkpointing);
    ws.ensure(&model.cfg, n);
    model.forward(batch, &mut ws)?;
    let mut logits = vec![0.0; n * model.cfg.vocab_size];
    model.logits_into(&ws, n, &mut logits);
    let (logp, ent) = (ws.logprobs[..n].to_vec(), ws.entropy[..n].to_vec());
    let loss = -logp.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let dlogp = vec![-1.0 / n as f32; n];
    let mut grads = vec![0.0; model.params.data.len()];
    model.backward(batch, &dlogp, &mut ws, &mut grads)?;
    let norm = model.grad_norm(&grads)?;
    Ok((logits, logp, ent, loss, model.gather(&grads)?.data, norm))
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max)
}

/// Every difference of this rank (NAMES order) and the number of generated tokens that differ.
fn check(cfg: &RunConfig, grid: &Grid, sequences: usize) -> crate::error::Result<([f64; 8], usize)> {
    let codec = cfg.text_codec()?;
    let full = crate::train::pretrain::build_model(cfg, &codec)?;
    let shard = full.clone().shard(grid.tp.clone())?;
    let task = cfg.task(&codec)?;
    let (mut batch, mut mask) = (Batch::new(), Vec::new());
    crate::train::pretrain::build_batch(&codec, task.as_ref(), SPLIT_TRAIN, 0, sequences, &mut batch, &mut mask)?;
    let (l1, p1, e1, loss1, g1, n1) = pass(&full, &batch, false)?;
    let (l2, p2, e2, loss2, g2, n2) = pass(&shard, &batch, false)?;
    let g3 = pass(&shard, &batch, true)?.4;
    let requests: Vec<Request> = (0..sequences as u64)
        .map(|i| {
            let p = task.problem(SPLIT_TRAIN, i);
            Ok(Request { prompt_id: i, sample_index: 0, prompt: codec.prompt(&p.prompt)? })
        })
        .collect::<crate::error::Result<_>>()?;
    let gc = GenerateConfig {
        sampling: SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 16 },
        stop_tokens: codec.stop_ids().to_vec(),
        seed: cfg.run.seed,
        step: 1,
        max_batch: 4,
        workload: None,
    };
    let (c1, c2) = (generate(&full, &requests, &gc)?, generate(&shard, &requests, &gc)?);
    let mut token_diff = 0;
    let mut gen_lp = 0.0f64;
    for (a, b) in c1.iter().zip(&c2) {
        token_diff +=
            a.tokens.iter().zip(&b.tokens).filter(|(x, y)| x != y).count() + a.tokens.len().abs_diff(b.tokens.len());
        if a.tokens == b.tokens {
            gen_lp = gen_lp.max(max_abs(&a.logprobs, &b.logprobs));
        }
    }
    let diffs = [
        max_abs(&l1, &l2),
        max_abs(&p1, &p2),
        max_abs(&e1, &e2),
        (loss1 - loss2).abs(),
        max_abs(&g1, &g2),
        (n1 - n2).abs() as f64,
        gen_lp,
        max_abs(&g2, &g3),
    ];
    Ok((diffs, token_diff))
}

/// Run `arbor selftest tp`.
pub fn tp(args: &TpArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => RunConfig::load(p)?,
        None => RunConfig::parse(ADDITION_CONFIG, Path::new("configs/addition-sft.toml"))?,
    };
    cfg.parallel.tp = args.tp;
    let Some((_spmd, grid)) = crate::cli::train::spmd_grid(&cfg)? else {
        anyhow::bail!(
            "arbor selftest tp runs under a launcher: mpirun -np {} arbor selftest tp --tp {} (or arbor launch --nproc ..)",
            args.tp,
            args.tp
        );
    };
    let (mut diffs, tokens) = match check(&cfg, &grid, args.sequences.max(1)) {
        Ok(r) => r,
        Err(e) => grid.world.abort(&format!("rank {}: selftest: {e}", grid.world.rank())),
    };
    let mut worst = [diffs.to_vec(), vec![tokens as f64]].concat();
    grid.world.all_reduce_max_f64(&mut worst)?;
    diffs.copy_from_slice(&worst[..8]);
    let bad_tokens = worst[8] as usize;
    if let Some(w) = &grid.watchdog {
        w.stop();
    }
    let ok = diffs.iter().all(|&d| d <= args.tol) && bad_tokens == 0;
    if grid.is_root() {
        println!(
            "arbor selftest tp: {} — one process vs its tensor-parallel shards, max |Δ| over all ranks:",
            grid.describe()
        );
        for (name, d) in NAMES.iter().zip(&diffs) {
            println!("  {name:<22} {d:.3e}");
        }
        println!("  {:<22} {bad_tokens}", "generated tokens ≠");
        println!("{} (tolerance {:.0e})", if ok { "ok" } else { "FAILED" }, args.tol);
    }
    anyhow::ensure!(ok, "tensor-parallel results differ from one process beyond {:.0e}", args.tol);
    Ok(())
}
