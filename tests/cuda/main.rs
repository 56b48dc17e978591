//! CUDA backend tests (feature `cuda`).
//!
//! * The NVRTC checks (nvrtc.rs) run wherever libnvrtc loads (CI installs it with pip): every
//!   kernel file compiles for compute_80, compute_90 and compute_90a with no error and no warning,
//!   and every declared entry is in the PTX; wgmma is in the tensor-core attention's compute_90a
//!   PTX only. Without libnvrtc they print why they skip.
//! * The GPU tests compare every kernel, a full forward + backward and an AdamW step against the
//!   CPU backend on random inputs, printing the largest error of each; on a machine without a CUDA
//!   device they print "skipped: no CUDA device". `scripts/gpu-check.sh` runs them on a GPU.
#![cfg(feature = "cuda")]

mod attention;
#[path = "../common/mod.rs"]
mod common;
mod entropy;
mod generate;
mod nvrtc;
mod precision;
mod rl;
mod traffic;
mod wgmma;

use arbor::cuda::{Gpu, GpuModel};
use arbor::model::{init::init_params, Arch, Batch, Model};
use arbor::rng::Rng;
use arbor::tensor::cpu::ops::RopeTable;
use arbor::tensor::{Backend, Cpu, Dtype, GemmShape, LogitStats, LogprobGrad};
use arbor::train::adamw::{AdamW, AdamWConfig};
use common::{max_abs_diff, tiny_config};

/// Whether the tests run on the SIMT host emulator (`ARBOR_SIMT=1`, set by scripts/test.sh with
/// the emulator on the loader path): the few long jobs then run fewer rollouts.
fn emulated() -> bool {
    std::env::var("ARBOR_SIMT").is_ok_and(|v| v == "1")
}

/// Whether the run demands a GPU (`ARBOR_REQUIRE_GPU=1`, set by scripts/gpu-check.sh): then a
/// missing device or NVRTC fails the tests instead of skipping them.
fn gpu_required() -> bool {
    std::env::var("ARBOR_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The GPU, or `None` after printing why the test is skipped (a failure under [`gpu_required`]).
fn gpu() -> Option<std::sync::Arc<Gpu>> {
    if let Some(why) = arbor::cuda::unavailable() {
        assert!(!gpu_required(), "ARBOR_REQUIRE_GPU=1 but no CUDA device is usable: {why}");
        println!("skipped: no CUDA device ({why})");
        return None;
    }
    match Gpu::new(0) {
        Ok(g) => Some(std::sync::Arc::new(g)),
        Err(e) => panic!("a CUDA device is present but unusable: {e}"),
    }
}

/// `samples` requests per prompt, grouped by sample index: (prompt i, sample k) for k, then i.
fn request_groups(prompts: &[Vec<u32>], samples: u32) -> Vec<arbor::rollout::Request> {
    (0..samples)
        .flat_map(|k| {
            prompts.iter().enumerate().map(move |(i, p)| arbor::rollout::Request {
                prompt_id: i as u64,
                sample_index: k,
                prompt: p.clone(),
            })
        })
        .collect()
}

fn rand(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn down(g: &Gpu, b: &<Gpu as Backend>::Buf, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    g.download(b, &mut out).unwrap();
    out
}

fn act_down(g: &Gpu, b: &<Gpu as Backend>::Act, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    g.act_download(b, &mut out).unwrap();
    out
}

/// `got` (bf16 values written by an `_o16` kernel) is `want` (the f32 CPU result) rounded to
/// bf16: each value equals the rounding of `want` or, where the device's f32 value lay on the
/// other side of a rounding boundary, a neighbouring bf16 value (one unit in the last place); a
/// value near 0 from a cancelling sum (f32 kernels agree with the CPU within 1e-5 of the scale,
/// not within a bf16 unit of a tiny value) may be further off by at most that.
fn within_bf16_rounding(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let (mut exact, mut worst) = (0usize, 0u32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (gb, wb) = (half::bf16::from_f32(g), half::bf16::from_f32(w));
        assert_eq!(gb.to_f32(), g, "{what}[{i}] = {g} is not a bf16 value");
        let ulps = (gb.to_bits() as i32 - wb.to_bits() as i32).unsigned_abs();
        let cancelled = (g - w).abs() <= 1e-5 * scale;
        assert!(g.signum() == w.signum() || w.abs() < 1e-30 || cancelled, "{what}[{i}]: {g} against {w}");
        assert!(ulps <= 1 || cancelled, "{what}[{i}]: {g} is {ulps} bf16 ulps from the rounded CPU value {w}");
        worst = worst.max(ulps);
        exact += (ulps == 0) as usize;
    }
    println!("{what:<28} {exact}/{} equal to the rounded CPU value, worst {worst} ulp", got.len());
    assert!(exact * 100 >= got.len() * 99, "{what}: only {exact} of {} values equal the rounded CPU value", got.len());
}

/// A kernel writing an activation (`run` fills the buffer it is given), under f32 and then bf16
/// products: the f32 output within 1e-5 of the CPU's `want`; the bf16 output (the `_o16` entry)
/// the f32 kernel's output rounded, bit for bit, and within rounding of the CPU's.
fn act_kernel_matches(g: &Gpu, what: &str, want: &[f32], mut run: impl FnMut(&mut <Gpu as Backend>::Act)) {
    let mut f32_out = Vec::new();
    for dtype in [Dtype::F32, Dtype::Bf16] {
        g.set_dtype(dtype);
        let mut out = g.act_empty().unwrap();
        g.act_grow(&mut out, want.len()).unwrap();
        run(&mut out);
        let got = act_down(g, &out, want.len());
        if dtype == Dtype::Bf16 {
            within_bf16_rounding(&format!("{what} bf16"), &got, want);
            rounds_the_f32_kernel(&format!("{what} bf16"), &got, &f32_out);
        } else {
            close(what, &got, want, 1e-5);
            f32_out = got;
        }
    }
    g.set_dtype(Dtype::F32);
}

/// `got` (an `_o16` kernel's bf16 output) is, bit for bit, the f32 kernel's output `f32_out`
/// rounded to nearest even: the bits a separate rounding pass would give.
fn rounds_the_f32_kernel(what: &str, got: &[f32], f32_out: &[f32]) {
    assert_eq!(got.len(), f32_out.len(), "{what}: lengths");
    for (i, (&g, &f)) in got.iter().zip(f32_out).enumerate() {
        let want = half::bf16::from_f32(f).to_f32();
        assert_eq!(g.to_bits(), want.to_bits(), "{what}[{i}]: {g} is not the f32 kernel's {f} rounded");
    }
}

/// Compare and print; `tol` is relative to max(1, max |want|).
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let err = max_abs_diff(got, want);
    println!("{what:<28} max |gpu - cpu| = {err:.3e} (scale {scale:.2})");
    assert!(err <= tol * scale, "{what}: max error {err} > {tol} × {scale}");
}

/// A packed batch of sequences of the given lengths with random tokens < v.
fn batch(rng: &mut Rng, lens: &[usize], v: u32) -> Batch {
    let mut b = Batch::new();
    for &l in lens {
        let t: Vec<u32> = (0..l).map(|_| (rng.next_u64() % v as u64) as u32).collect();
        let y: Vec<u32> = (0..l).map(|_| (rng.next_u64() % v as u64) as u32).collect();
        b.push(&t, &y).unwrap();
    }
    b
}

#[test]
fn elementwise_kernels_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(1);
    let (n, c, inter) = (77, 96, 160);
    let x = rand(&mut rng, n * c);
    let w = rand(&mut rng, c);
    let dy = rand(&mut rng, n * c);
    let (xg, wg, dyg) = (g.upload(&x).unwrap(), g.upload(&w).unwrap(), g.upload(&dy).unwrap());

    // RMSNorm forward and backward (dx and dw are added into)
    let (mut y, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
    Cpu.rmsnorm_forward(&mut y, &mut rstd, &x, &w, 1e-6).unwrap();
    // the normed rows are an activation: f32, and bf16 under bf16 products (written rounded)
    let mut rg = g.upload(&vec![0.0; n]).unwrap();
    act_kernel_matches(&g, "rmsnorm fwd", &y, |ya| {
        let (xr, wr) = (Gpu::r(&xg, 0..n * c), Gpu::r(&wg, 0..c));
        g.rmsnorm_forward(Gpu::act_m(ya, 0..n * c), Gpu::m(&mut rg, 0..n), xr, wr, 1e-6).unwrap()
    });
    close("rmsnorm rstd", &down(&g, &rg, n), &rstd, 1e-5);
    let (dx0, dw0) = (rand(&mut rng, n * c), rand(&mut rng, c));
    let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
    Cpu.rmsnorm_backward(&mut dx, &mut dw, &dy, &x, &w, &rstd).unwrap();
    let (mut dxg, mut dwg) = (g.upload(&dx0).unwrap(), g.upload(&dw0).unwrap());
    g.rmsnorm_backward(
        Gpu::m(&mut dxg, 0..n * c),
        Gpu::m(&mut dwg, 0..c),
        Gpu::r(&dyg, 0..n * c),
        Gpu::r(&xg, 0..n * c),
        Gpu::r(&wg, 0..c),
        Gpu::r(&rg, 0..n),
    )
    .unwrap();
    close("rmsnorm bwd dx", &down(&g, &dxg, n * c), &dx, 1e-5);
    close("rmsnorm bwd dw", &down(&g, &dwg, c), &dw, 1e-4);

    // bias add and bias gradient
    let mut yb = y.clone();
    Cpu.add_bias(&mut yb, &w).unwrap();
    let mut yg = g.upload(&y).unwrap();
    g.add_bias(Gpu::m(&mut yg, 0..n * c), Gpu::r(&wg, 0..c)).unwrap();
    close("add_bias", &down(&g, &yg, n * c), &yb, 1e-6);
    let mut db = dw0.clone();
    Cpu.bias_backward(&mut db, &dy).unwrap();
    let mut dbg = g.upload(&dw0).unwrap();
    g.bias_backward(Gpu::m(&mut dbg, 0..c), Gpu::r(&dyg, 0..n * c)).unwrap();
    close("bias_backward", &down(&g, &dbg, c), &db, 1e-5);

    // SwiGLU: 16-byte accesses (inter % 8 == 0, aligned views), one value at a time (inter 37,
    // or views that start one value in), and a row's short last group of 8 (37)
    for (inter, at) in [(inter, 0), (37, 0), (inter, 1)] {
        swiglu_matches_the_cpu(&g, &mut rng, n, inter, at);
    }
    g.set_dtype(Dtype::F32);
}

/// The SwiGLU kernels against the CPU on views of `n` rows that start `at` values into their
/// buffers (f32, then with bf16 gate|up as bf16 products write it).
fn swiglu_matches_the_cpu(g: &Gpu, rng: &mut Rng, n: usize, inter: usize, at: usize) {
    let gu = rand(rng, n * 2 * inter);
    let dact = rand(rng, n * inter);
    let pad = |x: &[f32]| [vec![0.5; at], x.to_vec()].concat();
    let (gug, dactg) = (g.upload(&pad(&gu)).unwrap(), g.upload(&pad(&dact)).unwrap());
    let (gur, dr) = (at..at + n * 2 * inter, at..at + n * inter);
    let mut act = vec![0.0; n * inter];
    Cpu.swiglu_forward(&mut act, &gu, inter).unwrap();
    act_kernel_matches(g, &format!("swiglu fwd, inter {inter}, at {at}"), &act, |acta| {
        g.swiglu_forward(Gpu::act_m(acta, 0..n * inter), Gpu::as_act(Gpu::r(&gug, gur.clone())), inter).unwrap()
    });
    // the gate|up gradient, which only the projection's backward products read, is an activation
    let mut dgu = vec![0.0; n * 2 * inter];
    Cpu.swiglu_backward(&mut dgu, &dact, &gu, inter).unwrap();
    act_kernel_matches(g, &format!("swiglu bwd, inter {inter}, at {at}"), &dgu, |dgua| {
        let (d, gr) = (Gpu::r(&dactg, dr.clone()), Gpu::as_act(Gpu::r(&gug, gur.clone())));
        g.swiglu_backward(Gpu::act_m(dgua, 0..n * 2 * inter), d, gr, inter).unwrap()
    });
    // with bf16 products gate|up is itself bf16 (the projection writes it so): the kernels that
    // read it so give the CPU's results on the rounded gate|up, rounded
    g.set_dtype(Dtype::Bf16);
    let gu16 = precision::round_bf16(&gu);
    let gua = g.act_upload(&pad(&gu), true).unwrap();
    let (mut act16, mut dgu16) = (vec![0.0; n * inter], vec![0.0; n * 2 * inter]);
    Cpu.swiglu_forward(&mut act16, &gu16, inter).unwrap();
    Cpu.swiglu_backward(&mut dgu16, &dact, &gu16, inter).unwrap();
    let (mut out, mut dout) = (g.act_empty().unwrap(), g.act_empty().unwrap());
    g.act_grow(&mut out, n * inter).unwrap();
    g.act_grow(&mut dout, n * 2 * inter).unwrap();
    g.swiglu_forward(Gpu::act_m(&mut out, 0..n * inter), Gpu::act_r(&gua, gur.clone()), inter).unwrap();
    let (d, gr) = (Gpu::r(&dactg, dr.clone()), Gpu::act_r(&gua, gur.clone()));
    g.swiglu_backward(Gpu::act_m(&mut dout, 0..n * 2 * inter), d, gr, inter).unwrap();
    within_bf16_rounding(
        &format!("swiglu fwd, bf16 gate|up, inter {inter}, at {at}"),
        &act_down(g, &out, n * inter),
        &act16,
    );
    within_bf16_rounding(
        &format!("swiglu bwd, bf16 gate|up, inter {inter}, at {at}"),
        &act_down(g, &dout, n * 2 * inter),
        &dgu16,
    );
    g.set_dtype(Dtype::F32);
}

#[test]
fn gemm_embedding_rope_and_logprob_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(2);
    let (m, n, k) = (67, 45, 33);
    for (kind, a_len, b_len) in [("nt", m * k, n * k), ("nn", m * k, k * n), ("tn", k * m, k * n)] {
        for acc in [false, true] {
            let (a, b, c0) = (rand(&mut rng, a_len), rand(&mut rng, b_len), rand(&mut rng, m * n));
            let mut want = c0.clone();
            let (ag, bg, mut cg) = (g.upload(&a).unwrap(), g.upload(&b).unwrap(), g.upload(&c0).unwrap());
            let (av, bv, cv) = (Gpu::r(&ag, 0..a_len), Gpu::r(&bg, 0..b_len), Gpu::m(&mut cg, 0..m * n));
            match kind {
                "nt" => {
                    Cpu.matmul_nt(&mut want, &a, &b, GemmShape::new(m, n, k), acc).unwrap();
                    g.matmul_nt(cv, av, bv, GemmShape::new(m, n, k), acc).unwrap()
                }
                "nn" => {
                    Cpu.matmul_nn(&mut want, &a, &b, GemmShape::new(m, n, k), acc).unwrap();
                    g.matmul_nn(cv, av, bv, GemmShape::new(m, n, k), acc).unwrap()
                }
                _ => {
                    Cpu.matmul_tn(&mut want, &a, &b, GemmShape::new(m, n, k), acc).unwrap();
                    g.matmul_tn(cv, av, bv, GemmShape::new(m, n, k), acc).unwrap()
                }
            }
            close(&format!("sgemm {kind} acc={acc}"), &down(&g, &cg, m * n), &want, 1e-4);
        }
    }

    let (v, c) = (50u32, 24usize);
    let b = batch(&mut rng, &[5, 17, 1, 9], v);
    let nt = b.len();
    let dev = g.batch(b.packed()).unwrap();
    let table = rand(&mut rng, v as usize * c);
    let tg = g.upload(&table).unwrap();
    let mut out = vec![0.0; nt * c];
    Cpu.embedding_forward(&mut out, &table, &b.packed(), c).unwrap();
    let mut og = g.upload(&vec![0.0; nt * c]).unwrap();
    g.embedding_forward(Gpu::m(&mut og, 0..nt * c), Gpu::r(&tg, 0..table.len()), &dev, c).unwrap();
    close("embedding fwd", &down(&g, &og, nt * c), &out, 0.0);
    let dout = rand(&mut rng, nt * c);
    let dg = g.upload(&dout).unwrap();
    let mut dt = table.clone();
    Cpu.embedding_backward(&mut dt, &dout, &b.packed(), c).unwrap();
    let mut dtg = g.upload(&table).unwrap();
    g.embedding_backward(Gpu::m(&mut dtg, 0..table.len()), Gpu::r(&dg, 0..nt * c), &dev, c).unwrap();
    close("embedding bwd", &down(&g, &dtg, table.len()), &dt, 1e-5);

    // RoPE forward and inverse on packed q|k|v rows (H 4, KV 2, D 8)
    let (h, kv, d) = (4, 2, 8);
    let stride = (h + 2 * kv) * d;
    let rope = RopeTable::new(d, 10000.0, 64);
    let rg = g.rope(&rope).unwrap();
    let x = rand(&mut rng, nt * stride);
    for inverse in [false, true] {
        let mut want = x.clone();
        Cpu.rope_apply(&mut want, stride, h + kv, &b.packed(), &rope, inverse).unwrap();
        let mut xg = g.upload(&x).unwrap();
        g.rope_apply(Gpu::m(&mut xg, 0..nt * stride), stride, h + kv, &dev, &rg, inverse).unwrap();
        close(&format!("rope inverse={inverse}"), &down(&g, &xg, nt * stride), &want, 1e-5);
    }

    // log-prob statistics and their backward (with an entropy term), rows 3.. of the batch
    let vv = v as usize;
    let rows = 3..nt;
    let r = rows.len();
    let z = rand(&mut rng, r * vv);
    // the forward with -inf logits (they add nothing): a whole group of 8 and one among finite
    // logits in a row read 8 at a time (row 0: 16-byte aligned), one in a row read one at a time
    // (row 1, 200 bytes in), none at a target; and a NaN logit in a row read 8 at a time (row 2,
    // 400 bytes in) and in one read one at a time (row 3), each beside a -inf: NaN statistics,
    // as on the CPU
    let mut zf = z.clone();
    let targets = &b.packed().targets[rows.clone()];
    for j in (0..8).chain([9, vv + 3, 2 * vv + 10, 2 * vv + 11, 3 * vv + 5, 3 * vv + 6]) {
        if targets[j / vv] as usize != j % vv {
            zf[j] = f32::NEG_INFINITY;
        }
    }
    zf[2 * vv + 10] = f32::NAN;
    zf[3 * vv + 5] = f32::NAN;
    let zg = g.upload(&zf).unwrap();
    let (mut lse, mut lp, mut en) = (vec![0.0; r], vec![0.0; r], vec![0.0; r]);
    let stats = LogitStats { lse: &mut lse[..], logp: &mut lp[..], entropy: &mut en[..] };
    Cpu.logprob_forward(&zf, vv, &b.packed(), rows.clone(), stats).unwrap();
    let mut bufs: Vec<_> = (0..3).map(|_| g.upload(&vec![0.0; r]).unwrap()).collect();
    let (l3, rest) = bufs.split_at_mut(1);
    let (p3, e3) = rest.split_at_mut(1);
    g.logprob_forward(
        Gpu::r(&zg, 0..r * vv),
        vv,
        &dev,
        rows.clone(),
        LogitStats { lse: Gpu::m(&mut l3[0], 0..r), logp: Gpu::m(&mut p3[0], 0..r), entropy: Gpu::m(&mut e3[0], 0..r) },
    )
    .unwrap();
    assert!(lse[2].is_nan() && lse[3].is_nan() && lse[4].is_finite(), "the CPU's lse: {:?}", &lse[..5]);
    close("logprob lse", &down(&g, &bufs[0], r), &lse, 1e-5);
    close("logprob logp", &down(&g, &bufs[1], r), &lp, 1e-5);
    close("logprob entropy", &down(&g, &bufs[2], r), &en, 1e-5);
    // the backward on the finite logits, with their statistics
    let stats = LogitStats { lse: &mut lse[..], logp: &mut lp[..], entropy: &mut en[..] };
    Cpu.logprob_forward(&z, vv, &b.packed(), rows.clone(), stats).unwrap();
    let (gr, de) = (rand(&mut rng, r), rand(&mut rng, r));
    let mut dz = z.clone();
    let grad = LogprobGrad { lse: &lse[..], g: &gr[..], ent: Some((&de[..], &en[..])) };
    Cpu.logprob_backward(&mut dz, None, vv, &b.packed(), rows.clone(), grad).unwrap();
    let (ggr, gde, glse, gen) =
        (g.upload(&gr).unwrap(), g.upload(&de).unwrap(), g.upload(&lse).unwrap(), g.upload(&en).unwrap());
    let mut dzg = g.upload(&z).unwrap();
    let ent = || Some((Gpu::r(&gde, 0..r), Gpu::r(&gen, 0..r)));
    let grad = || LogprobGrad { lse: Gpu::r(&glse, 0..r), g: Gpu::r(&ggr, 0..r), ent: ent() };
    g.logprob_backward(Gpu::m(&mut dzg, 0..r * vv), None, vv, &dev, rows.clone(), grad()).unwrap();
    close("logprob bwd", &down(&g, &dzg, r * vv), &dz, 1e-5);
    // into an activation buffer, the logits left as they are (bf16: logprob_bwd_f32_o16)
    let mut zg = g.upload(&z).unwrap();
    act_kernel_matches(&g, "logprob bwd into an activation", &dz, |out| {
        let dz = Some(Gpu::act_m(out, 0..r * vv));
        g.logprob_backward(Gpu::m(&mut zg, 0..r * vv), dz, vv, &dev, rows.clone(), grad()).unwrap();
    });
    assert_eq!(down(&g, &zg, r * vv), z, "the logits stay as they were");
}

#[test]
fn a_full_train_step_on_the_gpu_matches_the_cpu() {
    let Some(g) = gpu() else { return };
    for arch in [Arch::Qwen2, Arch::Llama] {
        let cfg = tiny_config(arch, false);
        let model = Model::new(cfg.clone(), init_params(&cfg, 7, 0.5)).unwrap();
        let mut rng = Rng::new(4);
        let b = batch(&mut rng, &[9, 20, 4], cfg.vocab_size as u32);
        let n = b.len();
        let dlogp: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 0.0 } else { -1.0 / n as f32 }).collect();
        let dent: Vec<f32> = vec![-0.01; n];

        let mut ws = arbor::model::Workspace::new(&cfg, n);
        model.forward(&b, &mut ws).unwrap();
        let mut grads = vec![0.0; model.params.data.len()];
        model.backward_with_entropy(&b, &dlogp, Some(&dent), &mut ws, &mut grads).unwrap();

        let mut gm = GpuModel::new(g.clone(), &model).unwrap();
        let (lp, en) = gm.forward(&model, &b).unwrap();
        close(&format!("{arch:?} forward logp"), &lp, &ws.logprobs[..n], 1e-4);
        close(&format!("{arch:?} forward entropy"), &en, &ws.entropy[..n], 1e-4);
        gm.backward(&model, &b, &dlogp, Some(&dent)).unwrap();
        close(&format!("{arch:?} backward grads"), &gm.grads().unwrap(), &grads, 1e-4);

        // one AdamW step with clipping, from identical state
        // (eps 1e-6: a gradient element within f32 noise of 0 steps by lr·|g|/eps, not by ±lr)
        let ocfg = AdamWConfig { eps: 1e-6, ..AdamWConfig::default() };
        let mut cpu_opt = AdamW::for_layout(ocfg, &model.params.layout);
        let mut gpu_opt = AdamW::for_layout(ocfg, &model.params.layout);
        let mut p = model.params.data.clone();
        let norm = arbor::train::adamw::clip_and_step(&mut cpu_opt, &mut p, &grads, 1e-2, 0.5);
        let gnorm = gm.adamw_step(&mut gpu_opt, 1e-2, 0.5).unwrap();
        println!("{arch:?} grad norm cpu {norm:.6} gpu {gnorm:.6}");
        assert!((norm - gnorm).abs() <= 1e-4 * norm.max(1.0));
        close(&format!("{arch:?} params after AdamW"), &gm.params().unwrap(), &p, 1e-5);

        // a second step, unclipped, from the device's own state: the device update is the CPU's
        // arithmetic bit for bit (no fused multiply-add; the CPU's step factors)
        let (grads_dev, mut p2) = (gm.grads().unwrap(), gm.params().unwrap());
        let (m, v) = gm.moments().unwrap();
        let mut cpu2 = gpu_opt.clone();
        (cpu2.m, cpu2.v) = (m, v);
        cpu2.step(&mut p2, &grads_dev, 1e-2);
        gm.adamw_step(&mut gpu_opt, 1e-2, 0.0).unwrap();
        let (m_dev, v_dev) = gm.moments().unwrap();
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
        assert_eq!(gpu_opt.t, cpu2.t);
        assert!(bits(&gm.params().unwrap()) == bits(&p2), "{arch:?}: AdamW weights differ from the CPU's in bits");
        assert!(bits(&m_dev) == bits(&cpu2.m), "{arch:?}: AdamW first moments differ from the CPU's in bits");
        assert!(bits(&v_dev) == bits(&cpu2.v), "{arch:?}: AdamW second moments differ from the CPU's in bits");
    }
}

/// `[train] device = "cuda"`: 3 supervised steps on the GPU end with the CPU run's weights; on a
/// machine without a GPU the run stops at once with an error saying why (never a crash).
#[test]
fn supervised_training_on_the_gpu_matches_the_cpu() {
    use arbor::config::{Device, RunConfig, ADDITION_CONFIG};
    use arbor::train::job;
    let text = ADDITION_CONFIG
        .replace("hidden_size = 128", "hidden_size = 64")
        .replace("intermediate_size = 384", "intermediate_size = 128")
        .replace("num_layers = 4", "num_layers = 2")
        .replace("steps = 400", "steps = 3")
        .replace("batch_size = 64", "batch_size = 8")
        .replace("eval_problems = 256", "eval_problems = 8");
    let parsed = RunConfig::parse(&(text.clone() + "\n"), std::path::Path::new("t.toml")).unwrap();
    assert_eq!(parsed.train.device, Device::Cpu, "the default device is the CPU");
    let with_cuda = text.replace("[train]\n", "[train]\ndevice = \"cuda\"\n");
    let mut cfg = RunConfig::parse(&with_cuda, std::path::Path::new("t.toml")).unwrap();
    assert_eq!(cfg.train.device, Device::Cuda);
    let dir = tempfile::tempdir().unwrap();
    cfg.run.out_dir = dir.path().join("gpu");
    let gpu_run = job::run(&cfg, None, &mut Vec::new());
    if let Some(why) = arbor::cuda::unavailable() {
        let Err(err) = gpu_run else { panic!("device = \"cuda\" without a GPU must fail") };
        let err = err.to_string();
        assert!(err.contains("CUDA backend"), "{err}");
        println!("skipped: no CUDA device ({why}); the run failed cleanly: {err}");
        return;
    }
    let gpu_run = gpu_run.unwrap();
    let mut cpu_cfg = cfg.clone();
    cpu_cfg.train.device = Device::Cpu;
    cpu_cfg.run.out_dir = dir.path().join("cpu");
    let cpu_run = job::run(&cpu_cfg, None, &mut Vec::new()).unwrap();
    println!("losses cpu {:?} gpu {:?}", cpu_run.losses, gpu_run.losses);
    close("SFT weights after 3 steps", &gpu_run.final_params, &cpu_run.final_params, 1e-4);
}

/// cuBLAS GemmEx with bf16 operands and f32 accumulation, f32 or bf16 output, for the three
/// row-major products, against the CPU's f32 product of the same bf16-rounded operands.
#[test]
fn bf16_gemms_with_f32_accumulation_match_the_cpu() {
    use arbor::cuda::gemm::{GemmKind, GemmOut, OutType};
    use cudarc::driver::DevicePtr;
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(8);
    let (m, n, k) = (70, 52, 96);
    let to_bf16 = |x: &[f32]| -> (Vec<u16>, Vec<f32>) {
        let b: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
        (b.iter().map(|v| v.to_bits()).collect(), b.iter().map(|v| v.to_f32()).collect())
    };
    for (kind, a_len, b_len) in
        [(GemmKind::Nt, m * k, n * k), (GemmKind::Nn, m * k, k * n), (GemmKind::Tn, k * m, k * n)]
    {
        let (a_bits, a_f) = to_bf16(&rand(&mut rng, a_len));
        let (b_bits, b_f) = to_bf16(&rand(&mut rng, b_len));
        let c0 = rand(&mut rng, m * n);
        for acc in [false, true] {
            let mut want = c0.clone();
            match kind {
                GemmKind::Nt => Cpu.matmul_nt(&mut want, &a_f, &b_f, GemmShape::new(m, n, k), acc).unwrap(),
                GemmKind::Nn => Cpu.matmul_nn(&mut want, &a_f, &b_f, GemmShape::new(m, n, k), acc).unwrap(),
                GemmKind::Tn => Cpu.matmul_tn(&mut want, &a_f, &b_f, GemmShape::new(m, n, k), acc).unwrap(),
            }
            let ag = g.stream().clone_htod(&a_bits).unwrap();
            let bg = g.stream().clone_htod(&b_bits).unwrap();
            let cg = g.upload(&c0).unwrap();
            let cp = cg.device_ptr(g.stream()).0;
            g.gemm_bf16(
                GemmOut { ptr: cp, ty: OutType::F32, len: m * n },
                &ag.as_view(),
                &bg.as_view(),
                kind,
                GemmShape::new(m, n, k),
                acc,
            )
            .unwrap();
            close(&format!("bf16 GEMM {kind:?} acc={acc} → f32"), &down(&g, &cg, m * n), &want, 1e-4);
            if !acc {
                let cb = g.stream().alloc_zeros::<u16>(m * n).unwrap();
                let cbp = cb.device_ptr(g.stream()).0;
                g.gemm_bf16(
                    GemmOut { ptr: cbp, ty: OutType::Bf16, len: m * n },
                    &ag.as_view(),
                    &bg.as_view(),
                    kind,
                    GemmShape::new(m, n, k),
                    false,
                )
                .unwrap();
                let mut bits = vec![0u16; m * n];
                g.stream().memcpy_dtoh(&cb, &mut bits[..]).unwrap();
                g.stream().synchronize().unwrap();
                let got: Vec<f32> = bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect();
                close(&format!("bf16 GEMM {kind:?} → bf16"), &got, &want, 1e-2);
            }
        }
    }
    // a product into an activation (`matmul_nt_to_act`, the gate|up projection): with bf16
    // products a bf16 result, the CPU product of the rounded operands rounded; else f32, exact
    let (x, w) = (rand(&mut rng, m * k), rand(&mut rng, n * k));
    let mut want = vec![0.0; m * n];
    Cpu.matmul_nt(&mut want, &precision::round_bf16(&x), &precision::round_bf16(&w), GemmShape::new(m, n, k), false)
        .unwrap();
    let wg = g.upload(&w).unwrap();
    for (dtype, x_bf16) in [(Dtype::Bf16, false), (Dtype::Bf16, true), (Dtype::F32, false)] {
        g.set_dtype(dtype);
        let xa = g.act_upload(&x, x_bf16).unwrap();
        let mut c = g.act_empty().unwrap();
        g.act_grow(&mut c, m * n).unwrap();
        let (xr, wr) = (Gpu::act_r(&xa, 0..m * k), Gpu::r(&wg, 0..n * k));
        g.matmul_nt_to_act(Gpu::act_m(&mut c, 0..m * n), xr, wr, GemmShape::new(m, n, k)).unwrap();
        let got = act_down(&g, &c, m * n);
        if dtype == Dtype::Bf16 {
            within_bf16_rounding(&format!("product to a bf16 activation (x bf16: {x_bf16})"), &got, &want);
        } else {
            let mut exact = vec![0.0; m * n];
            Cpu.matmul_nt(&mut exact, &x, &w, GemmShape::new(m, n, k), false).unwrap();
            close("product to an f32 activation", &got, &exact, 1e-5);
        }
    }
    g.set_dtype(Dtype::F32);
}

/// `--profile`'s timing (`cuda::profile`): while on, each product and kernel is timed under its
/// name (three products of one shape: three calls of one row), the sum of their GPU times is
/// within the span, and a report starts a fresh record; off, nothing is timed.
#[test]
fn profiling_times_each_product_and_kernel_by_name() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(8);
    let (m, n, k) = (256, 192, 128);
    let (a, b) = (g.upload(&rand(&mut rng, m * k)).unwrap(), g.upload(&rand(&mut rng, n * k)).unwrap());
    let mut c = g.upload(&vec![0.0; m * n]).unwrap();
    let product = |c: &mut _| {
        g.matmul_nt(Gpu::m(c, 0..m * n), Gpu::r(&a, 0..m * k), Gpu::r(&b, 0..n * k), GemmShape::new(m, n, k), false)
            .unwrap()
    };
    product(&mut c);
    g.set_profiling(true);
    for _ in 0..3 {
        product(&mut c);
    }
    let (w, mut rstd) = (g.upload(&vec![1.0; n]).unwrap(), g.upload(&vec![0.0; m]).unwrap());
    let mut y = g.act_empty().unwrap();
    g.act_grow(&mut y, m * n).unwrap();
    g.rmsnorm_forward(
        Gpu::act_m(&mut y, 0..m * n),
        Gpu::m(&mut rstd, 0..m),
        Gpu::r(&c, 0..m * n),
        Gpu::r(&w, 0..n),
        1e-6,
    )
    .unwrap();
    let report = g.profile_report().unwrap();
    println!("{report:?}");
    let row = |name: &str| report.rows.iter().find(|r| r.name.contains(name)).cloned();
    let gemm = row(&format!("n={n} k={k}")).expect("the products are timed");
    assert_eq!(gemm.calls, 3);
    assert!(gemm.ms > 0.0);
    assert!(row("rmsnorm").is_some_and(|r| r.calls == 1), "{report:?}");
    assert!(report.busy_ms <= report.span_ms * 1.01 + 1e-3, "{report:?}");
    assert!(g.profile_report().unwrap().rows.is_empty(), "a report starts a fresh record");
    g.set_profiling(false);
    product(&mut c);
    assert!(g.profile_report().unwrap().rows.is_empty(), "nothing is timed while off");
}
