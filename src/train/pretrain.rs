//! The supervised phase (next-token training on the task's solver traces), one step on one
//! screen: sample problems → pack → forward → loss gradient → backward → clip → AdamW; plus the
//! held-out answer evaluation and the model a run starts from. The job around it (run
//! directory, resume, the RL phase after it) is `job.rs`.

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::io::load_hf_dir;
use crate::model::init::init_params;
use crate::model::{Batch, Model, Workspace};
use crate::parallel::{partition, Comm, Grid};
use crate::tasks::{Problem, Task};
use crate::tokenizer::TextCodec;
use crate::train::checkpoint::{save_model_checkpoint, CheckpointFiles, TrainerState};
use crate::train::engine::Engine;
use crate::train::guard::NonFiniteGuard;
use crate::train::metrics::{write_line, SftEvalLine, SftStepReport};
use crate::train::progress::Progress;
use crate::train::{AdamW, LrSchedule};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::tasks::{SPLIT_EVAL, SPLIT_TRAIN};

/// Held-out evaluation of the answer tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eval {
    /// Mean −log p over answer tokens (answer digits and the closing newline).
    pub answer_nll: f64,
    /// Fraction of problems whose every answer token has p > 1/2 under teacher forcing (so greedy
    /// decoding reproduces the answer).
    pub answer_exact: f64,
}

/// Encode one problem as prompt, solution, end of sequence ([`TextCodec::supervised`]); returns
/// tokens and the index of the first solution token.
fn encode(codec: &TextCodec, p: &Problem) -> Result<(Vec<u32>, usize)> {
    let solution =
        p.solution.as_deref().ok_or_else(|| Error::Invalid(format!("no reference solution for {:?}", p.prompt)))?;
    codec.supervised(&p.prompt, solution)
}

pub(crate) fn build_batch(
    codec: &TextCodec,
    task: &dyn Task,
    split: u64,
    first: u64,
    count: usize,
    batch: &mut Batch,
    answer_mask: &mut Vec<bool>,
) -> Result<()> {
    batch.clear();
    answer_mask.clear();
    for i in 0..count as u64 {
        let (ids, start) = encode(codec, &task.problem(split, first + i))?;
        batch.push_lm(&ids, codec.pad_id())?;
        // position j predicts token j+1: answer targets are positions start-1 .. len-2
        answer_mask.extend((0..ids.len()).map(|j| j + 1 >= start && j + 1 < ids.len()));
    }
    Ok(())
}

/// Score held-out problems with teacher forcing; the problems are partitioned over the
/// data-parallel ranks and the sums all-reduced.
pub fn evaluate(
    engine: &mut Engine,
    model: &Model,
    codec: &TextCodec,
    task: &dyn Task,
    cfg: &RunConfig,
    ws: &mut Workspace,
    dp: &dyn Comm,
) -> Result<Eval> {
    let (mut batch, mut mask) = (Batch::new(), Vec::new());
    let n_problems = crate::train::rl::eval::eval_problem_count(task, cfg.train.eval_problems.max(1));
    let mine = partition(n_problems, dp.size(), dp.rank());
    // [Σ −log p, answer tokens, exact sequences, sequences]
    let mut sums = [0.0f64; 4];
    if !mine.is_empty() {
        build_batch(codec, task, SPLIT_EVAL, mine.start as u64, mine.len(), &mut batch, &mut mask)?;
        engine.forward(model, &batch, ws)?;
        for s in 0..batch.num_seqs() {
            let (a, b) = (batch.seq_starts[s], batch.seq_starts[s + 1]);
            let mut all = true;
            for (&lp, _) in ws.logprobs[a..b].iter().zip(&mask[a..b]).filter(|(_, &m)| m) {
                sums[0] -= lp as f64;
                sums[1] += 1.0;
                all &= lp > -std::f32::consts::LN_2;
            }
            sums[2] += all as u8 as f64;
        }
        sums[3] = batch.num_seqs() as f64;
    }
    dp.all_reduce_sum_f64(&mut sums)?;
    Ok(Eval { answer_nll: sums[0] / sums[1].max(1.0), answer_exact: sums[2] / sums[3].max(1.0) })
}

/// The run's full (unsharded) model: loaded from `model.hf_dir`, or freshly initialised from
/// the config's dimensions and `run.seed`.
/// `codec` is the run's ([`RunConfig::text_codec`]): a loaded model's vocabulary must hold its ids.
pub fn build_model(cfg: &RunConfig, codec: &TextCodec) -> Result<Model> {
    let mc = model_config(cfg, codec)?;
    let params = match &cfg.model.hf_dir {
        Some(dir) => load_hf_dir(dir)?.1,
        None => init_params(&mc, cfg.run.seed, cfg.model.init_std),
    };
    Model::new(mc, params)
}

/// The model's configuration as [`build_model`] makes it (the model directory's `config.json`
/// with the run's stop ids, or the `[model]` section's fresh shape), without reading or drawing
/// any weight: what a resume compares its checkpoint's configuration with.
pub fn model_config(cfg: &RunConfig, codec: &TextCodec) -> Result<crate::model::ModelConfig> {
    let model_cfg_file = Path::new("[model]");
    Ok(match &cfg.model.hf_dir {
        Some(dir) => {
            let mut mc = crate::model::ModelConfig::from_hf_file(&dir.join("config.json"))?;
            if codec.as_char().is_none() {
                // every id that ends a response (generation_config.json's too) goes into the
                // checkpoints' config.json: a checkpoint evaluates and resumes with the same stops
                mc.eos_token_ids = codec.stop_ids().to_vec();
            }
            if mc.vocab_size < codec.vocab_size() {
                let which = if codec.as_char().is_some() { "arbor's character tokenizer" } else { "its tokenizer" };
                return Err(Error::Config {
                    file: dir.join("config.json"),
                    key: "vocab_size".into(),
                    msg: format!(
                        "{} is smaller than the {} ids of {which}: the model has no row for the others",
                        mc.vocab_size,
                        codec.vocab_size()
                    ),
                });
            }
            mc
        }
        None => cfg.fresh_model(codec.vocab_size(), codec.eos_id(), model_cfg_file)?,
    })
}

/// What the supervised phase did, for callers and tests.
#[derive(Debug, Clone, Default)]
pub struct SftReport {
    /// Loss of every step run (a resumed phase: the steps after the checkpoint).
    pub losses: Vec<f64>,
    /// Held-out evaluations (global step, result).
    pub evals: Vec<(u64, Eval)>,
    pub tokens_per_s: f64,
}

/// Where the supervised phase runs and writes.
pub struct SftPhase<'a> {
    pub cfg: &'a RunConfig,
    pub task: &'a dyn Task,
    pub grid: &'a Grid,
    /// The run directory (`<out_dir>/<name>`).
    pub run_dir: &'a Path,
    /// How the run encodes text; its tokenizer is saved with every checkpoint.
    pub codec: &'a TextCodec,
    /// Consecutive non-finite steps before the phase's (resumed) start, from the checkpoint.
    pub nonfinite_in_a_row: u64,
    /// Commits the checkpoints in the background (`train::commit`).
    pub commit: &'a crate::train::commit::Committer,
}

/// Run (or continue from global step `start`) the supervised phase: `train.steps` steps with
/// metrics lines, evaluations and checkpoints; losses, evaluations and throughput go into `report`.
pub fn run_phase(
    ph: &SftPhase,
    model: &mut Model,
    opt: &mut AdamW,
    start: u64,
    metrics: &mut dyn Write,
    log: &mut dyn Write,
    report: &mut SftReport,
) -> Result<()> {
    let (cfg, task, grid, codec) = (ph.cfg, ph.task, ph.grid, ph.codec);
    let (dp, root, t) = (grid.dp.as_ref(), grid.is_root(), &cfg.train);
    let out_dir = ph.run_dir;
    let metrics_path = out_dir.join("metrics.jsonl");
    let schedule = LrSchedule {
        kind: t.schedule,
        peak_lr: t.lr,
        min_lr: t.min_lr,
        warmup_steps: t.warmup_steps,
        total_steps: t.steps,
    };
    let say = |log: &mut dyn Write, s: String| {
        let _ = writeln!(log, "{s}");
    };
    if start >= t.steps {
        // nothing to run (an RL-only job, or a resume past this phase): no engine, so no weights,
        // gradients, moments or NCCL group on a GPU for nothing
        if start > 0 {
            say(log, format!("resumed from step {start}"));
        }
        return Ok(());
    }
    // the setup (the engine, a GPU run's NCCL communicator, the first evaluation) is bounded as a
    // step is: a peer that never joins NCCL's initialisation would hold this rank forever
    let setup = grid.watch_step("sft phase start (engine, NCCL, eval step 0)", cfg.parallel.step_timeout_s);
    if start == 0 {
        crate::parallel::fault::maybe_inject(grid, 0)?;
    }
    let mut ws = Workspace::new(&model.cfg, 0);
    let mut engine = Engine::new(t.compute(), model, dp)?;
    engine.set_checkpointing(t.gradient_checkpointing);
    if opt.is_shard(model.params.data.len()) {
        engine.shard_optimizer(opt.range())?;
    }
    engine.load(model, opt)?;
    let (mut batch, mut mask) = (Batch::new(), Vec::new());
    let mut dlogp = Vec::new();
    if engine.on_device() {
        say(log, format!("sft: forward, backward and AdamW on {}", engine.describe()));
    }

    let progress = Progress::new(t.steps, "sft");
    if start == 0 && t.steps > 0 {
        let e0 = evaluate(&mut engine, model, codec, task, cfg, &mut ws, dp)?;
        say(log, format!("eval step 0: answer nll {:.4}, answer exact {:.1}%", e0.answer_nll, 100.0 * e0.answer_exact));
        let line = SftEvalLine { step: 0, eval_answer_nll: e0.answer_nll, eval_answer_exact: e0.answer_exact };
        write_line(metrics, &metrics_path, &line)?;
        report.evals.push((0, e0));
    } else if start > 0 {
        say(log, format!("resumed from step {start}"));
    }
    drop(setup);
    let (mut tokens_total, mut train_secs) = (0usize, 0.0f64);
    let mut guard = NonFiniteGuard::resumed(t.max_nonfinite_steps, ph.nonfinite_in_a_row);
    for step in start..t.steps {
        let _armed = grid.watch_step(&format!("step {}", step + 1), cfg.parallel.step_timeout_s);
        crate::parallel::fault::maybe_inject(grid, step + 1)?;
        let t0 = Instant::now();
        // 1. data: problems (seed, train split, step·B + i), this rank's share, packed
        let mine = partition(t.batch_size, dp.size(), dp.rank());
        let first = step * t.batch_size as u64 + mine.start as u64;
        build_batch(codec, task, SPLIT_TRAIN, first, mine.len(), &mut batch, &mut mask)?;
        // 2. forward → per-token log-probs; 3. loss = token-mean NLL over every predicted token of
        // the global batch (the last position of a sequence has no target)
        let n = batch.len();
        dlogp.clear();
        dlogp.extend((0..n).map(|i| !batch.seq_starts[1..].contains(&(i + 1)) as u8 as f32));
        engine.zero_grads(model)?;
        let mut sums = [0.0f64; 2]; // [predicted tokens, Σ log p]
        if n > 0 {
            engine.forward(model, &batch, &mut ws)?;
            sums[0] = dlogp.iter().sum::<f32>() as f64;
            sums[1] = ws.logprobs[..n].iter().zip(&dlogp).map(|(l, w)| (*l * w) as f64).sum::<f64>();
        }
        dp.all_reduce_sum_f64(&mut sums)?;
        let count = (sums[0] as f32).max(1.0);
        let loss = -sums[1] / count as f64;
        dlogp.iter_mut().for_each(|w| *w = -*w / count);
        // 4. backward → gradients, all-reduced (a rank with no tokens still joins); 5. clip; 6. AdamW
        if n > 0 {
            engine.accumulate(model, &batch, &dlogp, None, &mut ws)?;
        }
        engine.reduce_grads(dp, cfg.parallel.bucket_bytes())?;
        let lr = schedule.lr(step);
        // a non-finite loss or gradient norm skips the update (the optimizer refuses the norm)
        let norm = match loss.is_finite() {
            true => engine.step(opt, model, lr, t.grad_clip, dp)?,
            false => f32::NAN,
        };
        let skipped = NonFiniteGuard::is_bad(loss, norm as f64) as usize;
        let secs = t0.elapsed().as_secs_f64();
        tokens_total += n;
        train_secs += secs;
        report.losses.push(loss);
        let line = SftStepReport {
            step: step + 1,
            loss,
            grad_norm: norm,
            lr,
            tokens: n,
            step_s: secs,
            skipped_updates: skipped,
            device_mem_mib: engine.device_mem_mib(),
            device_peak_mib: engine.take_device_peak_mib(),
        };
        write_line(metrics, &metrics_path, &line)?;
        guard.record("sft", step + 1, skipped, loss, norm as f64)?;
        progress.set(step + 1, format!("loss {loss:.4}  {:.0} tokens/s", tokens_total as f64 / train_secs));
        if (step + 1) % t.log_every.max(1) == 0 || step == 0 {
            progress.say(
                log,
                &format!(
                    "step {:>5}/{}  loss {loss:.4}  grad_norm {norm:.3}  lr {lr:.2e}  {:.0} tokens/s{}",
                    step + 1,
                    t.steps,
                    tokens_total as f64 / train_secs,
                    progress.eta_note()
                ),
            );
        }
        let last = step + 1 == t.steps;
        if last || (t.eval_every > 0 && (step + 1) % t.eval_every == 0) {
            let e = evaluate(&mut engine, model, codec, task, cfg, &mut ws, dp)?;
            progress.say(
                log,
                &format!(
                    "eval step {}: answer nll {:.4}, answer exact {:.1}%",
                    step + 1,
                    e.answer_nll,
                    100.0 * e.answer_exact
                ),
            );
            let line = SftEvalLine { step: step + 1, eval_answer_nll: e.answer_nll, eval_answer_exact: e.answer_exact };
            write_line(metrics, &metrics_path, &line)?;
            report.evals.push((step + 1, e));
        }
        // a signal on any rank (Slurm's preemption notice) stops every rank here, checkpointed (at
        // the job's last step there is nothing left to stop: it ends as a finished run, exit 0,
        // not requeued)
        let job_ends = last && cfg.rl.is_none();
        let preempted = crate::train::preempt::agreed(grid.world.as_ref())? && !job_ends;
        if last || preempted || (step + 1) % t.checkpoint_every.max(1) == 0 {
            metrics.flush().map_err(|e| Error::io(&metrics_path, e))?;
            let state = TrainerState {
                step: step + 1,
                seed: cfg.run.seed,
                adam_t: opt.t,
                nonfinite_in_a_row: guard.in_a_row(),
                data_fingerprint: crate::train::checkpoint::data_fingerprint(task),
                ..TrainerState::default()
            };
            engine.sync_host(model, opt)?;
            let none = |_: &Path| Ok::<(), Error>(());
            let run_config = cfg.to_toml()?;
            let files = CheckpointFiles {
                tokenizer: Some(codec.tokenizer()),
                keep_last: t.keep_checkpoints,
                extra: &none,
                run_config: Some(&run_config),
                commit: Some(ph.commit),
                best: None,
            };
            save_model_checkpoint(out_dir, model, opt, &state, &files, (root, dp))?;
        }
        if preempted {
            progress.finish();
            say(log, format!("preempted: checkpoint of step {} written", step + 1));
            return Err(Error::Preempted { step: step + 1, why: crate::train::preempt::why() });
        }
    }
    progress.finish();
    engine.sync_host(model, opt)?;
    report.tokens_per_s = tokens_total as f64 / train_secs.max(1e-9);
    Ok(())
}
