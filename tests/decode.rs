//! KV-cache decoding equals the full forward: prefill + one-token steps give the logits the
//! training forward computes for the same positions, for several slots decoded together.

mod common;

use arbor::io::load_hf_dir;
use arbor::model::decode::{DecodeBuffers, DecodeWeights, KvCache};
use arbor::model::init::init_params;
use arbor::model::{Batch, Model, ModelConfig, Workspace};
use common::{fixture, max_abs_diff};
use std::path::Path;

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
    check_model(name, &Model::new(cfg, params).unwrap(), 20);
}

/// The bench model (head dim 64, 2 query heads per KV head, vocabulary 512) with random weights.
fn bench_tiny() -> Model {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/models/bench-tiny/config.json");
    let cfg = ModelConfig::from_hf_file(&path).unwrap();
    let params = init_params(&cfg, 7, 0.02);
    Model::new(cfg, params).unwrap()
}

fn check_model(name: &str, model: &Model, longest: u32) {
    let cfg = model.cfg.clone();
    let v = cfg.vocab_size;
    let seqs: Vec<Vec<u32>> = vec![
        (0..longest).map(|i| (i * 7 + 3) % v as u32).collect(),
        (0..14).map(|i| (i * 5 + 11) % v as u32).collect(),
        (0..9).map(|i| (i * 13 + 1) % v as u32).collect(),
    ];
    let prompt_len = [6usize, 3, 1];
    let mut cache = KvCache::new(model, 4, longest as usize + 4);
    let mut buf = DecodeBuffers::new(model, 4);
    let mut ws = Workspace::new(&cfg, 0);
    let mut worst = 0.0f32;
    // slots 3, 0, 2 (not in order) to check slot isolation
    let slot_of = [3usize, 0, 2];
    let mut logits = vec![0.0; v];
    let refs: Vec<Vec<f32>> = seqs.iter().map(|s| full_logits(model, s)).collect();
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

#[test]
fn qwen3_decode_matches_forward() {
    check("qwen3_tiny");
}

#[test]
fn yarn_rope_scaling_decode_matches_forward() {
    check("qwen2_yarn_tiny");
}

#[test]
fn mistral_decode_matches_forward() {
    check("mistral_tiny");
}

#[test]
fn llama3_rope_scaling_decode_matches_forward() {
    check("llama3_rope_tiny");
}

#[test]
fn bench_model_decode_matches_forward_past_several_key_blocks() {
    check_model("bench-tiny", &bench_tiny(), 45);
}

/// One `forward_cached` call mixes prompt chunks and decode rows of different slots: every
/// requested row's logits equal the full forward's at that position, and a row's logits are
/// bit-identical to those it gets when run alone.
#[test]
fn mixed_prompt_chunks_and_decode_rows_match_forward() {
    let model = bench_tiny();
    let v = model.cfg.vocab_size;
    let seqs: Vec<Vec<u32>> = (0..3u32).map(|s| (0..30).map(|i| (i * 37 + s * 101 + 5) % v as u32).collect()).collect();
    let refs: Vec<Vec<f32>> = seqs.iter().map(|s| full_logits(&model, s)).collect();
    let w = DecodeWeights::new(&model);
    let mut cache = KvCache::new(&model, 3, 30);
    let mut buf = DecodeBuffers::new(&model, 2);
    // step 1: slot 0 gets 11 prompt tokens, slot 2 gets 4 (logits of both last rows)
    let mut tokens: Vec<u32> = seqs[0][..11].to_vec();
    tokens.extend_from_slice(&seqs[2][..4]);
    let mut slots = vec![0usize; 11];
    slots.extend([2usize; 4]);
    model.forward_cached(&w, &tokens, &slots, &[10, 14], &mut cache, &mut buf).unwrap();
    let mut worst = max_abs_diff(&buf.logits[..v], &refs[0][10 * v..11 * v]);
    worst = worst.max(max_abs_diff(&buf.logits[v..2 * v], &refs[2][3 * v..4 * v]));
    // step 2: slot 1's whole prompt (19 tokens, no logits), one token for slot 0, a chunk of 8 for
    // slot 2 (logits of its last and of an inner row)
    let mut tokens: Vec<u32> = seqs[1][..19].to_vec();
    tokens.push(seqs[0][11]);
    tokens.extend_from_slice(&seqs[2][4..12]);
    let mut slots = vec![1usize; 19];
    slots.push(0);
    slots.extend([2usize; 8]);
    model.forward_cached(&w, &tokens, &slots, &[19, 22, 27], &mut cache, &mut buf).unwrap();
    let step2 = buf.logits[..3 * v].to_vec();
    worst = worst.max(max_abs_diff(&step2[..v], &refs[0][11 * v..12 * v]));
    worst = worst.max(max_abs_diff(&step2[v..2 * v], &refs[2][6 * v..7 * v]));
    worst = worst.max(max_abs_diff(&step2[2 * v..3 * v], &refs[2][11 * v..12 * v]));
    assert_eq!(cache.len, vec![12, 19, 12]);
    // step 3: every slot decodes one token; then slot 1 alone in a fresh cache replays its
    // prompt and this token row by row: same bits
    let tokens = vec![seqs[0][12], seqs[1][19], seqs[2][12]];
    model.forward_cached(&w, &tokens, &[0, 1, 2], &[0, 1, 2], &mut cache, &mut buf).unwrap();
    for (k, &pos) in [12usize, 19, 12].iter().enumerate() {
        worst = worst.max(max_abs_diff(&buf.logits[k * v..(k + 1) * v], &refs[k][pos * v..(pos + 1) * v]));
    }
    let together = buf.logits[v..2 * v].to_vec();
    let mut alone = KvCache::new(&model, 1, 30);
    for &t in &seqs[1][..20] {
        model.forward_cached(&w, &[t], &[0], &[0], &mut alone, &mut buf).unwrap();
    }
    assert_eq!(&buf.logits[..v], &together[..], "a row's logits depend on its batch");
    println!("mixed prompt chunks + decode rows vs full forward: max logit error {worst:.2e}");
    assert!(worst < 1e-4, "mixed rows differ from the forward by {worst}");
}

#[test]
fn forward_cached_rejects_bad_rows() {
    let model = bench_tiny();
    let w = DecodeWeights::new(&model);
    let mut cache = KvCache::new(&model, 2, 4);
    let mut buf = DecodeBuffers::new(&model, 2);
    // logit rows out of order / out of range, token outside the vocabulary, slot out of range
    assert!(model.forward_cached(&w, &[1, 2], &[0, 1], &[1, 0], &mut cache, &mut buf).is_err());
    assert!(model.forward_cached(&w, &[1, 2], &[0, 1], &[2], &mut cache, &mut buf).is_err());
    assert!(model.forward_cached(&w, &[1, 9999], &[0, 1], &[0], &mut cache, &mut buf).is_err());
    assert!(model.forward_cached(&w, &[1], &[5], &[0], &mut cache, &mut buf).is_err());
    // a slot holds at most 4 tokens: 5 rows into it fail and leave the cache untouched
    assert!(model.forward_cached(&w, &[1; 5], &[0; 5], &[4], &mut cache, &mut buf).is_err());
    assert_eq!(cache.len, vec![0, 0]);
    model.forward_cached(&w, &[1; 4], &[0; 4], &[3], &mut cache, &mut buf).unwrap();
    assert_eq!(cache.len, vec![4, 0]);
}
