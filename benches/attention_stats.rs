//! Cost of the attention statistics pass (FCI on every layer + rhythm statistics on the default
//! layers) next to the plain forward it follows: one 512-token sequence (64-token prompt,
//! 16-token steps) of the bench-tiny model. Target: the pass adds ≤ 30 % to the forward.
//! Before criterion runs, an interleaved measurement prints the median ratio directly, also for
//! a batch of 64 short (32-token) sequences.
//! Run: `cargo bench --bench attention_stats` (threads: RAYON_NUM_THREADS, default all cores).

use arbor::attention::stats::{attention_stats, SeqSteps, StatsConfig};
use arbor::model::init::init_params;
use arbor::model::{Batch, Model, ModelConfig, Workspace};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

struct Setup {
    model: Model,
    batch: Batch,
    ws: Workspace,
    steps: Vec<SeqSteps>,
    cfg: StatsConfig,
}

/// `n_seq` sequences of `t` tokens, each a `prompt`-token prompt then steps of `step` tokens.
fn setup(n_seq: usize, t: usize, prompt: usize, step: usize) -> Setup {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/models/bench-tiny/config.json");
    let mc = ModelConfig::from_hf_file(&path).expect("bench-tiny config");
    let model = Model::new(mc.clone(), init_params(&mc, 0, 0.02)).unwrap();
    let mut batch = Batch::new();
    let mut steps = Vec::new();
    for s in 0..n_seq as u32 {
        let toks: Vec<u32> = (0..t as u32).map(|i| (i * 31 + s * 7 + 7) % mc.vocab_size as u32).collect();
        batch.push_lm(&toks, 0).unwrap();
        let mut bounds = vec![0];
        bounds.extend((prompt..t).step_by(step));
        bounds.push(t);
        steps.push(SeqSteps { bounds, response_start: prompt, end_of_thinking: None });
    }
    let ws = Workspace::new(&mc, batch.len());
    Setup { model, batch, ws, steps, cfg: StatsConfig::default() }
}

/// Median forward time and median statistics-pass time over `reps` alternating runs (both
/// measured in the same loop, so machine noise hits them alike).
fn interleaved_medians(s: &mut Setup, reps: usize) -> (f64, f64) {
    let (mut fwd, mut pass) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for _ in 0..reps {
        let t0 = Instant::now();
        s.model.forward(black_box(&s.batch), &mut s.ws).unwrap();
        fwd.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        black_box(attention_stats(&s.model, &s.batch, &s.ws, &s.steps, &s.cfg).unwrap());
        pass.push(t0.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut fwd), median(&mut pass))
}

fn print_ratio(name: &str, mut s: Setup) {
    interleaved_medians(&mut s, 3); // warm-up
    let (fwd, stats) = interleaved_medians(&mut s, 40);
    println!(
        "attention_stats {name}: forward {:.2} ms, statistics pass {:.2} ms, pass / forward = {:.3} (target <= 0.30)",
        fwd * 1e3,
        stats * 1e3,
        stats / fwd
    );
}

fn bench(c: &mut Criterion) {
    print_ratio("t512", setup(1, 512, 64, 16));
    // Countdown-like RL batch: many short responses, 2-token steps.
    print_ratio("64 x t32", setup(64, 32, 12, 2));
    let mut s = setup(1, 512, 64, 16);
    let mut g = c.benchmark_group("attention_stats_t512");
    g.bench_function("forward", |b| b.iter(|| s.model.forward(black_box(&s.batch), &mut s.ws).unwrap()));
    g.bench_function("forward_plus_stats", |b| {
        b.iter(|| {
            s.model.forward(black_box(&s.batch), &mut s.ws).unwrap();
            black_box(attention_stats(&s.model, &s.batch, &s.ws, &s.steps, &s.cfg).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
