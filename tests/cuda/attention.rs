//! The flash attention on the device against the CPU's (the kernels of the device's dtype: f32
//! here, the bf16 tensor-core kernels in precision.rs and wgmma.rs), and the attention-statistics
//! pass (cuda/attn_stats.cu) against the CPU pass.

use super::common::tiny_config;
use super::{batch, close, down, gpu, rand};
use arbor::attention::{AttnSaved, AttnShape};
use arbor::cuda::{DkdvPlan, Gpu, GpuModel};
use arbor::model::{init::init_params, Arch, Batch, Model};
use arbor::rng::Rng;
use arbor::tensor::{Backend, Cpu};

/// The GPU attention (kernels of the device's dtype) of the packed q|k|v rows `qkv` over `b`: the
/// forward's output and log-sum-exp, then the backward of `dout` from them (dqkv, as training
/// runs it). Every output starts as NaN, so an element a kernel did not write fails the comparison.
pub(super) fn gpu_attention(
    g: &Gpu,
    b: &Batch,
    qkv: &[f32],
    dout: &[f32],
    shape: AttnShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, h, d) = (b.len(), shape.num_heads, shape.head_dim);
    let stride = (h + 2 * shape.num_kv_heads) * d;
    let dev = g.batch(b.packed()).unwrap();
    let (qg, dg) = (g.upload(qkv).unwrap(), g.upload(dout).unwrap());
    let nan = |len: usize| g.upload(&vec![f32::NAN; len]).unwrap();
    let (mut og, mut lg, mut dqg) = (nan(n * h * d), nan(n * h), nan(n * stride));
    let sl = g.attn_scratch_len(shape, n);
    let mut sg = g.upload(&vec![0.0; sl.max(1)]).unwrap();
    let (o, l, q) = (0..n * h * d, 0..n * h, 0..n * stride);
    g.attention_forward(
        Gpu::m(&mut og, o.clone()),
        Gpu::m(&mut lg, l.clone()),
        Gpu::m(&mut sg, 0..sl),
        Gpu::r(&qg, q.clone()),
        &dev,
        shape,
    )
    .unwrap();
    let saved = AttnSaved { qkv: Gpu::r(&qg, q.clone()), out: Gpu::r(&og, o.clone()), lse: Gpu::r(&lg, l.clone()) };
    g.attention_backward(Gpu::m(&mut dqg, q), Gpu::m(&mut sg, 0..sl), Gpu::r(&dg, o), saved, &dev, shape).unwrap();
    (down(g, &og, n * h * d), down(g, &lg, n * h), down(g, &dqg, n * stride))
}

#[test]
fn flash_attention_forward_and_backward_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(3);
    for (h, kv, d) in [(4, 2, 16), (8, 2, 64), (2, 1, 128)] {
        let shape = AttnShape { num_heads: h, num_kv_heads: kv, head_dim: d };
        let b = batch(&mut rng, &[1, 70, 130, 3], 10);
        let n = b.len();
        let stride = (h + 2 * kv) * d;
        let qkv = rand(&mut rng, n * stride);
        let (mut out, mut lse) = (vec![0.0; n * h * d], vec![0.0; n * h]);
        let mut scratch = vec![0.0; Cpu.attn_scratch_len(shape, n)];
        Cpu.attention_forward(&mut out, &mut lse, &mut scratch, &qkv, &b.packed(), shape).unwrap();
        let dout = rand(&mut rng, n * h * d);
        let (og, lg, dqg) = gpu_attention(&g, &b, &qkv, &dout, shape);
        close(&format!("attention fwd D={d} out"), &og, &out, 1e-4);
        close(&format!("attention fwd D={d} lse"), &lg, &lse, 1e-4);
        let mut dqkv = vec![0.0; n * stride];
        let saved = AttnSaved { qkv: &qkv[..], out: &out[..], lse: &lse[..] };
        Cpu.attention_backward(&mut dqkv, &mut scratch, &dout, saved, &b.packed(), shape).unwrap();
        close(&format!("attention bwd D={d} dqkv"), &dqg, &dqkv, 1e-3);
        // the grouped dK/dV plan (one block loops over a GQA group) beside the default per-head one
        g.set_dkdv_plan(DkdvPlan::Grouped);
        let (_, _, grouped) = gpu_attention(&g, &b, &qkv, &dout, shape);
        g.set_dkdv_plan(DkdvPlan::PerHead);
        close(&format!("attention bwd D={d} dqkv, grouped plan"), &grouped, &dqkv, 1e-3);
    }
}

/// The statistics pass on the GPU (cuda/attn_stats.cu) equals the CPU's: FCI per step within
/// f32 summation noise with the same maximising head (another head only where it reaches the CPU's
/// maximum to 1e-5, a tie within f32 rounding), look-back, head groups, WAAD and FAI; and it is
/// deterministic (a second pass repeats the first bit for bit).
#[test]
fn attention_statistics_on_the_gpu_match_the_cpu_pass() {
    use arbor::attention::stats::{attention_stats, SeqSteps, StatsConfig};
    let Some(g) = gpu() else { return };
    let mut cfg = tiny_config(Arch::Qwen2, false);
    cfg.num_layers = 6;
    cfg.head_dim = 8;
    cfg.max_position_embeddings = 256;
    cfg.vocab_size = 64;
    let model = Model::new(cfg.clone(), init_params(&cfg, 21, 0.5)).unwrap();
    let mut rng = Rng::new(6);
    let mut b = Batch::new();
    let mut steps = Vec::new();
    for &(len, prompt) in &[(150usize, 20usize), (90, 7), (33, 33), (200, 64)] {
        let toks: Vec<u32> = (0..len).map(|_| (rng.next_u64() % 64) as u32).collect();
        b.push(&toks, &toks).unwrap();
        let mut bounds = vec![0, prompt];
        while *bounds.last().unwrap() < len {
            let next = bounds.last().unwrap() + 1 + (rng.next_u64() % 12) as usize;
            bounds.push(next.min(len));
        }
        steps.push(SeqSteps { bounds, response_start: prompt, end_of_thinking: None });
    }
    steps[1].end_of_thinking = Some(4);
    let scfg = StatsConfig { h_lo: 3, h_hi: 40, keep_head_partials: true, ..StatsConfig::default() };
    let mut ws = arbor::model::Workspace::new(&cfg, b.len());
    model.forward(&b, &mut ws).unwrap();
    let cpu = attention_stats(&model, &b, &ws, &steps, &scfg).unwrap();
    let mut gm = GpuModel::new(g, &model).unwrap();
    let gpu_stats = arbor::cuda::stats::attention_stats(&mut gm, &model, &b, &steps, &scfg).unwrap();
    // every sum runs in a fixed order (no float atomics): a second pass repeats the first bit for
    // bit, also from a model whose training passes checkpoint (the pass keeps every layer, then
    // leaves the mode as it found it)
    gm.set_checkpointing(true);
    let again = arbor::cuda::stats::attention_stats(&mut gm, &model, &b, &steps, &scfg).unwrap();
    assert!(gm.checkpointing());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (x, y) in gpu_stats.iter().zip(&again) {
        assert_eq!(bits(&x.fci), bits(&y.fci), "FCI differs between two identical passes");
        assert_eq!(bits(&x.waad), bits(&y.waad), "WAAD differs between two identical passes");
        assert_eq!(bits(&x.fai), bits(&y.fai), "FAI differs between two identical passes");
    }
    let mut compared = 0;
    for (s, (c, o)) in cpu.iter().zip(&gpu_stats).enumerate() {
        close(&format!("FCI sequence {s}"), &o.fci, &c.fci, 1e-4);
        for k in 0..o.fci.len() {
            if o.fci_argmax[k] != c.fci_argmax[k] {
                assert!((o.fci[k] - c.fci[k]).abs() <= 1e-5 * c.fci[k].max(1.0), "sequence {s} step {k}");
            }
            compared += 1;
        }
        close(&format!("look-back sequence {s}"), &o.lookback, &c.lookback, 1e-4);
        assert_eq!(o.heads, c.heads, "sequence {s}: head groups");
        close(&format!("WAAD sequence {s}"), &o.waad, &c.waad, 1e-4);
        close(&format!("FAI sequence {s}"), &o.fai, &c.fai, 1e-4);
        close(&format!("per-head FAI sequence {s}"), &o.head_fai, &c.head_fai, 1e-4);
    }
    assert!(compared > 20, "too few steps compared ({compared})");
}
