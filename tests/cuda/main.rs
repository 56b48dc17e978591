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
mod checkpointing;
#[path = "../common/mod.rs"]
mod common;
mod entropy;
mod generate;
mod kernels;
mod nvrtc;
mod precision;
mod rehearsal;
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
fn a_full_train_step_on_the_gpu_matches_the_cpu() {
    let Some(g) = gpu() else { return };
    // (Qwen3: its query and key head norms in the forward and the backward, with norm weights
    // other than 1)
    for arch in [Arch::Qwen2, Arch::Llama, Arch::Qwen3] {
        let cfg = tiny_config(arch, false);
        let mut params = init_params(&cfg, 7, 0.5);
        if arch == Arch::Qwen3 {
            common::perturb_norms(&mut params, 9);
        }
        let model = Model::new(cfg.clone(), params).unwrap();
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
