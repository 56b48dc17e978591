//! Run configuration: TOML → typed structs (unknown keys rejected), validated with errors that
//! name the file and key, and resolved into a [`RunPlan`].
//!
//! `config` owns the schema of the sections and every rule that spans sections
//! ([`rules::RULES`]); it imports nothing from `train`.

mod async_section;
mod critic_section;
pub mod overrides;
pub mod plan;
mod rl_section;
pub mod rules;
mod run_config;
pub mod schedule;
mod sections;

pub use async_section::{AsyncConfig, RolloutMode};
pub use critic_section::CriticConfig;
pub use overrides::Override;
pub use plan::{AdvantageSource, RlPlan, RunPlan, Sampler, Schedule};
pub use rl_section::{BestMetric, RlSection};
pub use run_config::RunConfig;
pub use schedule::{LrSchedule, ScheduleKind};
pub use sections::{Compute, Device, Dtype, ModelSection, ParallelSection, RunSection, TrainSection, Violation};

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

use std::path::Path;

/// The embedded default job.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/default.toml");
/// How messages name the embedded default job.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded configs/default.toml>";
/// configs/addition-sft.toml: a one-minute supervised job, the base of the tests' configs.
pub const ADDITION_CONFIG: &str = include_str!("../../configs/addition-sft.toml");

impl RunConfig {
    /// Parse TOML text; `file` names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        Self::parse_with(text, file, &[])
    }

    /// Parse TOML text with `--set` overrides applied to it ([`overrides`]); an error names the
    /// override that caused it, else `file` and the key.
    pub fn parse_with(text: &str, file: &Path, sets: &[Override]) -> Result<Self> {
        // 1. TOML syntax
        //    (a value TOML cannot hold, such as an integer beyond i64, is named by its key too)
        let mut tree: toml::Table = toml::from_str(text).map_err(|e| Error::Config {
            file: file.into(),
            key: e.span().map(|s| key_at(text, s.start)).unwrap_or_default(),
            msg: e.message().to_string(),
        })?;
        // 2. the overrides; the typed schema then reads the merged tree, written back as text so
        //    that its errors still point at a key (whose line is the merged text's, so dropped)
        let original = (!sets.is_empty()).then(|| tree.clone());
        overrides::apply(&mut tree, sets)?;
        let merged = match original {
            Some(_) => {
                Some(toml::to_string(&tree).map_err(|e| Error::Invalid(format!("{}: --set: {e}", file.display())))?)
            }
            None => None,
        };
        let named = |key: String, msg: String| match &original {
            None => Error::Config { file: file.into(), key, msg },
            Some(o) => {
                let key = key.split(" (line ").next().unwrap_or_default().to_string();
                match overrides::source_of(sets, o, &key) {
                    Some(set) => Error::Config { file: set.source(), key, msg: set.explain(msg) },
                    None => Error::Config { file: file.into(), key, msg },
                }
            }
        };
        let text = merged.as_deref().unwrap_or(text);
        // 3. every number of every section finite (a NaN or ±inf never reaches a typed field,
        //    whatever section it is in)
        if let Some((key, v)) = first_non_finite(&tree, "") {
            return Err(named(key, format!("{v} is not a finite number")));
        }
        // 4. the typed schema; a wrong type or unknown key is named by its dotted path and line
        let cfg: RunConfig = toml::from_str(text)
            .map_err(|e| named(e.span().map(|s| key_at(text, s.start)).unwrap_or_default(), e.message().to_string()))?;
        // 5. each section's own values, then the rules across sections
        cfg.validate().map_err(|(key, msg)| named(key, msg))?;
        Ok(cfg)
    }

    /// The config as a run records it (`config.toml`, a checkpoint's `run_config.toml`, the dump's
    /// `config` attribute): every key in the schema's order, each f32 setting written as the f32 it
    /// is (`lr = 0.001`, where plain serialization widens it to 0.0010000000474974513). Parsing
    /// the text back gives the same config.
    pub fn to_toml(&self) -> Result<String> {
        let text = toml::to_string(self).map_err(|e| Error::Invalid(format!("serializing the config: {e}")))?;
        let mut doc: toml_edit::DocumentMut =
            text.parse().map_err(|e| Error::Invalid(format!("re-reading the serialized config: {e}")))?;
        shorten_f32_item(doc.as_item_mut());
        Ok(doc.to_string())
    }

    /// Read and parse a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &[])
    }

    /// Read and parse a TOML file with `--set` overrides.
    pub fn load_with(path: &Path, sets: &[Override]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse_with(&text, path, sets)
    }

    /// The config at `path`, or the embedded default job without one (what every subcommand
    /// taking `--config` does).
    pub fn load_or_default(path: Option<&Path>) -> Result<Self> {
        Self::load_or_default_with(path, &[])
    }

    /// [`Self::load_or_default`] with `--set` overrides.
    pub fn load_or_default_with(path: Option<&Path>, sets: &[Override]) -> Result<Self> {
        match path {
            Some(p) => Self::load_with(p, sets),
            None => Self::parse_with(DEFAULT_CONFIG, Path::new(DEFAULT_CONFIG_NAME), sets),
        }
    }

    /// The embedded default job.
    pub fn default_job() -> Self {
        Self::parse(DEFAULT_CONFIG, Path::new(DEFAULT_CONFIG_NAME)).expect("embedded default config is valid")
    }

    /// Every section's own checks, then the rules that span sections ([`rules::RULES`]): the
    /// first failure as (dotted key, message).
    pub fn validate(&self) -> std::result::Result<(), Violation> {
        self.run.validate()?;
        self.data.validate().map_err(|(key, msg)| (format!("data.{key}"), msg))?;
        self.train.validate()?;
        self.model.validate()?;
        if let Some(rl) = &self.rl {
            rl.validate()?;
        }
        self.parallel.validate()?;
        if let Some(c) = &self.critic {
            c.validate()?;
        }
        if let Some(w) = &self.workload {
            w.validate()?;
        }
        if let Some(e) = &self.env {
            e.validate()?;
        }
        if let Some(a) = &self.async_rl {
            a.validate()?;
        }
        if let Some(a) = &self.attnrl {
            a.validate().map_err(|e| (format!("attnrl.{}", e.key), e.msg))?;
        }
        if let Some(r) = &self.rhythm {
            r.validate().map_err(|e| (format!("rhythm.{}", e.key), e.msg))?;
        }
        if let Some(loss) = &self.loss {
            loss.validate().map_err(|e| (format!("loss.{}", e.key), e.msg))?;
            loss_keys_in_effect(loss)?;
        }
        rules::check_all(self)
    }

    /// The task of `[data]` (a JSONL dataset is loaded here), its records checked against `codec`
    /// (the character tokenizer's alphabet).
    pub fn task(&self, codec: &crate::tokenizer::TextCodec) -> Result<Box<dyn crate::tasks::Task>> {
        crate::tasks::build(&self.data, self.run.seed, codec)
    }

    /// How the run encodes and decodes text: the tokenizer of `model.hf_dir` (the built-in
    /// character tokenizer for a fresh model) with `model.prompt_template`
    /// ([`crate::tokenizer::TextCodec`]).
    pub fn text_codec(&self) -> Result<crate::tokenizer::TextCodec> {
        crate::tokenizer::TextCodec::for_model(self.model.hf_dir.as_deref(), self.model.prompt_template.as_deref())
    }

    /// The model configuration for a fresh model with a `vocab_size` tokenizer.
    pub fn fresh_model(&self, vocab_size: usize, eos: u32, file: &Path) -> Result<ModelConfig> {
        let m = &self.model;
        let (hidden, heads) = (m.hidden_size.unwrap_or(0), m.num_heads.unwrap_or(1).max(1));
        let cfg = ModelConfig { eos_token_ids: vec![eos], ..m.fresh_config(vocab_size) };
        if !hidden.is_multiple_of(heads) {
            return Err(Error::Config {
                file: file.into(),
                key: "model.num_heads".into(),
                msg: format!("{heads} does not divide hidden_size = {hidden}"),
            });
        }
        cfg.validate(file)?;
        if let Some(msg) = crate::model::host_memory::host_memory().and_then(|m| cfg.memory_shortfall(&m)) {
            return Err(Error::Config { file: file.into(), key: "model".into(), msg });
        }
        Ok(cfg)
    }
}

/// Every `[loss]` key set to anything but its default is read by the loss `kind` and `agg`
/// chosen (tis and topr clip nothing; cispo has no dual clip; only decoupled_ppo caps its weight;
/// `t_max` is the T_max of seq-mean-token-sum-norm alone). Keys without a default (`eps_low`,
/// `eps_high`, `t_max`) count as set when the file gives them.
fn loss_keys_in_effect(loss: &crate::rl::LossConfig) -> std::result::Result<(), Violation> {
    use crate::rl::{Aggregation, LossKind};
    let d = crate::rl::LossConfig::default();
    let kind = loss.kind;
    let reads_eps = matches!(kind, LossKind::Ppo | LossKind::Cispo | LossKind::DecoupledPpo);
    let reads_dual = matches!(kind, LossKind::Ppo | LossKind::DecoupledPpo);
    let reads_cap = kind == LossKind::DecoupledPpo;
    let kind_name = match kind {
        LossKind::Ppo => "ppo",
        LossKind::Tis => "tis",
        LossKind::Topr => "topr",
        LossKind::Cispo => "cispo",
        LossKind::DecoupledPpo => "decoupled_ppo",
    };
    let by_kind = [
        ("eps_low", loss.eps_low.map(|v| v.to_string()), reads_eps),
        ("eps_high", loss.eps_high.map(|v| v.to_string()), reads_eps),
        ("dual_clip", (loss.dual_clip != d.dual_clip).then(|| loss.dual_clip.to_string()), reads_dual),
        ("decoupled_cap", (loss.decoupled_cap != d.decoupled_cap).then(|| loss.decoupled_cap.to_string()), reads_cap),
    ];
    if loss.old_logprobs != d.old_logprobs && kind == LossKind::DecoupledPpo {
        return Err((
            "loss.old_logprobs".into(),
            "\"behaviour\": decoupled_ppo reads both log-probs already (r = π_θ/π_prox, w = π_prox/μ), so it would \
             have no effect; drop it"
                .into(),
        ));
    }
    if let Some((key, Some(v), _)) = by_kind.into_iter().find(|(_, set, read)| set.is_some() && !read) {
        return Err((
            format!("loss.{key}"),
            format!("{v}: kind = \"{kind_name}\" does not read {key}, so it would have no effect; drop it"),
        ));
    }
    if let (Some(t), false) = (loss.t_max, loss.agg == Aggregation::SeqMeanTokenSumNorm) {
        return Err((
            "loss.t_max".into(),
            format!(
                "{t}: only agg = \"seq-mean-token-sum-norm\" divides by t_max, so it would have no effect with \
                 agg = \"{}\"; drop it",
                match loss.agg {
                    Aggregation::TokenMean => "token-mean",
                    Aggregation::SeqMeanTokenMean => "seq-mean-token-mean",
                    Aggregation::SeqMeanTokenSum => "seq-mean-token-sum",
                    Aggregation::SeqMeanTokenSumNorm => "seq-mean-token-sum-norm",
                }
            ),
        ));
    }
    Ok(())
}

/// Every float of `item` that is an f32 widened to f64 written as that f32's shortest decimal.
fn shorten_f32_item(item: &mut toml_edit::Item) {
    match item {
        toml_edit::Item::Value(v) => shorten_f32_value(v),
        toml_edit::Item::Table(t) => t.iter_mut().for_each(|(_, i)| shorten_f32_item(i)),
        toml_edit::Item::ArrayOfTables(a) => {
            a.iter_mut().for_each(|t| t.iter_mut().for_each(|(_, i)| shorten_f32_item(i)))
        }
        toml_edit::Item::None => {}
    }
}

fn shorten_f32_value(v: &mut toml_edit::Value) {
    match v {
        toml_edit::Value::Float(f) => {
            if let Some(short) = f32_shortest(*f.value()) {
                let decor = f.decor().clone();
                let mut new = toml_edit::Formatted::new(short);
                *new.decor_mut() = decor;
                *f = new;
            }
        }
        toml_edit::Value::Array(a) => a.iter_mut().for_each(shorten_f32_value),
        toml_edit::Value::InlineTable(t) => t.iter_mut().for_each(|(_, v)| shorten_f32_value(v)),
        _ => {}
    }
}

/// `x` as the shortest decimal of the f32 it holds, where `x` is an f32 widened (and that decimal
/// differs): it reads back as the same f32. (An f64 setting is changed only if it is exactly an f32
/// written with more digits than that f32 needs, which a typed value is not.)
fn f32_shortest(x: f64) -> Option<f64> {
    let single = x as f32;
    if !x.is_finite() || single as f64 != x {
        return None;
    }
    let short: f64 = single.to_string().parse().ok()?;
    (short != x && short as f32 == single).then_some(short)
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The dotted key a TOML error span points into, with its line: the table of the nearest `[header]`
/// above it and the key on its line (`train.steps (line 23)`); the line alone when the span is not
/// on a `key = value` line.
fn key_at(text: &str, at: usize) -> String {
    let line_no = line_of(text, at);
    let mut table = String::new();
    let mut key = None;
    for (i, line) in text.lines().enumerate().take(line_no) {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key = None;
        } else if i + 1 == line_no {
            key = t.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string()).filter(|k| !k.is_empty());
        }
    }
    match (key, table.is_empty()) {
        (Some(k), true) => format!("{k} (line {line_no})"),
        (Some(k), false) => format!("{table}.{k} (line {line_no})"),
        (None, false) => format!("{table} (line {line_no})"),
        (None, true) => format!("line {line_no}"),
    }
}

/// The dotted path and value of the first non-finite float in a TOML tree (arrays index as `key[i]`).
/// A distribution's `max = inf` (no cap, its default) is the one infinity allowed.
pub fn first_non_finite(table: &toml::Table, prefix: &str) -> Option<(String, f64)> {
    fn walk(v: &toml::Value, path: String) -> Option<(String, f64)> {
        match v {
            toml::Value::Float(f) if *f == f64::INFINITY && path.ends_with(".max") => None,
            toml::Value::Float(f) if !f.is_finite() => Some((path, *f)),
            toml::Value::Table(t) => first_non_finite(t, &path),
            toml::Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| walk(x, format!("{path}[{i}]"))),
            _ => None,
        }
    }
    table.iter().find_map(|(k, v)| walk(v, if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parses_and_bad_keys_are_named() {
        let d = RunConfig::default_job();
        assert_eq!(d.data.kind, crate::tasks::TaskKind::Countdown);
        assert!(d.rl.is_some() && d.model.hf_dir.is_some());
        let bad = ADDITION_CONFIG.replace("batch_size = 64", "batch_size = 64\nbatchsize = 3");
        let e = RunConfig::parse(&bad, Path::new("x.toml")).unwrap_err().to_string();
        assert!(e.contains("x.toml") && e.contains("batchsize"), "{e}");
        let bad = ADDITION_CONFIG.replace("task = \"addition\"", "task = \"chess\"");
        let e = RunConfig::parse(&bad, Path::new("y.toml")).unwrap_err().to_string();
        assert!(e.contains("y.toml") && e.contains("chess"), "{e}");
        let bad = ADDITION_CONFIG.replace("max_digits = 2", "max_digits = 40");
        let e = RunConfig::parse(&bad, Path::new("w.toml")).unwrap_err().to_string();
        assert!(e.contains("w.toml") && e.contains("data.max_digits"), "{e}");
        let bad = ADDITION_CONFIG.replace("lr = 3e-3", "lr = \"fast\"");
        let e = RunConfig::parse(&bad, Path::new("z.toml")).unwrap_err().to_string();
        assert!(e.contains("z.toml"), "{e}");
        let bad = ADDITION_CONFIG.replace("[train]\n", "[train]\ndevice = \"tpu\"\n");
        let e = RunConfig::parse(&bad, Path::new("d.toml")).unwrap_err().to_string();
        assert!(e.contains("d.toml") && e.contains("tpu"), "{e}");
        // tensor parallelism on GPUs: a build without the `cuda` feature refuses the device itself
        let gpu_tp = ADDITION_CONFIG.replace("[train]\n", "[train]\ndevice = \"cuda\"\n") + "\n[parallel]\ntp = 2\n";
        match RunConfig::parse(&gpu_tp, Path::new("g.toml")) {
            Ok(c) => assert!(cfg!(feature = "cuda") && c.parallel.tp == 2),
            Err(e) => assert!(!cfg!(feature = "cuda") && e.to_string().contains("train.device"), "{e}"),
        }
        // named by their dotted keys when the file is read: a fresh model's dimensions that make no
        // decoder, a 0 that would be read as 1, a step no memory holds
        for (base, from, to, key) in [
            (ADDITION_CONFIG, "num_kv_heads = 2", "num_kv_heads = 3", "model.num_kv_heads"),
            (ADDITION_CONFIG, "hidden_size = 128", "hidden_size = 0", "model.hidden_size"),
            (ADDITION_CONFIG, "hidden_size = 128", "hidden_size = 100", "model.num_heads"),
            (DEFAULT_CONFIG, "eval_samples = 4", "eval_samples = 0", "rl.eval_samples"),
            (DEFAULT_CONFIG, "keep_checkpoints = 2", "keep_checkpoints = 0", "train.keep_checkpoints"),
            (DEFAULT_CONFIG, "prompts_per_step = 32", "prompts_per_step = 1000000000000", "rl.prompts_per_step"),
        ] {
            assert!(base.contains(from), "{from}");
            let e = RunConfig::parse(&base.replace(from, to), Path::new("m.toml")).unwrap_err().to_string();
            assert!(e.contains("m.toml") && e.contains(key), "{to}: {e}");
        }
        // a task generator's key where the kind does not read it
        for (extra, key) in [("numbers = 5", "data.numbers"), ("ops = \"+\"", "data.ops")] {
            let bad = ADDITION_CONFIG.replace("max_digits = 2", &format!("max_digits = 2\n{extra}"));
            let e = RunConfig::parse(&bad, Path::new("k.toml")).unwrap_err().to_string();
            assert!(e.contains("k.toml") && e.contains(key) && e.contains("does not read it"), "{extra}: {e}");
        }
        // run directories stay inside out_dir
        for name in [".", ".."] {
            let bad = ADDITION_CONFIG.replace("name = \"addition-sft\"", &format!("name = {name:?}"));
            assert!(bad.contains(&format!("name = {name:?}")));
            let e = RunConfig::parse(&bad, Path::new("n.toml")).unwrap_err().to_string();
            assert!(e.contains("n.toml") && e.contains("run.name"), "{name}: {e}");
        }
        let bad = ADDITION_CONFIG.to_string() + "\n[parallel]\ntp = 0\n";
        let e = RunConfig::parse(&bad, Path::new("p.toml")).unwrap_err().to_string();
        assert!(e.contains("p.toml") && e.contains("parallel.tp"), "{e}");
        let ok = ADDITION_CONFIG.to_string() + "\n[parallel]\ntp = 2\n";
        assert_eq!(RunConfig::parse(&ok, Path::new("p.toml")).unwrap().parallel.tp, 2);
        let bad = ADDITION_CONFIG.to_string() + "\n[rl]\nsteps = 1\nmini_batches = 0\n";
        let e = RunConfig::parse(&bad, Path::new("m.toml")).unwrap_err().to_string();
        assert!(e.contains("rl.mini_batches"), "{e}");
        let ok = ADDITION_CONFIG.to_string() + "\n[rl]\nsteps = 1\nmicro_batch = 3\nmicro_batch_tokens = 64\n";
        let rl = RunConfig::parse(&ok, Path::new("m.toml")).unwrap().rl.unwrap();
        assert_eq!(rl.micro(), crate::model::micro_batch::MicroBatch { samples: 3, tokens: 64 });
    }

    #[test]
    fn a_set_key_reads_as_the_same_key_in_the_file_and_its_errors_name_the_override() {
        let sets: Vec<Override> =
            ["rl.lr=1e-4", "loss.kind=cispo", "run.name=sweep-3"].iter().map(|s| Override::parse(s).unwrap()).collect();
        let set = RunConfig::parse_with(DEFAULT_CONFIG, Path::new("d.toml"), &sets).unwrap();
        let edited = DEFAULT_CONFIG.replace("lr = 2e-4", "lr = 1e-4").replace("kind = \"ppo\"", "kind = \"cispo\"");
        let edited = edited.replace("name = \"default\"", "name = \"sweep-3\"");
        assert_ne!(edited, DEFAULT_CONFIG);
        let edited = RunConfig::parse(&edited, Path::new("d.toml")).unwrap();
        assert_eq!(toml::to_string(&set).unwrap(), toml::to_string(&edited).unwrap());
        assert_eq!(set.rl.as_ref().map(|r| r.lr), Some(1e-4));
        assert_eq!(set.run.name, "sweep-3");
        let err = |raws: &[&str], text: &str| {
            let sets: Vec<Override> = raws.iter().map(|s| Override::parse(s).unwrap()).collect();
            RunConfig::parse_with(text, Path::new("f.toml"), &sets).unwrap_err().to_string()
        };
        // a section's own check, the typed schema, the finite check, a rule across sections
        let e = err(&["rl.steps=3", "rl.lr=-1"], DEFAULT_CONFIG);
        assert!(e.starts_with("--set rl.lr=-1: key `rl.lr`:"), "{e}");
        let e = err(&["rl.lr_max=1"], DEFAULT_CONFIG);
        assert!(e.starts_with("--set rl.lr_max=1: key `rl.lr_max`: unknown field"), "{e}");
        let e = err(&["train.lr=inf"], DEFAULT_CONFIG);
        assert!(e.starts_with("--set train.lr=inf: key `train.lr`: inf is not a finite number"), "{e}");
        let e = err(&["rl.samples_per_prompt=1"], DEFAULT_CONFIG);
        assert!(e.starts_with("--set rl.samples_per_prompt=1: key `rl.samples_per_prompt`:"), "{e}");
        let e = err(&["run.name=5"], DEFAULT_CONFIG);
        assert!(e.contains("expected a string") && e.contains("--set 'run.name=\"5\"'"), "{e}");
        // what the file got wrong is still the file's (its line is the merged text's, so not given)
        let e = err(&["rl.lr=1e-4"], &DEFAULT_CONFIG.replace("lr = 2e-3", "lr = 2e-3\nlearning_rate = 1"));
        assert!(e.starts_with("f.toml: key `train.learning_rate`: unknown field"), "{e}");
        // the default job by name
        let e = RunConfig::load_or_default_with(None, &[Override::parse("rl.lr=0").unwrap()]).unwrap_err().to_string();
        assert!(e.starts_with("--set rl.lr=0: key `rl.lr`"), "{e}");
        let d = RunConfig::load_or_default_with(None, &[Override::parse("train.steps=7").unwrap()]).unwrap();
        assert_eq!(d.train.steps, 7);
    }

    #[test]
    fn the_recorded_config_writes_f32_settings_as_typed_and_reads_back_the_same() {
        let cfg = RunConfig::default_job();
        let text = cfg.to_toml().unwrap();
        let plain = toml::to_string(&cfg).unwrap();
        assert!(plain.contains("lr = 0.0020000000949949026"), "plain serialization widens f32: {plain}");
        for line in ["lr = 0.002\n", "lr = 0.0002\n", "beta2 = 0.95\n", "weight_decay = 0.1\n"] {
            assert!(text.contains(line), "{line}: {text}");
        }
        assert!(!text.contains("00000000"), "{text}");
        // the schema's order, and the same config read back
        let pos = |h: &str| text.find(h).unwrap_or_else(|| panic!("{h}: {text}"));
        assert!(pos("[run]") < pos("[model]") && pos("[model]") < pos("[train]") && pos("[train]") < pos("[rl]"));
        let back = RunConfig::parse(&text, Path::new("back.toml")).unwrap();
        assert_eq!(toml::to_string(&back).unwrap(), plain);
        // an f64 setting keeps its value; only widened f32s are shortened
        assert_eq!(f32_shortest(0.1), None);
        assert_eq!(f32_shortest(0.5), None);
        assert_eq!(f32_shortest(300.0), None);
        assert_eq!(f32_shortest(0.1f32 as f64), Some(0.1));
        assert_eq!(f32_shortest(f64::INFINITY), None);
    }

    #[test]
    fn the_rl_learning_rate_follows_its_schedule_and_bad_bounds_are_named() {
        let rl = RunConfig::default_job().rl.unwrap();
        let s = rl.lr_schedule();
        assert_eq!(s.lr(0), rl.lr, "cosine starts at the peak");
        let min_lr = rl.min_lr.expect("the default job sets min_lr");
        assert!(min_lr > 0.0 && min_lr < rl.lr);
        assert!((s.lr(rl.steps) - min_lr).abs() < 1e-9, "and ends at min_lr: {}", s.lr(rl.steps));
        assert!(s.lr(rl.steps / 2) < rl.lr && s.lr(rl.steps / 2) > min_lr);
        let constant =
            RunConfig::parse(&(ADDITION_CONFIG.to_string() + "\n[rl]\nsteps = 10\nlr = 3e-4\n"), Path::new("c.toml"))
                .unwrap()
                .rl
                .unwrap();
        assert_eq!(constant.lr_schedule().lr(9), 3e-4, "the default schedule is constant");
        for (extra, key) in
            [("min_lr = 1e-3", "rl.min_lr"), ("min_lr = -1e-6", "rl.min_lr"), ("warmup_steps = 11", "rl.warmup_steps")]
        {
            let bad = ADDITION_CONFIG.to_string() + &format!("\n[rl]\nsteps = 10\nschedule = \"cosine\"\n{extra}\n");
            let e = RunConfig::parse(&bad, Path::new("s.toml")).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }
}
