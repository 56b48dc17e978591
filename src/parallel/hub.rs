//! The hub of `arbor launch`: the ranks of a job started without MPI connect to it over TCP, and
//! it carries out their collectives and routes their messages ([`super::tcp_comm::TcpComm`] is
//! the ranks' side). One router thread holds every communicator's members and each member's
//! pending collectives; a collective completes when every member has called it, in call order,
//! so a fast rank may run ahead by several. Sums and maxima are taken in rank order, so results
//! are deterministic. A rank's abort, or a collective the members disagree on, ends the job.

use super::wire::{self, Frame};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// A communicator: its members' world ranks (its rank order) and each member's collectives not
/// yet completed.
struct Group {
    members: Vec<usize>,
    pending: Vec<VecDeque<Frame>>,
}

impl Group {
    fn new(members: Vec<usize>) -> Group {
        let pending = members.iter().map(|_| VecDeque::new()).collect();
        Group { members, pending }
    }
}

/// What ended a job's hub.
#[derive(Debug, PartialEq, Eq)]
pub enum HubEnd {
    /// Every rank disconnected.
    Done,
    /// A rank aborted (or the ranks called mismatched collectives): why.
    Aborted(String),
}

/// Serve the `size` ranks that connect to `listener` until every one has disconnected or one
/// aborts; ranks that have not all connected within `join` end the job (naming the missing ones).
/// Errors are the hub's own (a rank that says hello wrongly or twice, a socket that fails).
pub fn serve(listener: TcpListener, size: usize, join: Duration) -> Result<HubEnd> {
    let io = |what: &str, e: std::io::Error| Error::Invalid(format!("arbor launch hub: {what}: {e}"));
    let mut writers: Vec<Option<TcpStream>> = (0..size).map(|_| None).collect();
    let (tx, rx) = mpsc::channel::<(usize, Option<Frame>)>();
    let deadline = Instant::now() + join;
    listener.set_nonblocking(true).map_err(|e| io("listen", e))?;
    let mut joined = 0;
    // what the ranks that joined sent before the others came (their first collectives, or an abort)
    let mut early: Vec<(usize, Option<Frame>)> = Vec::new();
    while joined < size {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // a rank that aborts (or dies) while others have not joined ends the job at once
                while let Ok((rank, frame)) = rx.try_recv() {
                    match &frame {
                        Some(f) if f.kind == wire::ABORT => {
                            shut(writers.iter().flatten());
                            return Ok(HubEnd::Aborted(String::from_utf8_lossy(&f.payload).into_owned()));
                        }
                        None => {
                            shut(writers.iter().flatten());
                            let why = format!("rank {rank} left before every rank of the job had connected");
                            return Ok(HubEnd::Aborted(why));
                        }
                        Some(_) => early.push((rank, frame)),
                    }
                }
                if Instant::now() >= deadline {
                    shut(writers.iter().flatten());
                    let missing: Vec<String> =
                        (0..size).filter(|&r| writers[r].is_none()).map(|r| r.to_string()).collect();
                    let why = format!(
                        "rank(s) {} of {size} did not connect to the hub within {} s",
                        missing.join(", "),
                        join.as_secs()
                    );
                    return Ok(HubEnd::Aborted(why));
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(io("accept", e)),
        };
        stream.set_nonblocking(false).map_err(|e| io("socket", e))?;
        stream.set_nodelay(true).map_err(|e| io("socket", e))?;
        // a connection that says nothing (not a rank) may not hold the job
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        stream.set_read_timeout(Some(HELLO_TIMEOUT.min(left))).map_err(|e| io("socket", e))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| io("socket", e))?);
        let hello = match Frame::read_from(&mut reader) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("arbor launch hub: a connection that did not say hello was dropped ({e})");
                continue;
            }
        };
        stream.set_read_timeout(None).map_err(|e| io("socket", e))?;
        let rank = hello.a as usize;
        if hello.kind != wire::HELLO || hello.b as usize != size || rank >= size {
            let why = format!("a connection said hello as rank {} of {} (the job has {size})", hello.a, hello.b);
            shut(writers.iter().flatten());
            return Err(Error::Invalid(format!("arbor launch hub: {why}")));
        }
        if writers[rank].is_some() {
            shut(writers.iter().flatten());
            return Err(Error::Invalid(format!("arbor launch hub: rank {rank} said hello twice")));
        }
        writers[rank] = Some(stream);
        joined += 1;
        let tx = tx.clone();
        std::thread::spawn(move || loop {
            match Frame::read_from(&mut reader) {
                Ok(f) => {
                    if tx.send((rank, Some(f))).is_err() {
                        break;
                    }
                }
                Err(_) => {
                    let _ = tx.send((rank, None));
                    break;
                }
            }
        });
    }
    drop(tx);
    drop(listener);
    let writers: Vec<TcpStream> = writers.into_iter().map(|w| w.expect("every rank said hello")).collect();
    for (rank, mut w) in writers.iter().enumerate() {
        if let Err(e) = wire::write_frame(&mut w, wire::WELCOME, 0, (0, 0), &[]) {
            shut(&writers);
            return Ok(HubEnd::Aborted(format!("rank {rank} left before every rank of the job had connected ({e})")));
        }
    }
    let groups = HashMap::from([(0, Group::new((0..size).collect()))]);
    let mut router = Router { groups, next_id: 1, writers, left: vec![false; size], goodbye: vec![false; size] };
    let mut connected = size;
    let mut early = early.into_iter();
    while connected > 0 {
        let next = match early.next() {
            Some(x) => Ok(x),
            None => rx.recv(),
        };
        let Ok((rank, frame)) = next else { break };
        let handled = match frame {
            Some(frame) => router.handle(rank, frame),
            None => {
                connected -= 1;
                router.leave(rank)
            }
        };
        if let Err(why) = handled {
            shut(&router.writers);
            return Ok(HubEnd::Aborted(why));
        }
    }
    Ok(HubEnd::Done)
}

/// Shut the connections of the ranks that joined (each has a second handle in its reader thread:
/// shutting the socket lets every rank still waiting see the end).
fn shut<'a>(writers: impl IntoIterator<Item = &'a TcpStream>) {
    for w in writers {
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
}

/// The replies to a collective: one payload for every member, or one frame each (a split).
enum Replies {
    Same(Vec<u8>),
    Each(Vec<Frame>),
}

/// A collective's name for messages.
fn op_name(op: u64, arg: u64) -> String {
    match op {
        wire::OP_SUM_F32 => "all_reduce_sum_f32".into(),
        wire::OP_SUM_F64 => "all_reduce_sum_f64".into(),
        wire::OP_MAX_F64 => "all_reduce_max_f64".into(),
        wire::OP_BROADCAST => format!("broadcast from rank {arg}"),
        wire::OP_ALL_GATHER => "all_gather".into(),
        wire::OP_BARRIER => "barrier".into(),
        wire::OP_SPLIT => "split".into(),
        _ => format!("collective {op}"),
    }
}

struct Router {
    groups: HashMap<u64, Group>,
    next_id: u64,
    writers: Vec<TcpStream>,
    /// The ranks whose connection has ended.
    left: Vec<bool>,
    /// The ranks that said they leave on purpose ([`wire::GOODBYE`]).
    goodbye: Vec<bool>,
}

impl Router {
    /// Handle world rank `rank`'s frame; `Err` ends the job with the reason.
    fn handle(&mut self, rank: usize, f: Frame) -> std::result::Result<(), String> {
        match f.kind {
            wire::ABORT => Err(String::from_utf8_lossy(&f.payload).into_owned()),
            wire::GOODBYE => {
                self.goodbye[rank] = true;
                Ok(())
            }
            wire::SEND => {
                let g = self.groups.get(&f.comm).ok_or_else(|| format!("rank {rank}: send on unknown communicator"))?;
                let src = g.members.iter().position(|&m| m == rank).ok_or("a send from outside its communicator")?;
                let dest = *g.members.get(f.a as usize).ok_or_else(|| format!("rank {rank}: send to rank {}", f.a))?;
                self.write(dest, wire::DELIVER, f.comm, (src as u64, 0), &f.payload)
            }
            wire::COLLECTIVE => {
                let id = f.comm;
                let g = self
                    .groups
                    .get_mut(&id)
                    .ok_or_else(|| format!("rank {rank}: collective on unknown communicator"))?;
                let me =
                    g.members.iter().position(|&m| m == rank).ok_or("a collective from outside its communicator")?;
                let what = op_name(f.a, f.b);
                g.pending[me].push_back(f);
                // a member that exited without joining this call never will
                if let Some((&gone, _)) = g.members.iter().zip(&g.pending).find(|(&m, q)| self.left[m] && q.is_empty())
                {
                    return Err(format!("rank {rank} called {what} with rank {gone}, which has exited"));
                }
                while let Some((members, calls)) = self.ready(id) {
                    match self.complete(id, &members, calls)? {
                        Replies::Same(payload) => {
                            for &m in &members {
                                self.write(m, wire::REPLY, id, (0, 0), &payload)?;
                            }
                        }
                        Replies::Each(replies) => {
                            for (&m, r) in members.iter().zip(replies) {
                                self.write(m, wire::REPLY, id, (r.a, r.b), &r.payload)?;
                            }
                        }
                    }
                }
                Ok(())
            }
            k => Err(format!("rank {rank}: unknown frame kind {k}")),
        }
    }

    /// World rank `rank`'s connection ended: an error if it did not say goodbye (its process
    /// died: the others may wait for it where the hub cannot see, in NCCL or a computation of
    /// their own, until their step timeout), or if a collective with it can no longer complete
    /// (another member already waits in one), which would otherwise hang the job.
    fn leave(&mut self, rank: usize) -> std::result::Result<(), String> {
        self.left[rank] = true;
        if !self.goodbye[rank] {
            return Err(format!(
                "world rank {rank} exited without saying goodbye to the hub (it crashed or was killed, or \
                 its machine or connection failed)"
            ));
        }
        self.stranded(rank)?;
        // a rank waiting for a message from it learns that none will come (a machine's crashed
        // rank sends no abort; its point-to-point peers would otherwise wait for their step timeout)
        for (r, w) in self.writers.iter_mut().enumerate() {
            if r != rank && !self.left[r] {
                let _ = wire::write_frame(w, wire::LEFT, 0, (rank as u64, 0), &[]);
            }
        }
        Ok(())
    }

    /// An error naming a member of a communicator with departed rank `rank` that waits in a
    /// collective there which `rank` did not join.
    fn stranded(&self, rank: usize) -> std::result::Result<(), String> {
        for g in self.groups.values().filter(|g| g.members.contains(&rank)) {
            let at = g.members.iter().position(|&m| m == rank).expect("a member");
            if !g.pending[at].is_empty() {
                continue;
            }
            if let Some((m, f)) = g.members.iter().zip(&g.pending).find_map(|(&m, q)| q.front().map(|f| (m, f))) {
                let what = op_name(f.a, f.b);
                return Err(format!("rank {rank} exited while rank {m} waited for it in {what}"));
            }
        }
        Ok(())
    }

    /// The members and the oldest call of each, when every member of communicator `id` has one.
    fn ready(&mut self, id: u64) -> Option<(Vec<usize>, Vec<Frame>)> {
        let g = self.groups.get_mut(&id)?;
        if g.pending.iter().any(|q| q.is_empty()) {
            return None;
        }
        let calls = g.pending.iter_mut().map(|q| q.pop_front().expect("non-empty")).collect();
        Some((g.members.clone(), calls))
    }

    fn write(
        &mut self,
        rank: usize,
        kind: u8,
        comm: u64,
        ab: (u64, u64),
        payload: &[u8],
    ) -> std::result::Result<(), String> {
        wire::write_frame(&mut self.writers[rank], kind, comm, ab, payload)
            .map_err(|e| format!("the launcher lost rank {rank} (it exited or its connection failed: {e})"))
    }

    /// The replies to one collective every member of communicator `id` called.
    fn complete(&mut self, id: u64, members: &[usize], calls: Vec<Frame>) -> std::result::Result<Replies, String> {
        let op = calls[0].a;
        if let Some((i, c)) =
            calls.iter().enumerate().find(|(_, c)| c.a != op || (op != wire::OP_SPLIT && c.b != calls[0].b))
        {
            return Err(format!(
                "world ranks {} and {} called different collectives together: {} and {}",
                members[0],
                members[i],
                op_name(op, calls[0].b),
                op_name(c.a, c.b)
            ));
        }
        let same = Replies::Same;
        let lens_agree = || calls.iter().all(|c| c.payload.len() == calls[0].payload.len());
        match op {
            wire::OP_SUM_F32 | wire::OP_SUM_F64 | wire::OP_MAX_F64 => {
                let w = if op == wire::OP_SUM_F32 { 4 } else { 8 };
                if !lens_agree() || !calls[0].payload.len().is_multiple_of(w) {
                    return Err(format!("communicator {id}: reductions of different lengths"));
                }
                let mut acc = calls[0].payload.clone();
                for c in &calls[1..] {
                    for (a, b) in acc.chunks_exact_mut(w).zip(c.payload.chunks_exact(w)) {
                        match op {
                            wire::OP_SUM_F32 => {
                                let s = f32::from_le_bytes(a[..].try_into().expect("4"))
                                    + f32::from_le_bytes(b.try_into().expect("4"));
                                a.copy_from_slice(&s.to_le_bytes());
                            }
                            _ => {
                                let (x, y) = (
                                    f64::from_le_bytes(a[..].try_into().expect("8")),
                                    f64::from_le_bytes(b.try_into().expect("8")),
                                );
                                let r = if op == wire::OP_SUM_F64 { x + y } else { x.max(y) };
                                a.copy_from_slice(&r.to_le_bytes());
                            }
                        }
                    }
                }
                Ok(same(acc))
            }
            wire::OP_BROADCAST => {
                let root = calls[0].b as usize;
                let data = calls.get(root).ok_or_else(|| format!("communicator {id}: broadcast from rank {root}"))?;
                Ok(same(data.payload.clone()))
            }
            wire::OP_ALL_GATHER => {
                let mut all = Vec::new();
                for c in &calls {
                    all.extend_from_slice(&(c.payload.len() as u64).to_le_bytes());
                    all.extend_from_slice(&c.payload);
                }
                Ok(same(all))
            }
            wire::OP_BARRIER => Ok(same(Vec::new())),
            wire::OP_SPLIT => {
                // color → (key, place in this communicator, world rank), new communicators in
                // color order, members by key then place
                let mut colors: BTreeMap<u64, Vec<(u64, usize, usize)>> = BTreeMap::new();
                for (i, c) in calls.iter().enumerate() {
                    let key = wire::bytes_to_u64s(&c.payload).first().copied().unwrap_or(0);
                    colors.entry(c.b).or_default().push((key, i, members[i]));
                }
                let mut replies: Vec<Option<Frame>> = calls.iter().map(|_| None).collect();
                for (_, mut list) in colors {
                    list.sort_unstable();
                    let new_id = self.next_id;
                    self.next_id += 1;
                    let world: Vec<usize> = list.iter().map(|&(_, _, w)| w).collect();
                    let payload = wire::u64s_to_bytes(&world.iter().map(|&w| w as u64).collect::<Vec<_>>());
                    for (place, &(_, i, _)) in list.iter().enumerate() {
                        replies[i] = Some(Frame::new(wire::REPLY, id, (new_id, place as u64), payload.clone()));
                    }
                    self.groups.insert(new_id, Group::new(world));
                }
                Ok(Replies::Each(replies.into_iter().map(|r| r.expect("every member has a color")).collect()))
            }
            _ => Err(format!("communicator {id}: unknown collective {op}")),
        }
    }
}
