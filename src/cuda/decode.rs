//! Generation on the GPU: a KV cache in device memory ([slots, KV, max_len, D] per layer, the
//! layout of cuda/decode_attention.cu) and a decode step that runs B new rows through the model
//! against it: the layer stack of `model::decode_stack` (the CPU decode's too) over the GPU's
//! operations ([`GpuStep`]: the same backend operations as training, RMSNorm, GEMMs, RoPE,
//! SwiGLU, LM head, plus the two cache kernels). A slot's rows take consecutive positions, so one
//! step prefills whole prompts for some slots while decoding one token for others; only the rows
//! whose next token is wanted go through the LM head. `step_sampled` then draws those tokens on
//! the device (cuda/sample.cu). Generation with continuous batching is built on it in
//! cuda/generate.rs.

use crate::cuda::backend::{GpuBatch, GpuRope};
use crate::cuda::decode_attn::{decode_attn_entry, decode_splits, partial_len};
use crate::cuda::device::{drv, Arg, Gpu};
use crate::cuda::gemm::GemmKind;
use crate::cuda::graphs::{self, Action, StepGraphs};
use crate::cuda::image::Bf16Image;
use crate::cuda::sample::{sample_rows, SampleBufs};
use crate::error::{Error, Result};
use crate::model::decode_stack::{assign_positions, check_step, decode_stack, DecodeDevice, Norm, Proj};
use crate::model::Model;
use crate::rollout::sampler::{Sampled, SamplingParams};
use crate::tensor::Dtype;
use crate::tensor::{Backend, GemmShape};
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// Keys and values of every layer for `slots` sequences of up to `max_len` tokens, on the device,
/// plus a spare slot (index `slots`) that the padding rows of a captured step decode into.
pub struct GpuKvCache {
    pub slots: usize,
    pub max_len: usize,
    /// Whether keys and values are held in bf16 (made on a device whose products are "bf16": half
    /// the memory and half the decode attention's traffic), else f32.
    bf16: bool,
    /// Each layer's keys and values as 16-bit words (two per element when f32).
    k: Vec<CudaSlice<u16>>,
    v: Vec<CudaSlice<u16>>,
    /// Tokens held per slot.
    pub len: Vec<usize>,
}

/// A model's weights on the device plus step buffers, for generation.
pub struct GpuDecoder {
    /// The weights rounded to bf16 when the device's products are "bf16" (once per weight version,
    /// so a token step reads 2 bytes per weight instead of rounding 4; `cuda::image`). The first
    /// field: dropped (so unregistered) before the weights.
    image: Option<Bf16Image>,
    gpu: Arc<Gpu>,
    params: CudaSlice<f32>,
    rope: GpuRope,
    bufs: StepBufs,
    sampling: SampleBufs,
    /// Each row's position and each slot's length after the step (host scratch).
    positions: Vec<u32>,
    next: Vec<usize>,
    /// The step's rows on the device (tokens, positions, slots, attended lengths), reused.
    rows: Option<RowsDev>,
    /// Decode steps captured as CUDA graphs (opt-in; `cuda::graphs`).
    graphs: StepGraphs<CudaGraph>,
    /// Whether steps whose every row picks a token are padded to their bucket (`graphs::bucket`):
    /// with graphs on, unless set otherwise.
    pad: bool,
}

/// A decode step's per-row inputs in device memory, with room for `cap` rows (grown by
/// reallocation, written in place every step: no allocation per token).
struct RowsDev {
    cap: usize,
    batch: GpuBatch,
    slots: CudaSlice<i32>,
    lens: CudaSlice<i32>,
}

impl RowsDev {
    /// Buffers for at least `rows` rows, reusing `old` when it has room.
    fn with_room(g: &Gpu, old: Option<RowsDev>, rows: usize) -> Result<RowsDev> {
        match old {
            Some(r) if r.cap >= rows => Ok(r),
            _ => {
                let cap = rows.next_power_of_two().max(64);
                let alloc_i = || g.stream.alloc_zeros::<i32>(cap).map_err(drv("alloc"));
                let zeros_u = vec![0u32; cap];
                Ok(RowsDev { cap, batch: g.rows_batch(&zeros_u, &zeros_u)?, slots: alloc_i()?, lens: alloc_i()? })
            }
        }
    }
}

/// The decode step's device buffers, grown on demand: the residual stream, normed rows, RMSNorm
/// scratch, q|k|v, attention output, gate|up, SwiGLU output, and the logits of the picked rows.
/// With bf16 products the normed rows, attention output and SwiGLU output, the first operands of
/// the products, are written in bf16 by the kernels that make them (`ln16`, `att16`, `act16`;
/// `ln` then only serves [`DecodeDevice::gather`] as scratch, `att` and `act` are not grown).
struct StepBufs {
    x: CudaSlice<f32>,
    ln: CudaSlice<f32>,
    rstd: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    att: CudaSlice<f32>,
    gate_up: CudaSlice<f32>,
    act: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    ln16: CudaSlice<u16>,
    att16: CudaSlice<u16>,
    act16: CudaSlice<u16>,
    /// The decode attention's per-split partial results (rows split over blocks).
    partial: CudaSlice<f32>,
}

/// `buf` with room for at least `n` elements (reallocated, contents lost, when it has less).
fn grow16(g: &Gpu, buf: &mut CudaSlice<u16>, n: usize) -> Result<()> {
    if buf.len() < n {
        *buf = g.stream.alloc_zeros(n).map_err(drv("alloc"))?;
    }
    Ok(())
}

impl GpuKvCache {
    /// An empty cache for `model`, in bf16 when the device's products are "bf16".
    pub fn new(gpu: &Gpu, model: &Model, slots: usize, max_len: usize) -> Result<Self> {
        let bf16 = gpu.dtype() == Dtype::Bf16;
        let per = (slots + 1) * model.cfg.num_kv_heads * max_len * model.cfg.head_dim * if bf16 { 1 } else { 2 };
        let alloc = || gpu.stream.alloc_zeros::<u16>(per.max(2)).map_err(drv("KV cache alloc"));
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for _ in 0..model.cfg.num_layers {
            k.push(alloc()?);
            v.push(alloc()?);
        }
        Ok(GpuKvCache { slots, max_len, bf16, k, v, len: vec![0; slots] })
    }
}

impl GpuDecoder {
    /// Upload `model`'s weights.
    pub fn new(gpu: &Arc<Gpu>, model: &Model) -> Result<Self> {
        let e = || gpu.empty();
        let e16 = || gpu.stream.alloc_zeros::<u16>(1).map_err(drv("alloc"));
        let bufs = StepBufs {
            x: e()?,
            ln: e()?,
            rstd: e()?,
            qkv: e()?,
            att: e()?,
            gate_up: e()?,
            act: e()?,
            logits: e()?,
            ln16: e16()?,
            att16: e16()?,
            act16: e16()?,
            partial: e()?,
        };
        let mut dec = GpuDecoder {
            gpu: gpu.clone(),
            params: gpu.upload(&model.params.data)?,
            image: None,
            rope: gpu.rope(&model.rope)?,
            bufs,
            sampling: SampleBufs::new(gpu, 1)?,
            positions: Vec::new(),
            next: Vec::new(),
            rows: None,
            graphs: StepGraphs::new(graphs::requested()),
            pad: graphs::requested(),
        };
        dec.image = Bf16Image::of(gpu, &dec.params)?;
        Ok(dec)
    }

    /// Append `tokens[i]` to cache slot `slots[i]` (a slot's rows take its next positions in
    /// order) and return the next-token logits of every row ([B, V], on the host).
    pub fn step(&mut self, model: &Model, tokens: &[u32], slots: &[usize], cache: &mut GpuKvCache) -> Result<Vec<f32>> {
        let rows: Vec<usize> = (0..tokens.len()).collect();
        self.forward(model, tokens, slots, &rows, cache)?;
        let mut out = vec![0.0; tokens.len() * model.cfg.vocab_size];
        self.gpu.download(&self.bufs.logits, &mut out)?;
        Ok(out)
    }

    /// The step of [`GpuDecoder::step`] with the next token drawn on the device for rows
    /// `logit_rows` only (strictly increasing), each from its uniform with `params`' temperature
    /// (≤ 0: greedy), top-k and top-p (cuda/sample.cu): only ids, log-probs and entropies come
    /// back, one per logit row.
    pub fn step_sampled(
        &mut self,
        model: &Model,
        rows: StepInput<'_>,
        cache: &mut GpuKvCache,
        params: &SamplingParams,
    ) -> Result<Vec<Sampled>> {
        let StepInput { tokens, slots, logit_rows, uniforms } = rows;
        if uniforms.len() != logit_rows.len() {
            return Err(Error::shape(
                "decode step",
                format!("{} uniforms for {} logit rows", uniforms.len(), logit_rows.len()),
            ));
        }
        self.forward(model, tokens, slots, logit_rows, cache)?;
        if logit_rows.is_empty() {
            return Ok(Vec::new());
        }
        let v = model.cfg.vocab_size;
        let logits = Gpu::r(&self.bufs.logits, 0..logit_rows.len() * v);
        sample_rows(&self.gpu, &logits, v, uniforms, params, &mut self.sampling)
    }

    /// The decode step's forward: the next-token logits of `logit_rows` stay in `bufs.logits`.
    fn forward(
        &mut self,
        model: &Model,
        tokens: &[u32],
        slots: &[usize],
        logit_rows: &[usize],
        cache: &mut GpuKvCache,
    ) -> Result<()> {
        let cfg = &model.cfg;
        check_step(model, tokens, slots, logit_rows)?;
        let b = tokens.len();
        if b == 0 {
            return Err(Error::shape("decode step", "no rows"));
        }
        if model.tp.is_some() {
            return Err(Error::Invalid("GPU decoding under tensor parallelism is not supported yet".into()));
        }
        let max_pos = cache.max_len.min(cfg.max_position_embeddings);
        assign_positions(slots, &cache.len, max_pos, &mut self.positions, &mut self.next)?;
        // every row picks a token (the steady state): a step a graph may replay, padded up to its
        // bucket with rows decoding token 0 into the spare slot (positions 0, 1, ..: never read)
        let uniform = logit_rows.len() == b && logit_rows.iter().enumerate().all(|(i, &r)| i == r);
        let padded = if self.pad && uniform { graphs::bucket(b) } else { b };
        let (tokens_p, slot_ids, lens) = pad_rows(tokens, slots, &mut self.positions, (padded, cache.slots, max_pos));
        let g = &*self.gpu;
        let mut rows = RowsDev::with_room(g, self.rows.take(), padded)?;
        let st = &g.stream;
        let b = padded;
        st.memcpy_htod(&tokens_p[..], &mut rows.batch.tokens.slice_mut(0..b)).map_err(drv("upload"))?;
        st.memcpy_htod(&self.positions[..], &mut rows.batch.positions.slice_mut(0..b)).map_err(drv("upload"))?;
        st.memcpy_htod(&slot_ids[..], &mut rows.slots.slice_mut(0..b)).map_err(drv("upload"))?;
        st.memcpy_htod(&lens[..], &mut rows.lens.slice_mut(0..b)).map_err(drv("upload"))?;
        let all_rows: Vec<usize>;
        let logit_rows = match padded > logit_rows.len() {
            true => {
                all_rows = (0..padded).collect();
                &all_rows[..]
            }
            false => logit_rows,
        };
        let (c, inter, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let n = logit_rows.len();
        let bf = &mut self.bufs;
        for (buf, len) in [
            (&mut bf.x, b * c),
            (&mut bf.ln, b * c),
            (&mut bf.rstd, b),
            (&mut bf.qkv, b * cfg.qkv_dim()),
            (&mut bf.gate_up, b * 2 * inter),
            (&mut bf.logits, n.max(1) * v),
        ] {
            g.grow(buf, len)?;
        }
        // bf16 products: their first operands are written in bf16 (`_o16` kernels)
        let ops16 = g.dtype() == Dtype::Bf16;
        if ops16 {
            grow16(g, &mut bf.ln16, b * c)?;
            grow16(g, &mut bf.att16, b * cfg.attn_dim())?;
            grow16(g, &mut bf.act16, b * inter)?;
        } else {
            g.grow(&mut bf.att, b * cfg.attn_dim())?;
            g.grow(&mut bf.act, b * inter)?;
        }
        // the per-group decode attention's splits of each row's positions
        let kv = cfg.num_kv_heads;
        let split = match decode_attn_entry(g.decode_attn(), cfg.num_heads / kv.max(1), cfg.head_dim) {
            Some(dm) => {
                let (splits, len) = decode_splits(b, kv, cache.max_len, g.sms() as usize, g.decode_split());
                if splits > 1 {
                    g.grow(&mut bf.partial, partial_len(b, kv, splits, dm))?;
                }
                (splits, len)
            }
            None => (1, cache.max_len),
        };
        let fingerprint = match self.graphs.enabled() && uniform {
            true => step_fingerprint(g, (&self.params, self.image.as_ref()), bf, &rows, cache, (ops16, split)),
            false => Vec::new(),
        };
        let action = self.graphs.plan(b, uniform, &fingerprint);
        let mut step = GpuStep {
            g,
            p: &self.params,
            rope: &self.rope,
            bufs: bf,
            cache: &*cache,
            dev: &rows.batch,
            slots: &rows.slots,
            lens: &rows.lens,
            ops16,
            split,
        };
        let done = match action {
            Action::Eager => decode_stack(model, &mut step, &tokens_p, logit_rows),
            Action::Replay => match self.graphs.get(b) {
                Some(graph) => graph.launch().map_err(drv("graph launch")),
                None => decode_stack(model, &mut step, &tokens_p, logit_rows),
            },
            Action::Capture => match capture(st, || decode_stack(model, &mut step, &tokens_p, logit_rows)) {
                Ok(graph) => {
                    let launched = graph.launch().map_err(drv("graph launch"));
                    self.graphs.insert(b, graph);
                    launched
                }
                // the driver or a library refused the capture: run this and every later step eagerly
                Err(_) => {
                    self.graphs.give_up();
                    decode_stack(model, &mut step, &tokens_p, logit_rows)
                }
            },
        };
        self.rows = Some(rows);
        done?;
        cache.len.copy_from_slice(&self.next);
        Ok(())
    }

    /// Replay decode steps as CUDA graphs (see `cuda::graphs`), padding their rows to buckets, or
    /// stop (dropping every graph, no padding).
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs.set_enabled(on);
        self.pad = on;
    }

    /// Pad the rows of steps whose every row picks a token up to their bucket (`cuda::graphs::
    /// bucket`), or not, whether or not graphs are on: eager steps with the shapes that graphs
    /// replay (the tests compare the two).
    pub fn set_padding(&mut self, on: bool) {
        self.pad = on;
    }

    /// How many decode-step graphs are held (0 with graphs off, or after a refused capture).
    pub fn graphs_held(&self) -> usize {
        self.graphs.len()
    }

    /// Replace the weights with `params`, a device buffer of the same model (e.g. a `GpuModel`'s
    /// after its optimizer step): a device-to-device copy, ordered on the one stream.
    pub fn load_params(&mut self, params: &CudaSlice<f32>) -> Result<()> {
        if params.len() != self.params.len() {
            return Err(Error::shape(
                "decoder weights",
                format!("{} for a model of {}", params.len(), self.params.len()),
            ));
        }
        self.gpu.stream.memcpy_dtod(params, &mut self.params).map_err(drv("copy"))?;
        match &mut self.image {
            Some(image) => image.refresh(&self.params),
            None => Ok(()),
        }
    }

    /// The device this decoder runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
}

/// A step's rows padded to `padded` rows: tokens, slot ids, positions (in place) and attended
/// lengths; row j of the padding decodes token 0 into slot `spare` at position j (modulo
/// `max_pos`), so padding rows never touch a real slot, and each writes its own cache position
/// wherever the spare slot has room for them.
fn pad_rows(
    tokens: &[u32],
    slots: &[usize],
    positions: &mut Vec<u32>,
    (padded, spare, max_pos): (usize, usize, usize),
) -> (Vec<u32>, Vec<i32>, Vec<i32>) {
    let mut tokens_p = tokens.to_vec();
    let mut slot_ids: Vec<i32> = slots.iter().map(|&s| s as i32).collect();
    for j in 0..padded.saturating_sub(tokens.len()) {
        tokens_p.push(0);
        slot_ids.push(spare as i32);
        positions.push((j % max_pos) as u32);
    }
    let lens = positions.iter().map(|&p| p as i32 + 1).collect();
    (tokens_p, slot_ids, lens)
}

/// Every device address, shape and kernel choice a captured decode step bakes in: the weights
/// and their image, the step buffers, the row inputs, each layer's cache, the device's scratch
/// buffers, whether the products' first operands are bf16, the decode attention's splits.
fn step_fingerprint(
    g: &Gpu,
    (params, image): (&CudaSlice<f32>, Option<&Bf16Image>),
    b: &StepBufs,
    rows: &RowsDev,
    cache: &GpuKvCache,
    (ops16, split): (bool, (usize, usize)),
) -> Vec<u64> {
    let st = &g.stream;
    let mut f =
        vec![params.device_ptr(st).0, image.map_or(0, |i| i.ptr()), ops16 as u64, split.0 as u64, split.1 as u64];
    for buf in [&b.x, &b.ln, &b.rstd, &b.qkv, &b.att, &b.gate_up, &b.act, &b.logits, &b.partial] {
        f.push(buf.device_ptr(st).0);
    }
    for buf in [&b.ln16, &b.att16, &b.act16] {
        f.push(buf.device_ptr(st).0);
    }
    f.extend([
        rows.batch.tokens.device_ptr(st).0,
        rows.batch.positions.device_ptr(st).0,
        rows.slots.device_ptr(st).0,
        rows.lens.device_ptr(st).0,
    ]);
    f.extend(cache.k.iter().chain(&cache.v).map(|c| c.device_ptr(st).0));
    f.extend([cache.max_len as u64, cache.bf16 as u64]);
    f.extend(g.scratch_addresses());
    f
}

/// Capture what `run` launches on `st` as a graph (nothing runs during a capture). Any failure
/// ends the capture, so the stream is usable again.
fn capture(st: &Arc<CudaStream>, run: impl FnOnce() -> Result<()>) -> Result<CudaGraph> {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    st.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(drv("begin capture"))?;
    let ran = run();
    let graph = st.end_capture(CUgraphInstantiate_flags(0)).map_err(drv("end capture"));
    ran?;
    graph?.ok_or_else(|| Error::device("CUDA graph", "the capture recorded nothing"))
}

/// The rows of one sampled decode step: row r appends `tokens[r]` to slot `slots[r]`; the next
/// token is drawn for rows `logit_rows` (strictly increasing), with `uniforms` (one per logit row;
/// 0 at temperature 0).
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    pub slots: &'a [usize],
    pub logit_rows: &'a [usize],
    pub uniforms: &'a [f64],
}

/// The GPU's half of a decode step ([`DecodeDevice`]): the backend's operations on the decoder's
/// buffers, weights read in place, and the cache kernels of cuda/decode_attention.cu.
struct GpuStep<'a> {
    g: &'a Gpu,
    p: &'a CudaSlice<f32>,
    rope: &'a GpuRope,
    bufs: &'a mut StepBufs,
    cache: &'a GpuKvCache,
    /// The step's tokens and positions on the device.
    dev: &'a GpuBatch,
    /// Each row's slot and attended length (position + 1).
    slots: &'a CudaSlice<i32>,
    lens: &'a CudaSlice<i32>,
    /// Whether the products take bf16 first operands (written by the `_o16` kernels).
    ops16: bool,
    /// The per-group decode attention's (splits, positions per split) of each row.
    split: (usize, usize),
}

impl DecodeDevice for GpuStep<'_> {
    fn embed(&mut self, model: &Model, tokens: &[u32]) -> Result<()> {
        let (c, v, at) = (model.cfg.hidden_size, model.cfg.vocab_size, model.params.layout.embed);
        let x = Gpu::m(&mut self.bufs.x, 0..tokens.len() * c);
        self.g.embedding_forward(x, Gpu::r(self.p, at..at + v * c), self.dev, c)
    }

    fn rmsnorm(&mut self, model: &Model, norm: Norm, rows: usize) -> Result<()> {
        let (c, lay) = (model.cfg.hidden_size, &model.params.layout);
        let at = match norm {
            Norm::Attn(l) => lay.layers[l].ln1,
            Norm::Mlp(l) => lay.layers[l].ln2,
            Norm::Final => lay.final_norm,
        };
        if rows == 0 {
            return Ok(());
        }
        let (g, b) = (self.g, &mut *self.bufs);
        let eps = model.cfg.rms_norm_eps as f32;
        let (x, w) = (Gpu::r(&b.x, 0..rows * c), Gpu::r(self.p, at..at + c));
        if !self.ops16 {
            return g.rmsnorm_forward(Gpu::m(&mut b.ln, 0..rows * c), Gpu::m(&mut b.rstd, 0..rows), x, w, eps);
        }
        let args = [
            Arg::P(b.ln16.device_ptr_mut(&g.stream).0),
            Arg::P(g.pm(&mut Gpu::m(&mut b.rstd, 0..rows))),
            Arg::P(g.pr(&x)),
            Arg::P(g.pr(&w)),
            Arg::I(rows as i32),
            Arg::I(c as i32),
            Arg::F(eps),
        ];
        g.launch("rmsnorm", "rmsnorm_fwd_f32_o16", (rows as u32, 1, 1), (256, 1, 1), 0, &args)
    }

    fn project(&mut self, model: &Model, proj: Proj, rows: usize) -> Result<()> {
        let cfg = &model.cfg;
        let (c, inter, v, qkv_w, hd) =
            (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.qkv_dim(), cfg.attn_dim());
        let (g, p, b, lay) = (self.g, self.p, &mut *self.bufs, &model.params.layout);
        if rows == 0 {
            return Ok(());
        }
        // out (+)= in · Wᵀ: (output width, input width, weight offset, accumulate)
        let (n, k, at, acc) = match proj {
            Proj::Qkv(l) => (qkv_w, c, lay.layers[l].qkv_w, false),
            Proj::Out(l) => (c, hd, lay.layers[l].o_w, true),
            Proj::GateUp(l) => (2 * inter, c, lay.layers[l].gate_up_w, false),
            Proj::Down(l) => (c, inter, lay.layers[l].down_w, true),
            Proj::Head => (v, c, lay.lm_head, false),
        };
        let out = match proj {
            Proj::Qkv(_) => &mut b.qkv,
            Proj::Out(_) | Proj::Down(_) => &mut b.x,
            Proj::GateUp(_) => &mut b.gate_up,
            Proj::Head => &mut b.logits,
        };
        let (w, shape) = (Gpu::r(p, at..at + n * k), GemmShape::new(rows, n, k));
        let out = Gpu::m(out, 0..rows * n);
        if self.ops16 {
            let inp = match proj {
                Proj::Qkv(_) | Proj::GateUp(_) | Proj::Head => &b.ln16,
                Proj::Out(_) => &b.att16,
                Proj::Down(_) => &b.act16,
            };
            return g.gemm_a16(out, &inp.slice(0..rows * k), w, GemmKind::Nt, shape, acc);
        }
        let inp = match proj {
            Proj::Qkv(_) | Proj::GateUp(_) | Proj::Head => &b.ln,
            Proj::Out(_) => &b.att,
            Proj::Down(_) => &b.act,
        };
        g.matmul_nt(out, Gpu::r(inp, 0..rows * k), w, shape, acc)
    }

    fn attend(&mut self, model: &Model, layer: usize, rows: usize) -> Result<()> {
        let cfg = &model.cfg;
        let (h, kv, d, qkv_w, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.qkv_dim(), cfg.attn_dim());
        let (g, cache, b) = (self.g, self.cache, &mut *self.bufs);
        if self.rope.half * 2 != d {
            return Err(Error::shape(
                "decode step",
                format!("RoPE tables of {} dims for heads of {d}", 2 * self.rope.half),
            ));
        }
        let s = &g.stream;
        let (kp, vp) = (cache.k[layer].device_ptr(s).0, cache.v[layer].device_ptr(s).0);
        let (slot_p, lens_p) = (self.slots.device_ptr(s).0, self.lens.device_ptr(s).0);
        let qp = g.pm(&mut Gpu::m(&mut b.qkv, 0..rows * qkv_w));
        let bias = match model.params.layout.layers[layer].qkv_b {
            Some(at) => g.pr(&Gpu::r(self.p, at..at + qkv_w)),
            None => 0,
        };
        let (qs, ml) = (qkv_w as i32, cache.max_len as i32);
        // bias, RoPE and the cache store in one pass (cuda/decode_attention.cu)
        let args = [
            Arg::P(qp),
            Arg::I(qs),
            Arg::P(bias),
            Arg::P(kp),
            Arg::P(vp),
            Arg::P(slot_p),
            Arg::P(self.dev.positions.device_ptr(s).0),
            Arg::P(self.rope.cos.device_ptr(s).0),
            Arg::P(self.rope.sin.device_ptr(s).0),
            Arg::I(rows as i32),
            Arg::I(h as i32),
            Arg::I(kv as i32),
            Arg::I(d as i32),
            Arg::I(ml),
        ];
        let cache_type = if cache.bf16 { "_bf16" } else { "" };
        let store = format!("decode_qkv_store_f32{cache_type}");
        g.launch("decode_attention", &store, (rows as u32, 1, 1), (128, 1, 1), 0, &args)?;
        let (att, out_type) = match self.ops16 {
            true => (b.att16.device_ptr_mut(s).0, "_o16"),
            false => (g.pm(&mut Gpu::m(&mut b.att, 0..rows * hd)), ""),
        };
        let mut args = vec![
            Arg::P(att),
            Arg::I(hd as i32),
            Arg::P(qp),
            Arg::I(qs),
            Arg::P(kp),
            Arg::P(vp),
            Arg::P(slot_p),
            Arg::P(lens_p),
            Arg::I(h as i32),
            Arg::I(kv as i32),
            Arg::I(d as i32),
            Arg::I(ml),
        ];
        match decode_attn_entry(g.decode_attn(), h / kv.max(1), d) {
            // one block per (kv head, row) for the whole group, each row's positions in `splits`
            // blocks, merged after
            Some(dm) => {
                let (splits, split_len) = self.split;
                // (grown for `splits` by the step; not read with one split)
                let partial = b.partial.device_ptr_mut(s).0;
                args.extend([Arg::I(split_len as i32), Arg::P(partial)]);
                let attend = format!("decode_attn_gqa_{dm}_f32{cache_type}{out_type}");
                let grid = (kv as u32, rows as u32, splits as u32);
                g.launch("decode_attention", &attend, grid, (128, 1, 1), 0, &args)?;
                if splits == 1 {
                    return Ok(());
                }
                let args = [
                    Arg::P(att),
                    Arg::I(hd as i32),
                    Arg::P(partial),
                    Arg::I(splits as i32),
                    Arg::I(h as i32),
                    Arg::I(kv as i32),
                    Arg::I(d as i32),
                ];
                let merge = format!("decode_attn_merge_{dm}_{}", if self.ops16 { "o16" } else { "f32" });
                g.launch("decode_attention", &merge, (kv as u32, rows as u32, 1), (128, 1, 1), 0, &args)
            }
            None => {
                let attend = format!("decode_attn_f32{cache_type}{out_type}");
                g.launch("decode_attention", &attend, (h as u32, rows as u32, 1), (128, 1, 1), 0, &args)
            }
        }
    }

    fn swiglu(&mut self, model: &Model, rows: usize) -> Result<()> {
        let inter = model.cfg.intermediate_size;
        let (g, b) = (self.g, &mut *self.bufs);
        let gate_up = Gpu::r(&b.gate_up, 0..rows * 2 * inter);
        if !self.ops16 {
            return g.swiglu_forward(Gpu::m(&mut b.act, 0..rows * inter), gate_up, inter);
        }
        let args = [
            Arg::P(b.act16.device_ptr_mut(&g.stream).0),
            Arg::P(g.pr(&gate_up)),
            Arg::I(rows as i32),
            Arg::I(inter as i32),
        ];
        g.launch("swiglu", "swiglu_fwd_f32_o16", (inter.div_ceil(256) as u32, rows as u32, 1), (256, 1, 1), 0, &args)
    }

    fn gather(&mut self, model: &Model, logit_rows: &[usize]) -> Result<()> {
        if logit_rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        // through the normed-rows buffer (free until the final norm writes it)
        let c = model.cfg.hidden_size;
        let b = &mut *self.bufs;
        for (dst, &src) in logit_rows.iter().enumerate() {
            self.g.copy(Gpu::m(&mut b.ln, dst * c..(dst + 1) * c), Gpu::r(&b.x, src * c..(src + 1) * c))?;
        }
        let n = logit_rows.len() * c;
        self.g.copy(Gpu::m(&mut b.x, 0..n), Gpu::r(&b.ln, 0..n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Padding rows follow the real ones untouched, decode token 0 into the spare slot at distinct
    /// positions 0, 1, .. (wrapping only past the slot's room), and attend to their own position.
    #[test]
    fn padding_rows_decode_into_the_spare_slot() {
        let mut positions = vec![5, 0, 9];
        let (tokens, slot_ids, lens) = pad_rows(&[7, 8, 9], &[2, 0, 1], &mut positions, (8, 3, 4));
        assert_eq!(tokens, [7, 8, 9, 0, 0, 0, 0, 0]);
        assert_eq!(slot_ids, [2, 0, 1, 3, 3, 3, 3, 3]);
        assert_eq!(positions, [5, 0, 9, 0, 1, 2, 3, 0]);
        assert_eq!(lens, [6, 1, 10, 1, 2, 3, 4, 1]);
        let mut positions = vec![1, 2];
        let unpadded = pad_rows(&[4, 4], &[0, 0], &mut positions, (2, 1, 16));
        assert_eq!(unpadded, (vec![4, 4], vec![0, 0], vec![2, 3]));
        assert_eq!(positions, [1, 2]);
    }
}
