//! Token sampling on the device (cuda/sample.cu): only the sampled ids, their behaviour
//! log-probabilities and entropies cross to the host, never the [rows × vocab] logits.
//!
//! The random draw stays on the host: each row's uniform comes from its sequence's own stream,
//! drawn exactly where the CPU sampler draws it (one per sampled token), so a GPU rollout makes the
//! same draws as the CPU engine and picks the same tokens wherever the logits agree. The kernel's
//! arithmetic is mirrored by [`emulate_row`] (and the top-k/top-p kernel's by
//! [`emulate_truncated_row`]), which the tests hold against the CPU sampler.

use crate::cuda::device::{drv, Arg, Gpu};
use crate::error::{Error, Result};
use crate::rollout::sampler::{Sampled, SamplingParams};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut};

/// Threads per row (the kernel's `SAMPLE_BLOCK`): row chunks are `ceil(V / BLOCK)` long.
pub const BLOCK: usize = 256;

/// The most candidates the truncated kernel keeps in shared memory (its `TRUNC_CAP`).
pub const TRUNC_CAP: usize = 2048;

/// The sampler's device buffers (uniforms in; ids, log-probs and entropies out, side by side in one
/// buffer of 32-bit words, [ids | log-prob bits | entropy bits] for a step's n rows, read back in
/// one copy), with room for as many rows as `uniforms` holds, grown on demand: a decode step
/// allocates nothing on the device.
pub struct SampleBufs {
    /// The uniforms [`sample_rows`] uploads (none until it runs: the decoder uploads its uniforms
    /// with the step's rows).
    uniforms: Option<CudaSlice<f64>>,
    out: CudaSlice<u32>,
}

impl SampleBufs {
    /// Buffers for the results of up to `rows` rows (more are grown into when asked for).
    pub fn new(gpu: &Gpu, rows: usize) -> Result<Self> {
        Ok(SampleBufs { uniforms: None, out: gpu.alloc(3 * rows.max(1), "the sampler's results")? })
    }

    /// Room for the results of `rows` rows.
    fn reserve(&mut self, gpu: &Gpu, rows: usize) -> Result<()> {
        if self.out.len() < 3 * rows {
            self.out = gpu.alloc(3 * rows, "the sampler's results")?;
        }
        Ok(())
    }

    /// A buffer of room for `rows` uniforms.
    fn uniforms(&mut self, gpu: &Gpu, rows: usize) -> Result<&mut CudaSlice<f64>> {
        let have = self.uniforms.as_ref().map_or(0, |u| u.len());
        if have < rows {
            self.uniforms = None;
            self.uniforms = Some(gpu.alloc(rows, "the sampler's uniforms")?);
        }
        Ok(self.uniforms.as_mut().expect("allocated above"))
    }
}

/// One token from each of the `n = uniforms.len()` rows of `logits` ([n, v] on the device) with
/// `params`' temperature (≤ 0: greedy, and `uniforms` are ignored), top-k and top-p, through the
/// buffers `bufs`.
pub fn sample_rows(
    gpu: &Gpu,
    logits: &CudaView<'_, f32>,
    v: usize,
    uniforms: &[f64],
    params: &SamplingParams,
    bufs: &mut SampleBufs,
) -> Result<Vec<Sampled>> {
    let n = uniforms.len();
    check_uniforms(uniforms, params)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let s = gpu.stream();
    let dev = bufs.uniforms(gpu, n)?;
    s.memcpy_htod(uniforms, &mut dev.slice_mut(0..n)).map_err(drv("upload"))?;
    let at = dev.device_ptr(s).0;
    sample_rows_at(gpu, logits, v, (at, n), params, bufs)
}

/// A sampling step's settings and draws: a finite temperature, every uniform in [0, 1).
pub(crate) fn check_uniforms(uniforms: &[f64], params: &SamplingParams) -> Result<()> {
    let (temperature, top_p) = (params.temperature, params.top_p);
    if !temperature.is_finite() || uniforms.iter().any(|u| !(0.0..1.0).contains(u)) {
        return Err(Error::Invalid(format!("sample rows: temperature {temperature} or a uniform outside [0, 1)")));
    }
    // (a NaN top_p would take the kernel's plain walk and the CPU's sorted one: other tokens)
    if top_p.is_nan() {
        return Err(Error::Invalid("sample rows: top_p is NaN".into()));
    }
    Ok(())
}

/// [`sample_rows`] with the `n` uniforms already on the device at `uniforms` (checked by
/// [`check_uniforms`]) for the first `n` rows of `logits`: the decoder uploads them with the
/// step's rows, in one copy.
pub(crate) fn sample_rows_at(
    gpu: &Gpu,
    logits: &CudaView<'_, f32>,
    v: usize,
    (uniforms, n): (u64, usize),
    params: &SamplingParams,
    bufs: &mut SampleBufs,
) -> Result<Vec<Sampled>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if v == 0 || logits.len() < n * v {
        return Err(Error::shape("sample rows", format!("{n} rows of {v} logits from a buffer of {}", logits.len())));
    }
    bufs.reserve(gpu, n)?;
    let s = gpu.stream();
    // ids at 0, log-probs at n, entropies at 2n (words)
    let (out, n64) = (bufs.out.device_ptr_mut(s).0, n as u64);
    let args = [
        Arg::P(gpu.pr(logits)),
        Arg::P(uniforms),
        Arg::F(params.temperature),
        Arg::P(out),
        Arg::P(out + 4 * n64),
        Arg::P(out + 8 * n64),
        Arg::I(n as i32),
        Arg::I(v as i32),
    ];
    if truncates(params) {
        let mut args = args.to_vec();
        args.splice(3..3, [Arg::I(params.top_k.min(i32::MAX as usize) as i32), Arg::F(params.top_p)]);
        gpu.launch("sample", "sample_truncated_f32", (n as u32, 1, 1), (BLOCK as u32, 1, 1), 0, &args)?;
    } else {
        gpu.launch("sample", "sample_rows_f32", (n as u32, 1, 1), (BLOCK as u32, 1, 1), 0, &args)?;
    }
    // one copy back: [ids | log-prob bits | entropy bits] of the n rows
    let mut words = vec![0u32; 3 * n];
    s.memcpy_dtoh(&bufs.out.slice(0..3 * n), &mut words[..]).map_err(drv("download"))?;
    gpu.sync()?;
    let row = |i: usize| Sampled {
        token: words[i],
        logprob: f32::from_bits(words[n + i]),
        entropy: f32::from_bits(words[2 * n + i]),
    };
    Ok((0..n).map(row).collect())
}

/// Whether `params` sample from a truncated distribution (top-k or top-p at a positive
/// temperature; greedy ignores them, as on the CPU).
pub fn truncates(params: &SamplingParams) -> bool {
    params.temperature > 0.0 && (params.top_k != 0 || params.top_p < 1.0)
}

/// `sample_truncated_f32` on the host, in the kernel's order (chunk sums in order, then the chunks
/// in order; the same two bisections over the 64-bit keys): top-k / top-p sampling at
/// temperature > 0 from the row's uniform `u`. `expf` is `f32::exp` here.
pub fn emulate_truncated_row(z: &[f32], u: f64, params: &SamplingParams) -> Sampled {
    let v = z.len();
    let t = if params.temperature > 0.0 { params.temperature } else { 1.0 };
    let chunk = v.div_ceil(BLOCK);
    let range = |c: usize| (c * chunk).min(v)..((c + 1) * chunk).min(v);
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let (mut total, mut total_sz) = (0.0f64, 0.0f64);
    for c in 0..BLOCK {
        let (mut s, mut sz) = (0.0f64, 0.0f64);
        for &x in &z[range(c)] {
            let sj = (x - m) / t;
            let w = sj.exp();
            s += w as f64;
            sz += w as f64 * sj as f64;
        }
        total += s;
        total_sz += sz;
    }
    let p = |j: usize| (((z[j] - m) / t).exp() as f64 / total) as f32;
    let key = |j: usize| ((p(j).to_bits() as u64) << 32) | (0xffff_ffff - j as u32) as u64;
    // the candidates a pass reads, in index order: the whole row, then (once the keys >= the
    // bisection's lower bound number at most TRUNC_CAP) those keys only, as the kernel's shared
    // memory holds them
    let mut cands: Vec<(u64, f32)> = (0..v).map(|j| (key(j), p(j))).collect();
    let mut compact = false;
    // C(t) and M(t): per thread's chunk of ceil(count / BLOCK) candidates in order, then the
    // threads in order
    let count_mass = |cands: &[(u64, f32)], at: u64| {
        let per = cands.len().div_ceil(BLOCK);
        let (mut count, mut mass) = (0u64, 0.0f64);
        for c in 0..BLOCK {
            let r = (c * per).min(cands.len())..((c + 1) * per).min(cands.len());
            let (mut n, mut a) = (0u64, 0.0f64);
            for &(_, pk) in cands[r].iter().filter(|(k, _)| *k >= at) {
                n += 1;
                a += pk as f64;
            }
            count += n;
            mass += a;
        }
        (count, mass)
    };
    let keep = |cands: &mut Vec<(u64, f32)>, compact: &mut bool, bound: u64| {
        cands.retain(|(k, _)| *k >= bound);
        *compact = true;
    };
    // the largest t >= lo where `ok(C(t), M(t))` holds (it holds at lo), compacting as the kernel
    let bisect = |cands: &mut Vec<(u64, f32)>, compact: &mut bool, mut lo: u64, ok: &dyn Fn(u64, f64) -> bool| {
        let mut hi = u64::MAX;
        while lo < hi {
            let d = hi - lo;
            let mid = lo + (d >> 1) + (d & 1);
            let (c, a) = count_mass(cands, mid);
            if ok(c, a) {
                lo = mid;
                if !*compact && c <= TRUNC_CAP as u64 {
                    keep(cands, compact, lo);
                }
            } else {
                hi = mid - 1;
            }
        }
        lo
    };
    let keep_k = if params.top_k > 0 { params.top_k.min(v) as u64 } else { v as u64 };
    let target_p = if params.top_p < 1.0 { params.top_p as f64 } else { f64::INFINITY };
    if v <= TRUNC_CAP {
        keep(&mut cands, &mut compact, 0);
    }
    // (every kept set holds one token at least: top_p <= 0 keeps the most likely token, and u = 0
    // picks it, as on the CPU)
    // a bound moved up to the smallest candidate key >= it, the key it stands for (the passes before
    // and after the copy sum the mass in different groupings, which may differ in the last bit; a
    // bisection may then stop between two keys)
    let snap = |cands: &[(u64, f32)], bound: u64| cands.iter().map(|c| c.0).filter(|&k| k >= bound).min();
    let t_keep = bisect(&mut cands, &mut compact, 0, &|c, a| c >= 1 && (c >= keep_k || a >= target_p));
    let t_keep = snap(&cands, t_keep).unwrap_or(u64::MAX);
    let target = u * count_mass(&cands, t_keep).1;
    let t_pick = bisect(&mut cands, &mut compact, t_keep, &|c, a| c >= 1 && a >= target);
    let t_pick = snap(&cands, t_pick).unwrap_or(u64::MAX);
    let pick = 0xffff_ffff - (t_pick & 0xffff_ffff) as u32;
    let log_s = total.ln();
    Sampled {
        token: pick,
        logprob: (((z[pick as usize] - m) / t) as f64 - log_s) as f32,
        entropy: (log_s - total_sz / total) as f32,
    }
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

    /// Settings the kernel and the CPU would read differently are refused before a launch.
    #[test]
    fn settings_outside_the_samplers_domain_are_refused() {
        assert!(check_uniforms(&[0.5], &params(1.0)).is_ok());
        assert!(check_uniforms(&[0.5], &params(f32::NAN)).is_err());
        assert!(check_uniforms(&[1.0], &params(1.0)).is_err());
        let nan_p = SamplingParams { top_p: f32::NAN, ..params(1.0) };
        let err = check_uniforms(&[0.5], &nan_p).unwrap_err().to_string();
        assert!(err.contains("top_p"), "{err}");
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

    /// The truncated kernel's bisections keep the CPU's set (top-k, then the shortest prefix reaching
    /// top-p, in p-descending order) and draw its token from the same uniform, on vocabularies
    /// smaller and larger than the block, peaked and flat rows, with the log-prob and entropy of
    /// the full distribution.
    #[test]
    fn the_truncated_kernel_arithmetic_picks_the_cpu_samplers_tokens() {
        use crate::rollout::sampler::sample_with_uniform;
        let mut rng = Rng::new(23);
        let mut scratch = Vec::new();
        let mut rows = 0;
        let settings = [(1.0f32, 5usize, 1.0f32), (1.0, 0, 0.9), (0.7, 50, 0.5), (1.3, 1, 1.0)];
        for &v in &[13usize, 300, 1000, 4099] {
            for &(temperature, top_k, top_p) in &settings {
                for &scale in &[0.5f64, 3.0] {
                    for _ in 0..4 {
                        let z: Vec<f32> = (0..v).map(|_| (rng.normal() * scale) as f32).collect();
                        let u = rng.uniform();
                        let p = SamplingParams { temperature, top_p, top_k, max_new_tokens: 1 };
                        assert!(truncates(&p));
                        let want = sample_with_uniform(&z, &p, u, &mut scratch);
                        let got = emulate_truncated_row(&z, u, &p);
                        let what = format!("v {v} T {temperature} k {top_k} p {top_p} scale {scale}");
                        assert_eq!(got.token, want.token, "{what}");
                        assert!((got.logprob - want.logprob).abs() <= 1e-5 * want.logprob.abs().max(1.0), "{what}");
                        assert!((got.entropy - want.entropy).abs() <= 1e-5 * want.entropy.abs().max(1.0), "{what}");
                        rows += 1;
                    }
                }
            }
        }
        assert_eq!(rows, 4 * 4 * 2 * 4);
        // top-k = 1 is greedy; tied probabilities keep the lower index first, as the CPU's sort
        let z = [0.0f32, 2.0, 2.0, 1.0];
        let p = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 1, max_new_tokens: 1 };
        assert_eq!(emulate_truncated_row(&z, 0.99, &p).token, 1);
        let p2 = SamplingParams { top_k: 2, ..p };
        for u in [0.1, 0.49, 0.51, 0.9] {
            assert_eq!(emulate_truncated_row(&z, u, &p2).token, sample_with_uniform(&z, &p2, u, &mut scratch).token);
        }
        // the edges: top-p 0 keeps the most likely token, and a uniform of exactly 0 picks the
        // most likely kept token (a kept set is never empty), as on the CPU
        let z = [0.5f32, -1.0, 3.0, 2.5, 0.0];
        for (top_p, top_k, u) in [(0.0f32, 0usize, 0.7f64), (-1.0, 3, 0.2), (0.9, 0, 0.0), (1.0, 2, 0.0)] {
            let p = SamplingParams { temperature: 1.0, top_p, top_k, max_new_tokens: 1 };
            let want = sample_with_uniform(&z, &p, u, &mut scratch);
            assert_eq!(want.token, 2, "CPU, top-p {top_p} top-k {top_k} u {u}");
            let got = emulate_truncated_row(&z, u, &p);
            assert_eq!(got.token, 2, "kernel, top-p {top_p} top-k {top_k} u {u}");
            assert!((got.logprob - want.logprob).abs() <= 1e-5, "top-p {top_p} top-k {top_k} u {u}");
        }
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
