//! The RL phase (GRPO family): sample prompts → generate n responses
//! each (continuous batching) → rewards → group advantages → policy update (epochs × mini-batches
//! × accumulated micro-batches, ALGORITHMS.md §5) → metrics, trajectory dump, eval, checkpoint.
//! Every random draw derives from (seed, step, prompt id, sample index), so the RL step number,
//! the weights and the AdamW moments are the whole state: a resumed phase is bit-identical.
//!
//! The task comes from `[data]` (`crate::tasks::Task`) with the character tokenizer; the held-out
//! split never overlaps the training problems.

mod critic_step;
pub mod env_step;
pub mod eval;
pub mod rhythm;
pub mod tree;
pub mod update;
pub mod wire;

pub use eval::{evaluate, SolveRate};
pub use update::{policy_update, policy_update_dp, DpShard, Sample, UpdateBuffers, UpdatePlan, UpdateReport};

use crate::config::{RlSection, RunConfig};
use crate::error::{Error, Result};
use crate::io::{load_hf_dir, save_hf_dir, SaveOptions};
use crate::model::{Model, Workspace};
use crate::parallel::{partition, Comm, Grid, Local};
use crate::rl::{broadcast_to_tokens, group_advantages, LossConfig};
use crate::rollout::{generate, Completion, Finish, GenerateConfig, Request, SamplingParams};
use crate::tasks::{Task, SPLIT_TRAIN};
use crate::tokenizer::char::{CharTokenizer, EOS_ID};
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::{save_model_checkpoint, TrainerState};
use crate::train::progress::Progress;
use crate::train::AdamW;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// One generated sample of a step, as dumped to trajectories.h5.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSample {
    pub prompt_id: u64,
    pub sample_index: u32,
    /// Training data of the sample (prompt, response, behaviour log-probs, per-token advantages, reward).
    pub data: Sample,
    /// logπ_old recomputed by the trainer per response token; NaN when the sample was not trained on.
    pub logp: Vec<f32>,
    /// Why generation stopped.
    pub finish: Finish,
    /// Attention statistics and tree position of the sample (empty when not computed).
    pub trace: AttnTrace,
}

/// What the attention statistics and tree sampling recorded about a generated sample, for the
/// dump (`docs/trajectories.md`). Empty vectors mean "not computed".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttnTrace {
    /// A continuation: the `sample_index` of the response it branched from and the token
    /// position in that response where it starts.
    pub branch: Option<(u32, u32)>,
    /// Step of each response token.
    pub step_index: Vec<u32>,
    /// FCI of each response token's step.
    pub fci: Vec<f32>,
    /// WAAD and FAI of each response token.
    pub waad: Vec<f32>,
    pub fai: Vec<f32>,
}

/// What one RL step did.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The metrics.jsonl line of the step.
    pub metrics: serde_json::Value,
    /// Every sample of the step, in (prompt, sample) order.
    pub samples: Vec<StepSample>,
    pub reward_mean: f64,
    pub response_len_mean: f64,
}

/// The RL trainer: settings plus reusable buffers; the model and optimizer are passed to [`RlTrainer::step`].
pub struct RlTrainer<'a> {
    cfg: &'a RunConfig,
    rl: &'a RlSection,
    loss: &'a LossConfig,
    task: &'a dyn Task,
    tok: CharTokenizer,
    reference: Option<Model>,
    buf: UpdateBuffers,
    dp: &'a dyn Comm,
    /// Adaptive-sampling state of an `[attnrl]` phase.
    pub tree: Option<tree::TreeState>,
    stats_ws: Workspace,
    /// Value models of a `[critic]` phase (created by `init_critics`).
    pub critics: Vec<crate::train::critic::Critic>,
    critic_batch: Option<critic_step::CriticBatch>,
}

/// The step's sampling result, before the update.
#[derive(Default)]
pub(crate) struct Sampled {
    /// Every generated sample of this rank, in order.
    generated: Vec<StepSample>,
    /// Training sequences of this rank.
    train: Vec<Sample>,
    /// For each training sequence, the generated sample it is (to copy recomputed log-probs back), if any.
    train_of: Vec<Option<usize>>,
    /// Candidate training sequences (before zero-signal filtering) and those with non-zero advantage.
    candidates: usize,
    effective: usize,
    /// Prompts whose initial responses were all correct / all wrong, and prompts.
    all_correct: usize,
    all_wrong: usize,
    prompts: usize,
    zero_std: (usize, usize),
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Sampled {
    /// Add a metric to the step's metrics line.
    pub(crate) fn note(&mut self, key: &str, value: serde_json::Value) {
        self.extra.insert(key.into(), value);
    }

    /// Record one completion of `prompt` with its sequence-level advantage (broadcast to every
    /// token) and reward; it becomes a training sequence when `train` and it is not empty.
    pub(crate) fn push(&mut self, prompt: Vec<u32>, c: Completion, advantage: f32, reward: f32, train: bool) {
        let mut tok_adv = vec![0.0f32; c.tokens.len()];
        broadcast_to_tokens(&[advantage], &[0, c.tokens.len()], &mut tok_adv);
        if !c.tokens.is_empty() {
            self.candidates += 1;
            self.effective += usize::from(advantage != 0.0);
        }
        let data = Sample { prompt, response: c.tokens, behav_logp: c.logprobs, advantages: tok_adv, reward };
        if train && !data.response.is_empty() {
            self.train.push(data.clone());
            self.train_of.push(Some(self.generated.len()));
        }
        self.generated.push(StepSample {
            prompt_id: c.prompt_id,
            sample_index: c.sample_index,
            logp: vec![f32::NAN; data.response.len()],
            finish: c.finish,
            data,
            trace: AttnTrace::default(),
        });
    }
}

/// Generation settings of the RL phase at step `step` (0-based; every request's random stream is
/// keyed by step + 1), with at most `max_new` new tokens.
pub fn rollout_config(cfg: &RunConfig, rl: &RlSection, step: u64, max_new: usize) -> GenerateConfig {
    GenerateConfig {
        sampling: SamplingParams { temperature: rl.temperature, top_p: 1.0, top_k: 0, max_new_tokens: max_new },
        stop_tokens: vec![EOS_ID],
        seed: cfg.run.seed,
        step: step + 1,
        max_batch: rl.max_batch,
        workload: cfg.workload.clone(),
    }
}

impl<'a> RlTrainer<'a> {
    /// A trainer for `model`; `reference` is the frozen policy of the KL term (needed iff kl_coef > 0).
    pub fn new(
        cfg: &'a RunConfig,
        rl: &'a RlSection,
        loss: &'a LossConfig,
        task: &'a dyn Task,
        model: &Model,
        reference: Option<Model>,
    ) -> Self {
        let (tok, buf) = (CharTokenizer::default(), UpdateBuffers::new(model));
        let tree = cfg.attnrl.as_ref().map(|_| tree::TreeState::new(rl.prompts_per_step));
        let stats_ws = Workspace::new(&model.cfg, 0);
        RlTrainer {
            cfg,
            rl,
            loss,
            task,
            tok,
            reference,
            buf,
            dp: &Local,
            tree,
            stats_ws,
            critics: Vec::new(),
            critic_batch: None,
        }
    }

    /// Run data-parallel over `dp`: each rank generates and trains its share of the step's prompts.
    pub fn with_dp(mut self, dp: &'a dyn Comm) -> Self {
        self.dp = dp;
        self
    }

    /// Bytes of the training state: the policy's weights, gradients and AdamW moments, the
    /// reference weights, and each critic's weights, gradients and moments (f32).
    pub fn state_bytes(&self, model: &Model) -> usize {
        let policy = 4 * model.params.data.len();
        let reference = self.reference.as_ref().map_or(0, |r| r.params.data.len());
        let critics: usize = self.critics.iter().map(|c| 4 * (c.model.params.data.len() + c.head.len())).sum();
        4 * (policy + reference + critics)
    }

    /// The update plan of `[rl]`.
    pub fn plan(&self) -> UpdatePlan {
        UpdatePlan {
            epochs: self.rl.epochs,
            mini_batches: self.rl.mini_batches,
            micro_batch: self.rl.micro_batch,
            grad_clip: self.rl.grad_clip,
        }
    }

    /// Generate `requests` at RL step `step` (0-based) with the rollout settings of `[rl]`.
    fn generate(&self, model: &Model, requests: &[Request], step: u64, max_new: usize) -> Result<Vec<Completion>> {
        generate(model, requests, &rollout_config(self.cfg, self.rl, step, max_new))
    }

    /// GRPO-family sampling: this rank's share of the prompts × n samples, group advantages,
    /// optional rhythm shaping.
    fn sample_groups(&mut self, model: &Model, step: u64) -> Result<Sampled> {
        let rl = self.rl;
        let (p, n) = (rl.prompts_per_step, rl.samples_per_prompt as usize);
        let mine = partition(p, self.dp.size(), self.dp.rank());
        let mut problems = Vec::with_capacity(mine.len());
        let mut requests = Vec::with_capacity(mine.len() * n);
        for i in mine.clone() {
            let id = step * p as u64 + i as u64;
            let (ids, prob) = eval::problem(self.task, &self.tok, SPLIT_TRAIN, id)?;
            for s in 0..n as u32 {
                requests.push(Request { prompt_id: id, sample_index: s, prompt: ids.clone() });
            }
            problems.push(prob);
        }
        let completions = self.generate(model, &requests, step, rl.max_new_tokens)?;
        let t_reward = Instant::now();
        let rewards: Vec<f32> = completions
            .iter()
            .enumerate()
            .map(|(k, c)| eval::reward(self.task, &self.tok, &problems[k / n], c))
            .collect();
        let group_starts: Vec<usize> = (0..=mine.len()).map(|g| g * n).collect();
        let adv = group_advantages(rl.advantage, &rewards, &group_starts)?;
        let t_reward = t_reward.elapsed().as_secs_f64();
        let mut out = Sampled {
            generated: Vec::with_capacity(completions.len()),
            prompts: mine.len(),
            zero_std: (adv.zero_std.iter().filter(|&&z| z).count(), adv.zero_std.len()),
            ..Sampled::default()
        };
        for g in 0..mine.len() {
            let r = &rewards[g * n..(g + 1) * n];
            out.all_correct += usize::from(r.iter().all(|&x| x >= 1.0));
            out.all_wrong += usize::from(r.iter().all(|&x| x < 1.0));
        }
        for (k, c) in completions.into_iter().enumerate() {
            // with critics, GAE gives equal-reward groups a signal too
            let no_signal = rl.filter_zero_std && self.critics.is_empty() && adv.zero_std[k / n];
            out.push(requests[k].prompt.clone(), c, adv.advantages[k], rewards[k], !no_signal);
        }
        out.extra.insert("time_reward_s".into(), t_reward.into());
        if !self.critics.is_empty() {
            self.critic_advantages(&mut out)?;
        }
        if let Some(rc) = &self.cfg.rhythm {
            let (shaped, marks) = rhythm::shape(model, &mut self.stats_ws, rc, &mut out.train)?;
            out.extra.insert("rhythm_amplified_frac".into(), shaped.into());
            // the statistics and the shaped advantages go into the dump with each sample
            for ((i, (waad, fai)), s) in out.train_of.iter().zip(marks).zip(&out.train) {
                if let Some(g) = i.and_then(|i| out.generated.get_mut(i)) {
                    (g.trace.waad, g.trace.fai) = (waad, fai);
                    g.data.advantages.clone_from(&s.advantages);
                }
            }
        }
        Ok(out)
    }

    /// Tree sampling (`[attnrl]`): this data-parallel rank's questions.
    fn sample_tree(&mut self, model: &Model, step: u64) -> Result<Sampled> {
        let ac = self.cfg.attnrl.as_ref().ok_or_else(|| Error::Invalid("tree sampling without [attnrl]".into()))?;
        let mut state = self.tree.take().unwrap_or_else(|| tree::TreeState::new(self.rl.prompts_per_step));
        let mut ws = std::mem::replace(&mut self.stats_ws, Workspace::new(&model.cfg, 0));
        let res = tree::sample_trees(self, model, ac, &mut state, step, &mut ws);
        self.stats_ws = ws;
        let next_prompts = state.batch.prompts;
        self.tree = Some(state);
        let mut tb = res?;
        self.buf.fixed_old_logp = std::mem::take(&mut tb.fixed_old_logp);
        let n = ac.initial_responses.max(1);
        let initial = &tb.generated[..tb.questions * n];
        let mut out = Sampled {
            candidates: tb.candidates,
            effective: tb.effective,
            all_correct: (0..tb.questions)
                .filter(|q| initial[q * n..(q + 1) * n].iter().all(|s| s.data.reward >= 1.0))
                .count(),
            all_wrong: (0..tb.questions)
                .filter(|q| initial[q * n..(q + 1) * n].iter().all(|s| s.data.reward < 1.0))
                .count(),
            prompts: tb.questions,
            zero_std: (tb.dropped_questions, tb.questions),
            train_of: vec![None; tb.train.len()],
            train: tb.train,
            generated: tb.generated,
            extra: serde_json::Map::new(),
        };
        let mut points = [tb.branch_points as f64, tb.filled_points as f64];
        self.dp.all_reduce_sum_f64(&mut points)?;
        out.extra.insert("branch_points".into(), (points[0] as u64).into());
        out.extra.insert("branch_points_filled".into(), (points[1] as u64).into());
        out.extra.insert("next_prompts".into(), next_prompts.into());
        if let Some(rc) = &self.cfg.rhythm {
            let (shaped, _) = rhythm::shape(model, &mut self.stats_ws, rc, &mut out.train)?;
            out.extra.insert("rhythm_amplified_frac".into(), shaped.into());
        }
        Ok(out)
    }

    /// RL step `step` (0-based): generate with the current weights, then update them.
    pub fn step(&mut self, model: &mut Model, opt: &mut AdamW, step: u64) -> Result<StepOutput> {
        let t0 = Instant::now();
        let sampled = self.sample(model, step)?;
        let t_gen = t0.elapsed().as_secs_f64();
        self.train_on(model, opt, step, sampled, t0, t_gen)
    }

    /// The sampling half of a step: this rank's share of the step's prompts, generated with
    /// `model`, rewarded, with advantages.
    pub(crate) fn sample(&mut self, model: &Model, step: u64) -> Result<Sampled> {
        if self.cfg.attnrl.is_some() {
            self.sample_tree(model, step)
        } else if self.cfg.env.is_some() {
            self.sample_env(model, step)
        } else {
            self.sample_groups(model, step)
        }
    }

    /// The training half of a step: update `model` on `sampled` and assemble the step's metrics
    /// (`t0` = when the step began, `t_gen` = seconds its sampling took).
    pub(crate) fn train_on(
        &mut self,
        model: &mut Model,
        opt: &mut AdamW,
        step: u64,
        sampled: Sampled,
        t0: Instant,
        t_gen: f64,
    ) -> Result<StepOutput> {
        let Sampled {
            mut generated,
            train,
            train_of,
            mut extra,
            candidates,
            effective,
            all_correct,
            all_wrong,
            prompts,
            zero_std,
        } = sampled;
        let t1 = Instant::now();
        let lr = self.rl.lr_schedule().lr(step);
        let plan = self.plan();
        let counts = self.dp.all_gather_bytes(&(train.len() as u64).to_le_bytes())?;
        let counts: Vec<usize> = counts
            .iter()
            .enumerate()
            .map(|(r, b)| match <[u8; 8]>::try_from(b.as_slice()) {
                Ok(b) => Ok(u64::from_le_bytes(b) as usize),
                Err(_) => Err(Error::Invalid(format!(
                    "rank {r} sent a {}-byte sample count (8 expected): ranks disagree on the protocol",
                    b.len()
                ))),
            })
            .collect::<Result<_>>()?;
        let shard = DpShard {
            comm: self.dp,
            offset: counts[..self.dp.rank()].iter().sum(),
            total: counts.iter().sum(),
            bucket_bytes: self.cfg.parallel.bucket_bytes(),
        };
        let reference = self.reference.as_ref();
        let warmup = self.cfg.critic.as_ref().is_some_and(|c| step < c.warmup_steps);
        let report = if warmup {
            // critic warm-up: the policy waits (its π_old is unknown, so the dump gets NaN)
            let tokens = train.iter().map(|s| s.response.len()).sum();
            UpdateReport { old_logp: vec![f32::NAN; tokens], ..UpdateReport::default() }
        } else {
            policy_update_dp(model, opt, reference, &train, self.loss, &plan, lr, &mut self.buf, &shard)?
        };
        self.buf.entropy_keep.clear();
        self.buf.fixed_old_logp.clear();
        if !self.critics.is_empty() {
            self.critic_update(&train, &mut extra)?;
        }
        let t_train = t1.elapsed().as_secs_f64();
        let mut off = 0;
        for (s, of) in train.iter().zip(&train_of) {
            let len = s.response.len();
            if let Some(k) = of {
                generated[*k].logp.copy_from_slice(&report.old_logp[off..off + len]);
            }
            off += len;
        }
        // counts over all ranks
        let valid_tokens: usize =
            train.iter().map(|s| s.advantages.iter().filter(|&&a| a != 0.0).count()).sum::<usize>();
        let train_tokens: usize = train.iter().map(|s| s.prompt.len() + s.response.len()).sum();
        let mut sums = [
            valid_tokens as f64,
            train_tokens as f64,
            candidates as f64,
            effective as f64,
            all_correct as f64,
            all_wrong as f64,
            prompts as f64,
            zero_std.0 as f64,
            zero_std.1 as f64,
        ];
        self.dp.all_reduce_sum_f64(&mut sums)?;
        let frac = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        // every rank's samples, in global (rank) order, for the metrics and the dump
        if self.dp.size() > 1 {
            let all = self.dp.all_gather_bytes(&wire::encode(&generated))?;
            generated = Vec::new();
            for bytes in &all {
                generated.extend(wire::decode(bytes)?);
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let n_samples = generated.len().max(1) as f64;
        let rewards: Vec<f64> = generated.iter().map(|s| s.data.reward as f64).collect();
        let reward_mean = rewards.iter().sum::<f64>() / n_samples;
        let reward_std = (rewards.iter().map(|&r| (r - reward_mean).powi(2)).sum::<f64>() / n_samples).sqrt();
        let lens: Vec<usize> = generated.iter().map(|s| s.data.response.len()).collect();
        let gen_tokens: usize = lens.iter().sum();
        let len_mean = gen_tokens as f64 / n_samples;
        let clipped = generated.iter().filter(|s| s.finish == Finish::Length).count() as f64 / n_samples;
        let st = &report.stats;
        let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        let mut metrics = serde_json::json!({
            "rl_step": step + 1, "policy_version": step, "reward_mean": reward_mean, "reward_std": reward_std,
            "solve_rate": reward_mean, "response_len_mean": len_mean, "response_len_max": lens.iter().max().copied().unwrap_or(0),
            "response_clip_ratio": clipped, "loss": mean(&report.losses), "clip_frac": st.clip_frac(),
            "approx_kl": st.approx_kl(), "ref_kl": st.ref_kl(), "entropy": st.entropy(),
            "grad_norm": mean(&report.grad_norms), "updates": report.losses.len(), "lr": lr,
            "skipped_updates": report.skipped_updates,
            "logprob_mismatch_abs_mean": st.mismatch_abs_mean(), "logprob_mismatch_abs_max": st.mismatch_abs_max,
            "trained_samples": shard.total, "valid_tokens": sums[0],
            "effective_sample_ratio": frac(sums[3], sums[2]), "all_correct_ratio": frac(sums[4], sums[6]),
            "all_wrong_ratio": frac(sums[5], sums[6]), "zero_std_frac": frac(sums[7], sums[8]), "prompts": sums[6],
            "gen_tokens_per_s": gen_tokens as f64 / t_gen.max(1e-9),
            "train_tokens_per_s": sums[1] * plan.epochs.max(1) as f64 / t_train.max(1e-9),
            "time_generate_s": t_gen, "time_train_s": t_train, "step_s": secs,
            "train_state_mib": self.state_bytes(model) as f64 / (1u64 << 20) as f64,
        });
        if let Some(m) = metrics.as_object_mut() {
            m.append(&mut extra);
        }
        Ok(StepOutput { metrics, samples: generated, reward_mean, response_len_mean: len_mean })
    }
}

/// Where the RL phase sits in the run.
pub struct Phase<'a> {
    pub cfg: &'a RunConfig,
    pub rl: &'a RlSection,
    pub loss: &'a LossConfig,
    pub task: &'a dyn Task,
    /// The run directory (`<out_dir>/<name>`).
    pub run_dir: &'a Path,
    /// Global step of the phase's start (the supervised steps before it): RL step k is global step offset + k.
    pub offset: u64,
    /// Tokenizer saved with every checkpoint.
    pub tokenizer: &'a Tokenizer,
}

/// Where a (possibly resumed) phase starts: RL steps already done and, when > 0, the eval before the first.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseStart {
    pub done: u64,
    pub before: Option<SolveRate>,
    /// Adaptive-sampling state of an `[attnrl]` phase.
    pub sampling: Option<crate::train::checkpoint::SamplingState>,
}

const REFERENCE_DIR: &str = "reference";

fn write_line(metrics: &mut dyn Write, line: &serde_json::Value) -> Result<()> {
    writeln!(metrics, "{line}").map_err(|e| Error::Invalid(format!("metrics.jsonl: {e}")))
}

fn eval_line(step: u64, r: &SolveRate) -> serde_json::Value {
    serde_json::json!({"rl_step": step, "eval_solve_rate": r.sampled, "eval_solve_rate_greedy": r.greedy})
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
    run_phase_with(model, opt, ph, start, grid, metrics, log, None)
}

/// Where a training rank's step samples come from when they are not generated in-process: the
/// disaggregated trainer ([`crate::train::async_rl`]) receives them from rollout ranks and
/// publishes each new policy version back.
pub(crate) trait SampleSource {
    /// The samples this rank trains on at `step` (its data-parallel share).
    fn sampled(&mut self, trainer: &mut RlTrainer, model: &Model, step: u64) -> Result<(Sampled, f64)>;
    /// Called after the update of `step`: the model now holds policy version `step + 1`.
    fn published(&mut self, model: &Model, step: u64) -> Result<()>;
}

/// [`run_phase`] with the step's samples taken from `source` when given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_phase_with(
    model: &mut Model,
    opt: &mut AdamW,
    ph: &Phase,
    start: PhaseStart,
    grid: &Grid,
    metrics: &mut dyn Write,
    log: &mut dyn Write,
    mut source: Option<&mut dyn SampleSource>,
) -> Result<(SolveRate, SolveRate)> {
    let (cfg, rl) = (ph.cfg, ph.rl);
    let (dp, root) = (grid.dp.as_ref(), grid.is_root());
    let tok = CharTokenizer::default();
    let progress = Progress::new(rl.steps, "rl");
    let ref_dir = ph.run_dir.join(REFERENCE_DIR);
    let reference = if ph.loss.kl_coef > 0.0 {
        if start.done == 0 {
            let full = model.gather(&model.params.data)?;
            if root {
                save_hf_dir(&ref_dir, model.full_config(), &full, &SaveOptions::default())?;
            }
            Some(model.clone())
        } else {
            let (mc, params) = load_hf_dir(&ref_dir)?;
            Some(Model::new(mc, params)?.shard(grid.tp.clone())?)
        }
    } else {
        None
    };
    let before = match start.before {
        Some(b) if start.done > 0 => b,
        _ => {
            let b = evaluate(model, cfg, ph.task, rl, &tok, 0, dp)?;
            write_line(metrics, &eval_line(0, &b))?;
            b
        }
    };
    progress.say(
        log,
        &format!(
            "rl eval before: solve rate greedy {:.1}%, sampled {:.1}%",
            100.0 * before.greedy,
            100.0 * before.sampled
        ),
    );
    if start.done > 0 {
        progress.say(log, &format!("rl: resumed after step {}", start.done));
    }
    let mut dump = if root { Some(crate::train::dump::Dump::open(ph, start.done)?) } else { None };
    let mut trainer = RlTrainer::new(cfg, rl, ph.loss, ph.task, model, reference).with_dp(dp);
    trainer.init_critics(model)?;
    if start.done > 0 && !trainer.critics.is_empty() {
        let dir = ph.run_dir.join("checkpoints").join(format!("step-{}", ph.offset + start.done));
        trainer.load_critics(&dir)?;
    }
    if let (Some(t), Some(s)) = (trainer.tree.as_mut(), start.sampling.filter(|_| start.done > 0)) {
        *t = tree::TreeState::restore(&s, rl.prompts_per_step);
        if cfg.attnrl.as_ref().is_some_and(|a| a.off_policy) {
            let dir = ph.run_dir.join("checkpoints").join(format!("step-{}", ph.offset + start.done));
            let path = dir.join(format!("pending-rank{}.json", dp.rank()));
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            t.pending = Some(serde_json::from_slice(&bytes).map_err(|e| Error::Config {
                file: path.clone(),
                key: "<json>".into(),
                msg: format!("not a pending AttnRL batch: {e}"),
            })?);
        }
    }
    let mut last = before;
    let step_timeout = std::time::Duration::from_secs_f64(cfg.parallel.step_timeout_s);
    let mut guard = crate::train::guard::NonFiniteGuard::new(cfg.train.max_nonfinite_steps);
    for step in start.done..rl.steps {
        let _armed = grid
            .watchdog
            .as_ref()
            .filter(|_| cfg.parallel.step_timeout_s > 0.0)
            .map(|w| w.watch_step(&format!("rl step {}", step + 1), step_timeout));
        crate::parallel::fault::maybe_inject(grid, ph.offset + step + 1)?;
        let out = match source.as_deref_mut() {
            None => trainer.step(model, opt, step)?,
            Some(src) => {
                let t0 = Instant::now();
                let (sampled, t_gen) = src.sampled(&mut trainer, model, step)?;
                let out = trainer.train_on(model, opt, step, sampled, t0, t_gen)?;
                src.published(model, step)?;
                out
            }
        };
        write_line(metrics, &out.metrics)?;
        let (skipped, loss, norm) = (&out.metrics["skipped_updates"], &out.metrics["loss"], &out.metrics["grad_norm"]);
        // (serde_json writes a non-finite number as null)
        let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        guard.record("rl", step + 1, skipped.as_u64().unwrap_or(0) as usize, num(loss), num(norm))?;
        if let Some(d) = dump.as_mut() {
            let version = out.metrics["policy_version"].as_u64().unwrap_or(step);
            d.append(step, version, &out.samples)?;
        }
        let m = &out.metrics;
        let secs = m["step_s"].as_f64().unwrap_or(0.0);
        progress.set(
            step + 1,
            format!(
                "reward {:.3}  len {:.1}  eval {:.1}%",
                out.reward_mean,
                out.response_len_mean,
                100.0 * last.sampled
            ),
        );
        if (step + 1) % rl.log_every.max(1) == 0 || step == 0 {
            progress.say(
                log,
                &format!(
                    "rl step {:>4}/{}  reward {:.3}  len {:.1}  kept {}/{}  clip {:.3}  {secs:.1}s (gen {:.1}s)",
                    step + 1,
                    rl.steps,
                    out.reward_mean,
                    out.response_len_mean,
                    m["trained_samples"],
                    out.samples.len(),
                    m["clip_frac"].as_f64().unwrap_or(0.0),
                    m["time_generate_s"].as_f64().unwrap_or(0.0),
                ),
            );
        }
        let final_step = step + 1 == rl.steps;
        if final_step || (rl.eval_every > 0 && (step + 1) % rl.eval_every == 0) {
            last = evaluate(model, cfg, ph.task, rl, &tok, step + 1, dp)?;
            progress.say(
                log,
                &format!(
                    "rl eval step {}: solve rate greedy {:.1}%, sampled {:.1}%",
                    step + 1,
                    100.0 * last.greedy,
                    100.0 * last.sampled
                ),
            );
            write_line(metrics, &eval_line(step + 1, &last))?;
        }
        let every = cfg.train.checkpoint_every.max(1);
        // a signal on any rank stops every rank here, checkpointed (not under [async]: its rollout
        // ranks do not take part in the trainer's collectives; a killed async run resumes from its
        // last periodic checkpoint)
        let preempted = source.is_none() && crate::train::preempt::agreed(grid.world.as_ref())?;
        if final_step || preempted || (step + 1) % every == 0 {
            metrics.flush().map_err(|e| Error::Invalid(format!("metrics.jsonl: {e}")))?;
            let state = TrainerState {
                step: ph.offset + step + 1,
                seed: cfg.run.seed,
                adam_t: opt.t,
                rl_eval_before: Some([before.sampled, before.greedy]),
                sampling: trainer.tree.as_ref().map(|t| t.save()),
            };
            // the off-policy pipeline's next batch, one file per data-parallel rank (gathered to root)
            let pending = trainer.tree.as_ref().and_then(|t| t.pending.as_ref());
            let json = match pending {
                Some(p) => serde_json::to_vec(p).map_err(|e| Error::Invalid(format!("pending batch: {e}")))?,
                None => Vec::new(),
            };
            let all =
                if cfg.attnrl.as_ref().is_some_and(|a| a.off_policy) { dp.all_gather_bytes(&json)? } else { vec![] };
            // the critics and the pending batch go into the checkpoint's folder before it is renamed
            // into place, under its manifest: a checkpoint has all of them or does not exist
            let extra = |dir: &Path| -> Result<()> {
                trainer.save_critics(dir)?;
                for (r, bytes) in all.iter().enumerate() {
                    let path = dir.join(format!("pending-rank{r}.json"));
                    std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
                }
                Ok(())
            };
            save_model_checkpoint(
                ph.run_dir,
                model,
                Some(ph.tokenizer),
                opt,
                &state,
                cfg.train.keep_checkpoints,
                root,
                &extra,
            )?;
        }
        if preempted {
            progress.finish();
            progress.say(log, &format!("preempted: checkpoint of RL step {} written", step + 1));
            return Err(Error::Preempted { step: ph.offset + step + 1 });
        }
    }
    progress.finish();
    Ok((before, last))
}
