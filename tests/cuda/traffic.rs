//! What crosses between host and device, counted by the SIMT host emulator's driver
//! (`arbor_simt_counters` in simt/driver.cpp: the kernels, products, copies and host waits the
//! calling thread made): the promises of docs/cuda.md that no figure of a GPU run shows.
//! * A decode step sends its row inputs up in one copy and brings back only the sampled ids,
//!   log-probs and entropies, in one copy (never a logit), with one host wait; a layer is 9
//!   launches with bf16 products.
//! * A GRPO step on the device (rollout, π_old and reference recompute, update, AdamW) moves no
//!   weights, gradients or moments between host and device: only tokens and per-token values.
//!   Weights come to the host when asked (`sync_host`, for a checkpoint), and the count sees them.
//!
//! On a real GPU the driver counts nothing: the tests say so and check nothing else; on the
//! emulator (`ARBOR_SIMT=1`, scripts/test.sh) the counts must be there.

use super::{emulated, gpu, request_groups};
use arbor::config::Device;
use arbor::cuda::{Gpu, GpuDecoder, GpuModel};
use arbor::model::{init::init_params, Arch, Model, ModelConfig};
use arbor::parallel::Local;
use arbor::rl::{LossConfig, LossKind};
use arbor::rollout::{GenerateConfig, SamplingParams};
use arbor::tensor::Dtype;
use arbor::train::adamw::{AdamW, AdamWConfig};
use arbor::train::engine::Engine;
use arbor::train::rl::{policy_update, Sample, UpdateBatch, UpdateBuffers, UpdatePlan, UpdateSettings};

/// The emulator's counts for the calling thread, in the order of simt/driver.h's `Count`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counts {
    launches: u64,
    gemms: u64,
    htod: u64,
    htod_bytes: u64,
    dtoh: u64,
    dtoh_bytes: u64,
    dtod: u64,
    dtod_bytes: u64,
    syncs: u64,
    graph_launches: u64,
    fills: u64,
    pool_grows: u64,
    pool_grow_bytes: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            launches: self.launches - o.launches,
            gemms: self.gemms - o.gemms,
            htod: self.htod - o.htod,
            htod_bytes: self.htod_bytes - o.htod_bytes,
            dtoh: self.dtoh - o.dtoh,
            dtoh_bytes: self.dtoh_bytes - o.dtoh_bytes,
            dtod: self.dtod - o.dtod,
            dtod_bytes: self.dtod_bytes - o.dtod_bytes,
            syncs: self.syncs - o.syncs,
            graph_launches: self.graph_launches - o.graph_launches,
            fills: self.fills - o.fills,
            pool_grows: self.pool_grows - o.pool_grows,
            pool_grow_bytes: self.pool_grow_bytes - o.pool_grow_bytes,
        }
    }
}

type CountersFn = unsafe extern "C" fn(*mut u64, i32) -> i32;

/// The calling thread's counts, or `None` where the loaded `libcuda.so` is not the emulator (a
/// failure under `ARBOR_SIMT=1`). Call after the device is open (cudarc loads the library then).
fn counts() -> Option<Counts> {
    // SAFETY: dlopen with RTLD_NOLOAD only looks up a library already loaded (cudarc's
    // libcuda.so), and the symbol, when present, is simt/driver.cpp's function of this signature,
    // which writes at most `n` values.
    let raw = unsafe {
        let lib = libc::dlopen(c"libcuda.so".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        let sym = if lib.is_null() { std::ptr::null_mut() } else { libc::dlsym(lib, c"arbor_simt_counters".as_ptr()) };
        if sym.is_null() {
            None
        } else {
            let f: CountersFn = std::mem::transmute(sym);
            let mut v = [0u64; 13];
            let n = f(v.as_mut_ptr(), v.len() as i32);
            assert_eq!(n, 13, "simt/driver.cpp counts {n} things; this test reads 13");
            Some(v)
        }
    };
    let Some(v) = raw else {
        assert!(!emulated(), "ARBOR_SIMT=1 but the loaded libcuda.so has no arbor_simt_counters");
        println!("skipped: the host traffic is counted by the SIMT emulator's driver only (not a GPU's)");
        return None;
    };
    Some(Counts {
        launches: v[0],
        gemms: v[1],
        htod: v[2],
        htod_bytes: v[3],
        dtoh: v[4],
        dtoh_bytes: v[5],
        dtod: v[6],
        dtod_bytes: v[7],
        syncs: v[8],
        graph_launches: v[9],
        fills: v[10],
        pool_grows: v[11],
        pool_grow_bytes: v[12],
    })
}

/// A small Qwen2-shaped model of width `hidden` with `layers` layers (head dim 16, so the decode
/// attention runs its per-group kernel).
fn model(hidden: usize, layers: usize, seed: u64) -> Model {
    let mut cfg: ModelConfig = super::common::tiny_config(Arch::Qwen2, false);
    (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers) = (hidden, 2 * hidden, layers);
    (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) = (hidden / 16, hidden / 32, 16);
    (cfg.vocab_size, cfg.max_position_embeddings) = (48, 64);
    Model::new(cfg.clone(), init_params(&cfg, seed, 0.5)).unwrap()
}

/// Generation of `new` tokens for 4 prompts × 2 samples, all in the batch together (8 slots), no
/// stop token: every step after the first (the prompts' prefill) decodes the same 8 rows.
fn decode_counts(g: &std::sync::Arc<Gpu>, m: &Model, graphs: bool, new: usize) -> Counts {
    let prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![4, 5], vec![6, 7, 8, 9, 10], vec![11]];
    let requests = request_groups(&prompts, 2);
    let cfg = GenerateConfig {
        sampling: SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: new },
        stop_tokens: vec![],
        seed: 3,
        step: 0,
        max_batch: requests.len(),
        workload: None,
    };
    let w = GpuModel::frozen(g.clone(), m).unwrap();
    let mut dec = GpuDecoder::new(g, m).unwrap();
    dec.set_graphs(graphs);
    let before = counts().unwrap_or_default();
    let out = dec.generate(m, w.weights(), &requests, &cfg).unwrap();
    assert!(out.iter().all(|c| c.tokens.len() == new), "every completion runs to max_new_tokens");
    counts().unwrap_or_default() - before
}

/// Per decode step, taken as the difference between generations of 12 and 4 new tokens (the same
/// prefill, 8 more steps of 8 rows): one copy up, one copy down of 12 bytes a row (id, log-prob,
/// entropy), one host wait, no other copy or fill, 4 products a layer and one for the LM head,
/// and 9 launches a layer with bf16 products; with graphs the same kernels, replayed by one graph
/// launch a step.
#[test]
fn a_decode_step_moves_its_row_inputs_up_and_only_the_sampled_tokens_down() {
    let Some(g) = gpu() else { return };
    if counts().is_none() {
        return;
    }
    let (rows, steps) = (8u64, 8u64);
    for dtype in [Dtype::F32, Dtype::Bf16] {
        g.set_dtype(dtype);
        let mut per_layer = Vec::new();
        let mut eager = Counts::default();
        for layers in [1usize, 2] {
            let m = model(64, layers, 7);
            decode_counts(&g, &m, false, 4); // (the device's scratch buffers grow to the dtype's needs)
            let d = decode_counts(&g, &m, false, 12) - decode_counts(&g, &m, false, 4);
            println!("{dtype:?}, {layers} layer(s), {steps} decode steps of {rows} rows: {d:?}");
            let what = format!("{dtype:?}, {layers} layer(s)");
            assert_eq!(d.htod, steps, "{what}: one copy up a step (tokens, positions, slots, lengths, uniforms)");
            assert_eq!(d.dtoh, steps, "{what}: one copy down a step");
            assert_eq!(d.dtoh_bytes, steps * rows * 12, "{what}: id, log-prob and entropy of each row, no logit");
            assert_eq!(d.syncs, steps, "{what}: one host wait a step (for the sampled tokens)");
            assert_eq!((d.dtod, d.fills, d.graph_launches), (0, 0, 0), "{what}: no other copy, fill or graph");
            assert_eq!(d.gemms, steps * (4 * layers as u64 + 1), "{what}: q|k|v, o, gate|up, down a layer; LM head");
            per_layer.push(d.launches + d.gemms);
            eager = d;
        }
        let layer = (per_layer[1] - per_layer[0]) / steps;
        assert_eq!((per_layer[1] - per_layer[0]) % steps, 0, "{dtype:?}: steps differ: {per_layer:?}");
        println!("{dtype:?}: {layer} launches a layer, {} a step outside the layers", per_layer[0] / steps - layer);
        if dtype == Dtype::Bf16 {
            assert_eq!(layer, 9, "bf16: RMSNorm, q|k|v, its epilogue, attention, o, RMSNorm, gate|up, SwiGLU, down");
        }
        // graphs: the step's kernels replayed (the same count), launched by one call a step
        let m = model(64, 2, 7);
        let d = decode_counts(&g, &m, true, 12) - decode_counts(&g, &m, true, 4);
        println!("{dtype:?} with graphs, 2 layers: {d:?}");
        assert_eq!(d.graph_launches, steps, "{dtype:?}: one graph launch a step");
        assert_eq!(
            (d.launches, d.gemms),
            (eager.launches, eager.gemms),
            "{dtype:?}: a graph replays the eager kernels"
        );
        assert_eq!((d.htod, d.dtoh, d.dtoh_bytes, d.syncs), (steps, steps, steps * rows * 12, steps), "{dtype:?}");
    }
    g.set_dtype(Dtype::F32);
}

/// GRPO samples with a reward of the share of even tokens, advantages centred per prompt.
fn samples(requests: &[arbor::rollout::Request], done: &[arbor::rollout::Completion]) -> Vec<Sample> {
    let reward = |t: &[u32]| t.iter().filter(|&&x| x % 2 == 0).count() as f32 / t.len().max(1) as f32;
    let mean = |p: u64| {
        let g: Vec<f32> = done.iter().filter(|c| c.prompt_id == p).map(|c| reward(&c.tokens)).collect();
        g.iter().sum::<f32>() / g.len() as f32
    };
    requests
        .iter()
        .zip(done)
        .filter(|(_, c)| !c.tokens.is_empty())
        .map(|(r, c)| Sample {
            prompt: r.prompt.clone(),
            response: c.tokens.clone(),
            behav_logp: c.logprobs.clone(),
            advantages: vec![reward(&c.tokens) - mean(c.prompt_id); c.tokens.len()],
            reward: reward(&c.tokens),
        })
        .collect()
}

/// One GRPO step on the device engine, after a first one (which uploads the frozen reference):
/// rollout of 4 prompts × 4 samples, the π_old and reference recompute, 2 updates of 2
/// mini-batches with clipping and AdamW, moves less than an eighth of the weights' bytes each
/// way (tokens, per-token log-probs and gradients of the log-probs, losses: no weights, gradients
/// or moments). `sync_host`, the checkpoint's path, then brings weights and moments down, and
/// the count sees them.
/// A GRPO run on the device engine: rollout of 4 prompts × 4 samples of 10 tokens (no stop
/// token: every step has the same shapes), the π_old and reference recompute, 2 updates of 2
/// mini-batches with clipping and AdamW.
struct Grpo {
    base: Model,
    model: Model,
    opt: AdamW,
    engine: Engine,
    buf: UpdateBuffers,
    requests: Vec<arbor::rollout::Request>,
}

impl Grpo {
    fn new() -> Grpo {
        let base = model(128, 2, 9);
        let engine = Engine::new(Device::Cuda, &base, &Local).unwrap();
        let prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![4, 5, 6, 7], vec![8], vec![9, 10]];
        let model = base.clone();
        let opt = AdamW::for_layout(AdamWConfig::default(), &model.params.layout);
        let buf = UpdateBuffers::new(&model);
        let mut run = Grpo { base, model, opt, engine, buf, requests: request_groups(&prompts, 4) };
        run.engine.load(&run.model, &run.opt).unwrap();
        run
    }

    /// Step `k`; returns the sampled tokens.
    fn step(&mut self, k: u64) -> usize {
        let loss = LossConfig { kind: LossKind::Ppo, kl_coef: 0.05, entropy_coef: 0.01, ..LossConfig::default() };
        let plan = UpdatePlan { epochs: 2, mini_batches: 2, micro_batch: 4.into(), grad_clip: 1.0 };
        let gen = GenerateConfig {
            sampling: SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 10 },
            stop_tokens: vec![],
            seed: 1,
            step: k,
            max_batch: 16,
            workload: None,
        };
        let done = self.engine.generate(&self.model, &self.requests, &gen).unwrap();
        let s = samples(&self.requests, &done);
        let settings = UpdateSettings { loss: &loss, plan, lr: 1e-3, reference: Some(&self.base) };
        let batch = UpdateBatch::of(&s);
        let r = policy_update(&mut self.engine, &mut self.model, &mut self.opt, batch, &settings, &mut self.buf);
        assert_eq!(r.unwrap().skipped_updates, 0);
        s.iter().map(|x| x.response.len()).sum::<usize>()
    }
}

/// One GRPO step ([`Grpo`]) after a first one (which uploads the frozen reference) moves less
/// than an eighth of the weights' bytes each way (tokens, per-token log-probs and gradients of
/// the log-probs, losses: no weights, gradients or moments). `sync_host`, the checkpoint's path,
/// then brings weights and moments down, and the count sees them.
#[test]
fn an_rl_step_on_the_device_moves_no_weights_between_host_and_device() {
    let Some(_g) = gpu() else { return };
    let mut run = Grpo::new();
    if counts().is_none() {
        return;
    }
    let weight_bytes = 4 * run.base.params.data.len() as u64;
    run.step(0);
    let before = counts().unwrap();
    let tokens = run.step(1);
    let d = counts().unwrap() - before;
    println!("one GRPO step, {tokens} sampled tokens, weights of {weight_bytes} bytes: {d:?}");
    assert!(d.launches > 100 && d.gemms > 20, "the step ran on the device: {d:?}");
    assert!(d.htod_bytes < weight_bytes / 8, "{} bytes up in one step: weights cross", d.htod_bytes);
    assert!(d.dtoh_bytes < weight_bytes / 8, "{} bytes down in one step: weights cross", d.dtoh_bytes);
    let before = counts().unwrap();
    run.engine.sync_host(&mut run.model, &mut run.opt).unwrap();
    let d = counts().unwrap() - before;
    println!("sync_host: {d:?}");
    assert!(d.dtoh_bytes >= 2 * weight_bytes, "weights and first moments come down for a checkpoint: {d:?}");
}

/// The memory pool keeps what a step frees (`cuda::pool`): a GRPO step ([`Grpo`]) after the
/// first two takes no new memory from the device, though every host wait of it (each decode
/// step's, each loss read's) is where the driver's default would hand the freed memory back, to
/// be mapped again by the next allocation; with that default (`PoolPolicy::Release`) the same
/// step maps memory again. The pool's peak covers the step's own buffers, above what is held
/// between steps.
#[test]
fn a_steady_rl_step_takes_no_new_memory_from_the_device() {
    use arbor::cuda::PoolPolicy;
    let Some(g) = gpu() else { return };
    assert_eq!(g.pool_policy(), Some(PoolPolicy::Keep), "the pool keeps freed memory by default");
    let mut run = Grpo::new();
    if counts().is_none() {
        return;
    }
    let first = counts().unwrap();
    run.step(0);
    run.step(1);
    let before = counts().unwrap();
    let warm = before - first;
    run.engine.take_device_peak_mib();
    // nothing ran since the reset: the memory in use between steps
    let resting = run.engine.take_device_peak_mib().unwrap();
    run.step(2);
    let d = counts().unwrap() - before;
    let peak = run.engine.take_device_peak_mib().unwrap();
    println!("two first GRPO steps: {warm:?}\nthe third: {d:?}, peak {peak} MiB in use, {resting} MiB between steps");
    assert!(warm.pool_grows > 0 && d.syncs > 10, "the first steps took memory; the third waited often");
    assert_eq!((d.pool_grows, d.pool_grow_bytes), (0, 0), "a steady step reuses the memory the pool kept");
    assert!(resting >= (4 * run.base.params.data.len()) as f64 / (1u64 << 20) as f64, "the weights stay: {resting}");
    assert!(peak > resting, "the step's activations and KV cache lie above what stays between steps");
    // the driver's default: each host wait hands the unused memory back, and the step maps it again
    g.set_pool_policy(PoolPolicy::Release).unwrap();
    let before = counts().unwrap();
    run.step(3);
    let released = counts().unwrap() - before;
    g.set_pool_policy(PoolPolicy::Keep).unwrap();
    println!("the same step, memory released at every host wait: {released:?}");
    assert!(released.pool_grows > released.syncs, "memory mapped again after the host waits: {released:?}");
}
