//! Disaggregated asynchronous RL (ROLL Flash's async ratio, ALGORITHMS.md §8) under MPI.
//!
//! `[async] rollout_ranks = R` splits the world: the last R ranks only generate, the others
//! train (data parallel among themselves; world rank 0 leads them and writes the files).
//! Rollout rank r generates its contiguous share of every step's prompts, exactly as a
//! data-parallel rank of the synchronous trainer would, and sends the finished groups (tokens,
//! behaviour log-probs, rewards, advantages) with the policy version and a checksum of the
//! weights it used. The training leader receives batch s, checks it, hands each training rank
//! its share, updates, and sends policy version s + 1 to every rollout rank.
//!
//! **Staleness bound.** With lag k = ⌈α⌉, batch b is generated with policy version
//! max(first, b − k): rollout runs ahead of training by up to k batches while the trainer
//! works, and every sample of the batch trained at step s started at version ≥ s − k (checked on
//! every batch; a violation is an error). Fixing the version per batch, rather than taking
//! whichever samples finish first, keeps runs deterministic: the same seed gives the same
//! weights for any number of rollout or training ranks, and α = 0 is exactly the synchronous
//! trainer (tests/mpi.rs). Nothing is ever too old to train on, so no prompt is aborted.
//!
//! Messages are point-to-point on two duplicates of the world communicator (batches, weights);
//! each rollout rank receives weights on a thread, so a publishing trainer never waits for
//! generation, and sends batches from another, so generation never waits for the trainer.

use crate::error::{Error, Result};
use crate::model::Model;
use crate::parallel::{Comm, Grid, TpGroup};
use crate::train::checkpoint::fnv1a64;
use crate::train::rl::wire::{decode_rollouts, encode_rollouts, merge_rollouts, share_of};
use crate::train::rl::{
    run_phase_with, AsyncNotes, Phase, PhaseIo, PhaseStart, RlTrainer, Rollouts, SampleSource, Sampler, Sampling,
    SolveRate,
};
use crate::train::AdamW;
use std::io::Write;
use std::sync::mpsc;
use std::time::Instant;

pub use crate::config::AsyncConfig;

/// The policy version batch `b` is generated with, in a phase that started at version `first`.
pub fn batch_version(b: u64, lag: u64, first: u64) -> u64 {
    b.saturating_sub(lag).max(first)
}

// Rank-to-rank messages of this module, all little-endian:
// - weights (leader → rollout ranks): [version u64][fnv1a64 of the f32 bytes u64][f32 bytes]; empty = stop;
// - batch (rollout rank → leader): [version u64][weights checksum u64][generation seconds f64][encode_rollouts];
// - share (leader → training ranks, broadcast): [encode_rollouts][generation seconds f64][version u64].
// Decoding never panics: a short or malformed message is an error naming the message and what is wrong.

/// Bytes of the weights message header (version, checksum).
const WEIGHTS_HEADER: usize = 16;
/// Bytes of the batch message header (version, checksum, generation seconds).
const BATCH_HEADER: usize = 24;
/// Bytes of the share message trailer (generation seconds, version).
const SHARE_TRAILER: usize = 16;

/// A weights message: [version u64][fnv1a64 of the f32 bytes u64][f32 bytes]; empty = stop.
fn weights_message(model: &Model, version: u64) -> (Vec<u8>, u64) {
    let bytes: &[u8] = bytemuck::cast_slice(&model.params.data);
    let sum = fnv1a64(bytes);
    let mut out = Vec::with_capacity(WEIGHTS_HEADER + bytes.len());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(bytes);
    (out, sum)
}

/// The little-endian u64 at byte `at` of `msg`, or an error naming the message and the field.
fn u64_at(msg: &[u8], at: usize, what: &str, field: &str) -> Result<u64> {
    at.checked_add(8)
        .and_then(|end| msg.get(at..end))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| {
            Error::Invalid(format!("async: {what} of {} bytes is too short for its {field} at byte {at}", msg.len()))
        })
}

/// A generation time read from a message: finite and non-negative.
fn seconds_at(msg: &[u8], at: usize, what: &str) -> Result<f64> {
    let s = f64::from_bits(u64_at(msg, at, what, "generation time")?);
    if s.is_finite() && s >= 0.0 {
        Ok(s)
    } else {
        Err(Error::Invalid(format!("async: {what}: generation time {s} s is not a finite non-negative number")))
    }
}

/// A decoded, checked weights message.
#[derive(Debug, PartialEq)]
pub struct WeightsMessage<'a> {
    /// The policy version.
    pub version: u64,
    /// fnv1a64 of `data` (verified).
    pub sum: u64,
    /// The parameters' f32 bytes (exactly `4 · n_params`).
    pub data: &'a [u8],
}

/// Decode a non-empty weights message for a model of `n_params` parameters: the size must
/// match and the checksum must hold, else an error says which.
pub fn decode_weights(msg: &[u8], n_params: usize) -> Result<WeightsMessage<'_>> {
    let what = "weights message";
    let version = u64_at(msg, 0, what, "version")?;
    let sum = u64_at(msg, 8, what, "checksum")?;
    let data = &msg[WEIGHTS_HEADER..];
    let want =
        n_params.checked_mul(4).ok_or_else(|| Error::Invalid(format!("async: {n_params} parameters overflow")))?;
    if data.len() != want {
        return Err(Error::Invalid(format!(
            "async: {what} of version {version} carries {} bytes of weights; the model's {n_params} f32 parameters need {want}",
            data.len()
        )));
    }
    let got = fnv1a64(data);
    if got != sum {
        return Err(Error::Invalid(format!(
            "async: {what} of version {version} arrived corrupted (checksum {got:016x}, sent {sum:016x})"
        )));
    }
    Ok(WeightsMessage { version, sum, data })
}

/// A rollout rank's batch: the policy version and weights checksum it was generated with, the
/// generation time, and the samples.
pub(crate) struct BatchMessage {
    pub version: u64,
    pub sum: u64,
    pub gen_s: f64,
    pub rollouts: Rollouts,
}

pub(crate) fn encode_batch(version: u64, sum: u64, gen_s: f64, rollouts: &Rollouts) -> Result<Vec<u8>> {
    let mut msg = Vec::new();
    msg.extend_from_slice(&version.to_le_bytes());
    msg.extend_from_slice(&sum.to_le_bytes());
    msg.extend_from_slice(&gen_s.to_le_bytes());
    msg.extend_from_slice(&encode_rollouts(rollouts)?);
    Ok(msg)
}

pub(crate) fn decode_batch(msg: &[u8]) -> Result<BatchMessage> {
    let what = "batch message";
    let version = u64_at(msg, 0, what, "version")?;
    let sum = u64_at(msg, 8, what, "weights checksum")?;
    let gen_s = seconds_at(msg, 16, what)?;
    let rollouts = decode_rollouts(msg.get(BATCH_HEADER..).unwrap_or_default())?;
    Ok(BatchMessage { version, sum, gen_s, rollouts })
}

/// The leader's broadcast of a whole step to the training ranks.
pub(crate) fn encode_share(all: &Rollouts, gen_s: f64, version: u64) -> Result<Vec<u8>> {
    let mut bytes = encode_rollouts(all)?;
    bytes.extend_from_slice(&gen_s.to_le_bytes());
    bytes.extend_from_slice(&version.to_le_bytes());
    Ok(bytes)
}

pub(crate) fn decode_share(bytes: &[u8]) -> Result<(Rollouts, f64, u64)> {
    let what = "batch broadcast";
    let n = bytes.len().checked_sub(SHARE_TRAILER).ok_or_else(|| {
        Error::Invalid(format!(
            "async: {what} of {} bytes is shorter than its {SHARE_TRAILER}-byte trailer",
            bytes.len()
        ))
    })?;
    let gen_s = seconds_at(bytes, n, what)?;
    let version = u64_at(bytes, n + 8, what, "version")?;
    Ok((decode_rollouts(&bytes[..n])?, gen_s, version))
}

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
            "async.rollout_ranks = {r} leaves no training rank in a world of {size} (launch with mpirun -np {} or more)",
            r + 1
        )));
    }
    let first_rollout = size - r;
    let is_rollout = rank >= first_rollout;
    // collectives over the whole world, in the same order on every rank
    let role = world.split(usize::from(is_rollout), rank)?;
    let batches = world.split(0, rank)?;
    let weights = world.split(0, rank)?;
    let lag = ac.lag();
    if is_rollout {
        rollout_loop(model, ph, start.done, lag, RolloutComms { world_rank: rank, role, batches, weights })?;
        let none = SolveRate { greedy: 0.0, sampled: 0.0 };
        return Ok((none, none));
    }
    let dp = role.split(0, role.rank())?;
    let train_grid = Grid { world: role, dp, tp: TpGroup::single(), watchdog: grid.watchdog.clone() };
    let (_, first_sum) = weights_message(model, start.done);
    let mut source = Received {
        batches,
        weights,
        rollout: (first_rollout..size).collect(),
        train: train_grid.world.as_ref(),
        lag,
        first: start.done,
        published: vec![(start.done, first_sum)],
        per_prompt: ph.rl.samples_per_prompt as usize,
        steps: ph.rl.steps,
    };
    if train_grid.is_root() {
        let _ = writeln!(
            log,
            "async: {} training rank(s) + {r} rollout rank(s), α = {} (batches generated with policy version step − {lag})",
            first_rollout, ac.alpha
        );
    }
    let mut io = PhaseIo { metrics, log, source: Some(&mut source) };
    let res = run_phase_with(model, opt, ph, start, &train_grid, &mut io);
    // the train group's communicators go before the world's
    drop(train_grid);
    res
}

/// A rollout rank's world rank and communicators: its role group (the rollout ranks), the batch
/// channel to the leader and the weights channel from it.
struct RolloutComms {
    world_rank: usize,
    role: Box<dyn Comm>,
    batches: Box<dyn Comm>,
    weights: Box<dyn Comm>,
}

/// A rollout rank: generate batch b with policy version `batch_version(b)`, send it to the
/// training leader (world rank 0), take new versions as they are published.
fn rollout_loop(model: &mut Model, ph: &Phase, done: u64, lag: u64, comms: RolloutComms) -> Result<()> {
    let RolloutComms { world_rank, role, batches, weights } = comms;
    let (to_sender, outbox) = mpsc::channel::<Vec<u8>>();
    let (to_main, inbox) = mpsc::channel::<Result<Vec<u8>>>();
    std::thread::scope(|scope| -> Result<()> {
        let sender = scope.spawn(move || -> Result<()> {
            for msg in outbox {
                batches.send_bytes(0, &msg)?;
            }
            Ok(())
        });
        scope.spawn(move || loop {
            let msg = weights.recv_bytes(0);
            let stop = msg.as_ref().map_or(true, |m| m.is_empty());
            if to_main.send(msg).is_err() || stop {
                break;
            }
        });
        let mut generate_all = || -> Result<()> {
            let ctx = RlTrainer::context(ph.cfg, ph.rl, ph.task, role.as_ref());
            let mut sampler = Sampler::new(ph.plan, model);
            let (mut version, mut sum) = (done, weights_message(model, done).1);
            for b in done..ph.rl.steps {
                crate::parallel::fault::maybe_inject_at(world_rank, ph.offset + b + 1)?;
                let need = batch_version(b, lag, done);
                while version < need {
                    let msg =
                        inbox.recv().map_err(|_| Error::Invalid("async: the weights channel closed".into()))??;
                    if msg.is_empty() {
                        return Err(Error::Invalid("async: the trainer stopped before the last batch".into()));
                    }
                    let w = decode_weights(&msg, model.params.data.len())?;
                    bytemuck::cast_slice_mut::<f32, u8>(&mut model.params.data).copy_from_slice(w.data);
                    (version, sum) = (w.version, w.sum);
                }
                let t0 = Instant::now();
                let rollouts = sampler.sample(&ctx, model, b)?;
                let secs = t0.elapsed().as_secs_f64();
                let msg = encode_batch(version, sum, secs, &rollouts)?;
                to_sender.send(msg).map_err(|_| Error::Invalid("async: the batch sender stopped".into()))?;
            }
            Ok(())
        };
        // a failing rollout rank takes the job down (its threads would otherwise wait forever)
        if let Err(e) = generate_all() {
            role.abort(&format!("rank {world_rank} (rollout): {e}"));
        }
        drop(to_sender);
        sender.join().map_err(|_| Error::Invalid("async: the batch sender panicked".into()))??;
        // drain published versions until the trainer's stop message
        for msg in inbox {
            if msg?.is_empty() {
                break;
            }
        }
        Ok(())
    })
}

/// The training ranks' source of samples: batches from the rollout ranks.
struct Received<'g> {
    batches: Box<dyn Comm>,
    weights: Box<dyn Comm>,
    /// World ranks of the rollout ranks.
    rollout: Vec<usize>,
    /// The training ranks' communicator (rank 0 = world rank 0, the leader).
    train: &'g dyn Comm,
    lag: u64,
    first: u64,
    /// (version, checksum) of every policy version published so far.
    published: Vec<(u64, u64)>,
    per_prompt: usize,
    steps: u64,
}

impl Received<'_> {
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
        let (all, gen_s, version) = if leader {
            let (all, gen_s, version) = self.receive(step)?;
            if self.train.size() > 1 {
                let mut bytes = encode_share(&all, gen_s, version)?;
                self.train.broadcast_bytes(0, &mut bytes)?;
            }
            (all, gen_s, version)
        } else {
            let mut bytes = Vec::new();
            self.train.broadcast_bytes(0, &mut bytes)?;
            decode_share(&bytes)
                .map_err(|e| Error::collective(0, format!("async step {step} broadcast"), e.to_string()))?
        };
        let mine = share_of(&all, self.per_prompt, self.train.size(), self.train.rank());
        let staleness = step.checked_sub(version).ok_or_else(|| {
            Error::Invalid(format!("async: step {step} received samples of a later policy version {version}"))
        })?;
        let asynchronous = AsyncNotes {
            staleness_mean: staleness as f64,
            staleness_max: staleness,
            time_wait_batch_s: t0.elapsed().as_secs_f64(),
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
            self.published.push((version, sum));
            // keep the checksums a batch may still refer to
            let oldest = batch_version(version, self.lag, self.first);
            self.published.retain(|(v, _)| *v >= oldest);
            for &r in &self.rollout {
                self.weights.send_bytes(r, &msg)?;
            }
        } else {
            for &r in &self.rollout {
                self.weights.send_bytes(r, &[])?;
            }
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

    fn a_batch() -> Rollouts {
        let mut s = Rollouts::default();
        s.notes.time_reward_s = Some(0.25);
        s
    }

    fn weights(values: &[f32], version: u64) -> Vec<u8> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        [&version.to_le_bytes()[..], &fnv1a64(bytes).to_le_bytes(), bytes].concat()
    }

    #[test]
    fn short_or_corrupt_weights_are_errors_that_say_why() {
        let good = weights(&[1.0, -2.0, 0.5], 7);
        let w = decode_weights(&good, 3).unwrap();
        assert_eq!((w.version, w.sum, w.data.len()), (7, fnv1a64(&good[16..]), 12));
        let err = |b: &[u8], n: usize| decode_weights(b, n).unwrap_err().to_string();
        // the message that used to panic: 8 ≤ length < 16
        let e = err(&good[..12], 3);
        assert!(e.contains("weights message of 12 bytes") && e.contains("checksum"), "{e}");
        assert!(err(&good[..3], 3).contains("version"), "{}", err(&good[..3], 3));
        let e = err(&good, 4);
        assert!(e.contains("version 7") && e.contains("12 bytes") && e.contains("need 16"), "{e}");
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        assert!(err(&flipped, 3).contains("corrupted"), "{}", err(&flipped, 3));
    }

    #[test]
    fn batch_and_share_messages_round_trip_and_reject_bad_input() {
        let msg = encode_batch(4, 0xabc, 1.5, &a_batch()).unwrap();
        let b = decode_batch(&msg).unwrap();
        assert_eq!((b.version, b.sum, b.gen_s), (4, 0xabc, 1.5));
        assert_eq!(encode_rollouts(&b.rollouts).unwrap(), encode_rollouts(&a_batch()).unwrap());
        for cut in [0, 9, 17, 23, 24, msg.len() - 1] {
            assert!(decode_batch(&msg[..cut]).is_err(), "cut {cut}");
        }
        let e = decode_batch(&msg[..20]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("batch message of 20 bytes") && e.contains("generation time"), "{e}");
        let nan = encode_batch(4, 0, f64::NAN, &a_batch()).unwrap();
        let e = decode_batch(&nan).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("NaN s"), "{e}");

        let share = encode_share(&a_batch(), 2.0, 9).unwrap();
        let (all, gen_s, version) = decode_share(&share).unwrap();
        assert_eq!((gen_s, version), (2.0, 9));
        assert_eq!(encode_rollouts(&all).unwrap(), encode_rollouts(&a_batch()).unwrap());
        let e = decode_share(&share[..15]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("batch broadcast of 15 bytes") && e.contains("trailer"), "{e}");
        for cut in 0..share.len() {
            assert!(decode_share(&share[..cut]).is_err(), "cut {cut}");
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(384))]

            #[test]
            fn arbitrary_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), n in 0usize..8) {
                let _ = decode_weights(&bytes, n);
                let _ = decode_batch(&bytes);
                let _ = decode_share(&bytes);
            }

            #[test]
            fn mutated_messages_never_panic(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                cut in any::<prop::sample::Index>(),
            ) {
                let flip = |msg: &[u8]| {
                    let mut bytes = msg.to_vec();
                    for (at, x) in &flips {
                        let i = at.index(bytes.len());
                        bytes[i] ^= x | 1;
                    }
                    bytes
                };
                let batch = encode_batch(3, 1, 0.5, &a_batch()).unwrap();
                let share = encode_share(&a_batch(), 0.5, 3).unwrap();
                let _ = decode_batch(&flip(&batch)).is_ok();
                let _ = decode_share(&flip(&share)).is_ok();
                let w = weights(&[0.5, 1.5], 2);
                let bad = flip(&w);
                if decode_weights(&bad, 2).is_ok() {
                    // the checksum catches every change but one of the version
                    prop_assert_eq!(&bad[8..], &w[8..]);
                }
                prop_assert!(decode_batch(&batch[..cut.index(batch.len())]).is_err());
                prop_assert!(decode_share(&share[..cut.index(share.len())]).is_err());
                prop_assert!(decode_weights(&w[..cut.index(w.len())], 2).is_err());
            }
        }
    }
}
