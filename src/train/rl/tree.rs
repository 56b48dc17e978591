//! Tree sampling of the RL phase (AttnRL, ALGORITHMS.md §1–3): n initial responses per prompt →
//! steps and FCI from the attention statistics pass → which responses to branch (adaptive) →
//! branch points (ATB: earliest high-FCI steps; TreeRL baseline: highest-entropy tokens) → T
//! continuations from each prefix → tree values and node advantages → one training sequence per
//! leaf, zero-advantage questions dropped, and the next step's prompt count from the dynamic batch.
//!
//! Every continuation draws from its own RNG stream (seed, step, prompt id, sample index ≥ n), so
//! the trees do not depend on batch layout. A continuation is generated with the full token
//! budget and then cut to what the original response had left (prefix + continuation ≤
//! `max_new_tokens`): sampling is causal, so the cut equals stopping at the budget.

use super::rollouts::RolloutCtx;
use super::rollouts::{problem, response_reward, reward};
use super::{AttnTrace, Sample, StepSample};
use crate::attention::stats::{SeqStats, SeqSteps, StatsConfig};
use crate::attnrl::{
    atb_branch_points, keep_nonzero_advantage, question_fci, question_trees, response_step_bounds_from_texts,
    responses_to_branch, sequence_step_bounds, token_branch_points, AllCorrectFciFilter, AttnRlConfig, BranchBy,
    Continuation, DynamicBatch, ResponseTree, Source, SplitPoint,
};
use crate::error::{Error, Result};
use crate::model::micro_batch::MicroBatch;
use crate::model::{Model, Workspace};
use crate::rollout::{Completion, Finish};
use crate::tokenizer::TextCodec;
use crate::train::checkpoint::SamplingState;
use crate::train::engine::Engine;
use serde::{Deserialize, Serialize};

/// Adaptive-sampling state carried across steps (checkpointed as [`SamplingState`]).
#[derive(Debug, Clone)]
pub struct TreeState {
    pub next_problem: u64,
    pub batch: DynamicBatch,
    pub filter: AllCorrectFciFilter,
    /// Off-policy pipeline: the next batch's scored initial responses (checkpointed as JSON).
    pub pending: Option<PendingBatch>,
}

impl TreeState {
    /// A fresh phase with `prompts` prompts in its first step.
    pub fn new(prompts: usize) -> Self {
        TreeState {
            next_problem: 0,
            batch: DynamicBatch::new(prompts),
            filter: AllCorrectFciFilter::default(),
            pending: None,
        }
    }

    /// Restore from a checkpoint.
    pub fn restore(s: &SamplingState, prompts: usize) -> Self {
        let mut t = TreeState::new(if s.prompts > 0 { s.prompts } else { prompts });
        t.next_problem = s.next_problem;
        t.filter = AllCorrectFciFilter { mean: s.fci_mean, count: s.fci_count };
        t
    }

    /// What a checkpoint stores.
    pub fn save(&self) -> SamplingState {
        SamplingState {
            next_problem: self.next_problem,
            prompts: self.batch.prompts,
            fci_mean: self.filter.mean,
            fci_count: self.filter.count,
        }
    }
}

/// Response-relative step bounds of every response (separators from `[attnrl]`).
pub fn response_bounds(codec: &TextCodec, response: &[u32], separators: &[String]) -> Vec<usize> {
    let texts: Vec<String> = response.iter().map(|&t| codec.piece(t)).collect();
    response_step_bounds_from_texts(&texts, separators)
}

/// The step of each of `n` response tokens, from response-relative step bounds [0, e_1, …, n].
pub fn token_steps(bounds: &[usize], n: usize) -> Vec<u32> {
    let mut out = vec![0u32; n];
    for (j, w) in bounds.windows(2).enumerate() {
        out[w[0].min(n)..w[1].min(n)].fill(j as u32);
    }
    out
}

/// FCI per step (full-sequence steps, 0 = prompt) of each (prompt, response) under `model`, in
/// forwards of at most `micro`.
pub fn step_fci(
    engine: &mut Engine,
    model: &Model,
    ws: &mut Workspace,
    seqs: &[(&[u32], &[u32], Vec<usize>)],
    (delta, micro): (usize, MicroBatch),
) -> Result<Vec<SeqStats>> {
    let seqs: Vec<(Vec<u32>, SeqSteps)> = seqs
        .iter()
        .map(|(prompt, response, bounds)| {
            let seq: Vec<u32> = prompt.iter().chain(response.iter()).copied().collect();
            let steps = SeqSteps {
                bounds: sequence_step_bounds(prompt.len(), bounds),
                response_start: prompt.len(),
                end_of_thinking: None,
            };
            (seq, steps)
        })
        .collect();
    let cfg = StatsConfig { fci: true, delta, rhythm: false, ..StatsConfig::default() };
    engine.attention_stats_chunked(model, ws, &seqs, &cfg, micro)
}

/// One initial response and, after branching, its continuations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Initial {
    prompt_idx: usize,
    completion: Completion,
    reward: f32,
    bounds: Vec<usize>,
    fci: Vec<f32>,
    /// The off-policy pipeline's π_old of the response: its log-probs under the weights that
    /// generated it, computed with the FCI right after generation (empty elsewhere).
    #[serde(default)]
    old_logp: Vec<f32>,
}

/// What the tree phase produced for one step.
pub struct TreeBatch {
    /// Every generated sample (initial responses and continuations), for metrics and the dump.
    pub generated: Vec<StepSample>,
    /// Training sequences (one per leaf of each kept question's branched trees).
    pub train: Vec<Sample>,
    /// Questions whose training paths all had the same reward (dropped) and all questions.
    pub dropped_questions: usize,
    pub questions: usize,
    /// Branch points placed and those that came from the fill rule.
    pub branch_points: usize,
    pub filled_points: usize,
    /// Leaf sequences before the zero-advantage filter, and those with a non-zero advantage token.
    pub candidates: usize,
    pub effective: usize,
    /// Off-policy pipeline: π_old per token of `train` (concatenated; NaN = the current policy); empty otherwise.
    pub fixed_old_logp: Vec<f32>,
}

/// The `[attnrl]` sampler: its settings, its adaptive state and the statistics pass's scratch.
pub struct TreeSampler {
    pub ac: AttnRlConfig,
    pub state: TreeState,
    ws: Workspace,
}

impl TreeSampler {
    /// A fresh sampler for `model` with `prompts` questions in its first step.
    pub fn new(ac: &AttnRlConfig, model: &Model, prompts: usize) -> Self {
        TreeSampler { ac: ac.clone(), state: TreeState::new(prompts), ws: Workspace::new(&model.cfg, 0) }
    }

    /// Sample the step's trees: this data-parallel rank's share of the step's questions; the
    /// adaptive state (problem counter, FCI filter, dynamic batch) stays identical on every rank.
    pub fn sample(&mut self, ctx: &RolloutCtx, engine: &mut Engine, model: &Model, step: u64) -> Result<TreeBatch> {
        let max_new = ctx.rl.max_new_tokens;
        if !self.ac.off_policy {
            let (batch, requests) = next_batch(ctx, &self.ac, &mut self.state)?;
            let completions = ctx.generate(engine, model, &requests, step, max_new)?;
            let pending = self.score_initial(ctx, engine, model, step, batch, completions)?;
            let reqs: Vec<crate::rollout::Request> = pending.cont_requests.iter().map(|(_, _, r)| r.clone()).collect();
            let conts = ctx.generate(engine, model, &reqs, step, max_new)?;
            return grow_trees(ctx, &self.ac, &mut self.state, pending, conts, false);
        }
        // one-step off-policy (ALGORITHMS.md §4): batch m's initial responses were generated, scored and
        // branched at step m − 1 (step 0 bootstraps them); ONE generation call now produces batch m's
        // continuations and batch m + 1's initial responses under θ_m
        let pending = match self.state.pending.take() {
            Some(p) => p,
            None => {
                let (batch, requests) = next_batch(ctx, &self.ac, &mut self.state)?;
                let completions = ctx.generate(engine, model, &requests, step, max_new)?;
                self.score_initial(ctx, engine, model, step, batch, completions)?
            }
        };
        let mut reqs: Vec<crate::rollout::Request> = pending.cont_requests.iter().map(|(_, _, r)| r.clone()).collect();
        // the phase's last step has no next batch to train: its continuations alone (drawn as in
        // the shared call: each token's draw depends on its coordinates, not on the batch)
        if step + 1 >= ctx.rl.steps {
            let out = ctx.generate(engine, model, &reqs, step + 1, max_new)?;
            return grow_trees(ctx, &self.ac, &mut self.state, pending, out, true);
        }
        let (next, next_requests) = next_batch(ctx, &self.ac, &mut self.state)?;
        let n_cont = reqs.len();
        reqs.extend(next_requests);
        let mut out = ctx.generate(engine, model, &reqs, step + 1, max_new)?;
        let next_initial = out.split_off(n_cont);
        let tb = grow_trees(ctx, &self.ac, &mut self.state, pending, out, true)?;
        // FCI of batch m + 1 under θ_m, before the update
        self.state.pending = Some(self.score_initial(ctx, engine, model, step + 1, next, next_initial)?);
        Ok(tb)
    }
}

/// The questions of the next batch (this rank's share) and their initial-response requests.
fn next_batch(
    ctx: &RolloutCtx,
    ac: &AttnRlConfig,
    state: &mut TreeState,
) -> Result<(BatchQuestions, Vec<crate::rollout::Request>)> {
    let (tok, task) = (ctx.codec, ctx.task);
    let n = ac.initial_responses.max(1);
    let p_all = state.batch.prompts.max(1);
    // a running problem counter (the dynamic batch changes the count per step); this
    // data-parallel rank takes a contiguous share of the step's questions
    let dp = ctx.dp;
    let mine = crate::parallel::partition(p_all, dp.size(), dp.rank());
    let p = mine.len();
    let first = state.next_problem + mine.start as u64;
    state.next_problem += p_all as u64;
    let mut prompts = Vec::with_capacity(p);
    let mut requests = Vec::with_capacity(p * n);
    for i in 0..p as u64 {
        let id = first + i;
        let (ids, _) = problem(task, tok, crate::tasks::SPLIT_TRAIN, id)?;
        for s in 0..n as u32 {
            requests.push(crate::rollout::Request { prompt_id: id, sample_index: s, prompt: ids.clone() });
        }
        prompts.push(ids);
    }
    Ok((BatchQuestions { first, prompts }, requests))
}

/// Questions of one batch on this rank: ids `first..first + prompts.len()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BatchQuestions {
    first: u64,
    prompts: Vec<Vec<u32>>,
}

/// A batch's initial responses, rewarded, scored by FCI and with their branch points chosen: what
/// the continuations need. Carried to the next step (and checkpointed) by the off-policy pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingBatch {
    first: u64,
    prompts: Vec<Vec<u32>>,
    initial: Vec<Initial>,
    splits: Vec<Vec<usize>>,
    /// (initial response k, split index, request) of every continuation.
    cont_requests: Vec<(usize, usize, crate::rollout::Request)>,
    n_points: usize,
    n_filled: usize,
}

impl TreeSampler {
    /// Rewards, steps and FCI of a batch's initial responses, the all-correct filter, and the branch
    /// points with their continuation requests (`step` seeds the branching choices).
    fn score_initial(
        &mut self,
        ctx: &RolloutCtx,
        engine: &mut Engine,
        model: &Model,
        step: u64,
        batch: BatchQuestions,
        completions: Vec<Completion>,
    ) -> Result<PendingBatch> {
        let (ac, state, ws) = (&self.ac, &mut self.state, &mut self.ws);
        let rl = ctx.rl;
        let (tok, task) = (ctx.codec, ctx.task);
        let n = ac.initial_responses.max(1);
        let dp = ctx.dp;
        let BatchQuestions { first, prompts } = batch;
        let p = prompts.len();
        let problems: Vec<crate::tasks::Problem> = (0..p as u64)
            .map(|i| problem(task, tok, crate::tasks::SPLIT_TRAIN, first + i).map(|x| x.1))
            .collect::<Result<_>>()?;
        // 2. rewards, steps, FCI
        let mut initial: Vec<Initial> = completions
            .into_iter()
            .enumerate()
            .map(|(k, c)| {
                let reward = reward(task, tok, &problems[k / n], &c);
                let bounds = response_bounds(tok, &c.tokens, &ac.step_separators);
                Initial { prompt_idx: k / n, completion: c, reward, bounds, fci: Vec::new(), old_logp: Vec::new() }
            })
            .collect();
        // the off-policy pipeline's π_old under the generating weights (the model as it stands)
        if ac.off_policy {
            let samples: Vec<Sample> = initial
                .iter()
                .map(|r| {
                    let t = r.completion.tokens.len();
                    let prompt = prompts[r.prompt_idx].clone();
                    Sample {
                        prompt,
                        response: r.completion.tokens.clone(),
                        behav_logp: vec![0.0; t],
                        advantages: vec![0.0; t],
                        reward: 0.0,
                    }
                })
                .collect();
            let old = super::update::teacher_logprobs(engine, model, &samples, rl.micro(), ws)?;
            for (r, lp) in initial.iter_mut().zip(old) {
                r.old_logp = lp;
            }
        }
        let need_fci = ac.branch_by == BranchBy::Fci || ac.all_correct_fci_filter;
        if need_fci {
            let seqs: Vec<(&[u32], &[u32], Vec<usize>)> = initial
                .iter()
                .filter(|r| !r.completion.tokens.is_empty())
                .map(|r| (prompts[r.prompt_idx].as_slice(), r.completion.tokens.as_slice(), r.bounds.clone()))
                .collect();
            let stats = step_fci(engine, model, ws, &seqs, (ac.fci_step_gap, rl.micro()))?;
            let mut it = stats.into_iter();
            for r in initial.iter_mut().filter(|r| !r.completion.tokens.is_empty()) {
                // response steps only: drop pseudo-step 0 (the prompt)
                r.fci = it.next().map(|s| s.fci.get(1..).map(<[f32]>::to_vec).unwrap_or_default()).unwrap_or_default();
            }
        }
        // 3. which responses to branch: the all-correct FCI filter first (updated with this batch)
        let correct: Vec<Vec<bool>> =
            (0..p).map(|q| initial[q * n..(q + 1) * n].iter().map(|r| r.reward >= 1.0).collect()).collect();
        let all_correct: Vec<usize> = (0..p).filter(|&q| correct[q].iter().all(|&c| c)).collect();
        let mut kept_all_correct = vec![!ac.all_correct_fci_filter; p];
        if ac.all_correct_fci_filter {
            let fcis: Vec<f64> = all_correct
                .iter()
                .map(|&q| {
                    let scores: Vec<&[f32]> = initial[q * n..(q + 1) * n].iter().map(|r| r.fci.as_slice()).collect();
                    question_fci(&scores)
                })
                .collect::<Result<_>>()?;
            // the running mean sees every rank's all-correct questions in question order, as one rank would
            let (global, offset) =
                crate::parallel::comm::all_gather_in_rank_order(dp, &fcis, "tree sampling all-gather")?;
            let keep = state.filter.update_and_filter(&global)?;
            for (&q, &k) in all_correct.iter().zip(&keep[offset..offset + fcis.len()]) {
                kept_all_correct[q] = k;
            }
        }
        // 4. branch points and continuation requests
        let max_len = rl.max_new_tokens;
        let min_dist = ac.min_branch_distance_tokens(max_len);
        let (nb, nt) = (ac.branch_points, ac.continuations);
        let mut splits: Vec<Vec<usize>> = vec![Vec::new(); initial.len()];
        let (mut n_points, mut n_filled) = (0, 0);
        let mut cont_requests = Vec::new();
        for q in 0..p {
            let prompt_id = first + q as u64;
            let branch = responses_to_branch(
                &correct[q],
                ac.tree_rounding,
                kept_all_correct[q],
                ctx.cfg.run.seed,
                step,
                prompt_id,
            );
            for r in branch {
                let k = q * n + r;
                let resp = &initial[k];
                if resp.completion.tokens.len() < 2 {
                    continue;
                }
                let choice = match ac.branch_by {
                    BranchBy::Fci => {
                        atb_branch_points(&resp.bounds, &resp.fci, ac.rho, nb, min_dist, ac.distance_rule)?
                    }
                    BranchBy::Entropy => {
                        token_branch_points(&resp.completion.entropies, nb, min_dist, ac.distance_rule)?
                    }
                    BranchBy::NegLogprob => {
                        let nl: Vec<f32> = resp.completion.logprobs.iter().map(|l| -l).collect();
                        token_branch_points(&nl, nb, min_dist, ac.distance_rule)?
                    }
                };
                n_points += choice.points.len();
                n_filled += choice.filled;
                for (si, &at) in choice.points.iter().enumerate() {
                    let mut prefix = prompts[q].clone();
                    prefix.extend_from_slice(&resp.completion.tokens[..at]);
                    for c in 0..nt {
                        let sample_index = (n + (r * nb + si) * nt + c) as u32;
                        cont_requests.push((
                            k,
                            si,
                            crate::rollout::Request { prompt_id, sample_index, prompt: prefix.clone() },
                        ));
                    }
                }
                splits[k] = choice.points.clone();
            }
        }
        Ok(PendingBatch { first, prompts, initial, splits, cont_requests, n_points, n_filled })
    }
}

/// Continuations in, trees out: node advantages, one training sequence per leaf, the
/// zero-advantage filter and the dynamic batch. With `fixed_old`, original-response tokens keep
/// the log-probs they were generated with as π_old (the off-policy pipeline's θ_{m−1}).
fn grow_trees(
    ctx: &RolloutCtx,
    ac: &AttnRlConfig,
    state: &mut TreeState,
    pending: PendingBatch,
    mut conts: Vec<Completion>,
    fixed_old: bool,
) -> Result<TreeBatch> {
    let rl = ctx.rl;
    let (tok, task) = (ctx.codec, ctx.task);
    let n = ac.initial_responses.max(1);
    let dp = ctx.dp;
    let max_len = rl.max_new_tokens;
    let PendingBatch { first, prompts, initial, splits, cont_requests, n_points, n_filled } = pending;
    let p = prompts.len();
    let problems: Vec<crate::tasks::Problem> = (0..p as u64)
        .map(|i| problem(task, tok, crate::tasks::SPLIT_TRAIN, first + i).map(|x| x.1))
        .collect::<Result<_>>()?;
    // cut each continuation to the budget its prefix left
    for ((k, si, _), c) in cont_requests.iter().zip(conts.iter_mut()) {
        let budget = max_len.saturating_sub(splits[*k][*si]);
        if c.tokens.len() > budget {
            c.tokens.truncate(budget);
            c.logprobs.truncate(budget);
            c.entropies.truncate(budget);
            c.finish = Finish::Length;
        }
    }
    // a continuation completes its original response: the task grades the prefix and the
    // continuation together (ALGORITHMS.md §2: a leaf's reward is its whole response's)
    let cont_rewards: Vec<f32> = cont_requests
        .iter()
        .zip(&conts)
        .map(|((k, si, _), c)| {
            let prefix = &initial[*k].completion.tokens[..splits[*k][*si]];
            response_reward(task, tok, &problems[initial[*k].prompt_idx], &[prefix, &c.tokens])
        })
        .collect();
    // 5. trees, advantages, leaf sequences; zero-advantage filter per question
    let mut per_resp: Vec<Vec<Vec<usize>>> = splits.iter().map(|s| vec![Vec::new(); s.len()]).collect();
    for (j, (k, si, _)) in cont_requests.iter().enumerate() {
        per_resp[*k][*si].push(j);
    }
    let mut train = Vec::new();
    let mut old_logp = Vec::new();
    let mut seg_advantages = Vec::new();
    let (mut dropped, mut candidates, mut effective) = (0, 0, 0);
    for (q, prompt) in prompts.iter().enumerate() {
        let trees: Vec<ResponseTree> = (q * n..(q + 1) * n)
            .map(|k| ResponseTree {
                len: initial[k].completion.tokens.len(),
                reward: initial[k].reward,
                splits: splits[k]
                    .iter()
                    .zip(&per_resp[k])
                    .map(|(&at, js)| SplitPoint {
                        at,
                        continuations: js
                            .iter()
                            .map(|&j| Continuation { len: conts[j].tokens.len(), reward: cont_rewards[j] })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        let qt = question_trees(&trees)?;
        // the node advantages, onto the generated samples whose tokens each segment covers
        for (ti, seq) in &qt.sequences {
            let k = q * n + ti;
            for seg in &seq.segments {
                let g = match seg.source {
                    Source::Response => k,
                    Source::Continuation { split, index } => initial.len() + per_resp[k][split][index],
                };
                seg_advantages.push((g, seg.start..seg.end, seg.advantage));
            }
        }
        candidates += qt.sequences.len();
        effective += qt.sequences.iter().filter(|(_, s)| s.segments.iter().any(|g| g.advantage != 0.0)).count();
        let leaf_rewards: Vec<f32> = qt.sequences.iter().map(|(_, s)| s.reward).collect();
        if ac.zero_advantage_filter && !keep_nonzero_advantage(&leaf_rewards) {
            dropped += 1;
            continue;
        }
        for (ti, seq) in &qt.sequences {
            let k = q * n + ti;
            let (mut response, mut behav) = (Vec::new(), Vec::new());
            for seg in &seq.segments {
                let (toks, lps) = match seg.source {
                    Source::Response => (&initial[k].completion.tokens, &initial[k].completion.logprobs),
                    Source::Continuation { split, index } => {
                        let j = per_resp[k][split][index];
                        (&conts[j].tokens, &conts[j].logprobs)
                    }
                };
                response.extend_from_slice(&toks[seg.start..seg.end]);
                behav.extend_from_slice(&lps[seg.start..seg.end]);
                if fixed_old {
                    // π_old: θ_{m−1}'s log-probs for the original response (computed when it was
                    // scored), the current policy (NaN) for continuations generated by θ_m
                    match seg.source {
                        Source::Response => {
                            // (a pending batch checkpointed before π_old was computed so: the
                            // sampler's log-probs, as then)
                            let theta = &initial[k].old_logp;
                            let theta = if theta.is_empty() { lps } else { theta };
                            old_logp.extend_from_slice(theta.get(seg.start..seg.end).ok_or_else(|| {
                                Error::shape("off-policy trees", "an initial response's π_old is too short")
                            })?)
                        }
                        Source::Continuation { .. } => old_logp.resize(old_logp.len() + seg.end - seg.start, f32::NAN),
                    }
                }
            }
            if response.is_empty() {
                continue;
            }
            train.push(Sample {
                prompt: prompt.clone(),
                advantages: seq.token_advantages(),
                response,
                behav_logp: behav,
                reward: seq.reward,
            });
        }
    }
    // 6. dynamic batch for the next step
    if ac.dynamic_batch {
        let target = ac.target_sequences(rl.prompts_per_step);
        let max = ac.dynamic_batch_max(rl.prompts_per_step);
        let mut kept = [train.len() as f64];
        dp.all_reduce_sum_f64(&mut kept)?;
        state.batch.update(target, kept[0] as usize, ac.dynamic_batch_lambda, max);
    }
    // every generated sample, for metrics and the dump (advantage 0 where it is not a leaf's own)
    let mut generated: Vec<StepSample> = Vec::with_capacity(initial.len() + conts.len());
    let to_sample = |prompt: Vec<u32>, c: &Completion, reward: f32| StepSample {
        prompt_id: c.prompt_id,
        sample_index: c.sample_index,
        logp: vec![f32::NAN; c.tokens.len()],
        finish: c.finish,
        trace: AttnTrace {
            step_index: token_steps(&response_bounds(tok, &c.tokens, &ac.step_separators), c.tokens.len()),
            ..AttnTrace::default()
        },
        data: Sample {
            prompt,
            advantages: vec![0.0; c.tokens.len()],
            response: c.tokens.clone(),
            behav_logp: c.logprobs.clone(),
            reward,
        },
        policy_version: None,
    };
    for r in &initial {
        let mut g = to_sample(prompts[r.prompt_idx].clone(), &r.completion, r.reward);
        if !r.fci.is_empty() {
            g.trace.fci =
                g.trace.step_index.iter().map(|&j| r.fci.get(j as usize).copied().unwrap_or(f32::NAN)).collect();
        }
        generated.push(g);
    }
    for (((k, si, req), c), &rw) in cont_requests.iter().zip(&conts).zip(&cont_rewards) {
        let mut g = to_sample(req.prompt.clone(), c, rw);
        g.trace.branch = Some((initial[*k].completion.sample_index, splits[*k][*si] as u32));
        generated.push(g);
    }
    for (g, r, a) in seg_advantages {
        if let Some(adv) = generated.get_mut(g).and_then(|s| s.data.advantages.get_mut(r)) {
            adv.fill(a);
        }
    }
    Ok(TreeBatch {
        fixed_old_logp: old_logp,
        generated,
        train,
        dropped_questions: dropped,
        questions: p,
        branch_points: n_points,
        filled_points: n_filled,
        candidates,
        effective,
    })
}
