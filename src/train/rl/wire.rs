//! A compact little-endian encoding of a rank's step samples, so rank 0 can gather every
//! rank's samples for the metrics and the trajectory dump (MPI moves bytes, not Rust values).

use super::{AttnTrace, GroupCounts, Rollouts, Sample, StepSample, TrainingBatch};
use crate::error::{Error, Result};
use crate::rollout::Finish;

fn put_u32s(out: &mut Vec<u8>, v: &[u32]) {
    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
    v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
    v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

/// Encode samples.
pub fn encode(samples: &[StepSample]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(samples.len() as u64).to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.prompt_id.to_le_bytes());
        out.extend_from_slice(&s.sample_index.to_le_bytes());
        out.push(matches!(s.finish, Finish::Length) as u8);
        out.extend_from_slice(&s.data.reward.to_le_bytes());
        put_u32s(&mut out, &s.data.prompt);
        put_u32s(&mut out, &s.data.response);
        put_f32s(&mut out, &s.data.behav_logp);
        put_f32s(&mut out, &s.data.advantages);
        put_f32s(&mut out, &s.logp);
        let t = &s.trace;
        let (parent, at) = t.branch.map_or((u32::MAX, u32::MAX), |b| b);
        out.extend_from_slice(&parent.to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
        put_u32s(&mut out, &t.step_index);
        put_f32s(&mut out, &t.fci);
        put_f32s(&mut out, &t.waad);
        put_f32s(&mut out, &t.fai);
        out.extend_from_slice(&s.policy_version.unwrap_or(u64::MAX).to_le_bytes());
    }
    out
}

/// Bytes of the smallest encoded sample (every vector empty); bounds the sample count a
/// message of a given length can announce, so a corrupt count cannot reserve huge memory.
const MIN_SAMPLE_BYTES: usize = 8 + 4 + 1 + 4 + 5 * 8 + 4 + 4 + 4 * 8 + 8;

/// Reads a message written by this module. Every error names the message kind, its length,
/// the sample and field being read and the offset, and nothing panics on any input.
struct Reader<'a> {
    /// What the message is ("gathered samples", "rollout batch"), for errors.
    what: &'static str,
    b: &'a [u8],
    at: usize,
    /// The sample being read, for errors.
    sample: Option<usize>,
}

impl<'a> Reader<'a> {
    fn new(what: &'static str, b: &'a [u8]) -> Self {
        Reader { what, b, at: 0, sample: None }
    }

    fn left(&self) -> usize {
        self.b.len() - self.at
    }

    fn fail(&self, field: &str, msg: String) -> Error {
        let sample = self.sample.map(|i| format!("sample {i}, ")).unwrap_or_default();
        Error::Invalid(format!(
            "{}: malformed message of {} bytes: {sample}`{field}` at byte {}: {msg}",
            self.what,
            self.b.len(),
            self.at
        ))
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        match self.at.checked_add(n).filter(|&e| e <= self.b.len()) {
            Some(end) => {
                let s = &self.b[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(self.fail(field, format!("truncated: needs {n} bytes, {} left", self.left()))),
        }
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_le_bytes(a))
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, field)?);
        Ok(u32::from_le_bytes(a))
    }

    /// A count or index that must fit in `usize`.
    fn usize(&mut self, field: &str) -> Result<usize> {
        let v = self.u64(field)?;
        usize::try_from(v).map_err(|_| self.fail(field, format!("{v} does not fit in this machine's usize")))
    }

    /// A length prefix of `n` items of at least `item_bytes` bytes each, checked against what is left.
    fn count(&mut self, item_bytes: usize, field: &str) -> Result<usize> {
        let n = self.u64(field)?;
        let left = self.left();
        let fits = usize::try_from(n).ok().filter(|&n| n.checked_mul(item_bytes).is_some_and(|b| b <= left));
        fits.ok_or_else(|| {
            self.fail(
                field,
                format!(
                    "length {n} (at least {item_bytes} bytes each) exceeds the {left} bytes left: truncated or corrupt"
                ),
            )
        })
    }

    fn u32s(&mut self, field: &str) -> Result<Vec<u32>> {
        let n = self.count(4, field)?;
        let b = self.take(n * 4, field)?;
        Ok(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn f32s(&mut self, field: &str) -> Result<Vec<f32>> {
        Ok(self.u32s(field)?.into_iter().map(f32::from_bits).collect())
    }

    /// The whole message must have been read.
    fn end(&self) -> Result<()> {
        match self.left() {
            0 => Ok(()),
            n => Err(self.fail("end", format!("{n} bytes follow the last field"))),
        }
    }

    /// Samples as [`encode`] wrote them.
    fn samples(&mut self) -> Result<Vec<StepSample>> {
        let n = self.count(MIN_SAMPLE_BYTES, "sample count")?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            self.sample = Some(i);
            let prompt_id = self.u64("prompt_id")?;
            let sample_index = self.u32("sample_index")?;
            let finish = match self.take(1, "finish")?[0] {
                0 => Finish::Stop,
                1 => Finish::Length,
                other => return Err(self.fail("finish", format!("flag {other} is neither 0 (stop) nor 1 (length)"))),
            };
            let reward = f32::from_bits(self.u32("reward")?);
            let prompt = self.u32s("prompt")?;
            let response = self.u32s("response")?;
            let behav_logp = self.f32s("behav_logp")?;
            let advantages = self.f32s("advantages")?;
            let logp = self.f32s("logp")?;
            let (parent, at) = (self.u32("branch parent")?, self.u32("branch position")?);
            let trace = AttnTrace {
                branch: (parent != u32::MAX).then_some((parent, at)),
                step_index: self.u32s("step_index")?,
                fci: self.f32s("fci")?,
                waad: self.f32s("waad")?,
                fai: self.f32s("fai")?,
            };
            let version = self.u64("policy_version")?;
            out.push(StepSample {
                prompt_id,
                sample_index,
                data: Sample { prompt, response, behav_logp, advantages, reward },
                logp,
                finish,
                trace,
                policy_version: (version != u64::MAX).then_some(version),
            });
        }
        self.sample = None;
        Ok(out)
    }
}

/// Decode what [`encode`] wrote (one rank's part of a gather); a short, long or otherwise
/// malformed message is an error that says what was wrong where.
pub fn decode(bytes: &[u8]) -> Result<Vec<StepSample>> {
    let mut r = Reader::new("gathered samples", bytes);
    let out = r.samples()?;
    r.end()?;
    Ok(out)
}

/// Encode a step's rollouts for another rank (disaggregated rollout): the generated samples,
/// which of them train, the step's counts and the sampler's notes. Only group sampling runs on
/// rollout ranks, so every training sequence is a generated sample (tree leaves, the fixed π_old,
/// masks and critic targets never cross ranks).
pub(crate) fn encode_rollouts(s: &Rollouts) -> Result<Vec<u8>> {
    let mut out = encode(&s.generated);
    let of: Vec<u32> = s
        .batch
        .generated_index
        .iter()
        .map(|k| k.map(|k| k as u32).ok_or_else(|| Error::Invalid("only group samples cross ranks".into())))
        .collect::<Result<_>>()?;
    put_u32s(&mut out, &of);
    let c = &s.counts;
    let counts = [c.candidates, c.effective, c.all_correct, c.all_wrong, c.prompts, c.zero_std, c.groups];
    counts.iter().for_each(|&c| out.extend_from_slice(&(c as u64).to_le_bytes()));
    let notes = serde_json::to_vec(&s.notes).map_err(|e| Error::Invalid(e.to_string()))?;
    out.extend_from_slice(&(notes.len() as u64).to_le_bytes());
    out.extend_from_slice(&notes);
    Ok(out)
}

/// Names of the step counts [`encode_rollouts`] writes, in order (for errors).
const COUNT_NAMES: [&str; 7] = ["candidates", "effective", "all_correct", "all_wrong", "prompts", "zero_std", "groups"];

/// Decode what [`encode_rollouts`] wrote; malformed input is an error, never a panic.
pub(crate) fn decode_rollouts(bytes: &[u8]) -> Result<Rollouts> {
    let mut r = Reader::new("rollout batch", bytes);
    let generated = r.samples()?;
    let of = r.u32s("generated_index")?;
    let mut c = [0usize; 7];
    for (x, name) in c.iter_mut().zip(COUNT_NAMES) {
        *x = r.usize(name)?;
    }
    let n = r.count(1, "notes length")?;
    let json = r.take(n, "notes")?;
    let notes = serde_json::from_slice(json).map_err(|e| r.fail("notes", format!("not the sampler's notes: {e}")))?;
    r.end()?;
    let mut samples = Vec::with_capacity(of.len());
    for &k in &of {
        let g = generated.get(k as usize).ok_or_else(|| {
            r.fail("generated_index", format!("index {k} is out of range for {} generated samples", generated.len()))
        })?;
        samples.push(g.data.clone());
    }
    let [candidates, effective, all_correct, all_wrong, prompts, zero_std, groups] = c;
    Ok(Rollouts {
        generated,
        batch: TrainingBatch {
            samples,
            generated_index: of.iter().map(|&k| Some(k as usize)).collect(),
            ..TrainingBatch::default()
        },
        counts: GroupCounts { candidates, effective, all_correct, all_wrong, prompts, zero_std, groups },
        notes,
    })
}

/// Concatenate parts in order (the shares of consecutive prompt ranges) into one result.
pub(crate) fn merge_rollouts(parts: Vec<Rollouts>) -> Rollouts {
    let mut out = Rollouts::default();
    for p in parts {
        let base = out.generated.len();
        out.batch.generated_index.extend(p.batch.generated_index.iter().map(|k| k.map(|k| k + base)));
        out.generated.extend(p.generated);
        out.batch.samples.extend(p.batch.samples);
        let (c, pc) = (&mut out.counts, p.counts);
        c.candidates += pc.candidates;
        c.effective += pc.effective;
        c.all_correct += pc.all_correct;
        c.all_wrong += pc.all_wrong;
        c.prompts += pc.prompts;
        c.zero_std += pc.zero_std;
        c.groups += pc.groups;
        // per-part timings: keep the slowest part's
        out.notes.merge(&p.notes);
    }
    out
}

/// The share of a whole step's result that data-parallel rank `rank` of `ranks` trains on:
/// the samples of its contiguous range of prompts (`per_prompt` samples each). The step's
/// counts stay with rank 0 (the trainer sums them over the ranks). Environment turns (`[env]`:
/// a group is a variable number of turns) are split turn by turn.
pub(crate) fn share_of(all: &Rollouts, per_prompt: usize, ranks: usize, rank: usize) -> Rollouts {
    let per_prompt = if all.notes.env.is_some() { 1 } else { per_prompt };
    let prompts = all.generated.len() / per_prompt.max(1);
    let mine = crate::parallel::partition(prompts, ranks, rank);
    let range = mine.start * per_prompt..mine.end * per_prompt;
    let mut batch = TrainingBatch::default();
    for (s, k) in all.batch.samples.iter().zip(&all.batch.generated_index) {
        if let Some(k) = k.filter(|k| range.contains(k)) {
            batch.samples.push(s.clone());
            batch.generated_index.push(Some(k - range.start));
        }
    }
    let counts = if rank == 0 { all.counts } else { GroupCounts::default() };
    Rollouts { generated: all.generated[range].to_vec(), batch, counts, notes: all.notes.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rl::SamplerNotes;

    #[test]
    fn samples_round_trip_bit_exactly() {
        let s = StepSample {
            prompt_id: 7,
            sample_index: 3,
            data: Sample {
                prompt: vec![1, 5, 9],
                response: vec![4, 2],
                behav_logp: vec![-0.5, -1.25],
                advantages: vec![0.75, 0.75],
                reward: 1.0,
            },
            logp: vec![f32::NAN, -3.0],
            finish: Finish::Length,
            trace: AttnTrace {
                branch: Some((1, 4)),
                step_index: vec![0, 1],
                fci: vec![0.5, 0.25],
                waad: vec![],
                fai: vec![1.0, f32::NAN],
            },
            policy_version: Some(5),
        };
        let empty = StepSample {
            data: Sample { response: vec![], behav_logp: vec![], advantages: vec![], ..s.data.clone() },
            logp: vec![],
            finish: Finish::Stop,
            trace: AttnTrace::default(),
            policy_version: None,
            ..s.clone()
        };
        let bytes = encode(&[s.clone(), empty.clone()]);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].data, s.data);
        assert_eq!(back[0].logp[1], -3.0);
        assert!(back[0].logp[0].is_nan());
        assert_eq!(back[0].finish, Finish::Length);
        assert_eq!(back[0].trace.branch, Some((1, 4)));
        assert_eq!(back[0].trace.fci, [0.5, 0.25]);
        assert!(back[0].trace.fai[1].is_nan() && back[1].trace == AttnTrace::default());
        assert_eq!(back[1].data, empty.data);
        assert_eq!((back[0].policy_version, back[1].policy_version), (Some(5), None));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "truncation is an error");
    }

    fn sample(i: u32) -> StepSample {
        StepSample {
            prompt_id: u64::from(i / 2),
            sample_index: i % 2,
            data: Sample {
                prompt: vec![1, 5, i],
                response: vec![4; i as usize % 3],
                behav_logp: vec![-0.5; i as usize % 3],
                advantages: vec![0.25; i as usize % 3],
                reward: i as f32,
            },
            logp: vec![-1.0; i as usize % 3],
            finish: if i.is_multiple_of(2) { Finish::Stop } else { Finish::Length },
            trace: AttnTrace::default(),
            policy_version: None,
        }
    }

    /// A group-sampling result with `n` samples, every other one training, and a note.
    fn sampled(n: u32) -> Rollouts {
        let generated: Vec<StepSample> = (0..n).map(sample).collect();
        let generated_index: Vec<Option<usize>> = (0..n as usize).step_by(2).map(Some).collect();
        let samples = generated_index.iter().flatten().map(|&k| generated[k].data.clone()).collect();
        let counts = GroupCounts { candidates: 3, prompts: 2, zero_std: 1, groups: 2, ..Default::default() };
        let notes = SamplerNotes { time_reward_s: Some(0.5), ..Default::default() };
        let batch = TrainingBatch { samples, generated_index, ..Default::default() };
        Rollouts { generated, batch, counts, notes }
    }

    #[test]
    fn the_empty_sample_has_the_minimum_size() {
        let empty = StepSample {
            data: Sample { prompt: vec![], response: vec![], behav_logp: vec![], advantages: vec![], reward: 0.0 },
            logp: vec![],
            trace: AttnTrace::default(),
            ..sample(0)
        };
        assert_eq!(encode(&[empty]).len(), 8 + MIN_SAMPLE_BYTES);
    }

    #[test]
    fn sampled_round_trips_and_bad_messages_say_what_is_wrong() {
        let s = sampled(5);
        let bytes = encode_rollouts(&s).unwrap();
        let back = decode_rollouts(&bytes).unwrap();
        assert_eq!(back, s);

        let err = |b: &[u8]| decode_rollouts(b).err().map(|e| e.to_string()).unwrap_or_default();
        for cut in [0, 7, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            let e = err(&bytes[..cut]);
            assert!(e.contains("rollout batch") && e.contains("truncated"), "cut {cut}: {e}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(err(&long).contains("1 bytes follow the last field"), "{}", err(&long));
        // the first sample's finish flag sits after prompt_id (8), sample_index (4) and the count (8)
        let mut flag = bytes.clone();
        flag[8 + 8 + 4] = 7;
        let e = err(&flag);
        assert!(e.contains("sample 0") && e.contains("`finish`") && e.contains("flag 7"), "{e}");
        let mut count = bytes.clone();
        count[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = err(&count);
        assert!(e.contains("`sample count`") && e.contains("exceeds"), "{e}");
        // a training index past the samples
        let mut bad = sampled(1);
        bad.batch.generated_index = vec![Some(3)];
        bad.batch.samples = vec![bad.generated[0].data.clone()];
        let e = err(&encode_rollouts(&bad).unwrap());
        assert!(e.contains("`generated_index`") && e.contains("index 3 is out of range for 1"), "{e}");
        let e = decode(&bytes).unwrap_err().to_string();
        assert!(e.contains("gathered samples") && e.contains("follow the last field"), "{e}");
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(384))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode(&bytes);
                let _ = decode_rollouts(&bytes);
            }

            #[test]
            fn mutated_messages_never_panic(
                n in 0u32..4,
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                cut in any::<prop::sample::Index>(),
            ) {
                let good = encode_rollouts(&sampled(n)).unwrap();
                let mut bytes = good.clone();
                for (at, x) in &flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= x | 1;
                }
                let _ = decode_rollouts(&bytes);
                let short = &good[..cut.index(good.len())];
                prop_assert!(decode_rollouts(short).is_err(), "a truncated message decoded");
                let _ = decode(&bytes);
            }
        }
    }
}
