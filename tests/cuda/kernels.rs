//! Each kernel on its own against the CPU backend on random inputs: the elementwise kernels
//! (norms, SwiGLU, residuals, AdamW pieces), the products, the embedding, RoPE and the fused
//! log-prob head, printing the largest error of each.

use super::*;

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

    // Qwen3's per-head norm in place, on heads in the middle of strided rows (d 128: four values a
    // lane; d 40: lanes left idle), kept inputs and statistics, the backward in place, dw added
    // into, the elementwise add
    for (d, heads, stride, at) in [(128usize, 3usize, 520usize, 136usize), (40, 2, 90, 7)] {
        head_norm_matches_the_cpu(&g, &mut rng, (n, d, heads, stride, at));
    }
    let (a, b) = (rand(&mut rng, 300), rand(&mut rng, 300));
    let mut sum = a.clone();
    Cpu.add(&mut sum, &b).unwrap();
    let (mut ag, bg) = (g.upload(&a).unwrap(), g.upload(&b).unwrap());
    g.add(Gpu::m(&mut ag, 0..300), Gpu::r(&bg, 0..300)).unwrap();
    close("add", &down(&g, &ag, 300), &sum, 1e-6);

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

/// `head_norm_forward` and `_backward` on the GPU against the CPU: n rows of `stride` values, the
/// heads starting at column `at`.
fn head_norm_matches_the_cpu(g: &Gpu, rng: &mut Rng, (n, d, heads, stride, at): (usize, usize, usize, usize, usize)) {
    let x = rand(rng, n * stride);
    let w: Vec<f32> = rand(rng, d).iter().map(|v| 1.0 + 0.3 * v).collect();
    let dy = rand(rng, n * stride);
    let len = n * stride - at;
    let (mut xc, mut raw, mut rstd) = (x.clone(), vec![0.0; n * heads * d], vec![0.0; n * heads]);
    Cpu.head_norm_forward(&mut xc[at..], Some(&mut raw[..]), &mut rstd, &w, stride, heads, 1e-6).unwrap();
    let (mut xg, wg) = (g.upload(&x).unwrap(), g.upload(&w).unwrap());
    let (mut rawg, mut rg) = (g.upload(&vec![0.0; n * heads * d]).unwrap(), g.upload(&vec![0.0; n * heads]).unwrap());
    g.head_norm_forward(
        Gpu::m(&mut xg, at..at + len),
        Some(Gpu::m(&mut rawg, 0..n * heads * d)),
        Gpu::m(&mut rg, 0..n * heads),
        Gpu::r(&wg, 0..d),
        stride,
        heads,
        1e-6,
    )
    .unwrap();
    close(&format!("head_norm fwd d {d}"), &down(g, &xg, n * stride), &xc, 1e-5);
    close(&format!("head_norm raw d {d}"), &down(g, &rawg, n * heads * d), &raw, 0.0);
    close(&format!("head_norm rstd d {d}"), &down(g, &rg, n * heads), &rstd, 1e-5);
    let dw0 = rand(rng, d);
    let (mut dx, mut dw) = (dy.clone(), dw0.clone());
    Cpu.head_norm_backward(&mut dx[at..], &mut dw, &raw, &rstd, &w, stride, heads).unwrap();
    let (mut dxg, mut dwg) = (g.upload(&dy).unwrap(), g.upload(&dw0).unwrap());
    g.head_norm_backward(
        Gpu::m(&mut dxg, at..at + len),
        Gpu::m(&mut dwg, 0..d),
        Gpu::r(&rawg, 0..n * heads * d),
        Gpu::r(&rg, 0..n * heads),
        Gpu::r(&wg, 0..d),
        stride,
        heads,
    )
    .unwrap();
    close(&format!("head_norm bwd dx d {d}"), &down(g, &dxg, n * stride), &dx, 1e-5);
    close(&format!("head_norm bwd dw d {d}"), &down(g, &dwg, d), &dw, 1e-4);
}
