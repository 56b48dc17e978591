//! [`Comm`] over MPI (the `mpi` crate, Open MPI or MPICH). Collectives are armed on the
//! [`Watchdog`] so a rank stuck in one aborts the job with the collective's name.

use super::comm::Comm;
use super::watchdog::Watchdog;
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, PartitionMut};
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::*;
use mpi::Count;
use std::cell::RefCell;
use std::time::Duration;

/// First and longest pause between polls of a point-to-point message (`send_bytes`, `recv_bytes`).
const PATIENT_FIRST: Duration = Duration::from_micros(20);
const PATIENT_MAX: Duration = Duration::from_millis(1);

/// The largest point-to-point message arbor hands MPI, in bytes (`ARBOR_MPI_MAX_MESSAGE`, default
/// 1 GiB): MPI counts are 32-bit, so a larger payload (an `[async]` weight publication of a model
/// above ~500M f32 parameters) goes as its length, then pieces of at most this size.
fn max_message() -> usize {
    const DEFAULT: usize = 1 << 30;
    std::env::var("ARBOR_MPI_MAX_MESSAGE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(DEFAULT, |n| n.clamp(1, DEFAULT))
}

/// An MPI communicator (the world or a split of it).
pub struct MpiComm {
    comm: SimpleCommunicator,
    watchdog: Option<Watchdog>,
    /// World ranks of the other members, for the watchdog's message.
    others: Vec<usize>,
    /// Send-side copies of in-place reductions, kept across calls so a training step's gradient
    /// buckets allocate nothing after the first step.
    send_f32: RefCell<Vec<f32>>,
    send_f64: RefCell<Vec<f64>>,
}

// SAFETY: the MPI handle is a process-wide object; `arbor train` initialises MPI with
// MPI_THREAD_MULTIPLE, so it may be used from any thread. The RefCell buffers are only touched
// inside one collective call, and a communicator shared between threads is wrapped in a mutex
// (`TpGroup`), so no two threads use one `MpiComm` at the same time.
unsafe impl Send for MpiComm {}

/// Whether this process was started by an MPI launcher (mpirun/mpiexec/srun with PMI/PMIx).
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"].iter().any(|v| std::env::var_os(v).is_some())
}

impl MpiComm {
    /// One message of at most [`max_message`] bytes to `dest`. A large message waits for its
    /// receiver (rendezvous): wait politely, as [`MpiComm::recv_piece`] does.
    fn send_piece(&self, dest: usize, bytes: &[u8]) -> Result<()> {
        count(self.rank(), bytes.len(), "send")?;
        let to = self.comm.process_at_rank(dest as i32);
        mpi::request::scope(|scope| {
            let mut req = to.immediate_send(scope, bytes);
            let mut pause = PATIENT_FIRST;
            loop {
                match req.test() {
                    Ok(_) => break,
                    Err(r) => req = r,
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(PATIENT_MAX);
            }
        });
        Ok(())
    }

    /// The next message from `src`. Point-to-point messages are the async control plane
    /// (weights, batches, pieces): rare and large. Waiting for one sleeps between probes (backing
    /// off from 20 µs to 1 ms) instead of spinning in MPI's progress loop, so an idle rank leaves
    /// its core to the ranks that compute (on an oversubscribed node a spinning receiver slows the
    /// trainer it waits for).
    fn recv_piece(&self, src: usize) -> Vec<u8> {
        let from = self.comm.process_at_rank(src as i32);
        let mut pause = PATIENT_FIRST;
        while from.immediate_probe().is_none() {
            std::thread::sleep(pause);
            pause = (pause * 2).min(PATIENT_MAX);
        }
        from.receive_vec::<u8>().0
    }

    /// Wrap `comm`; collectives are watched by `watchdog` when given.
    pub fn new(comm: SimpleCommunicator, watchdog: Option<Watchdog>) -> Self {
        // local group arithmetic (no communication): members of this communicator as world ranks
        let world = SimpleCommunicator::world().group();
        let me = comm.rank();
        let ranks: Vec<i32> = (0..comm.size()).filter(|&r| r != me).collect();
        let others = comm.group().translate_ranks(&ranks, &world).into_iter().flatten().map(|r| r as usize).collect();
        MpiComm { comm, watchdog, others, send_f32: RefCell::default(), send_f64: RefCell::default() }
    }

    /// In-place reduction of `buf` with `op` (MPI needs distinct send and receive buffers).
    fn reduce<T: Equivalence + Copy>(&self, what: &str, send: &RefCell<Vec<T>>, buf: &mut [T], op: SystemOperation) {
        let mut send = send.borrow_mut();
        send.clear();
        send.extend_from_slice(buf);
        self.watch(what, || self.comm.all_reduce_into(&send[..], buf, op));
    }

    fn watch<T>(&self, what: &str, f: impl FnOnce() -> T) -> T {
        let _g = self.watchdog.as_ref().map(|w| w.watch_collective_among(what, &self.others));
        f()
    }
}

fn count(rank: usize, n: usize, what: &str) -> Result<Count> {
    Count::try_from(n).map_err(|_| Error::collective(rank, what, format!("{n} elements exceed MPI's count range")))
}

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }
    fn size(&self) -> usize {
        self.comm.size() as usize
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.reduce("all_reduce_sum_f32", &self.send_f32, buf, SystemOperation::sum());
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce("all_reduce_sum_f64", &self.send_f64, buf, SystemOperation::sum());
        Ok(())
    }
    fn all_reduce_max_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce("all_reduce_max_f64", &self.send_f64, buf, SystemOperation::max());
        Ok(())
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<()> {
        if root >= self.size() {
            let msg = format!("root {root} out of range for {} ranks", self.size());
            return Err(Error::collective(self.rank(), "broadcast", msg));
        }
        let mut len = [buf.len() as u64];
        let r = self.comm.process_at_rank(root as i32);
        self.watch("broadcast(len)", || r.broadcast_into(&mut len[..]));
        buf.resize(len[0] as usize, 0);
        self.watch("broadcast", || r.broadcast_into(&mut buf[..]));
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let n = self.size();
        let mut lens = vec![0u64; n];
        self.watch("all_gather(len)", || self.comm.all_gather_into(&(mine.len() as u64), &mut lens[..]));
        let counts: Vec<Count> =
            lens.iter().map(|&l| count(self.rank(), l as usize, "all_gather")).collect::<Result<_>>()?;
        let mut displs = Vec::with_capacity(n);
        let mut total: Count = 0;
        for &c in &counts {
            displs.push(total);
            total = total
                .checked_add(c)
                .ok_or_else(|| Error::collective(self.rank(), "all_gather", "total exceeds MPI count"))?;
        }
        if total == 0 {
            // nothing to move (MPI implementations may reject zero-size receive buffers)
            return Ok(vec![Vec::new(); n]);
        }
        let mut all = vec![0u8; total as usize];
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.watch("all_gather", || self.comm.all_gather_varcount_into(mine, &mut part));
        }
        Ok(counts.iter().zip(&displs).map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec()).collect())
    }
    fn barrier(&self) -> Result<()> {
        self.watch("barrier", || self.comm.barrier());
        Ok(())
    }
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Comm>> {
        let me = self.rank();
        let c = i32::try_from(color).map_err(|_| Error::collective(me, "split", format!("color {color} too large")))?;
        let k = i32::try_from(key).map_err(|_| Error::collective(me, "split", format!("key {key} too large")))?;
        let sub = self
            .watch("split", || self.comm.split_by_color_with_key(Color::with_value(c), k))
            .ok_or_else(|| Error::collective(me, "split", format!("MPI returned no communicator for color {color}")))?;
        Ok(Box::new(MpiComm::new(sub, self.watchdog.clone())))
    }
    fn send_bytes(&self, dest: usize, bytes: &[u8]) -> Result<()> {
        if dest >= self.size() {
            let msg = format!("rank {dest} out of range for {} ranks", self.size());
            return Err(Error::collective(self.rank(), "send", msg));
        }
        // the length first, then the pieces (MPI keeps the order of one sender's messages)
        self.send_piece(dest, &(bytes.len() as u64).to_le_bytes())?;
        for piece in bytes.chunks(max_message()) {
            self.send_piece(dest, piece)?;
        }
        Ok(())
    }
    fn recv_bytes(&self, src: usize) -> Result<Vec<u8>> {
        if src >= self.size() {
            let msg = format!("rank {src} out of range for {} ranks", self.size());
            return Err(Error::collective(self.rank(), "recv", msg));
        }
        let me = self.rank();
        let bad = |msg: String| Error::collective(me, "recv", format!("from rank {src}: {msg}"));
        let head = self.recv_piece(src);
        let len = <[u8; 8]>::try_from(head.as_slice())
            .map_err(|_| bad(format!("a {}-byte length (8 expected): ranks disagree on the protocol", head.len())))?;
        let total = usize::try_from(u64::from_le_bytes(len)).map_err(|_| bad("a length beyond memory".into()))?;
        let mut out = Vec::new();
        if total > max_message() {
            out.try_reserve_exact(total).map_err(|e| bad(format!("{total} bytes do not fit in memory: {e}")))?;
        }
        while out.len() < total {
            let piece = self.recv_piece(src);
            if piece.is_empty() || out.len() + piece.len() > total {
                return Err(bad(format!("a piece of {} bytes after {} of {total}", piece.len(), out.len())));
            }
            // (a message of one piece is that piece: no copy)
            if piece.len() == total {
                out = piece;
            } else {
                out.extend_from_slice(&piece);
            }
        }
        Ok(out)
    }
    fn abort(&self, msg: &str) -> ! {
        eprintln!("arbor rank {}: aborting the job: {msg}", self.rank());
        self.comm.abort(2)
    }
    fn describe(&self) -> String {
        let lib = mpi::environment::library_version().unwrap_or_default();
        let first = lib.split(['\n', '\0', ',']).next().unwrap_or("").trim().to_string();
        format!("mpi: {first}")
    }
}
