//! AdamW (decoupled weight decay, Loshchilov & Hutter) and global-norm gradient clipping, on flat
//! f32 buffers, matching `torch.optim.AdamW` and `torch.nn.utils.clip_grad_norm_`.

use crate::model::params::ParamLayout;
/// The global gradient norm lives with the other reductions of the ops layer (the model needs it
/// too); re-exported so `train::grad_norm` keeps its path.
pub use crate::tensor::cpu::reduce::grad_norm;
use crate::tensor::cpu::simd::simd_kernel;
use rayon::prelude::*;

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// Optimizer state: first and second moments, step count, and which elements decay. It updates
/// the elements `offset..offset + m.len()` of the parameter buffer: all of them, or one data-
/// parallel rank's shard ([`AdamW::shard`]: `[parallel] shard_optimizer`, ZeRO stage 1).
#[derive(Debug, Clone)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    /// The moments of the elements the optimizer updates (`m[i]` is element `offset + i`'s).
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Steps taken so far (t in the bias corrections).
    pub t: u64,
    /// Element ranges of the parameter buffer with their decay flag, in buffer order (within
    /// `offset..offset + m.len()`).
    segments: Vec<(std::ops::Range<usize>, bool)>,
    offset: usize,
}

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

impl AdamW {
    /// State for a model layout: matrices decay, norms and biases do not.
    pub fn for_layout(cfg: AdamWConfig, layout: &ParamLayout) -> Self {
        let segments = layout.specs.iter().map(|s| (s.range(), s.decay)).collect();
        Self::with_segments(cfg, layout.total(), segments)
    }

    /// State for `n` elements split into (range, decays) segments covering 0..n.
    pub fn with_segments(cfg: AdamWConfig, n: usize, segments: Vec<(std::ops::Range<usize>, bool)>) -> Self {
        AdamW { cfg, m: vec![0.0; n], v: vec![0.0; n], t: 0, segments, offset: 0 }
    }

    /// The parameter elements this optimizer updates.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.m.len()
    }

    /// Whether it updates only part of the buffer (see [`AdamW::shard`]).
    pub fn is_shard(&self, total: usize) -> bool {
        self.range() != (0..total)
    }

    /// This optimizer restricted to `range` of the elements it updates: their moments, step
    /// count and decay segments (a data-parallel rank's shard; the moments of a whole optimizer
    /// loaded from a checkpoint are cut to the rank's).
    pub fn shard(self, range: std::ops::Range<usize>) -> AdamW {
        let own = self.range();
        assert!(own.start <= range.start && range.end <= own.end, "AdamW::shard: {range:?} outside {own:?}");
        let local = range.start - self.offset..range.end - self.offset;
        let segments = self
            .segments
            .iter()
            .map(|(r, d)| (r.start.max(range.start)..r.end.min(range.end), *d))
            .filter(|(r, _)| !r.is_empty())
            .collect();
        AdamW {
            cfg: self.cfg,
            m: self.m[local.clone()].to_vec(),
            v: self.v[local].to_vec(),
            t: self.t,
            segments,
            offset: range.start,
        }
    }

    /// The (range, decays) segments, in buffer order.
    pub fn segments(&self) -> &[(std::ops::Range<usize>, bool)] {
        &self.segments
    }

    /// One update with learning rate `lr`:
    /// p ← p·(1 − lr·λ); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
    /// p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.step_scaled(params, grads, lr, 1.0);
    }

    /// The update's per-step factors after step `t` (counted from 1) at learning rate `lr`:
    /// (lr / (1 − β1ᵗ), 1 / √(1 − β2ᵗ)), the bias corrections in f64 and each factor rounded to
    /// f32 once. Every device computes them here, so that its update is this one's arithmetic.
    pub fn step_factors(cfg: AdamWConfig, t: u64, lr: f32) -> (f32, f32) {
        let bc1 = 1.0 - (cfg.beta1 as f64).powi(t as i32);
        let bc2 = 1.0 - (cfg.beta2 as f64).powi(t as i32);
        ((lr as f64 / bc1) as f32, (1.0 / bc2.sqrt()) as f32)
    }

    /// The weight factor 1 − lr·λ of a segment that decays (1 for one that does not), in f32.
    pub fn decay_factor(cfg: AdamWConfig, lr: f32, decays: bool) -> f32 {
        if decays {
            1.0 - lr * cfg.weight_decay
        } else {
            1.0
        }
    }

    /// `step` with the gradient multiplied by `grad_scale` on the fly (fuses gradient clipping:
    /// pass `clip_coefficient(norm, max_norm)` instead of rescaling the buffer first).
    pub fn step_scaled(&mut self, params: &mut [f32], grads: &[f32], lr: f32, grad_scale: f32) {
        assert!(self.range().end <= params.len(), "AdamW: parameter count changed");
        assert_eq!(grads.len(), params.len(), "AdamW: gradient count differs from parameters");
        let o = self.offset;
        self.t += 1;
        let c = self.cfg;
        let (step_size, inv_sqrt_bc2) = Self::step_factors(c, self.t, lr);
        let hp =
            StepConsts { beta1: c.beta1, beta2: c.beta2, eps: c.eps, step_size, inv_sqrt_bc2, grad_scale, decay: 1.0 };
        for (range, decays) in &self.segments {
            let hp = StepConsts { decay: Self::decay_factor(c, lr, *decays), ..hp };
            let r = range.clone();
            params[r.clone()]
                .par_chunks_mut(CHUNK)
                .zip(grads[r.clone()].par_chunks(CHUNK))
                .zip(self.m[r.start - o..r.end - o].par_chunks_mut(CHUNK))
                .zip(self.v[r.start - o..r.end - o].par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| adamw_update(p, g, m, v, hp));
        }
    }
}

/// Per-step constants of the AdamW update.
#[derive(Clone, Copy)]
struct StepConsts {
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    grad_scale: f32,
    decay: f32,
}

simd_kernel! {
    /// The AdamW update on one chunk.
    fn adamw_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: StepConsts) -> () {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * k.grad_scale;
            *m = k.beta1 * *m + (1.0 - k.beta1) * g;
            *v = k.beta2 * *v + (1.0 - k.beta2) * g * g;
            let denom = v.sqrt() * k.inv_sqrt_bc2 + k.eps;
            *p = *p * k.decay - k.step_size * *m / denom;
        }
    }
}

/// The optimizer half of a training step: global gradient norm, clip to `max_norm` (0 = no
/// clipping) fused into the AdamW update at learning rate `lr`. Returns the pre-clip norm. A
/// non-finite norm (a NaN or inf anywhere in the gradients) skips the update: the weights, the
/// moments and AdamW's step count stay as they were, and the caller sees the norm (see
/// [`crate::train::guard`]).
pub fn clip_and_step(opt: &mut AdamW, params: &mut [f32], grads: &[f32], lr: f32, max_norm: f32) -> f32 {
    let norm = grad_norm(grads);
    if !norm.is_finite() {
        return norm;
    }
    let scale = if max_norm > 0.0 { clip_coefficient(norm, max_norm) } else { 1.0 };
    opt.step_scaled(params, grads, lr, scale);
    norm
}

/// [`clip_and_step`] on a model's own gradients: the clipping norm is the whole model's, summed
/// over its tensor-parallel group when it is a shard. Returns the norm before clipping; a
/// non-finite norm skips the update, as in [`clip_and_step`] (every rank of the group sees the
/// same norm, so all skip together).
pub fn clip_and_step_model(
    opt: &mut AdamW,
    model: &mut crate::model::Model,
    grads: &[f32],
    lr: f32,
    max_norm: f32,
) -> crate::error::Result<f32> {
    let norm = model.grad_norm(grads)?;
    if !norm.is_finite() {
        return Ok(norm);
    }
    let scale = if max_norm > 0.0 { clip_coefficient(norm, max_norm) } else { 1.0 };
    opt.step_scaled(&mut model.params.data, grads, lr, scale);
    Ok(norm)
}

/// PyTorch's clipping coefficient: min(1, max_norm / (norm + 1e-6)).
pub fn clip_coefficient(norm: f32, max_norm: f32) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// Scale gradients so their global norm is at most `max_norm` (PyTorch's rule: coefficient
/// max_norm / (norm + 1e-6), applied only when below 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = grad_norm(grads);
    let coef = clip_coefficient(norm, max_norm);
    if coef < 1.0 {
        grads.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= coef));
    }
    norm
}
