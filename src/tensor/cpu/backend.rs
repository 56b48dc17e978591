//! The CPU as a [`Backend`]: host vectors, and the functions of this module tree.

use crate::attention::{attention_backward, attention_forward, AttnSaved, AttnShape};
use crate::error::{Error, Result};
use crate::parallel::{Comm, TpGroup};
use crate::tensor::backend::{Backend, LogitStats, LogprobGrad, PackedBatch};
use crate::tensor::cpu::logits::{logits_backward_inplace, logits_stats};
use crate::tensor::cpu::ops::{self, RopeTable};
use crate::tensor::cpu::{matmul_nn, matmul_nt, matmul_tn};
use crate::tensor::shape::GemmShape;
use std::ops::Range;

/// The CPU backend (rayon threads, the `gemm` crate). It is the reference every other backend is
/// tested against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

/// Logit elements per LM-head chunk on the CPU (bounds the [rows, V] buffer to 16 MiB).
const HEAD_CHUNK_ELEMS: usize = 1 << 22;

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type R<'a> = &'a [f32];
    type M<'a> = &'a mut [f32];
    type Act = Vec<f32>;
    type ActR<'a> = &'a [f32];
    type ActM<'a> = &'a mut [f32];
    type Batch<'a> = PackedBatch<'a>;
    type Rope = RopeTable;

    fn name(&self) -> String {
        "cpu".into()
    }
    fn empty(&self) -> Result<Vec<f32>> {
        Ok(Vec::new())
    }
    fn len(buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn grow(&self, buf: &mut Vec<f32>, n: usize) -> Result<()> {
        if buf.len() < n {
            buf.resize(n, 0.0);
        }
        Ok(())
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &Vec<f32>, out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(&buf[..out.len()]);
        Ok(())
    }
    fn r(buf: &Vec<f32>, r: Range<usize>) -> &[f32] {
        &buf[r]
    }
    fn m(buf: &mut Vec<f32>, r: Range<usize>) -> &mut [f32] {
        &mut buf[r]
    }
    fn sub_r<'a>(x: &Self::R<'a>, r: Range<usize>) -> Self::R<'a> {
        &x[r]
    }
    fn sub_m<'a, 'b: 'a>(x: &'a mut &'b mut [f32], r: Range<usize>) -> &'a mut [f32] {
        &mut x[r]
    }
    fn act_empty(&self) -> Result<Vec<f32>> {
        Ok(Vec::new())
    }
    fn acts_are_f32(&self) -> bool {
        true
    }
    fn act_grow(&self, buf: &mut Vec<f32>, n: usize) -> Result<()> {
        self.grow(buf, n)
    }
    fn act_bytes(buf: &Vec<f32>) -> usize {
        4 * buf.len()
    }
    fn act_download(&self, buf: &Vec<f32>, out: &mut [f32]) -> Result<()> {
        self.download(buf, out)
    }
    fn act_r(buf: &Vec<f32>, r: Range<usize>) -> &[f32] {
        &buf[r]
    }
    fn act_m(buf: &mut Vec<f32>, r: Range<usize>) -> &mut [f32] {
        &mut buf[r]
    }
    fn act_sub_r<'a>(x: &Self::ActR<'a>, r: Range<usize>) -> Self::ActR<'a> {
        &x[r]
    }
    fn as_act<'a>(x: Self::R<'a>) -> Self::ActR<'a> {
        x
    }
    fn as_act_m<'a>(x: Self::M<'a>) -> Self::ActM<'a> {
        x
    }
    fn batch<'a>(&self, batch: PackedBatch<'a>) -> Result<PackedBatch<'a>> {
        Ok(batch)
    }
    fn rope(&self, table: &RopeTable) -> Result<RopeTable> {
        Ok(table.clone())
    }
    fn copy(&self, dst: &mut [f32], src: &[f32]) -> Result<()> {
        dst.copy_from_slice(src);
        Ok(())
    }
    fn zero(&self, dst: &mut [f32]) -> Result<()> {
        dst.fill(0.0);
        Ok(())
    }
    fn add(&self, dst: &mut [f32], src: &[f32]) -> Result<()> {
        if dst.len() != src.len() {
            return Err(crate::error::Error::shape("add", format!("{} values into {}", src.len(), dst.len())));
        }
        dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        Ok(())
    }
    fn attn_scratch_len(&self, shape: AttnShape, n: usize) -> usize {
        shape.scratch_len(n)
    }
    fn head_chunk_elems(&self) -> usize {
        HEAD_CHUNK_ELEMS
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn all_reduce_tp(&self, x: &mut [f32], group: &TpGroup) -> Result<()> {
        group.all_reduce_sum_f32(x)
    }

    fn matmul_nt(&self, c: &mut [f32], a: &[f32], b: &[f32], shape: GemmShape, acc: bool) -> Result<()> {
        matmul_nt(c, a, b, shape.m, shape.n, shape.k, acc);
        Ok(())
    }
    fn matmul_nt_act(&self, c: &mut [f32], a: &[f32], b: &[f32], shape: GemmShape, acc: bool) -> Result<()> {
        self.matmul_nt(c, a, b, shape, acc)
    }
    fn matmul_nt_to_act(&self, c: &mut [f32], a: &[f32], b: &[f32], shape: GemmShape) -> Result<()> {
        self.matmul_nt(c, a, b, shape, false)
    }
    fn linear_backward(
        &self,
        dx: &mut [f32],
        dw: &mut [f32],
        dy: &[f32],
        w: &[f32],
        x: &[f32],
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        self.matmul_nn(dx, &dy[..m * n], w, GemmShape::new(m, k, n), false)?;
        self.matmul_tn(dw, dy, x, GemmShape::new(n, k, m), true)
    }
    fn matmul_nn(&self, c: &mut [f32], a: &[f32], b: &[f32], shape: GemmShape, acc: bool) -> Result<()> {
        matmul_nn(c, a, b, shape.m, shape.n, shape.k, acc);
        Ok(())
    }
    fn matmul_tn(&self, c: &mut [f32], a: &[f32], b: &[f32], shape: GemmShape, acc: bool) -> Result<()> {
        matmul_tn(c, a, b, shape.m, shape.n, shape.k, acc);
        Ok(())
    }

    fn embedding_forward(&self, out: &mut [f32], table: &[f32], batch: &PackedBatch<'_>, c: usize) -> Result<()> {
        ops::embedding_forward(out, table, batch.tokens, c);
        Ok(())
    }
    fn embedding_backward(&self, dtable: &mut [f32], dout: &[f32], batch: &PackedBatch<'_>, c: usize) -> Result<()> {
        ops::embedding_backward(dtable, dout, batch.tokens, c);
        Ok(())
    }
    fn rmsnorm_forward(&self, y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) -> Result<()> {
        ops::rmsnorm_forward(y, rstd, x, w, eps);
        Ok(())
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut [f32],
        dw: &mut [f32],
        dy: &[f32],
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
    ) -> Result<()> {
        ops::rmsnorm_backward(dx, dw, dy, x, w, rstd);
        Ok(())
    }
    fn head_norm_forward(
        &self,
        x: &mut [f32],
        raw: Option<&mut [f32]>,
        rstd: &mut [f32],
        w: &[f32],
        row_stride: usize,
        heads: usize,
        eps: f32,
    ) -> Result<()> {
        super::head_norm::head_norm_forward(x, raw, rstd, w, row_stride, heads, eps);
        Ok(())
    }
    fn head_norm_backward(
        &self,
        dx: &mut [f32],
        dw: &mut [f32],
        raw: &[f32],
        rstd: &[f32],
        w: &[f32],
        row_stride: usize,
        heads: usize,
    ) -> Result<()> {
        super::head_norm::head_norm_backward(dx, dw, raw, rstd, w, row_stride, heads);
        Ok(())
    }
    fn add_bias(&self, out: &mut [f32], bias: &[f32]) -> Result<()> {
        ops::add_bias(out, bias);
        Ok(())
    }
    fn bias_backward(&self, dbias: &mut [f32], dout: &[f32]) -> Result<()> {
        ops::bias_backward(dbias, dout);
        Ok(())
    }
    fn rope_apply(
        &self,
        x: &mut [f32],
        row_stride: usize,
        n_heads: usize,
        batch: &PackedBatch<'_>,
        table: &RopeTable,
        inverse: bool,
    ) -> Result<()> {
        ops::rope_apply(x, row_stride, n_heads, batch.positions, table, inverse);
        Ok(())
    }
    fn attention_forward(
        &self,
        out: &mut [f32],
        lse: &mut [f32],
        scratch: &mut [f32],
        qkv: &[f32],
        batch: &PackedBatch<'_>,
        shape: AttnShape,
    ) -> Result<()> {
        attention_forward(out, lse, scratch, qkv, batch.seq_starts, shape);
        Ok(())
    }
    fn attention_backward(
        &self,
        dqkv: &mut [f32],
        scratch: &mut [f32],
        dout: &[f32],
        saved: AttnSaved<&[f32]>,
        batch: &PackedBatch<'_>,
        shape: AttnShape,
    ) -> Result<()> {
        attention_backward(dqkv, scratch, dout, saved, batch.seq_starts, shape);
        Ok(())
    }
    fn swiglu_forward(&self, act: &mut [f32], gate_up: &[f32], inter: usize) -> Result<()> {
        ops::swiglu_forward(act, gate_up, inter);
        Ok(())
    }
    fn swiglu_backward(&self, dgate_up: &mut [f32], dact: &[f32], gate_up: &[f32], inter: usize) -> Result<()> {
        ops::swiglu_backward(dgate_up, dact, gate_up, inter);
        Ok(())
    }
    fn logprob_forward(
        &self,
        z: &[f32],
        v: usize,
        batch: &PackedBatch<'_>,
        rows: Range<usize>,
        out: LogitStats<&mut [f32]>,
    ) -> Result<()> {
        logits_stats(z, v, &batch.targets[rows], out.lse, out.logp, out.entropy);
        Ok(())
    }
    fn logprob_backward(
        &self,
        z: &mut [f32],
        dz: Option<&mut [f32]>,
        v: usize,
        batch: &PackedBatch<'_>,
        rows: Range<usize>,
        grad: LogprobGrad<&[f32], &[f32]>,
    ) -> Result<()> {
        let out = match dz {
            Some(dz) => {
                if dz.len() < z.len() {
                    return Err(Error::shape(
                        "logprob backward",
                        format!("{} gradients for {} logits", dz.len(), z.len()),
                    ));
                }
                dz[..z.len()].copy_from_slice(z);
                &mut dz[..z.len()]
            }
            None => z,
        };
        logits_backward_inplace(out, v, &batch.targets[rows], grad.lse, grad.g, grad.ent);
        Ok(())
    }
}
