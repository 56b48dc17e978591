//! The communicator: the handful of collectives the trainer needs, behind one trait so the
//! training code is written once for one process, MPI ranks, or (later) NCCL.

use crate::error::{Error, Result};

/// Default gradient bucket: 4 MiB (1 M f32), large enough to amortise latency, small enough to
/// bound the staging buffer and to overlap in the future.
pub const DEFAULT_BUCKET_BYTES: usize = 4 << 20;

/// Collectives over a group of ranks. Every rank of the group must call the same collectives in
/// the same order (SPMD); a rank that fails must [`Comm::abort`] so the others do not hang.
/// `Send` so a model shard can hold its tensor-parallel group ([`super::TpGroup`]).
pub trait Comm: Send {
    /// This process's index in the group, 0-based.
    fn rank(&self) -> usize;
    /// Number of ranks in the group.
    fn size(&self) -> usize;
    /// In-place elementwise sum over all ranks.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// In-place elementwise sum over all ranks.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// In-place elementwise max over all ranks.
    fn all_reduce_max_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Root's bytes replace everyone's `buf` (resized as needed).
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<()>;
    /// Every rank's bytes (any length), in rank order, on every rank.
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Wait until every rank arrives.
    fn barrier(&self) -> Result<()>;
    /// Sub-group of the ranks with the same `color`, ordered by `key` (then by rank).
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Comm>>;
    /// Abort the whole job (every rank of the world) with `msg`; never returns.
    fn abort(&self, msg: &str) -> !;
    /// Send `bytes` to rank `dest` of this group (returns once the buffer may be reused). Not
    /// watched by the collective timeout: a receiver may legitimately wait a whole step.
    fn send_bytes(&self, dest: usize, bytes: &[u8]) -> Result<()> {
        let _ = bytes;
        Err(Error::collective(
            self.rank(),
            format!("send to rank {dest}"),
            format!("{}: point-to-point messages are not supported", self.describe()),
        ))
    }
    /// Receive the next message from rank `src` of this group (any length), in send order.
    fn recv_bytes(&self, src: usize) -> Result<Vec<u8>> {
        Err(Error::collective(
            self.rank(),
            format!("receive from rank {src}"),
            format!("{}: point-to-point messages are not supported", self.describe()),
        ))
    }
    /// Short description ("local", "mpi (Open MPI 4.1.4)", ...).
    fn describe(&self) -> String;
}

/// The single-process communicator: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Comm for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_max_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, root: usize, _buf: &mut Vec<u8>) -> Result<()> {
        if root != 0 {
            return Err(Error::collective(0, "broadcast", format!("root {root} out of range for 1 rank")));
        }
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn split(&self, _color: usize, _key: usize) -> Result<Box<dyn Comm>> {
        Ok(Box::new(Local))
    }
    fn abort(&self, msg: &str) -> ! {
        eprintln!("arbor: aborting: {msg}");
        std::process::exit(1)
    }
    fn describe(&self) -> String {
        "local (1 process)".into()
    }
}

/// Sum `grads` over all ranks in buckets of at most `bucket_bytes` (≥ one f32): one message per
/// bucket, so a large model never sends one giant message and small tensors are not sent one by
/// one. Returns the number of buckets sent.
pub fn all_reduce_buckets(comm: &dyn Comm, grads: &mut [f32], bucket_bytes: usize) -> Result<usize> {
    if comm.size() == 1 {
        return Ok(0);
    }
    let per = (bucket_bytes / std::mem::size_of::<f32>()).max(1);
    let mut n = 0;
    for chunk in grads.chunks_mut(per) {
        comm.all_reduce_sum_f32(chunk)?;
        n += 1;
    }
    Ok(n)
}

/// Every rank's `values`, concatenated in rank order (the order of one process when each rank
/// holds a contiguous share), and where this rank's start in them. `what` names the collective in
/// an error (a rank whose bytes are not whole values).
pub fn all_gather_in_rank_order<T: bytemuck::Pod>(
    comm: &dyn Comm,
    values: &[T],
    what: &str,
) -> Result<(Vec<T>, usize)> {
    let size = std::mem::size_of::<T>();
    let mut out = Vec::new();
    let mut offset = 0;
    for (r, b) in comm.all_gather_bytes(bytemuck::cast_slice(values))?.iter().enumerate() {
        if r == comm.rank() {
            offset = out.len();
        }
        if b.len() % size != 0 {
            return Err(Error::collective(r, what, format!("{} bytes, not whole {size}-byte values", b.len())));
        }
        // (copied: the received bytes need not be aligned for T)
        out.extend(bytemuck::pod_collect_to_vec::<u8, T>(b));
    }
    Ok((out, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_collectives_are_identities_and_buckets_are_skipped() {
        let c = Local;
        let mut v = vec![1.0f32, 2.0];
        c.all_reduce_sum_f32(&mut v).unwrap();
        assert_eq!(v, [1.0, 2.0]);
        assert_eq!(all_reduce_buckets(&c, &mut v, 4).unwrap(), 0);
        assert_eq!(c.all_gather_bytes(b"ab").unwrap(), vec![b"ab".to_vec()]);
        assert!(c.broadcast_bytes(1, &mut Vec::new()).is_err());
    }
}
