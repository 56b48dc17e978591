//! `arbor bench gpu --kind ceilings`: the device's two ceilings, measured in place before any
//! model figure is read against them: device-to-device copy bandwidth (bytes read plus written)
//! and the matrix-product rate of each `[train] dtype` at a training shape of the model (the
//! 0.5B shape's gate/up projection by default: `--batch` × `--seq` rows, 4864 × 896), through the
//! same `Gpu::gemm` the model uses (bf16: with its two operand roundings).

/// What the ceilings bench takes from `arbor bench gpu`'s flags.
pub struct CeilingArgs {
    /// Rows of the product (`--batch` × `--seq`).
    pub rows: usize,
    pub steps: usize,
    pub warmup: usize,
    pub seed: u64,
}

#[cfg(feature = "cuda")]
pub fn ceilings(gpu: &std::sync::Arc<crate::cuda::Gpu>, args: &CeilingArgs) -> anyhow::Result<()> {
    use crate::cli::bench_common::median;
    use crate::config::Dtype;
    use crate::cuda::Gpu;
    use crate::rng::Rng;
    use crate::tensor::{Backend, GemmShape};
    use std::time::Instant;
    let mut rng = Rng::new(args.seed);
    let mut rand = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
    let reps = args.warmup + args.steps;
    let timed = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for i in 0..reps {
            let t = Instant::now();
            f()?;
            gpu.synchronize()?;
            if i >= args.warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        Ok(median(times))
    };

    // 256 MiB of random data: several times the L2, never zeros
    let n = 64 << 20;
    let src = gpu.upload(&rand(n))?;
    let mut dst = gpu.upload(&vec![0.0; n])?;
    let copy_s = timed(&mut || Ok(gpu.copy(Gpu::m(&mut dst, 0..n), Gpu::r(&src, 0..n))?))?;
    let copy_gbs = 2.0 * (n * 4) as f64 / copy_s / 1e9;
    drop((src, dst));

    let (m, nn, k) = (args.rows, 4864, 896);
    let (a, b) = (gpu.upload(&rand(m * k))?, gpu.upload(&rand(nn * k))?);
    let mut c = gpu.upload(&vec![0.0; m * nn])?;
    let before = gpu.dtype();
    let mut rates = serde_json::Map::new();
    for dtype in [Dtype::F32, Dtype::Tf32, Dtype::Bf16] {
        gpu.set_dtype(dtype);
        let shape = GemmShape::new(m, nn, k);
        let s = timed(&mut || {
            Ok(gpu.matmul_nt(Gpu::m(&mut c, 0..m * nn), Gpu::r(&a, 0..m * k), Gpu::r(&b, 0..nn * k), shape, false)?)
        })?;
        rates.insert(dtype.name().into(), serde_json::json!(2.0 * (m * nn * k) as f64 / s / 1e12));
    }
    gpu.set_dtype(before);
    let line = serde_json::json!({
        "impl": "arbor-cuda",
        "kind": "ceilings",
        "device": gpu.describe(),
        "copy_gb_per_s": copy_gbs,
        "gemm_shape": [m, nn, k],
        "gemm_tflops": rates,
    });
    println!("{line}");
    Ok(())
}
