//! Per-policy cost of a training step: which phases a policy pays, each derived from the model size,
//! the GPUs and the links.
//!
//! Every step trains on its tokens: `6N · tokens / (G · peak · mfu)` on the `G` training GPUs, plus
//! `training.update_overhead_s`. On top of that a policy lists the phases its system runs
//! (`phases = [...]` in its `[[policy]]` table):
//!
//! | phase | cost | who pays it |
//! |---|---|---|
//! | `old_logprob` | `2N · tokens / (G · peak · mfu)`: a forward pass recomputing π_old | trainers that do not reuse the rollout's log-probs (verl, sync colocated), AReaL's proximal policy |
//! | `ref_forward` | `2N · tokens / (G · peak · mfu)`: the reference model's forward pass (KL) | KL-regularised objectives |
//! | `offload` | `2 · 16N bytes / (G · pcie)`: parameters, gradients and Adam state to host and back | colocated systems that free GPU memory for generation |
//! | `reshard` | `2N bytes / intra_node_gb_per_s`: training layout → inference layout in place | colocated systems |
//! | `broadcast` | `2N bytes / link_gb_per_s`: trainer → inference engines over the network | disaggregated systems |
//! | `activation_recompute` | one more forward pass (as `old_logprob`) inside the backward | trainers with gradient checkpointing (long sequences) |
//!
//! With `phases` the causal attention FLOPs are charged too (when `model.layers` is known): a sample
//! of `s` tokens costs `2 · layers · hidden · s²` FLOPs per forward pass and three times that in the
//! training pass, so long samples cost more than their token count says.
//!
//! With `hardware.stream_gb_per_s` (set by the hardware profiles) every policy also pays the
//! memory-bound activation traffic of its passes ([`crate::activation`]): the training pass and
//! each further forward pass move activations that grow like `hidden` per layer while the FLOPs grow
//! like `hidden²`, which is what makes small models reach a lower share of peak.
//!
//! `training.sync_overhead_s` is added to every weight sync. A policy without `phases` keeps the
//! legacy charge: weight sync over the placement's link (reshard when colocated, broadcast when
//! disaggregated) and nothing else, so older scenario files give the same numbers.

use crate::activation::TRAIN_PASS_FORWARDS;
use crate::scenario::{Placement, Policy, Scenario};
use serde::{Deserialize, Serialize};

/// A phase of the training step beyond the training pass itself.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CostPhase {
    /// Recompute π_old log-probs (one forward pass over the batch).
    OldLogprob,
    /// Reference-model forward pass (KL penalty).
    RefForward,
    /// Offload training state to host and reload it (colocated time sharing).
    Offload,
    /// Reshard weights from the training to the inference layout (colocated).
    Reshard,
    /// Broadcast weights to disaggregated inference engines.
    Broadcast,
    /// Activation recomputation (gradient checkpointing): one more forward pass inside the backward.
    ActivationRecompute,
}

/// Bytes of training state per parameter: bf16 weights and gradients, fp32 master weights and the
/// two Adam moments.
pub const TRAIN_STATE_BYTES_PER_PARAM: f64 = 16.0;

/// The training-side costs of one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainCost {
    /// Seconds per trained token (training pass plus per-token phases).
    pub per_token_s: f64,
    /// Fixed seconds per step (update overhead plus offload/reload).
    pub fixed_s: f64,
    /// Weight synchronisation per step, s.
    pub sync_s: f64,
    /// Seconds per squared sample length (causal attention of all passes; 0 without `phases`).
    pub per_sq_token_s: f64,
    /// Per-phase breakdown `(phase, s per token, fixed s)` for logs and tests.
    pub phases: Vec<(&'static str, f64, f64)>,
}

impl TrainCost {
    /// Derive the costs of `pol` with `train_gpus` training GPUs under `placement`.
    pub fn new(sc: &Scenario, pol: &Policy, placement: Placement, train_gpus: u32) -> TrainCost {
        let h = &sc.hardware;
        let n = sc.model.params_b * 1e9;
        let g = train_gpus.max(1) as f64;
        // Same operation order as before per-policy phases existed (bit-identical legacy results).
        let flops = g * (h.peak_tflops * 1e12) * sc.training.mfu;
        let weight_bytes = 2.0 * n;
        let train = 6.0 * n / flops;
        let overhead = sc.training.update_overhead_s;
        let mut phases = vec![("train", train, overhead)];
        let (mut per_token, mut fixed, mut sync) = (train, overhead, 0.0);
        // Causal attention FLOPs of one forward pass per squared sample length.
        let attn_fwd = match (sc.model.layers, &pol.phases) {
            (Some(l), Some(_)) => 2.0 * l as f64 * crate::decode::hidden(sc) / flops,
            _ => 0.0,
        };
        let mut per_sq = 3.0 * attn_fwd;
        // Forward-pass equivalents of activation traffic through the layers and the output layer.
        let (mut act_layers, mut act_head) = (TRAIN_PASS_FORWARDS, TRAIN_PASS_FORWARDS);
        match &pol.phases {
            None => {
                let bw = match placement {
                    Placement::Colocated => h.intra_node_gb_per_s,
                    Placement::Disaggregated => h.link_gb_per_s,
                } * 1e9;
                sync = weight_bytes / bw;
                phases.push((if placement == Placement::Colocated { "reshard" } else { "broadcast" }, 0.0, sync));
            }
            Some(list) => {
                for p in list {
                    let (name, tok, fix) = match p {
                        CostPhase::OldLogprob => ("old_logprob", 2.0 * n / flops, 0.0),
                        CostPhase::RefForward => ("ref_forward", 2.0 * n / flops, 0.0),
                        CostPhase::Offload => {
                            ("offload", 0.0, 2.0 * TRAIN_STATE_BYTES_PER_PARAM * n / (g * h.pcie_gb_per_s * 1e9))
                        }
                        CostPhase::Reshard => ("reshard", 0.0, weight_bytes / (h.intra_node_gb_per_s * 1e9)),
                        CostPhase::Broadcast => ("broadcast", 0.0, weight_bytes / (h.link_gb_per_s * 1e9)),
                        CostPhase::ActivationRecompute => ("activation_recompute", 2.0 * n / flops, 0.0),
                    };
                    if matches!(p, CostPhase::OldLogprob | CostPhase::RefForward | CostPhase::ActivationRecompute) {
                        per_sq += attn_fwd;
                        act_layers += 1.0;
                    }
                    if matches!(p, CostPhase::OldLogprob | CostPhase::RefForward) {
                        act_head += 1.0;
                    }
                    if matches!(p, CostPhase::Reshard | CostPhase::Broadcast) {
                        sync += fix;
                    } else {
                        per_token += tok;
                        fixed += fix;
                    }
                    phases.push((name, tok, fix));
                }
            }
        }
        // Memory-bound activation traffic (only with `hardware.stream_gb_per_s`; else nothing, and
        // the numbers are those of the FLOPs-only model).
        let act = crate::activation::per_token_s(sc, act_layers, act_head, train_gpus);
        if act > 0.0 {
            phases.push(("activation_io", act, 0.0));
            per_token += act;
        }
        // Trainer model parallelism (derived cost model only): per-layer TP all-reduces and the
        // pipeline bubble; nothing for a data-parallel trainer, so those results are unchanged.
        let par = crate::train_parallel::TrainParallel::of(sc);
        if let (Some(list), false, Some(_)) = (&pol.phases, par.is_data_parallel(), sc.model.layers) {
            let fwd = list
                .iter()
                .filter(|p| matches!(p, CostPhase::OldLogprob | CostPhase::RefForward | CostPhase::ActivationRecompute))
                .count() as f64;
            let passes = 4.0 + 2.0 * fwd;
            let bubble = par.bubble_factor() - 1.0;
            let (bubble_tok, bubble_sq) = (per_token * bubble, per_sq * bubble);
            let ar_tok = par.allreduce_per_token_s(sc, passes, train_gpus);
            let ar_fix = par.allreduce_latency_s(sc, passes);
            phases.push(("tp_allreduce", ar_tok, ar_fix));
            phases.push(("pipeline_bubble", bubble_tok, 0.0));
            per_token += bubble_tok + ar_tok;
            per_sq += bubble_sq;
            fixed += ar_fix;
        }
        TrainCost {
            per_token_s: per_token,
            fixed_s: fixed,
            sync_s: sync + sc.training.sync_overhead_s,
            per_sq_token_s: per_sq,
            phases,
        }
    }
}
