//! Megatron-style tensor-parallel sharding of a model's parameters.
//!
//! With tp ranks, rank r holds:
//! - attention heads [r·H/tp, (r+1)·H/tp) and kv heads [r·KV/tp, (r+1)·KV/tp): the rows of
//!   q_proj/k_proj/v_proj (and their biases) — column-parallel — and the matching columns of
//!   o_proj — row-parallel;
//! - MLP channels [r·I/tp, (r+1)·I/tp): rows of gate_proj/up_proj (column-parallel) and columns of
//!   down_proj (row-parallel);
//! - a full copy of the embeddings, the norms and the LM head (replicated: arbor's vocabularies
//!   are small, and a replicated head keeps sampling identical on every rank without a gather).
//!   Qwen3's head norms (q_norm, k_norm) are replicated too; a shard's backward gives the part of
//!   their gradients that its heads make, summed over the group before it is added.
//!
//! A shard is itself a valid model of the *local* configuration (H/tp heads, KV/tp kv heads,
//! I/tp channels), so the layer code runs unchanged; the two all-reduces per block (after
//! o_proj and down_proj in the forward, on the input gradients of qkv and gate|up in the
//! backward) are issued by the model when it holds a [`TpGroup`] of size > 1.

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::params::{ParamSpec, Params};
use crate::parallel::{Comm, TpGroup};

/// How one tensor is split across the tensor-parallel ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Every rank holds all of it.
    Replicated,
    /// Rows (HF `[out, in]` output features) are split: column-parallel linear layers and biases.
    Rows,
    /// Columns (input features) are split: row-parallel linear layers.
    Cols,
}

/// How the tensor named `name` is split.
pub fn split_of(name: &str) -> Split {
    let cols = name.ends_with("self_attn.o_proj.weight") || name.ends_with("mlp.down_proj.weight");
    let rows = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"].iter().any(|p| name.contains(&format!(".{p}.")));
    if cols {
        Split::Cols
    } else if rows {
        Split::Rows
    } else {
        Split::Replicated
    }
}

/// The configuration of one of `tp` shards of `full` (clear error when tp does not divide the
/// heads, the kv heads or the MLP width).
pub fn shard_config(full: &ModelConfig, tp: usize) -> Result<ModelConfig> {
    for (what, n) in [
        ("num_attention_heads", full.num_heads),
        ("num_key_value_heads", full.num_kv_heads),
        ("intermediate_size", full.intermediate_size),
    ] {
        if tp == 0 || !n.is_multiple_of(tp) {
            return Err(Error::Invalid(format!(
                "parallel.tp = {tp} does not divide the model's {what} = {n} (tensor parallelism splits heads, kv heads and MLP channels evenly)"
            )));
        }
    }
    Ok(ModelConfig {
        num_heads: full.num_heads / tp,
        num_kv_heads: full.num_kv_heads / tp,
        intermediate_size: full.intermediate_size / tp,
        ..full.clone()
    })
}

/// Copy rank `rank`'s part of `full` into `shard` (or the reverse when `gather`), tensor by tensor.
fn copy_shard(full: &mut [f32], full_spec: &ParamSpec, shard: &mut [f32], spec: &ParamSpec, rank: usize, gather: bool) {
    let f = &mut full[full_spec.range()];
    let s = &mut shard[spec.range()];
    let (f_len, s_len) = (f.len(), s.len());
    let mut put = |fr: std::ops::Range<usize>, sr: std::ops::Range<usize>| {
        if gather {
            f[fr].copy_from_slice(&s[sr]);
        } else {
            s[sr].copy_from_slice(&f[fr]);
        }
    };
    match split_of(&spec.name) {
        Split::Replicated => put(0..f_len, 0..s_len),
        Split::Rows => {
            let n = spec.numel();
            put(rank * n..(rank + 1) * n, 0..n);
        }
        Split::Cols => {
            let (rows, local, width) = (spec.shape[0], spec.shape[1], full_spec.shape[1]);
            for i in 0..rows {
                put(i * width + rank * local..i * width + (rank + 1) * local, i * local..(i + 1) * local);
            }
        }
    }
}

/// Rank `rank`'s shard of the full parameters `full` (laid out for `shard_cfg`).
pub fn shard_params(full: &Params, shard_cfg: &ModelConfig, rank: usize) -> Result<Params> {
    let mut out = Params::zeros(shard_cfg);
    let mut src = full.data.clone();
    for spec in out.layout.specs.clone() {
        let fs = full
            .layout
            .get(&spec.name)
            .ok_or_else(|| Error::shape("sharding", format!("the full model has no tensor {}", spec.name)))?
            .clone();
        copy_shard(&mut src, &fs, &mut out.data, &spec, rank, false);
    }
    Ok(out)
}

/// Reassemble the full tensors of `full_cfg` from every rank's shard (a collective over `tp`;
/// every rank gets the full buffer). `shard` has the layout of `shard_config(full_cfg, tp)`.
pub fn gather_params(shard: &Params, full_cfg: &ModelConfig, tp: &dyn Comm) -> Result<Params> {
    let mut full = Params::zeros(full_cfg);
    let bytes = tp.all_gather_bytes(bytemuck::cast_slice(&shard.data))?;
    for (rank, b) in bytes.iter().enumerate() {
        if b.len() != shard.data.len() * 4 {
            let msg = format!("sent {} bytes, expected {}", b.len(), shard.data.len() * 4);
            return Err(Error::collective(rank, "tensor-parallel gather", msg));
        }
        let mut data: Vec<f32> = vec![0.0; shard.data.len()];
        bytemuck::cast_slice_mut::<f32, u8>(&mut data).copy_from_slice(b);
        for spec in &shard.layout.specs {
            let fs = full
                .layout
                .get(&spec.name)
                .ok_or_else(|| Error::shape("gather", format!("the full model has no tensor {}", spec.name)))?
                .clone();
            copy_shard(&mut full.data, &fs, &mut data, spec, rank, true);
        }
    }
    Ok(full)
}

/// A model's tensor-parallel placement: its group and the configuration of the whole model.
#[derive(Debug, Clone)]
pub struct TensorParallel {
    pub group: TpGroup,
    /// The unsharded configuration (what checkpoints and HF exports hold).
    pub full: ModelConfig,
}

impl TensorParallel {
    /// Sum of squares of `grads` (shard layout) as the full model would see it: sharded tensors
    /// summed over the group, replicated tensors counted once.
    pub fn sum_squares(&self, layout: &crate::model::ParamLayout, grads: &[f32]) -> Result<f64> {
        let (mut sharded, mut replicated) = (0.0f64, 0.0f64);
        for spec in &layout.specs {
            let s: f64 = grads[spec.range()].iter().map(|&g| (g as f64) * (g as f64)).sum();
            match split_of(&spec.name) {
                Split::Replicated => replicated += s,
                _ => sharded += s,
            }
        }
        let mut buf = [sharded];
        self.group.all_reduce_sum_f64(&mut buf)?;
        Ok(buf[0] + replicated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;

    fn cfg() -> ModelConfig {
        ModelConfig {
            arch: Arch::Qwen2,
            hidden_size: 8,
            intermediate_size: 12,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 2,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            vocab_size: 11,
            max_position_embeddings: 16,
            tie_word_embeddings: false,
            qkv_bias: true,
            bos_token_id: None,
            eos_token_ids: Vec::new(),
        }
    }

    #[test]
    fn shards_tile_every_tensor_exactly_once() {
        let full_cfg = cfg();
        let mut full = Params::zeros(&full_cfg);
        full.data.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        let local = shard_config(&full_cfg, 2).unwrap();
        let shards: Vec<Params> = (0..2).map(|r| shard_params(&full, &local, r).unwrap()).collect();
        // every element of a split tensor lands in exactly one shard; replicated ones in both
        let mut seen = vec![0u32; full.data.len()];
        for s in &shards {
            for &x in &s.data {
                seen[x as usize] += 1;
            }
        }
        for spec in &full.layout.specs {
            let want = if split_of(&spec.name) == Split::Replicated { 2 } else { 1 };
            assert!(seen[spec.range()].iter().all(|&c| c == want), "{}", spec.name);
        }
        // o_proj columns: row 0 of rank 1's shard starts at column H·D/2 of the full row 0
        let o = "model.layers.1.self_attn.o_proj.weight";
        assert_eq!(shards[1].tensor(o).unwrap()[0], full.tensor(o).unwrap()[4]);
        // reassembly is the inverse (a gather on one rank holding both shards)
        let mut back = Params::zeros(&full_cfg);
        for (r, s) in shards.iter().enumerate() {
            let mut d = s.data.clone();
            for spec in &s.layout.specs {
                let fs = back.layout.get(&spec.name).unwrap().clone();
                copy_shard(&mut back.data, &fs, &mut d, spec, r, true);
            }
        }
        assert_eq!(back.data, full.data);
    }

    #[test]
    fn tp_must_divide_heads_and_channels() {
        let err = shard_config(&cfg(), 4).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads = 2"), "{err}");
        assert!(shard_config(&cfg(), 3).is_err());
    }
}
