//! A compact little-endian encoding of a rank's step samples, so rank 0 can gather every
//! rank's samples for the metrics and the trajectory dump (MPI moves bytes, not Rust values).

use super::{Sample, StepSample};
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
        out.push(StepSample {
            prompt_id,
            sample_index,
            data: Sample { prompt, response, behav_logp, advantages, reward },
            logp,
            finish,
        });
    }
    Ok(out)
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
        };
        let empty = StepSample {
            data: Sample { response: vec![], behav_logp: vec![], advantages: vec![], ..s.data.clone() },
            logp: vec![],
            finish: Finish::Stop,
            ..s.clone()
        };
        let bytes = encode(&[s.clone(), empty.clone()]);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].data, s.data);
        assert_eq!(back[0].logp[1], -3.0);
        assert!(back[0].logp[0].is_nan());
        assert_eq!(back[0].finish, Finish::Length);
        assert_eq!(back[1].data, empty.data);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "truncation is an error");
    }
}
