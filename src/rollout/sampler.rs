//! Token sampling: temperature, top-k, top-p (nucleus), greedy at temperature 0.
//!
//! The recorded behaviour log-probability and entropy are those of the temperature-scaled full
//! distribution softmax(z / T) (T = 1 when greedy), before top-k/top-p truncation: the
//! distribution μ the token was drawn from (up to the truncation), which the decoupled PPO weight
//! π_prox/μ compares against the trainer's temperature-1 log-probs (so at T ≠ 1 the weight also
//! corrects for the temperature).
//!
//! With both top-k and top-p, top-p's mass is the full distribution's, summed over the top-k
//! tokens in order (not renormalised over them first, as some libraries do): a top-k set whose
//! mass is below `top_p` is kept whole. The device sampler (cuda/sample.cu) does the same.

use crate::rng::Rng;
use crate::tensor::cpu::simd::{self, simd_kernel};
use serde::{Deserialize, Serialize};

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of top tokens whose probability reaches `top_p` (1 = off).
    #[serde(default = "one")]
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (0 = off).
    #[serde(default)]
    pub top_k: usize,
    /// Generation stops after this many new tokens.
    pub max_new_tokens: usize,
}

fn one() -> f32 {
    1.0
}

/// A sampled token with its behaviour log-probability and the entropy of the distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    pub entropy: f32,
}

thread_local! {
    /// exp((z_i − max)/T) of the last call's logits, computed once and read again by the draw.
    static WEIGHTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Partial sums of the normaliser (independent chains, so the f64 additions overlap).
const CHAINS: usize = 4;

simd_kernel! {
    /// w_i = e^(s_i) with s_i = (z_i − m)/t, in f32 through the vectorised `exp` (relative error
    /// ~1e−7); returns Σ w_i and Σ w_i·s_i accumulated in f64.
    fn weights(w: &mut [f32], z: &[f32], m: f32, t: f32) -> (f64, f64) {
        for (e, &x) in w.iter_mut().zip(z) {
            *e = simd::exp((x - m) / t);
        }
        let (mut sum, mut sz) = ([0.0f64; CHAINS], [0.0f64; CHAINS]);
        let body = z.len() - z.len() % CHAINS;
        for (ws, zs) in w[..body].chunks_exact(CHAINS).zip(z[..body].chunks_exact(CHAINS)) {
            for c in 0..CHAINS {
                let e = ws[c] as f64;
                sum[c] += e;
                sz[c] += e * ((zs[c] - m) / t) as f64;
            }
        }
        for (&e, &x) in w[body..].iter().zip(&z[body..]) {
            sum[0] += e as f64;
            sz[0] += e as f64 * ((x - m) / t) as f64;
        }
        (sum.iter().sum(), sz.iter().sum())
    }
}

/// Sample from logits z (`[V]`). `scratch` is reused between calls (no allocation once grown).
/// Draws one uniform from `rng` when the temperature is positive, none when greedy.
pub fn sample(z: &[f32], params: &SamplingParams, rng: &mut Rng, scratch: &mut Vec<(f32, u32)>) -> Sampled {
    let u = if params.temperature > 0.0 { rng.uniform() } else { 0.0 };
    sample_with_uniform(z, params, u, scratch)
}

/// [`sample`] with its uniform `u` in [0, 1) drawn by the caller (unused when greedy): the GPU
/// generation loop draws each row's uniform from the request's stream, as [`sample`] would.
pub fn sample_with_uniform(z: &[f32], params: &SamplingParams, u: f64, scratch: &mut Vec<(f32, u32)>) -> Sampled {
    WEIGHTS.with_borrow_mut(|w| sample_with(z, params, u, scratch, w))
}

fn sample_with(z: &[f32], params: &SamplingParams, u: f64, scratch: &mut Vec<(f32, u32)>, w: &mut Vec<f32>) -> Sampled {
    let t = if params.temperature > 0.0 { params.temperature } else { 1.0 };
    let m = simd::max(z);
    w.resize(z.len(), 0.0);
    let (sum, sz) = weights(w, z, m, t);
    let log_z = sum.ln();
    let entropy = (log_z - sz / sum) as f32;
    let logprob_of = |tok: usize| (((z[tok] - m) / t) as f64 - log_z) as f32;
    let token = if params.temperature <= 0.0 {
        // greedy: first maximum (deterministic tie-break)
        z.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
    } else if params.top_k == 0 && params.top_p >= 1.0 {
        let mut u = u * sum;
        let mut pick = z.len() - 1;
        for (i, &e) in w.iter().enumerate() {
            u -= e as f64;
            if u <= 0.0 {
                pick = i;
                break;
            }
        }
        pick
    } else {
        scratch.clear();
        scratch.extend(w.iter().enumerate().map(|(i, &e)| ((e as f64 / sum) as f32, i as u32)));
        scratch.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut keep = if params.top_k > 0 { params.top_k.min(scratch.len()) } else { scratch.len() };
        if params.top_p < 1.0 {
            let mut acc = 0.0f32;
            for (i, (p, _)) in scratch[..keep].iter().enumerate() {
                acc += p;
                if acc >= params.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let mass: f32 = scratch[..keep].iter().map(|x| x.0).sum();
        let mut u = u as f32 * mass;
        let mut pick = scratch[keep - 1].1;
        for &(p, i) in &scratch[..keep] {
            u -= p;
            if u <= 0.0 {
                pick = i;
                break;
            }
        }
        pick as usize
    };
    Sampled { token: token as u32, logprob: logprob_of(token), entropy }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize) -> SamplingParams {
        SamplingParams { temperature, top_p, top_k, max_new_tokens: 1 }
    }

    #[test]
    fn greedy_picks_argmax_with_exact_logprob() {
        let z = [0.5f32, 2.0, -1.0, 2.0];
        let s = sample(&z, &params(0.0, 1.0, 0), &mut Rng::new(1), &mut Vec::new());
        assert_eq!(s.token, 1);
        let lse = z.iter().map(|x| (*x as f64).exp()).sum::<f64>().ln();
        assert!((s.logprob as f64 - (2.0 - lse)).abs() < 1e-6);
    }

    #[test]
    fn empirical_frequencies_follow_the_distribution_and_truncation() {
        let z = [1.0f32, 0.0, -1.0, 0.5];
        let p: Vec<f64> = {
            let e: Vec<f64> = z.iter().map(|x| (*x as f64).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|x| x / s).collect()
        };
        let mut rng = Rng::new(7);
        let mut counts = [0usize; 4];
        let n = 40_000;
        for _ in 0..n {
            counts[sample(&z, &params(1.0, 1.0, 0), &mut rng, &mut Vec::new()).token as usize] += 1;
        }
        for i in 0..4 {
            assert!((counts[i] as f64 / n as f64 - p[i]).abs() < 0.01, "token {i}: {counts:?} vs {p:?}");
        }
        // top-k 2 keeps tokens 0 and 3 only; top-p 0.5 keeps token 0 only (p0 ≈ 0.43 < 0.5 → adds 3)
        let mut scratch = Vec::new();
        for _ in 0..2000 {
            let t = sample(&z, &params(1.0, 1.0, 2), &mut rng, &mut scratch).token;
            assert!(t == 0 || t == 3);
            let t = sample(&z, &params(1.0, 0.3, 0), &mut rng, &mut scratch).token;
            assert_eq!(t, 0);
        }
    }
}
