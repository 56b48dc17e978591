//! Attention statistics for AttnRL (forward context influence, FCI) and ROLL's attention-rhythm
//! credit (per-head look-back, WAAD, FAI), computed after a normal `Model::forward` from the q|k
//! rows (RoPE applied) and row log-sum-exp it leaves in the `Workspace`:
//! P_{t,s} = exp(scale·q_t·k_s − lse_t), recomputed in BLOCK_ROWS × 256 tiles. No T×T map is
//! ever built: a task's scratch is one tile, its outputs O(S + T) per head.
//!
//! Conventions (one sequence of n tokens: prompt 0..r, response r..n, T = n − r; indices are
//! token positions inside the sequence; a head is (layer, query head), keys shared by its GQA group):
//! - Steps: step k = `bounds[k]..bounds[k+1]`, step 0 = the prompt (`bounds[1]` = r).
//!   a_{j,k} = Σ_{t∈S_j} Σ_{s∈S_k} P_{t,s} / (|S_j|·|S_k|);  y_k^{l,h} = Σ_{j ≥ k+Δ} a_{j,k};
//!   y_k = max over the FCI layers and all their heads; y_0 = y_1 = 0, and y_k = 0 for
//!   k > end_of_thinking. (Only y^{l,h} is accumulated, row by row: O(S) per head instead of
//!   the S×S block matrix, same sums.)
//! - Look-back: d^{l,h} = (1/T) Σ_{t=r}^{n−1} Σ_{s=0}^{t} P_{t,s}·(t − s): response rows, every
//!   key including the prompt (0 when T = 0).
//! - WAAD_i (response token i, t = r + i) = Σ_{s=0}^{t} Ā^loc_{t,s}·min(t − s, W). Prompt keys
//!   count, at their capped distance: attention that leaves the response is "far", not absent.
//! - FAI_i = mean over response rows u ∈ [i + h_lo, min(T − 1, i + h_hi)] of Ā^glob_{r+u, r+i}:
//!   the paper's o_1..o_T is 0-based here, so the window is clipped at the last response token
//!   and the mean is over the rows that exist; FAI_i = 0 when the window is empty (i + h_lo ≥ T).
//! - Ā^loc / Ā^glob = mean of P over the local / global heads of `select_heads`, chosen per
//!   sequence from its own look-back among the (rhythm layer, head) pairs.

pub(crate) mod pass;

use crate::error::{Error, Result};
use crate::model::{Batch, Model, Workspace};
use pass::{LayerRole, PassParams, SeqPlan, TaskOut};
use rayon::prelude::*;

/// What to compute and on which layers (defaults: ALGORITHMS.md §1 and §7).
#[derive(Debug, Clone, PartialEq)]
pub struct StatsConfig {
    /// Compute FCI (for sequences that give step bounds).
    pub fci: bool,
    /// Layers whose heads FCI maximises over; empty = all layers.
    pub fci_layers: Vec<usize>,
    /// Δ: a_{j,k} counts towards y_k for j ≥ k + Δ.
    pub delta: usize,
    /// Compute look-back, WAAD and FAI.
    pub rhythm: bool,
    /// Layers of the rhythm statistics; empty = `default_rhythm_layers(L, 5)`.
    pub rhythm_layers: Vec<usize>,
    /// W: WAAD caps distances at W tokens.
    pub window: usize,
    /// FAI averages rows h_lo..=h_hi tokens after the key.
    pub h_lo: usize,
    pub h_hi: usize,
    /// Fractions of the rhythm heads (lowest / highest look-back) taken as local / global.
    pub local_frac: f64,
    pub global_frac: f64,
    /// Keep each rhythm head's WAAD and FAI in `SeqStats` (O(T·heads) per sequence), so heads
    /// can be chosen again over a whole batch with `combine_rhythm`.
    pub keep_head_partials: bool,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            fci: true,
            fci_layers: Vec::new(),
            delta: 4,
            rhythm: true,
            rhythm_layers: Vec::new(),
            window: 10,
            h_lo: 10,
            h_hi: 100,
            local_frac: 0.3,
            global_frac: 0.3,
            keep_head_partials: false,
        }
    }
}

/// Step structure of one sequence of the batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeqSteps {
    /// Step k = `bounds[k]..bounds[k+1]` (token indices within the sequence, strictly increasing,
    /// `bounds[0]` = 0, last = sequence length, `bounds[1]` = response_start). Empty: no FCI for it.
    pub bounds: Vec<usize>,
    /// First response token r.
    pub response_start: usize,
    /// Step holding an end-of-thinking marker: y_k = 0 for every later step k.
    pub end_of_thinking: Option<usize>,
}

/// One attention head: layer index and query head index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadId {
    pub layer: usize,
    pub head: usize,
}

/// Local and global heads as indices into a look-back vector (index = rhythm-layer position × H
/// + head), each list ascending.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeadGroups {
    pub local: Vec<usize>,
    pub global: Vec<usize>,
}

/// Statistics of one sequence.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeqStats {
    /// `[S]` y_k per step (empty when FCI is off or the sequence gave no bounds).
    pub fci: Vec<f32>,
    /// `[S]` the head attaining y_k (None where y_k is zeroed or every head gives 0).
    pub fci_argmax: Vec<Option<HeadId>>,
    /// [rhythm layers × H] mean look-back d^{l,h}, in the order of the rhythm layer list.
    pub lookback: Vec<f32>,
    /// Heads chosen from `lookback`.
    pub heads: HeadGroups,
    /// `[T]` WAAD per response token.
    pub waad: Vec<f32>,
    /// `[T]` FAI per response token.
    pub fai: Vec<f32>,
    /// [rhythm layers × H, T] per-head WAAD and FAI (only with `keep_head_partials`).
    pub head_waad: Vec<f32>,
    pub head_fai: Vec<f32>,
}

/// `count` layers evenly spaced in [⌊L/3⌋, ⌊2L/3⌋] (rounded, duplicates removed, ascending).
pub fn default_rhythm_layers(num_layers: usize, count: usize) -> Vec<usize> {
    let (lo, hi) = (num_layers / 3, (2 * num_layers / 3).min(num_layers.saturating_sub(1)));
    let mut out: Vec<usize> = match count {
        0 => Vec::new(),
        1 => vec![(lo + hi) / 2],
        _ => (0..count).map(|i| lo + (2 * i * (hi - lo) + count - 1) / (2 * (count - 1))).collect(),
    };
    out.dedup();
    out
}

/// Split heads by look-back: the round(local_frac·n) lowest are local, the round(global_frac·n)
/// highest global (each at least 1 when n > 0; ties go to the lower index for "local" and the
/// higher index for "global"). Fractions must lie in (0, 1].
pub fn select_heads(lookback: &[f32], local_frac: f64, global_frac: f64) -> Result<HeadGroups> {
    for (name, f) in [("local_frac", local_frac), ("global_frac", global_frac)] {
        if !(f > 0.0 && f <= 1.0) {
            return Err(Error::Invalid(format!("attention stats: {name} = {f} must lie in (0, 1]")));
        }
    }
    let n = lookback.len();
    if let Some(i) = lookback.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!("attention stats: look-back {i} is {} (not finite)", lookback[i])));
    }
    let take = |f: f64| ((f * n as f64).round() as usize).clamp(1, n.max(1)).min(n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| lookback[a].total_cmp(&lookback[b]).then(a.cmp(&b)));
    let mut local = order[..take(local_frac)].to_vec();
    let mut global = order[n - take(global_frac)..].to_vec();
    local.sort_unstable();
    global.sort_unstable();
    Ok(HeadGroups { local, global })
}

/// Response rows u (inclusive range, response indices) whose attention FAI_i averages, or None
/// when the window [i + h_lo, min(T − 1, i + h_hi)] is empty.
pub fn fai_rows(i: usize, t_len: usize, h_lo: usize, h_hi: usize) -> Option<(usize, usize)> {
    let first = i + h_lo;
    (first < t_len && h_lo <= h_hi).then(|| (first, (i + h_hi).min(t_len - 1)))
}

/// WAAD and FAI of one sequence from per-head partials ([heads, T] each, FAI already a per-head
/// mean) and chosen groups: WAAD = mean of local heads' WAAD, FAI = mean of global heads' FAI.
pub fn combine_rhythm(
    head_waad: &[f32],
    head_fai: &[f32],
    t_len: usize,
    groups: &HeadGroups,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let heads = head_waad.len().checked_div(t_len).unwrap_or(0);
    if head_waad.len() != heads * t_len || head_fai.len() != head_waad.len() {
        return Err(Error::shape(
            "attention stats",
            format!(
                "per-head partials of {} and {} values do not split into rows of T = {t_len}",
                head_waad.len(),
                head_fai.len()
            ),
        ));
    }
    let mean_of = |src: &[f32], idx: &[usize]| -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; t_len];
        if t_len == 0 {
            return Ok(out);
        }
        if let Some(&bad) = idx.iter().find(|&&h| h >= heads) {
            return Err(Error::shape("attention stats", format!("head index {bad} but only {heads} heads")));
        }
        let inv = 1.0 / idx.len().max(1) as f32;
        for &h in idx {
            for (o, v) in out.iter_mut().zip(&src[h * t_len..(h + 1) * t_len]) {
                *o += v * inv;
            }
        }
        Ok(out)
    };
    Ok((mean_of(head_waad, &groups.local)?, mean_of(head_fai, &groups.global)?))
}

/// Resolve a layer list (empty = `default`), rejecting indices ≥ L and repeats.
fn resolve_layers(list: &[usize], default: Vec<usize>, num_layers: usize, key: &str) -> Result<Vec<usize>> {
    let layers = if list.is_empty() { default } else { list.to_vec() };
    for (i, &l) in layers.iter().enumerate() {
        if l >= num_layers {
            return Err(Error::Invalid(format!("attention stats: {key} has layer {l}, the model has {num_layers}")));
        }
        if layers[..i].contains(&l) {
            return Err(Error::Invalid(format!("attention stats: {key} lists layer {l} twice")));
        }
    }
    Ok(layers)
}

/// Check one sequence's steps and build its plan.
pub(crate) fn plan_seq<'a>(idx: usize, start: usize, len: usize, st: &'a SeqSteps, fci: bool) -> Result<SeqPlan<'a>> {
    let bad = |msg: String| Err(Error::shape(format!("attention stats: sequence {idx}"), msg));
    let r = st.response_start;
    if r > len {
        return bad(format!("response_start {r} is past the sequence end ({len} tokens)"));
    }
    let b = if fci { st.bounds.as_slice() } else { &[] };
    if !b.is_empty() {
        if b.len() < 2 || b[0] != 0 || b[b.len() - 1] != len {
            return bad(format!("step bounds {:?} must run from 0 to the sequence length {len}", b));
        }
        if let Some(w) = b.windows(2).find(|w| w[0] >= w[1]) {
            return bad(format!("step bounds must increase strictly, got {} then {}", w[0], w[1]));
        }
        if b[1] != r {
            return bad(format!("step 0 (the prompt) ends at {} but response_start is {r}", b[1]));
        }
    }
    let s_n = b.len().saturating_sub(1);
    let kmax = match st.end_of_thinking {
        Some(e) if fci && s_n > 0 && e >= s_n => return bad(format!("end_of_thinking step {e} but only {s_n} steps")),
        Some(e) => e.min(s_n.saturating_sub(1)),
        None => s_n.saturating_sub(1),
    };
    let inv_len = b.windows(2).map(|w| 1.0 / (w[1] - w[0]) as f64).collect();
    Ok(SeqPlan { start, len, resp: r, bounds: b, inv_len, kmax })
}

/// What a statistics pass over a batch needs, checked: the rhythm layer list (its order is the
/// order of the look-back entries), every layer's role, and each sequence's plan (shared by the CPU pass and the CUDA one).
pub(crate) struct Prepared<'a> {
    pub rhythm_layers: Vec<usize>,
    pub roles: Vec<LayerRole>,
    pub plans: Vec<SeqPlan<'a>>,
}

/// Check `steps` and `cfg` against a batch of a model with `num_layers` layers and plan the pass.
pub(crate) fn prepare<'a>(
    num_layers: usize,
    batch: &Batch,
    steps: &'a [SeqSteps],
    cfg: &StatsConfig,
) -> Result<Prepared<'a>> {
    let (l_n, n_seq, starts) = (num_layers, batch.num_seqs(), &batch.seq_starts);
    if steps.len() != n_seq {
        return Err(Error::shape("attention stats", format!("{} step lists for {n_seq} sequences", steps.len())));
    }
    if cfg.h_lo > cfg.h_hi {
        return Err(Error::Invalid(format!("attention stats: h_lo = {} exceeds h_hi = {}", cfg.h_lo, cfg.h_hi)));
    }
    if cfg.rhythm {
        select_heads(&[], cfg.local_frac, cfg.global_frac)?;
    }
    let fci_layers =
        if cfg.fci { resolve_layers(&cfg.fci_layers, (0..l_n).collect(), l_n, "fci_layers")? } else { vec![] };
    let rhythm_layers = if cfg.rhythm {
        resolve_layers(&cfg.rhythm_layers, default_rhythm_layers(l_n, 5), l_n, "rhythm_layers")?
    } else {
        vec![]
    };
    let roles: Vec<LayerRole> = (0..l_n)
        .map(|layer| LayerRole {
            layer,
            fci: fci_layers.contains(&layer),
            rhythm: rhythm_layers.iter().position(|&x| x == layer),
        })
        .filter(|r| r.fci || r.rhythm.is_some())
        .collect();
    let plans = (0..n_seq)
        .map(|s| plan_seq(s, starts[s], starts[s + 1] - starts[s], &steps[s], cfg.fci))
        .collect::<Result<Vec<_>>>()?;
    Ok(Prepared { rhythm_layers, roles, plans })
}

/// FCI, look-back, WAAD and FAI of every sequence of `batch`, after `model.forward(batch, ws)`.
/// `steps[s]` describes sequence s. See the module doc for the exact definitions.
pub fn attention_stats(
    model: &Model,
    batch: &Batch,
    ws: &Workspace,
    steps: &[SeqSteps],
    cfg: &StatsConfig,
) -> Result<Vec<SeqStats>> {
    let mc = &model.cfg;
    let (l_n, h_n, kv_n) = (mc.num_layers, mc.num_heads, mc.num_kv_heads);
    let n = batch.len();
    let starts = &batch.seq_starts;
    let partitions = starts.first().is_some_and(|&s| s == 0) && starts.windows(2).all(|w| w[0] <= w[1]);
    if !(partitions && starts.last() == Some(&n) || starts.is_empty() && n == 0) {
        return Err(Error::shape(
            "attention stats",
            format!("batch seq_starts {starts:?} do not partition {n} tokens"),
        ));
    }
    if ws.layers.len() != l_n || ws.capacity() < n {
        return Err(Error::shape(
            "attention stats",
            format!(
                "workspace holds {} layers × {} tokens, the forward needs {l_n} × {n}",
                ws.layers.len(),
                ws.capacity()
            ),
        ));
    }
    let n_seq = batch.num_seqs();
    let Prepared { rhythm_layers, roles, plans } = prepare(l_n, batch, steps, cfg)?;

    let shape = crate::attention::AttnShape { num_heads: h_n, num_kv_heads: kv_n, head_dim: mc.head_dim };
    let params = PassParams { shape, delta: cfg.delta, window: cfg.window, h_lo: cfg.h_lo, h_hi: cfg.h_hi };
    let (qkv_w, group) = (mc.qkv_dim(), h_n / kv_n);
    let tasks: Vec<(usize, usize, usize)> = (0..n_seq)
        .filter(|&s| plans[s].len > 0)
        .flat_map(|s| (0..roles.len()).flat_map(move |r| (0..kv_n).map(move |g| (s, r, g))))
        .collect();
    let outs: Vec<TaskOut> = tasks
        .par_iter()
        .map(|&(s, r, g)| {
            let a = &ws.layers[roles[r].layer];
            pass::run_task(&a.qkv[..n * qkv_w], &a.lse[..n * h_n], &plans[s], (r, roles[r]), g, params, s)
        })
        .collect();

    let mut results: Vec<SeqStats> = (0..n_seq).map(|_| SeqStats::default()).collect();
    let mut by_seq: Vec<Vec<&TaskOut>> = vec![Vec::new(); n_seq];
    for o in &outs {
        by_seq[o.seq].push(o);
    }
    for (s, res) in results.iter_mut().enumerate() {
        let plan = &plans[s];
        if cfg.fci && plan.num_steps() > 0 {
            (res.fci, res.fci_argmax) = reduce_fci(plan, &by_seq[s], &roles, group);
        }
        if cfg.rhythm {
            reduce_rhythm(res, plan, &by_seq[s], &roles, rhythm_layers.len(), h_n, cfg)?;
        }
    }
    Ok(results)
}

/// y_k = max over FCI heads of y_k^{l,h} (steps 2..=kmax; others stay 0) and the head attaining it.
fn reduce_fci(
    plan: &SeqPlan<'_>,
    outs: &[&TaskOut],
    roles: &[LayerRole],
    group: usize,
) -> (Vec<f32>, Vec<Option<HeadId>>) {
    let s_n = plan.num_steps();
    let (mut y, mut arg) = (vec![0.0f64; s_n], vec![None; s_n]);
    // Tasks arrive in (layer, kv head) order, so ties keep the lowest (layer, head).
    for o in outs.iter().filter(|o| roles[o.role].fci) {
        for hh in 0..group {
            let head = HeadId { layer: roles[o.role].layer, head: o.g * group + hh };
            for k in 2..=plan.kmax.min(s_n.saturating_sub(1)) {
                let v = o.fci[hh * s_n + k];
                if v > y[k] {
                    (y[k], arg[k]) = (v, Some(head));
                }
            }
        }
    }
    (y.iter().map(|&v| v as f32).collect(), arg)
}

/// Look-back per rhythm head, head choice, then WAAD and FAI of the chosen groups.
fn reduce_rhythm(
    res: &mut SeqStats,
    plan: &SeqPlan<'_>,
    outs: &[&TaskOut],
    roles: &[LayerRole],
    n_layers: usize,
    h_n: usize,
    cfg: &StatsConfig,
) -> Result<()> {
    let t_len = plan.resp_len();
    let heads = n_layers * h_n;
    let mut lookback = vec![0.0f32; heads];
    let (mut waad, mut fai) = (vec![0.0f32; heads * t_len], vec![0.0f32; heads * t_len]);
    let inv_count: Vec<f32> = (0..t_len)
        .map(|i| fai_rows(i, t_len, cfg.h_lo, cfg.h_hi).map_or(0.0, |(a, b)| 1.0 / (b - a + 1) as f32))
        .collect();
    let inv_t = if t_len == 0 { 0.0 } else { 1.0 / t_len as f64 };
    for o in outs {
        let Some(r) = roles[o.role].rhythm else { continue };
        let group = o.dist.len();
        for hh in 0..group {
            let flat = r * h_n + o.g * group + hh;
            lookback[flat] = (o.dist[hh] * inv_t) as f32;
            let dst = flat * t_len..(flat + 1) * t_len;
            waad[dst.clone()].copy_from_slice(&o.waad[hh * t_len..(hh + 1) * t_len]);
            for ((f, &v), &c) in fai[dst].iter_mut().zip(&o.fai[hh * t_len..(hh + 1) * t_len]).zip(&inv_count) {
                *f = v * c;
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
