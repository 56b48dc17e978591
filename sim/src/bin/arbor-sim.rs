//! Stand-alone entry for development: `cargo run -p arbor-sim --release -- run --scenario FILE`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "arbor-sim", about = "Deterministic discrete-event simulator of RL training clusters")]
struct Args {
    #[command(subcommand)]
    cmd: arbor_sim::cli::SimCommand,
}

fn main() -> anyhow::Result<()> {
    arbor_sim::cli::run(Args::parse().cmd)
}
