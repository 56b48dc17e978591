//! The messages between training and rollout ranks, all little-endian:
//! - weights (leader → rollout ranks): [version u64][checksum64 of the f32 bytes u64][f32 bytes]; empty = stop;
//!   [u64::MAX][step u64][why, UTF-8] = halt (the trainer stopped early, checkpointed after `step`);
//! - batch (rollout rank → leader): [version u64][weights checksum u64][generation seconds f64][encode_rollouts];
//! - share (leader → each other training rank): [encode_rollouts][generation seconds f64][version u64];
//! - piece (rollout rank → leader, streaming modes): see `pieces.rs`.
//!
//! Decoding never panics: a short or malformed message is an error naming the message and what is wrong.

use crate::error::{Error, Result};
use crate::io::checksum::checksum64;
use crate::model::Model;
use crate::train::rl::wire::{decode_rollouts, encode_rollouts};
use crate::train::rl::Rollouts;

// Rank-to-rank messages of this module, all little-endian:
// - weights (leader → rollout ranks): [version u64][checksum64 of the f32 bytes u64][f32 bytes]; empty = stop;
//   [u64::MAX][step u64][why] = halt (a preemption: see `halt_message`);
// - batch (rollout rank → leader): [version u64][weights checksum u64][generation seconds f64][encode_rollouts];
// - share (leader → each other training rank): [encode_rollouts][generation seconds f64][version u64].
// Decoding never panics: a short or malformed message is an error naming the message and what is wrong.

/// Bytes of the weights message header (version, checksum).
const WEIGHTS_HEADER: usize = 16;
/// Bytes of the batch message header (version, checksum, generation seconds).
const BATCH_HEADER: usize = 24;
/// Bytes of the share message trailer (generation seconds, version).
const SHARE_TRAILER: usize = 16;

/// The checksum a weights message carries: checksum64 (crate::io::checksum) of the model's f32 bytes.
pub(crate) fn weights_checksum(model: &Model) -> u64 {
    checksum64(bytemuck::cast_slice(&model.params.data))
}

/// A weights message: [version u64][checksum64 of the f32 bytes u64][f32 bytes]; empty = stop.
pub(crate) fn weights_message(model: &Model, version: u64) -> (Vec<u8>, u64) {
    let bytes: &[u8] = bytemuck::cast_slice(&model.params.data);
    let sum = weights_checksum(model);
    let mut out = Vec::with_capacity(WEIGHTS_HEADER + bytes.len());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(bytes);
    (out, sum)
}

/// The version field of a halt message: no policy version is u64::MAX.
const HALT_MARK: u64 = u64::MAX;

/// The leader's halt message to the rollout ranks: the trainer stopped early (a preemption signal
/// or `--time-limit`) after checkpointing global step `step`, for the reason `why`. A rollout rank
/// stops generating, sends what it has queued and then an empty message (its last), and ends with
/// the trainer's [`Error::Preempted`].
pub(crate) fn halt_message(step: u64, why: &str) -> Vec<u8> {
    [&HALT_MARK.to_le_bytes()[..], &step.to_le_bytes(), why.as_bytes()].concat()
}

/// `Some(Error::Preempted)` where `msg` is a halt message (a weights message starts with its
/// version, never u64::MAX).
pub(crate) fn halted(msg: &[u8]) -> Option<Error> {
    let mark = u64_at(msg, 0, "", "").ok()?;
    let step = u64_at(msg, 8, "", "").ok()?;
    (mark == HALT_MARK).then(|| Error::Preempted { step, why: String::from_utf8_lossy(&msg[16..]).into_owned() })
}

/// The little-endian u64 at byte `at` of `msg`, or an error naming the message and the field.
pub(crate) fn u64_at(msg: &[u8], at: usize, what: &str, field: &str) -> Result<u64> {
    at.checked_add(8)
        .and_then(|end| msg.get(at..end))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| {
            Error::Invalid(format!("async: {what} of {} bytes is too short for its {field} at byte {at}", msg.len()))
        })
}

/// A generation time read from a message: finite and non-negative.
pub(crate) fn seconds_at(msg: &[u8], at: usize, what: &str) -> Result<f64> {
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
    /// checksum64 of `data` (verified).
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
    let got = checksum64(data);
    if got != sum {
        return Err(Error::Invalid(format!(
            "async: {what} of version {version} arrived corrupted (checksum {got:016x}, sent {sum:016x})"
        )));
    }
    Ok(WeightsMessage { version, sum, data })
}

/// Check weights message `msg` and load its parameters into `model`; returns (version, checksum).
pub(crate) fn load_weights(model: &mut Model, msg: &[u8]) -> Result<(u64, u64)> {
    let w = decode_weights(msg, model.params.data.len())?;
    bytemuck::cast_slice_mut::<f32, u8>(&mut model.params.data).copy_from_slice(w.data);
    Ok((w.version, w.sum))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn a_batch() -> Rollouts {
        let mut s = Rollouts::default();
        s.notes.time_reward_s = Some(0.25);
        s
    }

    fn weights(values: &[f32], version: u64) -> Vec<u8> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        [&version.to_le_bytes()[..], &checksum64(bytes).to_le_bytes(), bytes].concat()
    }

    #[test]
    fn a_halt_message_carries_the_step_and_the_reason_and_no_weights_message_reads_as_one() {
        let h = halt_message(12, "a signal");
        match halted(&h) {
            Some(Error::Preempted { step, why }) => assert_eq!((step, why.as_str()), (12, "a signal")),
            other => panic!("{other:?}"),
        }
        assert!(halted(&weights(&[1.0, 2.0], 3)).is_none());
        assert!(halted(&weights(&[], u64::MAX - 1)).is_none());
        assert!(halted(&[]).is_none() && halted(&h[..12]).is_none());
    }

    #[test]
    fn short_or_corrupt_weights_are_errors_that_say_why() {
        let good = weights(&[1.0, -2.0, 0.5], 7);
        let w = decode_weights(&good, 3).unwrap();
        assert_eq!((w.version, w.sum, w.data.len()), (7, checksum64(&good[16..]), 12));
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
