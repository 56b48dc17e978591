//! Plays a batch of multi-turn environments against the model.
//!
//! Every trajectory runs on its own thread: reset, then per turn ask the model for an action and
//! step the environment, retrying a failed call up to `max_retries` times. The model is served by
//! the calling thread, which batches the waiting requests into one `generate` call:
//! - **env-level async** (`mode = "async"`): it serves whatever is waiting, so a fast environment
//!   never waits for a slow one;
//! - **sync**: it waits until every live trajectory has asked, a barrier at every turn (the
//!   baseline of ROLL's env-level async).
//!
//! **Redundancy.** Of `games.len()` groups only `keep` are needed, and each group runs
//! `n + extra` trajectories of which the first `n` to finish count. A group whose failures leave
//! fewer than `n` possible trajectories fails; once `keep` groups are complete, every other
//! group is aborted (its threads stop at their next call). No sample is lost or counted twice:
//! a kept group holds exactly `n` distinct finished trajectories, checked before returning.
//!
//! Generation is seeded per (step, game, sample, turn), so a trajectory's tokens do not depend on
//! the batch it was generated in: sync and async runs of one config play the same games.

use crate::env::guess::GuessGame;
use crate::env::latency::{CallKey, Latent};
use crate::env::{Env, EnvConfig, EnvFailure, EnvMode};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::rollout::{generate, Completion, GenerateConfig, Request};
use crate::tokenizer::char::{CharTokenizer, BOS_ID, EOS_ID};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// One policy turn: the conversation so far and the model's response.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRecord {
    pub prompt: Vec<u32>,
    pub completion: Completion,
}

/// A finished episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Trajectory {
    pub game: u64,
    pub sample: u32,
    pub turns: Vec<TurnRecord>,
    pub reward: f32,
}

/// The outcome of one batch of environments.
#[derive(Debug, Clone, Default)]
pub struct EnvRollout {
    /// Kept groups in game order; each holds exactly `n` trajectories in sample order.
    pub groups: Vec<Vec<Trajectory>>,
    /// Groups that failed (too many trajectories failed after their retries).
    pub failed_groups: usize,
    /// Groups stopped because enough others had finished (redundancy).
    pub aborted_groups: usize,
    /// Trajectories that failed after their retries while their group was still open (a failure
    /// after its group closed changes nothing, and whether it happens is a matter of timing).
    pub failed_trajectories: usize,
    /// Extra trajectories of kept groups stopped or discarded once `n` had finished.
    pub surplus_trajectories: usize,
    /// Failed calls that were retried, in the kept trajectories (the ones trained on). Without
    /// redundancy this is a function of the seed, like everything trained.
    pub retries: usize,
    /// `generate` calls and the requests they served.
    pub generate_calls: usize,
    pub requests: usize,
    pub wall_s: f64,
}

/// What to play with.
pub struct Play<'a> {
    pub model: &'a Model,
    pub tok: &'a CharTokenizer,
    pub env: &'a EnvConfig,
    /// Generation settings (its `step` and `seed` key every request's stream).
    pub gen: GenerateConfig,
    /// Seed of the games and of the latency/failure draws.
    pub seed: u64,
    /// Sleep the drawn latencies and inject failures (false for evaluation).
    pub latent: bool,
    pub mode: EnvMode,
}

enum Outcome {
    Finished(Trajectory),
    Failed,
    Aborted,
}

#[derive(Default)]
struct Group {
    finished: Vec<Trajectory>,
    failed: usize,
    /// Retried calls of the trajectories in `finished`.
    retries: usize,
    closed: bool,
    kept: bool,
}

struct Board {
    groups: Vec<Group>,
    kept: usize,
    keep: usize,
    n: usize,
    started: usize,
    surplus: usize,
}

type Ask = (Request, mpsc::Sender<Result<Completion>>);

/// Play `games` (groups) with `n + extra` trajectories each; keep the first `keep` groups that
/// complete with `n` trajectories.
pub fn rollout(p: &Play, games: &[u64], keep: usize, n: u32, extra: u32) -> Result<EnvRollout> {
    let t0 = Instant::now();
    let per_group = (n + extra) as usize;
    let board = Mutex::new(Board {
        groups: (0..games.len()).map(|_| Group::default()).collect(),
        kept: 0,
        keep: keep.min(games.len()),
        n: n as usize,
        started: per_group,
        surplus: 0,
    });
    let abort: Vec<AtomicBool> = (0..games.len()).map(|_| AtomicBool::new(false)).collect();
    let live = AtomicUsize::new(games.len() * per_group);
    let (ask, asks) = mpsc::channel::<Ask>();
    let mut out = EnvRollout::default();
    let results = std::thread::scope(|scope| -> Result<Vec<Result<()>>> {
        let mut handles = Vec::new();
        for (gi, &game) in games.iter().enumerate() {
            for s in 0..n + extra {
                let (ask, board, abort, live) = (ask.clone(), &board, &abort, &live);
                handles.push(scope.spawn(move || -> Result<()> {
                    let mut retries = 0;
                    let res = play_one(p, game, s, &abort[gi], &ask, &mut retries);
                    // settle before leaving the live count, so the server's barrier sees it
                    let settled = res.map(|o| settle(board, abort, gi, o, retries));
                    live.fetch_sub(1, Ordering::SeqCst);
                    settled
                }));
            }
        }
        drop(ask);
        serve(p, &asks, &live, &mut out)?;
        Ok(handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Invalid("env: a trajectory thread panicked".into()))))
            .collect())
    })?;
    for r in results {
        r?;
    }
    let board = board.into_inner().map_err(|_| Error::Invalid("env: the group board was poisoned".into()))?;
    for (g, group) in board.groups.into_iter().enumerate() {
        out.failed_trajectories += group.failed;
        if group.kept {
            out.retries += group.retries;
            let mut t = group.finished;
            t.sort_by_key(|t| t.sample);
            // the invariant the trainer relies on: n distinct finished trajectories of this game
            let distinct = t.windows(2).all(|w| w[0].sample != w[1].sample);
            if t.len() != n as usize || !distinct || t.iter().any(|x| x.game != games[g]) {
                return Err(Error::Invalid(format!("env: kept group of game {} is malformed", games[g])));
            }
            out.groups.push(t);
        } else if group.failed > extra as usize {
            out.failed_groups += 1;
        } else {
            out.aborted_groups += 1;
        }
    }
    out.surplus_trajectories = board.surplus;
    out.groups.sort_by_key(|g| g[0].game);
    out.wall_s = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// Record a trajectory's outcome (and the calls it retried); close groups that are complete or can
/// no longer complete. A closed group records nothing more, so what it holds does not depend on
/// how fast its other trajectories noticed.
fn settle(board: &Mutex<Board>, abort: &[AtomicBool], g: usize, outcome: Outcome, retries: usize) {
    let Ok(mut b) = board.lock() else { return };
    let (n, started) = (b.n, b.started);
    let abort_all = {
        let group = &mut b.groups[g];
        match outcome {
            Outcome::Aborted => return,
            Outcome::Failed => {
                if group.closed {
                    return;
                }
                group.failed += 1;
                if started - group.failed < n {
                    group.closed = true;
                    abort[g].store(true, Ordering::SeqCst);
                }
                false
            }
            Outcome::Finished(t) => {
                if group.closed {
                    b.surplus += 1;
                    return;
                }
                group.finished.push(t);
                group.retries += retries;
                if group.finished.len() < n {
                    return;
                }
                group.closed = true;
                abort[g].store(true, Ordering::SeqCst);
                if b.kept < b.keep {
                    b.groups[g].kept = true;
                    b.kept += 1;
                }
                b.kept == b.keep
            }
        }
    };
    if abort_all {
        for a in abort {
            a.store(true, Ordering::SeqCst);
        }
    }
}

/// Serve generation requests until every trajectory thread is gone.
fn serve(p: &Play, asks: &mpsc::Receiver<Ask>, live: &AtomicUsize, out: &mut EnvRollout) -> Result<()> {
    let mut pending: Vec<Ask> = Vec::new();
    loop {
        match asks.recv_timeout(Duration::from_millis(1)) {
            Ok(a) => {
                pending.push(a);
                pending.extend(asks.try_iter());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if pending.is_empty() {
                    return Ok(());
                }
            }
        }
        let ready = match p.mode {
            EnvMode::Async => !pending.is_empty(),
            // the barrier: every live trajectory is waiting for its action
            EnvMode::Sync => !pending.is_empty() && pending.len() >= live.load(Ordering::SeqCst),
        };
        if !ready {
            continue;
        }
        let batch = std::mem::take(&mut pending);
        let requests: Vec<Request> = batch.iter().map(|(r, _)| r.clone()).collect();
        out.generate_calls += 1;
        out.requests += requests.len();
        match generate(p.model, &requests, &p.gen) {
            Ok(done) => {
                for ((_, reply), c) in batch.into_iter().zip(done) {
                    let _ = reply.send(Ok(c));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(Error::Invalid(format!("env: generation failed: {msg}"))));
                }
                return Err(e);
            }
        }
    }
}

/// Call `f` on the environment, retrying failures; `None` when every attempt failed.
fn with_retries<E: Env, T>(
    env: &mut Latent<E>,
    max_retries: u32,
    retries: &mut usize,
    mut f: impl FnMut(&mut Latent<E>) -> std::result::Result<T, EnvFailure>,
) -> Option<T> {
    for attempt in 0..=max_retries {
        env.key.attempt = attempt;
        match f(env) {
            Ok(v) => return Some(v),
            Err(_) if attempt < max_retries => {
                *retries += 1;
            }
            Err(_) => {}
        }
    }
    None
}

/// One trajectory: reset, then turns until done, out of turns, out of context or aborted.
fn play_one(
    p: &Play,
    game: u64,
    sample: u32,
    abort: &AtomicBool,
    ask: &mpsc::Sender<Ask>,
    retries: &mut usize,
) -> Result<Outcome> {
    let ec = p.env;
    let model = if p.latent { ec.latency() } else { Default::default() };
    let inner = GuessGame::new(p.seed, game, ec.low, ec.high, ec.max_turns);
    let key = CallKey { seed: p.seed, game, sample, call: 0, attempt: 0 };
    let mut env = Latent { inner, model, key, sleep: p.latent };
    let Some(first) = with_retries(&mut env, ec.max_retries, retries, |e| e.reset()) else {
        return Ok(Outcome::Failed);
    };
    let mut history = vec![BOS_ID];
    history.extend(p.tok.encode(&first)?);
    let mut turns = Vec::new();
    let max_pos = p.model.cfg.max_position_embeddings;
    for turn in 0..ec.max_turns {
        if abort.load(Ordering::SeqCst) {
            return Ok(Outcome::Aborted);
        }
        if history.len() + p.gen.sampling.max_new_tokens >= max_pos {
            // out of context: the episode ends unrewarded
            return Ok(Outcome::Finished(Trajectory { game, sample, turns, reward: 0.0 }));
        }
        let (reply, answer) = mpsc::channel();
        let prompt = history.clone();
        let req = Request { prompt_id: game, sample_index: sample * 256 + turn, prompt: prompt.clone() };
        ask.send((req, reply)).map_err(|_| Error::Invalid("env: the model server stopped".into()))?;
        let completion = answer.recv().map_err(|_| Error::Invalid("env: the model server stopped".into()))??;
        let text: Vec<u32> = completion.tokens.iter().copied().filter(|&t| t != EOS_ID).collect();
        let action = p.tok.decode(&text);
        if abort.load(Ordering::SeqCst) {
            return Ok(Outcome::Aborted);
        }
        env.key.call = turn + 1;
        let Some(t) = with_retries(&mut env, ec.max_retries, retries, |e| e.step(&action)) else {
            return Ok(Outcome::Failed);
        };
        history.extend_from_slice(&completion.tokens);
        turns.push(TurnRecord { prompt, completion });
        if t.done {
            return Ok(Outcome::Finished(Trajectory { game, sample, turns, reward: t.reward }));
        }
        history.extend(p.tok.encode(&t.observation)?);
    }
    Ok(Outcome::Finished(Trajectory { game, sample, turns, reward: 0.0 }))
}
