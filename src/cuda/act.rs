//! Activation storage on the device ([`Backend::Act`](crate::tensor::Backend::Act)): the rows that
//! only products read (normed rows, SwiGLU output, decode attention output) or only SwiGLU reads
//! (the gate|up projection), in f32, or with bf16 products in bf16, rounded to nearest even by the
//! kernel or product that writes them (the `_o16` entries, `Gpu::gemm_to_act`) and read as they
//! are by the product of the forward and by the weight gradient of the backward.
//! The values are the bits a rounding pass over the f32 rows would give; the passes and half of
//! the bytes are saved.

use crate::cuda::device::{drv, Gpu};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use std::ops::Range;

/// An activation buffer: its values in f32 or in bf16 (`u16` bit patterns).
pub enum GpuAct {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<u16>),
}

/// A read-only view of a range of an activation buffer's values.
pub enum ActView<'a> {
    F32(CudaView<'a, f32>),
    Bf16(CudaView<'a, u16>),
}

/// A writable view of a range of an activation buffer's values.
pub enum ActViewMut<'a> {
    F32(CudaViewMut<'a, f32>),
    Bf16(CudaViewMut<'a, u16>),
}

impl GpuAct {
    /// Values the buffer holds.
    pub fn len(&self) -> usize {
        match self {
            GpuAct::F32(b) => b.len(),
            GpuAct::Bf16(b) => b.len(),
        }
    }

    /// Whether the buffer holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the values are bf16.
    pub fn is_bf16(&self) -> bool {
        matches!(self, GpuAct::Bf16(_))
    }

    /// Bytes the buffer holds.
    pub fn bytes(&self) -> usize {
        match self {
            GpuAct::F32(b) => 4 * b.len(),
            GpuAct::Bf16(b) => 2 * b.len(),
        }
    }

    /// Device address of the first value.
    pub fn ptr(&self, g: &Gpu) -> u64 {
        match self {
            GpuAct::F32(b) => b.device_ptr(&g.stream).0,
            GpuAct::Bf16(b) => b.device_ptr(&g.stream).0,
        }
    }

    /// View of values `r`.
    pub fn view(&self, r: Range<usize>) -> ActView<'_> {
        match self {
            GpuAct::F32(b) => ActView::F32(b.slice(r)),
            GpuAct::Bf16(b) => ActView::Bf16(b.slice(r)),
        }
    }

    /// Writable view of values `r`.
    pub fn view_mut(&mut self, r: Range<usize>) -> ActViewMut<'_> {
        match self {
            GpuAct::F32(b) => ActViewMut::F32(b.slice_mut(r)),
            GpuAct::Bf16(b) => ActViewMut::Bf16(b.slice_mut(r)),
        }
    }
}

impl ActView<'_> {
    /// Values in the view.
    pub fn len(&self) -> usize {
        match self {
            ActView::F32(v) => v.len(),
            ActView::Bf16(v) => v.len(),
        }
    }

    /// Whether the view holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sub-view of values `r`.
    pub fn slice(&self, r: Range<usize>) -> Self {
        match self {
            ActView::F32(v) => ActView::F32(v.slice(r)),
            ActView::Bf16(v) => ActView::Bf16(v.slice(r)),
        }
    }

    /// Device address of the first value.
    pub fn ptr(&self, g: &Gpu) -> u64 {
        match self {
            ActView::F32(v) => v.device_ptr(&g.stream).0,
            ActView::Bf16(v) => v.device_ptr(&g.stream).0,
        }
    }
}

impl ActViewMut<'_> {
    /// Values in the view.
    pub fn len(&self) -> usize {
        match self {
            ActViewMut::F32(v) => v.len(),
            ActViewMut::Bf16(v) => v.len(),
        }
    }

    /// Whether the view holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Device address of the first value.
    pub fn ptr(&mut self, g: &Gpu) -> u64 {
        match self {
            ActViewMut::F32(v) => v.device_ptr_mut(&g.stream).0,
            ActViewMut::Bf16(v) => v.device_ptr_mut(&g.stream).0,
        }
    }

    /// The kernel entry suffix of a kernel writing this view: "" for f32, "_o16" for bf16.
    pub fn out_suffix(&self) -> &'static str {
        match self {
            ActViewMut::F32(_) => "",
            ActViewMut::Bf16(_) => "_o16",
        }
    }
}

impl Gpu {
    /// `buf` with room for at least `n` values, in bf16 when `bf16` holds, else f32 (reallocated,
    /// contents lost, when it holds fewer values or the other type).
    pub(crate) fn act_fit(&self, buf: &mut GpuAct, n: usize, bf16: bool) -> Result<()> {
        if buf.is_bf16() == bf16 && buf.len() >= n {
            return Ok(());
        }
        let n = n.max(1); // the stream-ordered allocator is never asked for zero bytes
                          // the old buffer is freed first: its memory may serve the larger one
        *buf = GpuAct::F32(self.alloc(1, "activations")?);
        *buf = match bf16 {
            true => GpuAct::Bf16(self.alloc(n, "activations")?),
            false => GpuAct::F32(self.alloc(n, "activations")?),
        };
        Ok(())
    }

    /// An activation buffer holding `data`, rounded to bf16 (to nearest even) when `bf16` holds.
    pub fn act_upload(&self, data: &[f32], bf16: bool) -> Result<GpuAct> {
        if !bf16 {
            return Ok(GpuAct::F32(self.htod(data)?));
        }
        let bits: Vec<u16> = data.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
        Ok(GpuAct::Bf16(self.htod(&bits)?))
    }

    /// `buf[..out.len()]` on the host as f32 (bf16 values widened exactly).
    pub(crate) fn act_to_host(&self, buf: &GpuAct, out: &mut [f32]) -> Result<()> {
        if out.len() > buf.len() {
            return Err(Error::shape("download", format!("{} values from a buffer of {}", out.len(), buf.len())));
        }
        match buf {
            GpuAct::F32(b) => self.stream.memcpy_dtoh(&b.slice(0..out.len()), out).map_err(drv("download"))?,
            GpuAct::Bf16(b) => {
                let mut bits = vec![0u16; out.len()];
                self.stream.memcpy_dtoh(&b.slice(0..out.len()), &mut bits).map_err(drv("download"))?;
                self.sync()?;
                for (o, b) in out.iter_mut().zip(bits) {
                    *o = half::bf16::from_bits(b).to_f32();
                }
            }
        }
        self.sync()
    }
}
