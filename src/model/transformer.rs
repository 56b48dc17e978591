//! The model: forward and backward of the whole decoder, layer by layer (llm.c style: each
//! block's forward next to its backward, every buffer preallocated in a `Workspace`).
//!
//! Shapes: N tokens (packed), C hidden, I intermediate, H heads, KV kv heads, D head dim, V vocab.

use crate::attention::{AttnSaved, AttnShape};
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::config::ModelConfig;
use crate::model::head::{head_backward, head_forward, HeadGrad};
use crate::model::params::{ParamLayout, Params};
use crate::model::shard::{gather_params, shard_config, shard_params, TensorParallel};
use crate::model::workspace::Workspace;
use crate::parallel::{Comm, TpGroup};
use crate::tensor::cpu::matmul_nt;
use crate::tensor::cpu::ops::RopeTable;
use crate::tensor::{Backend, Cpu};

/// A decoder-only transformer: configuration, f32 master weights and the RoPE tables. Under
/// tensor parallelism `cfg` and `params` are this rank's shard (see [`crate::model::shard`]) and
/// `tp` holds the group and the full configuration.
#[derive(Debug, Clone)]
pub struct Model {
    pub cfg: ModelConfig,
    pub params: Params,
    pub rope: RopeTable,
    pub tp: Option<TensorParallel>,
}

impl Model {
    /// Wrap parameters (their layout must be the config's).
    pub fn new(cfg: ModelConfig, params: Params) -> Result<Self> {
        let expected = ParamLayout::new(&cfg).total();
        if params.data.len() != expected {
            return Err(Error::shape(
                "parameter buffer",
                format!("has {} elements, the config needs {expected}", params.data.len()),
            ));
        }
        let inv = crate::model::rope_scaling::inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let mut rope = RopeTable::from_inv_freq(&inv, cfg.max_position_embeddings);
        if let Some(s) = &cfg.rope_scaling {
            rope.scale(s.attention_factor() as f32);
        }
        Ok(Model { cfg, params, rope, tp: None })
    }

    /// This rank's tensor-parallel shard of a full model (the model itself when the group has one rank).
    pub fn shard(self, group: TpGroup) -> Result<Model> {
        if group.size() == 1 {
            return Ok(self);
        }
        let local = shard_config(&self.cfg, group.size())?;
        let params = shard_params(&self.params, &local, group.rank())?;
        let mut m = Model::new(local, params)?;
        m.tp = Some(TensorParallel { group, full: self.cfg });
        Ok(m)
    }

    /// The configuration of the whole (unsharded) model.
    pub fn full_config(&self) -> &ModelConfig {
        self.tp.as_ref().map_or(&self.cfg, |t| &t.full)
    }

    /// Reassemble a full-model buffer (parameters, or AdamW moments) from this rank's shard-layout
    /// `data`: a collective over the tensor-parallel group; a copy without one.
    pub fn gather(&self, data: &[f32]) -> Result<Params> {
        let shard = Params { layout: self.params.layout.clone(), data: data.to_vec() };
        match &self.tp {
            None => Ok(shard),
            Some(t) => gather_params(&shard, &t.full, &t.group),
        }
    }

    /// This rank's shard of a full-model buffer (e.g. AdamW moments loaded from a checkpoint).
    pub fn scatter(&self, full: &Params) -> Result<Vec<f32>> {
        match &self.tp {
            None => Ok(full.data.clone()),
            Some(t) => Ok(shard_params(full, &self.cfg, t.group.rank())?.data),
        }
    }

    /// Global L2 norm of a gradient buffer in this model's layout, as the full model would see it
    /// (sharded tensors summed over the tensor-parallel group, replicated ones counted once).
    pub fn grad_norm(&self, grads: &[f32]) -> Result<f32> {
        match &self.tp {
            None => Ok(crate::tensor::cpu::reduce::grad_norm(grads)),
            Some(t) => Ok(t.sum_squares(&self.params.layout, grads)?.sqrt() as f32),
        }
    }

    /// Sum a row-parallel partial result over the tensor-parallel group (no-op without one).
    pub(crate) fn tp_reduce(&self, buf: &mut [f32]) -> Result<()> {
        match &self.tp {
            Some(t) => t.group.all_reduce_sum_f32(buf),
            None => Ok(()),
        }
    }

    /// Whether this rank adds the residual to a row-parallel output (only one rank of the group
    /// does, so the all-reduce sums it once).
    pub(crate) fn adds_residual(&self) -> bool {
        self.tp.as_ref().is_none_or(|t| t.group.rank() == 0)
    }

    pub(crate) fn attn_shape(&self) -> AttnShape {
        AttnShape { num_heads: self.cfg.num_heads, num_kv_heads: self.cfg.num_kv_heads, head_dim: self.cfg.head_dim }
    }

    /// Check a batch against the model (token ids, targets and positions in range).
    pub fn check_batch(&self, batch: &Batch) -> Result<()> {
        let v = self.cfg.vocab_size as u32;
        if let Some((i, &t)) = batch.tokens.iter().enumerate().find(|(_, &t)| t >= v) {
            return Err(Error::Invalid(format!("token {i}: id {t} is outside the vocabulary (size {v})")));
        }
        if let Some((i, &t)) = batch.targets.iter().enumerate().find(|(_, &t)| t >= v) {
            return Err(Error::Invalid(format!("target {i}: id {t} is outside the vocabulary (size {v})")));
        }
        if batch.max_seq_len() > self.cfg.max_position_embeddings {
            return Err(Error::Invalid(format!(
                "a sequence of {} tokens exceeds max_position_embeddings = {}",
                batch.max_seq_len(),
                self.cfg.max_position_embeddings
            )));
        }
        if batch.targets.len() != batch.len() || batch.positions.len() != batch.len() {
            return Err(Error::shape("batch", "tokens, targets and positions differ in length"));
        }
        Ok(())
    }

    /// This model's weights and RoPE tables on the CPU backend.
    pub fn on_cpu(&self) -> On<'_, Cpu> {
        On { be: &Cpu, params: &self.params.data, rope: &self.rope }
    }

    /// Forward pass: fills `ws.logprobs[..N]` (log p of each target) and `ws.entropy[..N]`, and
    /// keeps every activation the backward needs.
    pub fn forward(&self, batch: &Batch, ws: &mut Workspace) -> Result<()> {
        self.check_batch(batch)?;
        self.forward_on(&self.on_cpu(), batch, &batch.packed(), ws)
    }

    /// Forward of the decoder trunk: embeddings, every layer and the final norm. Fills
    /// `ws.lnf[..N·C]` (the normed last hidden states, input of any head) and keeps every
    /// activation `backward_trunk` needs.
    pub fn forward_trunk(&self, batch: &Batch, ws: &mut Workspace) -> Result<()> {
        self.check_batch(batch)?;
        self.forward_trunk_on(&self.on_cpu(), batch, &batch.packed(), ws)
    }

    /// Full logits [N, V] of the last forward (for tests and sampling; training never needs them).
    pub fn logits_into(&self, ws: &Workspace, n: usize, out: &mut [f32]) {
        let (c, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let w = &self.params.data[self.params.layout.lm_head..self.params.layout.lm_head + v * c];
        matmul_nt(&mut out[..n * v], &ws.lnf[..n * c], w, n, v, c, false);
    }

    /// Backward pass after `forward` on the same batch. `dlogp[i]` = ∂L/∂logp_i (e.g. −w_i for a
    /// weighted log-likelihood loss L = −Σ w_i·logp_i). Gradients are ADDED into `grads`
    /// (same layout as the parameters), so micro-batches accumulate.
    pub fn backward(&self, batch: &Batch, dlogp: &[f32], ws: &mut Workspace, grads: &mut [f32]) -> Result<()> {
        self.backward_with_entropy(batch, dlogp, None, ws, grads)
    }

    /// `backward` for a loss that also depends on the per-token entropies H_i of the forward:
    /// `dent[i]` = ∂L/∂H_i (e.g. −β for an entropy bonus −β·Σ H_i).
    pub fn backward_with_entropy(
        &self,
        batch: &Batch,
        dlogp: &[f32],
        dent: Option<&[f32]>,
        ws: &mut Workspace,
        grads: &mut [f32],
    ) -> Result<()> {
        let n = batch.len();
        if dlogp.len() != n || dent.is_some_and(|d| d.len() != n) {
            return Err(Error::shape("dlogp/dent", format!("do not have one entry per token ({n})")));
        }
        self.backward_on(&self.on_cpu(), batch, &batch.packed(), HeadGrad { dlogp, dent }, ws, grads)
    }

    /// Backward of the trunk after `forward_trunk` (or `forward`) on the same batch:
    /// `ws.dln[..N·C]` holds ∂L/∂lnf (the head's input gradient). Gradients are ADDED into `grads`.
    pub fn backward_trunk(&self, batch: &Batch, ws: &mut Workspace, grads: &mut [f32]) -> Result<()> {
        self.backward_trunk_on(&self.on_cpu(), batch, &batch.packed(), ws, grads)
    }

    // ------------------------------------------------------------------ generic over the backend

    /// [`Model::forward`] on any backend: `batch` is the host batch (sizes), `dev` the same batch
    /// in the backend's memory (see [`Backend::batch`]), checked by the caller.
    pub fn forward_on<B: Backend>(
        &self,
        on: &On<'_, B>,
        batch: &Batch,
        dev: &B::Batch<'_>,
        ws: &mut Workspace<B>,
    ) -> Result<()> {
        self.forward_trunk_on(on, batch, dev, ws)?;
        let (n, c, v) = (batch.len(), self.cfg.hidden_size, self.cfg.vocab_size);
        let lay = &self.params.layout;
        let w = B::r(on.params, lay.lm_head..lay.lm_head + v * c);
        head_forward(on.be, ws, w, dev, (n, c, v))
    }

    /// [`Model::forward_trunk`] on any backend (see [`Model::forward_on`]).
    pub fn forward_trunk_on<B: Backend>(
        &self,
        on: &On<'_, B>,
        batch: &Batch,
        dev: &B::Batch<'_>,
        ws: &mut Workspace<B>,
    ) -> Result<()> {
        let (be, p) = (on.be, on.params);
        let cfg = &self.cfg;
        let n = batch.len();
        ws.ensure_on(be, cfg, n)?;
        let c = cfg.hidden_size;
        let eps = cfg.rms_norm_eps as f32;
        let lay = &self.params.layout;
        let v = cfg.vocab_size;
        let nc = 0..n * c;

        be.embedding_forward(B::m(&mut ws.resid_in[0], nc.clone()), B::r(p, lay.embed..lay.embed + v * c), dev, c)?;
        for l in 0..cfg.num_layers {
            let k = ws.slot(l);
            let (ins, outs) = ws.resid_in.split_at_mut(l + 1);
            let a = &mut ws.layers[k];
            self.attention_block(on, l, (&ins[l], a, &mut ws.attn_scratch), dev, n)?;
            let out = outs.first_mut().unwrap_or(&mut ws.resid_out);
            self.mlp_block(on, l, a, Some(out), n)?;
        }
        let fw = B::r(p, lay.final_norm..lay.final_norm + c);
        be.rmsnorm_forward(
            // (in f32: a value model's head reads it so (cuda/value_head.cu); the LM head's product
            // rounds it)
            B::as_act_m(B::m(&mut ws.lnf, nc.clone())),
            B::m(&mut ws.rstdf, 0..n),
            B::r(&ws.resid_out, nc),
            fw,
            eps,
        )?;
        Ok(())
    }

    /// [`Model::backward_with_entropy`] on any backend: `grad.dlogp` and `grad.dent` have one entry
    /// per token.
    pub fn backward_on<B: Backend>(
        &self,
        on: &On<'_, B>,
        batch: &Batch,
        dev: &B::Batch<'_>,
        grad: HeadGrad<B::R<'_>>,
        ws: &mut Workspace<B>,
        mut grads: B::M<'_>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let n = batch.len();
        if ws.capacity() < n {
            return Err(Error::shape("workspace", format!("holds {} tokens, the batch has {n}", ws.capacity())));
        }
        let (c, v) = (cfg.hidden_size, cfg.vocab_size);
        let lay = &self.params.layout;
        // Head: dlnf into ws.dln.
        head_backward(
            on.be,
            ws,
            B::sub_m(&mut grads, lay.lm_head..lay.lm_head + v * c),
            B::r(on.params, lay.lm_head..lay.lm_head + v * c),
            dev,
            (n, c, v),
            grad,
        )?;
        self.backward_trunk_on(on, batch, dev, ws, grads)
    }

    /// [`Model::backward_trunk`] on any backend.
    pub fn backward_trunk_on<B: Backend>(
        &self,
        on: &On<'_, B>,
        batch: &Batch,
        dev: &B::Batch<'_>,
        ws: &mut Workspace<B>,
        mut grads: B::M<'_>,
    ) -> Result<()> {
        let (be, p) = (on.be, on.params);
        let cfg = &self.cfg;
        let n = batch.len();
        if ws.capacity() < n {
            return Err(Error::shape("workspace", format!("holds {} tokens, the batch has {n}", ws.capacity())));
        }
        let (c, inter, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qkv_w, hd) = (cfg.qkv_dim(), cfg.attn_dim());
        let lay = &self.params.layout;
        let shape = self.attn_shape();
        let nc = 0..n * c;
        macro_rules! g {
            ($r:expr) => {
                B::sub_m(&mut grads, $r)
            };
        }
        be.zero(B::m(&mut ws.dresid, nc.clone()))?;
        let fr = lay.final_norm..lay.final_norm + c;
        be.rmsnorm_backward(
            B::m(&mut ws.dresid, nc.clone()),
            g!(fr.clone()),
            B::r(&ws.dln, nc.clone()),
            B::r(&ws.resid_out, nc.clone()),
            B::r(p, fr),
            B::r(&ws.rstdf, 0..n),
        )?;
        for l in (0..cfg.num_layers).rev() {
            let o = lay.layers[l];
            if ws.checkpointing() {
                // the layer's activations again, from its saved input (the shared set holds the
                // last layer's already, from the forward)
                if l + 1 < cfg.num_layers {
                    let k = ws.slot(l);
                    let a = &mut ws.layers[k];
                    self.attention_block(on, l, (&ws.resid_in[l], a, &mut ws.attn_scratch), dev, n)?;
                    self.mlp_block(on, l, a, None, n)?;
                }
            }
            let a = &ws.layers[ws.slot(l)];
            // MLP: resid_out = resid_mid + act · Wdownᵀ
            let (dr, ni, n2i) = (|| B::r(&ws.dresid, 0..n * c), 0..n * inter, 0..n * 2 * inter);
            let wd = o.down_w..o.down_w + c * inter;
            let dact = B::m(&mut ws.dact, ni.clone());
            let act = B::act_r(&a.act, ni.clone());
            be.linear_backward(dact, g!(wd.clone()), B::as_act(dr()), B::r(p, wd), act, (n, c, inter))?;
            be.swiglu_backward(
                B::act_m(&mut ws.dgate_up, n2i.clone()),
                B::r(&ws.dact, ni),
                B::act_r(&a.gate_up, n2i.clone()),
                inter,
            )?;
            let wgu = o.gate_up_w..o.gate_up_w + 2 * inter * c;
            let dgu = || B::act_r(&ws.dgate_up, 0..n * 2 * inter);
            let dln = B::m(&mut ws.dln, nc.clone());
            let ln2 = B::act_r(&a.ln2, nc.clone());
            be.linear_backward(dln, g!(wgu.clone()), dgu(), B::r(p, wgu), ln2, (n, 2 * inter, c))?;
            self.tp_reduce_on(be, B::m(&mut ws.dln, nc.clone()))?;
            let gr = o.ln2..o.ln2 + c;
            be.rmsnorm_backward(
                B::m(&mut ws.dresid, nc.clone()),
                g!(gr.clone()),
                B::r(&ws.dln, nc.clone()),
                B::r(&a.resid_mid, nc.clone()),
                B::r(p, gr),
                B::r(&a.rstd2, 0..n),
            )?;
            // Attention: resid_mid = resid_in + att · Woᵀ
            let dr = || B::r(&ws.dresid, 0..n * c);
            let wo = o.o_w..o.o_w + c * hd;
            let datt = B::m(&mut ws.datt, 0..n * hd);
            let att = B::as_act(B::r(&a.att, 0..n * hd));
            be.linear_backward(datt, g!(wo.clone()), B::as_act(dr()), B::r(p, wo), att, (n, c, hd))?;
            be.attention_backward(
                B::m(&mut ws.dqkv, 0..n * qkv_w),
                B::m(&mut ws.attn_scratch, 0..be.attn_scratch_len(shape, n)),
                B::r(&ws.datt, 0..n * hd),
                AttnSaved {
                    qkv: B::r(&a.qkv, 0..n * qkv_w),
                    out: B::r(&a.att, 0..n * hd),
                    lse: B::r(&a.lse, 0..n * cfg.num_heads),
                },
                dev,
                shape,
            )?;
            let rot = cfg.num_heads + cfg.num_kv_heads;
            be.rope_apply(B::m(&mut ws.dqkv, 0..n * qkv_w), qkv_w, rot, dev, on.rope, true)?;
            if let Some(qn) = o.qk_norm {
                // a tensor-parallel shard holds some of the heads, so a part of the weights'
                // gradients: summed over the group first (the weights are replicated)
                let shard = self.tp.as_ref().is_some_and(|t| t.group.size() > 1);
                let d = cfg.head_dim;
                if shard {
                    be.zero(B::m(&mut ws.dqk_norm, 0..2 * d))?;
                }
                for (k, (heads, col, at, w)) in head_norms(cfg, n, qn).into_iter().enumerate() {
                    let (raw, rstd) = (at * d..(at + n * heads) * d, at..at + n * heads);
                    let dw = if shard { B::m(&mut ws.dqk_norm, k * d..(k + 1) * d) } else { g!(w.clone()) };
                    be.head_norm_backward(
                        B::m(&mut ws.dqkv, col..n * qkv_w),
                        dw,
                        B::r(&a.qk_raw, raw),
                        B::r(&a.qk_rstd, rstd),
                        B::r(p, w),
                        qkv_w,
                        heads,
                    )?;
                }
                if shard {
                    self.tp_reduce_on(be, B::m(&mut ws.dqk_norm, 0..2 * d))?;
                    be.add(g!(qn..qn + 2 * d), B::r(&ws.dqk_norm, 0..2 * d))?;
                }
            }
            if let Some(b) = o.qkv_b {
                be.bias_backward(g!(b..b + qkv_w), B::r(&ws.dqkv, 0..n * qkv_w))?;
            }
            let wq = o.qkv_w..o.qkv_w + qkv_w * c;
            let dq = || B::r(&ws.dqkv, 0..n * qkv_w);
            let dln = B::m(&mut ws.dln, nc.clone());
            let ln1 = B::act_r(&a.ln1, nc.clone());
            be.linear_backward(dln, g!(wq.clone()), B::as_act(dq()), B::r(p, wq), ln1, (n, qkv_w, c))?;
            self.tp_reduce_on(be, B::m(&mut ws.dln, nc.clone()))?;
            let gr = o.ln1..o.ln1 + c;
            be.rmsnorm_backward(
                B::m(&mut ws.dresid, nc.clone()),
                g!(gr.clone()),
                B::r(&ws.dln, nc.clone()),
                B::r(&ws.resid_in[l], nc.clone()),
                B::r(p, gr),
                B::r(&a.rstd1, 0..n),
            )?;
        }
        be.embedding_backward(g!(lay.embed..lay.embed + v * c), B::r(&ws.dresid, nc), dev, c)?;
        Ok(())
    }

    /// Sum a row-parallel partial result over the tensor-parallel group (no-op without one).
    pub(crate) fn tp_reduce_on<B: Backend>(&self, be: &B, x: B::M<'_>) -> Result<()> {
        match &self.tp {
            Some(t) => be.all_reduce_tp(x, &t.group),
            None => Ok(()),
        }
    }
}

/// The two head norms of a layer whose q_norm starts at `qn` in the parameters (k_norm follows):
/// (heads, first column of the heads in a q|k|v row, offset of their rows in the layer's saved
/// `qk_rstd` (× head_dim in `qk_raw`), the weight's range).
pub(crate) fn head_norms(cfg: &ModelConfig, n: usize, qn: usize) -> [(usize, usize, usize, std::ops::Range<usize>); 2] {
    let (h, kv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    [(h, 0, 0, qn..qn + d), (kv, h * d, n * h, qn + d..qn + 2 * d)]
}

/// A model's weights and RoPE tables in one backend's memory: what the generic forward and
/// backward read ([`Model::forward_on`] and friends).
pub struct On<'a, B: Backend> {
    pub be: &'a B,
    pub params: &'a B::Buf,
    pub rope: &'a B::Rope,
}
