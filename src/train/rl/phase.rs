//! The RL phase around its steps: the reference policy, the eval before, then per step the
//! pipeline of [`RlTrainer::step`], its metrics line, the trajectory dump, periodic evals and
//! checkpoints (with the critics and the off-policy pipeline's pending batch), and preemption.

use super::eval::{evaluate, SolveRate};
use super::report::RlEvalLine;
use super::rollouts::Rollouts;
use super::tree::TreeState;
use super::{RlTrainer, Sampling, StepOutput};
use crate::config::{RlPlan, RlSection, RunConfig, Sampler as SamplerPlan};
use crate::error::{Error, Result};
use crate::io::{load_hf_dir, save_hf_dir, SaveOptions};
use crate::model::Model;
use crate::parallel::Grid;
use crate::rl::LossConfig;
use crate::tasks::Task;
use crate::tokenizer::TextCodec;
use crate::train::checkpoint::{save_model_checkpoint, CheckpointFiles, TrainerState};
use crate::train::engine::Engine;
use crate::train::progress::Progress;
use crate::train::run_dir::{run_of_checkpoint, REFERENCE_DIR};
use crate::train::AdamW;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the RL phase sits in the run.
pub struct Phase<'a> {
    pub cfg: &'a RunConfig,
    /// The RL phase as resolved from the config: strategies, `[rl]` and the loss.
    pub plan: &'a RlPlan,
    pub rl: &'a RlSection,
    pub loss: &'a LossConfig,
    pub task: &'a dyn Task,
    /// The run directory (`<out_dir>/<name>`).
    pub run_dir: &'a Path,
    /// Global step of the phase's start (the supervised steps before it): RL step k is global step offset + k.
    pub offset: u64,
    /// How the run encodes text; its tokenizer is saved with every checkpoint.
    pub codec: &'a TextCodec,
    /// Commits the checkpoints in the background (`train::commit`).
    pub commit: &'a crate::train::commit::Committer,
}

/// Where a (possibly resumed) phase starts: RL steps already done and, when > 0, the eval before the first.
#[derive(Debug, Clone, Default)]
pub struct PhaseStart {
    pub done: u64,
    pub before: Option<SolveRate>,
    /// Adaptive-sampling state of an `[attnrl]` phase.
    pub sampling: Option<crate::train::checkpoint::SamplingState>,
    /// The checkpoint a resumed phase (`done` > 0) continues from: its critics and pending tree
    /// batch are read there, and its KL reference in that checkpoint's run directory.
    pub from: Option<PathBuf>,
    /// Consecutive steps before `done` whose update was skipped as non-finite (the guard's count,
    /// carried by the checkpoint so that a requeue does not reset it).
    pub nonfinite_in_a_row: u64,
    /// Under `[rl] keep_best`: the best evaluation up to `done` (the checkpoint's).
    pub best: Option<crate::train::checkpoint::Best>,
}

/// What a resume inside the RL phase (`done` > 0 steps of it, from checkpoint `ck`) needs besides
/// the weights, checked before the run directory is touched (a refused resume leaves the run as it
/// was): the KL reference in the checkpoint's run, and one pending tree batch per data-parallel rank
/// (`dp`) of an off-policy AttnRL phase.
pub fn check_resume(plan: &RlPlan, loss: &LossConfig, ck: &Path, done: u64, dp: usize) -> Result<()> {
    if done == 0 {
        return Ok(());
    }
    if loss.kl_coef > 0.0 {
        let missing = match run_of_checkpoint(ck).map(|r| r.join(REFERENCE_DIR)) {
            Some(dir) if dir.is_dir() => None,
            Some(dir) => Some(format!("its KL reference {} is missing", dir.display())),
            None => {
                Some(format!("{} is not in a run's checkpoints/ folder, where its KL reference is found", ck.display()))
            }
        };
        if let Some(why) = missing {
            return Err(Error::Invalid(format!(
                "resuming the RL phase with loss.kl_coef = {}: {why} (the reference is saved in the run directory \
                 at the phase's start; resume from a checkpoint inside its run, <run>/checkpoints/step-N)",
                loss.kl_coef
            )));
        }
    }
    if matches!(plan.sampler, SamplerPlan::OffPolicyTrees(_)) {
        let mut ranks = 0;
        while ck.join(format!("pending-rank{ranks}.json")).is_file() {
            ranks += 1;
        }
        if ranks != dp {
            return Err(Error::Invalid(format!(
                "{}: the off-policy AttnRL checkpoint holds the pending batch of {ranks} data-parallel rank(s) \
                 (pending-rank*.json); resume it with the same data parallelism (dp = {ranks}), not dp = {dp}",
                ck.display()
            )));
        }
    }
    Ok(())
}

/// Where the phase writes its metrics lines (for error messages).
fn metrics_path(ph: &Phase) -> PathBuf {
    ph.run_dir.join("metrics.jsonl")
}

fn write_line(ph: &Phase, metrics: &mut dyn Write, line: &impl serde::Serialize) -> Result<()> {
    crate::train::metrics::write_line(metrics, &metrics_path(ph), line)
}

fn eval_line(step: u64, r: &SolveRate) -> RlEvalLine {
    RlEvalLine {
        rl_step: step,
        eval_solve_rate: r.sampled,
        eval_solve_rate_greedy: r.greedy,
        eval_pass_at_k: r.pass.map(|p| p.rate),
    }
}

/// Where a training rank's step samples come from when they are not generated in-process: the
/// disaggregated trainer ([`crate::train::async_rl`]) receives them from rollout ranks and
/// publishes each new policy version back.
pub(crate) trait SampleSource {
    /// The rollouts this rank trains on at `step` (its data-parallel share), and how they were made.
    fn rollouts(&mut self, model: &Model, step: u64) -> Result<(Rollouts, Sampling)>;
    /// Called after the update of `step`: the model now holds policy version `step + 1`.
    fn published(&mut self, model: &Model, step: u64) -> Result<()>;
    /// Called when the ranks stop early after `step`, checkpointed (`stop`: the
    /// [`Error::Preempted`] the phase returns): whatever still makes samples is told to stop.
    fn halt(&mut self, _step: u64, _stop: &Error) -> Result<()> {
        Ok(())
    }
    /// Files of its own in the checkpoint of `done` steps (in folder `dir`, before it is committed).
    fn save(&self, _dir: &Path, _done: u64) -> Result<()> {
        Ok(())
    }
}

/// Run (or continue) the RL phase: eval before, `rl.steps` steps with metrics, dumps, periodic evals and
/// checkpoints. Returns the held-out solve rates before and after.
pub fn run_phase(
    model: &mut Model,
    opt: &mut AdamW,
    ph: &Phase,
    start: PhaseStart,
    grid: &Grid,
    metrics: &mut dyn Write,
    log: &mut dyn Write,
) -> Result<(SolveRate, SolveRate)> {
    let mut io = PhaseIo { metrics, log, source: None };
    run_phase_with(model, opt, ph, start, grid, &mut io)
}

/// The phase's outputs and, under `[async]`, where its samples come from.
pub(crate) struct PhaseIo<'a> {
    pub metrics: &'a mut dyn Write,
    pub log: &'a mut dyn Write,
    pub source: Option<&'a mut dyn SampleSource>,
}

/// The frozen reference policy of the KL term: saved at the phase's start, reloaded on resume.
fn reference_policy(model: &Model, ph: &Phase, start: &PhaseStart, grid: &Grid) -> Result<Option<Model>> {
    if ph.loss.kl_coef <= 0.0 {
        return Ok(None);
    }
    if start.done == 0 {
        // a phase that starts here saves its reference in this run's directory, never in the run
        // of the checkpoint it started from (a fork off another run's SFT checkpoint leaves that
        // run's record as it was)
        let full = model.gather(&model.params.data)?;
        if grid.is_root() {
            // sealed with a manifest that a resume checks (the manifest of a reference this
            // replaces goes first: a crash before the new one is sealed leaves it unsealed)
            let dir = ph.run_dir.join(REFERENCE_DIR);
            let old = dir.join(crate::train::checkpoint::MANIFEST_FILE);
            if old.is_file() {
                std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
            }
            save_hf_dir(&dir, model.full_config(), &full, &SaveOptions::default())?;
            crate::train::checkpoint::seal_folder(&dir)?;
        }
        Ok(Some(model.clone()))
    } else {
        // a resume inside the phase: the reference of the run that wrote the checkpoint (run_dir.rs
        // copies it here too, on the writing rank, for later resumes of this run)
        let ref_dir = start
            .from
            .as_deref()
            .and_then(run_of_checkpoint)
            .unwrap_or_else(|| ph.run_dir.to_path_buf())
            .join(REFERENCE_DIR);
        if !ref_dir.is_dir() {
            return Err(Error::Invalid(format!(
                "resuming the RL phase with loss.kl_coef = {}: its KL reference {} is missing (saved in the run \
                 directory at the phase's start; resume from a checkpoint inside its run, <run>/checkpoints/step-N)",
                ph.loss.kl_coef,
                ref_dir.display()
            )));
        }
        crate::train::checkpoint::verify_sealed(&ref_dir)?;
        let (mc, params) = load_hf_dir(&ref_dir)?;
        Ok(Some(Model::new(mc, params)?.shard(grid.tp.clone())?))
    }
}

/// Restore the critics and the tree sampler's state of a resumed phase.
fn restore(trainer: &mut RlTrainer, ph: &Phase, start: &PhaseStart, rank: usize) -> Result<()> {
    if start.done == 0 {
        return Ok(());
    }
    let dir =
        start.from.as_deref().ok_or_else(|| Error::Invalid("a resumed RL phase without its checkpoint".into()))?;
    if let Some(c) = trainer.critics.as_mut() {
        c.load(dir)?;
    }
    if let (Some(t), Some(s)) = (trainer.sampler.tree_state_mut(), start.sampling) {
        *t = TreeState::restore(&s, ph.rl.prompts_per_step);
        if matches!(ph.plan.sampler, SamplerPlan::OffPolicyTrees(_)) {
            let path = dir.join(format!("pending-rank{rank}.json"));
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            // empty: the phase's last step, which draws no next batch (a run extended past it
            // starts the pipeline afresh, as its first step does)
            t.pending = match bytes.is_empty() {
                true => None,
                false => Some(serde_json::from_slice(&bytes).map_err(|e| Error::Config {
                    file: path.clone(),
                    key: "<json>".into(),
                    msg: format!("not a pending AttnRL batch: {e}"),
                })?),
            };
        }
    }
    Ok(())
}

/// [`run_phase`] with the step's samples taken from `io.source` when given.
pub(crate) fn run_phase_with(
    model: &mut Model,
    opt: &mut AdamW,
    ph: &Phase,
    start: PhaseStart,
    grid: &Grid,
    io: &mut PhaseIo,
) -> Result<(SolveRate, SolveRate)> {
    let (cfg, rl) = (ph.cfg, ph.rl);
    let (dp, root) = (grid.dp.as_ref(), grid.is_root());
    let progress = Progress::new(rl.steps, "rl");
    // the setup (the engine, a GPU run's NCCL communicator, the evaluation before RL) is bounded
    // as a step is (pretrain.rs)
    let setup = grid.watch_step("rl phase start (engine, NCCL, eval before)", cfg.parallel.step_timeout_s);
    if ph.offset == 0 && start.done == 0 {
        crate::parallel::fault::maybe_inject(grid, 0)?;
    }
    let reference = reference_policy(model, ph, &start, grid)?;
    let mut engine = Engine::new(cfg.train.compute(), model, dp)?;
    engine.set_checkpointing(cfg.train.gradient_checkpointing);
    if opt.is_shard(model.params.data.len()) {
        engine.shard_optimizer(opt.range())?;
    }
    engine.load(model, opt)?;
    if engine.on_device() {
        progress.say(&mut *io.log, &format!("rl: generation and training on {}", engine.describe()));
    }
    let ctx = RlTrainer::context(cfg, rl, ph.task, ph.codec, dp);
    let mut trainer = RlTrainer::new(ctx, ph.plan, model, reference, engine)?;
    let before = match start.before {
        Some(b) if start.done > 0 => b,
        _ => {
            let b = evaluate(&mut trainer.engine, model, cfg, (ph.task, ph.codec), rl, 0, dp)?;
            write_line(ph, io.metrics, &eval_line(0, &b))?;
            b
        }
    };
    let log = &mut *io.log;
    progress.say(
        log,
        &format!(
            "rl eval before: solve rate greedy {:.1}%, sampled {:.1}%{}",
            100.0 * before.greedy,
            100.0 * before.sampled,
            before.pass_note()
        ),
    );
    if start.done > 0 {
        progress.say(log, &format!("rl: resumed after step {}", start.done));
    }
    let mut dump = if root { Some(crate::train::dump::Dump::open(ph.run_dir, cfg, start.done)?) } else { None };
    restore(&mut trainer, ph, &start, dp.rank())?;
    let mut last = before;
    drop(setup);
    let mut guard =
        crate::train::guard::NonFiniteGuard::resumed(cfg.train.max_nonfinite_steps, start.nonfinite_in_a_row);
    // the checkpoint's best, where the phase still ranks by the metric it was ranked by; the file
    // naming it follows (a rollback resumes from before a later best, or into the supervised phase)
    let mut best = start.best.clone().filter(|b| rl.keep_best.is_some_and(|m| m.key() == b.metric));
    if root {
        crate::train::checkpoint::write_best(ph.run_dir, best.as_ref())?;
    }
    for step in start.done..rl.steps {
        let _armed = grid.watch_step(&format!("rl step {}", step + 1), cfg.parallel.step_timeout_s);
        crate::parallel::fault::maybe_inject(grid, ph.offset + step + 1)?;
        let out: StepOutput = match io.source.as_deref_mut() {
            None => trainer.step(model, opt, step)?,
            Some(src) => {
                let (rollouts, sampling) = src.rollouts(model, step)?;
                trainer.train_on(model, opt, step, rollouts, sampling, Some(src))?
            }
        };
        let r = &out.report;
        write_line(ph, io.metrics, r)?;
        guard.record("rl", step + 1, r.skipped_updates, r.loss, r.grad_norm)?;
        if let Some(d) = dump.as_mut() {
            d.append(step, r.policy_version, &out.samples)?;
        }
        progress.set(
            step + 1,
            format!("reward {:.3}  len {:.1}  eval {:.1}%", r.reward_mean, r.response_len_mean, 100.0 * last.sampled),
        );
        if (step + 1) % rl.log_every.max(1) == 0 || step == 0 {
            progress.say(
                log,
                &format!(
                    "rl step {:>4}/{}  reward {:.3}  len {:.1}  kept {}/{}  clip {:.3}  {:.1}s (gen {:.1}s){}",
                    step + 1,
                    rl.steps,
                    r.reward_mean,
                    r.response_len_mean,
                    r.trained_samples,
                    out.samples.len(),
                    r.clip_frac,
                    r.step_s,
                    r.time_generate_s,
                    progress.eta_note(),
                ),
            );
        }
        let final_step = step + 1 == rl.steps;
        let mut new_best = false;
        if final_step || (rl.eval_every > 0 && (step + 1) % rl.eval_every == 0) {
            last = evaluate(&mut trainer.engine, model, cfg, (ph.task, ph.codec), rl, step + 1, dp)?;
            progress.say(
                log,
                &format!(
                    "rl eval step {}: solve rate greedy {:.1}%, sampled {:.1}%{}",
                    step + 1,
                    100.0 * last.greedy,
                    100.0 * last.sampled,
                    last.pass_note()
                ),
            );
            write_line(ph, io.metrics, &eval_line(step + 1, &last))?;
            if let Some(b) = better(rl.keep_best, &last, best.as_ref(), (ph.offset, step + 1)) {
                progress.say(log, &format!("rl: best {} so far ({:.4}): its checkpoint is kept", b.metric, b.value));
                best = Some(b);
                new_best = true;
            }
        }
        // a signal on any rank stops every rank here, checkpointed (under [async], any training
        // rank: the leader then halts the rollout ranks); at the last step the run ends finished
        let preempted = crate::train::preempt::agreed(grid.world.as_ref())? && !final_step;
        if final_step || preempted || new_best || (step + 1) % cfg.train.checkpoint_every.max(1) == 0 {
            io.metrics.flush().map_err(|e| Error::io(metrics_path(ph), e))?;
            trainer.sync_host(model, opt)?;
            let best = (best.as_ref(), new_best);
            let source = io.source.as_deref();
            checkpoint(model, opt, ph, (&trainer, source), grid, (step, guard.in_a_row()), before, best)?;
        }
        if preempted {
            progress.finish();
            progress.say(log, &format!("preempted: checkpoint of RL step {} written", step + 1));
            let stop = Error::Preempted { step: ph.offset + step + 1, why: crate::train::preempt::why() };
            if let Some(src) = io.source.as_deref_mut() {
                src.halt(step, &stop)?;
            }
            return Err(stop);
        }
    }
    progress.finish();
    if let Some(d) = dump {
        d.finish();
    }
    if start.done >= rl.steps && rl.steps > 0 {
        // a resume of a finished phase (a requeue after its last checkpoint): its final evaluation
        // once more, the same numbers (a function of the weights and the seed), not the one before
        last = evaluate(&mut trainer.engine, model, cfg, (ph.task, ph.codec), rl, rl.steps, dp)?;
    }
    trainer.sync_host(model, opt)?;
    Ok((before, last))
}

/// Checkpoint after RL step `step` (with the non-finite guard's count then): the model, the optimizer, the trainer state, the critics and
/// the off-policy pipeline's pending batch (one file per data-parallel rank, gathered to root).
/// The evaluation `rate` after RL step `rl_step` (of a phase after `offset` supervised steps) as
/// the new best of `[rl] keep_best = metric`, where it beats `best` (a tie keeps the earlier).
fn better(
    metric: Option<crate::config::BestMetric>,
    rate: &SolveRate,
    best: Option<&crate::train::checkpoint::Best>,
    (offset, rl_step): (u64, u64),
) -> Option<crate::train::checkpoint::Best> {
    use crate::config::BestMetric;
    let metric = metric?;
    let value = match metric {
        BestMetric::EvalSolveRate => rate.sampled,
        BestMetric::EvalSolveRateGreedy => rate.greedy,
        BestMetric::EvalPassAtK => rate.pass?.rate,
    };
    let beats = best.is_none_or(|b| value > b.value);
    beats.then(|| crate::train::checkpoint::Best {
        step: offset + rl_step,
        rl_step,
        metric: metric.key().into(),
        value,
    })
}

/// `(best, new)`: the phase's best evaluation so far, and whether it is this step's.
#[allow(clippy::too_many_arguments)]
fn checkpoint(
    model: &Model,
    opt: &AdamW,
    ph: &Phase,
    (trainer, source): (&RlTrainer, Option<&dyn SampleSource>),
    grid: &Grid,
    (step, nonfinite_in_a_row): (u64, u64),
    before: SolveRate,
    (best, new_best): (Option<&crate::train::checkpoint::Best>, bool),
) -> Result<()> {
    let cfg = ph.cfg;
    let tree = trainer.sampler.tree_state();
    let state = TrainerState {
        step: ph.offset + step + 1,
        seed: cfg.run.seed,
        adam_t: opt.t,
        rl_eval_before: Some([before.sampled, before.greedy]),
        rl_eval_before_pass_at_k: before.pass.map(|p| (p.k, p.rate)),
        sampling: tree.map(|t| t.save()),
        nonfinite_in_a_row,
        data_fingerprint: crate::train::checkpoint::data_fingerprint(ph.task),
        rl_best: best.cloned(),
    };
    let json = match tree.and_then(|t| t.pending.as_ref()) {
        Some(p) => serde_json::to_vec(p).map_err(|e| Error::Invalid(format!("pending batch: {e}")))?,
        None => Vec::new(),
    };
    let off_policy = matches!(ph.plan.sampler, SamplerPlan::OffPolicyTrees(_));
    let all = if off_policy { grid.dp.all_gather_bytes(&json)? } else { vec![] };
    // the critics and the pending batch go into the checkpoint's folder before it is renamed
    // into place, under its manifest: a checkpoint has all of them or does not exist
    let extra = |dir: &Path| -> Result<()> {
        if let Some(c) = trainer.critics.as_ref() {
            c.save(dir)?;
        }
        for (r, bytes) in all.iter().enumerate() {
            let path = dir.join(format!("pending-rank{r}.json"));
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        }
        if let Some(s) = source {
            s.save(dir, step + 1)?;
        }
        Ok(())
    };
    let run_config = cfg.to_toml()?;
    let files = CheckpointFiles {
        tokenizer: Some(ph.codec.tokenizer()),
        keep_last: cfg.train.keep_checkpoints,
        extra: &extra,
        run_config: Some(&run_config),
        commit: Some(ph.commit),
        best: best.filter(|_| new_best),
    };
    save_model_checkpoint(ph.run_dir, model, opt, &state, &files, (grid.is_root(), grid.dp.as_ref()))?;
    Ok(())
}
