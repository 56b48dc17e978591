//! Criterion benches of the numerical core: GEMM (gemm crate vs matrixmultiply, the choice made
//! in DESIGN), causal attention forward + backward, one full training step, and the checksum of
//! checkpoints and weights messages.
//! Run: `cargo bench --bench core` (threads: RAYON_NUM_THREADS, default all cores).

use arbor::attention::{attention_backward, attention_forward, AttnSaved, AttnShape};
use arbor::model::init::init_params;
use arbor::model::{Batch, Model, ModelConfig, Workspace};
use arbor::tensor::cpu::{matmul_nt, matmul_packed, PackedMatrix};
use arbor::train::{clip_and_step, AdamW, AdamWConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::path::Path;

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_f32");
    for n in [256usize, 512, 1024] {
        let a: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.1).collect();
        let b = a.clone();
        let mut out = vec![0.0f32; n * n];
        g.throughput(Throughput::Elements((2 * n * n * n) as u64));
        g.bench_with_input(BenchmarkId::new("gemm_crate", n), &n, |bch, &n| {
            bch.iter(|| matmul_nt(&mut out, &a, &b, n, n, n, false))
        });
        g.bench_with_input(BenchmarkId::new("matrixmultiply", n), &n, |bch, &n| {
            bch.iter(|| unsafe {
                matrixmultiply::sgemm(
                    n,
                    n,
                    n,
                    1.0,
                    a.as_ptr(),
                    n as isize,
                    1,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    out.as_mut_ptr(),
                    n as isize,
                    1,
                )
            })
        });
    }
    g.finish();
}

/// The decode step's products: 32 rows (one decode shard of a 64-sequence batch) times each
/// weight of a bench-tiny layer, packed once (`matmul_packed`) vs the gemm crate (packs per call).
fn decode_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_gemm_m32");
    let m = 32usize;
    for (name, n, k) in [("qkv", 512usize, 256usize), ("gate_up", 1536, 256), ("down", 256, 768)] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 17) as f32 * 0.05 - 0.4).collect();
        let packed = PackedMatrix::from_rows(&w, n, k);
        let mut out = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(BenchmarkId::new("packed", name), |bch| {
            bch.iter(|| matmul_packed(&mut out, &a, m, &packed, false))
        });
        g.bench_function(BenchmarkId::new("gemm_crate", name), |bch| {
            bch.iter(|| matmul_nt(&mut out, &a, &w, m, n, k, false))
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let shape = AttnShape { num_heads: 4, num_kv_heads: 2, head_dim: 64 };
    let (b, t) = (8usize, 128usize);
    let n = b * t;
    let qkv_w = (4 + 4) * 64;
    let qkv: Vec<f32> = (0..n * qkv_w).map(|i| ((i % 29) as f32 - 14.0) * 0.02).collect();
    let starts: Vec<usize> = (0..=b).map(|s| s * t).collect();
    let mut out = vec![0.0; n * 256];
    let mut lse = vec![0.0; n * 4];
    let mut scratch = vec![0.0; shape.scratch_len(n)];
    let mut dqkv = vec![0.0; n * qkv_w];
    let dout: Vec<f32> = (0..n * 256).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    c.bench_function("attention_fwd_bwd_b8_t128_h4_kv2_d64", |bch| {
        bch.iter(|| {
            attention_forward(&mut out, &mut lse, &mut scratch, &qkv, &starts, shape);
            attention_backward(
                &mut dqkv,
                &mut scratch,
                &dout,
                AttnSaved { qkv: &qkv, out: &out, lse: &lse },
                &starts,
                shape,
            );
        })
    });
}

fn train_step(c: &mut Criterion) {
    let cfg_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/models/bench-tiny/config.json");
    let cfg = ModelConfig::from_hf_file(&cfg_path).expect("bench-tiny config");
    let mut model = Model::new(cfg.clone(), init_params(&cfg, 0, 0.02)).unwrap();
    let mut batch = Batch::new();
    for s in 0..8u32 {
        let toks: Vec<u32> = (0..128u32).map(|i| (i * 31 + s * 7) % 512).collect();
        batch.push_lm(&toks, 0).unwrap();
    }
    let n = batch.len();
    let mut ws = Workspace::new(&cfg, n);
    let mut grads = vec![0.0f32; model.params.data.len()];
    let mut opt = AdamW::for_layout(AdamWConfig::default(), &model.params.layout);
    let dlogp = vec![-1.0 / n as f32; n];
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("bench_tiny_b8_t128", |bch| {
        bch.iter(|| {
            grads.iter_mut().for_each(|x| *x = 0.0);
            model.forward(&batch, &mut ws).unwrap();
            model.backward(&batch, &dlogp, &mut ws, &mut grads).unwrap();
            clip_and_step(&mut opt, &mut model.params.data, &grads, 1e-4, 1.0);
        })
    });
    g.finish();
}

/// The checksum of checkpoint files and async weights messages over 64 MiB (a 16M-parameter
/// model's f32 weights): checksum64 against the byte-at-a-time FNV-1a it replaced.
fn checksum(c: &mut Criterion) {
    use arbor::io::checksum::{checksum64, fnv1a64};
    let bytes: Vec<u8> = (0..64u64 << 20).map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8).collect();
    let mut g = c.benchmark_group("checksum_64mib");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.sample_size(10);
    g.bench_function("checksum64", |bch| bch.iter(|| checksum64(&bytes)));
    g.bench_function("fnv1a64", |bch| bch.iter(|| fnv1a64(&bytes)));
    g.finish();
}

criterion_group!(benches, gemm, decode_gemm, attention, train_step, checksum);
criterion_main!(benches);
