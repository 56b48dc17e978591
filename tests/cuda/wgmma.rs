//! The bf16 attention on Hopper's warpgroup products (`AttnMma::Wgmma`: cuda/wgmma.cuh `WgmmaOps`,
//! the same forward and backward kernels as on mma.sync). A module of its own, run last and, by
//! scripts/gpu-check.sh, in a process of its own: a wgmma kernel a GPU rejects leaves the CUDA
//! context unusable, and must not take the other tests down with it.

use super::attention::gpu_attention;
use super::precision::round_bf16;
use super::{batch, close, gpu, rand};
use arbor::attention::{AttnSaved, AttnShape};
use arbor::config::Dtype;
use arbor::cuda::{AttnMma, AttnRows, DkdvPlan};
use arbor::rng::Rng;
use arbor::tensor::{Backend, Cpu};

/// On a Hopper GPU (and the emulator) the wgmma attention equals the CPU attention of the rounded
/// inputs within the mma.sync kernels' tolerances (forward, and backward with both dK/dV plans),
/// and the mma.sync kernels within f32 rounding, over packed sequences spanning several tiles,
/// GQA, head dims 16 and 30 (padded to 64), 64 and 128; every output written; blocks of 64 rows
/// give the bits of the default 128. Elsewhere asking
/// for it is refused.
#[test]
fn the_wgmma_attention_matches_the_cpu_and_the_mma_attention() {
    let Some(g) = gpu() else { return };
    if !g.has_wgmma() {
        assert!(g.set_attn_mma(AttnMma::Wgmma).is_err(), "wgmma accepted on {}", g.describe());
        println!("skipped: {} has no wgmma (Hopper only)", g.describe());
        return;
    }
    g.set_dtype(Dtype::Bf16);
    let mut rng = Rng::new(29);
    for (h, kv, d) in [(4, 2, 16), (2, 1, 30), (8, 2, 64), (2, 1, 128)] {
        // (every Hopper GPU gives the tiles their shared memory: otherwise the f32 kernels would run)
        assert!(g.attn_on_tensor_cores(d), "D={d}: the tensor-core tiles do not fit {}", g.describe());
        let shape = AttnShape { num_heads: h, num_kv_heads: kv, head_dim: d };
        let b = batch(&mut rng, &[1, 70, 130, 3, 64], 10);
        let n = b.len();
        let stride = (h + 2 * kv) * d;
        let qkv = rand(&mut rng, n * stride);
        let dout = rand(&mut rng, n * h * d);
        let rq = round_bf16(&qkv);
        let (mut out, mut lse) = (vec![0.0; n * h * d], vec![0.0; n * h]);
        let mut scratch = vec![0.0; Cpu.attn_scratch_len(shape, n)];
        Cpu.attention_forward(&mut out, &mut lse, &mut scratch, &rq, &b.packed(), shape).unwrap();
        let mut want = vec![0.0; n * stride];
        let saved = AttnSaved { qkv: &rq[..], out: &out[..], lse: &lse[..] };
        Cpu.attention_backward(&mut want, &mut scratch, &round_bf16(&dout), saved, &b.packed(), shape).unwrap();

        let (mma, mma_lse, mma_d) = gpu_attention(&g, &b, &qkv, &dout, shape);
        g.set_attn_mma(AttnMma::Wgmma).unwrap();
        let (wg, wg_lse, wg_d) = gpu_attention(&g, &b, &qkv, &dout, shape);
        g.set_dkdv_plan(DkdvPlan::Grouped);
        let (_, _, wg_grouped_d) = gpu_attention(&g, &b, &qkv, &dout, shape);
        g.set_dkdv_plan(DkdvPlan::PerHead);
        // blocks of one warpgroup (the default has two, sharing each streamed tile): the same bits
        g.set_attn_rows(AttnRows::R64);
        let (wg64, wg64_lse, wg64_d) = gpu_attention(&g, &b, &qkv, &dout, shape);
        g.set_dkdv_plan(DkdvPlan::Grouped);
        let (_, _, wg64_grouped_d) = gpu_attention(&g, &b, &qkv, &dout, shape);
        g.set_dkdv_plan(DkdvPlan::PerHead);
        g.set_attn_rows(AttnRows::R128);
        g.set_attn_mma(AttnMma::Mma).unwrap();
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let same = [(&wg64, &wg), (&wg64_lse, &wg_lse), (&wg64_d, &wg_d), (&wg64_grouped_d, &wg_grouped_d)];
        assert!(same.iter().all(|(a, b)| bits(a) == bits(b)), "D={d}: 64-row wgmma blocks differ from 128-row ones");
        assert!(
            wg.iter().chain(&wg_lse).chain(&wg_d).chain(&wg_grouped_d).all(|x| x.is_finite()),
            "D={d}: the wgmma kernels left outputs unwritten"
        );
        close(&format!("wgmma attention D={d} lse"), &wg_lse, &lse, 1e-4);
        close(&format!("wgmma attention D={d} out"), &wg, &out, 1e-2);
        close(&format!("wgmma attention D={d} dqkv"), &wg_d, &want, 2e-2);
        close(&format!("wgmma attention D={d} dqkv, plans"), &wg_grouped_d, &wg_d, 1e-4);
        close(&format!("wgmma attention D={d} lse vs mma"), &wg_lse, &mma_lse, 1e-5);
        close(&format!("wgmma attention D={d} out vs mma"), &wg, &mma, 5e-3);
        close(&format!("wgmma attention D={d} dqkv vs mma"), &wg_d, &mma_d, 5e-3);
        let same = wg == mma && wg_lse == mma_lse && wg_d == mma_d;
        println!("D={d}: the wgmma attention {} the mma.sync attention", if same { "equals" } else { "differs from" });
    }
    g.set_dtype(Dtype::F32);
}
