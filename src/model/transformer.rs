//! The model: forward and backward of the whole decoder, layer by layer (llm.c style: each
//! block's forward next to its backward, every buffer preallocated in a `Workspace`).
//!
//! Shapes: N tokens (packed), C hidden, I intermediate, H heads, KV kv heads, D head dim, V vocab.

use crate::attention::{attention_backward, attention_forward, AttnShape};
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::config::ModelConfig;
use crate::model::head::{head_backward, head_forward};
use crate::model::params::{ParamLayout, Params};
use crate::model::shard::{gather_params, shard_config, shard_params, TensorParallel};
use crate::model::workspace::Workspace;
use crate::parallel::{Comm, TpGroup};
use crate::tensor::cpu::ops::{self, RopeTable};
use crate::tensor::cpu::{matmul_nn, matmul_nt, matmul_tn};

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
            return Err(Error::Invalid(format!(
                "parameter buffer has {} elements, the config needs {expected}",
                params.data.len()
            )));
        }
        let rope = RopeTable::new(cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings);
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
            None => Ok(crate::train::adamw::grad_norm(grads)),
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

    fn attn_shape(&self) -> AttnShape {
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
            return Err(Error::Invalid("batch tokens, targets and positions differ in length".into()));
        }
        Ok(())
    }

    /// Forward pass: fills `ws.logprobs[..N]` (log p of each target) and `ws.entropy[..N]`, and
    /// keeps every activation the backward needs.
    pub fn forward(&self, batch: &Batch, ws: &mut Workspace) -> Result<()> {
        self.forward_trunk(batch, ws)?;
        let cfg = &self.cfg;
        let n = batch.len();
        let c = cfg.hidden_size;
        let p = &self.params.data;
        let lay = &self.params.layout;
        let v = cfg.vocab_size;
        head_forward(
            &mut ws.logits[..ws.head_rows * cfg.vocab_size],
            &ws.lnf[..n * c],
            &p[lay.lm_head..lay.lm_head + v * c],
            &batch.targets,
            c,
            v,
            &mut ws.head_lse[..n],
            &mut ws.logprobs[..n],
            &mut ws.entropy[..n],
        );
        ws.logits_cached = (n <= ws.head_rows).then_some(n);
        Ok(())
    }

    /// Forward of the decoder trunk: embeddings, every layer and the final norm. Fills
    /// `ws.lnf[..N·C]` (the normed last hidden states, input of any head) and keeps every
    /// activation `backward_trunk` needs.
    pub fn forward_trunk(&self, batch: &Batch, ws: &mut Workspace) -> Result<()> {
        self.check_batch(batch)?;
        let cfg = &self.cfg;
        let n = batch.len();
        ws.ensure(cfg, n);
        let (c, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let (qkv_w, hd) = (cfg.qkv_dim(), cfg.attn_dim());
        let eps = cfg.rms_norm_eps as f32;
        let p = &self.params.data;
        let lay = &self.params.layout;
        let shape = self.attn_shape();

        ops::embedding_forward(&mut ws.layers[0].resid_in[..n * c], &p[lay.embed..], &batch.tokens, c);
        for l in 0..cfg.num_layers {
            let o = lay.layers[l];
            let (head, tail) = ws.layers.split_at_mut(l + 1);
            let a = &mut head[l];
            let x = &a.resid_in[..n * c];
            ops::rmsnorm_forward(&mut a.ln1[..n * c], &mut a.rstd1[..n], x, &p[o.ln1..o.ln1 + c], eps);
            let qkv = &mut a.qkv[..n * qkv_w];
            matmul_nt(qkv, &a.ln1[..n * c], &p[o.qkv_w..o.qkv_w + qkv_w * c], n, qkv_w, c, false);
            if let Some(b) = o.qkv_b {
                ops::add_bias(qkv, &p[b..b + qkv_w]);
            }
            ops::rope_apply(qkv, qkv_w, cfg.num_heads + cfg.num_kv_heads, &batch.positions, &self.rope, false);
            attention_forward(
                &mut a.att[..n * hd],
                &mut a.lse[..n * cfg.num_heads],
                &mut ws.attn_scratch,
                &a.qkv[..n * qkv_w],
                &batch.seq_starts,
                shape,
            );
            // resid_mid = resid_in + att · Woᵀ (row-parallel: partial sums all-reduced)
            if self.adds_residual() {
                a.resid_mid[..n * c].copy_from_slice(&a.resid_in[..n * c]);
            } else {
                a.resid_mid[..n * c].fill(0.0);
            }
            matmul_nt(&mut a.resid_mid[..n * c], &a.att[..n * hd], &p[o.o_w..o.o_w + c * hd], n, c, hd, true);
            self.tp_reduce(&mut a.resid_mid[..n * c])?;
            ops::rmsnorm_forward(
                &mut a.ln2[..n * c],
                &mut a.rstd2[..n],
                &a.resid_mid[..n * c],
                &p[o.ln2..o.ln2 + c],
                eps,
            );
            let gu = &mut a.gate_up[..n * 2 * inter];
            matmul_nt(gu, &a.ln2[..n * c], &p[o.gate_up_w..o.gate_up_w + 2 * inter * c], n, 2 * inter, c, false);
            ops::swiglu_forward(&mut a.act[..n * inter], &a.gate_up[..n * 2 * inter], inter);
            // next residual = resid_mid + act · Wdownᵀ
            let out = match tail.first_mut() {
                Some(next) => &mut next.resid_in[..n * c],
                None => &mut ws.resid_out[..n * c],
            };
            if self.adds_residual() {
                out.copy_from_slice(&a.resid_mid[..n * c]);
            } else {
                out.fill(0.0);
            }
            matmul_nt(out, &a.act[..n * inter], &p[o.down_w..o.down_w + c * inter], n, c, inter, true);
            self.tp_reduce(out)?;
        }
        let fw = &p[lay.final_norm..lay.final_norm + c];
        ops::rmsnorm_forward(&mut ws.lnf[..n * c], &mut ws.rstdf[..n], &ws.resid_out[..n * c], fw, eps);
        Ok(())
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
        let cfg = &self.cfg;
        let n = batch.len();
        if dlogp.len() != n || dent.is_some_and(|d| d.len() != n) {
            return Err(Error::Invalid(format!("dlogp/dent do not have one entry per token ({n})")));
        }
        if grads.len() != self.params.data.len() || ws.capacity() < n {
            return Err(Error::Invalid("gradient buffer or workspace does not match the model".into()));
        }
        let (c, v) = (cfg.hidden_size, cfg.vocab_size);
        let p = &self.params.data;
        let lay = &self.params.layout;

        // Head: dlnf into ws.dln.
        head_backward(
            &mut ws.logits[..ws.head_rows * v],
            &mut ws.dln[..n * c],
            &mut grads[lay.lm_head..lay.lm_head + v * c],
            &ws.lnf[..n * c],
            &p[lay.lm_head..lay.lm_head + v * c],
            &batch.targets,
            &ws.head_lse[..n],
            dlogp,
            dent.map(|d| (d, &ws.entropy[..n])),
            c,
            v,
            ws.logits_cached == Some(n),
        );
        ws.logits_cached = None;
        self.backward_trunk(batch, ws, grads)
    }

    /// Backward of the trunk after `forward_trunk` (or `forward`) on the same batch:
    /// `ws.dln[..N·C]` holds ∂L/∂lnf (the head's input gradient). Gradients are ADDED into `grads`.
    pub fn backward_trunk(&self, batch: &Batch, ws: &mut Workspace, grads: &mut [f32]) -> Result<()> {
        let cfg = &self.cfg;
        let n = batch.len();
        if grads.len() != self.params.data.len() || ws.capacity() < n {
            return Err(Error::Invalid("gradient buffer or workspace does not match the model".into()));
        }
        let (c, inter, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qkv_w, hd) = (cfg.qkv_dim(), cfg.attn_dim());
        let p = &self.params.data;
        let lay = &self.params.layout;
        let shape = self.attn_shape();
        ws.dresid[..n * c].iter_mut().for_each(|x| *x = 0.0);
        let (fw, fr) = (&p[lay.final_norm..lay.final_norm + c], lay.final_norm..lay.final_norm + c);
        ops::rmsnorm_backward(
            &mut ws.dresid[..n * c],
            &mut grads[fr],
            &ws.dln[..n * c],
            &ws.resid_out[..n * c],
            fw,
            &ws.rstdf[..n],
        );
        for l in (0..cfg.num_layers).rev() {
            let o = lay.layers[l];
            let a = &ws.layers[l];
            // MLP: resid_out = resid_mid + act · Wdownᵀ
            let dres = &ws.dresid[..n * c];
            matmul_nn(&mut ws.dact[..n * inter], dres, &p[o.down_w..o.down_w + c * inter], n, inter, c, false);
            matmul_tn(&mut grads[o.down_w..o.down_w + c * inter], dres, &a.act[..n * inter], c, inter, n, true);
            ops::swiglu_backward(
                &mut ws.dgate_up[..n * 2 * inter],
                &ws.dact[..n * inter],
                &a.gate_up[..n * 2 * inter],
                inter,
            );
            let wgu = &p[o.gate_up_w..o.gate_up_w + 2 * inter * c];
            matmul_nn(&mut ws.dln[..n * c], &ws.dgate_up[..n * 2 * inter], wgu, n, c, 2 * inter, false);
            self.tp_reduce(&mut ws.dln[..n * c])?;
            let dwgu = &mut grads[o.gate_up_w..o.gate_up_w + 2 * inter * c];
            matmul_tn(dwgu, &ws.dgate_up[..n * 2 * inter], &a.ln2[..n * c], 2 * inter, c, n, true);
            let (gw, gr) = (&p[o.ln2..o.ln2 + c], o.ln2..o.ln2 + c);
            ops::rmsnorm_backward(
                &mut ws.dresid[..n * c],
                &mut grads[gr],
                &ws.dln[..n * c],
                &a.resid_mid[..n * c],
                gw,
                &a.rstd2[..n],
            );
            // Attention: resid_mid = resid_in + att · Woᵀ
            let dres = &ws.dresid[..n * c];
            matmul_nn(&mut ws.datt[..n * hd], dres, &p[o.o_w..o.o_w + c * hd], n, hd, c, false);
            matmul_tn(&mut grads[o.o_w..o.o_w + c * hd], dres, &a.att[..n * hd], c, hd, n, true);
            attention_backward(
                &mut ws.dqkv[..n * qkv_w],
                &mut ws.attn_scratch,
                &ws.datt[..n * hd],
                &a.qkv[..n * qkv_w],
                &a.att[..n * hd],
                &a.lse[..n * cfg.num_heads],
                &batch.seq_starts,
                shape,
            );
            let dqkv = &mut ws.dqkv[..n * qkv_w];
            ops::rope_apply(dqkv, qkv_w, cfg.num_heads + cfg.num_kv_heads, &batch.positions, &self.rope, true);
            if let Some(b) = o.qkv_b {
                ops::bias_backward(&mut grads[b..b + qkv_w], dqkv);
            }
            let wqkv = &p[o.qkv_w..o.qkv_w + qkv_w * c];
            matmul_nn(&mut ws.dln[..n * c], dqkv, wqkv, n, c, qkv_w, false);
            self.tp_reduce(&mut ws.dln[..n * c])?;
            matmul_tn(&mut grads[o.qkv_w..o.qkv_w + qkv_w * c], dqkv, &a.ln1[..n * c], qkv_w, c, n, true);
            let (gw, gr) = (&p[o.ln1..o.ln1 + c], o.ln1..o.ln1 + c);
            ops::rmsnorm_backward(
                &mut ws.dresid[..n * c],
                &mut grads[gr],
                &ws.dln[..n * c],
                &a.resid_in[..n * c],
                gw,
                &a.rstd1[..n],
            );
        }
        ops::embedding_backward(&mut grads[lay.embed..lay.embed + v * c], &ws.dresid[..n * c], &batch.tokens, c);
        Ok(())
    }
}
