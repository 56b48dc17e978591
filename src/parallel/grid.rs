//! The process grid: world = dp × tp. Ranks are laid out tp-fastest (the ranks of one
//! tensor-parallel group are consecutive, so they share a node under the usual block mapping).

use super::comm::Comm;
use super::tp::TpGroup;
use super::watchdog::Watchdog;
use crate::error::{Error, Result};

/// One rank's place in the grid and its two sub-communicators.
pub struct Grid {
    pub world: Box<dyn Comm>,
    /// Ranks holding the same tensor shard (same tp rank), across data-parallel replicas.
    pub dp: Box<dyn Comm>,
    /// Ranks sharing one model replica (its handle goes into the model shard).
    pub tp: TpGroup,
    /// Aborts the job when a step overruns (None in a single process without a watchdog).
    pub watchdog: Option<Watchdog>,
}

impl Grid {
    /// Split `world` into dp × tp (tp = `tp`); the world size must be a multiple of tp.
    pub fn new(world: Box<dyn Comm>, tp: usize) -> Result<Self> {
        let size = world.size();
        if tp == 0 || !size.is_multiple_of(tp) {
            return Err(Error::Invalid(format!(
                "parallel.tp = {tp} does not divide the world size {size} (world = dp × tp)"
            )));
        }
        let rank = world.rank();
        let (dp_rank, tp_rank) = (rank / tp, rank % tp);
        let dp = world.split(tp_rank, dp_rank)?;
        let tp_comm = TpGroup::new(world.split(size + dp_rank, tp_rank)?);
        Ok(Grid { world, dp, tp: tp_comm, watchdog: None })
    }

    /// Arm the watchdog's step deadline: `what` must finish within `timeout_s` seconds (none
    /// without a watchdog or with `timeout_s` = 0). One deadline at a time: the guard's drop
    /// disarms it, so a phase's setup guard is dropped before its first step's is armed.
    pub fn watch_step(&self, what: &str, timeout_s: f64) -> Option<super::watchdog::Armed> {
        let w = self.watchdog.as_ref().filter(|_| timeout_s > 0.0)?;
        Some(w.watch_step(what, std::time::Duration::from_secs_f64(timeout_s)))
    }

    /// A single-process grid.
    pub fn local() -> Self {
        use super::comm::Local;
        Grid { world: Box::new(Local), dp: Box::new(Local), tp: TpGroup::single(), watchdog: None }
    }

    /// "world 4 = dp 2 × tp 2"
    pub fn describe(&self) -> String {
        format!(
            "world {} = dp {} × tp {} ({})",
            self.world.size(),
            self.dp.size(),
            self.tp.size(),
            self.world.describe()
        )
    }

    /// Rank 0 of the world writes files and prints.
    pub fn is_root(&self) -> bool {
        self.world.rank() == 0
    }
}

/// The contiguous share of `0..n` owned by `rank` of `parts`: the first `n % parts` ranks get one
/// more. Concatenated in rank order the shares are `0..n`, so a global batch is the same for any
/// number of data-parallel ranks.
pub fn partition(n: usize, parts: usize, rank: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    let (base, extra) = (n / parts, n % parts);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_tile_the_range_in_rank_order() {
        for n in [0, 1, 7, 32] {
            for parts in 1..5 {
                let mut next = 0;
                for r in 0..parts {
                    let p = partition(n, parts, r);
                    assert_eq!(p.start, next);
                    assert!(p.len() == n / parts || p.len() == n / parts + 1);
                    next = p.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn tp_must_divide_the_world() {
        let err = Grid::new(Box::new(super::super::Local), 2).err().unwrap().to_string();
        assert!(err.contains("tp = 2") && err.contains("world size 1"), "{err}");
    }
}
