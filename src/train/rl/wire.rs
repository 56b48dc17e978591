//! A compact little-endian encoding of a rank's step samples, so rank 0 can gather every
//! rank's samples for the metrics and the trajectory dump (MPI moves bytes, not Rust values).

use super::{AttnTrace, Sample, Sampled, StepSample};
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
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| Error::Invalid("gathered samples: truncated message".into()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| Error::Invalid("gathered samples: bad u64".into()))?))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| Error::Invalid("gathered samples: bad u32".into()))?))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()? as usize;
        if n > self.b.len() {
            return Err(Error::Invalid(format!("gathered samples: length {n} exceeds the message")));
        }
        Ok(n)
    }
    fn u32s(&mut self) -> Result<Vec<u32>> {
        let n = self.len()?;
        (0..n).map(|_| self.u32()).collect()
    }
    fn f32s(&mut self) -> Result<Vec<f32>> {
        let n = self.len()?;
        (0..n).map(|_| self.u32().map(f32::from_bits)).collect()
    }
}

/// Decode what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Vec<StepSample>> {
    let mut r = Reader { b: bytes, at: 0 };
    let n = r.len()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let prompt_id = r.u64()?;
        let sample_index = r.u32()?;
        let finish = if r.take(1)?[0] == 1 { Finish::Length } else { Finish::Stop };
        let reward = f32::from_bits(r.u32()?);
        let prompt = r.u32s()?;
        let response = r.u32s()?;
        let behav_logp = r.f32s()?;
        let advantages = r.f32s()?;
        let logp = r.f32s()?;
        let (parent, at) = (r.u32()?, r.u32()?);
        let trace = AttnTrace {
            branch: (parent != u32::MAX).then_some((parent, at)),
            step_index: r.u32s()?,
            fci: r.f32s()?,
            waad: r.f32s()?,
            fai: r.f32s()?,
        };
        out.push(StepSample {
            prompt_id,
            sample_index,
            data: Sample { prompt, response, behav_logp, advantages, reward },
            logp,
            finish,
            trace,
        });
    }
    Ok(out)
}

/// Encode a step's sampling result for another rank (disaggregated rollout): the generated
/// samples, which of them train, and the step's counts. Tree sampling's extra training
/// sequences are not carried (only group sampling runs on rollout ranks).
pub(crate) fn encode_sampled(s: &Sampled) -> Result<Vec<u8>> {
    let mut out = encode(&s.generated);
    let of: Vec<u32> = s
        .train_of
        .iter()
        .map(|k| k.map(|k| k as u32).ok_or_else(|| Error::Invalid("only group samples cross ranks".into())))
        .collect::<Result<_>>()?;
    put_u32s(&mut out, &of);
    let counts = [s.candidates, s.effective, s.all_correct, s.all_wrong, s.prompts, s.zero_std.0, s.zero_std.1];
    counts.iter().for_each(|&c| out.extend_from_slice(&(c as u64).to_le_bytes()));
    let extra = serde_json::to_vec(&s.extra).map_err(|e| Error::Invalid(e.to_string()))?;
    out.extend_from_slice(&(extra.len() as u64).to_le_bytes());
    out.extend_from_slice(&extra);
    Ok(out)
}

/// Decode what [`encode_sampled`] wrote.
pub(crate) fn decode_sampled(bytes: &[u8]) -> Result<Sampled> {
    let generated = decode(bytes)?;
    let mut r = Reader { b: bytes, at: encode(&generated).len() };
    let of = r.u32s()?;
    let mut c = [0usize; 7];
    for x in c.iter_mut() {
        *x = r.u64()? as usize;
    }
    let n = r.len()?;
    let extra = serde_json::from_slice(r.take(n)?).map_err(|e| Error::Invalid(format!("sampled extras: {e}")))?;
    let mut train = Vec::with_capacity(of.len());
    for &k in &of {
        let g = generated.get(k as usize).ok_or_else(|| Error::Invalid(format!("train index {k} out of range")))?;
        train.push(g.data.clone());
    }
    Ok(Sampled {
        generated,
        train,
        train_of: of.iter().map(|&k| Some(k as usize)).collect(),
        candidates: c[0],
        effective: c[1],
        all_correct: c[2],
        all_wrong: c[3],
        prompts: c[4],
        zero_std: (c[5], c[6]),
        extra,
    })
}

/// Concatenate parts in order (the shares of consecutive prompt ranges) into one result.
pub(crate) fn merge_sampled(parts: Vec<Sampled>) -> Sampled {
    let mut out = Sampled::default();
    for p in parts {
        let base = out.generated.len();
        out.train_of.extend(p.train_of.iter().map(|k| k.map(|k| k + base)));
        out.generated.extend(p.generated);
        out.train.extend(p.train);
        out.candidates += p.candidates;
        out.effective += p.effective;
        out.all_correct += p.all_correct;
        out.all_wrong += p.all_wrong;
        out.prompts += p.prompts;
        out.zero_std = (out.zero_std.0 + p.zero_std.0, out.zero_std.1 + p.zero_std.1);
        for (k, v) in p.extra {
            // per-part timings: keep the slowest part's
            let slower = out.extra.get(&k).and_then(|o| o.as_f64()).zip(v.as_f64()).is_none_or(|(o, n)| n > o);
            if slower {
                out.extra.insert(k, v);
            }
        }
    }
    out
}

/// The share of a whole step's result that data-parallel rank `rank` of `ranks` trains on:
/// the samples of its contiguous range of prompts (`per_prompt` samples each). The step's
/// counts stay with rank 0 (the trainer sums them over the ranks).
pub(crate) fn share_of(all: &Sampled, per_prompt: usize, ranks: usize, rank: usize) -> Sampled {
    let prompts = all.generated.len() / per_prompt.max(1);
    let mine = crate::parallel::partition(prompts, ranks, rank);
    let range = mine.start * per_prompt..mine.end * per_prompt;
    let mut train = Vec::new();
    let mut train_of = Vec::new();
    for (s, k) in all.train.iter().zip(&all.train_of) {
        if let Some(k) = k.filter(|k| range.contains(k)) {
            train.push(s.clone());
            train_of.push(Some(k - range.start));
        }
    }
    let keep = |c: usize| if rank == 0 { c } else { 0 };
    Sampled {
        generated: all.generated[range].to_vec(),
        train,
        train_of,
        candidates: keep(all.candidates),
        effective: keep(all.effective),
        all_correct: keep(all.all_correct),
        all_wrong: keep(all.all_wrong),
        prompts: keep(all.prompts),
        zero_std: (keep(all.zero_std.0), keep(all.zero_std.1)),
        extra: all.extra.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        let empty = StepSample {
            data: Sample { response: vec![], behav_logp: vec![], advantages: vec![], ..s.data.clone() },
            logp: vec![],
            finish: Finish::Stop,
            trace: AttnTrace::default(),
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
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "truncation is an error");
    }
}
