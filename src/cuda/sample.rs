//! Token sampling on the device (cuda/sample.cu): only the sampled ids, their behaviour
//! log-probabilities and entropies cross to the host, never the [rows × vocab] logits.
//!
//! The random draw stays on the host: each row's uniform comes from its sequence's own stream,
//! drawn exactly where the CPU sampler draws it (one per sampled token), so a GPU rollout makes the
//! same draws as the CPU engine and picks the same tokens wherever the logits agree. The kernel's
//! arithmetic is mirrored by [`emulate_row`], which the tests hold against the CPU sampler.

use crate::cuda::device::{drv, Arg, Gpu};
use crate::error::{Error, Result};
use crate::rollout::sampler::Sampled;
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut};

/// Threads per row (the kernel's `SAMPLE_BLOCK`): row chunks are `ceil(V / BLOCK)` long.
pub const BLOCK: usize = 256;

/// The sampler's device buffers (uniforms in, ids / log-probs / entropies out), allocated once
/// and grown on demand, so a decode step allocates nothing on the device.
pub struct SampleBufs {
    uniforms: CudaSlice<f64>,
    tokens: CudaSlice<u32>,
    logp: CudaSlice<f32>,
    entropy: CudaSlice<f32>,
}

impl SampleBufs {
    /// Buffers for up to `rows` rows (more are grown into when asked for).
    pub fn new(gpu: &Gpu, rows: usize) -> Result<Self> {
        let s = gpu.stream();
        let n = rows.max(1);
        Ok(SampleBufs {
            uniforms: s.alloc_zeros(n).map_err(drv("alloc"))?,
            tokens: s.alloc_zeros(n).map_err(drv("alloc"))?,
            logp: s.alloc_zeros(n).map_err(drv("alloc"))?,
            entropy: s.alloc_zeros(n).map_err(drv("alloc"))?,
        })
    }

    fn reserve(&mut self, gpu: &Gpu, rows: usize) -> Result<()> {
        if self.tokens.len() < rows {
            *self = SampleBufs::new(gpu, rows)?;
        }
        Ok(())
    }
}

/// One token from each of the `n = uniforms.len()` rows of `logits` ([n, v] on the device) at
/// `temperature` (≤ 0: greedy, and `uniforms` are ignored), through the buffers `bufs`.
pub fn sample_rows(
    gpu: &Gpu,
    logits: &CudaView<'_, f32>,
    v: usize,
    uniforms: &[f64],
    temperature: f32,
    bufs: &mut SampleBufs,
) -> Result<Vec<Sampled>> {
    let n = uniforms.len();
    if v == 0 || logits.len() < n * v {
        return Err(Error::shape("sample rows", format!("{n} rows of {v} logits from a buffer of {}", logits.len())));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    if !temperature.is_finite() || uniforms.iter().any(|u| !(0.0..1.0).contains(u)) {
        return Err(Error::Invalid(format!("sample rows: temperature {temperature} or a uniform outside [0, 1)")));
    }
    bufs.reserve(gpu, n)?;
    let s = gpu.stream();
    s.memcpy_htod(uniforms, &mut bufs.uniforms.slice_mut(0..n)).map_err(drv("upload"))?;
    let args = [
        Arg::P(gpu.pr(logits)),
        Arg::P(bufs.uniforms.device_ptr(s).0),
        Arg::F(temperature),
        Arg::P(bufs.tokens.device_ptr_mut(s).0),
        Arg::P(bufs.logp.device_ptr_mut(s).0),
        Arg::P(bufs.entropy.device_ptr_mut(s).0),
        Arg::I(n as i32),
        Arg::I(v as i32),
    ];
    gpu.launch("sample", "sample_rows_f32", (n as u32, 1, 1), (BLOCK as u32, 1, 1), 0, &args)?;
    let (mut t, mut lp, mut h) = (vec![0u32; n], vec![0f32; n], vec![0f32; n]);
    s.memcpy_dtoh(&bufs.tokens.slice(0..n), &mut t[..]).map_err(drv("download"))?;
    s.memcpy_dtoh(&bufs.logp.slice(0..n), &mut lp[..]).map_err(drv("download"))?;
    s.memcpy_dtoh(&bufs.entropy.slice(0..n), &mut h[..]).map_err(drv("download"))?;
    gpu.sync()?;
    Ok((0..n).map(|i| Sampled { token: t[i], logprob: lp[i], entropy: h[i] }).collect())
}

/// The kernel's arithmetic for one row, on the host, in the kernel's order: chunk reductions,
/// chunk sums added in chunk order, the inverse CDF walked chunk by chunk and then element by
/// element (`expf` is `f32::exp` here, so results may differ from the device in the last bit).
pub fn emulate_row(z: &[f32], u: f64, temperature: f32) -> Sampled {
    let v = z.len();
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let chunk = v.div_ceil(BLOCK);
    let bounds = |c: usize| ((c * chunk).min(v), ((c + 1) * chunk).min(v));
    // (max, first argmax) per chunk, then the block maximum
    let chunk_max: Vec<(f32, Option<usize>)> = (0..BLOCK)
        .map(|c| {
            let (lo, hi) = bounds(c);
            let mut best = (f32::NEG_INFINITY, None);
            for (j, &x) in z.iter().enumerate().take(hi).skip(lo) {
                if best.1.is_none() || x > best.0 {
                    best = (x, Some(j));
                }
            }
            best
        })
        .collect();
    let m = chunk_max.iter().fold(f32::NEG_INFINITY, |a, &(x, _)| a.max(x));
    let w = |j: usize| ((z[j] - m) / t).exp();
    let (mut total, mut total_sz) = (0.0f64, 0.0f64);
    let sums: Vec<f64> = (0..BLOCK)
        .map(|c| {
            let (lo, hi) = bounds(c);
            let (mut s, mut sz) = (0.0f64, 0.0f64);
            for &x in &z[lo..hi] {
                let sj = (x - m) / t;
                let e = sj.exp();
                s += e as f64;
                sz += e as f64 * sj as f64;
            }
            total_sz += sz;
            s
        })
        .collect();
    for &s in &sums {
        total += s;
    }
    let token = if temperature <= 0.0 {
        let mut best: (f32, Option<usize>) = (f32::NEG_INFINITY, None);
        for &(x, at) in &chunk_max {
            if at.is_some() && (best.1.is_none() || x > best.0) {
                best = (x, at);
            }
        }
        best.1.unwrap_or(0)
    } else {
        let mut u = u * total;
        let mut c = 0;
        while c < BLOCK && u - sums[c] > 0.0 {
            u -= sums[c];
            c += 1;
        }
        let mut pick = v - 1;
        for j in (c * chunk).min(v)..v {
            u -= w(j) as f64;
            if u <= 0.0 {
                pick = j;
                break;
            }
        }
        pick
    };
    let log_s = total.ln();
    Sampled {
        token: token as u32,
        logprob: (((z[token] - m) / t) as f64 - log_s) as f32,
        entropy: (log_s - total_sz / total) as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::rollout::{sample, SamplingParams};

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, top_p: 1.0, top_k: 0, max_new_tokens: 1 }
    }

    /// The kernel's order of summation and walk picks the CPU sampler's token from the same
    /// uniform, with the same log-prob and entropy, on vocabularies smaller and larger than the
    /// block, peaked and flat rows, greedy and several temperatures.
    #[test]
    fn the_kernel_arithmetic_picks_the_cpu_samplers_tokens() {
        let mut rng = Rng::new(17);
        let mut scratch = Vec::new();
        let mut rows = 0;
        for &v in &[13usize, 255, 256, 257, 1000, 4099] {
            for &temperature in &[0.0f32, 0.7, 1.0, 1.5] {
                for &scale in &[0.5f64, 3.0, 12.0] {
                    for k in 0..8 {
                        let z: Vec<f32> = (0..v).map(|_| (rng.normal() * scale) as f32).collect();
                        let mut cpu_rng = Rng::derive(3, &[v as u64, k]);
                        let u = cpu_rng.clone().uniform();
                        let want = sample(&z, &params(temperature), &mut cpu_rng, &mut scratch);
                        let got = emulate_row(&z, u, temperature);
                        assert_eq!(got.token, want.token, "v {v} T {temperature} scale {scale} row {k}");
                        assert!((got.logprob - want.logprob).abs() <= 1e-5 * want.logprob.abs().max(1.0));
                        assert!((got.entropy - want.entropy).abs() <= 1e-5 * want.entropy.abs().max(1.0));
                        rows += 1;
                    }
                }
            }
        }
        assert_eq!(rows, 6 * 4 * 3 * 8);
    }

    /// Ties go to the first maximum, across chunk boundaries too, as on the CPU.
    #[test]
    fn greedy_ties_pick_the_first_maximum_across_chunks() {
        let v = 3 * BLOCK + 5;
        let mut z = vec![0.0f32; v];
        for &j in &[700usize, 9, 400] {
            z[j] = 2.0;
        }
        assert_eq!(emulate_row(&z, 0.0, 0.0).token, 9);
        let mut scratch = Vec::new();
        assert_eq!(sample(&z, &params(0.0), &mut Rng::new(1), &mut scratch).token, 9);
    }

    /// u just below 1 lands on the last token with mass, never past the vocabulary; a small u on
    /// the first token with mass, skipping the zero-probability ones before it.
    #[test]
    fn the_walk_never_leaves_the_vocabulary() {
        let mut z = vec![-1e30f32; 600];
        z[599] = 0.0;
        z[3] = 0.0;
        assert_eq!(emulate_row(&z, 1.0 - f64::EPSILON, 1.0).token, 599);
        assert_eq!(emulate_row(&z, 1e-12, 1.0).token, 3);
        let mut scratch = Vec::new();
        let mut r = Rng::new(0);
        for _ in 0..50 {
            let u = r.clone().uniform();
            let cpu = sample(&z, &params(1.0), &mut r, &mut scratch).token;
            assert_eq!(emulate_row(&z, u, 1.0).token, cpu);
            assert!(cpu == 3 || cpu == 599);
        }
    }
}
