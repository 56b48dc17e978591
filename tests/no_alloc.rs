//! A training step (forward, backward, clipping, AdamW) allocates nothing of its own once the
//! workspace is sized: a counting global allocator counts the allocations made during steps.
//! The only ones left are the `gemm` crate's per-call packing scratch (at most two or three per
//! GEMM call, freed at its end), so the test bounds allocations by GEMM calls and checks that
//! the count is the same every step (nothing grows).

use arbor::model::init::init_params;
use arbor::model::{Arch, Batch, Model, ModelConfig, Workspace};
use arbor::tensor::cpu::matmul::GEMM_CALLS;
use arbor::train::{clip_grad_norm, AdamW, AdamWConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static BYTES: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn train_step_allocates_no_buffers() {
    let cfg = ModelConfig {
        arch: Arch::Qwen2,
        hidden_size: 128,
        intermediate_size: 384,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 32,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        vocab_size: 256,
        max_position_embeddings: 256,
        tie_word_embeddings: false,
        qkv_bias: true,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    };
    let mut model = Model::new(cfg.clone(), init_params(&cfg, 1, 0.02)).unwrap();
    let mut batch = Batch::new();
    for s in 0..4u32 {
        let toks: Vec<u32> = (0..100 + 10 * s).map(|i| (i * 7 + s) % 256).collect();
        batch.push_lm(&toks, 0).unwrap();
    }
    let n = batch.len();
    let mut ws = Workspace::new(&cfg, n);
    let mut grads = vec![0.0f32; model.params.data.len()];
    let mut opt = AdamW::for_layout(AdamWConfig::default(), &model.params.layout);
    let dlogp = vec![-1.0 / n as f32; n];
    let mut step = |model: &mut Model, ws: &mut Workspace, grads: &mut Vec<f32>| {
        grads.iter_mut().for_each(|g| *g = 0.0);
        model.forward(&batch, ws).unwrap();
        model.backward(&batch, &dlogp, ws, grads).unwrap();
        clip_grad_norm(grads, 1.0);
        let mut p = std::mem::take(&mut model.params.data);
        opt.step(&mut p, grads, 1e-3);
        model.params.data = p;
    };
    step(&mut model, &mut ws, &mut grads); // warm-up: thread pool, gemm caches
    let mut per_step = Vec::new();
    for _ in 0..3 {
        let (b0, c0, g0) =
            (BYTES.load(Ordering::Relaxed), CALLS.load(Ordering::Relaxed), GEMM_CALLS.load(Ordering::Relaxed));
        step(&mut model, &mut ws, &mut grads);
        per_step.push((
            BYTES.load(Ordering::Relaxed) - b0,
            CALLS.load(Ordering::Relaxed) - c0,
            GEMM_CALLS.load(Ordering::Relaxed) - g0,
        ));
    }
    let (bytes, calls, gemms) = per_step[0];
    println!("per step: {calls} allocations ({bytes} bytes) for {gemms} GEMM calls; workspace {} bytes", ws.bytes());
    assert!(calls <= 3 * gemms, "{calls} allocations for {gemms} GEMM calls: something besides GEMM scratch allocates");
    // Thread scheduling can add a stray allocation (rayon deque growth, a gemm worker's flag
    // vector), but nothing that scales with steps or data.
    let (lo, hi) = (per_step.iter().map(|s| s.1).min().unwrap(), per_step.iter().map(|s| s.1).max().unwrap());
    assert!(hi - lo <= 8, "allocation count drifts between steps: {per_step:?}");
    assert!(per_step.iter().all(|s| s.1 <= 3 * s.2), "more allocations than GEMM scratch explains: {per_step:?}");
}
