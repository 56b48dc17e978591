//! `[train] dtype` on the GPU: the matrix products take tf32 or bf16 operands (f32 accumulation
//! and result), checked against the CPU's product of the same rounded operands; a bf16 train step
//! and 50 bf16 supervised steps against f32; bf16 decode logits against the f32 decode.

use super::attention::gpu_attention;
use super::common::{max_abs_diff, small_addition, tiny_config};
use super::{batch, close, down, emulated, gpu, rand};
use arbor::config::{Dtype, RunConfig};
use arbor::cuda::gemm::GemmKind;
use arbor::cuda::image::Bf16Image;
use arbor::cuda::{AttnRows, DkdvPlan, Gpu, GpuDecoder, GpuModel};
use arbor::model::{init::init_params, Arch, Batch, Model};
use arbor::rng::Rng;
use arbor::tensor::{Backend, Cpu, GemmShape};
use arbor::train::job;

/// The CPU computes in f32: an engine asked for bf16 or tf32 products there is refused, naming the
/// key (a config is refused before that, by `train.dtype`'s check; this guards other callers).
/// Runs everywhere.
#[test]
fn the_cpu_engine_refuses_rounded_products() {
    use arbor::config::{Compute, Device};
    use arbor::train::engine::Engine;
    let cfg = tiny_config(Arch::Qwen2, false);
    let model = Model::new(cfg.clone(), init_params(&cfg, 1, 0.5)).unwrap();
    for dtype in [Dtype::Tf32, Dtype::Bf16] {
        let compute = Compute { device: Device::Cpu, dtype };
        let Err(err) = Engine::new(compute, &model, &arbor::parallel::Local) else { panic!("{dtype:?} on the CPU") };
        let msg = err.to_string();
        assert!(msg.contains("[train] dtype") && msg.contains(dtype.name()), "{msg}");
    }
    assert!(matches!(Engine::new(Device::Cpu, &model, &arbor::parallel::Local), Ok(Engine::Cpu { .. })));
}

pub(super) fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect()
}

/// The CPU's exact product of the row-major operands.
fn cpu_product(kind: GemmKind, c: &mut [f32], a: &[f32], b: &[f32], shape: GemmShape, acc: bool) {
    match kind {
        GemmKind::Nt => Cpu.matmul_nt(c, a, b, shape, acc),
        GemmKind::Nn => Cpu.matmul_nn(c, a, b, shape, acc),
        GemmKind::Tn => Cpu.matmul_tn(c, a, b, shape, acc),
    }
    .unwrap();
}

/// The backend's product on the GPU with the device's current dtype.
fn gpu_product(g: &Gpu, kind: GemmKind, c0: &[f32], a: &[f32], b: &[f32], shape: GemmShape, acc: bool) -> Vec<f32> {
    let (ag, bg, mut cg) = (g.upload(a).unwrap(), g.upload(b).unwrap(), g.upload(c0).unwrap());
    let (cm, ar, br) = (Gpu::m(&mut cg, 0..c0.len()), Gpu::r(&ag, 0..a.len()), Gpu::r(&bg, 0..b.len()));
    match kind {
        GemmKind::Nt => g.matmul_nt(cm, ar, br, shape, acc),
        GemmKind::Nn => g.matmul_nn(cm, ar, br, shape, acc),
        GemmKind::Tn => g.matmul_tn(cm, ar, br, shape, acc),
    }
    .unwrap();
    down(g, &cg, c0.len())
}

/// Each dtype's products on the three row-major layouts: f32 equals the CPU's exact product; bf16
/// equals the CPU's product of the bf16-rounded operands (and visibly differs from the exact one:
/// the rounding happened); tf32 lies between (within TF32's 2⁻¹¹ relative rounding of the exact
/// product, not exact). A weight with a registered bf16 image (cuda::image) gives the same product.
#[test]
fn products_take_their_operands_as_the_dtype_says() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(12);
    let (m, n, k) = (70, 52, 256);
    let shape = GemmShape::new(m, n, k);
    for kind in [GemmKind::Nt, GemmKind::Nn, GemmKind::Tn] {
        let (a, b, c0) = (rand(&mut rng, m * k), rand(&mut rng, n * k), rand(&mut rng, m * n));
        for acc in [false, true] {
            let mut exact = c0.clone();
            cpu_product(kind, &mut exact, &a, &b, shape, acc);
            let mut rounded = c0.clone();
            cpu_product(kind, &mut rounded, &round_bf16(&a), &round_bf16(&b), shape, acc);
            for dtype in [Dtype::F32, Dtype::Tf32, Dtype::Bf16] {
                g.set_dtype(dtype);
                let got = gpu_product(&g, kind, &c0, &a, &b, shape, acc);
                let what = format!("{kind:?} acc={acc} {}", dtype.name());
                let off = max_abs_diff(&got, &exact);
                match dtype {
                    Dtype::F32 => close(&what, &got, &exact, 1e-5),
                    Dtype::Bf16 => {
                        close(&what, &got, &rounded, 1e-4);
                        assert!(off > 1e-3, "{what}: equals the exact product ({off}): operands not rounded");
                    }
                    Dtype::Tf32 => {
                        close(&what, &got, &exact, 2e-3);
                        assert!(off > 1e-5, "{what}: equals the exact product ({off}): not a TF32 product");
                    }
                }
            }
        }
    }
    // a weight with a registered bf16 image (cuda::image): the product reads the image and equals
    // the product that rounds the weight itself; after the weight changes and the image is
    // refreshed, the new weight's product
    g.set_dtype(Dtype::Bf16);
    let (a, c0) = (rand(&mut rng, m * k), rand(&mut rng, m * n));
    let mut wg = g.upload(&rand(&mut rng, n * k)).unwrap();
    for round in 0..2 {
        let w = down(&g, &wg, n * k);
        let want = gpu_product(&g, GemmKind::Nt, &c0, &a, &w, shape, true);
        let image = Bf16Image::of(&g, &wg).unwrap().expect("an image on a bf16 device");
        let (ag, mut cg) = (g.upload(&a).unwrap(), g.upload(&c0).unwrap());
        g.matmul_nt(Gpu::m(&mut cg, 0..m * n), Gpu::r(&ag, 0..m * k), Gpu::r(&wg, 0..n * k), shape, true).unwrap();
        close(&format!("Nt through a weight image, round {round}"), &down(&g, &cg, m * n), &want, 1e-6);
        drop(image);
        g.stream().memcpy_htod(&rand(&mut rng, n * k), &mut wg).unwrap();
    }
    g.set_dtype(Dtype::F32);
    assert!(Bf16Image::of(&g, &wg).unwrap().is_none(), "f32 products keep no image");
}

/// The attention's scratch follows the device's settings: a model whose buffers were sized under
/// f32 products runs a bf16 forward and backward after the dtype changes (the tensor-core
/// attention needs a larger scratch than the f32 one), with the log-probs of a model made under
/// bf16.
#[test]
fn a_workspace_sized_under_f32_runs_a_bf16_step() {
    let Some(g) = gpu() else { return };
    let mut cfg = tiny_config(Arch::Qwen2, false);
    (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) = (64, 128, 4, 2, 16);
    cfg.vocab_size = 50;
    let model = Model::new(cfg.clone(), init_params(&cfg, 3, 0.5)).unwrap();
    let b = batch(&mut Rng::new(10), &[24, 17, 30], cfg.vocab_size as u32);
    let dlogp = vec![-1.0 / b.len() as f32; b.len()];
    g.set_dtype(Dtype::F32);
    let mut gm = GpuModel::new(g.clone(), &model).unwrap();
    gm.forward(&model, &b).unwrap();
    g.set_dtype(Dtype::Bf16);
    let (got, _) = gm.forward(&model, &b).unwrap();
    gm.backward(&model, &b, &dlogp, None).unwrap();
    let (want, _) = GpuModel::new(g.clone(), &model).unwrap().forward(&model, &b).unwrap();
    close("bf16 log-probs after the dtype changed", &got, &want, 1e-6);
    g.set_dtype(Dtype::F32);
}

/// A linear layer's backward in one call (`linear_backward`: dx = dy·w, dw += dyᵀ·x, dy rounded
/// once for both products with bf16) equals the two products made one by one, bit for bit, for
/// every dtype; with bf16, the CPU's products of the rounded operands within f32 summation noise,
/// with a weight image too.
#[test]
fn a_linear_backward_equals_its_two_products() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(14);
    let (m, n, k) = (70, 52, 96);
    let (dy, w, x) = (rand(&mut rng, m * n), rand(&mut rng, n * k), rand(&mut rng, m * k));
    let (dx0, dw0) = (rand(&mut rng, m * k), rand(&mut rng, n * k));
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for dtype in [Dtype::F32, Dtype::Tf32, Dtype::Bf16] {
        g.set_dtype(dtype);
        let (dyg, wg, xg) = (g.upload(&dy).unwrap(), g.upload(&w).unwrap(), g.upload(&x).unwrap());
        let image = Bf16Image::of(&g, &wg).unwrap();
        let (mut dxg, mut dwg) = (g.upload(&dx0).unwrap(), g.upload(&dw0).unwrap());
        let dxm = Gpu::m(&mut dxg, 0..m * k);
        let (dyr, wr, xr) = (Gpu::r(&dyg, 0..m * n), Gpu::r(&wg, 0..n * k), Gpu::r(&xg, 0..m * k));
        g.linear_backward(dxm, Gpu::m(&mut dwg, 0..n * k), Gpu::as_act(dyr), wr, Gpu::as_act(xr), (m, n, k)).unwrap();
        let (got_dx, got_dw) = (down(&g, &dxg, m * k), down(&g, &dwg, n * k));
        let (mut dx2, mut dw2) = (g.upload(&dx0).unwrap(), g.upload(&dw0).unwrap());
        let (dyr, wr) = (Gpu::r(&dyg, 0..m * n), Gpu::r(&wg, 0..n * k));
        g.matmul_nn(Gpu::m(&mut dx2, 0..m * k), dyr, wr, GemmShape::new(m, k, n), false).unwrap();
        let (dyr, xr) = (Gpu::r(&dyg, 0..m * n), Gpu::r(&xg, 0..m * k));
        g.matmul_tn(Gpu::m(&mut dw2, 0..n * k), dyr, xr, GemmShape::new(n, k, m), true).unwrap();
        let what = dtype.name();
        assert_eq!(bits(&got_dx), bits(&down(&g, &dx2, m * k)), "{what}: dx differs from the product alone");
        assert_eq!(bits(&got_dw), bits(&down(&g, &dw2, n * k)), "{what}: dw differs from the product alone");
        if dtype == Dtype::Bf16 {
            // dy and x already in bf16 (activations written so) are read as they are: the bits of
            // rounding them inside the call
            let (dy16, x16) = (g.act_upload(&dy, true).unwrap(), g.act_upload(&x, true).unwrap());
            let (mut dx3, mut dw3) = (g.upload(&dx0).unwrap(), g.upload(&dw0).unwrap());
            let (dyr, xr) = (Gpu::act_r(&dy16, 0..m * n), Gpu::act_r(&x16, 0..m * k));
            let wr = Gpu::r(&wg, 0..n * k);
            g.linear_backward(Gpu::m(&mut dx3, 0..m * k), Gpu::m(&mut dw3, 0..n * k), dyr, wr, xr, (m, n, k)).unwrap();
            assert_eq!(bits(&got_dx), bits(&down(&g, &dx3, m * k)), "bf16 dy: dx differs from rounding f32 dy");
            assert_eq!(bits(&got_dw), bits(&down(&g, &dw3, n * k)), "bf16 dy, x: dw differs from rounding them");
            // and a forward product of a bf16 activation, the bits of rounding it inside the call
            let (mut c1, mut c2) = (g.upload(&vec![0.0; m * n]).unwrap(), g.upload(&vec![0.0; m * n]).unwrap());
            let xw = (Gpu::r(&xg, 0..m * k), Gpu::r(&wg, 0..n * k));
            g.matmul_nt(Gpu::m(&mut c1, 0..m * n), xw.0, xw.1, GemmShape::new(m, n, k), false).unwrap();
            let (x16r, wr) = (Gpu::act_r(&x16, 0..m * k), Gpu::r(&wg, 0..n * k));
            g.matmul_nt_act(Gpu::m(&mut c2, 0..m * n), x16r, wr, GemmShape::new(m, n, k), false).unwrap();
            assert_eq!(bits(&down(&g, &c1, m * n)), bits(&down(&g, &c2, m * n)), "bf16 activation product");
            let (rdy, rw, rx) = (round_bf16(&dy), round_bf16(&w), round_bf16(&x));
            let (mut want_dx, mut want_dw) = (dx0.clone(), dw0.clone());
            Cpu.linear_backward(&mut want_dx[..], &mut want_dw[..], &rdy[..], &rw[..], &rx[..], (m, n, k)).unwrap();
            close("bf16 linear backward dx", &got_dx, &want_dx, 1e-4);
            close("bf16 linear backward dw", &got_dw, &want_dw, 1e-4);
            assert!(image.is_some(), "a bf16 device keeps a weight image");
        }
        drop(image);
    }
    g.set_dtype(Dtype::F32);
}

/// A bf16 model's weight image follows its weights: after a device AdamW step (which writes the
/// image in the same pass), its forward equals that of a model freshly made from the updated
/// weights (whose image is rounded from them), within summation noise.
#[test]
fn the_weight_image_follows_the_optimizer_step() {
    let Some(g) = gpu() else { return };
    g.set_dtype(Dtype::Bf16);
    let mut cfg = tiny_config(Arch::Qwen2, false);
    (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim) = (32, 64, 8);
    let mut model = Model::new(cfg.clone(), init_params(&cfg, 4, 0.5)).unwrap();
    let mut rng = Rng::new(2);
    let b = batch(&mut rng, &[12, 9], cfg.vocab_size as u32);
    let dlogp = vec![-1.0 / b.len() as f32; b.len()];
    let mut gm = GpuModel::new(g.clone(), &model).unwrap();
    gm.forward(&model, &b).unwrap();
    gm.backward(&model, &b, &dlogp, None).unwrap();
    let mut opt =
        arbor::train::adamw::AdamW::for_layout(arbor::train::adamw::AdamWConfig::default(), &model.params.layout);
    gm.adamw_step(&mut opt, 1e-2, 1.0).unwrap();
    let (after, _) = gm.forward(&model, &b).unwrap();
    model.params.data = gm.params().unwrap();
    let (fresh, _) = GpuModel::new(g.clone(), &model).unwrap().forward(&model, &b).unwrap();
    close("forward after AdamW vs a fresh model", &after, &fresh, 1e-6);
}

/// One bf16 forward + backward of a small model against f32 on the same GPU: the loss within 1 %,
/// the gradient within 5 % (relative L2), and not equal (bf16 products were used).
#[test]
fn a_bf16_train_step_tracks_the_f32_step() {
    let Some(g) = gpu() else { return };
    let mut cfg = tiny_config(Arch::Qwen2, false);
    (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) = (64, 128, 4, 2, 16);
    cfg.vocab_size = 50;
    // (weights of std 0.1: at 0.5 the attention scores' spread, ~16, makes the softmax nearly a
    // hard max, where bf16's rounding of near-tied scores moves the q/k gradients by several %)
    let model = Model::new(cfg.clone(), init_params(&cfg, 3, 0.1)).unwrap();
    let mut rng = Rng::new(9);
    let b = batch(&mut rng, &[24, 17, 30], cfg.vocab_size as u32);
    let n = b.len();
    let dlogp = vec![-1.0 / n as f32; n];
    let mut runs = Vec::new();
    for dtype in [Dtype::F32, Dtype::Bf16] {
        g.set_dtype(dtype);
        let mut gm = GpuModel::new(g.clone(), &model).unwrap();
        let (lp, _) = gm.forward(&model, &b).unwrap();
        gm.backward(&model, &b, &dlogp, None).unwrap();
        let loss = -lp.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        runs.push((loss, gm.grads().unwrap()));
    }
    let ((l32, g32), (l16, g16)) = (&runs[0], &runs[1]);
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let diff: Vec<f32> = g16.iter().zip(g32).map(|(a, b)| a - b).collect();
    let rel = norm(&diff) / norm(g32);
    println!("loss f32 {l32:.6} bf16 {l16:.6}; gradient relative L2 difference {rel:.3e}");
    assert!((l16 - l32).abs() <= 0.01 * l32.abs(), "bf16 loss {l16} vs f32 {l32}");
    assert!(rel <= 5e-2, "bf16 gradient differs from f32 by {rel} (relative L2)");
    assert!(rel > 0.0, "the bf16 step equals the f32 step bit for bit: bf16 products were not used");
}

/// 50 supervised steps of the addition job with `dtype = "bf16"` (and "tf32") follow the f32 run's
/// loss curve on the same GPU within 2 % at every step (on the SIMT emulator, about 10^4 times
/// slower than a GPU: the first 20 steps).
#[test]
fn bf16_supervised_training_tracks_the_f32_loss_curve() {
    if gpu().is_none() {
        return;
    }
    let steps = if emulated() { 20 } else { 50 };
    let dir = tempfile::tempdir().unwrap();
    let run = |dtype: &str| {
        let text =
            small_addition(steps).replace("[train]\n", &format!("[train]\ndevice = \"cuda\"\ndtype = \"{dtype}\"\n"));
        let mut cfg = RunConfig::parse(&text, std::path::Path::new("t.toml")).unwrap();
        cfg.run.out_dir = dir.path().join(dtype);
        job::run(&cfg, None, &mut Vec::new()).unwrap().losses
    };
    let f32_losses = run("f32");
    let last = steps as usize - 1;
    assert_eq!(f32_losses.len(), steps as usize);
    assert!(f32_losses[last] < f32_losses[0], "the f32 run did not learn: {f32_losses:?}");
    for dtype in ["bf16", "tf32"] {
        let losses = run(dtype);
        let worst = losses.iter().zip(&f32_losses).map(|(a, b)| (a - b).abs() / b.abs()).fold(0.0f64, f64::max);
        println!(
            "{dtype}: last loss {:.5} (f32 {:.5}), largest relative step difference {worst:.3e}",
            losses[last], f32_losses[last]
        );
        assert!(worst <= 0.02, "{dtype} loss curve leaves f32's by {worst}");
    }
}

/// The decoder with bf16 products (weights rounded once into an image, keys and values cached in
/// bf16) against the f32 decoder: the logits of a prefill and three decode steps within 2 % of
/// their scale, not bit-identical; also with each row's positions split over blocks (the split
/// attention merged into bf16 rows).
#[test]
fn bf16_decode_logits_track_the_f32_decode() {
    let Some(g) = gpu() else { return };
    let mut cfg = tiny_config(Arch::Llama, false);
    (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim) = (64, 96, 16);
    cfg.vocab_size = 40;
    cfg.max_position_embeddings = 64;
    // (weights of std 0.1: at 1.0 the scores' spread, ~64, makes each softmax a hard max whose
    // near ties bf16 can flip, an error of the model's conditioning, not of the kernels)
    let model = Model::new(cfg.clone(), init_params(&cfg, 5, 0.1)).unwrap();
    let prompt: Vec<u32> = vec![3, 14, 15, 9, 2, 6];
    let mut logits = Vec::new();
    // f32, bf16, and bf16 with each row's positions split in blocks of 4 (merged into bf16 rows)
    for (dtype, split) in [(Dtype::F32, 0), (Dtype::Bf16, 0), (Dtype::Bf16, 4)] {
        g.set_dtype(dtype);
        g.set_decode_split(split);
        let w = arbor::cuda::GpuModel::frozen(g.clone(), &model).unwrap();
        let mut dec = GpuDecoder::new(&g, &model).unwrap();
        let mut cache = arbor::cuda::GpuKvCache::new(&g, &model, 1, 32).unwrap();
        let mut all = dec.step(&model, w.weights(), &prompt, &vec![0; prompt.len()], &mut cache).unwrap();
        for t in [7u32, 1, 33] {
            all.extend(dec.step(&model, w.weights(), &[t], &[0], &mut cache).unwrap());
        }
        logits.push(all);
    }
    g.set_decode_split(0);
    g.set_dtype(Dtype::F32);
    close("bf16 decode logits vs f32", &logits[1], &logits[0], 2e-2);
    close("bf16 decode logits with split rows vs f32", &logits[2], &logits[0], 2e-2);
    assert!(max_abs_diff(&logits[1], &logits[0]) > 0.0, "bf16 decode equals f32 bit for bit: no bf16 products");
}

/// With bf16 products the attention runs on the tensor cores (attention_mma.cu): the forward equals
/// the CPU attention of the bf16-rounded q, k, v (the log-sum-exp within f32 rounding, the output
/// within the bf16 rounding of the probabilities), the backward the CPU backward of the rounded
/// q, k, v and dO within 2 % of its scale, over packed sequences that span several tiles, GQA,
/// head dims 16 and 30 (padded to 64), 64 and 128; every output element written (the same kernels
/// on Hopper's wgmma: tests/cuda/wgmma.rs).
#[test]
fn the_tensor_core_attention_matches_the_cpu_on_rounded_inputs() {
    use arbor::attention::{AttnSaved, AttnShape};
    let Some(g) = gpu() else { return };
    g.set_dtype(Dtype::Bf16);
    let mut rng = Rng::new(23);
    // head dim 30: rows loaded element by element (the others four at a time)
    for (h, kv, d) in [(4, 2, 16), (2, 1, 30), (8, 2, 64), (2, 1, 128)] {
        if !g.attn_on_tensor_cores(d) {
            // a GPU with less shared memory than the tiles need: the f32 kernels run it (the test below)
            println!("D={d}: the tensor-core tiles do not fit {}", g.describe());
            continue;
        }
        let shape = AttnShape { num_heads: h, num_kv_heads: kv, head_dim: d };
        let b = batch(&mut rng, &[1, 70, 130, 3, 64], 10);
        let n = b.len();
        let stride = (h + 2 * kv) * d;
        let qkv = rand(&mut rng, n * stride);
        let (mut out, mut lse) = (vec![0.0; n * h * d], vec![0.0; n * h]);
        let mut scratch = vec![0.0; Cpu.attn_scratch_len(shape, n)];
        Cpu.attention_forward(&mut out, &mut lse, &mut scratch, &round_bf16(&qkv), &b.packed(), shape).unwrap();
        let dout = rand(&mut rng, n * h * d);
        // the grouped dK/dV plan beside the default per-head one (cuda::DkdvPlan): the
        // same sums in another order of f32 additions
        g.set_dkdv_plan(DkdvPlan::Grouped);
        let (_, _, grouped_d) = gpu_attention(&g, &b, &qkv, &dout, shape);
        g.set_dkdv_plan(DkdvPlan::PerHead);
        // every output starts as NaN: each element must be written
        let (got, got_lse, got_d) = gpu_attention(&g, &b, &qkv, &dout, shape);
        assert!(grouped_d.iter().all(|x| x.is_finite()), "D={d}: the grouped plan left dqkv unwritten");
        close(&format!("mma attention D={d} dqkv, plans"), &grouped_d, &got_d, 1e-4);
        assert!(
            got.iter().chain(&got_lse).chain(&got_d).all(|x| x.is_finite()),
            "D={d}: unwritten or non-finite output"
        );
        close(&format!("mma attention D={d} lse"), &got_lse, &lse, 1e-4);
        close(&format!("mma attention D={d} out"), &got, &out, 1e-2);
        // and against the f32 reference on the unrounded inputs, within bf16 tolerance
        let (mut exact, mut exact_lse) = (vec![0.0; n * h * d], vec![0.0; n * h]);
        Cpu.attention_forward(&mut exact, &mut exact_lse, &mut scratch, &qkv, &b.packed(), shape).unwrap();
        close(&format!("mma attention D={d} out vs f32"), &got, &exact, 3e-2);

        let mut want = vec![0.0; n * stride];
        let rq = round_bf16(&qkv);
        let saved = AttnSaved { qkv: &rq[..], out: &out[..], lse: &lse[..] };
        Cpu.attention_backward(&mut want, &mut scratch, &round_bf16(&dout), saved, &b.packed(), shape).unwrap();
        close(&format!("mma attention D={d} dqkv"), &got_d, &want, 2e-2);
        let mut exact_d = vec![0.0; n * stride];
        let saved = AttnSaved { qkv: &qkv[..], out: &exact[..], lse: &exact_lse[..] };
        Cpu.attention_backward(&mut exact_d, &mut scratch, &dout, saved, &b.packed(), shape).unwrap();
        close(&format!("mma attention D={d} dqkv vs f32"), &got_d, &exact_d, 4e-2);
    }
}

/// The tensor-core tiles fit a GPU of 99 KiB per block (sm_86, sm_89) at head dims 64 and 128.
/// Where they do not fit the device's shared memory (emulated with `Gpu::cap_smem`: 99,200 bytes,
/// below the head-dim-128 dK/dV tiles' 99,328 and above the f32 kernels' 99,072), a bf16 device
/// runs the attention on the f32 kernels: the CPU attention of the unrounded q|k|v within f32
/// rounding, forward and backward; at head dim 64 the tensor cores still run it.
#[test]
fn a_gpu_too_small_for_the_tensor_core_tiles_runs_the_f32_attention() {
    use arbor::attention::{AttnSaved, AttnShape};
    let Some(g) = gpu() else { return };
    g.set_dtype(Dtype::Bf16);
    g.cap_smem(99 * 1024);
    assert!(g.attn_on_tensor_cores(64) && g.attn_on_tensor_cores(128));
    g.cap_smem(99_200);
    assert!(g.attn_on_tensor_cores(64) && !g.attn_on_tensor_cores(128));
    let mut rng = Rng::new(31);
    let shape = AttnShape { num_heads: 2, num_kv_heads: 1, head_dim: 128 };
    let b = batch(&mut rng, &[70, 3, 64], 10);
    let (n, stride) = (b.len(), 4 * 128);
    let qkv = rand(&mut rng, n * stride);
    let dout = rand(&mut rng, n * 2 * 128);
    let (got, got_lse, got_d) = gpu_attention(&g, &b, &qkv, &dout, shape);
    let (mut out, mut lse) = (vec![0.0; n * 2 * 128], vec![0.0; n * 2]);
    let mut scratch = vec![0.0; Cpu.attn_scratch_len(shape, n)];
    Cpu.attention_forward(&mut out, &mut lse, &mut scratch, &qkv, &b.packed(), shape).unwrap();
    let mut want = vec![0.0; n * stride];
    let saved = AttnSaved { qkv: &qkv[..], out: &out[..], lse: &lse[..] };
    Cpu.attention_backward(&mut want, &mut scratch, &dout, saved, &b.packed(), shape).unwrap();
    // (the f32 kernels' tolerances; bf16 products would be off by about 1e-2)
    close("capped attention lse", &got_lse, &lse, 1e-4);
    close("capped attention out", &got, &out, 1e-4);
    close("capped attention dqkv", &got_d, &want, 1e-3);
}

/// The bf16 attention's blocks of 128 rows (two warpgroups sharing each streamed tile of keys or
/// queries: `AttnRows::R128`, the default) give the bits of blocks of 64 (`R64`), forward and
/// backward with both dK/dV plans, over sequences that end in a block's first or second
/// warpgroup or fill one warpgroup exactly; each setting launches the kernels it names (as the
/// profile records them). Where the backward's 128-row tiles do not fit (99 KiB a block, as on an
/// RTX 4090, at head dim 128) its kernels run with 64 rows and the forward still with 128: the
/// same bits again.
#[test]
fn the_attention_rows_per_block_do_not_change_the_bits() {
    use arbor::attention::AttnShape;
    let Some(g) = gpu() else { return };
    g.set_dtype(Dtype::Bf16);
    let mut rng = Rng::new(37);
    type Outputs = (Vec<f32>, Vec<f32>, Vec<f32>);
    /// The attention's outputs with `rows` and `plan`, and the tensor-core entries it launched.
    fn run(
        g: &Gpu,
        rows: AttnRows,
        plan: DkdvPlan,
        b: &Batch,
        qkv: &[f32],
        dout: &[f32],
        shape: AttnShape,
    ) -> (Outputs, Vec<String>) {
        g.set_attn_rows(rows);
        g.set_dkdv_plan(plan);
        g.set_profiling(true);
        let got = gpu_attention(g, b, qkv, dout, shape);
        let report = g.profile_report().unwrap();
        g.set_profiling(false);
        g.set_dkdv_plan(DkdvPlan::PerHead);
        g.set_attn_rows(AttnRows::R128);
        let mut ran: Vec<String> = report.rows.into_iter().map(|r| r.name).filter(|n| n.contains("_mma_")).collect();
        ran.sort();
        (got, ran)
    }
    let bits = |(a, b, c): &Outputs| -> Vec<u32> { a.iter().chain(b).chain(c).map(|x| x.to_bits()).collect() };
    let sorted = |mut k: Vec<String>| {
        k.sort();
        k
    };
    for (h, kv, d) in [(4, 2, 16), (6, 2, 64), (2, 1, 128)] {
        let shape = AttnShape { num_heads: h, num_kv_heads: kv, head_dim: d };
        let b = batch(&mut rng, &[1, 70, 130, 64, 200], 10);
        let n = b.len();
        let qkv = rand(&mut rng, n * (h + 2 * kv) * d);
        let dout = rand(&mut rng, n * h * d);
        g.set_attn_rows(AttnRows::R64);
        let k64 = g.attn_kernels(d).expect("the tensor cores run the bf16 attention");
        g.set_attn_rows(AttnRows::R128);
        let k128 = g.attn_kernels(d).unwrap();
        // (the backward's 128-row tiles at head dim 128 need 129 KiB: an A100's or H100's)
        let two = |i: usize| i == 0 || d < 128 || g.smem_limit() >= 132_096;
        assert!(k64.iter().all(|k| !k.ends_with("_x2")), "{k64:?}");
        assert!(k128.iter().enumerate().all(|(i, k)| k.ends_with("_x2") == two(i)), "{k128:?}");
        for plan in [DkdvPlan::PerHead, DkdvPlan::Grouped] {
            let (one, ran64) = run(&g, AttnRows::R64, plan, &b, &qkv, &dout, shape);
            let (two, ran128) = run(&g, AttnRows::R128, plan, &b, &qkv, &dout, shape);
            assert_eq!(ran64, sorted(k64.to_vec()), "D={d} {}", plan.name());
            assert_eq!(ran128, sorted(k128.to_vec()), "D={d} {}", plan.name());
            assert!(one.0.iter().chain(&one.1).chain(&one.2).all(|x| x.is_finite()), "D={d}: unwritten outputs");
            assert!(bits(&one) == bits(&two), "D={d} {}: 128-row blocks differ from 64-row blocks", plan.name());
        }
    }
    // a GPU of 99 KiB a block: the backward's two-warpgroup tiles do not fit at head dim 128
    let small = gpu().unwrap();
    small.set_dtype(Dtype::Bf16);
    small.cap_smem(99 * 1024);
    let k = small.attn_kernels(128).unwrap();
    assert_eq!(k, ["attn_fwd_mma_128_x2", "attn_bwd_dkdv_mma_128", "attn_bwd_dq_mma_128"]);
    let shape = AttnShape { num_heads: 2, num_kv_heads: 1, head_dim: 128 };
    let b = batch(&mut rng, &[70, 130, 3], 10);
    let n = b.len();
    let (qkv, dout) = (rand(&mut rng, n * 4 * 128), rand(&mut rng, n * 2 * 128));
    let (capped, ran) = run(&small, AttnRows::R128, DkdvPlan::PerHead, &b, &qkv, &dout, shape);
    assert_eq!(ran, sorted(k.to_vec()));
    assert!(bits(&capped) == bits(&run(&g, AttnRows::R64, DkdvPlan::PerHead, &b, &qkv, &dout, shape).0));
    g.set_dtype(Dtype::F32);
}
