//! Reductions over whole buffers: the global L2 norm of a gradient.

use crate::tensor::cpu::simd::simd_kernel;
use rayon::prelude::*;

/// Elements per rayon task. The norm's value depends on this split (each chunk is summed in f32
/// lanes, the chunks in f64), so it is fixed.
const CHUNK: usize = 1 << 14;

simd_kernel! {
    /// Σ x² of one chunk in f32 lanes (chunks are summed in f64).
    fn sum_squares(x: &[f32]) -> f64 {
        crate::tensor::cpu::simd::dot(x, x) as f64
    }
}

/// Global L2 norm of a gradient buffer (accumulated in f64).
pub fn grad_norm(grads: &[f32]) -> f32 {
    grads.par_chunks(CHUNK).map(sum_squares).sum::<f64>().sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_norm_is_the_l2_norm_across_chunk_boundaries() {
        assert_eq!(grad_norm(&[]), 0.0);
        assert_eq!(grad_norm(&[3.0, 4.0]), 5.0);
        // 3·CHUNK + 5 ones: several chunks and a ragged tail.
        let n = 3 * CHUNK + 5;
        assert_eq!(grad_norm(&vec![1.0; n]), (n as f64).sqrt() as f32);
    }
}
