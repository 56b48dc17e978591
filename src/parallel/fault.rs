//! Fault injection for the never-hang tests: `ARBOR_INJECT_FAULT=<kind>:<rank>:<step>` makes
//! world rank `rank` fail (`error`), hang (`hang`), exit (`exit`, status 9) or crash (`crash`, SIGABRT) when it reaches global step
//! `step`. Step 0 is a phase's setup before its first step (the engine, a GPU run's NCCL
//! communicator, the first evaluation) when the run starts there. Unset (the normal case) it does
//! nothing. Documented in README (Slurm/MPI section).

use super::Grid;
use crate::error::{Error, Result};

/// Fail, hang or exit here if the environment asks this rank to at `step`.
pub fn maybe_inject(grid: &Grid, step: u64) -> Result<()> {
    maybe_inject_at(grid.world.rank(), step)
}

/// [`maybe_inject`] for world rank `world_rank` (a rank outside any training grid, e.g. a rollout rank).
pub fn maybe_inject_at(world_rank: usize, step: u64) -> Result<()> {
    let Ok(spec) = std::env::var("ARBOR_INJECT_FAULT") else { return Ok(()) };
    let parts: Vec<&str> = spec.split(':').collect();
    let [kind, rank, at] = parts[..] else {
        return Err(Error::Invalid(format!("ARBOR_INJECT_FAULT={spec:?}: expected kind:rank:step")));
    };
    let (Ok(rank), Ok(at)) = (rank.parse::<usize>(), at.parse::<u64>()) else {
        return Err(Error::Invalid(format!("ARBOR_INJECT_FAULT={spec:?}: rank and step must be integers")));
    };
    if rank != world_rank || at != step {
        return Ok(());
    }
    match kind {
        "error" => Err(Error::Invalid(format!("injected fault at step {step}"))),
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        "exit" => std::process::exit(9),
        "crash" => std::process::abort(),
        _ => Err(Error::Invalid(format!("ARBOR_INJECT_FAULT={spec:?}: kind must be error, hang, exit or crash"))),
    }
}
