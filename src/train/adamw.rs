//! AdamW (decoupled weight decay, Loshchilov & Hutter) and global-norm gradient clipping, on flat
//! f32 buffers, matching `torch.optim.AdamW` and `torch.nn.utils.clip_grad_norm_`.

use crate::model::params::ParamLayout;
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

/// Optimizer state: first and second moments, step count, and which elements decay.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Steps taken so far (t in the bias corrections).
    pub t: u64,
    /// Element ranges with their decay flag, in buffer order.
    segments: Vec<(std::ops::Range<usize>, bool)>,
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
        AdamW { cfg, m: vec![0.0; n], v: vec![0.0; n], t: 0, segments }
    }

    /// One update with learning rate `lr`:
    /// p ← p·(1 − lr·λ); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
    /// p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        assert_eq!(params.len(), self.m.len(), "AdamW: parameter count changed");
        assert_eq!(grads.len(), self.m.len(), "AdamW: gradient count differs from parameters");
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - (c.beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (c.beta2 as f64).powi(self.t as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        for (range, decays) in &self.segments {
            let decay = if *decays { 1.0 - lr * c.weight_decay } else { 1.0 };
            let r = range.clone();
            params[r.clone()]
                .par_chunks_mut(CHUNK)
                .zip(grads[r.clone()].par_chunks(CHUNK))
                .zip(self.m[r.clone()].par_chunks_mut(CHUNK))
                .zip(self.v[r].par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    for i in 0..p.len() {
                        let gi = g[i];
                        m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * gi;
                        v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * gi * gi;
                        let denom = v[i].sqrt() * inv_sqrt_bc2 + c.eps;
                        p[i] = p[i] * decay - step_size * m[i] / denom;
                    }
                });
        }
    }
}

/// Global L2 norm of a gradient buffer (accumulated in f64).
pub fn grad_norm(grads: &[f32]) -> f32 {
    grads.par_chunks(CHUNK).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).sum::<f64>().sqrt() as f32
}

/// Scale gradients so their global norm is at most `max_norm` (PyTorch's rule: coefficient
/// max_norm / (norm + 1e-6), applied only when below 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = grad_norm(grads);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        grads.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= coef));
    }
    norm
}
