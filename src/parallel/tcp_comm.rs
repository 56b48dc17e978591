//! [`Comm`] over TCP to the hub of `arbor launch` ([`super::hub`]): multi-process jobs on one
//! machine without MPI (a node with no MPI installed, or the GPU check machine). Every
//! communicator of a process shares one connection; a reader thread sorts what arrives into
//! per-communicator replies and per-sender messages, so collectives and point-to-point messages
//! on different communicators may run on different threads, as with MPI_THREAD_MULTIPLE.
//! Collectives are armed on the [`Watchdog`] as MPI's are.

use super::comm::Comm;
use super::watchdog::Watchdog;
use super::wire::{self, Frame};
use crate::error::{Error, Result};
use std::collections::{HashMap, VecDeque};
use std::io::BufReader;
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The environment `arbor launch` gives each rank: the hub's address, the rank, the world size.
pub const HUB_VAR: &str = "ARBOR_HUB";
pub const RANK_VAR: &str = "ARBOR_HUB_RANK";
pub const SIZE_VAR: &str = "ARBOR_HUB_SIZE";

/// How long a rank keeps trying to reach the hub, in seconds (set by `arbor launch` from its
/// `--join-timeout-s`: a rank of another machine may start before the hub listens).
pub const JOIN_VAR: &str = "ARBOR_HUB_JOIN_S";

/// The hub's join timeout: `JOIN_VAR`, or 10 minutes (at most a day).
fn join_timeout() -> Duration {
    let s = std::env::var(JOIN_VAR).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(600);
    Duration::from_secs(s.min(86_400))
}

/// A connection to `addr`, tried again (every 0.1 s, then up to every 2 s) until it succeeds or
/// `within` has passed: then the last error. A host name that does not resolve is tried for
/// `resolve_within` at most (a mistyped `--master` fails then, not at the join timeout).
fn connect_within(addr: &str, within: Duration, resolve_within: Duration) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let start = std::time::Instant::now();
    let deadline = start + within;
    let mut pause = Duration::from_millis(100);
    loop {
        let tried = match addr.to_socket_addrs() {
            Ok(resolved) => TcpStream::connect(&resolved.collect::<Vec<_>>()[..]),
            Err(e) if start.elapsed() >= resolve_within => {
                return Err(std::io::Error::new(e.kind(), format!("{addr} does not resolve: {e}")))
            }
            Err(e) => Err(e),
        };
        match tried {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() + pause >= deadline => return Err(e),
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// How long a rank that lost the launcher's hub may take to stop on its own (its error says more
/// than this one) before it is ended.
const LOST_HUB_GRACE: Duration = Duration::from_secs(10);

/// End this process [`LOST_HUB_GRACE`] after its connection to the hub ended unexpectedly,
/// unless it closes the connection itself meanwhile. `_exit`: the exit-time teardown could wait
/// behind a GPU collective that never completes.
fn end_after_lost_hub(link: &Arc<Link>, why: &str) {
    let deadline = std::time::Instant::now() + LOST_HUB_GRACE;
    while std::time::Instant::now() < deadline {
        if link.leaving.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "arbor rank {}: lost the launcher's hub at {} ({why}) {} s ago; ending this rank",
        link.world_rank,
        link.addr,
        LOST_HUB_GRACE.as_secs()
    );
    // SAFETY: _exit ends the process at once; nothing of this process is used after it
    unsafe { libc::_exit(1) }
}

/// Whether this process was started by `arbor launch`.
pub fn launched_by_hub() -> bool {
    std::env::var_os(HUB_VAR).is_some()
}

/// What the reader thread has received and not yet handed out.
#[derive(Default)]
struct Inbox {
    replies: HashMap<u64, VecDeque<Frame>>,
    messages: HashMap<(u64, u64), VecDeque<Vec<u8>>>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
    /// Whether the hub said every rank has connected ([`wire::WELCOME`]).
    welcomed: bool,
    /// World ranks the hub said have exited ([`wire::LEFT`]).
    left: std::collections::HashSet<usize>,
}

/// A process's connection to the hub, shared by its communicators.
struct Link {
    /// Set when this process closes its connection: an end of the connection after it is
    /// expected, not a lost hub.
    leaving: std::sync::atomic::AtomicBool,
    writer: Mutex<TcpStream>,
    inbox: Mutex<Inbox>,
    arrived: Condvar,
    addr: String,
    world_rank: usize,
}

impl Link {
    fn send(&self, kind: u8, comm: u64, ab: (u64, u64), payload: &[u8]) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        wire::write_frame(&mut *w, kind, comm, ab, payload).map_err(|e| self.lost(&e.to_string()))
    }

    fn lost(&self, why: &str) -> Error {
        let why = format!("the launcher ended the job (another rank failed, or the launcher was stopped): {why}");
        Error::collective(self.world_rank, format!("arbor launch hub at {}", self.addr), why)
    }

    /// Wait until `take` finds what it is looking for in the inbox.
    fn wait<T>(&self, mut take: impl FnMut(&mut Inbox) -> Option<T>) -> Result<T> {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(x) = take(&mut inbox) {
                return Ok(x);
            }
            if let Some(why) = &inbox.closed {
                return Err(self.lost(why));
            }
            inbox = self.arrived.wait(inbox).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The communicators' hold on a [`Link`]: when the last communicator of a process goes, the
/// connection is shut (the reader thread's own reference would keep it open), so the hub sees
/// the rank leave.
struct Hold(Arc<Link>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.leaving.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut w = self.0.writer.lock().unwrap_or_else(|p| p.into_inner());
        // a panic's unwinding is no orderly end: without the goodbye the hub ends the job
        if !std::thread::panicking() {
            let _ = wire::write_frame(&mut *w, wire::GOODBYE, 0, (0, 0), &[]);
        }
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
}

impl std::ops::Deref for Hold {
    type Target = Link;
    fn deref(&self) -> &Link {
        &self.0
    }
}

/// A communicator of a job started by `arbor launch` (the world or a split of it).
pub struct TcpComm {
    link: Arc<Hold>,
    id: u64,
    rank: usize,
    size: usize,
    /// World ranks of the other members, for the watchdog's message.
    others: Vec<usize>,
    watchdog: Option<Watchdog>,
}

impl TcpComm {
    /// The world communicator of a rank `arbor launch` started (from its environment).
    pub fn from_env(watchdog: Option<Watchdog>) -> Result<TcpComm> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| Error::Invalid(format!("arbor launch: {name} is not set ({HUB_VAR} is)")))
        };
        let addr = var(HUB_VAR)?;
        let num = |name: &str| -> Result<usize> {
            let v = var(name)?;
            v.parse().map_err(|_| Error::Invalid(format!("arbor launch: {name} = {v:?} is not a count")))
        };
        let (rank, size) = (num(RANK_VAR)?, num(SIZE_VAR)?);
        if rank >= size {
            return Err(Error::Invalid(format!("arbor launch: rank {rank} of {size}")));
        }
        TcpComm::connect(&addr, rank, size, watchdog)
    }

    /// Connect to the hub at `addr` as world rank `rank` of `size`.
    pub fn connect(addr: &str, rank: usize, size: usize, watchdog: Option<Watchdog>) -> Result<TcpComm> {
        let fail =
            |e: std::io::Error| Error::collective(rank, "arbor launch hub", format!("connecting to {addr}: {e}"));
        let stream = connect_within(addr, join_timeout(), Duration::from_secs(30)).map_err(fail)?;
        stream.set_nodelay(true).map_err(fail)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(fail)?);
        let link = Arc::new(Link {
            leaving: std::sync::atomic::AtomicBool::new(false),
            writer: Mutex::new(stream),
            inbox: Mutex::new(Inbox::default()),
            arrived: Condvar::new(),
            addr: addr.to_string(),
            world_rank: rank,
        });
        link.send(wire::HELLO, 0, (rank as u64, size as u64), &[])?;
        let reading = link.clone();
        std::thread::Builder::new()
            .name("arbor-hub-reader".into())
            .spawn(move || loop {
                let got = Frame::read_from(&mut reader);
                let mut inbox = reading.inbox.lock().unwrap_or_else(|p| p.into_inner());
                match got {
                    Ok(f) if f.kind == wire::REPLY => inbox.replies.entry(f.comm).or_default().push_back(f),
                    Ok(f) if f.kind == wire::DELIVER => {
                        inbox.messages.entry((f.comm, f.a)).or_default().push_back(f.payload)
                    }
                    Ok(f) if f.kind == wire::WELCOME => inbox.welcomed = true,
                    Ok(f) if f.kind == wire::LEFT => {
                        inbox.left.insert(f.a as usize);
                    }
                    Ok(f) => inbox.closed = Some(format!("an unexpected frame of kind {}", f.kind)),
                    Err(e) => inbox.closed = Some(e.to_string()),
                }
                let stop = inbox.closed.clone();
                // (before the job started, connecting fails with the reason: nothing to end)
                let started = inbox.welcomed;
                drop(inbox);
                reading.arrived.notify_all();
                if let Some(why) = stop {
                    // the hub is gone (its launcher died or ended the job) while this rank runs:
                    // a rank waiting on the hub sees it at once, but one inside a GPU collective
                    // or a long computation would run on until its step timeout
                    if started && !reading.leaving.load(std::sync::atomic::Ordering::SeqCst) {
                        end_after_lost_hub(&reading, &why);
                    }
                    break;
                }
            })
            .map_err(fail)?;
        // the job starts when every rank has connected (machines may start minutes apart: the
        // join timeout bounds the wait, the collective watchdog only what comes after)
        // (later than the hub's own deadline, so that where the hub gives up it says why)
        let deadline = std::time::Instant::now() + join_timeout() + Duration::from_secs(10);
        let mut inbox = link.inbox.lock().unwrap_or_else(|p| p.into_inner());
        while !inbox.welcomed {
            if let Some(why) = &inbox.closed {
                return Err(link.lost(why));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                let why =
                    format!("not every rank of the job connected to the hub within {} s", join_timeout().as_secs());
                return Err(Error::collective(rank, format!("arbor launch hub at {addr}"), why));
            }
            inbox = link.arrived.wait_timeout(inbox, left).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
        drop(inbox);
        let others = (0..size).filter(|&r| r != rank).collect();
        Ok(TcpComm { link: Arc::new(Hold(link)), id: 0, rank, size, others, watchdog })
    }

    /// One collective: this rank's part out, the hub's reply back (watched as MPI's are).
    fn collective(&self, what: &str, (op, arg): (u64, u64), payload: Vec<u8>) -> Result<Frame> {
        let _g = self.watchdog.as_ref().map(|w| w.watch_collective_among(what, &self.others));
        self.link.send(wire::COLLECTIVE, self.id, (op, arg), &payload)?;
        let id = self.id;
        self.link.wait(|inbox| inbox.replies.get_mut(&id).and_then(|q| q.pop_front()))
    }

    fn reduce<const W: usize>(&self, what: &str, op: u64, bytes: Vec<u8>, n: usize) -> Result<Vec<u8>> {
        let reply = self.collective(what, (op, 0), bytes)?;
        if reply.payload.len() != n * W {
            let why = format!("{} bytes back for {n} values", reply.payload.len());
            return Err(Error::collective(self.rank, what, why));
        }
        Ok(reply.payload)
    }
}

impl Comm for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let bytes = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
        let out = self.reduce::<4>("all_reduce_sum_f32", wire::OP_SUM_F32, bytes, buf.len())?;
        for (x, b) in buf.iter_mut().zip(out.chunks_exact(4)) {
            *x = f32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let bytes = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
        let out = self.reduce::<8>("all_reduce_sum_f64", wire::OP_SUM_F64, bytes, buf.len())?;
        for (x, b) in buf.iter_mut().zip(out.chunks_exact(8)) {
            *x = f64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        Ok(())
    }
    fn all_reduce_max_f64(&self, buf: &mut [f64]) -> Result<()> {
        let bytes = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
        let out = self.reduce::<8>("all_reduce_max_f64", wire::OP_MAX_F64, bytes, buf.len())?;
        for (x, b) in buf.iter_mut().zip(out.chunks_exact(8)) {
            *x = f64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        Ok(())
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<()> {
        if root >= self.size() {
            let msg = format!("root {root} out of range for {} ranks", self.size());
            return Err(Error::collective(self.rank, "broadcast", msg));
        }
        let mine = if self.rank == root { buf.clone() } else { Vec::new() };
        *buf = self.collective("broadcast", (wire::OP_BROADCAST, root as u64), mine)?.payload;
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let all = self.collective("all_gather", (wire::OP_ALL_GATHER, 0), mine.to_vec())?.payload;
        let mut out = Vec::with_capacity(self.size());
        let mut at = 0;
        let cut = || Error::collective(self.rank, "all_gather", format!("a reply of {} bytes cut short", all.len()));
        while at + 8 <= all.len() {
            let len = u64::from_le_bytes(all[at..at + 8].try_into().expect("8 bytes")) as usize;
            let end = (at + 8).checked_add(len).ok_or_else(cut)?;
            out.push(all.get(at + 8..end).ok_or_else(cut)?.to_vec());
            at = end;
        }
        if out.len() != self.size() {
            return Err(Error::collective(
                self.rank,
                "all_gather",
                format!("{} parts for {} ranks", out.len(), self.size()),
            ));
        }
        Ok(out)
    }
    fn barrier(&self) -> Result<()> {
        self.collective("barrier", (wire::OP_BARRIER, 0), Vec::new()).map(|_| ())
    }
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Comm>> {
        let reply = self.collective("split", (wire::OP_SPLIT, color as u64), wire::u64s_to_bytes(&[key as u64]))?;
        let members: Vec<usize> = wire::bytes_to_u64s(&reply.payload).into_iter().map(|w| w as usize).collect();
        let rank = reply.b as usize;
        if members.get(rank) != Some(&self.link.world_rank) {
            return Err(Error::collective(self.rank, "split", format!("placed at {rank} of {members:?}")));
        }
        let (size, me) = (members.len(), self.link.world_rank);
        let others = members.into_iter().filter(|&m| m != me).collect();
        Ok(Box::new(TcpComm {
            link: self.link.clone(),
            id: reply.a,
            rank,
            size,
            others,
            watchdog: self.watchdog.clone(),
        }))
    }
    fn abort(&self, msg: &str) -> ! {
        eprintln!("arbor: aborting: {msg}");
        // the hub ends the job: `arbor launch` stops every other rank
        let _ = self.link.send(wire::ABORT, self.id, (0, 0), msg.as_bytes());
        std::process::exit(1)
    }
    fn send_bytes(&self, dest: usize, bytes: &[u8]) -> Result<()> {
        if dest >= self.size() {
            return Err(Error::collective(self.rank, format!("send to rank {dest}"), "out of range"));
        }
        self.link.send(wire::SEND, self.id, (dest as u64, 0), bytes)
    }
    fn recv_bytes(&self, src: usize) -> Result<Vec<u8>> {
        if src >= self.size() {
            return Err(Error::collective(self.rank, format!("receive from rank {src}"), "out of range"));
        }
        let key = (self.id, src as u64);
        // (the sender's world rank: the other members in order, this rank left out; none for itself)
        let world = match src.cmp(&self.rank) {
            std::cmp::Ordering::Less => self.others.get(src).copied(),
            std::cmp::Ordering::Greater => self.others.get(src - 1).copied(),
            std::cmp::Ordering::Equal => None,
        };
        self.link.wait(|inbox| match inbox.messages.get_mut(&key).and_then(|q| q.pop_front()) {
            Some(m) => Some(Ok(m)),
            None if world.is_some_and(|w| inbox.left.contains(&w)) => Some(Err(Error::collective(
                self.rank,
                format!("receive from rank {src}"),
                format!(
                    "world rank {} exited before sending it (crashed, killed, or its machine stopped)",
                    world.unwrap_or(src)
                ),
            ))),
            None => None,
        })?
    }
    fn describe(&self) -> String {
        format!("arbor launch ({} processes, hub at {})", self.size, self.link.addr)
    }
}

#[cfg(test)]
pub(crate) mod tests;
