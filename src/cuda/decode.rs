//! Generation on the GPU: [`GpuDecoder`] runs decode steps of B new rows from a model's weights on
//! the device (a [`DeviceWeights`], read in place: a trained [`crate::cuda::GpuModel`]'s, or a
//! frozen one's for generation alone) against a [`GpuKvCache`]: the layer stack of
//! `model::decode_stack` (the CPU decode's too) over the GPU's operations (`cuda::decode_step`).
//! A slot's rows take consecutive positions, so one step prefills whole prompts for some slots
//! while decoding one token for others; only the rows whose next token is wanted go through the
//! LM head. `step_sampled` then draws those tokens on the device (cuda/sample.cu). Steps may be
//! padded to a bucket of rows and replayed as CUDA graphs (`cuda::graphs`). Generation with
//! continuous batching is built on it in cuda/generate.rs.

use crate::cuda::backend::GpuRope;
use crate::cuda::decode_attn::{decode_attn_entry, decode_splits, partial_len};
use crate::cuda::decode_step::{GpuStep, RowPtrs, StepBufs};
use crate::cuda::device::{drv, Gpu};
use crate::cuda::graphs::{self, Action, StepGraphs};
use crate::cuda::image::Bf16Image;
use crate::cuda::kv_cache::GpuKvCache;
use crate::cuda::model::DeviceWeights;
use crate::cuda::sample::{check_uniforms, sample_rows_at, SampleBufs};
use crate::error::{Error, Result};
use crate::model::decode_stack::{assign_positions, check_step, decode_stack};
use crate::model::Model;
use crate::rollout::sampler::{Sampled, SamplingParams};
use crate::rollout::slots::StepInput;
use crate::tensor::Backend;
use crate::tensor::Dtype;
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream, DevicePtr};
use std::sync::Arc;

/// The step buffers, row inputs and graphs of generation on one device (the weights are passed to
/// each step).
pub struct GpuDecoder {
    gpu: Arc<Gpu>,
    rope: GpuRope,
    bufs: StepBufs,
    sampling: SampleBufs,
    /// The step's rows on the host (reused: no allocation per token step).
    host: HostRows,
    /// The step's rows on the device (tokens, positions, slots, attended lengths), reused.
    rows: Option<RowsDev>,
    /// Decode steps captured as CUDA graphs (opt-in; `cuda::graphs`).
    graphs: StepGraphs<CudaGraph>,
    /// Whether steps whose every row picks a token are padded to their bucket (`graphs::bucket`):
    /// with graphs on, unless set otherwise.
    pad: bool,
}

/// A decode step's per-row inputs in device memory: one buffer of 32-bit words with room for
/// `cap` rows, [`RowPart`] k at words k·cap.. (fixed offsets, so the addresses a captured step bakes
/// in hold for every row count), filled from the host's [`HostRows::words`] in one copy a step;
/// grown by reallocation (no allocation per token).
struct RowsDev {
    words: CudaSlice<u32>,
}

/// The parts of [`RowsDev`], in order: tokens, positions, slots, attended lengths (position + 1),
/// the logit rows' uniforms (f64, two words each: two parts), then the logit rows themselves (read
/// by the gather of a step with prompt rows).
#[derive(Debug, Clone, Copy)]
enum RowPart {
    Tokens = 0,
    Positions = 1,
    Slots = 2,
    Lens = 3,
    Uniforms = 4,
    LogitRows = 6,
}

/// Words per row of [`RowsDev`].
const ROW_WORDS: usize = 7;

impl RowsDev {
    /// Buffers for at least `rows` rows, reusing `old` when it has room.
    fn with_room(g: &Gpu, old: Option<RowsDev>, rows: usize) -> Result<RowsDev> {
        match old {
            Some(r) if r.cap() >= rows => Ok(r),
            _ => {
                let cap = rows.next_power_of_two().max(64);
                Ok(RowsDev { words: g.alloc(ROW_WORDS * cap, "the decode step's rows")? })
            }
        }
    }

    /// Rows the buffer has room for.
    fn cap(&self) -> usize {
        self.words.len() / ROW_WORDS
    }

    /// The device address of `part`.
    fn at(&self, g: &Gpu, part: RowPart) -> u64 {
        g.ids_ptr(&self.words, part as usize * self.cap())
    }

    /// The addresses the step's kernels read.
    fn ptrs(&self, g: &Gpu) -> RowPtrs {
        RowPtrs {
            tokens: self.at(g, RowPart::Tokens),
            positions: self.at(g, RowPart::Positions),
            slots: self.at(g, RowPart::Slots),
            lens: self.at(g, RowPart::Lens),
            logit_rows: self.at(g, RowPart::LogitRows),
        }
    }
}

impl GpuDecoder {
    /// A decoder for `model`'s shape (its RoPE tables on the device; buffers grow with the steps).
    pub fn new(gpu: &Arc<Gpu>, model: &Model) -> Result<Self> {
        let e = || gpu.empty();
        let a = || gpu.act_empty();
        let bufs = StepBufs {
            x: e()?,
            ln: a()?,
            rstd: e()?,
            qkv: e()?,
            att: a()?,
            gate_up: a()?,
            act: a()?,
            logits: e()?,
            gather: e()?,
            partial: e()?,
        };
        Ok(GpuDecoder {
            gpu: gpu.clone(),
            rope: gpu.rope(&model.rope)?,
            bufs,
            sampling: SampleBufs::new(gpu, 1)?,
            host: HostRows::default(),
            rows: None,
            graphs: StepGraphs::new(graphs::requested()),
            pad: graphs::requested(),
        })
    }

    /// Append `tokens[i]` to cache slot `slots[i]` (a slot's rows take its next positions in
    /// order) and return the next-token logits of every row ([B, V], on the host), decoding from
    /// `w`.
    pub fn step(
        &mut self,
        model: &Model,
        w: DeviceWeights<'_>,
        tokens: &[u32],
        slots: &[usize],
        cache: &mut GpuKvCache,
    ) -> Result<Vec<f32>> {
        let rows: Vec<usize> = (0..tokens.len()).collect();
        self.forward(model, w, StepInput { tokens, slots, logit_rows: &rows, uniforms: &[] }, cache)?;
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
        w: DeviceWeights<'_>,
        rows: StepInput<'_>,
        cache: &mut GpuKvCache,
        params: &SamplingParams,
    ) -> Result<Vec<Sampled>> {
        let (n, uniforms) = (rows.logit_rows.len(), rows.uniforms);
        if uniforms.len() != n {
            return Err(Error::shape("decode step", format!("{} uniforms for {n} logit rows", uniforms.len())));
        }
        check_uniforms(uniforms, params)?;
        self.forward(model, w, rows, cache)?;
        let (v, at) = match &self.rows {
            Some(dev) => (model.cfg.vocab_size, dev.at(&self.gpu, RowPart::Uniforms)),
            None => return Err(Error::device("decode step", "no row buffers after a step")),
        };
        let logits = Gpu::r(&self.bufs.logits, 0..n * v);
        sample_rows_at(&self.gpu, &logits, v, (at, n), params, &mut self.sampling)
    }

    /// The decode step's forward: the next-token logits of `logit_rows` stay in `bufs.logits`; the
    /// uniforms (one per logit row, or none) go up with the rows, for the sampler.
    fn forward(
        &mut self,
        model: &Model,
        w: DeviceWeights<'_>,
        input: StepInput<'_>,
        cache: &mut GpuKvCache,
    ) -> Result<()> {
        let StepInput { tokens, slots, logit_rows, uniforms } = input;
        let cfg = &model.cfg;
        check_step(model, tokens, slots, logit_rows)?;
        if w.params.len() != model.params.data.len() {
            let why = format!("{} weights on the device for a model of {}", w.params.len(), model.params.data.len());
            return Err(Error::shape("decode step", why));
        }
        let b = tokens.len();
        if b == 0 {
            return Err(Error::shape("decode step", "no rows"));
        }
        // the decode kernels put rows on grid y, whose limit is 65,535
        if b > 65_535 {
            return Err(Error::shape("decode step", format!("{b} rows; at most 65,535 (lower max_batch)")));
        }
        let max_pos = cache.max_len.min(cfg.max_position_embeddings);
        let h = &mut self.host;
        assign_positions(slots, &cache.len, max_pos, &mut h.positions, &mut h.next)?;
        // (padding only serves the graphs, which a tensor-parallel step does not use)
        let (padded, all_rows) = step_rows(self.pad && model.tp.is_none(), b, logit_rows);
        h.pad(tokens, slots, (padded, cache.slots, max_pos));
        let g = &*self.gpu;
        let mut rows = RowsDev::with_room(g, self.rows.take(), padded)?;
        let st = &g.stream;
        let b = padded;
        // every row input in one copy
        let words = h.words(rows.cap(), uniforms, (!all_rows).then_some(logit_rows));
        st.memcpy_htod(words, &mut rows.words.slice_mut(0..words.len())).map_err(drv("upload"))?;
        let (tokens_p, logit_rows) = (&h.tokens[..], if all_rows { &h.all[..padded] } else { logit_rows });
        let (c, inter, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let n = logit_rows.len();
        let bf = &mut self.bufs;
        for (buf, len) in [
            (&mut bf.x, b * c),
            (&mut bf.gather, b * c),
            (&mut bf.rstd, b),
            (&mut bf.qkv, b * cfg.qkv_dim()),
            (&mut bf.logits, n.max(1) * v),
        ] {
            g.grow(buf, len)?;
        }
        // bf16 products: their first operands are written in bf16 (`_o16` kernels)
        let ops16 = g.dtype() == Dtype::Bf16;
        g.act_fit(&mut bf.ln, b * c, ops16)?;
        g.act_fit(&mut bf.att, b * cfg.attn_dim(), ops16)?;
        g.act_fit(&mut bf.gate_up, b * 2 * inter, ops16)?;
        g.act_fit(&mut bf.act, b * inter, ops16)?;
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
        // (a tensor-parallel step all-reduces through NCCL between its kernels: run eagerly)
        let graphs = self.graphs.enabled() && all_rows && model.tp.is_none();
        let fingerprint = match graphs {
            true => step_fingerprint(g, (w.params, w.image), bf, &rows, cache),
            false => Vec::new(),
        };
        // a step above the largest bucket runs eagerly at its own row count
        let action = self.graphs.plan(b, graphs && b <= graphs::MAX_BUCKET, &fingerprint);
        let mut step =
            GpuStep { g, p: w.params, rope: &self.rope, bufs: bf, cache: &*cache, rows: rows.ptrs(g), split };
        let done = match action {
            Action::Eager => decode_stack(model, &mut step, tokens_p, logit_rows),
            Action::Replay => match self.graphs.get(b) {
                Some(graph) => graph.launch().map_err(drv("graph launch")),
                None => decode_stack(model, &mut step, tokens_p, logit_rows),
            },
            Action::Capture => {
                // a graph that launches is kept; where the driver or a library refused the capture,
                // or its graph failed to launch, this and every later step run eagerly (padding,
                // which only serves the graphs, stops too), and the reason is kept (graphs_refused)
                let captured = capture(st, || decode_stack(model, &mut step, tokens_p, logit_rows))
                    .and_then(|graph| graph.launch().map_err(drv("graph launch")).map(|()| graph));
                match captured {
                    Ok(graph) => {
                        self.graphs.insert(b, graph);
                        Ok(())
                    }
                    Err(e) => {
                        self.graphs.give_up(e.to_string());
                        self.pad = false;
                        decode_stack(model, &mut step, tokens_p, logit_rows)
                    }
                }
            }
        };
        self.rows = Some(rows);
        done?;
        cache.len.copy_from_slice(&self.host.next);
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

    /// Why decode graphs were turned off for this decoder (a refused capture or a failed launch of
    /// its graph), if they were.
    pub fn graphs_refused(&self) -> Option<&str> {
        self.graphs.refused()
    }

    /// The device this decoder runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
}

/// The rows a step of `b` rows decodes, and whether its logit rows are all of them. A step where
/// every row picks a token (`logit_rows` = 0, 1, .., b - 1: the steady state) is one a graph may
/// replay: with `pad` it is padded up to its bucket with rows decoding token 0 into the spare slot
/// (positions 0, 1, ..: never read), whose logits are computed too (and never read). Any other
/// step (one with prompt rows) decodes its `b` rows and computes the logits of `logit_rows` only.
fn step_rows(pad: bool, b: usize, logit_rows: &[usize]) -> (usize, bool) {
    let uniform = logit_rows.len() == b && logit_rows.iter().enumerate().all(|(i, &r)| i == r);
    let padded = if pad && uniform { graphs::bucket(b) } else { b };
    (padded, uniform)
}

/// A decode step's rows on the host, reused from step to step: each row's position and each
/// slot's length after the step (`assign_positions`), then the rows padded to the step's row
/// count ([`HostRows::pad`]) as they are uploaded.
#[derive(Debug, Default)]
struct HostRows {
    positions: Vec<u32>,
    next: Vec<usize>,
    tokens: Vec<u32>,
    slots: Vec<i32>,
    lens: Vec<i32>,
    /// 0, 1, 2, ..: the logit rows of a padded step.
    all: Vec<usize>,
    /// The rows as [`RowsDev`] holds them.
    packed: Vec<u32>,
}

impl HostRows {
    /// The rows `tokens` in `slots` (their positions already assigned) padded to `padded` rows:
    /// row j of the padding decodes token 0 into slot `spare` at position j (modulo `max_pos`), so
    /// padding rows never touch a real slot, and each writes its own cache position wherever the
    /// spare slot has room for them; then every row's attended length.
    fn pad(&mut self, tokens: &[u32], slots: &[usize], (padded, spare, max_pos): (usize, usize, usize)) {
        self.tokens.clear();
        self.tokens.extend_from_slice(tokens);
        self.slots.clear();
        self.slots.extend(slots.iter().map(|&s| s as i32));
        for j in 0..padded.saturating_sub(tokens.len()) {
            self.tokens.push(0);
            self.slots.push(spare as i32);
            self.positions.push((j % max_pos) as u32);
        }
        self.lens.clear();
        self.lens.extend(self.positions.iter().map(|&p| p as i32 + 1));
        let have = self.all.len();
        self.all.extend(have..padded.max(have));
    }

    /// The padded rows, `uniforms` and the `gather`ed logit rows (a step with prompt rows) laid
    /// out as a [`RowsDev`] of `cap` rows holds them, up to the last part given.
    fn words(&mut self, cap: usize, uniforms: &[f64], gather: Option<&[usize]>) -> &[u32] {
        let b = self.tokens.len();
        let end = match gather {
            Some(rows) => RowPart::LogitRows as usize * cap + rows.len(),
            None if uniforms.is_empty() => 3 * cap + b,
            None => 4 * cap + 2 * uniforms.len(),
        };
        self.packed.clear();
        self.packed.resize(end, 0);
        let w = &mut self.packed;
        w[..b].copy_from_slice(&self.tokens);
        w[cap..cap + b].copy_from_slice(&self.positions);
        for (k, (&s, &l)) in self.slots.iter().zip(&self.lens).enumerate() {
            (w[2 * cap + k], w[3 * cap + k]) = (s as u32, l as u32);
        }
        for (k, u) in uniforms.iter().enumerate() {
            let bits = u.to_bits();
            // little-endian: the low word first, as the device reads an f64
            (w[4 * cap + 2 * k], w[4 * cap + 2 * k + 1]) = (bits as u32, (bits >> 32) as u32);
        }
        for (k, &r) in gather.unwrap_or_default().iter().enumerate() {
            w[RowPart::LogitRows as usize * cap + k] = r as u32;
        }
        &self.packed
    }
}

/// Every device address and setting a captured decode step bakes in, besides its row count: the
/// weights and their image, the products' dtype, the decode attention's kernel and forced split
/// length (with the cache length, the device and the row count they fix each row's splits), the
/// step buffers, the row inputs, each layer's cache, the device's scratch buffers. Graphs are kept
/// per row count under one fingerprint, so nothing that depends on the row count may enter it.
fn step_fingerprint(
    g: &Gpu,
    (params, image): (&CudaSlice<f32>, Option<&Bf16Image>),
    b: &StepBufs,
    rows: &RowsDev,
    cache: &GpuKvCache,
) -> Vec<u64> {
    let st = &g.stream;
    let mut f = vec![
        params.device_ptr(st).0,
        image.map_or(0, |i| i.ptr()),
        g.dtype() as u64,
        g.decode_attn() as u64,
        g.decode_split() as u64,
    ];
    for buf in [&b.x, &b.rstd, &b.qkv, &b.logits, &b.gather, &b.partial] {
        f.push(buf.device_ptr(st).0);
    }
    for buf in [&b.ln, &b.att, &b.gate_up, &b.act] {
        f.push(buf.ptr(g));
    }
    f.extend([rows.words.device_ptr(st).0, rows.cap() as u64]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Padding rows follow the real ones untouched, decode token 0 into the spare slot at distinct
    /// positions 0, 1, .. (wrapping only past the slot's room), and attend to their own position;
    /// a later, unpadded step reuses the buffers with nothing left over.
    #[test]
    fn padding_rows_decode_into_the_spare_slot() {
        let mut h = HostRows { positions: vec![5, 0, 9], ..HostRows::default() };
        h.pad(&[7, 8, 9], &[2, 0, 1], (8, 3, 4));
        assert_eq!(h.tokens, [7, 8, 9, 0, 0, 0, 0, 0]);
        assert_eq!(h.slots, [2, 0, 1, 3, 3, 3, 3, 3]);
        assert_eq!(h.positions, [5, 0, 9, 0, 1, 2, 3, 0]);
        assert_eq!(h.lens, [6, 1, 10, 1, 2, 3, 4, 1]);
        assert_eq!(h.all[..8], [0, 1, 2, 3, 4, 5, 6, 7]);
        h.positions = vec![1, 2];
        h.pad(&[4, 4], &[0, 0], (2, 1, 16));
        assert_eq!((&h.tokens[..], &h.slots[..], &h.lens[..]), (&[4u32, 4][..], &[0, 0][..], &[2, 3][..]));
        assert_eq!(h.positions, [1, 2]);
    }

    /// Only a step whose every row picks a token is padded and computes the logits of all its
    /// rows; a step with prompt rows keeps its own logit rows, padded or not (the mixed step of a
    /// continuous batch: 11 rows, three of them last prompt tokens).
    #[test]
    fn only_a_step_where_every_row_picks_a_token_is_padded() {
        for pad in [false, true] {
            assert_eq!(step_rows(pad, 11, &[2, 9, 10]), (11, false), "pad {pad}");
            assert_eq!(step_rows(pad, 3, &[0, 1]), (3, false), "pad {pad}");
            assert_eq!(step_rows(pad, 3, &[0, 2]), (3, false), "pad {pad}");
        }
        assert_eq!(step_rows(true, 5, &[0, 1, 2, 3, 4]), (8, true));
        assert_eq!(step_rows(false, 5, &[0, 1, 2, 3, 4]), (5, true));
        assert_eq!(step_rows(true, 64, &(0..64).collect::<Vec<_>>()), (64, true));
    }

    /// One upload holds every row input at its part's fixed offset (a multiple of the capacity),
    /// the slots and lengths as their i32 bits, each uniform as its f64's two words, low first;
    /// without uniforms the copy ends after the lengths.
    #[test]
    fn the_row_inputs_go_up_in_one_buffer_at_fixed_offsets() {
        let mut h = HostRows { positions: vec![5, 0], ..HostRows::default() };
        h.pad(&[7, 8], &[2, 0], (3, 3, 4));
        let cap = 64;
        let u = [0.25f64, 0.7];
        let w = h.words(cap, &u, None).to_vec();
        assert_eq!(w.len(), 4 * cap + 4);
        let part = |p: RowPart, n: usize| w[p as usize * cap..p as usize * cap + n].to_vec();
        assert_eq!(part(RowPart::Tokens, 3), [7, 8, 0]);
        assert_eq!(part(RowPart::Positions, 3), [5, 0, 0]);
        assert_eq!(part(RowPart::Slots, 3), [2, 0, 3]);
        assert_eq!(part(RowPart::Lens, 3), [6, 1, 1]);
        let uw = part(RowPart::Uniforms, 4);
        for (k, &want) in u.iter().enumerate() {
            let bytes: Vec<u8> = uw[2 * k..2 * k + 2].iter().flat_map(|x| x.to_le_bytes()).collect();
            assert_eq!(f64::from_le_bytes(bytes.try_into().unwrap()), want);
        }
        assert!(ROW_WORDS * cap >= w.len());
        assert_eq!(h.words(cap, &[], None).len(), 3 * cap + 3);
        // a step with prompt rows: its logit rows after the uniforms, for the gather
        let w = h.words(cap, &u[..1], Some(&[2])).to_vec();
        assert_eq!(w.len(), 6 * cap + 1);
        assert_eq!(w[..3], [7, 8, 0]);
        assert_eq!((w[4 * cap], w[4 * cap + 1]), (0.25f64.to_bits() as u32, (0.25f64.to_bits() >> 32) as u32));
        assert_eq!(w[RowPart::LogitRows as usize * cap], 2);
        assert!(ROW_WORDS * cap >= w.len());
    }
}
