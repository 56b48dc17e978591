//! `arbor inspect`: summarise a model directory, config.json, safetensors file or HDF5 trajectory dump.

use crate::io::dtype::loadable_width;
use crate::io::hf::{read_index, CONFIG_FILE, INDEX_FILE, SINGLE_FILE};
use crate::io::tensor_file::{parse_dtype, read_header, read_tensor_f32, unknown_dtype, SafetensorsHeader};
use crate::io::trajectories::{read_summary, StepStats, TrajectorySummary};
use crate::model::{ModelConfig, ParamLayout};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context};
use clap::Args;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Tensors with at most this many elements get min/max/mean printed.
const STATS_MAX_NUMEL: usize = 1 << 16;
/// A trajectory dump with more steps than this gets only its first and last few steps listed.
const STEPS_LISTED: usize = 10;

/// Arguments of `arbor inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A model directory, a run directory (runs/NAME), a directory of runs (an `arbor experiment`'s
    /// out dir, or runs/), config.json, *.safetensors, model.safetensors.index.json or trajectory dump (*.h5).
    pub path: PathBuf,
    /// Print min/max/mean for tensors with at most this many elements (0: never).
    #[arg(long, default_value_t = STATS_MAX_NUMEL)]
    pub stats_max_numel: usize,
    /// For a trajectory dump: print sample K with its steps, advantages and FCI scores.
    #[arg(long)]
    pub sample: Option<usize>,
    /// Model that scores FCI for `--sample` (default: the newest checkpoint next to the dump).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Δ of the FCI sum for `--sample`, in steps (default: the dump config's `[attnrl]
    /// fci_step_gap`, else 4).
    #[arg(long)]
    pub fci_step_gap: Option<usize>,
}

/// Run `arbor inspect`.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    // (Δ = 0 would sum no later step's attention: the run config refuses attnrl.fci_step_gap = 0 too)
    if args.fci_step_gap == Some(0) {
        bail!("--fci-step-gap 0: must be at least 1 (Δ of the FCI sum, in steps, as [attnrl] fci_step_gap)");
    }
    let path = &args.path;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.ends_with(".h5") || name.ends_with(".hdf5") {
        if let Some(k) = args.sample {
            let out = &mut std::io::stdout().lock();
            return crate::cli::compass::print_sample(path, k, args.model.as_deref(), args.fci_step_gap, out);
        }
        let summary = read_summary(path)?;
        print_trajectory_summary(&summary);
        return Ok(());
    }
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    if path.is_dir() && crate::cli::run_progress::is_run_dir(path) {
        return inspect_run(path);
    }
    let model_files = [CONFIG_FILE, SINGLE_FILE, INDEX_FILE].iter().any(|f| path.join(f).is_file());
    if path.is_dir() && !model_files {
        // a directory of runs: an experiment's (compare, seeds, sweep) or `runs/` itself
        if let Some(lines) = crate::cli::run_progress::describe_runs(path, std::time::SystemTime::now()) {
            println!("{}", lines.join("\n"));
            return Ok(());
        }
    }
    if path.is_dir() {
        return inspect_dir(path, args.stats_max_numel);
    }
    if name.ends_with(".safetensors") {
        let header = read_header(path)?;
        return verdict(path, print_tensors(&header, None, args.stats_max_numel).len());
    }
    if name.ends_with(".index.json") {
        let dir = path.parent().unwrap_or(Path::new("."));
        return verdict(path, print_shards(path, None, args.stats_max_numel, dir)?);
    }
    if name.ends_with(".json") {
        let cfg = ModelConfig::from_hf_file(path)?;
        print_config(&cfg);
        return Ok(());
    }
    bail!(
        "{}: don't know how to inspect this (expected a model directory, config.json, *.safetensors or *.h5)",
        path.display()
    )
}

fn inspect_dir(dir: &Path, stats_max: usize) -> anyhow::Result<()> {
    let cfg_path = dir.join(CONFIG_FILE);
    let cfg = if cfg_path.is_file() {
        let cfg = ModelConfig::from_hf_file(&cfg_path)?;
        print_config(&cfg);
        Some(cfg)
    } else {
        println!("(no config.json)");
        None
    };
    let layout = cfg.as_ref().map(ParamLayout::new);
    let problems = if dir.join(SINGLE_FILE).is_file() {
        let header = read_header(&dir.join(SINGLE_FILE))?;
        print_tensors(&header, layout.as_ref(), stats_max).len()
    } else if dir.join(INDEX_FILE).is_file() {
        print_shards(&dir.join(INDEX_FILE), layout.as_ref(), stats_max, dir)?
    } else {
        println!("no weights ({SINGLE_FILE} or {INDEX_FILE})");
        0
    };
    match Tokenizer::from_dir(dir)? {
        Some(t) => println!(
            "tokenizer: vocab {}, bos {:?}, eos {:?}, pad {:?}",
            t.vocab_size(),
            t.bos_id(),
            t.eos_id(),
            t.pad_id()
        ),
        None => println!("tokenizer: none"),
    }
    verdict(dir, problems + check_manifest(dir))
}

/// A run directory: each checkpoint checked against its manifest (sizes, then checksums), the one
/// `--resume latest|auto` takes, the folders of rolled-back branches, and the run's progress
/// (`run_progress`). Fails when a checkpoint is incomplete or damaged.
fn inspect_run(run: &Path) -> anyhow::Result<()> {
    use crate::train::checkpoint::{check_intact, list_checkpoints};
    let all = list_checkpoints(run)?;
    println!("run {}: {} checkpoint(s)", run.display(), all.len());
    let status: Vec<Result<usize, String>> =
        all.iter().map(|(_, dir)| check_intact(dir).map_err(|e| e.to_string())).collect();
    let taken = status.iter().rposition(Result::is_ok);
    let best = crate::train::checkpoint::read_best(run);
    for (i, ((step, _), st)) in all.iter().zip(&status).enumerate() {
        match st {
            Ok(n) => {
                let mark = if Some(i) == taken { "  <- --resume latest|auto takes this one" } else { "" };
                let best = match &best {
                    Some(b) if b.step == *step => {
                        format!("  <- best: {} {:.4} at RL step {}", b.metric, b.value, b.rl_step)
                    }
                    _ => String::new(),
                };
                println!("  step-{step}: intact ({n} files){mark}{best}");
            }
            Err(e) => println!("problem: step-{step}: {e}"),
        }
    }
    if taken.is_none() {
        println!("  (no intact checkpoint: --resume auto would start afresh)");
    }
    // (a run that has not yet written a checkpoint has no folder of them)
    let folders = match run.join("checkpoints").is_dir() {
        true => std::fs::read_dir(run.join("checkpoints"))
            .with_context(|| format!("reading {}", run.join("checkpoints").display()))?
            .collect(),
        false => Vec::new(),
    };
    let mut aside: Vec<String> = folders
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(crate::train::run_dir::SUPERSEDED_PREFIX))
        .collect();
    aside.sort();
    for name in aside {
        let folder = run.join("checkpoints").join(&name);
        let n = std::fs::read_dir(&folder)
            .with_context(|| format!("reading {}", folder.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("step-") && e.path().is_dir())
            .count();
        println!("  {name}/: {n} checkpoint(s) of a rolled-back branch (resumable into another directory)");
    }
    for line in crate::cli::run_progress::describe(run, std::time::SystemTime::now()) {
        println!("{line}");
    }
    let broken = status.iter().filter(|s| s.is_err()).count();
    if broken > 0 {
        bail!("{}: {broken} incomplete or damaged checkpoint(s) listed above (a resume skips them)", run.display());
    }
    Ok(())
}

/// An arbor checkpoint's files against its manifest (sizes, then checksums, as a resume checks
/// them): one line, or one problem; returns the number of problems.
fn check_manifest(dir: &Path) -> usize {
    use crate::train::checkpoint::{check_intact, MANIFEST_FILE};
    if !dir.join(MANIFEST_FILE).is_file() {
        return 0;
    }
    match check_intact(dir) {
        Ok(n) => {
            println!("checkpoint: the {n} files of {MANIFEST_FILE} are there with their sizes and checksums");
            0
        }
        Err(e) => {
            println!("problem: {e}");
            1
        }
    }
}

/// Fail when the listing found problems: `arbor train` would refuse these weights.
fn verdict(path: &Path, problems: usize) -> anyhow::Result<()> {
    if problems > 0 {
        bail!("{}: {problems} problem(s) listed above; `arbor train` would refuse these weights", path.display());
    }
    Ok(())
}

/// Print one problem line (what loading for training says about it).
fn problem(file: &Path, tensor: &str, msg: &str) {
    println!("problem: {}: tensor `{tensor}`: {msg}", file.display());
}

fn print_config(cfg: &ModelConfig) {
    println!(
        "arch {:?}: hidden {}, intermediate {}, layers {}, heads {} (kv {}, head_dim {}), vocab {}, max_pos {}, \
         rope_theta {}, rms_norm_eps {}, tied {}, qkv_bias {}",
        cfg.arch,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_layers,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size,
        cfg.max_position_embeddings,
        cfg.rope_theta,
        cfg.rms_norm_eps,
        cfg.tie_word_embeddings,
        cfg.qkv_bias
    );
    if let Some(s) = &cfg.rope_scaling {
        println!("rope scaling: {s:?}");
    }
    if cfg.qk_norm() {
        println!("query and key heads RMS-normed before RoPE (q_norm, k_norm)");
    }
    println!("parameters: {}", cfg.num_params());
}

/// List every shard of an index; returns the number of problems printed.
fn print_shards(index: &Path, layout: Option<&ParamLayout>, stats_max: usize, dir: &Path) -> anyhow::Result<usize> {
    let map = read_index(index)?;
    let files: BTreeSet<PathBuf> = map.values().cloned().collect();
    println!("{}: {} tensors in {} shard(s)", index.display(), map.len(), files.len());
    let mut headers = Vec::new();
    let mut flagged = Vec::new();
    for f in &files {
        let h = read_header(f).with_context(|| format!("shard listed in {}", index.display()))?;
        flagged.extend(print_tensors(&h, None, stats_max));
        headers.push(h);
    }
    let layout_problems = layout.map_or(0, |layout| check_layout(layout, &headers, dir, &flagged));
    Ok(flagged.len() + layout_problems)
}

/// List a file's tensors (with stats for small ones), then what loading it would refuse;
/// returns the (file, tensor) of every problem printed.
fn print_tensors(header: &SafetensorsHeader, layout: Option<&ParamLayout>, stats_max: usize) -> Vec<(PathBuf, String)> {
    println!("{}: {} tensors, {} bytes", header.path.display(), header.tensors.len(), header.file_len);
    for t in &header.tensors {
        let mut line = format!("  {:<56} {:<5} {:<14}", t.name, t.dtype, format!("{:?}", t.shape));
        if t.numel() <= stats_max && t.numel() > 0 {
            if let Ok(v) = read_tensor_f32(header, t) {
                let min = v.iter().copied().fold(f32::INFINITY, f32::min);
                let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
                line += &format!("  min {min:.4e} max {max:.4e} mean {mean:.4e}");
            }
        }
        println!("{line}");
    }
    let mut flagged = Vec::new();
    for (tensor, msg) in header.load_problems() {
        problem(&header.path, &tensor, &msg);
        flagged.push((header.path.clone(), tensor));
    }
    if let Some(layout) = layout {
        let dir = header.path.parent().unwrap_or(Path::new("."));
        for _ in 0..check_layout(layout, std::slice::from_ref(header), dir, &flagged) {
            flagged.push((header.path.clone(), "<layout>".into()));
        }
    }
    flagged
}

/// Print which layout tensors are missing, mis-shaped or stored in a dtype arbor does not load
/// (unless `flagged` already names that file and tensor), and which stored tensors arbor
/// ignores; returns the number of problems printed.
fn check_layout(
    layout: &ParamLayout,
    headers: &[SafetensorsHeader],
    dir: &Path,
    flagged: &[(PathBuf, String)],
) -> usize {
    let stored: Vec<_> = headers.iter().flat_map(|h| h.tensors.iter().map(move |t| (h, t))).collect();
    let (mut problems, mut clean) = (0, true);
    for spec in &layout.specs {
        match stored.iter().find(|(_, t)| t.name == spec.name) {
            None => {
                (problems, clean) = (problems + 1, false);
                println!("layout: missing {} (expected shape {:?})", spec.name, spec.shape);
            }
            Some((_, t)) if t.shape != spec.shape => {
                (problems, clean) = (problems + 1, false);
                println!("layout: {} has shape {:?}, expected {:?}", spec.name, t.shape, spec.shape);
            }
            Some((h, t)) => {
                let refused = match parse_dtype(&t.dtype) {
                    None => Some(unknown_dtype(&t.dtype)),
                    Some(dt) => loadable_width(dt).err(),
                };
                if let Some(msg) = refused {
                    clean = false;
                    if !flagged.iter().any(|(f, n)| *f == h.path && *n == t.name) {
                        problems += 1;
                        problem(&h.path, &t.name, &msg);
                    }
                }
            }
        }
    }
    let ignored = stored.iter().filter(|(_, t)| layout.get(&t.name).is_none()).count();
    if clean {
        println!(
            "layout: all {} tensors match config.json in {} ({ignored} ignored)",
            layout.specs.len(),
            dir.display()
        );
    }
    problems
}

/// Print what `arbor inspect` shows about a trajectory dump.
fn print_trajectory_summary(s: &TrajectorySummary) {
    println!(
        "{}: arbor trajectory dump, format {}, written by arbor {}",
        s.path.display(),
        s.format_version,
        if s.arbor_version.is_empty() { "?" } else { &s.arbor_version }
    );
    for (name, value) in &s.attributes {
        match name.as_str() {
            "format_version" | "arbor_version" => {}
            "config" => println!(
                "config: {} lines of TOML (print it with: h5dump -a /config {})",
                value.lines().count(),
                s.path.display()
            ),
            _ => println!("{name}: {value}"),
        }
    }
    println!("samples: {}", s.samples);
    if s.incomplete_rows > 0 {
        println!("incomplete rows ignored: {} (the writer was stopped in the middle of an append)", s.incomplete_rows);
    }
    if let (Some(first), Some(last)) = (s.steps.first(), s.steps.last()) {
        println!("steps: {} (step {} .. {})", s.steps.len(), first.step, last.step);
    } else {
        println!("steps: 0");
    }
    if let Some((lo, hi)) = s.policy_versions {
        println!("policy versions: {lo} .. {hi}");
    }
    if let Some(mean) = s.reward_mean {
        println!("reward mean: {mean:.4}");
    }
    let n = s.steps.len();
    let (head, tail) = if n > STEPS_LISTED { (STEPS_LISTED / 2, STEPS_LISTED / 2) } else { (n, 0) };
    let print_step = |st: &StepStats| {
        println!(
            "  step {:>6}: {:>5} samples, reward mean {:.4}, response length mean {:.1}",
            st.step, st.samples, st.reward_mean, st.response_len_mean
        )
    };
    s.steps[..head].iter().for_each(print_step);
    if n > head + tail {
        println!("  ... {} steps not shown", n - head - tail);
    }
    s.steps[n - tail..].iter().for_each(print_step);
    if let Some(mean) = s.response_len_mean {
        println!("response length: mean {mean:.1}, max {}", s.response_len_max);
    }
    println!("tokens: {} prompt, {} response", s.prompt_tokens, s.response_tokens);
    println!("datasets:");
    for d in &s.datasets {
        let chunk = d.chunk.as_ref().map(|c| format!("chunk {c:?}")).unwrap_or_else(|| "contiguous".into());
        println!("  {:<18} {:<8} {:<12} {chunk} {}", d.name, d.dtype, format!("{:?}", d.shape), d.filters.join("+"));
    }
}
