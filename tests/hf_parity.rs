//! Parity with HF transformers: logits, log-probs, entropy, loss and every parameter gradient of
//! tiny random Qwen2 (biases, GQA, untied head), LLaMA (tied embeddings), Qwen3 (query/key head
//! norms, a head_dim other than hidden / heads, tied), Llama 3.1-style (RoPE scaling "llama3"),
//! YaRN-scaled Qwen2 and Mistral models, against golden files written by `scripts/make_fixtures.py`.
//!
//! Tolerances: logits max-abs ≤ 1e-4 (f32 end to end, differences come from summation order);
//! gradients ≤ 1e-3 relative to each tensor's largest reference entry.

mod common;

use arbor::io::load_hf_dir;
use arbor::model::{Batch, Model, Workspace};
use common::{fixture, max_abs_diff, rel_err, Reference};

fn check_model(name: &str) {
    let dir = fixture(name);
    let (cfg, params) = load_hf_dir(&dir).expect("fixture loads");
    let model = Model::new(cfg.clone(), params).unwrap();
    let r = Reference::load(&dir.join("reference.safetensors"));
    let (b, t) = (3usize, 17usize);
    let v = cfg.vocab_size;
    let ids: Vec<u32> = r.i64("input_ids").iter().map(|&x| x as u32).collect();
    let tgt: Vec<u32> = r.i64("target_ids").iter().map(|&x| x as u32).collect();
    let lengths: Vec<usize> = r.i64("lengths").iter().map(|&x| x as usize).collect();
    let batch = Batch::from_padded(&ids, &tgt, &lengths, t).unwrap();
    let n = batch.len();

    // Gather the valid positions of the padded reference tensors.
    let valid: Vec<usize> = (0..b).flat_map(|row| (0..lengths[row]).map(move |j| row * t + j)).collect();
    let pick = |x: &[f32]| valid.iter().map(|&i| x[i]).collect::<Vec<f32>>();
    let pick_rows = |x: &[f32]| valid.iter().flat_map(|&i| x[i * v..(i + 1) * v].iter().copied()).collect::<Vec<_>>();
    let weights = pick(r.f32("weights"));

    let mut ws = Workspace::new(&cfg, n);
    model.forward(&batch, &mut ws).unwrap();
    let mut logits = vec![0.0; n * v];
    model.logits_into(&ws, n, &mut logits);
    let e_logits = max_abs_diff(&logits, &pick_rows(r.f32("logits")));
    let e_logp = max_abs_diff(&ws.logprobs[..n], &pick(r.f32("logprobs")));
    let e_ent = max_abs_diff(&ws.entropy[..n], &pick(r.f32("entropy")));
    let loss: f32 = -ws.logprobs[..n].iter().zip(&weights).map(|(l, w)| l * w).sum::<f32>();
    let want_loss = r.f32("loss")[0];
    println!(
        "{name}: logits max-abs {e_logits:.2e}, logprobs {e_logp:.2e}, entropy {e_ent:.2e}, loss {loss} vs {want_loss}"
    );
    assert!(e_logits <= 1e-4, "{name}: logits max-abs error {e_logits}");
    assert!(e_logp <= 1e-4, "{name}: logprob max-abs error {e_logp}");
    assert!(e_ent <= 1e-4, "{name}: entropy max-abs error {e_ent}");
    assert!((loss - want_loss).abs() <= 1e-4 * want_loss.abs().max(1.0), "{name}: loss {loss} vs {want_loss}");

    // L = −Σ w·logp  ⇒  ∂L/∂logp = −w.
    let dlogp: Vec<f32> = weights.iter().map(|w| -w).collect();
    let mut grads = vec![0.0; model.params.data.len()];
    model.backward(&batch, &dlogp, &mut ws, &mut grads).unwrap();
    let mut checked = 0;
    for spec in &model.params.layout.specs {
        let want = r.f32(&format!("grad.{}", spec.name));
        let got = &grads[spec.range()];
        let e = rel_err(got, want);
        println!("{name}: grad {:<50} rel err {e:.2e}", spec.name);
        assert!(e <= 1e-3, "{name}: gradient of {} has relative error {e}", spec.name);
        checked += 1;
    }
    let expected_grads = r.f32s.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(checked, expected_grads, "{name}: every reference gradient must be compared");
}

#[test]
fn qwen2_matches_transformers() {
    check_model("qwen2_tiny");
}

#[test]
fn llama_tied_matches_transformers() {
    check_model("llama_tiny");
}

#[test]
fn qwen3_head_norms_match_transformers() {
    check_model("qwen3_tiny");
}

/// YaRN RoPE scaling (extrapolated, mixed and interpolated pairs; cos and sin × the attention factor).
#[test]
fn yarn_rope_scaling_matches_transformers() {
    check_model("qwen2_yarn_tiny");
}

/// Mistral (7B v0.3's layout: no window, untied, 8 heads over 2 kv heads).
#[test]
fn mistral_matches_transformers() {
    check_model("mistral_tiny");
}

/// Llama 3.1's RoPE scaling ("llama3", its three bands of wavelengths all present at head_dim 16,
/// theta 5e5 and an original context of 64).
#[test]
fn llama3_rope_scaling_matches_transformers() {
    check_model("llama3_rope_tiny");
}

/// Packing is exact: the same sequences in a different order give the same per-token outputs.
#[test]
fn packing_order_does_not_change_results() {
    let dir = fixture("qwen2_tiny");
    let (cfg, params) = load_hf_dir(&dir).unwrap();
    let model = Model::new(cfg.clone(), params).unwrap();
    let seqs: Vec<Vec<u32>> = vec![(1..20).collect(), (5..9).collect(), (30..70).collect()];
    let run = |order: &[usize]| {
        let mut b = Batch::new();
        for &i in order {
            b.push_lm(&seqs[i], 0).unwrap();
        }
        let mut ws = Workspace::new(&cfg, b.len());
        model.forward(&b, &mut ws).unwrap();
        let mut out = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            let s = b.seq_starts[k];
            out.push((i, ws.logprobs[s..s + seqs[i].len()].to_vec()));
        }
        out.sort_by_key(|x| x.0);
        out
    };
    let a = run(&[0, 1, 2]);
    let c = run(&[2, 0, 1]);
    for ((_, x), (_, y)) in a.iter().zip(&c) {
        assert!(max_abs_diff(x, y) < 1e-5);
    }
}

/// The chunked LM head (logits recomputed in the backward, several row chunks) gives the same
/// outputs and gradients as the single-chunk path.
#[test]
fn chunked_head_matches_single_chunk() {
    let dir = fixture("qwen2_tiny");
    let (cfg, params) = load_hf_dir(&dir).unwrap();
    let model = Model::new(cfg.clone(), params).unwrap();
    let mut batch = Batch::new();
    batch.push_lm(&(1..40).collect::<Vec<u32>>(), 0).unwrap();
    batch.push_lm(&(50..63).collect::<Vec<u32>>(), 0).unwrap();
    let n = batch.len();
    let dlogp: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    let run = |rows: Option<usize>| {
        let mut ws = Workspace::new(&cfg, n);
        if let Some(r) = rows {
            ws.limit_head_rows(r);
        }
        model.forward(&batch, &mut ws).unwrap();
        let mut g = vec![0.0; model.params.data.len()];
        model.backward(&batch, &dlogp, &mut ws, &mut g).unwrap();
        (ws.logprobs[..n].to_vec(), ws.entropy[..n].to_vec(), g)
    };
    let (lp1, en1, g1) = run(None);
    let (lp2, en2, g2) = run(Some(5));
    // the chunks recompute their logits with another GEMM blocking: a few ulps of values up to
    // ~6 (log 512), where one ulp is 4.8e-7
    let (dl, de) = (max_abs_diff(&lp1, &lp2), max_abs_diff(&en1, &en2));
    assert!(dl < 2e-6 && de < 2e-6, "log-probs differ by {dl:e}, entropies by {de:e}");
    let e = rel_err(&g2, &g1);
    assert!(e < 1e-5, "chunked head gradients differ: {e}");
}
