//! LM head with fused log-softmax: log-probabilities of target tokens, entropy of the full
//! distribution, and the backward for a per-token weight, in row chunks (no [N, V] buffer).

use crate::error::Result;
use crate::model::workspace::Workspace;
use crate::tensor::backend::{Backend, LogitStats, LogprobGrad};
use crate::tensor::shape::GemmShape;

/// ∂L/∂(the head's per-token outputs): `dlogp[i]` = ∂L/∂logp_i and, when the loss has an entropy
/// term, `dent[i]` = ∂L/∂H_i (one entry per token each).
pub struct HeadGrad<R> {
    pub dlogp: R,
    pub dent: Option<R>,
}

/// Forward of the head over all N rows of `ws.lnf` ([N, C]) with weight w ([V, C]), in chunks
/// of `ws.head_rows` rows through `ws.logits` ([rows, V]); fills `ws.head_lse`, `ws.logprobs`
/// and `ws.entropy`, and records in `ws.logits_cached` whether one chunk held every row.
pub fn head_forward<B: Backend>(
    be: &B,
    ws: &mut Workspace<B>,
    w: B::R<'_>,
    batch: &B::Batch<'_>,
    (n, c, v): (usize, usize, usize),
) -> Result<()> {
    let rows = ws.head_rows.max(1);
    let Workspace { logits, lnf: h, head_lse: lse, logprobs: logp, entropy, .. } = &mut *ws;
    for r0 in (0..n).step_by(rows) {
        let r1 = (r0 + rows).min(n);
        let wv = B::sub_r(&w, 0..v * c);
        let shape = GemmShape::new(r1 - r0, v, c);
        be.matmul_nt_act(B::m(logits, 0..(r1 - r0) * v), B::as_act(B::r(h, r0 * c..r1 * c)), wv, shape, false)?;
        let stats = LogitStats { lse: B::m(lse, r0..r1), logp: B::m(logp, r0..r1), entropy: B::m(entropy, r0..r1) };
        be.logprob_forward(B::r(logits, 0..(r1 - r0) * v), v, batch, r0..r1, stats)?;
    }
    ws.logits_cached = (n <= ws.head_rows).then_some(n);
    Ok(())
}

/// Backward of the head: writes dh (`ws.dln`, [N, C]) and adds into dw ([V, C]), recomputing the
/// logits chunk by chunk, unless the forward's single chunk still holds all N rows
/// (`ws.logits_cached`, cleared here). `grad.dent` pairs with the forward's `ws.entropy`.
pub fn head_backward<B: Backend>(
    be: &B,
    ws: &mut Workspace<B>,
    mut dw: B::M<'_>,
    w: B::R<'_>,
    batch: &B::Batch<'_>,
    (n, c, v): (usize, usize, usize),
    grad: HeadGrad<B::R<'_>>,
) -> Result<()> {
    let cached = ws.logits_cached == Some(n);
    let rows = ws.head_rows.max(1);
    // where activations are f32 the gradient overwrites the logits; else the kernel writes it in
    // activation storage (bf16: the products' operand, no rounding pass)
    let separate = !be.acts_are_f32();
    if separate {
        be.act_grow(&mut ws.dlogits, rows.min(n) * v)?;
    } else if B::act_bytes(&ws.dlogits) > 0 {
        // (a device switched back to f32 products: the bf16 gradient's memory goes)
        ws.dlogits = be.act_empty()?;
    }
    let Workspace { logits, dlogits, dln: dh, lnf: h, head_lse: lse, entropy, .. } = &mut *ws;
    let HeadGrad { dlogp: g, dent } = grad;
    let ent = dent.map(|d| (d, &*entropy));
    for r0 in (0..n).step_by(rows) {
        let r1 = (r0 + rows).min(n);
        let m = r1 - r0;
        let hc = || B::as_act(B::r(h, r0 * c..r1 * c));
        let wv = || B::sub_r(&w, 0..v * c);
        if !(cached && m == n) {
            be.matmul_nt_act(B::m(logits, 0..m * v), hc(), wv(), GemmShape::new(m, v, c), false)?;
        }
        let ent_chunk = ent.as_ref().map(|(e, hh)| (B::sub_r(e, r0..r1), B::r(hh, r0..r1)));
        let chunk = LogprobGrad { lse: B::r(lse, r0..r1), g: B::sub_r(&g, r0..r1), ent: ent_chunk };
        let dz = separate.then(|| B::act_m(dlogits, 0..m * v));
        be.logprob_backward(B::m(logits, 0..m * v), dz, v, batch, r0..r1, chunk)?;
        let dy = if separate { B::act_r(dlogits, 0..m * v) } else { B::as_act(B::r(logits, 0..m * v)) };
        let dh_rows = B::m(dh, r0 * c..r1 * c);
        let dw_all = B::sub_m(&mut dw, 0..v * c);
        be.linear_backward(dh_rows, dw_all, dy, wv(), hc(), (m, v, c))?;
    }
    ws.logits_cached = None;
    Ok(())
}
