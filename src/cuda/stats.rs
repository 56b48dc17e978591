//! The attention-statistics pass on the GPU (cuda/attn_stats.cu). After a forward of the batch,
//! each layer with a role has its probabilities recomputed tile by tile from its q|k rows and lse
//! (never an N × N map):
//! - FCI layers: summed per key over later steps' rows, folded into per-step means and maximised
//!   over layers and heads with a packed (value, head) atomic maximum;
//! - rhythm layers: per-row look-back distance and WAAD, per-key FAI sums.
//!
//! Head selection and the local/global means of the rhythm statistics then run on the host with
//! the CPU's own functions (O(heads × T)). The result is the CPU's `SeqStats`; tests/cuda/
//! compares them.

use crate::attention::stats::pass::SeqPlan;
use crate::attention::stats::{
    combine_rhythm, fai_rows, prepare, select_heads, HeadId, Prepared, SeqStats, SeqSteps, StatsConfig,
};
use crate::cuda::device::{drv, int, Arg};
use crate::cuda::{Gpu, GpuModel};
use crate::error::{Error, Result};
use crate::model::{Batch, Model};
use crate::tensor::Backend;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

/// Per sequence: y_k per step and the (layer, head) attaining it (empty without step bounds).
pub type FciResult = Vec<(Vec<f32>, Vec<Option<HeadId>>)>;

/// [`crate::attention::stats::attention_stats`] on the GPU: runs the forward of `batch` on `gm`,
/// then the statistics of `cfg` (same layers, Δ, W, window and fractions as on the CPU). The
/// forward keeps every layer's activations (it reads them) whatever `gm`'s checkpointing mode,
/// which is restored after.
pub fn attention_stats(
    gm: &mut GpuModel,
    model: &Model,
    batch: &Batch,
    steps: &[SeqSteps],
    cfg: &StatsConfig,
) -> Result<Vec<SeqStats>> {
    let checkpointing = gm.checkpointing();
    gm.set_checkpointing(false);
    let out = stats_of_all_layers(gm, model, batch, steps, cfg);
    gm.set_checkpointing(checkpointing);
    out
}

/// [`attention_stats`] on a workspace that keeps every layer.
fn stats_of_all_layers(
    gm: &mut GpuModel,
    model: &Model,
    batch: &Batch,
    steps: &[SeqSteps],
    cfg: &StatsConfig,
) -> Result<Vec<SeqStats>> {
    let mc = &model.cfg;
    let (l_n, h_n, kv_n, d) = (mc.num_layers, mc.num_heads, mc.num_kv_heads, mc.head_dim);
    let n_seq = batch.num_seqs();
    let Prepared { rhythm_layers, roles, plans } = prepare(l_n, batch, steps, cfg)?;
    gm.forward(model, batch)?;

    let n = batch.len();
    let t = FciTables::new(&plans, n, cfg.delta)?;
    let gpu = gm.gpu();
    let s = &gpu.stream;
    let up_i = |x: &[i32]| gpu.htod(x);
    let (seq_info_d, tok_step_d, bounds_d, bounds_off_d) =
        (up_i(&t.seq_info)?, up_i(&t.tok_step)?, up_i(&t.bounds)?, up_i(&t.bounds_off)?);
    let step_inv_d = gpu.upload(&t.step_inv)?;
    let total = t.bounds.len().max(1);
    let best = gpu.alloc::<u64>(total, "the attention statistics")?;
    let hn = (h_n * n).max(1);
    let zeros = || gpu.alloc::<f32>(hn, "the attention statistics");
    let (fci_col, fai_col, dist_row, waad_row) = (zeros()?, zeros()?, zeros()?, zeros()?);
    // the batch the forward just uploaded
    let fresh;
    let dev = match gm.uploaded(batch) {
        Some(dev) => dev,
        None => {
            fresh = gpu.batch(batch.packed())?;
            &fresh
        }
    };
    let ptr_i = |x: &CudaSlice<i32>| x.device_ptr(s).0;
    let ptr_f = |x: &CudaSlice<f32>| x.device_ptr(s).0;
    let dm = match d {
        1..=32 => 32u32,
        33..=64 => 64,
        65..=128 => 128,
        _ => return Err(Error::Invalid(format!("head_dim {d}: the CUDA statistics kernels support 1..=128"))),
    };
    let qkv_w = mc.qkv_dim();
    let stride = int(qkv_w, "qkv stride")?;
    let max_len = batch.max_seq_len();
    // pass 1's column planes, one per query tile, summed in order by attn_stats_col_sum
    let q_tiles = max_len.div_ceil(64).max(1);
    let plane = h_n * n;
    let planes =
        || gpu.alloc::<f32>(q_tiles * plane, "the attention statistics (lower [rl] micro_batch or micro_batch_tokens)");
    let (mut fci_planes, mut fai_planes) = (planes()?, planes()?);
    // Where the forward's attention ran on the tensor cores it read q and k rounded to bf16, and
    // its lse is that of the rounded scores: the probabilities are recomputed from the same
    // rounded rows (attn_stats_*_bf16), or their rows would not sum to one.
    let rounded = gpu.attn_on_tensor_cores(mc.head_dim);
    let mut qk16 = gpu.alloc::<u16>(if rounded { n * qkv_w } else { 0 }, "the attention statistics")?;
    let (elem, kind) = if rounded { (2, "bf16") } else { (4, "f32") };
    // per rhythm layer: dist, waad (rows) and fai (columns), [H, N] each, on the host
    let mut rhythm_rows: Vec<[Vec<f32>; 3]> = Vec::new();
    for role in &roles {
        let (layer, do_fci, do_rhythm) = (role.layer, role.fci, role.rhythm.is_some());
        let a = &gm.ws.layers[layer];
        let mut q = gpu.pr(&Gpu::r(&a.qkv, 0..n * qkv_w));
        if rounded {
            let q16 = qk16.device_ptr_mut(s).0;
            gpu.round_bf16(q16, q, n * qkv_w)?;
            q = q16;
        }
        let lse = gpu.pr(&Gpu::r(&a.lse, 0..n * h_n));
        if do_fci {
            s.memset_zeros(&mut fci_planes).map_err(drv("memset"))?;
        }
        if do_rhythm {
            s.memset_zeros(&mut fai_planes).map_err(drv("memset"))?;
        }
        let on = |yes: bool, p: u64| if yes { p } else { 0 };
        let args = [
            Arg::P(q),
            Arg::I(stride),
            Arg::P(q + (h_n * d * elem) as u64),
            Arg::I(stride),
            Arg::P(lse),
            Arg::P(dev.cu_seqlens.device_ptr(s).0),
            Arg::P(ptr_i(&seq_info_d)),
            Arg::P(ptr_i(&tok_step_d)),
            Arg::P(step_inv_d.device_ptr(s).0),
            Arg::I(int(n, "tokens")?),
            Arg::I(h_n as i32),
            Arg::I(kv_n as i32),
            Arg::I(d as i32),
            Arg::I(int(cfg.delta, "delta")?),
            Arg::I(int(cfg.window, "window")?),
            Arg::I(int(cfg.h_lo, "h_lo")?),
            Arg::I(int(cfg.h_hi, "h_hi")?),
            Arg::I(do_fci as i32),
            Arg::I(do_rhythm as i32),
            Arg::P(on(do_fci, ptr_f(&fci_planes))),
            Arg::P(on(do_rhythm, ptr_f(&fai_planes))),
            Arg::P(on(do_rhythm, ptr_f(&dist_row))),
            Arg::P(on(do_rhythm, ptr_f(&waad_row))),
        ];
        let grid = (max_len.div_ceil(64) as u32, h_n as u32, n_seq as u32);
        let entry = format!("attn_stats_{dm}_{kind}");
        gpu.launch("attn_stats", &entry, grid, (256, 1, 1), 128 * (dm + 1) * 4, &args)?;
        for (on, col, planes) in [(do_fci, &fci_col, &fci_planes), (do_rhythm, &fai_col, &fai_planes)] {
            if on && plane > 0 {
                let args =
                    [Arg::P(ptr_f(col)), Arg::P(ptr_f(planes)), Arg::I(q_tiles as i32), Arg::I(int(plane, "H × N")?)];
                let blocks = (plane.div_ceil(256) as u32).clamp(1, 65535);
                gpu.launch("attn_stats", "attn_stats_col_sum", (blocks, 1, 1), (256, 1, 1), 0, &args)?;
            }
        }
        if do_fci {
            let args = [
                Arg::P(best.device_ptr(s).0),
                Arg::P(ptr_f(&fci_col)),
                Arg::I(n as i32),
                Arg::P(dev.cu_seqlens.device_ptr(s).0),
                Arg::P(ptr_i(&seq_info_d)),
                Arg::P(ptr_i(&bounds_d)),
                Arg::P(ptr_i(&bounds_off_d)),
                Arg::I(h_n as i32),
                Arg::I(layer as i32),
            ];
            gpu.launch("attn_stats", "attn_stats_fci_reduce", (n_seq as u32, h_n as u32, 1), (256, 1, 1), 0, &args)?;
        }
        if do_rhythm {
            let mut rows = [vec![0.0f32; h_n * n], vec![0.0f32; h_n * n], vec![0.0f32; h_n * n]];
            for (host, dev_buf) in rows.iter_mut().zip([&dist_row, &waad_row, &fai_col]) {
                gpu.download(dev_buf, host)?;
            }
            rhythm_rows.push(rows);
        }
    }
    let mut keys = vec![0u64; total];
    s.memcpy_dtoh(&best, &mut keys[..]).map_err(drv("download"))?;
    gpu.sync()?;
    let ordered = in_list_order(&rhythm_layers, &rhythm_rows);
    let fci = decode_keys(&keys, &t.bounds_off, h_n);
    let mut out = Vec::with_capacity(n_seq);
    for (p, (y, arg)) in plans.iter().zip(fci) {
        let mut res = SeqStats::default();
        if cfg.fci && p.num_steps() > 0 {
            (res.fci, res.fci_argmax) = (y, arg);
        }
        if cfg.rhythm {
            rhythm_of(&mut res, p, &ordered, h_n, n, cfg)?;
        }
        out.push(res);
    }
    Ok(out)
}

/// Rhythm rows computed in ascending layer order, reordered as `rhythm_layers` lists the layers
/// (the CPU's order of look-back entries and per-head partials).
fn in_list_order<'a>(rhythm_layers: &[usize], rows: &'a [[Vec<f32>; 3]]) -> Vec<&'a [Vec<f32>; 3]> {
    let mut by_layer = rhythm_layers.to_vec();
    by_layer.sort_unstable();
    rhythm_layers.iter().filter_map(|l| by_layer.iter().position(|x| x == l).map(|i| &rows[i])).collect()
}

/// Look-back, head groups, WAAD and FAI of one sequence from the downloaded per-head rows
/// (`rows[rl]` = [dist, waad, fai] of rhythm layer rl, each [H, N]), as the CPU reduces them.
fn rhythm_of(
    res: &mut SeqStats,
    p: &SeqPlan<'_>,
    rows: &[&[Vec<f32>; 3]],
    h_n: usize,
    n: usize,
    cfg: &StatsConfig,
) -> Result<()> {
    let t_len = p.resp_len();
    let heads = rows.len() * h_n;
    let (mut lookback, mut waad, mut fai) =
        (vec![0.0f32; heads], vec![0.0f32; heads * t_len], vec![0.0f32; heads * t_len]);
    let inv_t = if t_len == 0 { 0.0 } else { 1.0 / t_len as f64 };
    for (rl, &[dist, w, f]) in rows.iter().enumerate() {
        for h in 0..h_n {
            let flat = rl * h_n + h;
            let base = h * n + p.start + p.resp;
            lookback[flat] = (dist[base..base + t_len].iter().map(|&x| x as f64).sum::<f64>() * inv_t) as f32;
            waad[flat * t_len..(flat + 1) * t_len].copy_from_slice(&w[base..base + t_len]);
            for i in 0..t_len {
                let c = fai_rows(i, t_len, cfg.h_lo, cfg.h_hi).map_or(0.0, |(a, b)| 1.0 / (b - a + 1) as f32);
                fai[flat * t_len + i] = f[base + i] * c;
            }
        }
    }
    res.heads = select_heads(&lookback, cfg.local_frac, cfg.global_frac)?;
    (res.waad, res.fai) = combine_rhythm(&waad, &fai, t_len, &res.heads)?;
    res.lookback = lookback;
    if cfg.keep_head_partials {
        (res.head_waad, res.head_fai) = (waad, fai);
    }
    Ok(())
}

/// The host tables of the statistics kernels (cuda/attn_stats.cu "Per-sequence description").
pub struct FciTables {
    /// [n_seq, 4] (r, kmax or −1, fci_key_lo, fci_row_lo).
    pub seq_info: Vec<i32>,
    /// `[N]` local step of each token (−1 without FCI) and 1/|its step| (0 without).
    pub tok_step: Vec<i32>,
    pub step_inv: Vec<f32>,
    /// Concatenated step bounds and their offsets ([n_seq + 1]).
    pub bounds: Vec<i32>,
    pub bounds_off: Vec<i32>,
}

impl FciTables {
    /// Tables for checked sequence plans over `n` packed tokens.
    pub(crate) fn new(plans: &[SeqPlan<'_>], n: usize, delta: usize) -> Result<FciTables> {
        let mut t = FciTables {
            seq_info: Vec::new(),
            tok_step: vec![-1; n],
            step_inv: vec![0.0; n],
            bounds: Vec::new(),
            bounds_off: vec![0],
        };
        for p in plans {
            let s_n = p.num_steps();
            let (kmax, key_lo, row_lo) = if s_n > 0 {
                let row_lo = if 2 + delta < p.bounds.len() { p.bounds[2 + delta] } else { p.len };
                (p.kmax as i32, p.bounds.get(2).copied().unwrap_or(p.len), row_lo)
            } else {
                (-1, p.len, p.len)
            };
            t.seq_info.extend([int(p.resp, "response start")?, kmax, int(key_lo, "token")?, int(row_lo, "token")?]);
            for k in 0..s_n {
                for tok in p.bounds[k]..p.bounds[k + 1] {
                    t.tok_step[p.start + tok] = k as i32;
                    t.step_inv[p.start + tok] = p.inv_len[k] as f32;
                }
            }
            for &b in p.bounds {
                t.bounds.push(int(b, "step bound")?);
            }
            t.bounds_off.push(t.bounds.len() as i32);
        }
        Ok(t)
    }
}

/// The packed maximum of `attn_stats_fci_reduce`: value bits high, 0xffffffff − head id low.
pub fn fci_key(y: f32, layer: usize, head: usize, num_heads: usize) -> u64 {
    ((y.to_bits() as u64) << 32) | (0xffff_ffffu64 - (layer * num_heads + head) as u64)
}

/// Per sequence (y_k, argmax head) from the reduced keys.
pub fn decode_keys(keys: &[u64], bounds_off: &[i32], num_heads: usize) -> FciResult {
    bounds_off
        .windows(2)
        .map(|w| {
            // S + 1 bounds per sequence with steps, none without
            let s_n = ((w[1] - w[0]) as usize).saturating_sub(1);
            let (mut y, mut arg) = (vec![0.0f32; s_n], vec![None; s_n]);
            for k in 0..s_n {
                let key = keys[w[0] as usize + k];
                let v = f32::from_bits((key >> 32) as u32);
                if v > 0.0 {
                    let id = (0xffff_ffffu64 - (key & 0xffff_ffff)) as usize;
                    y[k] = v;
                    arg[k] = Some(HeadId { layer: id / num_heads, head: id % num_heads });
                }
            }
            (y, arg)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::stats::{attention_stats, plan_seq};
    use crate::model::{init::init_params, Arch, ModelConfig, Workspace};
    use crate::rng::Rng;

    /// The host side of the GPU statistics (FCI tables, packed maximum, key decoding; rhythm row
    /// order, look-back, head groups, WAAD and FAI), driven by a host emulation of the kernels'
    /// documented contracts, reproduces the CPU statistics pass.
    #[test]
    fn host_side_of_the_gpu_statistics_reproduces_the_cpu_pass() {
        let cfg = ModelConfig {
            arch: Arch::Qwen2,
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 3,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            vocab_size: 50,
            max_position_embeddings: 128,
            tie_word_embeddings: false,
            qkv_bias: true,
            bos_token_id: None,
            eos_token_ids: Vec::new(),
        };
        let model = Model::new(cfg.clone(), init_params(&cfg, 3, 0.8)).unwrap();
        let mut rng = Rng::new(9);
        let mut batch = Batch::new();
        let mut steps = Vec::new();
        for &(len, prompt) in &[(60usize, 9usize), (0, 0), (25, 25), (80, 30)] {
            let toks: Vec<u32> = (0..len).map(|_| rng.below(50) as u32).collect();
            batch.push(&toks, &toks).unwrap();
            let mut bounds = vec![0, prompt];
            while *bounds.last().unwrap() < len {
                let next = bounds.last().unwrap() + 1 + rng.below(7) as usize;
                bounds.push(next.min(len));
            }
            if len == 0 {
                bounds.clear();
            }
            steps.push(SeqSteps { bounds, response_start: prompt, end_of_thinking: None });
        }
        steps[3].end_of_thinking = Some(6);
        let scfg = StatsConfig { rhythm: false, fci_layers: vec![2, 0], ..StatsConfig::default() };
        let mut ws = Workspace::new(&cfg, batch.len());
        model.forward(&batch, &mut ws).unwrap();
        let want = attention_stats(&model, &batch, &ws, &steps, &scfg).unwrap();

        let (n, h_n, d) = (batch.len(), cfg.num_heads, cfg.head_dim);
        let group = h_n / cfg.num_kv_heads;
        let starts = &batch.seq_starts;
        let plans: Vec<_> = (0..batch.num_seqs())
            .map(|s| plan_seq(s, starts[s], starts[s + 1] - starts[s], &steps[s], true).unwrap())
            .collect();
        let t = FciTables::new(&plans, n, scfg.delta).unwrap();
        let qkv_w = cfg.qkv_dim();
        let mut keys = vec![0u64; t.bounds.len().max(1)];
        for layer in [2usize, 0] {
            let (qkv, lse) = (&ws.layers[layer].qkv, &ws.layers[layer].lse);
            // kernel 1 (attn_stats, FCI part), as its header states it
            let mut fci_col = vec![0.0f64; h_n * n];
            for (i, w) in starts.windows(2).enumerate() {
                let (st, len) = (w[0], w[1] - w[0]);
                let (kmax, key_lo, row_lo) = (t.seq_info[4 * i + 1], t.seq_info[4 * i + 2], t.seq_info[4 * i + 3]);
                if kmax < 2 {
                    continue;
                }
                for h in 0..h_n {
                    let g = h / group;
                    for row in row_lo as usize..len {
                        let tt = st + row;
                        let j = t.tok_step[tt];
                        for key in key_lo as usize..=row {
                            let ss = st + key;
                            let k = t.tok_step[ss];
                            if k < 2 || k > kmax || j < k + scfg.delta as i32 {
                                continue;
                            }
                            let q = &qkv[tt * qkv_w + h * d..tt * qkv_w + (h + 1) * d];
                            let kk = &qkv[ss * qkv_w + (h_n + g) * d..ss * qkv_w + (h_n + g + 1) * d];
                            let dot: f64 = q.iter().zip(kk).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let p = (dot / (d as f64).sqrt() - lse[tt * h_n + h] as f64).exp();
                            fci_col[h * n + ss] += p * t.step_inv[tt] as f64;
                        }
                    }
                }
            }
            // kernel 2 (attn_stats_fci_reduce)
            for (i, w) in starts.windows(2).enumerate() {
                let (st, off) = (w[0], t.bounds_off[i] as usize);
                let s_n = (t.bounds_off[i + 1] - t.bounds_off[i]) as usize;
                let kmax = t.seq_info[4 * i + 1];
                for h in 0..h_n {
                    for k in 2..s_n.saturating_sub(1).min(kmax.max(0) as usize + 1) {
                        let (b0, b1) = (t.bounds[off + k] as usize, t.bounds[off + k + 1] as usize);
                        let y = (b0..b1).map(|s| fci_col[h * n + st + s]).sum::<f64>() / (b1 - b0) as f64;
                        let key = fci_key(y as f32, layer, h, h_n);
                        keys[off + k] = keys[off + k].max(key);
                    }
                }
            }
        }
        // pass 1, rhythm part, on rhythm layers listed out of order (computed in layer order)
        let rhythm_layers = [2usize, 1];
        let rcfg = StatsConfig {
            fci: false,
            rhythm_layers: rhythm_layers.to_vec(),
            h_lo: 2,
            h_hi: 9,
            ..StatsConfig::default()
        };
        let rwant = attention_stats(&model, &batch, &ws, &steps, &rcfg).unwrap();
        let mut rows_by_layer = Vec::new();
        for layer in [1usize, 2] {
            let (qkv, lse) = (&ws.layers[layer].qkv, &ws.layers[layer].lse);
            let [mut dist, mut waad, mut fai] = [vec![0.0f32; h_n * n], vec![0.0f32; h_n * n], vec![0.0f32; h_n * n]];
            for (i, w) in starts.windows(2).enumerate() {
                let (st, len, r) = (w[0], w[1] - w[0], t.seq_info[4 * i] as usize);
                for h in 0..h_n {
                    let g = h / group;
                    for row in 0..len {
                        let tt = st + row;
                        let (mut dsum, mut wsum) = (0.0f64, 0.0f64);
                        for key in 0..=row {
                            let ss = st + key;
                            let q = &qkv[tt * qkv_w + h * d..tt * qkv_w + (h + 1) * d];
                            let kk = &qkv[ss * qkv_w + (h_n + g) * d..ss * qkv_w + (h_n + g + 1) * d];
                            let dot: f64 = q.iter().zip(kk).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let p = (dot / (d as f64).sqrt() - lse[tt * h_n + h] as f64).exp();
                            dsum += p * (row - key) as f64;
                            wsum += p * (row - key).min(rcfg.window) as f64;
                            if key >= r && (rcfg.h_lo..=rcfg.h_hi).contains(&(row - key)) {
                                fai[h * n + ss] += p as f32;
                            }
                        }
                        if row >= r {
                            dist[h * n + tt] = dsum as f32;
                            waad[h * n + tt] = wsum as f32;
                        }
                    }
                }
            }
            rows_by_layer.push([dist, waad, fai]);
        }
        let ordered = in_list_order(&rhythm_layers, &rows_by_layer);
        for (s, p) in plans.iter().enumerate() {
            let mut res = SeqStats::default();
            rhythm_of(&mut res, p, &ordered, h_n, n, &rcfg).unwrap();
            let w = &rwant[s];
            assert_eq!(res.heads, w.heads, "sequence {s}: head groups");
            for (what, a, b) in
                [("look-back", &res.lookback, &w.lookback), ("WAAD", &res.waad, &w.waad), ("FAI", &res.fai, &w.fai)]
            {
                assert_eq!(a.len(), b.len(), "sequence {s} {what}");
                for (x, y) in a.iter().zip(b.iter()) {
                    assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "sequence {s} {what}: {x} vs {y}");
                }
            }
        }

        let got = decode_keys(&keys, &t.bounds_off, h_n);
        let mut compared = 0;
        for (s, (w, (y, arg))) in want.iter().zip(&got).enumerate() {
            assert_eq!(w.fci.len(), y.len(), "sequence {s}: step count");
            for k in 0..y.len() {
                assert!(
                    (w.fci[k] - y[k]).abs() <= 1e-5 * w.fci[k].max(1e-3),
                    "seq {s} step {k}: {} vs {}",
                    w.fci[k],
                    y[k]
                );
                assert_eq!(w.fci_argmax[k], arg[k], "seq {s} step {k}");
                compared += (y[k] > 0.0) as usize;
            }
        }
        assert!(compared > 10, "only {compared} non-zero steps compared");
    }
}
