//! KV-cache decoding equals the full forward: prefill + one-token steps give the logits the
//! training forward computes for the same positions, for several slots decoded together.

mod common;

use arbor::io::load_hf_dir;
use arbor::model::decode::{DecodeBuffers, KvCache};
use arbor::model::{Batch, Model, Workspace};
use common::{fixture, max_abs_diff};

fn full_logits(model: &Model, seq: &[u32]) -> Vec<f32> {
    let mut batch = Batch::new();
    batch.push_lm(seq, 0).unwrap();
    let mut ws = Workspace::new(&model.cfg, seq.len());
    model.forward(&batch, &mut ws).unwrap();
    let mut out = vec![0.0; seq.len() * model.cfg.vocab_size];
    model.logits_into(&ws, seq.len(), &mut out);
    out
}

fn check(name: &str) {
    let (cfg, params) = load_hf_dir(&fixture(name)).unwrap();
    let model = Model::new(cfg.clone(), params).unwrap();
    let v = cfg.vocab_size;
    let seqs: Vec<Vec<u32>> = vec![
        (0..20).map(|i| (i * 7 + 3) % v as u32).collect(),
        (0..14).map(|i| (i * 5 + 11) % v as u32).collect(),
        (0..9).map(|i| (i * 13 + 1) % v as u32).collect(),
    ];
    let prompt_len = [6usize, 3, 1];
    let mut cache = KvCache::new(&model, 4, 32);
    let mut buf = DecodeBuffers::new(&model, 4);
    let mut ws = Workspace::new(&cfg, 0);
    let mut worst = 0.0f32;
    // slots 3, 0, 2 (not in order) to check slot isolation
    let slot_of = [3usize, 0, 2];
    let mut logits = vec![0.0; v];
    let refs: Vec<Vec<f32>> = seqs.iter().map(|s| full_logits(&model, s)).collect();
    for (k, s) in seqs.iter().enumerate() {
        model.prefill(&s[..prompt_len[k]], slot_of[k], &mut cache, &mut ws, &mut logits).unwrap();
        let p = prompt_len[k] - 1;
        worst = worst.max(max_abs_diff(&logits, &refs[k][p * v..(p + 1) * v]));
    }
    let mut pos = prompt_len;
    loop {
        let active: Vec<usize> = (0..3).filter(|&k| pos[k] < seqs[k].len()).collect();
        if active.is_empty() {
            break;
        }
        let tokens: Vec<u32> = active.iter().map(|&k| seqs[k][pos[k]]).collect();
        let slots: Vec<usize> = active.iter().map(|&k| slot_of[k]).collect();
        model.decode_step(&tokens, &slots, &mut cache, &mut buf).unwrap();
        for (i, &k) in active.iter().enumerate() {
            let want = &refs[k][pos[k] * v..(pos[k] + 1) * v];
            worst = worst.max(max_abs_diff(&buf.logits[i * v..(i + 1) * v], want));
            pos[k] += 1;
        }
    }
    println!("{name}: decode vs full forward, max logit error {worst:.2e}");
    assert!(worst < 1e-4, "{name}: decode logits differ from the forward by {worst}");
}

#[test]
fn qwen2_decode_matches_forward() {
    check("qwen2_tiny");
}

#[test]
fn llama_decode_matches_forward() {
    check("llama_tiny");
}
