//! `arbor inspect`: summarise a model directory, config.json or safetensors file (later: trajectory dumps).

use crate::io::hf::{read_index, CONFIG_FILE, INDEX_FILE, SINGLE_FILE};
use crate::io::tensor_file::{read_header, read_tensor_f32, SafetensorsHeader};
use crate::model::{ModelConfig, ParamLayout};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context};
use clap::Args;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Tensors with at most this many elements get min/max/mean printed.
const STATS_MAX_NUMEL: usize = 1 << 16;

/// Arguments of `arbor inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A model directory, config.json, *.safetensors or model.safetensors.index.json file.
    pub path: PathBuf,
    /// Print min/max/mean for tensors with at most this many elements (0: never).
    #[arg(long, default_value_t = STATS_MAX_NUMEL)]
    pub stats_max_numel: usize,
}

/// Run `arbor inspect`.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let path = &args.path;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.ends_with(".h5") || name.ends_with(".hdf5") {
        bail!("{}: HDF5 trajectory dumps are not yet supported", path.display());
    }
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    if path.is_dir() {
        return inspect_dir(path, args.stats_max_numel);
    }
    if name.ends_with(".safetensors") {
        let header = read_header(path)?;
        return print_tensors(&header, None, args.stats_max_numel);
    }
    if name.ends_with(".index.json") {
        let dir = path.parent().unwrap_or(Path::new("."));
        return print_shards(path, None, args.stats_max_numel, dir);
    }
    if name.ends_with(".json") {
        let cfg = ModelConfig::from_hf_file(path)?;
        print_config(&cfg);
        return Ok(());
    }
    bail!(
        "{}: don't know how to inspect this (expected a model directory, config.json or *.safetensors)",
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
    if dir.join(SINGLE_FILE).is_file() {
        let header = read_header(&dir.join(SINGLE_FILE))?;
        print_tensors(&header, layout.as_ref(), stats_max)?;
    } else if dir.join(INDEX_FILE).is_file() {
        print_shards(&dir.join(INDEX_FILE), layout.as_ref(), stats_max, dir)?;
    } else {
        println!("no weights ({SINGLE_FILE} or {INDEX_FILE})");
    }
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
    Ok(())
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
    println!("parameters: {}", cfg.num_params());
}

fn print_shards(index: &Path, layout: Option<&ParamLayout>, stats_max: usize, dir: &Path) -> anyhow::Result<()> {
    let map = read_index(index)?;
    let files: BTreeSet<PathBuf> = map.values().cloned().collect();
    println!("{}: {} tensors in {} shard(s)", index.display(), map.len(), files.len());
    let mut headers = Vec::new();
    for f in &files {
        let h = read_header(f).with_context(|| format!("shard listed in {}", index.display()))?;
        print_tensors(&h, None, stats_max)?;
        headers.push(h);
    }
    if let Some(layout) = layout {
        check_layout(layout, &headers, dir);
    }
    Ok(())
}

fn print_tensors(header: &SafetensorsHeader, layout: Option<&ParamLayout>, stats_max: usize) -> anyhow::Result<()> {
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
    if let Some(layout) = layout {
        check_layout(layout, std::slice::from_ref(header), header.path.parent().unwrap_or(Path::new(".")));
    }
    Ok(())
}

/// Print which layout tensors are missing or mis-shaped, and which stored tensors arbor ignores.
fn check_layout(layout: &ParamLayout, headers: &[SafetensorsHeader], dir: &Path) {
    let stored: Vec<_> = headers.iter().flat_map(|h| h.tensors.iter()).collect();
    let mut problems = 0;
    for spec in &layout.specs {
        match stored.iter().find(|t| t.name == spec.name) {
            None => {
                problems += 1;
                println!("layout: missing {} (expected shape {:?})", spec.name, spec.shape);
            }
            Some(t) if t.shape != spec.shape => {
                problems += 1;
                println!("layout: {} has shape {:?}, expected {:?}", spec.name, t.shape, spec.shape);
            }
            Some(_) => {}
        }
    }
    let ignored = stored.iter().filter(|t| layout.get(&t.name).is_none()).count();
    if problems == 0 {
        println!(
            "layout: all {} tensors match config.json in {} ({ignored} ignored)",
            layout.specs.len(),
            dir.display()
        );
    }
}
