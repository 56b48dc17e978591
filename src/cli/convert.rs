//! `arbor convert`: read an HF model directory and write it back (dtype, sharding).

use clap::Args;
use std::path::PathBuf;

/// Arguments of `arbor convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Source HF model directory (`hf:` prefix accepted).
    #[arg(long)]
    pub from: String,
    /// Destination directory (created).
    #[arg(long)]
    pub to: PathBuf,
}

/// Run `arbor convert`.
pub fn run(args: &ConvertArgs) -> anyhow::Result<()> {
    anyhow::bail!("arbor convert {} -> {}: not yet available", args.from, args.to.display())
}
