//! Reductions over whole buffers: the global L2 norm of a gradient.

use crate::tensor::cpu::simd::simd_kernel;
use rayon::prelude::*;

/// Elements per rayon task. The norm's value depends on this split (each chunk is summed in f32
/// lanes, the chunks in f64, in chunk order), so it is fixed; it does not depend on the threads.
const CHUNK: usize = 1 << 14;

simd_kernel! {
    /// Σ x² of one chunk in f32 lanes (chunks are summed in f64).
    fn sum_squares(x: &[f32]) -> f64 {
        crate::tensor::cpu::simd::dot(x, x) as f64
    }
}

/// Global L2 norm of a gradient buffer (accumulated in f64). The chunks are summed in parallel and
/// their sums added one after another in chunk order: rayon's own `sum` would add them in a tree
/// whose shape depends on the thread count and on work stealing.
pub fn grad_norm(grads: &[f32]) -> f32 {
    let chunk_sums: Vec<f64> = grads.par_chunks(CHUNK).map(sum_squares).collect();
    chunk_sums.iter().fold(0.0f64, |acc, &s| acc + s).sqrt() as f32
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

    /// The chunk sums are added in chunk order whatever the pool: a buffer whose chunk sums round
    /// differently in another order gives the same bits on 1 and 8 threads, and those of the
    /// serial definition. Chunks 0..3 hold M² = (2^30 + 2^6)² = 2^60 + 2^37 + 2^12 (exact in f64;
    /// √ = M, halfway between two f32, rounds to even: 2^30); then 64 chunks each hold 8² = 64,
    /// under half an f64 ulp of M² (128), so in order each is rounded away. Added in any tree
    /// they first sum among themselves, M² grows, √ passes M and the f32 norm is 2^30 + 2^7.
    #[test]
    fn grad_norm_adds_the_chunks_in_order_on_any_number_of_threads() {
        let mut g = vec![0.0f32; 67 * CHUNK];
        g[0] = (1u32 << 30) as f32;
        g[CHUNK] = (1u32 << 18) as f32;
        g[CHUNK + 9] = (1u32 << 18) as f32;
        g[2 * CHUNK] = 64.0;
        for c in 3..67 {
            g[c * CHUNK + c % 11] = 8.0;
        }
        let serial = g.chunks(CHUNK).map(sum_squares).fold(0.0f64, |a, s| a + s).sqrt() as f32;
        assert_eq!(serial, (1u32 << 30) as f32);
        let mut rng = crate::rng::Rng::new(7);
        let random: Vec<Vec<f32>> = [5 * CHUNK + 3, 40 * CHUNK, 97 * CHUNK + 1000]
            .iter()
            .map(|&n| (0..n).map(|_| rng.normal() as f32).collect())
            .collect();
        for threads in [1, 8] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let got = pool.install(|| grad_norm(&g));
            assert_eq!(got.to_bits(), serial.to_bits(), "{threads} threads: {got} != {serial}");
            for r in &random {
                let want = r.chunks(CHUNK).map(sum_squares).fold(0.0f64, |a, s| a + s).sqrt() as f32;
                assert_eq!(
                    pool.install(|| grad_norm(r)).to_bits(),
                    want.to_bits(),
                    "{threads} threads, {} values",
                    r.len()
                );
            }
        }
    }
}
