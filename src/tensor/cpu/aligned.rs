//! A zero-initialised f32 buffer whose first element sits on a 64-byte (cache-line) boundary.
//!
//! The SIMD kernels load whole vectors; from a 16-byte-aligned `Vec<f32>` one 32-byte load in two
//! (and three 64-byte loads in four) straddle two cache lines and cost two accesses. The decode
//! path's packed weights and KV cache live in these buffers.

use std::ops::{Deref, DerefMut};

/// Floats per cache line.
pub const LINE: usize = 16;

/// `len` zeros starting on a cache line.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    data: Vec<f32>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn zeros(len: usize) -> Self {
        let data = vec![0.0f32; len + LINE];
        // an f32 pointer is 4-aligned, so the offset to the next 64-byte boundary is < 16 floats
        let off = data.as_ptr().align_offset(LINE * 4).min(LINE);
        AlignedBuf { data, off, len }
    }
}

/// A clone is a new allocation, aligned afresh (copying `off` would not keep it aligned).
impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        let mut b = AlignedBuf::zeros(self.len);
        b.copy_from_slice(self);
        b
    }
}

impl Deref for AlignedBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data[self.off..self.off + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[self.off..self.off + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_holds_zeros_and_survives_clone() {
        for len in [0, 1, 15, 16, 17, 1000] {
            let mut b = AlignedBuf::zeros(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0.0));
            assert_eq!(b.as_ptr() as usize % 64, 0, "len {len}");
            if len > 0 {
                b[len - 1] = 3.0;
            }
            let c = b.clone();
            assert_eq!(&c[..], &b[..]);
            assert_eq!(c.as_ptr() as usize % 64, 0, "clone of len {len}");
        }
    }
}
