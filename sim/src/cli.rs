//! `arbor sim ...` subcommands (parsed by the `arbor` binary, executed here).

use clap::Subcommand;

/// Simulator subcommands.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run one scenario file.
    Run {
        /// Scenario TOML file.
        #[arg(long)]
        scenario: std::path::PathBuf,
    },
}

/// Execute a simulator subcommand.
pub fn run(cmd: SimCommand) -> anyhow::Result<()> {
    match cmd {
        SimCommand::Run { scenario } => {
            anyhow::bail!("arbor sim run {}: the simulator is not yet available", scenario.display())
        }
    }
}
