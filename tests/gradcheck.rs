//! Finite-difference gradient check of the whole model on a tiny configuration (independent of
//! any fixture): central differences of L = −Σ w·logp + Σ u·H (H the per-token entropy)
//! against the analytic backward.

mod common;
use arbor::model::init::init_params;
use arbor::model::{Arch, Batch, Model, ModelConfig, Workspace};
use arbor::rng::Rng;

fn tiny(arch: Arch, tied: bool) -> ModelConfig {
    common::tiny_config(arch, tied)
}

fn check(arch: Arch, tied: bool) {
    let cfg = tiny(arch, tied);
    let mut params = init_params(&cfg, 11, 0.3);
    // non-trivial norms and biases so their gradients are exercised
    let mut rng = Rng::new(5);
    for spec in params.layout.specs.clone() {
        if spec.name.ends_with("norm.weight") || spec.name.ends_with(".bias") {
            for x in &mut params.data[spec.range()] {
                *x += (0.2 * rng.normal()) as f32;
            }
        }
    }
    let mut batch = Batch::new();
    let seqs: [&[u32]; 3] = [&[1, 5, 7, 2, 9, 12, 3], &[4, 4, 8], &[10, 0, 6, 11, 1]];
    for s in seqs {
        batch.push_lm(s, 0).unwrap();
    }
    let w: Vec<f32> = (0..batch.len()).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
    // entropy weights: L = −Σ w·logp + Σ u·H exercises the entropy-bonus gradient too
    let u: Vec<f32> = (0..batch.len()).map(|_| (rng.uniform() - 0.5) as f32).collect();
    let mut model = Model::new(cfg.clone(), params).unwrap();
    let mut ws = Workspace::new(&cfg, batch.len());
    let loss = |m: &Model, ws: &mut Workspace| -> f64 {
        m.forward(&batch, ws).unwrap();
        let n = batch.len();
        -ws.logprobs[..n].iter().zip(&w).map(|(l, wi)| (*l as f64) * (*wi as f64)).sum::<f64>()
            + ws.entropy[..n].iter().zip(&u).map(|(h, ui)| (*h as f64) * (*ui as f64)).sum::<f64>()
    };
    loss(&model, &mut ws);
    let dlogp: Vec<f32> = w.iter().map(|x| -x).collect();
    let mut grads = vec![0.0f32; model.params.data.len()];
    model.backward_with_entropy(&batch, &dlogp, Some(&u), &mut ws, &mut grads).unwrap();

    // h balances truncation error (O(h²), visible at 1e-2 with these weights) against f32
    // rounding in the loss (≈1e-6 / 2h).
    let h = 2e-3f32;
    let mut worst = 0.0f64;
    for spec in model.params.layout.specs.clone() {
        let n = spec.numel();
        for k in 0..6.min(n) {
            let idx = spec.offset + (rng.below(n as u64) as usize + k) % n;
            let orig = model.params.data[idx];
            model.params.data[idx] = orig + h;
            let lp = loss(&model, &mut ws);
            model.params.data[idx] = orig - h;
            let lm = loss(&model, &mut ws);
            model.params.data[idx] = orig;
            let fd = (lp - lm) / (2.0 * h as f64);
            let err = (grads[idx] as f64 - fd).abs() / fd.abs().max(0.1);
            worst = worst.max(err);
            assert!(
                err < 2e-2,
                "{arch:?} {}[{}]: analytic {} vs finite difference {fd}",
                spec.name,
                idx - spec.offset,
                grads[idx]
            );
        }
    }
    println!("{arch:?} tied={tied}: worst relative error vs finite differences {worst:.2e}");
}

#[test]
fn qwen2_untied_gradients_match_finite_differences() {
    check(Arch::Qwen2, false);
}

#[test]
fn llama_tied_gradients_match_finite_differences() {
    check(Arch::Llama, true);
}
