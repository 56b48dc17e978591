//! `arbor convert`: read an HF model directory and write it back (dtype, sharding).

use crate::io::{load_hf_dir_with_report, save_hf_dir, SaveOptions, StoreDtype};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context};
use clap::Args;
use std::path::{Path, PathBuf};

/// Files copied verbatim from the source directory when present (tokenizer and generation settings).
const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// Arguments of `arbor convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Source HF model directory (`hf:` prefix accepted).
    #[arg(long)]
    pub from: String,
    /// Destination directory (created); without it the source is only read and checked.
    #[arg(long)]
    pub to: Option<PathBuf>,
    /// Element type of the written weights: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: StoreDtype,
    /// Split the weights into shards of at most this many MiB (default: one model.safetensors).
    #[arg(long)]
    pub max_shard_size_mb: Option<u64>,
    /// Write into a non-empty destination (model files there are replaced).
    #[arg(long)]
    pub force: bool,
}

/// The directory named by `--from`, without an `hf:` prefix.
pub fn source_dir(from: &str) -> PathBuf {
    PathBuf::from(from.strip_prefix("hf:").unwrap_or(from))
}

/// `path` made absolute with symlinks resolved as far as it exists (for comparing source and destination).
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => resolved(parent).join(name),
        _ => std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf()),
    }
}

/// Run `arbor convert`.
pub fn run(args: &ConvertArgs) -> anyhow::Result<()> {
    let from = source_dir(&args.from);
    if !from.is_dir() {
        bail!("--from {}: not a directory (expected an HF model directory with config.json)", from.display());
    }
    if args.max_shard_size_mb == Some(0) {
        bail!("--max-shard-size-mb must be positive");
    }
    if let Some(to) = &args.to {
        if resolved(to) == resolved(&from) {
            bail!("--to {} is the source directory; refusing to overwrite the model being read", to.display());
        }
        let non_empty = std::fs::read_dir(to).map(|mut d| d.next().is_some()).unwrap_or(false);
        if non_empty && !args.force {
            bail!("--to {}: directory is not empty (pass --force to replace the model files in it)", to.display());
        }
        if to.exists() && !to.is_dir() {
            bail!("--to {}: exists and is not a directory", to.display());
        }
    }
    let loaded = load_hf_dir_with_report(&from).with_context(|| format!("reading {}", from.display()))?;
    let tokenizer = Tokenizer::from_dir(&from)?;
    let base_config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(from.join("config.json")).with_context(|| format!("reading {}", from.display()))?,
    )?;
    let n_params = loaded.config.num_params();
    let stored: Vec<String> = loaded.dtypes.iter().map(|(d, n)| format!("{n}×{d}")).collect();
    let tok = match &tokenizer {
        Some(t) => format!("tokenizer vocab {}", t.vocab_size()),
        None => "no tokenizer".to_string(),
    };
    let Some(to) = &args.to else {
        println!(
            "checked {}: {:?}, {n_params} params, stored {}, {} file(s), {} ignored tensor(s), {tok}; \
             nothing written (no --to)",
            from.display(),
            loaded.config.arch,
            stored.join(" "),
            loaded.files.len(),
            loaded.ignored.len(),
        );
        return Ok(());
    };
    let opts = SaveOptions {
        dtype: args.dtype,
        max_shard_bytes: args
            .max_shard_size_mb
            .map(|mb| mb.checked_mul(1024 * 1024).context(format!("--max-shard-size-mb {mb}: too large")))
            .transpose()?,
        base_config: Some(base_config),
    };
    let summary = save_hf_dir(to, &loaded.config, &loaded.params, &opts)?;
    let (mut copied, mut removed) = (0, 0);
    for name in SIDE_FILES {
        let (src, dst) = (from.join(name), to.join(name));
        if src.is_file() {
            let mut staged = crate::io::atomic::StagedFiles::new(to)?;
            let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            staged.write(name, &bytes)?;
            staged.commit()?;
            copied += 1;
        } else if dst.is_file() {
            // (--force into another model's directory: its tokenizer does not go with these weights)
            std::fs::remove_file(&dst).with_context(|| format!("removing {}", dst.display()))?;
            removed += 1;
        }
    }
    if removed > 0 {
        println!("removed {removed} side file(s) of the model that was in {} (the source has none)", to.display());
    }
    println!(
        "converted {} -> {}: {:?}, {n_params} params, {} -> {}, {} shard(s), {} tensor bytes ({} written), \
         {} ignored tensor(s), {tok}, {copied} side file(s) copied",
        from.display(),
        to.display(),
        loaded.config.arch,
        stored.join(" "),
        args.dtype,
        summary.files.len(),
        summary.tensor_bytes,
        summary.file_bytes,
        loaded.ignored.len(),
    );
    Ok(())
}
