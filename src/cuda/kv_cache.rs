//! The KV cache of GPU decoding: every layer's keys and values for a number of sequence slots
//! in device memory ([slots + 1, KV, max_len, D] per layer, the layout of
//! cuda/decode_attention.cu; the extra slot takes the padding rows of a captured step).

use crate::cuda::device::Gpu;
use crate::error::Result;
use crate::model::Model;
use crate::tensor::Dtype;
use cudarc::driver::CudaSlice;

/// Keys and values of every layer for `slots` sequences of up to `max_len` tokens, on the device,
/// plus a spare slot (index `slots`) that the padding rows of a captured step decode into.
pub struct GpuKvCache {
    pub slots: usize,
    pub max_len: usize,
    /// Whether keys and values are held in bf16 (made on a device whose products are "bf16": half
    /// the memory and half the decode attention's traffic), else f32.
    pub(crate) bf16: bool,
    /// Each layer's keys and values as 16-bit words (two per element when f32).
    pub(crate) k: Vec<CudaSlice<u16>>,
    pub(crate) v: Vec<CudaSlice<u16>>,
    /// Tokens held per slot.
    pub len: Vec<usize>,
}

impl GpuKvCache {
    /// An empty cache for `model`, in bf16 when the device's products are "bf16".
    pub fn new(gpu: &Gpu, model: &Model, slots: usize, max_len: usize) -> Result<Self> {
        let bf16 = gpu.dtype() == Dtype::Bf16;
        let per = model.cfg.kv_cache_elems(slots, max_len) * if bf16 { 1 } else { 2 };
        let alloc = || gpu.alloc::<u16>(per.max(2), "the KV cache (lower max_batch)");
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for _ in 0..model.cfg.num_layers {
            k.push(alloc()?);
            v.push(alloc()?);
        }
        Ok(GpuKvCache { slots, max_len, bf16, k, v, len: vec![0; slots] })
    }
}
