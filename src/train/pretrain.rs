//! The supervised (next-token) training loop on a synthetic task: the default job until the RL
//! loop lands. One step on one screen: sample problems → pack → forward → loss gradient →
//! backward → clip → AdamW.

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::io::load_hf_dir;
use crate::io::space::SpaceCheckedFile;
use crate::model::init::init_params;
use crate::model::{Batch, Model, Workspace};
use crate::parallel::{all_reduce_buckets, partition, Comm, Grid};
use crate::tasks::{Problem, Task};
use crate::tokenizer::char::{CharTokenizer, BOS_ID, EOS_ID, PAD_ID};
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::{load_checkpoint, save_model_checkpoint, CheckpointFiles, TrainerState};
use crate::train::device::Engine;
use crate::train::guard::NonFiniteGuard;
use crate::train::metrics::{write_line, SftEvalLine, SftStepReport};
use crate::train::progress::Progress;
use crate::train::{clip_and_step_model, AdamW, AdamWConfig, LrSchedule};
use std::io::Write;
use std::path::{Path, PathBuf};
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

/// What a run did, for callers and tests.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub losses: Vec<f64>,
    pub evals: Vec<(u64, Eval)>,
    pub tokens_per_s: f64,
    pub out_dir: PathBuf,
    pub final_params: Vec<f32>,
    /// Held-out solve rates before and after the RL phase, when the config has one.
    pub rl: Option<(crate::train::rl::SolveRate, crate::train::rl::SolveRate)>,
}

/// Encode one problem as `<bos> prompt answer <eos>`; returns tokens and the index of the first
/// answer token.
fn encode(tok: &CharTokenizer, p: &Problem) -> Result<(Vec<u32>, usize)> {
    let mut ids = vec![BOS_ID];
    ids.extend(tok.encode(&p.prompt)?);
    let answer_start = ids.len();
    let solution =
        p.solution.as_deref().ok_or_else(|| Error::Invalid(format!("no reference solution for {:?}", p.prompt)))?;
    ids.extend(tok.encode(solution)?);
    ids.push(EOS_ID);
    Ok((ids, answer_start))
}

pub(crate) fn build_batch(
    tok: &CharTokenizer,
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
        let (ids, start) = encode(tok, &task.problem(split, first + i))?;
        batch.push_lm(&ids, PAD_ID)?;
        // position j predicts token j+1: answer targets are positions start-1 .. len-2
        answer_mask.extend((0..ids.len()).map(|j| j + 1 >= start && j + 1 < ids.len()));
    }
    Ok(())
}

/// Score held-out problems with teacher forcing; the problems are partitioned over the
/// data-parallel ranks and the sums all-reduced.
pub fn evaluate(
    model: &Model,
    tok: &CharTokenizer,
    task: &dyn Task,
    cfg: &RunConfig,
    ws: &mut Workspace,
    dp: &dyn Comm,
) -> Result<Eval> {
    let (mut batch, mut mask) = (Batch::new(), Vec::new());
    let n_problems = cfg.train.eval_problems.max(1);
    let mine = partition(n_problems, dp.size(), dp.rank());
    // [Σ −log p, answer tokens, exact sequences, sequences]
    let mut sums = [0.0f64; 4];
    if !mine.is_empty() {
        build_batch(tok, task, SPLIT_EVAL, mine.start as u64, mine.len(), &mut batch, &mut mask)?;
        model.forward(&batch, ws)?;
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
pub fn build_model(cfg: &RunConfig, tok: &CharTokenizer) -> Result<Model> {
    let model_cfg_file = Path::new("[model]");
    Ok(match &cfg.model.hf_dir {
        Some(dir) => {
            let (mc, params) = load_hf_dir(dir)?;
            if mc.vocab_size < tok.vocab_size() {
                return Err(Error::Config {
                    file: dir.join("config.json"),
                    key: "vocab_size".into(),
                    msg: format!("{} is smaller than the character tokenizer's {}", mc.vocab_size, tok.vocab_size()),
                });
            }
            Model::new(mc, params)?
        }
        None => {
            let mc = cfg.fresh_model(tok.vocab_size(), EOS_ID, model_cfg_file)?;
            let params = init_params(&mc, cfg.run.seed, cfg.model.init_std);
            Model::new(mc, params)?
        }
    })
}

/// Run the configured job, printing progress to `log` and writing `<out_dir>/<name>/`:
/// `config.toml` (resolved), `metrics.jsonl` and `checkpoints/step-N/` (HF weights + optimizer
/// state). With `resume`, training continues from that checkpoint exactly as if never stopped.
pub fn run(cfg: &RunConfig, resume: Option<&Path>, log: &mut dyn Write) -> Result<TrainReport> {
    run_on(cfg, resume, &Grid::local(), log)
}

/// [`run`] on one rank of an SPMD job: each step's sequences are partitioned over the
/// data-parallel ranks (the global batch is the same for any dp), gradients and loss
/// normalisers are all-reduced, and only the world's rank 0 writes files; the others pass a sink
/// as `log`.
pub fn run_on(cfg: &RunConfig, resume: Option<&Path>, grid: &Grid, log: &mut dyn Write) -> Result<TrainReport> {
    let dp = grid.dp.as_ref();
    let root = grid.is_root();
    let tok = CharTokenizer::default();
    let task = cfg.task()?;
    let out_dir = cfg.run.out_dir.join(&cfg.run.name);
    if root {
        std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;
        crate::train::checkpoint::remove_stale_temporaries(&out_dir)?;
    }

    let model = build_model(cfg, &tok)?;
    // under tensor parallelism every rank built the full model; it keeps its shard
    let mut model = model.shard(grid.tp.clone())?;
    let t = &cfg.train;
    let schedule = LrSchedule {
        kind: t.schedule,
        peak_lr: t.lr,
        min_lr: t.min_lr,
        warmup_steps: t.warmup_steps,
        total_steps: t.steps,
    };
    let adam = AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay };
    let mut opt = AdamW::for_layout(adam, &model.params.layout);
    let mut start = 0u64;
    let (mut rl_before, mut sampling) = (None, None);
    if let Some(dir) = resume {
        let ck = load_checkpoint(dir)?;
        if &ck.config != model.full_config() {
            return Err(Error::Invalid(format!("{}: the checkpoint's model differs from the config's", dir.display())));
        }
        if ck.state.seed != cfg.run.seed {
            return Err(Error::Invalid(format!(
                "{}: checkpoint seed {} differs from run.seed {}",
                dir.display(),
                ck.state.seed,
                cfg.run.seed
            )));
        }
        let total = t.steps + cfg.rl.as_ref().map_or(0, |r| r.steps);
        if ck.state.step > total {
            return Err(Error::Invalid(format!(
                "{}: checkpoint step {} is past the run's {total} steps",
                dir.display(),
                ck.state.step
            )));
        }
        let moments = |data: Vec<f32>| model.scatter(&crate::model::Params { layout: ck.params.layout.clone(), data });
        let (m, v) = (moments(ck.exp_avg)?, moments(ck.exp_avg_sq)?);
        model.params.data = model.scatter(&ck.params)?;
        (opt.m, opt.v, opt.t) = (m, v, ck.state.adam_t);
        start = ck.state.step;
        sampling = ck.state.sampling;
        rl_before = ck.state.rl_eval_before.map(|[sampled, greedy]| crate::train::rl::SolveRate { greedy, sampled });
    }
    // the run directory's record of its config: written fresh, or compared on a resume
    let mut config_event = None;
    if root {
        let resolved = toml::to_string(cfg).map_err(|e| Error::Invalid(format!("serializing the config: {e}")))?;
        match resume {
            Some(_) => {
                config_event =
                    crate::train::run_record::resume_config(&out_dir, &resolved, start, cfg.allow_config_change)?;
            }
            None => crate::io::atomic::write_atomic(&out_dir.join("config.toml"), resolved.as_bytes())?,
        }
    }
    let mut grads = vec![0.0f32; model.params.data.len()];
    let mut ws = Workspace::new(&model.cfg, 0);
    let mut engine = Engine::new(t.device, &model, dp)?;
    let (mut batch, mut mask) = (Batch::new(), Vec::new());
    let mut dlogp = Vec::new();
    let metrics_path = out_dir.join("metrics.jsonl");
    let mut metrics: Box<dyn Write> =
        if root { Box::new(open_metrics(&metrics_path, start, t.steps)?) } else { Box::new(std::io::sink()) };
    let say = |log: &mut dyn Write, s: String| {
        let _ = writeln!(log, "{s}");
    };
    if let Some(event) = &config_event {
        write_line(&mut metrics, &metrics_path, event)?;
        say(
            log,
            format!(
                "resumed with a changed config (recorded in config-history.jsonl): {}",
                serde_json::Value::Object(event.changes.clone())
            ),
        );
    }
    say(
        log,
        format!(
            "arbor train: {} params ({} layers, hidden {}), task {}, {} supervised steps × {} sequences{}, {} threads, {} → {}",
            model.full_config().num_params(),
            model.cfg.num_layers,
            model.cfg.hidden_size,
            task.name(),
            t.steps,
            t.batch_size,
            cfg.rl.as_ref().map_or(String::new(), |r| format!(
                ", then {} RL steps × {} prompts × {}{}",
                r.steps,
                r.prompts_per_step,
                match &cfg.attnrl {
                    Some(a) => format!("{} initial responses, trees branched by {:?}", a.initial_responses, a.branch_by),
                    None => format!("{} samples", r.samples_per_prompt),
                },
                cfg.rhythm.as_ref().map_or(String::new(), |h| format!(", rhythm {:?}", h.scheme))
            )),
            rayon::current_num_threads(),
            grid.describe(),
            out_dir.display()
        ),
    );
    if !matches!(engine, Engine::Cpu) {
        say(log, format!("supervised forward/backward on {}", engine.describe()));
    }

    let mut report = TrainReport {
        losses: vec![],
        evals: vec![],
        tokens_per_s: 0.0,
        out_dir: out_dir.clone(),
        final_params: vec![],
        rl: None,
    };
    let progress = Progress::new(t.steps, "sft");
    if start == 0 && t.steps > 0 {
        let e0 = evaluate(&model, &tok, task.as_ref(), cfg, &mut ws, dp)?;
        say(log, format!("eval step 0: answer nll {:.4}, answer exact {:.1}%", e0.answer_nll, 100.0 * e0.answer_exact));
        let line = SftEvalLine { step: 0, eval_answer_nll: e0.answer_nll, eval_answer_exact: e0.answer_exact };
        write_line(&mut metrics, &metrics_path, &line)?;
        report.evals.push((0, e0));
    } else if start > 0 {
        say(log, format!("resumed from step {start}"));
    }
    let tokenizer = Tokenizer::Char(tok.clone());
    let (mut tokens_total, mut train_secs) = (0usize, 0.0f64);
    let step_timeout = std::time::Duration::from_secs_f64(cfg.parallel.step_timeout_s);
    let mut guard = NonFiniteGuard::new(t.max_nonfinite_steps);
    for step in start..t.steps {
        let _armed = grid
            .watchdog
            .as_ref()
            .filter(|_| cfg.parallel.step_timeout_s > 0.0)
            .map(|w| w.watch_step(&format!("step {}", step + 1), step_timeout));
        crate::parallel::fault::maybe_inject(grid, step + 1)?;
        let t0 = Instant::now();
        // 1. data: problems (seed, train split, step·B + i), this rank's share, packed
        let mine = partition(t.batch_size, dp.size(), dp.rank());
        let first = step * t.batch_size as u64 + mine.start as u64;
        build_batch(&tok, task.as_ref(), SPLIT_TRAIN, first, mine.len(), &mut batch, &mut mask)?;
        // 2. forward → per-token log-probs; 3. loss = token-mean NLL over every predicted token of
        // the global batch (the last position of a sequence has no target)
        let n = batch.len();
        dlogp.clear();
        dlogp.extend((0..n).map(|i| !batch.seq_starts[1..].contains(&(i + 1)) as u8 as f32));
        grads.iter_mut().for_each(|g| *g = 0.0);
        let mut sums = [0.0f64; 2]; // [predicted tokens, Σ log p]
        if n > 0 {
            engine.forward(&model, &batch, &mut ws)?;
            sums[0] = dlogp.iter().sum::<f32>() as f64;
            sums[1] = ws.logprobs[..n].iter().zip(&dlogp).map(|(l, w)| (*l * w) as f64).sum::<f64>();
        }
        dp.all_reduce_sum_f64(&mut sums)?;
        let count = (sums[0] as f32).max(1.0);
        let loss = -sums[1] / count as f64;
        dlogp.iter_mut().for_each(|w| *w = -*w / count);
        // 4. backward → gradients (all-reduced); 5. clip; 6. AdamW
        if n > 0 || engine.reduces_gradients() {
            // (a rank with no tokens still joins the engine's collective)
            engine.backward(&model, &batch, &dlogp, &mut ws, &mut grads)?;
        }
        if !engine.reduces_gradients() {
            all_reduce_buckets(dp, &mut grads, cfg.parallel.bucket_bytes())?;
        }
        let lr = schedule.lr(step);
        // a non-finite loss or gradient norm skips the update (the optimizer refuses the norm)
        let norm = match loss.is_finite() {
            true => clip_and_step_model(&mut opt, &mut model, &grads, lr, t.grad_clip)?,
            false => f32::NAN,
        };
        let skipped = NonFiniteGuard::is_bad(loss, norm as f64) as usize;
        if skipped == 0 {
            engine.weights_changed(&model)?;
        }
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
        };
        write_line(&mut metrics, &metrics_path, &line)?;
        guard.record("sft", step + 1, skipped, loss, norm as f64)?;
        progress.set(step + 1, format!("loss {loss:.4}  {:.0} tokens/s", tokens_total as f64 / train_secs));
        if (step + 1) % t.log_every.max(1) == 0 || step == 0 {
            progress.say(
                log,
                &format!(
                    "step {:>5}/{}  loss {loss:.4}  grad_norm {norm:.3}  lr {lr:.2e}  {:.0} tokens/s",
                    step + 1,
                    t.steps,
                    tokens_total as f64 / train_secs
                ),
            );
        }
        let last = step + 1 == t.steps;
        if last || (t.eval_every > 0 && (step + 1) % t.eval_every == 0) {
            let e = evaluate(&model, &tok, task.as_ref(), cfg, &mut ws, dp)?;
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
            write_line(&mut metrics, &metrics_path, &line)?;
            report.evals.push((step + 1, e));
        }
        // a signal on any rank (Slurm's preemption notice) stops every rank here, checkpointed
        let preempted = crate::train::preempt::agreed(grid.world.as_ref())?;
        if last || preempted || (step + 1) % t.checkpoint_every.max(1) == 0 {
            metrics.flush().map_err(|e| Error::io(&metrics_path, e))?;
            let state = TrainerState {
                step: step + 1,
                seed: cfg.run.seed,
                adam_t: opt.t,
                rl_eval_before: None,
                sampling: None,
            };
            let none = |_: &Path| Ok::<(), Error>(());
            let files = CheckpointFiles { tokenizer: Some(&tokenizer), keep_last: t.keep_checkpoints, extra: &none };
            save_model_checkpoint(&out_dir, &model, &opt, &state, &files, root)?;
        }
        if preempted {
            progress.finish();
            say(log, format!("preempted: checkpoint of step {} written", step + 1));
            return Err(Error::Preempted { step: step + 1 });
        }
    }
    progress.finish();
    report.tokens_per_s = tokens_total as f64 / train_secs.max(1e-9);
    let mut final_step = t.steps;
    if let Some(rl) = &cfg.rl {
        let loss_cfg = cfg.loss.clone().unwrap_or_default();
        let done = start.saturating_sub(t.steps);
        // the RL phase has its own AdamW; a resume inside the phase continues the loaded one
        let mut rl_opt = if done > 0 { opt } else { AdamW::for_layout(adam, &model.params.layout) };
        let phase = crate::train::rl::Phase {
            cfg,
            rl,
            loss: &loss_cfg,
            task: task.as_ref(),
            run_dir: &out_dir,
            offset: t.steps,
            tokenizer: &tokenizer,
        };
        let begin = crate::train::rl::PhaseStart { done, before: rl_before, sampling };
        let rates = match &cfg.async_rl {
            None => crate::train::rl::run_phase(&mut model, &mut rl_opt, &phase, begin, grid, &mut metrics, log)?,
            Some(_) => {
                crate::train::async_rl::run_phase(&mut model, &mut rl_opt, &phase, begin, grid, &mut metrics, log)?
            }
        };
        report.rl = Some(rates);
        final_step = t.steps + rl.steps;
    }
    let ckpt = out_dir.join("checkpoints").join(format!("step-{final_step}"));
    say(log, format!("saved {} (HF layout: transformers loads it)", ckpt.display()));
    report.final_params = model.gather(&model.params.data)?.data;
    Ok(report)
}

/// Open metrics.jsonl: fresh for a new run; for a resume from global step `start`, keep only the
/// lines of steps ≤ start (a later step's lines belong to the lost tail) and append after them.
/// Supervised lines carry `step`; RL lines carry `rl_step` (global step `sft_steps + rl_step`, and
/// the eval before the first RL step, `rl_step` 0, is kept only once the phase has begun).
fn open_metrics(path: &Path, start: u64, sft_steps: u64) -> Result<SpaceCheckedFile> {
    open_metrics_file(path, start, sft_steps).map(|f| SpaceCheckedFile::new(f, path))
}

fn open_metrics_file(path: &Path, start: u64, sft_steps: u64) -> Result<std::fs::File> {
    if start > 0 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let kept: String = text
            .lines()
            .filter(|l| {
                let v = serde_json::from_str::<serde_json::Value>(l).ok();
                let field = |k: &str| v.as_ref().and_then(|v| v[k].as_u64());
                match (field("step"), field("rl_step")) {
                    (Some(s), _) => s <= start,
                    (None, Some(r)) => start > sft_steps && sft_steps + r <= start,
                    _ => false,
                }
            })
            .map(|l| format!("{l}\n"))
            .collect();
        // all at once: a failed rewrite (a full disk) keeps the old file
        crate::io::atomic::write_atomic(path, kept.as_bytes())?;
        return std::fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e));
    }
    std::fs::File::create(path).map_err(|e| Error::io(path, e))
}
