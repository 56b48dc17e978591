//! The attention statistics pass (FCI, look-back, WAAD, FAI) against a naive reference that
//! materialises every head's full causal softmax map in f64 from the workspace's q|k rows and
//! applies the definitions of `arbor::attention::stats` literally.

mod common;

use arbor::attention::stats::{
    attention_stats, combine_rhythm, default_rhythm_layers, fai_rows, select_heads, HeadGroups, HeadId, SeqStats,
    SeqSteps, StatsConfig,
};
use arbor::model::init::init_params;
use arbor::model::{Arch, Batch, Model, ModelConfig, Workspace};
use arbor::rng::Rng;

fn config(num_layers: usize) -> ModelConfig {
    ModelConfig {
        arch: Arch::Qwen2,
        hidden_size: 64,
        intermediate_size: 96,
        num_layers,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        vocab_size: 64,
        max_position_embeddings: 512,
        tie_word_embeddings: false,
        qkv_bias: true,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    }
}

/// A random model (weights large enough for peaked attention) and a packed batch of ragged
/// sequences: (length, prompt length) pairs, steps of random lengths 1..=max_step.
struct Fixture {
    model: Model,
    batch: Batch,
    ws: Workspace,
    steps: Vec<SeqSteps>,
}

fn fixture(seed: u64, seqs: &[(usize, usize)], max_step: usize) -> Fixture {
    let cfg = config(4);
    let mut params = init_params(&cfg, seed, 0.25);
    // Random heads attend to random keys (mean distance ≈ t/2). Equal q and k biases on the
    // fast-rotating RoPE pairs add a term b·R(t − s)·b that peaks at s = t and decays within a
    // few tokens: kv head 0 of layers 1 and 2 becomes local (strongly, then mildly).
    let d = cfg.head_dim;
    for (layer, gain) in [(1, 3.0f32), (2, 1.5)] {
        let b = params.layout.layers[layer].qkv_b.unwrap();
        for x in 0..d {
            let v = if x % (d / 2) < d / 4 { gain } else { 0.0 };
            params.data[b + x] = v; // q head 0
            params.data[b + d + x] = v; // q head 1 (same kv group)
            params.data[b + cfg.num_heads * d + x] = v; // k of kv head 0
        }
    }
    let model = Model::new(cfg.clone(), params).unwrap();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut batch = Batch::new();
    let mut steps = Vec::new();
    for &(len, prompt) in seqs {
        let toks: Vec<u32> = (0..len).map(|_| rng.below(64) as u32).collect();
        batch.push(&toks, &toks).unwrap(); // targets do not matter to attention
        let mut bounds = vec![0, prompt];
        while *bounds.last().unwrap() < len {
            let next = bounds.last().unwrap() + 1 + rng.below(max_step as u64) as usize;
            bounds.push(next.min(len));
        }
        if len == 0 {
            bounds.clear(); // an empty sequence has no steps at all
        }
        steps.push(SeqSteps { bounds, response_start: prompt, end_of_thinking: None });
    }
    let mut ws = Workspace::new(&cfg, batch.len());
    model.forward(&batch, &mut ws).unwrap();
    Fixture { model, batch, ws, steps }
}

/// Full causal softmax map P[t][s] (f64) of one sequence, layer and query head.
fn naive_map(f: &Fixture, seq: usize, layer: usize, head: usize) -> Vec<Vec<f64>> {
    let c = &f.model.cfg;
    let (h_n, kv_n, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let qs = c.qkv_dim();
    let g = head / (h_n / kv_n);
    let qkv = &f.ws.layers[layer].qkv;
    let (start, n) = (f.batch.seq_starts[seq], f.batch.seq_starts[seq + 1] - f.batch.seq_starts[seq]);
    let q = |t: usize, x: usize| qkv[(start + t) * qs + head * d + x] as f64;
    let k = |s: usize, x: usize| qkv[(start + s) * qs + (h_n + g) * d + x] as f64;
    let scale = 1.0 / (d as f64).sqrt();
    (0..n)
        .map(|t| {
            let scores: Vec<f64> = (0..=t).map(|s| (0..d).map(|x| q(t, x) * k(s, x)).sum::<f64>() * scale).collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|v| (v - m).exp()).sum();
            let mut row = vec![0.0; n];
            for (s, v) in scores.iter().enumerate() {
                row[s] = (v - m).exp() / z;
            }
            row
        })
        .collect()
}

/// FCI of one head, literally: a_{j,k} block means, y_k = Σ_{j ≥ k+Δ} a_{j,k}.
fn naive_fci_head(p: &[Vec<f64>], bounds: &[usize], delta: usize) -> Vec<f64> {
    let s_n = bounds.len().saturating_sub(1);
    let mut a = vec![vec![0.0; s_n]; s_n];
    for j in 0..s_n {
        for k in 0..s_n {
            let mut sum = 0.0;
            for row in &p[bounds[j]..bounds[j + 1]] {
                sum += row[bounds[k]..bounds[k + 1]].iter().sum::<f64>();
            }
            a[j][k] = sum / ((bounds[j + 1] - bounds[j]) * (bounds[k + 1] - bounds[k])) as f64;
        }
    }
    (0..s_n).map(|k| (k + delta..s_n).map(|j| a[j][k]).sum()).collect()
}

struct NaiveSeq {
    fci: Vec<f64>,
    fci_all: Vec<(HeadId, Vec<f64>)>,
    lookback: Vec<f64>,
    head_waad: Vec<Vec<f64>>,
    head_fai: Vec<Vec<f64>>,
    groups: HeadGroups,
    waad: Vec<f64>,
    fai: Vec<f64>,
}

fn naive_stats(f: &Fixture, cfg: &StatsConfig, fci_layers: &[usize], rhythm_layers: &[usize]) -> Vec<NaiveSeq> {
    let h_n = f.model.cfg.num_heads;
    (0..f.batch.num_seqs())
        .map(|seq| {
            let st = &f.steps[seq];
            let n = f.batch.seq_starts[seq + 1] - f.batch.seq_starts[seq];
            let r = st.response_start;
            let t_len = n - r;
            let s_n = st.bounds.len().saturating_sub(1);
            // FCI: maximum over heads, then the zeroing rules.
            let mut fci_all = Vec::new();
            let mut fci = vec![0.0f64; s_n];
            for &l in fci_layers {
                for h in 0..h_n {
                    let y = naive_fci_head(&naive_map(f, seq, l, h), &st.bounds, cfg.delta);
                    for k in 0..s_n {
                        fci[k] = fci[k].max(y[k]);
                    }
                    fci_all.push((HeadId { layer: l, head: h }, y));
                }
            }
            for (k, y) in fci.iter_mut().enumerate() {
                if k < 2 || st.end_of_thinking.is_some_and(|e| k > e) {
                    *y = 0.0;
                }
            }
            // Rhythm: per-head look-back, WAAD and FAI maps, then the groups' means.
            let (mut lookback, mut head_waad, mut head_fai, mut maps) = (vec![], vec![], vec![], vec![]);
            for &l in rhythm_layers {
                for h in 0..h_n {
                    let p = naive_map(f, seq, l, h);
                    let lb: f64 = (r..n).map(|t| (0..=t).map(|s| p[t][s] * (t - s) as f64).sum::<f64>()).sum();
                    lookback.push(if t_len == 0 { 0.0 } else { lb / t_len as f64 });
                    head_waad.push(waad_of(&p, r, cfg.window));
                    head_fai.push(fai_of(&p, r, cfg.h_lo, cfg.h_hi));
                    maps.push(p);
                }
            }
            let groups = naive_groups(&lookback, cfg.local_frac, cfg.global_frac);
            let mean_map = |idx: &[usize]| -> Vec<Vec<f64>> {
                let mut m = vec![vec![0.0; n]; n];
                for &i in idx {
                    for t in 0..n {
                        for s in 0..n {
                            m[t][s] += maps[i][t][s] / idx.len() as f64;
                        }
                    }
                }
                m
            };
            let (waad, fai) = if rhythm_layers.is_empty() {
                (vec![], vec![])
            } else {
                (
                    waad_of(&mean_map(&groups.local), r, cfg.window),
                    fai_of(&mean_map(&groups.global), r, cfg.h_lo, cfg.h_hi),
                )
            };
            NaiveSeq { fci, fci_all, lookback, head_waad, head_fai, groups, waad, fai }
        })
        .collect()
}

/// WAAD_i = Σ_{s ≤ t} A_{t,s}·min(t − s, W) for response rows t = r + i (prompt keys included).
fn waad_of(a: &[Vec<f64>], r: usize, w: usize) -> Vec<f64> {
    (r..a.len()).map(|t| (0..=t).map(|s| a[t][s] * (t - s).min(w) as f64).sum()).collect()
}

/// FAI_i = mean of A_{r+u, r+i} over response rows u ∈ [i + h_lo, min(T − 1, i + h_hi)]; 0 if empty.
fn fai_of(a: &[Vec<f64>], r: usize, h_lo: usize, h_hi: usize) -> Vec<f64> {
    let t_len = a.len() - r;
    (0..t_len)
        .map(|i| {
            let rows: Vec<usize> = (i + h_lo..=(i + h_hi).min(t_len.saturating_sub(1))).collect();
            if rows.is_empty() {
                0.0
            } else {
                rows.iter().map(|&u| a[r + u][r + i]).sum::<f64>() / rows.len() as f64
            }
        })
        .collect()
}

/// Bottom / top round(frac·n) heads by look-back (at least one each).
fn naive_groups(lookback: &[f64], lf: f64, gf: f64) -> HeadGroups {
    let n = lookback.len();
    if n == 0 {
        return HeadGroups::default();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| lookback[a].partial_cmp(&lookback[b]).unwrap());
    let count = |f: f64| ((f * n as f64).round() as usize).max(1);
    let mut local: Vec<usize> = order[..count(lf)].to_vec();
    let mut global: Vec<usize> = order[n - count(gf)..].to_vec();
    local.sort();
    global.sort();
    HeadGroups { local, global }
}

/// |got − want| ≤ 1e-5 · max(1, |want|) for every element.
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * w.abs().max(1.0);
        assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

fn check_against_naive(f: &Fixture, cfg: &StatsConfig, fci_layers: &[usize], rhythm_layers: &[usize]) -> Vec<SeqStats> {
    let got = attention_stats(&f.model, &f.batch, &f.ws, &f.steps, cfg).unwrap();
    let want = naive_stats(f, cfg, fci_layers, rhythm_layers);
    let h_n = f.model.cfg.num_heads;
    for (s, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("seq {s} fci"), &g.fci, &w.fci);
        // The arg-max head must attain the maximum (up to rounding).
        for (k, arg) in g.fci_argmax.iter().enumerate() {
            match arg {
                None => assert!(w.fci[k] < 1e-6, "seq {s} step {k}: no arg-max but y = {}", w.fci[k]),
                Some(head) => {
                    let y = &w.fci_all.iter().find(|(h, _)| h == head).unwrap().1;
                    assert!((y[k] - w.fci[k]).abs() <= 1e-5 * w.fci[k].max(1.0), "seq {s} step {k}: arg-max {head:?}");
                }
            }
        }
        assert_close(&format!("seq {s} lookback"), &g.lookback, &w.lookback);
        assert_eq!(g.heads, w.groups, "seq {s}: chosen heads");
        assert_close(&format!("seq {s} waad"), &g.waad, &w.waad);
        assert_close(&format!("seq {s} fai"), &g.fai, &w.fai);
        if cfg.keep_head_partials {
            let t_len = g.waad.len();
            for (i, (hw, hf)) in w.head_waad.iter().zip(&w.head_fai).enumerate() {
                assert_close(&format!("seq {s} head {i} waad"), &g.head_waad[i * t_len..(i + 1) * t_len], hw);
                assert_close(&format!("seq {s} head {i} fai"), &g.head_fai[i * t_len..(i + 1) * t_len], hf);
            }
        }
        assert_eq!(g.lookback.len(), rhythm_layers.len() * h_n);
    }
    got
}

/// Several ragged sequences: one over 2 row blocks (150), odd lengths, a prompt-only sequence.
const SEQS: [(usize, usize); 5] = [(150, 23), (37, 5), (1, 1), (91, 40), (130, 7)];

#[test]
fn default_statistics_match_the_naive_reference() {
    let f = fixture(11, &SEQS, 9);
    let cfg = StatsConfig { delta: 2, keep_head_partials: true, ..StatsConfig::default() };
    let rhythm = default_rhythm_layers(4, 5);
    assert_eq!(rhythm, vec![1, 2]);
    let got = check_against_naive(&f, &cfg, &[0, 1, 2, 3], &rhythm);
    // The statistics are not trivially zero: FCI is positive somewhere, heads differ in look-back.
    assert!(got[0].fci.iter().any(|&y| y > 0.01), "fci {:?}", got[0].fci);
    assert!(got[0].fci[..2].iter().all(|&y| y == 0.0));
    let lb = &got[0].lookback;
    assert!(lb.iter().cloned().fold(0.0, f32::max) > 2.0 * lb.iter().cloned().fold(f32::MAX, f32::min), "{lb:?}");
    assert!(got[0].fai.iter().any(|&v| v > 0.0) && got[0].waad.iter().any(|&v| v > 0.0));
    // The prompt-only sequence has one step and no response.
    assert_eq!(got[2].fci, vec![0.0]);
    assert!(got[2].waad.is_empty() && got[2].fai.is_empty());
}

#[test]
fn default_config_with_short_steps_and_an_empty_sequence_matches_the_naive_reference() {
    let f = fixture(19, &[(70, 9), (0, 0), (129, 64), (65, 3)], 3);
    let got = check_against_naive(&f, &StatsConfig::default(), &[0, 1, 2, 3], &[1, 2]);
    assert!(got[1].fci.is_empty() && got[1].waad.is_empty());
    assert!(got[2].fci.iter().any(|&y| y > 0.0));
}

#[test]
fn custom_layers_windows_and_end_of_thinking_match_the_naive_reference() {
    let mut f = fixture(5, &SEQS, 6);
    f.steps[0].end_of_thinking = Some(9);
    f.steps[3].end_of_thinking = Some(0);
    let cfg = StatsConfig {
        fci_layers: vec![3, 0],
        delta: 0,
        rhythm_layers: vec![3, 0, 2],
        window: 3,
        h_lo: 2,
        h_hi: 7,
        local_frac: 0.25,
        global_frac: 0.5,
        ..StatsConfig::default()
    };
    let got = check_against_naive(&f, &cfg, &[3, 0], &[3, 0, 2]);
    assert!(got[0].fci[10..].iter().all(|&y| y == 0.0) && got[0].fci[2..10].iter().any(|&y| y > 0.0));
    assert!(got[3].fci.iter().all(|&y| y == 0.0));
    assert_eq!(got[0].heads.local.len(), 3);
    assert_eq!(got[0].heads.global.len(), 6);
}

#[test]
fn a_step_gap_of_zero_without_rhythm_stays_causal() {
    // Δ = 0: a row's own step is one of its key steps; its later keys must not count (the rhythm
    // rows of the test above read keys up to the row anyway, so FCI-only layers are the case)
    let f = fixture(5, &SEQS, 6);
    let cfg = StatsConfig { fci_layers: vec![3, 0], delta: 0, rhythm: false, ..StatsConfig::default() };
    let got = check_against_naive(&f, &cfg, &[3, 0], &[]);
    assert!(got[0].fci.iter().any(|&y| y > 0.0));
}

#[test]
fn fci_only_and_rhythm_only_runs_give_the_same_numbers() {
    let f = fixture(2, &SEQS, 7);
    let both = StatsConfig { delta: 1, ..StatsConfig::default() };
    let all = attention_stats(&f.model, &f.batch, &f.ws, &f.steps, &both).unwrap();
    let fci =
        attention_stats(&f.model, &f.batch, &f.ws, &f.steps, &StatsConfig { rhythm: false, ..both.clone() }).unwrap();
    let rhy =
        attention_stats(&f.model, &f.batch, &f.ws, &f.steps, &StatsConfig { fci: false, ..both.clone() }).unwrap();
    for s in 0..SEQS.len() {
        assert_eq!(fci[s].fci, all[s].fci);
        assert!(fci[s].lookback.is_empty() && fci[s].waad.is_empty());
        assert_eq!((&rhy[s].lookback, &rhy[s].waad, &rhy[s].fai), (&all[s].lookback, &all[s].waad, &all[s].fai));
        assert!(rhy[s].fci.is_empty());
    }
    // A sequence without step bounds gets no FCI but still its rhythm statistics.
    let mut steps = f.steps.clone();
    steps[0].bounds.clear();
    let some = attention_stats(&f.model, &f.batch, &f.ws, &steps, &both).unwrap();
    assert!(some[0].fci.is_empty() && some[0].waad == all[0].waad);
    assert_eq!(some[1].fci, all[1].fci);
}

#[test]
fn bad_inputs_are_errors_naming_the_value() {
    let f = fixture(3, &[(40, 6), (20, 4)], 5);
    let cfg = StatsConfig::default();
    let run = |steps: &[SeqSteps], cfg: &StatsConfig| {
        attention_stats(&f.model, &f.batch, &f.ws, steps, cfg).expect_err("must be rejected").to_string()
    };
    let with = |seq: usize, edit: &dyn Fn(&mut SeqSteps)| {
        let mut s = f.steps.clone();
        edit(&mut s[seq]);
        s
    };
    let msg = run(&with(1, &|s| s.bounds[0] = 1), &cfg);
    assert!(msg.contains("sequence 1") && msg.contains("from 0"), "{msg}");
    let msg = run(&with(0, &|s| *s.bounds.last_mut().unwrap() = 41), &cfg);
    assert!(msg.contains("41") || msg.contains("40"), "{msg}");
    let msg = run(&with(0, &|s| s.bounds[2] = s.bounds[1]), &cfg);
    assert!(msg.contains("increase strictly"), "{msg}");
    let msg = run(&with(0, &|s| s.response_start = 7), &cfg);
    assert!(msg.contains("response_start is 7"), "{msg}");
    let msg = run(&with(1, &|s| s.response_start = 21), &cfg);
    assert!(msg.contains("response_start 21"), "{msg}");
    let msg = run(&with(0, &|s| s.end_of_thinking = Some(99)), &cfg);
    assert!(msg.contains("end_of_thinking step 99"), "{msg}");
    let msg = run(&f.steps[..1], &cfg);
    assert!(msg.contains("1 step lists for 2 sequences"), "{msg}");
    let msg = run(&f.steps, &StatsConfig { fci_layers: vec![0, 4], ..cfg.clone() });
    assert!(msg.contains("fci_layers has layer 4"), "{msg}");
    let msg = run(&f.steps, &StatsConfig { rhythm_layers: vec![2, 2], ..cfg.clone() });
    assert!(msg.contains("rhythm_layers lists layer 2 twice"), "{msg}");
    let msg = run(&f.steps, &StatsConfig { local_frac: 0.0, ..cfg.clone() });
    assert!(msg.contains("local_frac = 0"), "{msg}");
    let msg = run(&f.steps, &StatsConfig { global_frac: 1.5, ..cfg.clone() });
    assert!(msg.contains("global_frac = 1.5"), "{msg}");
    let msg = run(&f.steps, &StatsConfig { h_lo: 20, h_hi: 10, ..cfg.clone() });
    assert!(msg.contains("h_lo = 20"), "{msg}");
    // A workspace that never saw this batch (too small) is refused, not read out of bounds.
    let small = Workspace::new(&f.model.cfg, 10);
    let err = attention_stats(&f.model, &f.batch, &small, &f.steps, &cfg).unwrap_err().to_string();
    assert!(err.contains("workspace"), "{err}");
    // A malformed packing is refused; an empty batch has no statistics.
    let mut broken = f.batch.clone();
    broken.seq_starts[1] = 70;
    let err = attention_stats(&f.model, &broken, &f.ws, &f.steps, &cfg).unwrap_err().to_string();
    assert!(err.contains("seq_starts [0, 70, 60]"), "{err}");
    assert!(attention_stats(&f.model, &Batch::default(), &f.ws, &[], &cfg).unwrap().is_empty());
    // Disabled parts ignore their inputs: with FCI off, bad bounds are not looked at.
    let bad = with(0, &|s| s.bounds[0] = 3);
    assert!(attention_stats(&f.model, &f.batch, &f.ws, &bad, &StatsConfig { fci: false, ..cfg.clone() }).is_ok());
}

#[test]
fn head_selection_takes_rounded_fractions_with_stable_ties() {
    let lb = [5.0, 1.0, 3.0, 1.0, 9.0, 7.0, 2.0, 8.0, 4.0, 6.0];
    let g = select_heads(&lb, 0.3, 0.3).unwrap();
    assert_eq!(g, HeadGroups { local: vec![1, 3, 6], global: vec![4, 5, 7] });
    // Ties: the lower index is "more local", the higher one "more global".
    let g = select_heads(&[1.0, 1.0, 1.0, 1.0], 0.25, 0.25).unwrap();
    assert_eq!(g, HeadGroups { local: vec![0], global: vec![3] });
    // At least one head each, at most all.
    let g = select_heads(&[2.0, 1.0], 0.01, 1.0).unwrap();
    assert_eq!(g, HeadGroups { local: vec![1], global: vec![0, 1] });
    assert_eq!(select_heads(&[], 0.3, 0.3).unwrap(), HeadGroups::default());
    assert!(select_heads(&[1.0, f32::NAN], 0.3, 0.3).unwrap_err().to_string().contains("NaN"));
    assert!(select_heads(&[1.0], f64::NAN, 0.3).is_err());
}

#[test]
fn default_rhythm_layers_are_evenly_spaced_in_the_middle_third() {
    assert_eq!(default_rhythm_layers(24, 5), vec![8, 10, 12, 14, 16]);
    assert_eq!(default_rhythm_layers(28, 5), vec![9, 11, 14, 16, 18]);
    assert_eq!(default_rhythm_layers(4, 5), vec![1, 2]);
    assert_eq!(default_rhythm_layers(1, 5), vec![0]);
    assert_eq!(default_rhythm_layers(2, 5), vec![0, 1]);
    assert_eq!(default_rhythm_layers(24, 1), vec![12]);
}

#[test]
fn fai_window_is_clipped_at_the_last_response_token() {
    assert_eq!(fai_rows(0, 200, 10, 100), Some((10, 100)));
    assert_eq!(fai_rows(150, 200, 10, 100), Some((160, 199)));
    assert_eq!(fai_rows(189, 200, 10, 100), Some((199, 199)));
    assert_eq!(fai_rows(190, 200, 10, 100), None);
    assert_eq!(fai_rows(0, 0, 0, 0), None);
}

#[test]
fn combine_rhythm_averages_the_chosen_heads() {
    // 3 heads × T = 2.
    let waad = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let fai = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    let groups = HeadGroups { local: vec![0, 2], global: vec![1] };
    let (w, a) = combine_rhythm(&waad, &fai, 2, &groups).unwrap();
    assert_eq!(w, vec![3.0, 4.0]);
    assert_eq!(a, vec![0.3, 0.4]);
    let bad = HeadGroups { local: vec![3], global: vec![0] };
    assert!(combine_rhythm(&waad, &fai, 2, &bad).unwrap_err().to_string().contains("head index 3"));
    assert!(combine_rhythm(&waad, &fai[..5], 2, &groups).is_err());
}

/// `Engine::attention_stats_chunked` (at most `rl.micro_batch` sequences and
/// `rl.micro_batch_tokens` positions per forward) gives each
/// sequence the statistics of one pass over the whole batch: they are per sequence, and only the
/// products' blocking changes with the chunk (f32 rounding).
#[test]
fn chunked_passes_give_each_sequence_its_statistics() {
    use arbor::model::micro_batch::MicroBatch;
    use arbor::train::engine::Engine;
    let f = fixture(3, &SEQS, 7);
    let cfg = StatsConfig { delta: 1, ..StatsConfig::default() };
    let whole = attention_stats(&f.model, &f.batch, &f.ws, &f.steps, &cfg).unwrap();
    let seqs: Vec<(Vec<u32>, SeqSteps)> = (0..SEQS.len())
        .map(|s| (f.batch.tokens[f.batch.seq_starts[s]..f.batch.seq_starts[s + 1]].to_vec(), f.steps[s].clone()))
        .collect();
    let diff = common::max_abs_diff;
    // (sequences of 150, 37, 1, 91 and 130 positions: a budget of 200 packs 150 + 37 + 1, then
    // 91 and 130 apart)
    let by_tokens = MicroBatch { samples: 0, tokens: 200 };
    for micro in [0.into(), 1.into(), 2.into(), 3.into(), by_tokens] {
        let (mut engine, mut ws) = (Engine::cpu(), Workspace::default());
        let got = engine.attention_stats_chunked(&f.model, &mut ws, &seqs, &cfg, micro).unwrap();
        assert_eq!(got.len(), SEQS.len(), "micro-batch {micro:?}");
        for (s, (g, w)) in got.iter().zip(&whole).enumerate() {
            let worst = diff(&g.fci, &w.fci).max(diff(&g.lookback, &w.lookback));
            let worst = worst.max(diff(&g.waad, &w.waad)).max(diff(&g.fai, &w.fai));
            assert!(worst <= 1e-5, "micro-batch {micro:?}, sequence {s}: statistics differ by {worst}");
        }
        // the workspace holds the largest chunk's tokens, not the batch's
        let chunks = micro.ranges(0..SEQS.len(), |i| SEQS[i].0);
        let largest = chunks.iter().map(|r| SEQS[r.clone()].iter().map(|x| x.0).sum::<usize>()).max().unwrap();
        assert_eq!(ws.capacity(), largest, "micro-batch {micro:?}: workspace of {} tokens", ws.capacity());
        if micro == by_tokens {
            assert_eq!(largest, 188, "the budget packs the short sequences together");
        }
    }
}
