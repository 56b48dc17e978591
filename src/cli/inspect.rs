//! `arbor inspect`: summarise a model directory (and later trajectory dumps).

use clap::Args;
use std::path::PathBuf;

/// Arguments of `arbor inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A model directory, config.json or *.safetensors file.
    pub path: PathBuf,
}

/// Run `arbor inspect`.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("arbor inspect {}: not yet available", args.path.display())
}
