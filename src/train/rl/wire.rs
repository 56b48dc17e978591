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

/// `generated_index`'s mark of a training sequence that is no generated sample (a tree leaf: a
/// prefix and a continuation), sent in full after the indices.
const INLINE: u32 = u32::MAX;

/// Encode a step's rollouts for another rank (disaggregated rollout): the generated samples,
/// which of them train (a group sample by its index; a tree leaf in full), the step's counts,
/// the sampler's notes and a tree sampler's adaptive state. The fixed π_old of AttnRL's
/// off-policy pipeline, masks and critic targets never cross ranks (config::rules refuses them
/// with `[async]`); a batch that holds them is an error.
pub(crate) fn encode_rollouts(s: &Rollouts) -> Result<Vec<u8>> {
    let b = &s.batch;
    if !b.fixed_old_logp.is_empty() || !b.entropy_keep.is_empty() || b.critic.is_some() {
        return Err(Error::Invalid(
            "a batch with a fixed π_old, entropy masks or critic targets stays on its rank".into(),
        ));
    }
    let mut out = encode(&s.generated);
    let of: Vec<u32> = b.generated_index.iter().map(|k| k.map_or(INLINE, |k| k as u32)).collect();
    put_u32s(&mut out, &of);
    let inline: Vec<&Sample> =
        b.samples.iter().zip(&b.generated_index).filter(|(_, k)| k.is_none()).map(|(s, _)| s).collect();
    out.extend_from_slice(&(inline.len() as u64).to_le_bytes());
    for x in inline {
        out.extend_from_slice(&x.reward.to_le_bytes());
        put_u32s(&mut out, &x.prompt);
        put_u32s(&mut out, &x.response);
        put_f32s(&mut out, &x.behav_logp);
        put_f32s(&mut out, &x.advantages);
    }
    let c = &s.counts;
    let counts = [c.candidates, c.effective, c.all_correct, c.all_wrong, c.prompts, c.zero_std, c.groups];
    counts.iter().for_each(|&c| out.extend_from_slice(&(c as u64).to_le_bytes()));
    for json in [serde_json::to_vec(&s.notes), serde_json::to_vec(&s.sampling)] {
        let json = json.map_err(|e| Error::Invalid(e.to_string()))?;
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
    }
    Ok(out)
}

/// Bytes of the smallest inline training sequence (every vector empty).
const MIN_INLINE_BYTES: usize = 4 + 4 * 8;

/// Names of the step counts [`encode_rollouts`] writes, in order (for errors).
const COUNT_NAMES: [&str; 7] = ["candidates", "effective", "all_correct", "all_wrong", "prompts", "zero_std", "groups"];

/// Decode what [`encode_rollouts`] wrote; malformed input is an error, never a panic.
pub(crate) fn decode_rollouts(bytes: &[u8]) -> Result<Rollouts> {
    let mut r = Reader::new("rollout batch", bytes);
    let generated = r.samples()?;
    let of = r.u32s("generated_index")?;
    let n_inline = r.count(MIN_INLINE_BYTES, "inline sequence count")?;
    let mut inline = Vec::with_capacity(n_inline);
    for i in 0..n_inline {
        r.sample = Some(i);
        let reward = f32::from_bits(r.u32("inline reward")?);
        let (prompt, response) = (r.u32s("inline prompt")?, r.u32s("inline response")?);
        let (behav_logp, advantages) = (r.f32s("inline behav_logp")?, r.f32s("inline advantages")?);
        inline.push(Sample { prompt, response, behav_logp, advantages, reward });
    }
    r.sample = None;
    let mut c = [0usize; 7];
    for (x, name) in c.iter_mut().zip(COUNT_NAMES) {
        *x = r.usize(name)?;
    }
    let n = r.count(1, "notes length")?;
    let json = r.take(n, "notes")?;
    let notes = serde_json::from_slice(json).map_err(|e| r.fail("notes", format!("not the sampler's notes: {e}")))?;
    let n = r.count(1, "sampling state length")?;
    let json = r.take(n, "sampling state")?;
    let sampling = serde_json::from_slice(json)
        .map_err(|e| r.fail("sampling state", format!("not a tree sampler's state: {e}")))?;
    r.end()?;
    let marked = of.iter().filter(|&&k| k == INLINE).count();
    if marked != inline.len() {
        let msg = format!("{marked} training sequences are marked inline, {} were sent", inline.len());
        return Err(r.fail("generated_index", msg));
    }
    let mut inline = inline.into_iter();
    let mut samples = Vec::with_capacity(of.len());
    for &k in &of {
        match k {
            INLINE => samples.extend(inline.next()),
            k => {
                let g = generated.get(k as usize).ok_or_else(|| {
                    let n = generated.len();
                    r.fail("generated_index", format!("index {k} is out of range for {n} generated samples"))
                })?;
                samples.push(g.data.clone());
            }
        }
    }
    let [candidates, effective, all_correct, all_wrong, prompts, zero_std, groups] = c;
    Ok(Rollouts {
        generated,
        batch: TrainingBatch {
            samples,
            generated_index: of.iter().map(|&k| (k != INLINE).then_some(k as usize)).collect(),
            ..TrainingBatch::default()
        },
        counts: GroupCounts { candidates, effective, all_correct, all_wrong, prompts, zero_std, groups },
        notes,
        sampling,
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
        // (a tree sampler's state is the same on every rank: the first part's)
        out.sampling = out.sampling.or(p.sampling);
    }
    out
}

/// The share of a whole step's result that data-parallel rank `rank` of `ranks` trains on:
/// the samples of its contiguous range of prompts (`per_prompt` samples each). The step's
/// counts stay with rank 0 (the trainer sums them over the ranks). Environment turns (`[env]`:
/// a group is a variable number of turns) are split turn by turn. Trees (`[attnrl]`: a question
/// grows a varying number of samples) are split by training sequence, a contiguous range each,
/// with every generated sample on rank 0 (the dump's and the report's).
pub(crate) fn share_of(all: &Rollouts, per_prompt: usize, ranks: usize, rank: usize) -> Rollouts {
    let counts = if rank == 0 { all.counts } else { GroupCounts::default() };
    if all.notes.tree.is_some() {
        let mine = crate::parallel::partition(all.batch.samples.len(), ranks, rank);
        let batch = TrainingBatch {
            samples: all.batch.samples[mine.clone()].to_vec(),
            generated_index: match rank {
                0 => all.batch.generated_index[mine].to_vec(),
                _ => vec![None; mine.len()],
            },
            ..TrainingBatch::default()
        };
        let generated = if rank == 0 { all.generated.clone() } else { Vec::new() };
        return Rollouts { generated, batch, counts, notes: all.notes.clone(), sampling: all.sampling };
    }
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
    Rollouts {
        generated: all.generated[range].to_vec(),
        batch,
        counts,
        notes: all.notes.clone(),
        sampling: all.sampling,
    }
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
        Rollouts { generated, batch, counts, notes, ..Rollouts::default() }
    }

    /// A tree-sampling result: two leaves that are no generated sample among the group ones, the
    /// tree notes and the sampler's state.
    fn with_leaves(n: u32) -> Rollouts {
        let mut r = sampled(n);
        let leaf = |i: u32| Sample {
            prompt: vec![2, i],
            response: vec![7; i as usize],
            behav_logp: vec![-0.25; i as usize],
            advantages: (0..i).map(|k| k as f32 - 0.5).collect(),
            reward: 1.0,
        };
        r.batch.samples.insert(1, leaf(3));
        r.batch.generated_index.insert(1, None);
        r.batch.samples.push(leaf(0));
        r.batch.generated_index.push(None);
        r.notes.tree =
            Some(crate::train::rl::report::TreeNotes { branch_points: 4, branch_points_filled: 1, next_prompts: 6 });
        r.sampling = Some(crate::train::checkpoint::SamplingState {
            next_problem: 9,
            prompts: 6,
            fci_mean: 0.1 + 0.2,
            fci_count: 3,
        });
        r
    }

    #[test]
    fn tree_leaves_and_the_sampler_state_cross_ranks_and_split_by_sequence() {
        let t = with_leaves(5);
        let back = decode_rollouts(&encode_rollouts(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.sampling.unwrap().fci_mean.to_bits(), (0.1f64 + 0.2).to_bits());
        // merged parts keep each part's leaves; two training ranks split the sequences
        let merged = merge_rollouts(vec![t.clone(), with_leaves(3)]);
        assert_eq!(merged.batch.samples.len(), t.batch.samples.len() + with_leaves(3).batch.samples.len());
        assert_eq!(merged.batch.generated_index[4..], [None, Some(5), None, Some(7), None]);
        let (a, b) = (share_of(&merged, 2, 2, 0), share_of(&merged, 2, 2, 1));
        let rejoined: Vec<Sample> = a.batch.samples.iter().chain(&b.batch.samples).cloned().collect();
        assert_eq!(rejoined, merged.batch.samples);
        assert_eq!((a.generated.len(), b.generated.len()), (merged.generated.len(), 0));
        assert!(b.batch.generated_index.iter().all(Option::is_none) && a.sampling == merged.sampling);
        // leaves announced but not sent, and a batch that must stay on its rank
        let mut bytes = encode_rollouts(&sampled(3)).unwrap();
        let at = encode(&sampled(3).generated).len() + 8; // the first index, after its count
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = decode_rollouts(&bytes).unwrap_err().to_string();
        assert!(e.contains("1 training sequences are marked inline, 0 were sent"), "{e}");
        let mut fixed = with_leaves(2);
        fixed.batch.fixed_old_logp = vec![0.0; 3];
        assert!(encode_rollouts(&fixed).unwrap_err().to_string().contains("stays on its rank"));
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
                let good = encode_rollouts(&if n % 2 == 0 { sampled(n) } else { with_leaves(n) }).unwrap();
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
