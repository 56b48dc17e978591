//! Value models for PPO with GAE and AsyPPO's mini-critics (ALGORITHMS.md §5–6).
//!
//! A critic is the same decoder trunk as the policy (any size) with a scalar value head
//! V = lnf · w + b in place of the LM head; V(s_t) is read at the position whose next token is
//! response token t. Each critic has its own AdamW and trains on its disjoint subset of every
//! prompt's responses (response i → critic i mod M) with loss 0.5·(V − R)² (optionally clipped
//! around the values the step started with), token-mean over the critic's tokens of the global
//! batch (data-parallel ranks all-reduce the count and the gradients).

use crate::error::{Error, Result};
use crate::model::init::init_params;
use crate::model::micro_batch::MicroBatch;
use crate::model::{Batch, Model, Workspace};
use crate::parallel::Comm;
use crate::train::engine::Engine;
use crate::train::rl::Sample;
use crate::train::{grad_norm, AdamW, AdamWConfig};
use std::path::Path;

pub use crate::config::CriticConfig;

/// One value model with its optimizer state. The trunk computes on its [`Engine`] (the run's
/// device: on "cuda" its weights, gradients and moments live on the GPU, and `model`/`opt` are
/// refreshed by [`Critic::sync_host`]); the value head (C + 1 numbers) and its optimizer stay on
/// the host, and its products run on the engine's device (only values and their gradients cross).
pub struct Critic {
    pub model: Model,
    /// Value head: w `[C]` then the bias.
    pub head: Vec<f32>,
    pub opt: AdamW,
    pub head_opt: AdamW,
    pub engine: Engine,
    ws: Workspace,
    batch: Batch,
    /// Samples and positions per forward (`rl.micro_batch`, `rl.micro_batch_tokens`): bounds the
    /// workspace, which on a GPU is device memory held for the run.
    micro: MicroBatch,
}

/// What a critic's update regresses toward.
#[derive(Debug, Clone, Copy)]
pub struct ValueTargets<'a> {
    /// Return R_t per response token (concatenated over the samples).
    pub returns: &'a [f32],
    /// The critic's values at the step's start, per token (the clip's centre).
    pub old: &'a [f32],
    /// Response tokens over all data-parallel ranks (the token-mean's denominator).
    pub tokens_total: f64,
}

/// Pack samples' prompt+response; returns the positions of V(s_t) of every response token.
fn pack(samples: &[&Sample], batch: &mut Batch) -> Result<Vec<usize>> {
    batch.clear();
    let mut pos = Vec::new();
    let mut seq = Vec::new();
    for s in samples {
        if s.prompt.is_empty() {
            return Err(Error::Invalid("critic: a sample has an empty prompt".into()));
        }
        seq.clear();
        seq.extend_from_slice(&s.prompt);
        seq.extend_from_slice(&s.response);
        let base = batch.len() + s.prompt.len() - 1;
        batch.push_lm(&seq, 0)?;
        pos.extend(base..base + s.response.len());
    }
    Ok(pos)
}

impl Critic {
    /// Critic `index` for a policy: fresh weights seeded from (seed, index), or the policy's
    /// embeddings and lower layers; the value head starts at zero (V = 0).
    pub fn new(cc: &CriticConfig, policy: &Model, index: usize, seed: u64, init_std: f64) -> Result<Self> {
        let mc = cc.model_config(policy.full_config())?;
        let mut params = init_params(&mc, seed ^ (0xC217_1C00 + index as u64), init_std);
        if cc.init_from_policy {
            let full = policy.gather(&policy.params.data)?;
            for spec in params.layout.specs.clone() {
                match full.layout.get(&spec.name) {
                    Some(p) if p.shape == spec.shape => {
                        let src = full.data[p.range()].to_vec();
                        params.data[spec.range()].copy_from_slice(&src);
                    }
                    Some(_) => {
                        return Err(Error::Invalid(format!(
                            "critic.init_from_policy: {} has another shape in the critic; drop the width overrides",
                            spec.name
                        )))
                    }
                    None => {}
                }
            }
        }
        let model = Model::new(mc.clone(), params)?;
        let adam = AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() };
        let opt = AdamW::for_layout(adam, &model.params.layout);
        let head_opt = AdamW::with_segments(adam, mc.hidden_size + 1, vec![(0..mc.hidden_size + 1, false)]);
        let ws = Workspace::new(&mc, 0);
        let head = vec![0.0; mc.hidden_size + 1];
        Ok(Critic {
            model,
            head,
            opt,
            head_opt,
            engine: Engine::cpu(),
            ws,
            batch: Batch::new(),
            micro: MicroBatch::default(),
        })
    }

    /// Move the trunk to the device of `policy` (the policy's engine); its gradients are summed
    /// over the policy's data-parallel group.
    pub fn on_device_of(mut self, policy: &Engine) -> Result<Self> {
        self.engine = policy.sibling(&self.model)?;
        self.engine.load(&self.model, &self.opt)?;
        Ok(self)
    }

    /// Bring the trunk's weights and moments to the host (before a checkpoint).
    pub fn sync_host(&mut self) -> Result<()> {
        self.engine.sync_host(&mut self.model, &mut self.opt)
    }

    /// Run forwards (and the update's backwards) on at most `micro` at a time.
    pub fn with_micro_batch(mut self, micro: MicroBatch) -> Self {
        self.micro = micro;
        self
    }

    /// The chunks of `samples` one forward takes.
    fn chunks<'s>(&self, samples: &'s [&'s Sample]) -> impl Iterator<Item = &'s [&'s Sample]> {
        self.micro.chunks(samples, |s| s.prompt.len() + s.response.len())
    }

    /// V(s_t) of every response token of `samples`, concatenated in order.
    pub fn values(&mut self, samples: &[&Sample]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for chunk in self.chunks(samples) {
            let pos = pack(chunk, &mut self.batch)?;
            if self.batch.is_empty() {
                continue;
            }
            let v = self.engine.trunk_values(&self.model, &self.batch, &mut self.ws, &self.head)?;
            out.extend(pos.iter().map(|&i| v[i]));
        }
        Ok(out)
    }

    /// One update on `samples` toward `t.returns` (per response token, concatenated); `t.old`
    /// are the values at the step's start (for the clip). Token-mean over `t.tokens_total` tokens
    /// (all ranks); gradients all-reduced over `dp`. Returns this rank's summed loss.
    pub fn train(
        &mut self,
        samples: &[&Sample],
        t: ValueTargets,
        clip: f32,
        lr: f32,
        dp: &dyn Comm,
        bucket_bytes: usize,
    ) -> Result<f64> {
        let ValueTargets { returns, old, tokens_total } = t;
        let tokens: usize = samples.iter().map(|s| s.response.len()).sum();
        if returns.len() != tokens || old.len() != tokens {
            let why = format!("{} returns and {} old values for {tokens} response tokens", returns.len(), old.len());
            return Err(Error::shape("critic update", why));
        }
        let c = self.model.cfg.hidden_size;
        self.engine.zero_grads(&self.model)?;
        let mut head_grads = vec![0.0f32; c + 1];
        let mut loss = 0.0f64;
        // the token-mean's terms, chunk by chunk in token order (j counts the tokens so far)
        let mut j0 = 0;
        for chunk in self.chunks(samples) {
            let pos = pack(chunk, &mut self.batch)?;
            let values = self.engine.trunk_values(&self.model, &self.batch, &mut self.ws, &self.head)?;
            let scale = 1.0 / tokens_total.max(1.0);
            let mut dvs = Vec::with_capacity(pos.len());
            for (jj, &i) in pos.iter().enumerate() {
                let j = j0 + jj;
                let v = values[i];
                let (r, o) = (returns[j] as f64, old[j] as f64);
                let plain = 0.5 * (v as f64 - r).powi(2);
                let mut dv = (v as f64 - r) * scale;
                let mut l = plain;
                if clip > 0.0 {
                    let vc = o + (v as f64 - o).clamp(-(clip as f64), clip as f64);
                    let clipped = 0.5 * (vc - r).powi(2);
                    if clipped > plain {
                        l = clipped;
                        // the clamp has zero slope outside [o − ε, o + ε]
                        dv = if (v as f64 - o).abs() < clip as f64 { (vc - r) * scale } else { 0.0 };
                    }
                }
                loss += l * scale;
                dvs.push(dv as f32);
            }
            j0 += pos.len();
            let dv = (&pos[..], &dvs[..]);
            self.engine.accumulate_trunk_head(
                &self.model,
                &self.batch,
                &mut self.ws,
                &self.head,
                dv,
                &mut head_grads,
            )?;
        }
        self.engine.reduce_grads(dp, bucket_bytes)?;
        dp.all_reduce_sum_f32(&mut head_grads)?;
        // a non-finite loss or gradient skips the critic's update (its weights never take a NaN):
        // the engine's step skips on a non-finite trunk norm and says so by returning it
        if loss.is_finite() && grad_norm(&head_grads).is_finite() {
            let trunk = self.engine.step(&mut self.opt, &mut self.model, lr, 0.0, dp)?;
            if trunk.is_finite() {
                self.head_opt.step(&mut self.head, &head_grads, lr);
            }
        }
        Ok(loss)
    }

    /// Write weights, head and both optimizers' state to `path` (one safetensors file).
    pub fn save(&self, path: &Path) -> Result<()> {
        let t = [self.opt.t as f32, self.head_opt.t as f32];
        let tensors: [(&str, &[f32]); 7] = [
            ("params", &self.model.params.data),
            ("head", &self.head),
            ("exp_avg", &self.opt.m),
            ("exp_avg_sq", &self.opt.v),
            ("head_exp_avg", &self.head_opt.m),
            ("head_exp_avg_sq", &self.head_opt.v),
            ("adam_t", &t),
        ];
        let mut views = Vec::new();
        for (name, data) in tensors {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![data.len()],
                bytemuck::cast_slice(data),
            )
            .map_err(|e| Error::Invalid(format!("critic state: {e}")))?;
            views.push((name, view));
        }
        let bytes = safetensors::serialize(views, None).map_err(|e| Error::format(path, e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Restore what [`Critic::save`] wrote (the configuration must match).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, e.to_string()))?;
        let read = |name: &str, want: usize| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|e| Error::Checkpoint {
                file: path.into(),
                tensor: name.into(),
                msg: e.to_string(),
            })?;
            let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            if v.len() != want {
                return Err(Error::Checkpoint {
                    file: path.into(),
                    tensor: name.into(),
                    msg: format!("{} values, the [critic] config needs {want}", v.len()),
                });
            }
            Ok(v)
        };
        let (n, h) = (self.model.params.data.len(), self.head.len());
        self.model.params.data = read("params", n)?;
        self.head = read("head", h)?;
        self.opt.m = read("exp_avg", n)?;
        self.opt.v = read("exp_avg_sq", n)?;
        self.head_opt.m = read("head_exp_avg", h)?;
        self.head_opt.v = read("head_exp_avg_sq", h)?;
        let t = read("adam_t", 2)?;
        (self.opt.t, self.head_opt.t) = (t[0] as u64, t[1] as u64);
        self.engine.load(&self.model, &self.opt)
    }
}
