//! A rollout rank's streaming loop (`[async] mode = "continuous"` or `replicate = true`).
//!
//! One continuous-batching loop ([`EngineSlots`], on the rank's engine: its GPU with
//! `[train] device = "cuda"`) runs for the whole phase. Its queue is this rank's
//! share of every batch, in order (batch, prompt, sample). A free slot takes the next request
//! as soon as the request's batch b may start under the policy version v in force:
//! - **continuous**: b − v ≤ ⌈α⌉, and new weights are installed at the first decode step after
//!   they arrive (sequences in flight continue under them; each sample records the version it
//!   started with, from which its staleness is measured, and the one it ended with);
//! - **locked** (batch mode with replication): v = max(first, b − ⌈α⌉) exactly, and a new
//!   version is installed only once the slots have drained, which gives batch mode's results;
//! - **replay**: as continuous, but each install happens at the decode step a recorded run made
//!   it, so the run's samples, and therefore its weights, are reproduced exactly.
//!
//! Each request's random stream and forced length are keyed by (seed, batch + 1, prompt,
//! sample), so a sample depends only on the weights it was generated with, never on the slot,
//! the batch mix or the rank. Every finished sample is rewarded at once (queue scheduling); when
//! the rank's share of a group is complete it goes to the training leader as a [`Piece`].

use super::messages::load_weights;
use super::pieces::{batch_version, share, Install, Piece, PieceSample};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::parallel::fault::maybe_inject_at;
use crate::rollout::{Completion, Request};
use crate::tasks::{Problem, SPLIT_TRAIN};
use crate::tokenizer::TextCodec;
use crate::train::decoding::EngineSlots;
use crate::train::engine::Engine;
use crate::train::rl::rollouts::{problem, reward};
use crate::train::rl::{rollout_config, Phase};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;

/// When a rank installs new weights.
pub(super) enum Installs {
    /// Batch mode's versions, installed when the slots have drained.
    Locked,
    /// As soon as they arrive.
    Live,
    /// At the recorded decode steps.
    Replay(VecDeque<Install>),
}

/// What the loop needs besides the model and the phase.
pub(super) struct Stream<'a> {
    pub world_rank: usize,
    /// This rank's index among the rollout ranks, and their number.
    pub index: usize,
    pub ranks: usize,
    /// The phase's first batch (its starting policy version) and ⌈α⌉.
    pub first: u64,
    pub lag: u64,
    /// Batch versions count from `base` (locked installs): `first`, or before it where a resume
    /// brought the older versions its first batches need (`older`, history.rs).
    pub base: u64,
    pub older: BTreeMap<u64, Vec<u8>>,
    pub replicate: bool,
    pub installs: Installs,
    /// Weights from the leader (empty = stop; a halt message ends the loop with its error) and
    /// pieces to it.
    pub inbox: &'a Receiver<Result<Vec<u8>>>,
    pub outbox: &'a Sender<Vec<u8>>,
}

/// What finishing a sample reads: the phase (task), the tokenizer, this rank's sample range of
/// every group and the loop's clock.
struct Here<'a> {
    ph: &'a Phase<'a>,
    codec: &'a TextCodec,
    samples: std::ops::Range<usize>,
    clock: Instant,
}

/// The rank's share of one group while it is generating.
struct Open {
    problem: Problem,
    prompt: Vec<u32>,
    samples: Vec<Option<(PieceSample, Instant)>>,
    start: Vec<u64>,
    left: usize,
    first_admit_s: f64,
    last_done_s: f64,
}

/// The policy in force on the rank.
struct Policy {
    version: u64,
    sum: u64,
    /// Installs not yet reported to the leader.
    unreported: Vec<Install>,
    /// The trainer sent its stop message.
    stopped: bool,
}

impl Policy {
    /// The next weights message; `block` = wait for one. `None`: none waiting.
    fn next(&mut self, inbox: &Receiver<Result<Vec<u8>>>, block: bool) -> Result<Option<Vec<u8>>> {
        if self.stopped {
            return if block { Err(stopped()) } else { Ok(None) };
        }
        let msg = if block {
            inbox.recv().map_err(|_| Error::Invalid("async: the weights channel closed".into()))??
        } else {
            match inbox.try_recv() {
                Ok(m) => m?,
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => {
                    return Err(Error::Invalid("async: the weights channel closed".into()))
                }
            }
        };
        if msg.is_empty() {
            self.stopped = true;
            return if block { Err(stopped()) } else { Ok(None) };
        }
        // a preemption: the sequences in flight are dropped (the resume generates them again)
        if let Some(halt) = super::messages::halted(&msg) {
            return Err(halt);
        }
        Ok(Some(msg))
    }

    /// Install a weights message before decode step `step` (recorded for the leader).
    fn install(&mut self, model: &mut Model, slots: &mut EngineSlots, msg: &[u8], step: u64) -> Result<()> {
        (self.version, self.sum) = load_weights(model, msg)?;
        slots.install(model)?;
        self.unreported.push(Install { version: self.version, sum: self.sum, decode_step: step });
        Ok(())
    }

    /// Wait for version `want` (skipping older ones) and install it before decode step `step`.
    fn install_exact(
        &mut self,
        (model, slots): (&mut Model, &mut EngineSlots),
        inbox: &Receiver<Result<Vec<u8>>>,
        want: u64,
        sum: Option<u64>,
        step: u64,
    ) -> Result<()> {
        if want < self.version {
            return Err(Error::Invalid(format!(
                "async: policy version {want} is needed, older than the installed {}, and no checkpoint history brought it",
                self.version
            )));
        }
        while self.version < want {
            let msg = self.next(inbox, true)?.ok_or_else(stopped)?;
            let v = super::messages::u64_at(&msg, 0, "weights message", "version")?;
            if v > want {
                return Err(Error::Invalid(format!("async: waiting for policy version {want}, received {v}")));
            }
            if v == want {
                self.install(model, slots, &msg, step)?;
            }
        }
        if let Some(s) = sum.filter(|&s| s != self.sum) {
            return Err(Error::Invalid(format!(
                "replay: policy version {want} has weights checksum {:016x}, the recorded run had {s:016x}",
                self.sum
            )));
        }
        Ok(())
    }
}

fn stopped() -> Error {
    Error::Invalid("async: the trainer stopped before the last batch".into())
}

/// Run the rank's share of batches `first..ph.rl.steps` through one continuous-batching loop.
pub(super) fn stream_batches(model: &mut Model, ph: &Phase, mut s: Stream<'_>) -> Result<()> {
    let rl = ph.rl;
    let (p, n) = (rl.prompts_per_step, rl.samples_per_prompt as usize);
    let (prompts, samples) = share(p, n, s.ranks, s.index, s.replicate);
    let per_batch = prompts.len() * samples.len();
    if per_batch == 0 {
        return Ok(());
    }
    let gen = rollout_config(ph.cfg, rl, ph.codec, 0, rl.max_new_tokens);
    let here = Here { ph, codec: ph.codec, samples: samples.clone(), clock: Instant::now() };
    // the rank's share of every batch's problems, made once: a slot holds the longest prompt and
    // its response
    let mut ahead = HashMap::new();
    for id in (s.first..rl.steps).flat_map(|b| prompts.clone().map(move |p_i| b * p as u64 + p_i as u64)) {
        ahead.insert(id, problem(ph.task, here.codec, SPLIT_TRAIN, id)?);
    }
    let longest = ahead.values().map(|(prompt, _)| prompt.len()).max().unwrap_or(0);
    let max_pos = model.cfg.max_position_embeddings;
    if longest >= max_pos {
        return Err(Error::Invalid(format!(
            "async: a prompt of {longest} tokens leaves no room for a response under max_position_embeddings = {max_pos}"
        )));
    }
    let max_len = (longest + rl.max_new_tokens).min(max_pos);
    let engine = Engine::inference(ph.cfg.train.compute(), model)?;
    let mut slots = EngineSlots::new(engine, model, rl.max_batch.max(1), max_len)?;
    let capacity = slots.capacity() as f64;
    let sum = super::messages::weights_checksum(model);
    // the weights this rank starts from are reported as an install before decode step 0: the leader
    // checks them against the version the trainer published first, as every later install
    let start = Install { version: s.first, sum, decode_step: 0 };
    let mut policy = Policy { version: s.first, sum, unreported: vec![start], stopped: false };
    if !s.older.is_empty() {
        // a resume's first batches go back to older versions, then on to this one
        s.older.insert(s.first, super::messages::weights_message(model, s.first).0);
    }
    let (mut busy_s, mut total_s) = (0.0f64, 0.0f64);
    let mut open: HashMap<(u64, usize), Open> = HashMap::new();
    let (mut b, mut k) = (s.first, 0usize);
    let mut step = 0u64;
    // the key of a request in the slots: its (batch, prompt, sample) coordinates
    let key = |b: u64, p_i: usize, j: usize| (b as usize * p + p_i) * n + j;
    let coords = |key: usize| ((key / n / p) as u64, (key / n) % p, key % n);
    loop {
        match &mut s.installs {
            Installs::Live => {
                let mut newest = None;
                while let Some(msg) = policy.next(s.inbox, false)? {
                    newest = Some(msg);
                }
                if let Some(msg) = newest {
                    policy.install(model, &mut slots, &msg, step)?;
                }
            }
            Installs::Replay(due) => {
                while let Some(x) = due.front().copied().filter(|x| x.decode_step == step) {
                    // the trainer makes version v from batch v − 1, this rank's share included: a
                    // share not yet generated here would wait for a version that waits for it
                    let unfinished = open.keys().map(|&(g, _)| g).chain((b < rl.steps).then_some(b)).min();
                    if let Some(g) = unfinished.filter(|&g| g < x.version) {
                        return Err(Error::Invalid(format!(
                            "replay: the schedule installs policy version {} before decode step {step}, but this \
                             rollout rank has not finished its share of batch {g}, from which the trainer makes that \
                             version: the schedule was recorded by a run with other settings (rl.max_batch, [async], \
                             [workload], the device, the data or the seed); record one with this config",
                            x.version
                        )));
                    }
                    policy.install_exact((model, &mut slots), s.inbox, x.version, Some(x.sum), step)?;
                    due.pop_front();
                }
            }
            Installs::Locked => {}
        }
        // admission: the next requests of the queue whose batch may start under this version
        while slots.has_free() && b < rl.steps {
            let may = match s.installs {
                Installs::Locked => policy.version == batch_version(b, s.lag, s.base),
                _ => b.saturating_sub(policy.version) <= s.lag,
            };
            if !may {
                break;
            }
            if k == 0 {
                maybe_inject_at(s.world_rank, ph.offset + b + 1)?;
            }
            let (p_i, j) = (prompts.start + k / samples.len(), samples.start + k % samples.len());
            let id = b * p as u64 + p_i as u64;
            let g = match open.entry((b, p_i)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let (prompt, problem) = match ahead.remove(&id) {
                        Some(made) => made,
                        None => problem(ph.task, here.codec, SPLIT_TRAIN, id)?,
                    };
                    e.insert(Open {
                        problem,
                        prompt,
                        samples: vec![None; samples.len()],
                        start: vec![0; samples.len()],
                        left: samples.len(),
                        first_admit_s: here.clock.elapsed().as_secs_f64(),
                        last_done_s: 0.0,
                    })
                }
            };
            g.start[j - samples.start] = policy.version;
            let req = Request { prompt_id: id, sample_index: j as u32, prompt: g.prompt.clone() };
            let at = key(b, p_i, j);
            let done = slots.admit(at, &req, b + 1, &gen);
            k += 1;
            if k == per_batch {
                (b, k) = (b + 1, 0);
            }
            if let Some(c) = done {
                let piece = finish(&mut open, coords(at), c, policy.version, &here)?;
                send(piece, &mut policy, (busy_s, total_s), s.outbox)?;
            }
        }
        if slots.busy() == 0 {
            if b >= rl.steps {
                return Ok(());
            }
            // nothing may start under this version: wait for the next one
            let t = Instant::now();
            match &mut s.installs {
                Installs::Live => {
                    let msg = policy.next(s.inbox, true)?.ok_or_else(stopped)?;
                    policy.install(model, &mut slots, &msg, step)?;
                }
                Installs::Locked => {
                    let want = batch_version(b, s.lag, s.base);
                    match s.older.remove(&want) {
                        Some(msg) if want != policy.version => policy.install(model, &mut slots, &msg, step)?,
                        _ => policy.install_exact((model, &mut slots), s.inbox, want, None, step)?,
                    }
                    s.older.retain(|v, _| *v > want);
                }
                Installs::Replay(due) => {
                    return Err(Error::Invalid(format!(
                        "replay: at decode step {step} no request may start under policy version {}, and the schedule installs nothing there (next: {:?})",
                        policy.version,
                        due.front()
                    )));
                }
            }
            total_s += capacity * t.elapsed().as_secs_f64();
            continue;
        }
        let t = Instant::now();
        let running = slots.busy() as f64;
        let done = slots.step(model, &gen)?;
        let dt = t.elapsed().as_secs_f64();
        (busy_s, total_s) = (busy_s + running * dt, total_s + capacity * dt);
        step += 1;
        for (at, c) in done {
            let piece = finish(&mut open, coords(at), c, policy.version, &here)?;
            send(piece, &mut policy, (busy_s, total_s), s.outbox)?;
        }
    }
}

/// A sample finished under policy `version`: reward it; the group share once it is complete.
fn finish(
    open: &mut HashMap<(u64, usize), Open>,
    (b, p_i, j): (u64, usize, usize),
    c: Completion,
    version: u64,
    here: &Here,
) -> Result<Option<Piece>> {
    let Here { ph, codec, samples, clock } = here;
    let unknown = || Error::Invalid(format!("async: a sample of an unknown group (batch {b}, prompt {p_i})"));
    let g = open.get_mut(&(b, p_i)).ok_or_else(unknown)?;
    // (a sample's queue time runs from its completion: its reward is part of it)
    let done = Instant::now();
    let r = reward(ph.task, codec, &g.problem, &c);
    let at = j - samples.start;
    let sample =
        PieceSample { completion: c, reward: r, start_version: g.start[at], end_version: version, queue_s: 0.0 };
    g.samples[at] = Some((sample, done));
    g.left -= 1;
    g.last_done_s = clock.elapsed().as_secs_f64();
    if g.left > 0 {
        return Ok(None);
    }
    let g = open.remove(&(b, p_i)).ok_or_else(unknown)?;
    let samples = g
        .samples
        .into_iter()
        .flatten()
        .map(|(mut s, t)| {
            s.queue_s = t.elapsed().as_secs_f64();
            s
        })
        .collect();
    Ok(Some(Piece {
        batch: b,
        prompt: p_i as u32,
        samples,
        installs: Vec::new(),
        slot_busy_s: 0.0,
        slot_total_s: 0.0,
        first_admit_s: g.first_admit_s,
        last_done_s: g.last_done_s,
    }))
}

/// Send a complete group share with the installs since the previous one and the slot counters.
fn send(
    piece: Option<Piece>,
    policy: &mut Policy,
    (busy_s, total_s): (f64, f64),
    outbox: &Sender<Vec<u8>>,
) -> Result<()> {
    let Some(mut piece) = piece else { return Ok(()) };
    piece.installs = std::mem::take(&mut policy.unreported);
    (piece.slot_busy_s, piece.slot_total_s) = (busy_s, total_s);
    outbox.send(piece.encode()?).map_err(|_| Error::Invalid("async: the batch sender stopped".into()))
}
