//! AdamW + global-norm clipping against `torch.optim.AdamW` and `clip_grad_norm_` for 5 steps
//! (fixture written by scripts/make_fixtures.py).

mod common;

use arbor::train::{clip_coefficient, clip_grad_norm, grad_norm, AdamW, AdamWConfig};
use common::{fixture, max_abs_diff, Reference};

#[test]
fn adamw_with_clipping_matches_pytorch() {
    let dir = fixture("adamw");
    let hp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("hparams.json")).unwrap()).unwrap();
    let f = |k: &str| hp[k].as_f64().unwrap_or_else(|| panic!("hparams.json: {k}")) as f32;
    let betas = hp["betas"].as_array().unwrap();
    let cfg = AdamWConfig {
        beta1: betas[0].as_f64().unwrap() as f32,
        beta2: betas[1].as_f64().unwrap() as f32,
        eps: f("eps"),
        weight_decay: f("weight_decay"),
    };
    let (lr, max_norm) = (f("lr"), f("max_norm"));
    let steps = hp["steps"].as_u64().unwrap() as usize;
    let r = Reference::load(&dir.join("reference.safetensors"));
    let (na, nb) = (r.f32("a.init").len(), r.f32("b.init").len());
    let mut p: Vec<f32> = [r.f32("a.init"), r.f32("b.init")].concat();
    let mut opt = AdamW::with_segments(cfg, na + nb, vec![(0..na, true), (na..na + nb, true)]);
    // the fused path (clip coefficient applied inside the update) must agree as well
    let mut p_fused = p.clone();
    let mut opt_fused = opt.clone();
    for k in 0..steps {
        let mut g: Vec<f32> = [r.f32(&format!("a.grad.{k}")), r.f32(&format!("b.grad.{k}"))].concat();
        let scale = clip_coefficient(grad_norm(&g), max_norm);
        opt_fused.step_scaled(&mut p_fused, &g, lr, scale);
        let norm = clip_grad_norm(&mut g, max_norm);
        let want_norm = r.f32(&format!("norm.{k}"))[0];
        assert!((norm - want_norm).abs() <= 1e-5 * want_norm, "step {k}: norm {norm} vs {want_norm}");
        opt.step(&mut p, &g, lr);
        let want: Vec<f32> = [r.f32(&format!("a.step.{k}")), r.f32(&format!("b.step.{k}"))].concat();
        let e = max_abs_diff(&p, &want);
        println!("step {k}: pre-clip norm {norm:.6} (torch {want_norm:.6}), params max-abs error {e:.2e}");
        assert!(e <= 1e-6, "step {k}: parameters differ from PyTorch by {e}");
        let e_fused = max_abs_diff(&p_fused, &want);
        assert!(e_fused <= 1e-6, "step {k}: fused clip+AdamW differs from PyTorch by {e_fused}");
    }
}
