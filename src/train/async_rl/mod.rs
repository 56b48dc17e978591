//! Disaggregated asynchronous RL (ROLL Flash's async ratio, ALGORITHMS.md §8) under MPI.
//!
//! `[async] rollout_ranks = R` splits the world: the last R ranks only generate, the others
//! train (data parallel among themselves; world rank 0 leads them and writes the files).
//! Rollout rank r generates its contiguous share of every step's prompts, exactly as a
//! data-parallel rank of the synchronous trainer would, and sends the finished groups (tokens,
//! behaviour log-probs, rewards, advantages) with the policy version and a checksum of the
//! weights it used; with `[attnrl]`, its trees' leaves and the tree sampler's state after the
//! batch (kept by the trainer's checkpoints, handed back to the rollout ranks by a resume). The
//! training leader receives batch s, checks it, hands each training rank its share, updates, and
//! sends policy version s + 1 to every rollout rank.
//!
//! **Staleness bound.** With lag k = ⌈α⌉, batch b is generated with policy version
//! max(first, b − k): rollout runs ahead of training by up to k batches while the trainer
//! works, and every sample of the batch trained at step s started at version ≥ s − k (checked on
//! every batch; a violation is an error). Fixing the version per batch, rather than taking
//! whichever samples finish first, keeps runs deterministic: the same seed gives the same
//! weights for any number of rollout or training ranks, and α = 0 is exactly the synchronous
//! trainer (tests/mpi/). Nothing is ever too old to train on, so no prompt is aborted. Each
//! checkpoint keeps the older versions the batches after it need (`history.rs`), so a stopped and
//! resumed run ends as the uninterrupted one; a preemption halts the rollout ranks (`halt`).
//!
//! `mode = "continuous"` and `replicate = true` stream instead (`stream.rs`): one
//! continuous-batching loop per rollout rank across batches, a `Piece` per finished group share,
//! assembled by the leader in batch order (`pieces.rs`, `leader.rs`); the continuous mode's weight
//! installs are recorded for `--replay` (`schedule.rs`). docs/async.md compares the modes.
//!
//! Messages are point-to-point on two duplicates of the world communicator (batches, weights)
//! and one of the training ranks' (the leader's step shares); each rollout rank receives weights
//! on a thread, so a publishing trainer never waits for generation, and sends batches from
//! another, so generation never waits for the trainer. Weights and step shares travel along a
//! relay (`parallel::relay`): the leader sends one copy, each receiver forwards its chunks to the
//! next as they arrive, so publishing costs the leader the same for 2 or 200 rollout ranks; the
//! leader publishes from a thread (`Publisher`), so the trainer does not wait for the transfer.

use crate::config::RlPlan;
use crate::error::{Error, Result};
use crate::model::{Model, Workspace};
use crate::parallel::{Comm, Grid, Relay, TpGroup};
use crate::train::rl::rhythm::shape_rollouts;
use crate::train::rl::wire::{merge_rollouts, share_of};
use crate::train::rl::{
    run_phase_with, AsyncNotes, Phase, PhaseIo, PhaseStart, RlTrainer, Rollouts, SampleSource, Sampler, Sampling,
    SolveRate,
};
use crate::train::AdamW;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

pub use crate::config::{AsyncConfig, RolloutMode};

mod history;
mod leader;
mod messages;
mod pieces;
mod schedule;
mod stream;
use leader::StreamLeader;
use messages::{
    decode_batch, decode_share, encode_batch, encode_share, halt_message, halted, load_weights, weights_checksum,
    weights_message, BatchMessage,
};
pub use messages::{decode_weights, WeightsMessage};
pub use pieces::batch_version;
use pieces::Assembler;

/// Run the RL phase of an `[async]` config on this rank (every rank of the world calls it).
pub fn run_phase(
    model: &mut Model,
    opt: &mut AdamW,
    ph: &Phase,
    start: PhaseStart,
    grid: &Grid,
    metrics: &mut dyn Write,
    log: &mut dyn Write,
) -> Result<(SolveRate, SolveRate)> {
    let ac = ph.plan.async_cfg().ok_or_else(|| Error::Invalid("async phase without [async]".into()))?;
    let world = grid.world.as_ref();
    let (size, rank, r) = (world.size(), world.rank(), ac.rollout_ranks);
    if r >= size {
        return Err(Error::Invalid(format!(
            "async.rollout_ranks = {r} leaves no training rank in a world of {size} (start {} or more ranks: mpirun -np, srun, arbor launch --nproc)",
            r + 1
        )));
    }
    let first_rollout = size - r;
    let is_rollout = rank >= first_rollout;
    // collectives over the whole world, in the same order on every rank
    let role = world.split(usize::from(is_rollout), rank)?;
    let batches = world.split(0, rank)?;
    let weights = world.split(0, rank)?;
    // the leader publishes along a relay of the rollout ranks (each forwards to the next)
    let members: Vec<usize> = std::iter::once(0).chain(first_rollout..size).collect();
    let relay = Relay::new(&members, rank);
    let lag = ac.lag();
    // a batch-mode resume at α ≥ 1: the older versions its first batches need, and the phase's
    // first version (history.rs); without them batch versions count from the resumed step
    let batch_mode = ac.mode == RolloutMode::Batch;
    let resumed = match (&start.from, start.done > 0 && batch_mode) {
        (Some(ck), true) => history::read(ck, start.done, lag, model.params.data.len())?,
        _ => None,
    };
    let first = resumed.as_ref().map_or(start.done, |h| h.first);
    if is_rollout {
        let installs = match (ac.mode, &ac.replay) {
            _ if !ac.streams() => None,
            (RolloutMode::Batch, _) => Some(stream::Installs::Locked),
            (RolloutMode::Continuous, None) => Some(stream::Installs::Live),
            (RolloutMode::Continuous, Some(path)) => Some(stream::Installs::Replay(schedule::read(path, rank)?)),
        };
        let comms = RolloutComms { world_rank: rank, role, batches, weights: (weights, relay?) };
        let older = resumed.map(|h| h.msgs).unwrap_or_default();
        rollout_loop(model, ph, (start.done, first, start.sampling), (comms, older), installs)?;
        let none = SolveRate { greedy: 0.0, sampled: 0.0, pass: None };
        return Ok((none, none));
    }
    let dp = role.split(0, role.rank())?;
    let shares = role.split(0, role.rank())?;
    let shares = (Relay::new(&(0..shares.size()).collect::<Vec<_>>(), shares.rank())?, shares);
    let train_grid = Grid { world: role, dp, tp: TpGroup::single(), watchdog: grid.watchdog.clone() };
    let first_sum = weights_checksum(model);
    // the leader keeps what later checkpoints need (batch mode at α > 0; a resume's older versions first)
    let mut history = (batch_mode && lag > 0 && train_grid.is_root()).then(|| history::History::new(first, lag));
    let mut published = Vec::new();
    if let Some(r) = resumed {
        for (v, msg) in r.msgs {
            published.push((v, messages::u64_at(&msg, 8, "weights message", "checksum")?));
            if let Some(h) = history.as_mut() {
                h.push(v, msg);
            }
        }
    }
    published.push((start.done, first_sum));
    if let Some(h) = history.as_mut() {
        h.push(start.done, weights_message(model, start.done).0);
    }
    // the leader's end of the weights channel goes to its publishing thread
    let weights = match relay.ok().filter(|_| rank == 0) {
        Some(relay) => Weights::Publisher(Publisher::start(weights, relay)?),
        None => Weights::Idle(weights),
    };
    let mut source = Received {
        batches,
        weights,
        rollout: (first_rollout..size).collect(),
        train: train_grid.world.as_ref(),
        shares,
        lag,
        first,
        published,
        history,
        per_prompt: ph.rl.samples_per_prompt as usize,
        steps: ph.rl.steps,
        stream: None,
    };
    if ac.streams() && train_grid.is_root() {
        source.stream = Some(stream_leader(model, ph, ac, &source.rollout, (start.done, first))?);
    }
    // no step left (a resume of a finished run, or rl.steps = 0): no version is ever published,
    // whose last publication tells the rollout ranks to stop, so they are told now
    if start.done >= ph.rl.steps && train_grid.is_root() {
        source.publish(Vec::new())?;
    }
    if train_grid.is_root() {
        let _ = writeln!(
            log,
            "async: {} training rank(s) + {r} rollout rank(s), α = {} (batches generated with policy version step − {lag})",
            first_rollout, ac.alpha
        );
    }
    // the rollout ranks shape the batches ([rhythm]); the trainer takes them as they come
    let plan = RlPlan { shaping: None, ..ph.plan.clone() };
    let ph = Phase { plan: &plan, ..*ph };
    let mut io = PhaseIo { metrics, log, source: Some(&mut source) };
    let res = run_phase_with(model, opt, &ph, start, &train_grid, &mut io);
    // every publication out (the last tells the rollout ranks to stop) before the comms go
    let flushed = match &mut source.weights {
        Weights::Publisher(p) => p.finish(),
        Weights::Idle(_) => Ok(()),
    };
    let res = res.and_then(|r| flushed.map(|()| r));
    // the train group's communicators go before the world's
    drop(train_grid);
    res
}

/// The leader's assembly of streamed pieces; in continuous mode (not replaying) it records the
/// install schedule in the run directory.
fn stream_leader<'g>(
    model: &Model,
    ph: &Phase<'g>,
    ac: &AsyncConfig,
    rollout: &[usize],
    (done, first): (u64, u64),
) -> Result<StreamLeader<'g>> {
    let rl = ph.rl;
    let n = rl.samples_per_prompt as usize;
    let assembler =
        Assembler::new(rollout.to_vec(), rl.prompts_per_step, n, ac.replicate, model.cfg.vocab_size, done..rl.steps);
    let schedule: Option<Box<dyn Write>> = if ac.mode == RolloutMode::Continuous && ac.replay.is_none() {
        let path = ph.run_dir.join(schedule::FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(done > 0)
            .write(true)
            .truncate(done == 0)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut out: Box<dyn Write> = Box::new(std::io::BufWriter::new(file));
        if done > 0 {
            schedule::mark_resume(out.as_mut(), done)?;
        }
        Some(out)
    } else {
        None
    };
    Ok(StreamLeader {
        assembler,
        task: ph.task,
        codec: ph.codec,
        kind: rl.advantage,
        filter_zero_std: rl.filter_zero_std,
        lag: ac.lag(),
        first,
        schedule,
    })
}

/// A rollout rank's world rank and communicators: its role group (the rollout ranks), the batch
/// channel to the leader and the weights channel from it (with this rank's place in its relay).
struct RolloutComms {
    world_rank: usize,
    role: Box<dyn Comm>,
    batches: Box<dyn Comm>,
    weights: (Box<dyn Comm>, Relay),
}

/// A rollout rank: generate batch b with policy version `batch_version(b)`, send it to the
/// training leader (world rank 0), take new versions as they are published.
/// In the streaming modes (`stream` = how weights are installed), one continuous-batching loop
/// runs across batches instead (`stream.rs`).
fn rollout_loop(
    model: &mut Model,
    ph: &Phase,
    (done, first, sampling): (u64, u64, Option<crate::train::checkpoint::SamplingState>),
    (comms, mut older): (RolloutComms, std::collections::BTreeMap<u64, Vec<u8>>),
    stream: Option<stream::Installs>,
) -> Result<()> {
    let RolloutComms { world_rank, role, batches, weights } = comms;
    let ac = ph.plan.async_cfg().ok_or_else(|| Error::Invalid("async phase without [async]".into()))?;
    let (lag, replicate) = (ac.lag(), ac.replicate);
    let (to_sender, outbox) = mpsc::channel::<Vec<u8>>();
    let (to_main, inbox) = mpsc::channel::<Result<Vec<u8>>>();
    // set by the weights thread once the leader's halt is in the inbox: no batch starts after it
    let halt = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        let sender = scope.spawn(move || -> Result<()> {
            for msg in outbox {
                batches.send_bytes(0, &msg)?;
            }
            Ok(())
        });
        let halt = &halt;
        // (forwarding each message to the next rank of the relay as it arrives)
        let (weights, relay) = weights;
        scope.spawn(move || loop {
            let msg = relay.recv(weights.as_ref());
            let halts = msg.as_ref().is_ok_and(|m| halted(m).is_some());
            let stop = halts || msg.as_ref().map_or(true, |m| m.is_empty());
            if to_main.send(msg).is_err() || stop {
                halt.store(halts, Ordering::SeqCst);
                break;
            }
        });
        let generate_all = || -> Result<()> {
            if let Some(installs) = stream {
                let st = stream::Stream {
                    world_rank,
                    index: role.rank(),
                    ranks: role.size(),
                    first: done,
                    base: first,
                    older: std::mem::take(&mut older),
                    lag,
                    replicate,
                    installs,
                    inbox: &inbox,
                    outbox: &to_sender,
                };
                return stream::stream_batches(model, ph, st).and_then(|()| trainer_end(&inbox));
            }
            let ctx = RlTrainer::context(ph.cfg, ph.rl, ph.task, ph.codec, role.as_ref());
            let mut sampler = Sampler::new(ph.plan, model);
            // [attnrl] resumed: the tree sampler's state the checkpoint kept (sent with its last batch)
            if let (Some(t), Some(s)) = (sampler.tree_state_mut(), sampling) {
                *t = crate::train::rl::tree::TreeState::restore(&s, ph.rl.prompts_per_step);
            }
            // [rhythm]: this rank shapes its share with the policy that generated it
            let mut shaping = ph.plan.shaping.as_ref().map(|rc| (rc, Workspace::new(&model.cfg, 0)));
            let collective = shaping.is_some() || !matches!(ph.plan.sampler, crate::config::Sampler::Groups);
            let (mut version, mut sum) = (done, weights_checksum(model));
            if !older.is_empty() {
                // a resume's first batches go back to older versions, then on to this one
                older.insert(done, weights_message(model, done).0);
            }
            // this rank's own engine (its GPU with "cuda"), given each published version
            let mut engine = crate::train::engine::Engine::inference(ph.cfg.train.compute(), model)?;
            for b in done..ph.rl.steps {
                crate::parallel::fault::maybe_inject_at(world_rank, ph.offset + b + 1)?;
                // where the sampler has collectives among the rollout ranks ([attnrl] and [env]
                // counts, [rhythm] medians) they stop at the same batch, or one would wait for
                // another; plain groups stop at each rank's own next batch (no coupling)
                let mut stop = [f64::from(u8::from(halt.load(Ordering::SeqCst)))];
                if collective && role.size() > 1 {
                    role.all_reduce_max_f64(&mut stop)?;
                }
                if stop[0] > 0.0 {
                    return trainer_end(&inbox);
                }
                let need = batch_version(b, lag, first);
                if let Some(msg) = older.remove(&need).filter(|_| version != need) {
                    (version, sum) = load_weights(model, &msg)?;
                    engine.load_weights(model)?;
                }
                older.retain(|v, _| *v > need);
                while version < need {
                    let msg =
                        inbox.recv().map_err(|_| Error::Invalid("async: the weights channel closed".into()))??;
                    if msg.is_empty() {
                        return Err(Error::Invalid("async: the trainer stopped before the last batch".into()));
                    }
                    if let Some(stopped) = halted(&msg) {
                        return Err(stopped);
                    }
                    (version, sum) = load_weights(model, &msg)?;
                    engine.load_weights(model)?;
                }
                let t0 = Instant::now();
                let mut rollouts = sampler.sample(&ctx, &mut engine, model, b)?;
                // (stages 1–3, as the synchronous trainer's time_generate_s: not the shaping)
                let secs = t0.elapsed().as_secs_f64();
                if let Some((rc, ws)) = shaping.as_mut() {
                    rollouts.notes.rhythm_amplified_frac =
                        // (every rollout rank shapes its share of batch b here: the medians and
                        // the amplified fraction are the whole batch's, over the rollout ranks)
                        Some(shape_rollouts(&mut engine, model, ws, (rc, ph.rl.micro()), &mut rollouts, Some(ctx.dp))?);
                }
                let msg = encode_batch(version, sum, secs, &rollouts)?;
                to_sender.send(msg).map_err(|_| Error::Invalid("async: the batch sender stopped".into()))?;
            }
            // every batch generated: the trainer's last message ends the run, or halts it (a
            // preemption while the trainer had batches of this rank still to train)
            trainer_end(&inbox)
        };
        let ended = generate_all();
        match &ended {
            Ok(()) => {}
            // the leader takes this rank's queued batches up to an empty message, then stops
            Err(Error::Preempted { .. }) => {
                to_sender.send(Vec::new()).map_err(|_| Error::Invalid("async: the batch sender stopped".into()))?;
            }
            // a failing rollout rank takes the job down (its threads would otherwise wait
            // forever); where the sender thread stopped first (a send failed), its error is the cause
            Err(e) => {
                let cause = match sender.is_finished().then(|| sender.join()) {
                    Some(Ok(Err(sent))) => format!("sending a batch to the trainer: {sent}"),
                    _ => e.to_string(),
                };
                role.abort(&format!("rank {world_rank} (rollout): {cause}"));
            }
        }
        drop(to_sender);
        sender.join().map_err(|_| Error::Invalid("async: the batch sender panicked".into()))??;
        ended
    })
}

/// The trainer's last message, once this rank has nothing left to generate: the end of the run
/// (`Ok`; also where a streaming loop already read it), or the leader's halt (its
/// [`Error::Preempted`]); versions before it are not needed any more.
fn trainer_end(inbox: &mpsc::Receiver<Result<Vec<u8>>>) -> Result<()> {
    for msg in inbox.iter() {
        let msg = msg?;
        if msg.is_empty() {
            break;
        }
        if let Some(stopped) = halted(&msg) {
            return Err(stopped);
        }
    }
    Ok(())
}

/// The weights channel's end on a training rank.
enum Weights {
    /// The leader's: its publishing thread owns it.
    Publisher(Publisher),
    /// Another training rank's (it publishes nothing; kept until the phase ends, as every rank's
    /// communicators are).
    Idle(#[allow(dead_code)] Box<dyn Comm>),
}

/// The leader's publications, sent along the relay by a thread of their own, in the order given:
/// the trainer hands a version over and goes on with its next step while it travels.
struct Publisher {
    queue: Option<mpsc::Sender<Arc<Vec<u8>>>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Publisher {
    fn start(comm: Box<dyn Comm>, relay: Relay) -> Result<Self> {
        let (queue, messages) = mpsc::channel::<Arc<Vec<u8>>>();
        let thread = std::thread::Builder::new()
            .name("arbor-publish".into())
            .spawn(move || messages.iter().try_for_each(|msg| relay.send(comm.as_ref(), &msg)))
            .map_err(|e| Error::Invalid(format!("async: the publishing thread did not start: {e}")))?;
        Ok(Publisher { queue: Some(queue), thread: Some(thread) })
    }

    /// Queue `msg`; where the thread has stopped (a send failed), its error.
    fn send(&mut self, msg: Arc<Vec<u8>>) -> Result<()> {
        if self.queue.as_ref().is_some_and(|q| q.send(msg).is_ok()) {
            return Ok(());
        }
        self.finish()?;
        Err(Error::Invalid("async: the publishing thread has stopped".into()))
    }

    /// Wait until every queued message has left; the thread's error if it met one.
    fn finish(&mut self) -> Result<()> {
        drop(self.queue.take());
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| Error::Invalid("async: the publishing thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// The training ranks' source of samples: batches from the rollout ranks.
struct Received<'g> {
    batches: Box<dyn Comm>,
    /// The leader's publishing thread; the other training ranks' (unused) end of the channel.
    weights: Weights,
    /// World ranks of the rollout ranks.
    rollout: Vec<usize>,
    /// The training ranks' communicator (rank 0 = world rank 0, the leader).
    train: &'g dyn Comm,
    /// The training ranks' channel for the leader's step shares (a duplicate of `train`), and
    /// this rank's place in its relay.
    shares: (Relay, Box<dyn Comm>),
    lag: u64,
    first: u64,
    /// (version, checksum) of every policy version published so far.
    published: Vec<(u64, u64)>,
    per_prompt: usize,
    steps: u64,
    /// The leader's assembly of streamed pieces (streaming modes, leader only).
    stream: Option<StreamLeader<'g>>,
    /// The published versions a checkpoint may need (batch mode, leader only).
    history: Option<history::History>,
}

impl Received<'_> {
    /// The leader sends `msg` to every rollout rank, along the weights relay, from its publishing
    /// thread (the trainer goes on while the message travels).
    fn publish(&mut self, msg: impl Into<Arc<Vec<u8>>>) -> Result<()> {
        match &mut self.weights {
            Weights::Publisher(p) => p.send(msg.into()),
            Weights::Idle(_) => Err(Error::Invalid("async: only the leader publishes".into())),
        }
    }

    /// The leader hands the whole step to the other training ranks (point to point along a relay,
    /// so a rank waiting for it sleeps instead of spinning in a collective while the leader
    /// assembles, and the leader sends one copy whatever the number of ranks).
    fn share(&self, bytes: &[u8]) -> Result<()> {
        self.shares.0.send(self.shares.1.as_ref(), bytes)
    }

    /// Receive and check every rollout rank's part of batch `step` (leader only).
    fn receive(&mut self, step: u64) -> Result<(Rollouts, f64, u64)> {
        let want = batch_version(step, self.lag, self.first);
        let (mut parts, mut gen_s) = (Vec::new(), 0.0f64);
        for &r in &self.rollout {
            let msg = self.batches.recv_bytes(r)?;
            let BatchMessage { version, sum, gen_s: secs, rollouts } =
                decode_batch(&msg).map_err(|e| Error::collective(r, format!("async batch {step}"), e.to_string()))?;
            gen_s = gen_s.max(secs);
            if step.saturating_sub(version) > self.lag {
                return Err(Error::collective(
                    r,
                    format!("async batch {step}"),
                    format!("generated with version {version}, staler than the bound {}", self.lag),
                ));
            }
            if version != want {
                return Err(Error::collective(
                    r,
                    format!("async batch {step}"),
                    format!("used version {version}, expected {want}"),
                ));
            }
            let ours = self.published.iter().find(|(v, _)| *v == version).map(|p| p.1);
            if ours != Some(sum) {
                return Err(Error::collective(
                    r,
                    format!("async batch {step}"),
                    format!(
                        "generated with weights (checksum {sum:016x}) that differ from the trainer's version {version}"
                    ),
                ));
            }
            parts.push(rollouts);
        }
        Ok((merge_rollouts(parts), gen_s, want))
    }
}

impl SampleSource for Received<'_> {
    fn rollouts(&mut self, _model: &Model, step: u64) -> Result<(Rollouts, Sampling)> {
        let t0 = Instant::now();
        let leader = self.train.rank() == 0;
        let mut notes = None;
        let (all, gen_s, version) = if let Some(sl) = self.stream.as_mut().filter(|_| leader) {
            let sums: HashMap<u64, u64> = self.published.iter().copied().collect();
            let b = sl.receive(self.batches.as_ref(), step, &sums)?;
            let staleness_max = step - b.oldest;
            notes = Some(AsyncNotes {
                staleness_mean: b.staleness_mean,
                staleness_max,
                stream: Some(b.notes),
                ..AsyncNotes::default()
            });
            self.share(&encode_share(&b.rollouts, b.gen_s, b.oldest)?)?;
            (b.rollouts, b.gen_s, b.oldest)
        } else if leader {
            let (all, gen_s, version) = self.receive(step)?;
            self.share(&encode_share(&all, gen_s, version)?)?;
            (all, gen_s, version)
        } else {
            let bytes = self.shares.0.recv(self.shares.1.as_ref())?;
            decode_share(&bytes)
                .map_err(|e| Error::collective(0, format!("async step {step} broadcast"), e.to_string()))?
        };
        let mine = share_of(&all, self.per_prompt, self.train.size(), self.train.rank());
        let staleness = step.checked_sub(version).ok_or_else(|| {
            Error::Invalid(format!("async: step {step} received samples of a later policy version {version}"))
        })?;
        let asynchronous = AsyncNotes {
            time_wait_batch_s: t0.elapsed().as_secs_f64(),
            ..notes.unwrap_or(AsyncNotes {
                staleness_mean: staleness as f64,
                staleness_max: staleness,
                ..AsyncNotes::default()
            })
        };
        Ok((mine, Sampling { t0, t_gen: gen_s, policy_version: version, asynchronous: Some(asynchronous) }))
    }

    fn published(&mut self, model: &Model, step: u64) -> Result<()> {
        if self.train.rank() != 0 {
            return Ok(());
        }
        let version = step + 1;
        if version < self.steps {
            let (msg, sum) = weights_message(model, version);
            let msg = Arc::new(msg);
            self.published.push((version, sum));
            // keep the checksums a batch may still refer to (streaming: installs are reported
            // late, keep them all: 16 bytes a step)
            if self.stream.is_none() {
                let oldest = batch_version(version, self.lag, self.first);
                self.published.retain(|(v, _)| *v >= oldest);
            }
            self.publish(msg.clone())?;
            if let Some(h) = self.history.as_mut() {
                h.push(version, msg);
            }
        } else {
            self.publish(Vec::new())?;
        }
        Ok(())
    }

    /// The older versions the batches after this checkpoint need (history.rs).
    fn save(&self, dir: &std::path::Path, done: u64) -> Result<()> {
        match &self.history {
            Some(h) if done < self.steps => h.save(dir, done),
            _ => Ok(()),
        }
    }

    /// The leader halts every rollout rank (unless the run's end already told them to stop) and
    /// takes whatever they still send, up to their last (empty) message, so no rank is left
    /// blocked in a send when the job ends.
    fn halt(&mut self, step: u64, stop: &Error) -> Result<()> {
        let Error::Preempted { step: global, why } = stop else { return Ok(()) };
        if self.train.rank() != 0 || step + 1 >= self.steps {
            return Ok(());
        }
        self.publish(halt_message(*global, why))?;
        for &r in &self.rollout {
            while !self.batches.recv_bytes(r)?.is_empty() {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RunConfig, DEFAULT_CONFIG};
    use std::path::Path;

    #[test]
    fn batches_are_generated_at_most_lag_versions_behind() {
        for lag in 0..4u64 {
            for first in [0u64, 5] {
                for b in first..first + 10 {
                    let v = batch_version(b, lag, first);
                    assert!(v >= first && v <= b && b - v <= lag, "b {b} lag {lag} → v {v}");
                    // the bound is used fully once there is history
                    if b >= first + lag {
                        assert_eq!(b - v, lag);
                    }
                }
            }
        }
    }

    #[test]
    fn the_section_is_validated_with_its_key() {
        let parse =
            |extra: &str| RunConfig::parse(&format!("{DEFAULT_CONFIG}\n[async]\n{extra}\n"), Path::new("a.toml"));
        let ok = parse("rollout_ranks = 2\nalpha = 1.5").unwrap();
        assert_eq!(ok.async_rl.as_ref().unwrap().lag(), 2);
        for (bad, key) in [
            ("rollout_ranks = 0", "async.rollout_ranks"),
            ("rollout_ranks = 1\nalpha = -1", "async.alpha"),
            ("rollout_ranks = 1\nalpha = nan", "async.alpha"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("a.toml") && e.contains(key), "{bad}: {e}");
        }
        let e = parse("rollout_ranks = 1\nstaleness = 2").unwrap_err().to_string();
        assert!(e.contains("staleness"), "unknown keys are refused: {e}");
    }
}
