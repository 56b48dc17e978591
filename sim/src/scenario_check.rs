//! Range checks of a parsed scenario: every key's range, with errors that name the dotted key and
//! the value; and the non-finite walk over the raw document that runs before it.

use crate::cost::split_gpus;
use crate::dist::show;
use crate::run::SPLIT_CANDIDATES;
use crate::scenario::{Case, Dispatch, Metric, Mode, Placement, Scenario};
use anyhow::{bail, Context, Result};
use std::path::Path;

fn pos(key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{key} = {}: must be a finite number > 0", show(v));
    }
    Ok(())
}

fn nonneg(key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("{key} = {}: must be a finite number >= 0", show(v));
    }
    Ok(())
}

fn frac(key: &str, v: f64) -> Result<()> {
    if !(v > 0.0 && v <= 1.0) {
        bail!("{key} = {}: must be in (0, 1]", show(v));
    }
    Ok(())
}

fn open_frac(key: &str, v: f64) -> Result<()> {
    if !(v > 0.0 && v < 1.0) {
        bail!("{key} = {}: must be in (0, 1)", show(v));
    }
    Ok(())
}

fn prob(key: &str, v: f64) -> Result<()> {
    if !(0.0..1.0).contains(&v) {
        bail!("{key} = {}: must be in [0, 1)", show(v));
    }
    Ok(())
}

/// How a mode is spelled in a scenario file.
fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Sync => "sync",
        Mode::Async => "async",
        Mode::OneStepOffPolicy => "one_step_off_policy",
    }
}

impl Scenario {
    /// Range checks of every key; errors name the key (dotted path) and the value. Non-finite
    /// values are refused here too (not only by the document walk in [`Scenario::parse`]). Loads the
    /// CSV data of empirical distributions (relative to `base`), and checks every `[[case]]` with its
    /// overrides applied ([`Scenario::with_case`]).
    pub(crate) fn check(&mut self, base: &Path) -> Result<()> {
        let w = &mut self.workload;
        w.response_tokens.prepare("workload.response_tokens", base)?;
        for (key, d) in [
            ("workload.turns", &mut w.turns),
            ("workload.env_step_s", &mut w.env_step_s),
            ("workload.env_reset_s", &mut w.env_reset_s),
            ("workload.reward_s", &mut w.reward_s),
        ] {
            if let Some(d) = d {
                d.prepare(key, base)?;
            }
        }
        self.check_global()?;
        for k in 0..self.policies.len() {
            self.check_policy(k)?;
        }
        self.check_refs()?;
        for c in &self.cases {
            self.with_case(c)?;
        }
        Ok(())
    }

    /// The checks of a scenario derived from a checked one (a case's overrides, a sweep point): every
    /// key outside the policies, and the policies `policies` (indices); distributions are not
    /// re-loaded and `[[case]]`/`[calibration]` references are not re-checked.
    pub(crate) fn check_derived(&self, policies: &[usize]) -> Result<()> {
        self.check_global()?;
        for &k in policies {
            self.check_policy(k)?;
        }
        Ok(())
    }

    /// Copy of the scenario with case `c`'s overrides (`gpus`, `prompts_per_step`,
    /// `responses_per_prompt`) applied, checked as the file would be; errors name the case's key.
    pub fn with_case(&self, c: &Case) -> Result<Scenario> {
        let k = self.cases.iter().position(|x| x.name == c.name).unwrap_or(0);
        let key = format!("case[{k}]");
        let mut s = self.clone();
        let mut set = Vec::new();
        if let Some(g) = c.gpus {
            if g == 0 || g > 1_000_000 {
                bail!("{key}.gpus = {g} ({}): must be in 1..=1000000", c.name);
            }
            s.hardware.gpus = g;
            set.push(format!("{key}.gpus = {g}"));
        }
        if let Some(p) = c.prompts_per_step {
            if p == 0 {
                bail!("{key}.prompts_per_step = 0 ({}): must be >= 1", c.name);
            }
            s.workload.prompts_per_step = p;
            set.push(format!("{key}.prompts_per_step = {p}"));
        }
        if let Some(n) = c.responses_per_prompt {
            if n == 0 || n > 4096 {
                bail!("{key}.responses_per_prompt = {n} ({}): must be in 1..=4096", c.name);
            }
            s.workload.responses_per_prompt = n;
            set.push(format!("{key}.responses_per_prompt = {n}"));
        }
        if set.is_empty() {
            return Ok(s);
        }
        let used: Vec<usize> = (0..s.policies.len())
            .filter(|&j| s.policies[j].name == c.policy || c.baseline.as_ref() == Some(&s.policies[j].name))
            .collect();
        s.check_derived(&used).with_context(|| format!("{key} ({}) with {}", c.name, set.join(", ")))?;
        Ok(s)
    }

    /// Every key outside `[[policy]]`, `[calibration]` and `[[case]]` (distributions: after loading).
    fn check_global(&self) -> Result<()> {
        let h = &self.hardware;
        if self.steps == 0 || self.steps > 1_000_000 {
            bail!("steps = {}: must be in 1..=1000000", self.steps);
        }
        if self.warmup_steps >= self.steps {
            bail!("warmup_steps = {} must be < steps = {}", self.warmup_steps, self.steps);
        }
        if h.gpus == 0 || h.gpus > 1_000_000 {
            bail!("hardware.gpus = {}: must be in 1..=1000000", h.gpus);
        }
        pos("hardware.hbm_tb_per_s", h.hbm_tb_per_s)?;
        pos("hardware.peak_tflops", h.peak_tflops)?;
        pos("hardware.link_gb_per_s", h.link_gb_per_s)?;
        pos("hardware.intra_node_gb_per_s", h.intra_node_gb_per_s)?;
        pos("hardware.hbm_gb", h.hbm_gb)?;
        pos("hardware.pcie_gb_per_s", h.pcie_gb_per_s)?;
        if let Some(n) = h.gpus_per_node {
            if n == 0 || n > 1024 {
                bail!("hardware.gpus_per_node = {n}: must be in 1..=1024");
            }
        }
        pos("hardware.allreduce_gb_per_s", h.allreduce_gb_per_s)?;
        if let Some(v) = h.stream_gb_per_s {
            pos("hardware.stream_gb_per_s", v)?;
        }
        pos("model.params_b", self.model.params_b)?;
        pos("model.kv_bytes_per_token", self.model.kv_bytes_per_token)?;
        match (self.model.layers, &h.profile) {
            (Some(l), _) if l == 0 || l > 100_000 => bail!("model.layers = {l}: must be in 1..=100000"),
            (_, _) if self.model.hidden.is_some_and(|x| x == 0 || x > 1_000_000) => {
                bail!("model.hidden = {}: must be in 1..=1000000", self.model.hidden.unwrap_or(0))
            }
            (_, _) if self.model.ffn_hidden.is_some_and(|x| x == 0 || x > 10_000_000) => {
                bail!("model.ffn_hidden = {}: must be in 1..=10000000", self.model.ffn_hidden.unwrap_or(0))
            }
            (_, _) if self.model.vocab.is_some_and(|x| x == 0 || x > 100_000_000) => {
                bail!("model.vocab = {}: must be in 1..=100000000", self.model.vocab.unwrap_or(0))
            }
            (None, Some(p)) => {
                bail!("hardware.profile = {p:?} needs model.layers (the decode model's all-reduces and attention)")
            }
            _ => {}
        }
        let i = &self.inference;
        if i.tp == 0 || i.tp > h.gpus {
            bail!("inference.tp = {}: must be in 1..=hardware.gpus ({})", i.tp, h.gpus);
        }
        if i.max_concurrency == 0 {
            bail!("inference.max_concurrency = 0: must be >= 1");
        }
        nonneg("inference.decode_overhead_ms", i.decode_overhead_ms)?;
        frac("inference.bandwidth_efficiency", i.bandwidth_efficiency)?;
        frac("inference.prefill_mfu", i.prefill_mfu)?;
        frac("inference.memory_utilization", i.memory_utilization)?;
        nonneg("inference.per_seq_overhead_us", i.per_seq_overhead_us)?;
        nonneg("inference.allreduce_latency_us", i.allreduce_latency_us)?;
        if let Some(v) = i.decode_mfu {
            frac("inference.decode_mfu", v)?;
        }
        if let Some(v) = i.attention_efficiency {
            frac("inference.attention_efficiency", v)?;
        }
        if i.max_groups_per_engine == Some(0) {
            bail!("inference.max_groups_per_engine = 0: must be >= 1");
        }
        match i.kv_capacity_tokens {
            // `inf` is documented: no KV-cache limit.
            Some(c) if c.is_nan() || c < 1.0 => {
                bail!("inference.kv_capacity_tokens = {}: must be >= 1 (inf disables the limit)", show(c))
            }
            Some(_) => {}
            None => {
                let c = self.kv_capacity_tokens();
                if c.is_nan() || c < 1.0 {
                    bail!(
                        "derived KV capacity is {c:.0} tokens (model.kv_bytes_per_token = {}): the weights \
                         (2 x model.params_b = {:.1} GB) do not fit in inference.tp ({}) x hardware.hbm_gb ({}) x \
                         inference.memory_utilization ({}) with room for one token; raise those or set \
                         inference.kv_capacity_tokens",
                        self.model.kv_bytes_per_token,
                        2.0 * self.model.params_b,
                        i.tp,
                        h.hbm_gb,
                        i.memory_utilization
                    );
                }
            }
        }
        let t = &self.training;
        frac("training.mfu", t.mfu)?;
        open_frac("training.train_fraction", t.train_fraction)?;
        nonneg("training.update_overhead_s", t.update_overhead_s)?;
        nonneg("training.sync_overhead_s", t.sync_overhead_s)?;
        for (key, v) in [("training.tp", t.tp), ("training.pp", t.pp), ("training.micro_batches", t.micro_batches)] {
            if let Some(v) = v.filter(|&v| v == 0 || v > 65_536) {
                bail!("{key} = {v}: must be in 1..=65536");
            }
        }
        if t.tp.is_some() || t.pp.is_some() {
            // An explicit degree, with the other one derived when absent.
            let l = crate::train_parallel::TrainParallel::of(self);
            if l.tp as u64 * l.pp as u64 > h.gpus as u64 {
                let derived = match (t.tp, t.pp) {
                    (Some(_), None) => " (pp derived)",
                    (None, Some(_)) => " (tp derived)",
                    _ => "",
                };
                bail!("training.tp x training.pp = {} x {}{derived}: more than hardware.gpus ({})", l.tp, l.pp, h.gpus);
            }
        }
        let w = &self.workload;
        if w.prompts_per_step == 0 {
            bail!("workload.prompts_per_step = 0: must be >= 1");
        }
        if w.responses_per_prompt == 0 || w.responses_per_prompt > 4096 {
            bail!("workload.responses_per_prompt = {}: must be in 1..=4096", w.responses_per_prompt);
        }
        if w.max_response_tokens == 0 {
            bail!("workload.max_response_tokens = 0: must be >= 1");
        }
        if !(w.prompt_difficulty_sigma >= 0.0 && w.prompt_difficulty_sigma < 5.0) {
            bail!("workload.prompt_difficulty_sigma = {}: must be in [0, 5)", show(w.prompt_difficulty_sigma));
        }
        prob("workload.prompt_correlation", w.prompt_correlation)?;
        if w.prompt_correlation > 0.0 && !w.response_tokens.has_normal_quantile() {
            bail!(
                "workload.prompt_correlation = {}: needs workload.response_tokens of kind constant, lognormal, \
                 gaussian or pareto (the correlated draw maps a normal deviate through the distribution)",
                show(w.prompt_correlation)
            );
        }
        prob("workload.fail_stop_prob", w.fail_stop_prob)?;
        prob("workload.fail_slow_prob", w.fail_slow_prob)?;
        pos("workload.fail_slow_factor", w.fail_slow_factor)?;
        if self.policies.is_empty() {
            bail!("at least one [[policy]] is required");
        }
        if self.limits.events_max == 0 {
            bail!("limits.events_max = 0: must be >= 1");
        }
        pos("limits.sim_time_s_max", self.limits.sim_time_s_max)?;
        Ok(())
    }

    /// `[[policy]]` number `k`.
    fn check_policy(&self, k: usize) -> Result<()> {
        let p = &self.policies[k];
        let key = format!("policy[{k}]");
        let name = &p.name;
        if self.policies[..k].iter().any(|q| q.name == p.name) {
            bail!("{key}.name = {name:?}: duplicate policy name");
        }
        if p.mode != Mode::Sync && p.placement == Placement::Colocated {
            bail!("{key} ({name:?}): mode = {:?} needs placement = \"disaggregated\"", p.mode);
        }
        // `inf` is documented: unbounded staleness.
        if p.alpha.is_nan() || p.alpha < 0.0 {
            bail!("{key}.alpha = {} (policy {name:?}): must be >= 0 (inf allowed)", show(p.alpha));
        }
        if !(p.tail_eta >= 1.0 && p.tail_eta <= 16.0) {
            bail!("{key}.tail_eta = {} (policy {name:?}): must be in [1, 16]", show(p.tail_eta));
        }
        if let Some(f) = p.train_fraction {
            open_frac(&format!("{key}.train_fraction"), f)?;
        }
        if p.group_size_redundancy > 4096 {
            bail!("{key}.group_size_redundancy = {}: must be <= 4096", p.group_size_redundancy);
        }
        if p.train_mini_batches == 0 || p.train_mini_batches > 4096 {
            bail!("{key}.train_mini_batches = {} (policy {name:?}): must be in 1..=4096", p.train_mini_batches);
        }
        if p.train_mini_batches > 1 {
            if p.placement == Placement::Colocated {
                bail!(
                    "{key}.train_mini_batches = {} (policy {name:?}): streaming training needs placement = \"disaggregated\" \
                     (colocated GPUs cannot generate and train at once)",
                    p.train_mini_batches
                );
            }
            if p.mode == Mode::Sync && p.dispatch == Dispatch::Static {
                bail!(
                    "{key}.train_mini_batches = {} (policy {name:?}): streaming in mode = \"sync\" needs dispatch = \"queue\" \
                     (static dispatch rewards the batch after its barrier)",
                    p.train_mini_batches
                );
            }
            if p.partial_rollout {
                bail!(
                    "{key}.train_mini_batches = {} (policy {name:?}): not with partial_rollout",
                    p.train_mini_batches
                );
            }
        }
        if p.fixed_batches
            && (p.mode != Mode::Async
                || p.batch_rollout
                || p.partial_rollout
                || p.tail_eta > 1.0
                || p.redundant_groups > 0
                || p.group_size_redundancy > 0
                || p.train_mini_batches > 1
                || !p.alpha.is_finite())
        {
            bail!(
                "{key}.fixed_batches = true (policy {name:?}): needs mode = \"async\" with a finite alpha, group-by-group \
                 refill (no batch_rollout), and no partial_rollout, tail_eta > 1, redundancy or streaming training"
            );
        }
        if p.long_rounds && !(p.mode == Mode::Sync && p.tail_eta > 1.0 && !p.partial_rollout) {
            bail!(
                "{key}.long_rounds = true (policy {name:?}): needs mode = \"sync\", tail_eta > 1 (is {}) and no partial_rollout",
                show(p.tail_eta)
            );
        }
        if let Some(ph) = &p.phases {
            for (j, x) in ph.iter().enumerate() {
                if ph[..j].contains(x) {
                    bail!("{key}.phases[{j}] = {x:?} (policy {name:?}): listed twice");
                }
            }
        }
        if let (Some(g), true) = (self.inference.max_groups_per_engine, self.workload.turns.is_some()) {
            if p.mode == Mode::Sync && !p.env_async && !p.prompt_replication {
                // A group waiting for an engine slot would hold the turn barrier while the group
                // holding the slot waits at that barrier.
                bail!(
                    "inference.max_groups_per_engine = {g} with {key} ({name:?}): a lockstep multi-turn policy \
                     (mode = \"sync\", env_async = false, workload.turns set) cannot wait for engine slots; \
                     set env_async = true or prompt_replication = true"
                );
            }
        }
        if p.redundant_groups > 1_000_000 {
            bail!("{key}.redundant_groups = {}: must be <= 1000000", p.redundant_groups);
        }
        self.check_dead_keys(k)?;
        self.check_split(k)?;
        Ok(())
    }

    /// Keys policy `k`'s mode or placement never reads are refused, not silently ignored.
    fn check_dead_keys(&self, k: usize) -> Result<()> {
        let p = &self.policies[k];
        let (key, name, mode) = (format!("policy[{k}]"), &p.name, mode_name(p.mode));
        let mut dead: Vec<(&str, String, &str)> = Vec::new();
        let sync_only = "tail batching, redundant groups and partial rollout act at a synchronous step's batch cutoff";
        let async_only = "it acts on the async rollout side";
        if p.mode != Mode::Sync {
            if p.tail_eta != 1.0 {
                dead.push(("tail_eta", show(p.tail_eta), sync_only));
            }
            if p.redundant_groups > 0 {
                dead.push(("redundant_groups", p.redundant_groups.to_string(), sync_only));
            }
            if p.partial_rollout {
                dead.push(("partial_rollout", "true".into(), sync_only));
            }
        } else {
            if p.interruptible {
                dead.push(("interruptible", "true".into(), async_only));
            }
            if p.batch_rollout {
                dead.push(("batch_rollout", "true".into(), async_only));
            }
        }
        if p.mode != Mode::Async && p.alpha != 0.0 {
            let why = if p.mode == Mode::Sync { "nothing is stale" } else { "its bound is always 1 version" };
            dead.push(("alpha", show(p.alpha), why));
        }
        if let Some((k2, v, why)) = dead.first() {
            bail!(
                "{key}.{k2} = {v} (policy {name:?}): has no effect in mode = \"{mode}\" ({why}); remove it{}",
                if p.mode == Mode::Async { "" } else { " or set mode = \"async\"" }
            );
        }
        if p.placement == Placement::Colocated {
            if p.split_search {
                bail!("{key}.split_search = true (policy {name:?}): has no effect with placement = \"colocated\" (no split to search)");
            }
            if let Some(f) = p.train_fraction {
                bail!(
                    "{key}.train_fraction = {} (policy {name:?}): has no effect with placement = \"colocated\" (every GPU trains)",
                    show(f)
                );
            }
        } else if let (true, Some(f)) = (p.split_search, p.train_fraction) {
            bail!("{key}.train_fraction = {} (policy {name:?}): has no effect with split_search = true", show(f));
        }
        Ok(())
    }

    /// A disaggregated policy's split must leave at least one inference worker (`inference.tp` GPUs).
    fn check_split(&self, k: usize) -> Result<()> {
        let p = &self.policies[k];
        if p.placement != Placement::Disaggregated {
            return Ok(());
        }
        let (key, name) = (format!("policy[{k}]"), &p.name);
        let fractions: Vec<(f64, String)> = if p.split_search {
            SPLIT_CANDIDATES.iter().map(|&f| (f, format!("{key}.split_search tries train fraction {f}"))).collect()
        } else {
            match p.train_fraction {
                Some(f) => vec![(f, format!("{key}.train_fraction = {}", show(f)))],
                None => {
                    let f = self.training.train_fraction;
                    vec![(f, format!("training.train_fraction = {}", show(f)))]
                }
            }
        };
        let (gpus, tp) = (self.hardware.gpus, self.inference.tp);
        for (f, what) in fractions {
            let (infer, train) = split_gpus(self, p.placement, f);
            if infer < tp {
                let nodes = match self.hardware.gpus_per_node {
                    Some(per) if gpus >= 2 * per => format!(", whole nodes of hardware.gpus_per_node = {per}"),
                    _ => String::new(),
                };
                bail!(
                    "{key} ({name:?}): placement = \"disaggregated\" splits hardware.gpus = {gpus} into {train} training \
                     and {infer} generating GPU(s) ({what}{nodes}), fewer than one inference worker of inference.tp = {tp}; \
                     needs hardware.gpus >= {}",
                    train + tp
                );
            }
        }
        Ok(())
    }

    /// `[calibration]` and `[[case]]`: the policies they name, and their numbers.
    fn check_refs(&self) -> Result<()> {
        if let Some(c) = &self.calibration {
            if !self.policies.iter().any(|p| p.name == c.policy) {
                bail!("calibration.policy = {:?}: no such policy", c.policy);
            }
            pos("calibration.step_s", c.step_s)?;
        }
        for (k, c) in self.cases.iter().enumerate() {
            for name in std::iter::once(&c.policy).chain(c.baseline.iter()) {
                if !self.policies.iter().any(|p| &p.name == name) {
                    bail!("case[{k}] ({}): no policy named {name:?}", c.name);
                }
            }
            if c.metric == Metric::Speedup && c.baseline.is_none() {
                bail!("case[{k}] ({}): metric = \"speedup\" needs baseline", c.name);
            }
            pos(&format!("case[{k}].published"), c.published)?;
        }
        Ok(())
    }
}

/// Float keys whose `inf` has a documented meaning; `[]` stands for any array index.
/// `inference.kv_capacity_tokens`: no KV-cache limit; `policy[].alpha`: unbounded staleness;
/// a distribution's `max`: no upper clamp (the default).
pub const INF_ALLOWED: &[&str] = &[
    "inference.kv_capacity_tokens",
    "policy[].alpha",
    "workload.response_tokens.max",
    "workload.turns.max",
    "workload.env_step_s.max",
    "workload.env_reset_s.max",
    "workload.reward_s.max",
];

/// `policy[3].alpha` → `policy[].alpha` (the form [`INF_ALLOWED`] is written in).
pub fn key_shape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for ch in path.chars() {
        match ch {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(ch),
        }
    }
    out
}

pub(crate) fn refuse_non_finite_table(t: &toml::Table, prefix: &str) -> Result<()> {
    for (k, v) in t {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        refuse_non_finite(v, &path)?;
    }
    Ok(())
}

/// Refuse any `nan`/`-inf` float below `v`, and `inf` outside [`INF_ALLOWED`], naming its dotted path.
fn refuse_non_finite(v: &toml::Value, path: &str) -> Result<()> {
    match v {
        toml::Value::Float(f) if !f.is_finite() => {
            if *f == f64::INFINITY && INF_ALLOWED.contains(&key_shape(path).as_str()) {
                return Ok(());
            }
            let allowed = if INF_ALLOWED.contains(&key_shape(path).as_str()) { " or inf" } else { "" };
            bail!("{path} = {}: must be a finite number{allowed}", show(*f));
        }
        toml::Value::Table(t) => refuse_non_finite_table(t, path),
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refuse_non_finite(x, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
