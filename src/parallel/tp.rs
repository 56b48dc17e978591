//! The tensor-parallel group a model shard belongs to: a shared, thread-safe handle on the
//! communicator of the ranks that hold one model replica between them.
//!
//! The model keeps this handle so that `forward`/`backward`/decoding issue their all-reduces
//! without every caller threading a communicator through. Calls are serialised by a mutex;
//! the MPI implementation is initialised with `MPI_THREAD_MULTIPLE`, so the calling thread does
//! not matter.

use super::comm::{Comm, Local};
use crate::error::Result;
use std::sync::{Arc, Mutex};

/// A cloneable handle on a tensor-parallel communicator.
#[derive(Clone)]
pub struct TpGroup {
    comm: Arc<Mutex<Box<dyn Comm>>>,
    rank: usize,
    size: usize,
}

impl std::fmt::Debug for TpGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TpGroup(rank {} of {})", self.rank, self.size)
    }
}

impl TpGroup {
    /// Wrap a communicator (e.g. the grid's tp sub-communicator).
    pub fn new(comm: Box<dyn Comm>) -> Self {
        let (rank, size) = (comm.rank(), comm.size());
        TpGroup { comm: Arc::new(Mutex::new(comm)), rank, size }
    }

    /// Which group this is (equal for the clones of one group): what a device's communicator for
    /// the group is kept under.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.comm) as *const () as usize
    }

    /// The trivial group of one process.
    pub fn single() -> Self {
        TpGroup::new(Box::new(Local))
    }

    fn with<T>(&self, f: impl FnOnce(&dyn Comm) -> T) -> T {
        // a poisoned lock means another thread panicked inside a collective: a bug, not user input
        let guard = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        f(guard.as_ref())
    }
}

impl Comm for TpGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        self.with(|c| c.all_reduce_sum_f32(buf))
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.with(|c| c.all_reduce_sum_f64(buf))
    }
    fn all_reduce_max_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.with(|c| c.all_reduce_max_f64(buf))
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<()> {
        self.with(|c| c.broadcast_bytes(root, buf))
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.with(|c| c.all_gather_bytes(mine))
    }
    fn barrier(&self) -> Result<()> {
        self.with(|c| c.barrier())
    }
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Comm>> {
        self.with(|c| c.split(color, key))
    }
    fn send_bytes(&self, dest: usize, bytes: &[u8]) -> Result<()> {
        self.with(|c| c.send_bytes(dest, bytes))
    }
    fn recv_bytes(&self, src: usize) -> Result<Vec<u8>> {
        self.with(|c| c.recv_bytes(src))
    }
    fn abort(&self, msg: &str) -> ! {
        self.with(|c| c.abort(msg))
    }
    fn describe(&self) -> String {
        self.with(|c| c.describe())
    }
}
