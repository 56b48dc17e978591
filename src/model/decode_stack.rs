//! The decode layer stack, written once for every device: which operation runs on which rows with
//! which weights, in which order. A device ([`DecodeDevice`]) supplies the operations on its own
//! buffers (the residual stream x, the normed rows, q|k|v, the attention output, gate|up, the
//! SwiGLU output, the logits) and its own KV cache and weights: the CPU packs every weight matrix
//! for its row-wise GEMM and keeps keys transposed in blocks of 8 (`model::decode`); the GPU reads
//! the weights in place with cuBLAS and uses its cache kernels (`cuda::decode`).
//!
//! A step runs B rows: row r is token r appended to its cache slot at its position (a slot's rows
//! take consecutive positions, so one step can prefill prompts for some slots while decoding one
//! token for others). Only the rows whose next-token logits are wanted go through the LM head.

use crate::error::Result;
use crate::model::Model;

/// An RMSNorm of the stack: before attention or the MLP of a layer, or the final one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    Attn(usize),
    Mlp(usize),
    Final,
}

/// A projection of the stack and what it computes (rows-major, W row-major [out, in]):
/// - `Qkv(l)`: qkv = ln · W_qkvᵀ (the q|k|v bias, where the model has one, is added by
///   [`DecodeDevice::attend`], which may fuse it with RoPE and the cache store);
/// - `Out(l)`: x += att · W_oᵀ (the residual add; row-parallel under tensor parallelism);
/// - `GateUp(l)`: gate_up = ln · W_guᵀ;
/// - `Down(l)`: x += act · W_downᵀ (the residual add; row-parallel under tensor parallelism);
/// - `Head`: logits = ln · W_headᵀ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    Qkv(usize),
    Out(usize),
    GateUp(usize),
    Down(usize),
    Head,
}

/// A device's operations for one decode step, on its own buffers, cache and weights. Each acts on
/// the first `rows` rows; the step's positions and slots were set up by the device before
/// [`decode_stack`] runs.
pub trait DecodeDevice {
    /// `x[r]` = embedding of `tokens[r]`.
    fn embed(&mut self, model: &Model, tokens: &[u32]) -> Result<()>;
    /// ln = RMSNorm(x) with the weight of `norm`.
    fn rmsnorm(&mut self, model: &Model, norm: Norm, rows: usize) -> Result<()>;
    /// The projection `proj` (see [`Proj`]).
    fn project(&mut self, model: &Model, proj: Proj, rows: usize) -> Result<()>;
    /// Add layer `layer`'s q|k|v bias (where the model has one) to qkv, RMS-norm its q and k
    /// heads (where the model norms them: Qwen3), rotate its q and k heads by each row's position, store the k and v of every row in its slot at its position, then
    /// `att[r]` = attention of row r's query heads over its slot's positions 0..=position (every
    /// row's k/v of this step is stored first, so a prompt's rows attend causally among
    /// themselves).
    fn attend(&mut self, model: &Model, layer: usize, rows: usize) -> Result<()>;
    /// act = silu(gate) · up.
    fn swiglu(&mut self, model: &Model, rows: usize) -> Result<()>;
    /// Move residual rows `logit_rows` (strictly increasing) to rows 0.. .
    fn gather(&mut self, model: &Model, logit_rows: &[usize]) -> Result<()>;
}

/// One decode step of `tokens` through the model on `dev`: every layer, then the final norm and
/// the LM head on rows `logit_rows` (their logits land in rows 0.. of the device's logits).
pub fn decode_stack<D: DecodeDevice>(model: &Model, dev: &mut D, tokens: &[u32], logit_rows: &[usize]) -> Result<()> {
    let b = tokens.len();
    dev.embed(model, tokens)?;
    for l in 0..model.cfg.num_layers {
        dev.rmsnorm(model, Norm::Attn(l), b)?;
        dev.project(model, Proj::Qkv(l), b)?;
        dev.attend(model, l, b)?;
        dev.project(model, Proj::Out(l), b)?;
        dev.rmsnorm(model, Norm::Mlp(l), b)?;
        dev.project(model, Proj::GateUp(l), b)?;
        dev.swiglu(model, b)?;
        dev.project(model, Proj::Down(l), b)?;
    }
    let n = logit_rows.len();
    dev.gather(model, logit_rows)?;
    dev.rmsnorm(model, Norm::Final, n)?;
    dev.project(model, Proj::Head, n)
}

/// The position of each row (into `positions`) and each slot's length after the step (into
/// `next`): a slot's rows take its next positions in order, from `lens` (tokens held per slot).
/// Errors name a slot out of range or full (at `max_pos` positions). Reuses the vectors.
pub fn assign_positions(
    slots: &[usize],
    lens: &[usize],
    max_pos: usize,
    positions: &mut Vec<u32>,
    next: &mut Vec<usize>,
) -> Result<()> {
    next.clear();
    next.extend_from_slice(lens);
    positions.clear();
    for &s in slots {
        if s >= next.len() || next[s] >= max_pos {
            return Err(crate::error::Error::Invalid(format!("decode step: slot {s} is full or out of range")));
        }
        positions.push(next[s] as u32);
        next[s] += 1;
    }
    Ok(())
}

/// The checks every device makes of a step: one slot per token, logit rows strictly increasing
/// row indices, tokens inside the vocabulary.
pub fn check_step(model: &Model, tokens: &[u32], slots: &[usize], logit_rows: &[usize]) -> Result<()> {
    use crate::error::Error;
    let b = slots.len();
    if tokens.len() != b {
        return Err(Error::shape("decode step", format!("{} tokens for {b} slots", tokens.len())));
    }
    if logit_rows.windows(2).any(|p| p[0] >= p[1]) || logit_rows.last().is_some_and(|&r| r >= b) {
        return Err(Error::shape("decode step", "logit rows must be increasing row indices"));
    }
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= model.cfg.vocab_size) {
        return Err(Error::Invalid(format!("decode step: token {t} outside the vocabulary")));
    }
    Ok(())
}
