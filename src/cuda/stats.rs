//! Forward Context Influence on the GPU (cuda/attn_stats.cu): after a forward of the batch, each
//! FCI layer's probabilities are recomputed tile by tile from its q|k rows and lse (never an N × N
//! map), summed per key over later steps' rows, folded into per-step means and maximised over
//! layers and heads with a packed (value, head) atomic maximum. The result has the CPU's meaning
//! and layout (`attention::stats::SeqStats::fci` and `fci_argmax`); tests/cuda.rs compares them.

use crate::attention::stats::{plan_seq, resolve_layers, HeadId, SeqSteps, StatsConfig};
use crate::cuda::backend::int;
use crate::cuda::device::{drv, Arg};
use crate::cuda::GpuModel;
use crate::error::{Error, Result};
use crate::model::{Batch, Model};
use crate::tensor::Backend;
use cudarc::driver::DevicePtr;

/// Per sequence: y_k per step and the (layer, head) attaining it (empty without step bounds).
pub type FciResult = Vec<(Vec<f32>, Vec<Option<HeadId>>)>;

/// FCI of every sequence of `batch` (`steps[s]` describes sequence s; `cfg.fci_layers` and
/// `cfg.delta` as on the CPU; the rhythm statistics are not computed here).
pub fn fci(
    gm: &mut GpuModel,
    model: &Model,
    batch: &Batch,
    steps: &[SeqSteps],
    cfg: &StatsConfig,
) -> Result<FciResult> {
    let mc = &model.cfg;
    let (l_n, h_n, kv_n, d) = (mc.num_layers, mc.num_heads, mc.num_kv_heads, mc.head_dim);
    let n_seq = batch.num_seqs();
    if steps.len() != n_seq {
        return Err(Error::Invalid(format!("attention stats: {} step lists for {n_seq} sequences", steps.len())));
    }
    let layers = resolve_layers(&cfg.fci_layers, (0..l_n).collect(), l_n, "fci_layers")?;
    let starts = &batch.seq_starts;
    let plans = (0..n_seq)
        .map(|s| plan_seq(s, starts[s], starts[s + 1] - starts[s], &steps[s], true))
        .collect::<Result<Vec<_>>>()?;
    gm.forward(model, batch)?;

    // host tables: seq_info, per-token step and 1/|step|, step bounds
    let n = batch.len();
    let (mut seq_info, mut tok_step, mut step_inv) = (Vec::new(), vec![-1i32; n], vec![0.0f32; n]);
    let (mut bounds, mut bounds_off) = (Vec::new(), vec![0i32]);
    for p in &plans {
        let s_n = p.num_steps();
        let (kmax, key_lo, row_lo) = if s_n > 0 {
            let row_lo = if 2 + cfg.delta < p.bounds.len() { p.bounds[2 + cfg.delta] } else { p.len };
            (p.kmax as i32, p.bounds.get(2).copied().unwrap_or(p.len), row_lo)
        } else {
            (-1, p.len, p.len)
        };
        seq_info.extend([int(p.resp, "response start")?, kmax, int(key_lo, "token")?, int(row_lo, "token")?]);
        for k in 0..s_n {
            for t in p.bounds[k]..p.bounds[k + 1] {
                tok_step[p.start + t] = k as i32;
                step_inv[p.start + t] = p.inv_len[k] as f32;
            }
        }
        for &b in p.bounds {
            bounds.push(int(b, "step bound")?);
        }
        bounds_off.push(bounds.len() as i32);
    }
    let gpu = gm.gpu();
    let s = &gpu.stream;
    let up_i = |x: &[i32]| gpu.htod(x);
    let (seq_info_d, tok_step_d, bounds_d, bounds_off_d) =
        (up_i(&seq_info)?, up_i(&tok_step)?, up_i(&bounds)?, up_i(&bounds_off)?);
    let step_inv_d = gpu.upload(&step_inv)?;
    let total = bounds.len().max(1);
    let best = s.alloc_zeros::<u64>(total).map_err(drv("alloc"))?;
    let mut fci_col = s.alloc_zeros::<f32>((h_n * n).max(1)).map_err(drv("alloc"))?;
    let dev = gpu.batch(batch)?;
    let ptr_i = |x: &cudarc::driver::CudaSlice<i32>| x.device_ptr(s).0;
    let dm = match d {
        1..=32 => 32u32,
        33..=64 => 64,
        65..=128 => 128,
        _ => return Err(Error::Invalid(format!("head_dim {d}: the CUDA statistics kernels support 1..=128"))),
    };
    let qkv_w = mc.qkv_dim();
    let stride = int(qkv_w, "qkv stride")?;
    let max_len = batch.max_seq_len();
    let col = fci_col.device_ptr(s).0;
    for &layer in &layers {
        let a = &gm.ws.layers[layer];
        let q = gpu.pr(&crate::cuda::Gpu::r(&a.qkv, 0..n * qkv_w));
        let lse = gpu.pr(&crate::cuda::Gpu::r(&a.lse, 0..n * h_n));
        s.memset_zeros(&mut fci_col).map_err(drv("memset"))?;
        let args = [
            Arg::P(q),
            Arg::I(stride),
            Arg::P(q + (h_n * d * 4) as u64),
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
            Arg::I(1),
            Arg::I(0),
            Arg::P(col),
            Arg::P(0),
            Arg::P(0),
            Arg::P(0),
        ];
        let grid = (max_len.div_ceil(64) as u32, h_n as u32, n_seq as u32);
        gpu.launch("attn_stats", &format!("attn_stats_{dm}_f32"), grid, (256, 1, 1), 128 * (dm + 1) * 4, &args)?;
        let args = [
            Arg::P(best.device_ptr(s).0),
            Arg::P(col),
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
    let mut keys = vec![0u64; total];
    s.memcpy_dtoh(&best, &mut keys[..]).map_err(drv("download"))?;
    gpu.sync()?;
    let mut out = Vec::with_capacity(n_seq);
    for (i, p) in plans.iter().enumerate() {
        let s_n = p.num_steps();
        let off = bounds_off[i] as usize;
        let (mut y, mut arg) = (vec![0.0f32; s_n], vec![None; s_n]);
        for k in 0..s_n {
            let key = keys[off + k];
            let v = f32::from_bits((key >> 32) as u32);
            if v > 0.0 {
                let id = 0xffff_ffffu64 - (key & 0xffff_ffff);
                y[k] = v;
                arg[k] = Some(HeadId { layer: id as usize / h_n, head: id as usize % h_n });
            }
        }
        out.push((y, arg));
    }
    Ok(out)
}
