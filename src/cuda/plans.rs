//! The kernel plans a device chooses between: each names kernels that compute the same result
//! (the same sums, or the same sums in another order), kept side by side so that a GPU session
//! can check and time the alternatives in one run (`bench gpu` flags, `scripts/gpu-check.sh`).
//! A device's choice of each is set where its kernels launch (`cuda::attention`,
//! `cuda::decode_attn`).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, Ordering};

/// A kind of plan a device chooses between at run time.
pub trait PlanKind: Copy + Eq + 'static {
    /// Every variant.
    const ALL: &'static [Self];
}

/// A device's current choice of a plan, changed through a shared reference (the device is shared
/// between engines and threads; a choice is read at each launch).
pub struct Choice<T: PlanKind>(AtomicU8, PhantomData<T>);

impl<T: PlanKind> Choice<T> {
    pub fn new(plan: T) -> Choice<T> {
        let c = Choice(AtomicU8::new(0), PhantomData);
        c.set(plan);
        c
    }

    pub fn get(&self) -> T {
        T::ALL[self.0.load(Ordering::Relaxed) as usize]
    }

    pub fn set(&self, plan: T) {
        let at = T::ALL.iter().position(|&p| p == plan).expect("PlanKind::ALL lists every variant");
        self.0.store(at as u8, Ordering::Relaxed);
    }
}

/// How the attention backward (f32 and tensor-core kernels alike) sums dK and dV over the query
/// heads that share a kv head. Both are deterministic (no atomics); they differ in the order of f32
/// additions only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkdvPlan {
    /// One block per (key block, query head) writes that head's dK and dV into scratch, and
    /// `attn_bwd_group_sum_f32` sums each group in head order: a group's heads run in parallel
    /// (the default). Scratch: 2 · N · H · D floats more.
    PerHead,
    /// One block per (key block, kv head) loops over the group's heads, one after another: no
    /// extra scratch, a group's-size longer critical path.
    Grouped,
}

impl PlanKind for DkdvPlan {
    const ALL: &'static [Self] = &[DkdvPlan::PerHead, DkdvPlan::Grouped];
}

impl DkdvPlan {
    pub fn name(self) -> &'static str {
        match self {
            DkdvPlan::PerHead => "per-head",
            DkdvPlan::Grouped => "grouped",
        }
    }
}

/// Which kernel attends a decode step's queries to the KV cache (decode_attention.cu). Both compute
/// the same softmax in f32, with rounding of their own: the per-group kernel scales q by 1/√D
/// before the products where the per-head one scales each product, the online softmax rescales
/// per 32 positions or per position, and the additions run in other orders (their GPU test allows
/// for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeAttn {
    /// One block per (row, kv head) for the whole GQA group (`decode_attn_gqa_*`): each cached key
    /// and value is read once per group (the default; groups up to 8, head dims up to 128, else
    /// `PerHead`).
    PerGroup,
    /// One block per (row, query head) (`decode_attn_*`): the group's heads each read the cache.
    PerHead,
}

impl PlanKind for DecodeAttn {
    const ALL: &'static [Self] = &[DecodeAttn::PerGroup, DecodeAttn::PerHead];
}

impl DecodeAttn {
    pub fn name(self) -> &'static str {
        match self {
            DecodeAttn::PerGroup => "per-group",
            DecodeAttn::PerHead => "per-head",
        }
    }
}

/// Which tensor-core products the bf16 attention runs on, forward and backward
/// (cuda/attention_mma.cu, attention_mma_bwd.cu: one source over the two product policies of mma.cuh and wgmma.cuh).
/// Both compute the same FlashAttention-2 sums in f32 over bf16 products; they differ in the
/// order of the f32 additions inside each product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnMma {
    /// Each warp's `mma.sync` (`MmaOps`; sm_80 and later): the default.
    Mma,
    /// The block's warpgroup `wgmma` (`WgmmaOps`; sm_90a, Hopper only): opt-in until a GPU run
    /// has checked and timed it.
    Wgmma,
}

impl PlanKind for AttnMma {
    const ALL: &'static [Self] = &[AttnMma::Mma, AttnMma::Wgmma];
}

impl AttnMma {
    pub fn name(self) -> &'static str {
        match self {
            AttnMma::Mma => "mma",
            AttnMma::Wgmma => "wgmma",
        }
    }
}

/// How many query rows (forward, dQ) or keys (dK/dV) a block of the bf16 attention owns: 64 (one
/// warpgroup of four warps) or 128 (two warpgroups, sharing each streamed tile of keys or
/// queries, so half the tile copies per product). Each warpgroup takes the tiles up to its own
/// rows' diagonal, so both give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnRows {
    /// One warpgroup per block: more, smaller blocks.
    R64,
    /// Two warpgroups per block (the default, FlashAttention-2's 128-row blocks); a kernel whose
    /// tiles would not fit the device's shared memory runs with 64 rows.
    R128,
}

impl PlanKind for AttnRows {
    const ALL: &'static [Self] = &[AttnRows::R64, AttnRows::R128];
}

impl AttnRows {
    pub fn name(self) -> &'static str {
        match self {
            AttnRows::R64 => "64",
            AttnRows::R128 => "128",
        }
    }

    /// Warpgroups (64-row tiles) per block.
    pub fn warpgroups(self) -> u32 {
        match self {
            AttnRows::R64 => 1,
            AttnRows::R128 => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set to each plan of its kind in turn, a choice reads that plan back; no plan is listed twice.
    fn reads_back<T: PlanKind + std::fmt::Debug>(default: T) {
        let c = Choice::new(default);
        assert_eq!(c.get(), default);
        for (i, &p) in T::ALL.iter().enumerate().rev() {
            c.set(p);
            assert_eq!(c.get(), p);
            assert!(!T::ALL[..i].contains(&p), "{p:?} listed twice");
        }
    }

    #[test]
    fn a_choice_reads_back_every_plan_it_is_set_to() {
        reads_back(DkdvPlan::PerHead);
        reads_back(DecodeAttn::PerGroup);
        reads_back(AttnMma::Mma);
        reads_back(AttnRows::R128);
        assert_eq!(AttnRows::ALL.len(), 2);
    }
}
