//! bf16 images of weight buffers. With bf16 products a weight would be rounded again by every
//! product that reads it (twice per training step, once per decoded token); a model instead keeps
//! one rounded copy, refreshed whenever its weights change (the AdamW kernel writes it in the same
//! pass), and registers it with its device: a "bf16" product whose second operand lies inside a
//! registered buffer reads the image (`Gpu::gemm`). Dropping the image unregisters it.

use crate::cuda::device::{lookup, Gpu, ImageEntry};
use crate::error::{Error, Result};
use crate::tensor::Dtype;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// A registered bf16 image of an f32 device buffer.
pub struct Bf16Image {
    gpu: Arc<Gpu>,
    /// Device address and length (elements) of the f32 buffer it mirrors.
    base: u64,
    len: usize,
    bits: CudaSlice<u16>,
}

impl Bf16Image {
    /// The image of `params` (rounded now and registered) when the device's products are "bf16";
    /// `None` otherwise.
    pub fn of(gpu: &Arc<Gpu>, params: &CudaSlice<f32>) -> Result<Option<Bf16Image>> {
        if gpu.dtype() != Dtype::Bf16 {
            return Ok(None);
        }
        let (len, base) = (params.len(), params.device_ptr(&gpu.stream).0);
        let bits = gpu.alloc::<u16>(len, "the bf16 image of the weights")?;
        let mut image = Bf16Image { gpu: gpu.clone(), base, len, bits };
        image.refresh(params)?;
        gpu.register_image(ImageEntry { base, len, image: image.ptr() })?;
        Ok(Some(image))
    }

    /// Round `params` (the buffer it was made for) again, after they changed.
    pub fn refresh(&mut self, params: &CudaSlice<f32>) -> Result<()> {
        let st = &self.gpu.stream;
        if params.device_ptr(st).0 != self.base || params.len() != self.len {
            return Err(Error::shape("bf16 image", "refreshed from another buffer than its own"));
        }
        let out = self.bits.device_ptr_mut(st).0;
        self.gpu.round_bf16(out, self.base, self.len)
    }

    /// Device address of the image (for a kernel that writes it, as `adamw_f32` does).
    pub fn ptr(&self) -> u64 {
        self.bits.device_ptr(&self.gpu.stream).0
    }
}

impl Drop for Bf16Image {
    fn drop(&mut self) {
        self.gpu.unregister_image(self.base);
    }
}

impl Gpu {
    /// Make products whose second operand lies in `entry`'s buffer read its image.
    pub(crate) fn register_image(&self, entry: ImageEntry) -> Result<()> {
        let mut v = self.images.lock().map_err(|_| Error::device("CUDA weight images", "poisoned"))?;
        v.retain(|e| e.base != entry.base);
        v.push(entry);
        Ok(())
    }

    /// Forget the image of the buffer at `base` (never fails: a poisoned lock holds nothing usable).
    pub(crate) fn unregister_image(&self, base: u64) {
        if let Ok(mut v) = self.images.lock() {
            v.retain(|e| e.base != base);
        }
    }

    /// The bf16 image of the `len` f32 elements at `ptr`, if a registered buffer holds them.
    pub(crate) fn image_of(&self, ptr: u64, len: usize) -> Option<u64> {
        self.images.lock().ok().and_then(|v| lookup(&v, ptr, len))
    }
}

#[cfg(test)]
mod tests {
    use crate::cuda::device::{lookup, ImageEntry};

    /// A product's operand maps into an image only when it lies wholly inside the mirrored
    /// buffer, at half the byte offset.
    #[test]
    fn operands_inside_a_registered_buffer_map_to_its_image() {
        let e =
            [ImageEntry { base: 0x1000, len: 100, image: 0x9000 }, ImageEntry { base: 0x5000, len: 8, image: 0xa000 }];
        assert_eq!(lookup(&e, 0x1000, 100), Some(0x9000));
        assert_eq!(lookup(&e, 0x1000 + 4 * 10, 20), Some(0x9000 + 2 * 10));
        assert_eq!(lookup(&e, 0x1000 + 4 * 90, 11), None, "runs past the end");
        assert_eq!(lookup(&e, 0x0ffc, 2), None, "starts before");
        assert_eq!(lookup(&e, 0x5000 + 4, 7), Some(0xa000 + 2));
        assert_eq!(lookup(&e, 0x7000, 1), None);
    }
}
