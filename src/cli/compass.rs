//! `arbor inspect runs/NAME/trajectories.h5 --sample K`: the "compass" view of one dumped sample:
//! its prompt and response split into steps (one line each), the reward, each step's advantage and
//! log-probs, and — scored by the run's newest checkpoint (or `--model DIR`) — each step's Forward
//! Context Influence, the attention later steps pay to it (ALGORITHMS.md §1).

use crate::attention::stats::{attention_stats, SeqSteps, StatsConfig};
use crate::attnrl::{response_step_bounds_from_texts, sequence_step_bounds};
use crate::io::trajectories::read_trajectories;
use crate::model::{Batch, Model, Workspace};
use crate::tokenizer::char::CharTokenizer;
use anyhow::{bail, Context};
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

/// Print sample `k` of the dump at `path`.
pub fn print_sample(path: &Path, k: usize, model: Option<&Path>, delta: usize) -> anyhow::Result<()> {
    let t = read_trajectories(path)?;
    if k >= t.len() {
        bail!("{}: --sample {k} is out of range (the dump has {} samples)", path.display(), t.len());
    }
    let r = t.record(k).context("record out of range")?;
    let tok = CharTokenizer::default();
    let texts: Vec<String> = r.response.iter().map(|&id| tok.decode(&[id])).collect();
    let bounds = response_step_bounds_from_texts(&texts, &["\n\n".to_string(), "\n".to_string()]);
    println!(
        "{}: sample {k} (step {}, policy version {}, prompt {}, sample {}), reward {}",
        path.display(),
        r.step,
        r.policy_version,
        r.prompt_id,
        r.sample_index,
        r.reward
    );
    println!("prompt: {:?}", tok.decode(&r.prompt[1.min(r.prompt.len())..]));
    if r.branch_parent >= 0 {
        println!(
            "continuation: branched from sample {} of prompt {} at its response token {}",
            r.branch_parent, r.prompt_id, r.branch_token
        );
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
            println!("FCI (Δ = {delta} steps) scored by {}", dir.display());
        }
        _ => println!("FCI: no checkpoint next to the dump (give --model DIR to score it)"),
    }
    // the FCI the run itself computed at generation time (tree sampling), when the dump has it
    let stored = r.fci.iter().any(|x| x.is_finite());
    let rhythm = r.waad.iter().any(|x| x.is_finite());
    println!(
        "{:>4}  {:>7}  {:>10}  {:>8}  {:>9}{}  text",
        "step",
        "FCI",
        "FCI (run)",
        "adv",
        "mean logp",
        if rhythm { "  max WAAD   max FAI" } else { "" }
    );
    for (s, w) in bounds.windows(2).enumerate() {
        let (a, b) = (w[0], w[1]);
        let run_fci = if stored { format!("{:.4}", r.fci[a]) } else { "-".to_string() };
        let peak = |v: &[f32]| v[a..b].iter().copied().filter(|x| x.is_finite()).fold(f32::NEG_INFINITY, f32::max);
        let marks = if rhythm { format!("  {:>8.4}  {:>8.4}", peak(r.waad), peak(r.fai)) } else { String::new() };
        let adv = r.advantages[a..b].iter().map(|&x| x as f64).sum::<f64>() / (b - a) as f64;
        let lp = r.behav_logp[a..b].iter().map(|&x| x as f64).sum::<f64>() / (b - a) as f64;
        let score = fci.get(s).map_or("-".to_string(), |y| format!("{y:.4}"));
        println!(
            "{:>4}  {:>7}  {:>10}  {:>8.4}  {:>9.3}{marks}  {:?}",
            s + 1,
            score,
            run_fci,
            adv,
            lp,
            texts[a..b].concat()
        );
    }
    Ok(())
}
