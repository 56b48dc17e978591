//! Generation: greedy decoding equals argmax over the full forward (no cache), sampled results
//! do not depend on batch size or slot order, and stop tokens / length limits end requests.

mod common;

use arbor::io::load_hf_dir;
use arbor::model::{Batch, Model, Workspace};
use arbor::rollout::{generate, Finish, GenerateConfig, Request, SamplingParams};
use common::fixture;

fn model() -> Model {
    let (cfg, params) = load_hf_dir(&fixture("qwen2_tiny")).unwrap();
    Model::new(cfg, params).unwrap()
}

fn requests() -> Vec<Request> {
    (0..5u64)
        .flat_map(|p| {
            (0..2u32).map(move |s| Request {
                prompt_id: p,
                sample_index: s,
                prompt: (0..(3 + p as u32 * 2)).map(|i| (i * 11 + p as u32 * 7 + 1) % 128).collect(),
            })
        })
        .collect()
}

fn config(temperature: f32, max_batch: usize) -> GenerateConfig {
    GenerateConfig {
        sampling: SamplingParams { temperature, top_p: 1.0, top_k: 0, max_new_tokens: 12 },
        stop_tokens: vec![],
        seed: 42,
        step: 3,
        max_batch,
        workload: None,
    }
}

#[test]
fn workload_mode_forces_the_drawn_lengths_whatever_the_batch() {
    let m = model();
    let text = "lengths = { kind = \"lognormal\", median = 6, sigma = 1.0, max = 40 }\ndecode_step_ms = 0.5";
    let w: arbor::rollout::WorkloadConfig = toml::from_str(text).unwrap();
    let mut cfg = config(1.0, 3);
    cfg.stop_tokens = vec![0, 1, 2, 3];
    cfg.workload = Some(w.clone());
    let requests: Vec<Request> = (0..10u32)
        .map(|i| Request { prompt_id: u64::from(i / 2), sample_index: i % 2, prompt: vec![1, 5 + i, 7] })
        .collect();
    let out = generate(&m, &requests, &cfg).unwrap();
    let mut lengths = Vec::new();
    for (r, c) in requests.iter().zip(&out) {
        let want = w.length(cfg.seed, cfg.step, r.prompt_id, r.sample_index, 12);
        assert_eq!(c.tokens.len(), want, "request {r:?}");
        assert_eq!(c.finish, arbor::rollout::Finish::Length);
        lengths.push(want);
    }
    assert!(lengths.iter().any(|&l| l != lengths[0]), "lengths vary: {lengths:?}");
    cfg.max_batch = 8;
    let again = generate(&m, &requests, &cfg).unwrap();
    assert_eq!(out, again, "batch size does not change a completion");
}

#[test]
fn greedy_generation_matches_uncached_argmax() {
    let m = model();
    let v = m.cfg.vocab_size;
    let reqs = requests();
    let out = generate(&m, &reqs, &config(0.0, 4)).unwrap();
    for (r, c) in reqs.iter().zip(&out) {
        let mut seq = r.prompt.clone();
        for (k, &tok) in c.tokens.iter().enumerate() {
            let mut b = Batch::new();
            b.push_lm(&seq, 0).unwrap();
            let mut ws = Workspace::new(&m.cfg, seq.len());
            m.forward(&b, &mut ws).unwrap();
            let mut logits = vec![0.0; seq.len() * v];
            m.logits_into(&ws, seq.len(), &mut logits);
            let last = &logits[(seq.len() - 1) * v..];
            let argmax =
                last.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (i, &x)| if x > a.1 { (i, x) } else { a }).0;
            assert_eq!(tok as usize, argmax, "prompt {} token {k}", r.prompt_id);
            let lse = last.iter().map(|x| (*x as f64).exp()).sum::<f64>().ln();
            assert!((c.logprobs[k] as f64 - (last[argmax] as f64 - lse)).abs() < 1e-4);
            seq.push(tok);
        }
        assert_eq!(c.tokens.len(), 12);
        assert_eq!(c.finish, Finish::Length);
    }
}

#[test]
fn sampling_is_independent_of_batch_size() {
    let m = model();
    let reqs = requests();
    let a = generate(&m, &reqs, &config(1.0, 1)).unwrap();
    let b = generate(&m, &reqs, &config(1.0, 3)).unwrap();
    let c = generate(&m, &reqs, &config(1.0, 16)).unwrap();
    // The decode kernels are row-wise (batch-invariant): completions are bit-identical.
    assert_eq!(a, b);
    assert_eq!(a, c);
    // different samples of one prompt differ (their streams are distinct)
    assert_ne!(a[0].tokens, a[1].tokens);
    let mut other = config(1.0, 3);
    other.step = 4;
    let shifted = generate(&m, &reqs, &other).unwrap();
    assert!(shifted.iter().zip(&a).any(|(x, y)| x.tokens != y.tokens), "the step must enter the random stream");
}

#[test]
fn stop_tokens_end_requests_and_free_slots() {
    let m = model();
    let reqs = requests();
    let greedy = generate(&m, &reqs, &config(0.0, 2)).unwrap();
    // stop at the third greedy token of request 0: it must end right there, others unaffected
    let stop = greedy[0].tokens[2];
    let mut cfg = config(0.0, 2);
    cfg.stop_tokens = vec![stop];
    let out = generate(&m, &reqs, &cfg).unwrap();
    for (g, o) in greedy.iter().zip(&out) {
        match g.tokens.iter().position(|&t| t == stop) {
            Some(p) => {
                assert_eq!(o.tokens, g.tokens[..=p].to_vec());
                assert_eq!(o.finish, Finish::Stop);
            }
            None => assert_eq!(o.tokens, g.tokens),
        }
    }
}

/// Generation splits the slots into one shard per pool thread, each taking requests from a shared
/// queue: completions are bit-identical for any thread count and batch size, and prompts of
/// different lengths (longer than one step's row budget too) go through the same path.
#[test]
fn completions_do_not_depend_on_threads_or_batch() {
    let m = model();
    let mut reqs = requests();
    // two long prompts admitted together exceed one step's row budget (256): one is fed in chunks
    for s in 0..2 {
        reqs.push(Request {
            prompt_id: 9,
            sample_index: s,
            prompt: (0..200).map(|i| (i * 17 + s + 3) % 128).collect(),
        });
    }
    let mut cfg = config(1.0, 4);
    let first = generate(&m, &reqs, &cfg).unwrap();
    // stop at request 0's fifth token: it and possibly others end early, so slots free unevenly
    cfg.stop_tokens = vec![first[0].tokens[4]];
    let run = |threads: usize, max_batch: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut c = cfg.clone();
        c.max_batch = max_batch;
        pool.install(|| generate(&m, &reqs, &c)).unwrap()
    };
    let base = run(1, 1);
    assert!(base.iter().any(|c| c.finish == Finish::Stop) && base.iter().any(|c| c.finish == Finish::Length));
    for (threads, max_batch) in [(1, 5), (2, 2), (2, 11), (3, 4), (3, 64)] {
        assert_eq!(run(threads, max_batch), base, "{threads} threads, max_batch {max_batch}");
    }
}

#[test]
fn bad_requests_are_errors() {
    let m = model();
    let mut reqs = requests();
    reqs[3].prompt.clear();
    assert!(generate(&m, &reqs, &config(1.0, 4)).is_err());
    let mut reqs = requests();
    reqs[2].prompt.push(10_000);
    assert!(generate(&m, &reqs, &config(1.0, 4)).is_err());
    assert!(generate(&m, &requests(), &config(1.0, 0)).is_err());
    assert_eq!(generate(&m, &[], &config(1.0, 4)).unwrap(), vec![]);
}

/// A continuous-batching loop kept across weight versions (`train::decoding::EngineSlots`, an
/// `[async]` rollout rank's streaming loop): weights installed between two decode steps are used
/// from the next one on. Requests that finished before the install equal `generate` with the old
/// weights, requests admitted after it equal `generate` with the new ones, and those in flight
/// across it follow the old weights' completion up to the install (one token a step, from the
/// step that fed their prompt) and then leave it (their cache and stream carry over).
#[test]
fn a_loop_across_weight_versions_decodes_with_each_installed_version() {
    let mut m = model();
    let a = model();
    let b = Model::new(m.cfg.clone(), arbor::model::init::init_params(&m.cfg, 9, 0.05)).unwrap();
    let requests = requests();
    let cfg = config(1.0, 3);
    let (with_a, with_b) = (generate(&a, &requests, &cfg).unwrap(), generate(&b, &requests, &cfg).unwrap());
    let install_at = 18;
    let got = common::slots_with_install(
        arbor::train::engine::Engine::cpu(),
        &mut m,
        &b.params.data,
        &requests,
        &cfg,
        (3, 40, install_at),
    );
    let (mut before, mut after, mut across) = (0, 0, 0);
    for (i, c) in got.completions.iter().enumerate() {
        if got.finished[i] < install_at {
            assert_eq!(c, &with_a[i], "request {i} finished under the first weights");
            before += 1;
        } else if got.admitted[i] >= install_at {
            assert_eq!(c, &with_b[i], "request {i} started under the installed weights");
            after += 1;
        } else {
            assert!(c != &with_a[i] && c != &with_b[i], "request {i} decoded under both versions");
            // the prompt goes in at the admission step (prompts are shorter than a step's rows)
            let k = install_at - got.admitted[i];
            assert_eq!(c.tokens[..k], with_a[i].tokens[..k], "request {i}: tokens before the install");
            assert_eq!(c.logprobs[..k], with_a[i].logprobs[..k], "request {i}: log-probs before the install");
            assert_ne!(c.logprobs[k], with_a[i].logprobs[k], "request {i}: the token after the install");
            across += 1;
        }
    }
    assert!(before > 0 && after > 0 && across > 0, "{before} before, {after} after, {across} across the install");
}
