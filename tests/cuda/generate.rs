//! Generation on the GPU against the CPU engine: continuous batching through one loop
//! (`rollout::slots`), and token sampling on the device (cuda/sample.cu) against the
//! CPU sampler. The loop and the kernel's arithmetic are also checked on the host, over the CPU's
//! decode step (those tests run everywhere).

use super::{common::tiny_config, gpu, request_groups};
use arbor::cuda::sample::{emulate_row, emulate_truncated_row, truncates};
use arbor::cuda::{DecodeAttn, Gpu, GpuDecoder};
use arbor::model::decode::{DecodeBuffers, DecodeWeights, KvCache};
use arbor::model::{init::init_params, Arch, Model};
use arbor::rng::Rng;
use arbor::rollout::slots::run_requests;
use arbor::rollout::{generate, Completion, GenerateConfig, LoopStep, Request, SamplingParams};
use arbor::tensor::Backend;

/// A tiny model, 4 prompts × 2 samples, and the generation settings at `temperature`: 20 new
/// tokens, stop token 12, 3 slots (so finished requests free slots for later ones).
fn case(temperature: f32) -> (Model, Vec<Request>, GenerateConfig) {
    let mut cfg = tiny_config(Arch::Qwen2, false);
    cfg.max_position_embeddings = 64;
    let model = Model::new(cfg.clone(), init_params(&cfg, 11, 1.0)).unwrap();
    let mut rng = Rng::new(5);
    let prompts: Vec<Vec<u32>> =
        [3usize, 7, 1, 12].iter().map(|&l| (0..l).map(|_| (rng.next_u64() % 13) as u32).collect()).collect();
    let requests = request_groups(&prompts, 2);
    let gen_cfg = GenerateConfig {
        sampling: SamplingParams { temperature, top_p: 1.0, top_k: 0, max_new_tokens: 20 },
        stop_tokens: vec![12],
        seed: 0,
        step: 3,
        max_batch: 3,
        workload: None,
    };
    (model, requests, gen_cfg)
}

/// The host's stand-in for the GPU decoder: the CPU's cached decode step, then the greedy pick or
/// the emulated sampling kernels on each picking row (with top-k/top-p: the truncated kernel's).
fn host_loop(model: &Model, requests: &[Request], cfg: &GenerateConfig) -> Vec<Completion> {
    let v = model.cfg.vocab_size;
    let slots = cfg.max_batch.min(requests.len());
    let mut cache = KvCache::new(model, slots, 40);
    let mut buf = DecodeBuffers::new(model, slots);
    let t = cfg.sampling.temperature;
    let w = DecodeWeights::new(model);
    run_requests(requests, cfg, (slots, 40, 256), |step: LoopStep<'_>| {
        for &slot in step.starts {
            cache.len[slot] = 0;
        }
        let rows = step.input;
        model.forward_cached(&w, rows.tokens, rows.slots, rows.logit_rows, &mut cache, &mut buf)?;
        let truncated = truncates(&cfg.sampling);
        Ok((0..rows.logit_rows.len())
            .map(|k| {
                let z = &buf.logits[k * v..(k + 1) * v];
                match truncated {
                    true => emulate_truncated_row(z, rows.uniforms[k], &cfg.sampling),
                    false => emulate_row(z, rows.uniforms[k], t),
                }
            })
            .collect())
    })
    .unwrap()
}

/// The loop the GPU decoder runs, over the CPU's decode step and the host emulation of
/// cuda/sample.cu, equals the CPU engine at temperature 0, 1, and 1 with top-p 0.9 and top-k 6,
/// with 3 slots for 8 requests: the
/// same tokens, finish reasons, behaviour log-probs and entropies (runs everywhere: it checks the
/// continuous batching, the random draws and the kernel's arithmetic, not the device).
#[test]
fn the_gpu_generation_loop_on_the_cpu_decode_step_equals_the_engine() {
    for (temperature, top_p, top_k) in [(0.0f32, 1.0, 0), (1.0, 1.0, 0), (1.0, 0.9, 6)] {
        let (model, requests, mut cfg) = case(temperature);
        (cfg.sampling.top_p, cfg.sampling.top_k) = (top_p, top_k);
        let cpu = generate(&model, &requests, &cfg).unwrap();
        let got = host_loop(&model, &requests, &cfg);
        let mut distinct = std::collections::BTreeSet::new();
        for (c, g) in cpu.iter().zip(&got) {
            let what = format!("T {temperature} prompt {} sample {}", c.prompt_id, c.sample_index);
            assert_eq!((c.prompt_id, c.sample_index), (g.prompt_id, g.sample_index), "{what}");
            assert_eq!(c.tokens, g.tokens, "{what}");
            assert_eq!(c.finish, g.finish, "{what}");
            for k in 0..c.tokens.len() {
                assert!((c.logprobs[k] - g.logprobs[k]).abs() < 1e-5, "{what} token {k} log-prob");
                assert!((c.entropies[k] - g.entropies[k]).abs() < 1e-5, "{what} token {k} entropy");
            }
            distinct.extend(g.tokens.iter().copied());
        }
        if temperature > 0.0 {
            assert!(distinct.len() > 3, "sampling at T = 1 should spread over the vocabulary: {distinct:?}");
            assert_ne!(got[0].tokens, got[4].tokens, "two samples of one prompt should differ");
        }
        let stops = got.iter().filter(|c| c.finish == arbor::rollout::Finish::Stop).count();
        println!("T {temperature}: {stops} of {} completions ended on the stop token", got.len());
    }
}

/// Generation on the GPU (continuous batching, tokens drawn on the device) equals the CPU engine:
/// greedy exactly (with either decode attention kernel, and with rows split over blocks), sampled at T = 1 but for at most one completion (a logit within rounding of a
/// sampling boundary may flip a token, and every later one with it).
#[test]
fn generation_on_the_gpu_equals_the_cpu_engine() {
    let Some(g) = gpu() else { return };
    // both decode attention kernels (one block per GQA group, the default; one per query head),
    // and the per-group one with every row's positions split in blocks of 8 (merged after)
    for (kernel, temperature, split) in [
        (DecodeAttn::PerGroup, 0.0f32, 0),
        (DecodeAttn::PerGroup, 1.0, 0),
        (DecodeAttn::PerHead, 0.0, 0),
        (DecodeAttn::PerGroup, 0.0, 8),
    ] {
        g.set_decode_attn(kernel);
        g.set_decode_split(split);
        let (model, requests, cfg) = case(temperature);
        let cpu = generate(&model, &requests, &cfg).unwrap();
        let w = arbor::cuda::GpuModel::frozen(g.clone(), &model).unwrap();
        let mut dec = GpuDecoder::new(&g, &model).unwrap();
        let out = dec.generate(&model, w.weights(), &requests, &cfg).unwrap();
        g.set_decode_attn(DecodeAttn::PerGroup);
        g.set_decode_split(0);
        let mut differ = 0;
        for (c, o) in cpu.iter().zip(&out) {
            println!(
                "{} (split {split}) T {temperature} prompt {} sample {}: cpu {:?} gpu {:?}",
                kernel.name(),
                c.prompt_id,
                c.sample_index,
                c.tokens,
                o.tokens
            );
            if o.tokens != c.tokens {
                differ += 1;
                continue;
            }
            assert_eq!(c.finish, o.finish);
            for k in 0..c.tokens.len() {
                assert!((o.logprobs[k] - c.logprobs[k]).abs() < 1e-4, "token {k} log-prob");
            }
        }
        let allowed = if temperature > 0.0 { 1 } else { 0 };
        assert!(differ <= allowed, "T {temperature}: {differ} of {} completions differ from the CPU engine", cpu.len());
    }
    // top-k / top-p: sampled on the device too
    let (model, requests, mut cfg) = case(1.0);
    (cfg.sampling.top_p, cfg.sampling.top_k) = (0.9, 6);
    let cpu = generate(&model, &requests, &cfg).unwrap();
    let w = arbor::cuda::GpuModel::frozen(g.clone(), &model).unwrap();
    let out = GpuDecoder::new(&g, &model).unwrap().generate(&model, w.weights(), &requests, &cfg).unwrap();
    let differ = cpu.iter().zip(&out).filter(|(c, o)| c.tokens != o.tokens).count();
    assert!(differ <= 1, "top-k/top-p: {differ} of {} completions differ from the CPU engine", cpu.len());
}

/// A Qwen3 model (its query and key head norms in every prefill and decode step, with norm
/// weights other than 1) generates on the GPU what the CPU engine generates, greedy: the same
/// tokens, log-probs within 1e-4.
#[test]
fn a_qwen3_model_generates_on_the_gpu_what_the_cpu_engine_does() {
    let Some(g) = gpu() else { return };
    let (qwen2, requests, cfg) = case(0.0);
    let qcfg = arbor::model::ModelConfig { arch: Arch::Qwen3, qkv_bias: false, ..qwen2.cfg.clone() };
    let mut params = init_params(&qcfg, 11, 1.0);
    super::common::perturb_norms(&mut params, 3);
    let model = Model::new(qcfg, params).unwrap();
    let cpu = generate(&model, &requests, &cfg).unwrap();
    let w = arbor::cuda::GpuModel::frozen(g.clone(), &model).unwrap();
    let out = GpuDecoder::new(&g, &model).unwrap().generate(&model, w.weights(), &requests, &cfg).unwrap();
    for (c, o) in cpu.iter().zip(&out) {
        println!("qwen3 prompt {} sample {}: cpu {:?} gpu {:?}", c.prompt_id, c.sample_index, c.tokens, o.tokens);
        assert_eq!(c.tokens, o.tokens, "prompt {} sample {}", c.prompt_id, c.sample_index);
        for k in 0..c.tokens.len() {
            assert!((o.logprobs[k] - c.logprobs[k]).abs() < 1e-4, "token {k} log-prob");
        }
    }
}

/// An `[async]` rollout rank's streaming loop on the GPU (`train::decoding::EngineSlots` on a
/// forward-only CUDA engine, as a rollout rank makes it: device KV cache, weights installed
/// between two decode steps, tokens drawn on the device) equals the same loop on the CPU engine,
/// greedy: the same tokens, log-probs within 1e-4. (Sampled, one flipped token would move every
/// later admission against the install, so greedy is the comparison that says something.)
#[test]
fn a_streaming_loop_across_weight_versions_on_the_gpu_equals_the_cpu() {
    use arbor::config::{Compute, Device, Dtype};
    use arbor::train::engine::Engine;
    let (model, requests, cfg) = case(0.0);
    let b = init_params(&model.cfg, 12, 1.0);
    let run = |engine: &dyn Fn(&Model) -> Engine| {
        let mut m = model.clone();
        super::common::slots_with_install(engine(&m), &mut m, &b.data, &requests, &cfg, (3, 40, 9))
    };
    // (the CPU half runs everywhere: the case must hold a request across the install)
    let cpu = run(&|_| Engine::cpu());
    let across = (0..requests.len()).filter(|&i| cpu.admitted[i] < 9 && cpu.finished[i] >= 9).count();
    assert!(across > 0, "some request should be in flight across the install");
    if gpu().is_none() {
        return;
    }
    let on_gpu = |m: &Model| Engine::inference(Compute { device: Device::Cuda, dtype: Dtype::F32 }, m).unwrap();
    let gpu = run(&on_gpu);
    for (i, (c, o)) in cpu.completions.iter().zip(&gpu.completions).enumerate() {
        println!("request {i}: cpu {:?} gpu {:?}", c.tokens, o.tokens);
        assert_eq!(c.tokens, o.tokens, "request {i}");
        for k in 0..c.tokens.len() {
            assert!((o.logprobs[k] - c.logprobs[k]).abs() < 1e-4, "request {i} token {k} log-prob");
        }
    }
}

/// The plain sampling kernel (sample_rows_f32, read through its shared-memory tiles) is the
/// arithmetic cuda/sample.cu documents, bit for bit: tokens, log-probs and entropies equal the
/// host emulation `emulate_row` for vocabularies whose chunks are shorter than a tile, not a
/// multiple of it, or leave threads with nothing, at temperature 0, 1 and 0.7.
#[test]
fn device_sampling_is_the_documented_arithmetic_bit_for_bit() {
    use arbor::cuda::sample::{sample_rows, SampleBufs};
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(5);
    let mut bufs = SampleBufs::new(&g, 1).unwrap();
    for v in [1usize, 37, 255, 256, 8191, 8192 + 33, 151_936] {
        for temperature in [0.0f32, 1.0, 0.7] {
            let n = if v > 10_000 { 8 } else { 24 };
            // ties on purpose: a quarter of the logits share one value (the first maximum counts)
            let z: Vec<f32> = (0..n * v).map(|i| if i % 4 == 0 { 2.5 } else { (rng.normal() * 2.0) as f32 }).collect();
            let uniforms: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
            let dev = g.upload(&z).unwrap();
            let params = SamplingParams { temperature, top_p: 1.0, top_k: 0, max_new_tokens: 1 };
            let got = sample_rows(&g, &Gpu::r(&dev, 0..n * v), v, &uniforms, &params, &mut bufs).unwrap();
            for (i, s) in got.iter().enumerate() {
                let want = emulate_row(&z[i * v..(i + 1) * v], uniforms[i], temperature);
                assert_eq!(
                    (s.token, s.logprob.to_bits(), s.entropy.to_bits()),
                    (want.token, want.logprob.to_bits(), want.entropy.to_bits()),
                    "v {v} T {temperature} row {i}"
                );
            }
        }
    }
}

/// Sampling on the device: the same tokens as the CPU sampler from the same uniforms (a logit
/// within rounding of a boundary may flip one), log-probs and entropies within 1e-5, greedy rows
/// on the first maximum; and the token frequencies of one row sampled many times follow softmax.
#[test]
fn device_sampling_matches_the_cpu_sampler() {
    use arbor::cuda::sample::{sample_rows, SampleBufs};
    use arbor::rollout::{sample, SamplingParams};
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(23);
    let mut scratch = Vec::new();
    // one set of device buffers for every call: it grows from 1 row on the first
    let mut bufs = SampleBufs::new(&g, 1).unwrap();
    let cases = [
        (1000usize, 1.0f32, 0usize, 1.0f32),
        (151_936, 0.8, 0, 1.0),
        (257, 0.0, 0, 1.0),
        (4099, 1.3, 0, 1.0),
        // top-k / top-p: sample_truncated_f32
        (151_936, 1.0, 50, 0.9),
        (4099, 0.7, 0, 0.8),
        (1000, 1.0, 7, 1.0),
    ];
    for &(v, temperature, top_k, top_p) in &cases {
        let n = 96;
        let z: Vec<f32> = (0..n * v).map(|_| (rng.normal() * 3.0) as f32).collect();
        let mut streams: Vec<Rng> = (0..n).map(|i| Rng::derive(9, &[v as u64, i as u64])).collect();
        let uniforms: Vec<f64> = streams.iter().map(|r| r.clone().uniform()).collect();
        let dev = g.upload(&z).unwrap();
        let params = SamplingParams { temperature, top_p, top_k, max_new_tokens: 1 };
        let got = sample_rows(&g, &Gpu::r(&dev, 0..n * v), v, &uniforms, &params, &mut bufs).unwrap();
        let mut flips = 0;
        for (i, s) in got.iter().enumerate() {
            let want = sample(&z[i * v..(i + 1) * v], &params, &mut streams[i], &mut scratch);
            flips += usize::from(s.token != want.token);
            assert!((s.entropy - want.entropy).abs() <= 1e-5 * want.entropy.abs().max(1.0), "v {v} row {i}");
            if s.token == want.token {
                assert!((s.logprob - want.logprob).abs() <= 1e-5 * want.logprob.abs().max(1.0), "v {v} row {i}");
            }
        }
        println!(
            "v {v} T {temperature} top-k {top_k} top-p {top_p}: {flips} of {n} tokens differ from the CPU sampler"
        );
        assert!(flips <= 1, "v {v} T {temperature} top-k {top_k} top-p {top_p}: {flips} tokens differ");
    }
    // frequencies: one row of 6 logits, 20000 uniforms
    let z = [1.0f32, 0.0, -1.0, 2.0, 0.5, -3.0];
    let n = 20_000;
    let rows: Vec<f32> = (0..n).flat_map(|_| z).collect();
    let mut r = Rng::new(77);
    let uniforms: Vec<f64> = (0..n).map(|_| r.uniform()).collect();
    let dev = g.upload(&rows).unwrap();
    let plain = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 1 };
    let got = sample_rows(&g, &Gpu::r(&dev, 0..rows.len()), z.len(), &uniforms, &plain, &mut bufs).unwrap();
    let total: f64 = z.iter().map(|&x| (x as f64).exp()).sum();
    for (j, &x) in z.iter().enumerate() {
        let p = (x as f64).exp() / total;
        let f = got.iter().filter(|s| s.token as usize == j).count() as f64 / n as f64;
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        println!("token {j}: p {p:.4} frequency {f:.4}");
        assert!((f - p).abs() < 5.0 * sd + 1e-4, "token {j}: frequency {f} vs p {p}");
    }
    // under top-k = 3 the three most likely tokens (3, 0, 4) share the renormalised mass, the
    // others never come
    let top3 = SamplingParams { top_k: 3, ..plain };
    let got = sample_rows(&g, &Gpu::r(&dev, 0..rows.len()), z.len(), &uniforms, &top3, &mut bufs).unwrap();
    let kept: f64 = [0usize, 3, 4].iter().map(|&j| (z[j] as f64).exp()).sum();
    for (j, &x) in z.iter().enumerate() {
        let p = if [0usize, 3, 4].contains(&j) { (x as f64).exp() / kept } else { 0.0 };
        let f = got.iter().filter(|s| s.token as usize == j).count() as f64 / n as f64;
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        println!("top-3 token {j}: p {p:.4} frequency {f:.4}");
        assert!((f - p).abs() < 5.0 * sd + 1e-4, "top-3 token {j}: frequency {f} vs p {p}");
    }
}

/// Decode steps replayed as CUDA graphs (`cuda::graphs`) give the eager steps' completions bit for
/// bit, greedy and sampled, with f32 and bf16 products: continuous batching over 3 slots for 8
/// requests runs steps of 3, 2 and 1 rows (3 padded to its bucket, 4, with a row decoding into the
/// spare slot), each captured on its second use and replayed after; a second generation (a new KV
/// cache: new addresses) captures again. The eager steps are padded as the captured ones are, and
/// the padding changes no completion: the same tokens as unpadded steps (sampled: but for at most
/// one), log-probs within 1e-5.
#[test]
fn decode_graphs_replay_the_eager_steps_bit_for_bit() {
    use arbor::config::Dtype;
    let Some(g) = gpu() else { return };
    let bits = |c: &Completion| (c.tokens.clone(), c.logprobs.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    for dtype in [Dtype::F32, Dtype::Bf16] {
        g.set_dtype(dtype);
        for temperature in [0.0f32, 1.0] {
            let (model, requests, cfg) = case(temperature);
            // (the weights and, with bf16 products, their image, made after the dtype is set)
            let w = arbor::cuda::GpuModel::frozen(g.clone(), &model).unwrap();
            let unpadded = GpuDecoder::new(&g, &model).unwrap().generate(&model, w.weights(), &requests, &cfg).unwrap();
            let mut eager = GpuDecoder::new(&g, &model).unwrap();
            eager.set_padding(true);
            let eager = eager.generate(&model, w.weights(), &requests, &cfg).unwrap();
            // (sampled: a logit within rounding of a sampling boundary may flip one completion)
            let mut differ = 0;
            for (u, e) in unpadded.iter().zip(&eager) {
                if u.tokens != e.tokens {
                    differ += 1;
                    continue;
                }
                for (a, b) in u.logprobs.iter().zip(&e.logprobs) {
                    assert!((a - b).abs() < 1e-5, "{dtype:?} T {temperature}: log-prob {a} unpadded, {b} padded");
                }
            }
            let allowed = if temperature > 0.0 { 1 } else { 0 };
            assert!(differ <= allowed, "{dtype:?} T {temperature}: padding changed {differ} completions");
            let mut dec = GpuDecoder::new(&g, &model).unwrap();
            dec.set_graphs(true);
            for round in 0..2 {
                let replayed = dec.generate(&model, w.weights(), &requests, &cfg).unwrap();
                assert!(dec.graphs_held() > 0, "{dtype:?} T {temperature}: no decode step was captured");
                for (e, r) in eager.iter().zip(&replayed) {
                    assert_eq!(bits(e), bits(r), "{dtype:?} T {temperature} round {round}: prompt {}", e.prompt_id);
                }
            }
        }
    }
    g.set_dtype(Dtype::F32);
}
