//! The forward of one decoder layer, in its two halves: the attention block (the residual stream
//! entering the layer to the one after attention) and the MLP block (to the stream leaving it).
//! The trunk's forward runs both for every layer; with gradient checkpointing the backward runs
//! them again, from the layer's saved input, for the activations the layer's backward reads
//! (the MLP block then stops before the down projection: its output is the next layer's saved
//! input, which the forward kept).

use crate::error::Result;
use crate::model::transformer::{head_norms, On};
use crate::model::workspace::LayerActs;
use crate::model::Model;
use crate::tensor::{Backend, GemmShape};

impl Model {
    /// Layer `l`'s attention block on `n` tokens: from `x` ([N, C], the layer's input) the input
    /// norm, q|k|v (bias, head norms, RoPE), attention and `a.resid_mid` = x + att · Woᵀ (summed
    /// over the tensor-parallel group).
    pub(crate) fn attention_block<B: Backend>(
        &self,
        on: &On<'_, B>,
        l: usize,
        (x, a, scratch): (&B::Buf, &mut LayerActs<B>, &mut B::Buf),
        dev: &B::Batch<'_>,
        n: usize,
    ) -> Result<()> {
        let (be, p) = (on.be, on.params);
        let cfg = &self.cfg;
        let c = cfg.hidden_size;
        let (qkv_w, hd) = (cfg.qkv_dim(), cfg.attn_dim());
        let eps = cfg.rms_norm_eps as f32;
        let o = self.params.layout.layers[l];
        let shape = self.attn_shape();
        let nc = 0..n * c;
        be.rmsnorm_forward(
            B::act_m(&mut a.ln1, nc.clone()),
            B::m(&mut a.rstd1, 0..n),
            B::r(x, nc.clone()),
            B::r(p, o.ln1..o.ln1 + c),
            eps,
        )?;
        let wqkv = B::r(p, o.qkv_w..o.qkv_w + qkv_w * c);
        be.matmul_nt_act(
            B::m(&mut a.qkv, 0..n * qkv_w),
            B::act_r(&a.ln1, nc.clone()),
            wqkv,
            GemmShape::new(n, qkv_w, c),
            false,
        )?;
        if let Some(b) = o.qkv_b {
            be.add_bias(B::m(&mut a.qkv, 0..n * qkv_w), B::r(p, b..b + qkv_w))?;
        }
        if let Some(qn) = o.qk_norm {
            for (heads, col, at, w) in head_norms(cfg, n, qn) {
                let (raw, rstd) = (at * cfg.head_dim..(at + n * heads) * cfg.head_dim, at..at + n * heads);
                be.head_norm_forward(
                    B::m(&mut a.qkv, col..n * qkv_w),
                    Some(B::m(&mut a.qk_raw, raw)),
                    B::m(&mut a.qk_rstd, rstd),
                    B::r(p, w),
                    qkv_w,
                    heads,
                    eps,
                )?;
            }
        }
        let rot = cfg.num_heads + cfg.num_kv_heads;
        be.rope_apply(B::m(&mut a.qkv, 0..n * qkv_w), qkv_w, rot, dev, on.rope, false)?;
        be.attention_forward(
            B::m(&mut a.att, 0..n * hd),
            B::m(&mut a.lse, 0..n * cfg.num_heads),
            B::m(scratch, 0..be.attn_scratch_len(shape, n)),
            B::r(&a.qkv, 0..n * qkv_w),
            dev,
            shape,
        )?;
        // resid_mid = x + att · Woᵀ (row-parallel: partial sums all-reduced)
        if self.adds_residual() {
            be.copy(B::m(&mut a.resid_mid, nc.clone()), B::r(x, nc.clone()))?;
        } else {
            be.zero(B::m(&mut a.resid_mid, nc.clone()))?;
        }
        let wo = B::r(p, o.o_w..o.o_w + c * hd);
        be.matmul_nt(B::m(&mut a.resid_mid, nc.clone()), B::r(&a.att, 0..n * hd), wo, GemmShape::new(n, c, hd), true)?;
        self.tp_reduce_on(be, B::m(&mut a.resid_mid, nc))
    }

    /// Layer `l`'s MLP block on `n` tokens after its attention block: the post-attention norm,
    /// gate|up and SwiGLU into `a`, then, where `out` is given, `out` = resid_mid + act · Wdownᵀ
    /// (summed over the tensor-parallel group).
    pub(crate) fn mlp_block<B: Backend>(
        &self,
        on: &On<'_, B>,
        l: usize,
        a: &mut LayerActs<B>,
        out: Option<&mut B::Buf>,
        n: usize,
    ) -> Result<()> {
        let (be, p) = (on.be, on.params);
        let cfg = &self.cfg;
        let (c, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let o = self.params.layout.layers[l];
        let nc = 0..n * c;
        be.rmsnorm_forward(
            B::act_m(&mut a.ln2, nc.clone()),
            B::m(&mut a.rstd2, 0..n),
            B::r(&a.resid_mid, nc.clone()),
            B::r(p, o.ln2..o.ln2 + c),
            cfg.rms_norm_eps as f32,
        )?;
        let wgu = B::r(p, o.gate_up_w..o.gate_up_w + 2 * inter * c);
        be.matmul_nt_to_act(
            B::act_m(&mut a.gate_up, 0..n * 2 * inter),
            B::act_r(&a.ln2, nc.clone()),
            wgu,
            GemmShape::new(n, 2 * inter, c),
        )?;
        be.swiglu_forward(B::act_m(&mut a.act, 0..n * inter), B::act_r(&a.gate_up, 0..n * 2 * inter), inter)?;
        let Some(out) = out else { return Ok(()) };
        // out = resid_mid + act · Wdownᵀ
        if self.adds_residual() {
            be.copy(B::m(out, nc.clone()), B::r(&a.resid_mid, nc.clone()))?;
        } else {
            be.zero(B::m(out, nc.clone()))?;
        }
        let wd = B::r(p, o.down_w..o.down_w + c * inter);
        let act = B::act_r(&a.act, 0..n * inter);
        be.matmul_nt_act(B::m(out, nc.clone()), act, wd, GemmShape::new(n, c, inter), true)?;
        self.tp_reduce_on(be, B::m(out, nc))
    }
}
