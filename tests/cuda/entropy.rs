//! The LM head's entropy on the GPU (cuda/logprob.cu): shift-invariant, not negative for a
//! near-deterministic row, and the CPU's within 1e-5, for rows read 8 logits at a time (16-byte
//! aligned) and one at a time.

use super::gpu;
use arbor::cuda::Gpu;
use arbor::model::Batch;
use arbor::tensor::{Backend, Cpu, LogitStats};

/// (lse, entropy) of each row of `z` ([rows, v]) on the CPU and on the GPU.
fn entropies(g: &Gpu, z: &[f32], v: usize) -> (Vec<f32>, Vec<f32>) {
    let r = z.len() / v;
    let mut b = Batch::new();
    let tokens: Vec<u32> = (0..r as u32).collect();
    b.push(&tokens, &tokens).unwrap();
    let dev = g.batch(b.packed()).unwrap();
    let (mut lse, mut lp, mut cpu) = (vec![0.0; r], vec![0.0; r], vec![0.0; r]);
    let stats = LogitStats { lse: &mut lse[..], logp: &mut lp[..], entropy: &mut cpu[..] };
    Cpu.logprob_forward(z, v, &b.packed(), 0..r, stats).unwrap();
    let zg = g.upload(z).unwrap();
    let mut bufs: Vec<_> = (0..3).map(|_| g.upload(&vec![0.0; r]).unwrap()).collect();
    let (l, rest) = bufs.split_at_mut(1);
    let (p, e) = rest.split_at_mut(1);
    let stats =
        LogitStats { lse: Gpu::m(&mut l[0], 0..r), logp: Gpu::m(&mut p[0], 0..r), entropy: Gpu::m(&mut e[0], 0..r) };
    g.logprob_forward(Gpu::r(&zg, 0..r * v), v, &dev, 0..r, stats).unwrap();
    let mut gpu = vec![0.0; r];
    g.download(&bufs[2], &mut gpu).unwrap();
    (cpu, gpu)
}

#[test]
fn the_gpu_entropy_is_shift_invariant_and_not_negative() {
    let Some(g) = gpu() else { return };
    // V = 4096: every row 16-byte aligned (8 logits a load); V = 4099: rows 1.. start unaligned
    for v in [4096usize, 4099] {
        // logits in multiples of 2^-10 (the f32 spacing at 1e4), so that adding 1e4 is exact
        let base: Vec<f32> = (0..v).map(|j| ((j as f32 * 0.37).sin() * 3.0 * 1024.0).round() / 1024.0).collect();
        let peaked: Vec<f32> = (0..v).map(|j| if j == v / 3 { 30.0 } else { 0.0 }).collect();
        let mut z = Vec::new();
        for shift in [0.0f32, 1e4, -1e4] {
            z.extend(base.iter().map(|x| x + shift));
        }
        for shift in [0.0f32, 1e4, -1e4] {
            z.extend(peaked.iter().map(|x| x + shift));
        }
        let (cpu, gpu) = entropies(&g, &z, v);
        println!("V = {v}: gpu {gpu:?}, cpu {cpu:?}");
        for (i, (&c, &d)) in cpu.iter().zip(&gpu).enumerate() {
            assert!((c - d).abs() <= 1e-5 * c.abs().max(1.0), "V {v} row {i}: gpu {d} vs cpu {c}");
        }
        for i in [1, 2] {
            assert!((gpu[i] - gpu[0]).abs() <= 1e-5 * gpu[0], "V {v}: shifted row {i}: {} vs {}", gpu[i], gpu[0]);
        }
        // H of [30, 0 × (V−1)] is (V−1)·e^−30·31 ≈ 1e-8
        for (i, &h) in gpu.iter().enumerate().skip(3) {
            assert!((0.0..1e-6).contains(&h), "V {v}: near-deterministic row {i}: entropy {h}");
        }
    }
}
