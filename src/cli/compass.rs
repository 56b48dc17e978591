//! `arbor inspect runs/NAME/trajectories.h5 --sample K`: the "compass" view of one dumped sample:
//! its prompt and response split into steps (one line each), the reward, each step's advantage and
//! log-probs, and — scored by the run's newest checkpoint (or `--model DIR`) — each step's Forward
//! Context Influence, the attention later steps pay to it (ALGORITHMS.md §1). Steps and Δ follow the
//! run: the steps a tree run stored per token (`step_index`), else the split at its `[attnrl]
//! step_separators`, and its `fci_step_gap` unless `--fci-step-gap` is given; the defaults of
//! `[attnrl]` where the dump's config has none.

use crate::attention::stats::{attention_stats, SeqSteps, StatsConfig};
use crate::attnrl::{response_step_bounds_from_texts, sequence_step_bounds, AttnRlConfig};
use crate::io::trajectories::read_trajectories;
use crate::model::{Batch, Model, Workspace};
use crate::tokenizer::TextCodec;
use anyhow::{bail, Context};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The model that scores FCI: `model`, else the newest checkpoint next to the dump.
fn scoring_model(dump: &Path, model: Option<&Path>) -> anyhow::Result<Option<(PathBuf, Model)>> {
    let dir = match model {
        Some(d) => Some(d.to_path_buf()),
        None => {
            let run_dir = dump.parent().unwrap_or(Path::new("."));
            crate::train::checkpoint::list_checkpoints(run_dir)?.last().map(|(_, d)| d.clone())
        }
    };
    let Some(dir) = dir else { return Ok(None) };
    let (cfg, params) = crate::io::load_hf_dir(&dir)?;
    Ok(Some((dir, Model::new(cfg, params)?)))
}

/// How the dump's run split responses into steps, read from its `config` attribute: its `[attnrl]`
/// `step_separators` and `fci_step_gap` (the `[attnrl]` defaults where the config has none).
#[derive(Debug, Clone, PartialEq)]
pub struct DumpSteps {
    pub separators: Vec<String>,
    pub fci_step_gap: usize,
}

/// [`DumpSteps`] of a dump whose `config` attribute is `config`; an error names what cannot be read.
pub fn dump_steps(config: &str) -> anyhow::Result<DumpSteps> {
    let d = AttnRlConfig::default();
    let table: toml::Table =
        toml::from_str(config).map_err(|e| anyhow::anyhow!("not TOML: {}", e.to_string().trim()))?;
    let Some(a) = table.get("attnrl") else {
        return Ok(DumpSteps { separators: d.step_separators, fci_step_gap: d.fci_step_gap });
    };
    let a = a.as_table().context("`attnrl` is not a table")?;
    let separators = match a.get("step_separators") {
        None => d.step_separators,
        Some(v) => v
            .as_array()
            .and_then(|xs| xs.iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
            .context("attnrl.step_separators is not a list of strings")?,
    };
    let fci_step_gap = match a.get("fci_step_gap") {
        None => d.fci_step_gap,
        Some(v) => v
            .as_integer()
            .and_then(|x| usize::try_from(x).ok())
            .context("attnrl.fci_step_gap is not a non-negative integer")?,
    };
    Ok(DumpSteps { separators, fci_step_gap })
}

/// The text codec of the run that wrote the dump at `dump`, whose resolved config is `config` (the
/// dump's `config` attribute): the tokenizer of the run's newest checkpoint beside the dump, else of
/// its `model.hf_dir` (the character tokenizer for a fresh model), with its `model.prompt_template`.
pub fn dump_codec(dump: &Path, config: &str) -> anyhow::Result<TextCodec> {
    let table: toml::Table =
        toml::from_str(config).map_err(|e| anyhow::anyhow!("not TOML: {}", e.to_string().trim()))?;
    let model = table.get("model").and_then(|m| m.as_table());
    let text = |k: &str| model.and_then(|m| m.get(k)).and_then(|v| v.as_str());
    let run_dir = dump.parent().unwrap_or(Path::new("."));
    let checkpoint = crate::train::checkpoint::list_checkpoints(run_dir)?.last().map(|(_, d)| d.clone());
    let dir = checkpoint.or_else(|| text("hf_dir").map(PathBuf::from));
    Ok(TextCodec::for_model(dir.as_deref(), text("prompt_template"))?)
}

/// Response step bounds [0, e_1, …, T] from per-token step indices: a step ends where the index
/// changes (`[0]` for an empty response).
pub fn bounds_from_step_index(step_index: &[u32]) -> Vec<usize> {
    let mut bounds = vec![0];
    bounds.extend((1..step_index.len()).filter(|&t| step_index[t] != step_index[t - 1]));
    if !step_index.is_empty() {
        bounds.push(step_index.len());
    }
    bounds
}

/// Print sample `k` of the dump at `path` to `out`. Its steps are those the run stored when it
/// sampled trees (the record's `step_index`, when that has more than one step), else the split at the
/// dump config's `[attnrl] step_separators` (or their defaults); Δ of the FCI rescoring is `delta`,
/// else the dump config's `fci_step_gap` (or its default, 4).
pub fn print_sample(
    path: &Path,
    k: usize,
    model: Option<&Path>,
    delta: Option<usize>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let t = read_trajectories(path)?;
    if k >= t.len() {
        bail!("{}: --sample {k} is out of range (the dump has {} samples)", path.display(), t.len());
    }
    let r = t.record(k).context("record out of range")?;
    let steps = dump_steps(&t.config).unwrap_or_else(|e| {
        eprintln!("warning: {}: attribute `config`: {e:#}; default step settings used", path.display());
        let d = AttnRlConfig::default();
        DumpSteps { separators: d.step_separators, fci_step_gap: d.fci_step_gap }
    });
    let delta = delta.unwrap_or(steps.fci_step_gap);
    let codec = dump_codec(path, &t.config).unwrap_or_else(|e| {
        eprintln!("warning: {}: the run's tokenizer: {e:#}; read with arbor's character tokenizer", path.display());
        TextCodec::default()
    });
    let texts: Vec<String> = r.response.iter().map(|&id| codec.piece(id)).collect();
    // a tree run stored its steps (0 everywhere without tree sampling); a stored single step is also
    // what the run's separators give, so an all-zero index says nothing and the separators decide
    let stored_steps = r.step_index.iter().any(|&j| j != 0);
    let bounds = if stored_steps {
        bounds_from_step_index(r.step_index)
    } else {
        response_step_bounds_from_texts(&texts, &steps.separators)
    };
    writeln!(
        out,
        "{}: sample {k} (step {}, policy version {}, prompt {}, sample {}), reward {}",
        path.display(),
        r.step,
        r.policy_version,
        r.prompt_id,
        r.sample_index,
        r.reward
    )?;
    writeln!(out, "prompt: {:?}", codec.tokenizer().decode(r.prompt))?;
    if r.branch_parent >= 0 {
        writeln!(
            out,
            "continuation: branched from sample {} of prompt {} at its response token {}",
            r.branch_parent, r.prompt_id, r.branch_token
        )?;
    }
    if stored_steps {
        writeln!(out, "steps: as the run split them (step_index)")?;
    } else {
        writeln!(out, "steps: split at the separators {:?}", steps.separators)?;
    }
    let mut fci: Vec<f32> = Vec::new();
    match scoring_model(path, model)? {
        Some((dir, m)) if !r.response.is_empty() => {
            let mut batch = Batch::new();
            let seq: Vec<u32> = r.prompt.iter().chain(r.response).copied().collect();
            batch.push_lm(&seq, 0)?;
            let mut ws = Workspace::new(&m.cfg, 0);
            m.forward(&batch, &mut ws)?;
            let steps = [SeqSteps {
                bounds: sequence_step_bounds(r.prompt.len(), &bounds),
                response_start: r.prompt.len(),
                end_of_thinking: None,
            }];
            let cfg = StatsConfig { fci: true, delta, rhythm: false, ..StatsConfig::default() };
            let stats = attention_stats(&m, &batch, &ws, &steps, &cfg)?;
            fci = stats.first().map(|s| s.fci.get(1..).unwrap_or_default().to_vec()).unwrap_or_default();
            writeln!(out, "FCI (Δ = {delta} steps) scored by {}", dir.display())?;
        }
        _ => writeln!(out, "FCI: no checkpoint next to the dump (give --model DIR to score it)")?,
    }
    // the FCI the run itself computed at generation time (tree sampling), when the dump has it
    let stored = r.fci.iter().any(|x| x.is_finite());
    let rhythm = r.waad.iter().any(|x| x.is_finite());
    writeln!(
        out,
        "{:>4}  {:>7}  {:>10}  {:>8}  {:>9}{}  text",
        "step",
        "FCI",
        "FCI (run)",
        "adv",
        "mean logp",
        if rhythm { "  max WAAD   max FAI" } else { "" }
    )?;
    for (s, w) in bounds.windows(2).enumerate() {
        let (a, b) = (w[0], w[1]);
        let run_fci = if stored { format!("{:.4}", r.fci[a]) } else { "-".to_string() };
        let peak = |v: &[f32]| v[a..b].iter().copied().filter(|x| x.is_finite()).fold(f32::NEG_INFINITY, f32::max);
        let marks = if rhythm { format!("  {:>8.4}  {:>8.4}", peak(r.waad), peak(r.fai)) } else { String::new() };
        let adv = r.advantages[a..b].iter().map(|&x| x as f64).sum::<f64>() / (b - a) as f64;
        let lp = r.behav_logp[a..b].iter().map(|&x| x as f64).sum::<f64>() / (b - a) as f64;
        let score = fci.get(s).map_or("-".to_string(), |y| format!("{y:.4}"));
        writeln!(
            out,
            "{:>4}  {:>7}  {:>10}  {:>8.4}  {:>9.3}{marks}  {:?}",
            s + 1,
            score,
            run_fci,
            adv,
            lp,
            texts[a..b].concat()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_settings_come_from_the_dump_config() {
        let d = dump_steps("[run]\nseed = 1\n").unwrap();
        assert_eq!(d, DumpSteps { separators: vec!["\n\n".into(), "\n".into()], fci_step_gap: 4 });
        assert_eq!(dump_steps("").unwrap(), d);
        let d = dump_steps("[attnrl]\nstep_separators = [\";\"]\nfci_step_gap = 2\n").unwrap();
        assert_eq!(d, DumpSteps { separators: vec![";".into()], fci_step_gap: 2 });
        assert_eq!(dump_steps("[attnrl]\nrho = 0.5\n").unwrap().fci_step_gap, 4);
        let e = dump_steps("[attnrl]\nfci_step_gap = -1\n").unwrap_err().to_string();
        assert!(e.contains("fci_step_gap"), "{e}");
        assert!(dump_steps("[attnrl]\nstep_separators = [1]\n").is_err());
        assert!(dump_steps("not toml [").is_err());
    }

    #[test]
    fn bounds_follow_the_step_index() {
        assert_eq!(bounds_from_step_index(&[0, 0, 1, 1, 1, 2]), [0, 2, 5, 6]);
        assert_eq!(bounds_from_step_index(&[0, 0, 0]), [0, 3]);
        assert_eq!(bounds_from_step_index(&[]), [0]);
    }
}
