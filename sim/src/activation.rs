//! Activation traffic of the training passes: the memory-bound part of a training step.
//!
//! The tensor cores' time is FLOPs / (peak · `training.mfu`). Around the GEMMs, every layer runs
//! memory-bound kernels (norms, rotary, attention input/output, SwiGLU, residual adds) whose time is
//! bytes / bandwidth, and each GEMM writes its output tile after its main loop (the epilogue; its
//! operand reads are pipelined behind the MMAs and are not counted). Per token per layer, these
//! move a number of bf16 activations that grows like `hidden`, while the GEMM FLOPs grow like
//! `hidden²`: a small model spends a larger share of its step on them, which one `mfu` for every
//! size cannot express. The count, per token, one forward pass of a pre-norm, grouped-query,
//! SwiGLU layer (`h` = hidden, `kv` = key/value width, `f` = MLP width; reads + writes):
//!
//! | kernel | elements |
//! |---|---|
//! | 2 RMSNorms (read, write) | 4h |
//! | QKV projection output | h + 2kv |
//! | rotary on q and k (read, write) | 2h + 2kv |
//! | attention: read q, k, v; write the output | 2h + 2kv |
//! | output projection output | h |
//! | 2 residual adds (read 2, write 1) | 6h |
//! | gate/up projection output | 2f |
//! | SwiGLU (read gate and up, write) | 3f |
//! | down projection output | h |
//! | **layer total** | **17h + 6kv + 5f** |
//!
//! The output layer adds `3 · vocab` per token (the logits written by the head GEMM, read and
//! written by the log-softmax that gives the policy's log-probabilities) when `model.vocab` is
//! known. A backward pass moves twice a forward pass's bytes (each kernel reads its saved input and
//! the output gradient and writes the input gradient), so the training pass counts 3 forward
//! passes, and each further forward pass (π_old, reference, activation recompute) one; activation
//! recompute re-runs the layers, not the output layer. Bytes are spread over the training GPUs like
//! the FLOPs (sequence parallelism splits the elementwise kernels over a tensor-parallel group):
//!
//! ```text
//! s per token = (layer_passes · layers · (17h + 6kv + 5f) + head_passes · 3 · vocab) · 2 B
//!               / (G · hardware.stream_gb_per_s)
//! ```
//!
//! `hardware.stream_gb_per_s` is the sustained bandwidth of streaming kernels (a hardware profile
//! constant, [`crate::hardware`]). Without it nothing is charged.

use crate::scenario::Scenario;

/// Bytes per activation element (bf16).
pub const BYTES_PER_ELEMENT: f64 = 2.0;

/// Forward passes' worth of activation traffic in one training pass (forward + a backward that
/// moves twice the bytes).
pub const TRAIN_PASS_FORWARDS: f64 = 3.0;

/// Key/value width of one layer, from the KV-cache bytes per token (`2 · layers · kv · 2 B`).
pub fn kv_width(sc: &Scenario) -> f64 {
    match sc.model.layers {
        Some(l) if l > 0 => sc.model.kv_bytes_per_token / (2.0 * BYTES_PER_ELEMENT * l as f64),
        _ => 0.0,
    }
}

/// MLP width: `model.ffn_hidden`, else `4 · hidden`.
pub fn ffn_width(sc: &Scenario) -> f64 {
    match sc.model.ffn_hidden {
        Some(f) => f as f64,
        None => 4.0 * crate::decode::hidden(sc),
    }
}

/// Activation elements one layer moves per token in one forward pass: `17h + 6kv + 5f`.
pub fn layer_elements(sc: &Scenario) -> f64 {
    17.0 * crate::decode::hidden(sc) + 6.0 * kv_width(sc) + 5.0 * ffn_width(sc)
}

/// Activation elements the output layer moves per token in one forward pass: `3 · vocab` (0 when
/// `model.vocab` is absent).
pub fn head_elements(sc: &Scenario) -> f64 {
    3.0 * sc.model.vocab.unwrap_or(0) as f64
}

/// Seconds per token (over `train_gpus`) of the activation traffic of `layer_passes` forward-pass
/// equivalents through the layers and `head_passes` through the output layer. 0 without
/// `hardware.stream_gb_per_s` or `model.layers`.
pub fn per_token_s(sc: &Scenario, layer_passes: f64, head_passes: f64, train_gpus: u32) -> f64 {
    let (Some(bw), Some(layers)) = (sc.hardware.stream_gb_per_s, sc.model.layers) else { return 0.0 };
    let elements = layer_passes * layers as f64 * layer_elements(sc) + head_passes * head_elements(sc);
    elements * BYTES_PER_ELEMENT / (train_gpus.max(1) as f64 * bw * 1e9)
}
