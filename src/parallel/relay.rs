//! One sender's messages to many receivers without sending each of them a copy: a chain of
//! point-to-point messages, pipelined in chunks.
//!
//! `[async]` publishes every policy version to every rollout rank. Sent by the training leader
//! to each in turn, a version cost the leader R copies of the weights (R × 2 GB for a 0.5B model
//! in f32), and the trainer waited for all of them. Along a relay the leader sends one copy to
//! the first receiver, which forwards it to the next, and so on; a message travels in chunks, so
//! a rank forwards chunk i while the rank before it sends chunk i + 1. Every rank sends and
//! receives one copy whatever R: the whole takes about twice one copy's transfer time (each rank
//! receives a chunk, then forwards it) plus 2R chunk times for the pipeline to fill. Where a
//! machine's ranks are consecutive (Slurm's and mpirun's default block placement), each
//! machine's network link carries one copy in and one out, where a tree would carry one per
//! rank; an MPI broadcast would need every receiver inside the collective, and a rollout rank
//! is busy generating when a version is published.
//!
//! A receiver forwards on the thread that receives (the rollout ranks' weights thread), so a
//! message reaches the ranks after it even while the receiving rank's generation is busy. Every
//! message is forwarded, the empty one that ends a run and a halt too, in the order it was sent.
//!
//! On the wire a message is its length (8 bytes, little-endian), then ⌈len / chunk⌉ chunks, each a
//! point-to-point message of the [`Comm`], whose ordering (one sender's messages arrive in send
//! order, as MPI's do) keeps the chunks in order.

use super::Comm;
use crate::error::{Error, Result};

/// Bytes per chunk: large enough that a message's overhead is nothing beside its transfer (4 MiB
/// move in ~0.2 ms at 25 GB/s), small enough that a long relay fills in little time.
pub const CHUNK_BYTES: usize = 4 << 20;

/// This rank's place in the relay over `members` (ranks of one communicator, the sender first,
/// then the receivers in the order the message passes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// The rank this one receives from (`None` for the sender).
    pub from: Option<usize>,
    /// The rank this one sends or forwards to (`None` for the last).
    pub to: Option<usize>,
    chunk: usize,
}

impl Relay {
    /// The place of rank `me` in the relay over `members` (the sender first), or an error when
    /// `me` is not one of them or a rank appears twice.
    pub fn new(members: &[usize], me: usize) -> Result<Self> {
        Self::with_chunk(members, me, CHUNK_BYTES)
    }

    /// [`Relay::new`] with chunks of `chunk` bytes (at least 1).
    pub fn with_chunk(members: &[usize], me: usize, chunk: usize) -> Result<Self> {
        let bad = |why: String| Error::Invalid(format!("relay over ranks {members:?}: {why}"));
        if let Some((i, r)) = members.iter().enumerate().find(|(i, r)| members[..*i].contains(r)) {
            return Err(bad(format!("rank {r} appears twice (position {i})")));
        }
        let at = members.iter().position(|&r| r == me).ok_or_else(|| bad(format!("rank {me} is not a member")))?;
        let from = at.checked_sub(1).map(|i| members[i]);
        Ok(Self { from, to: members.get(at + 1).copied(), chunk: chunk.max(1) })
    }

    /// Send `msg` along the relay (the sender only).
    pub fn send(&self, comm: &dyn Comm, msg: &[u8]) -> Result<()> {
        if let Some(from) = self.from {
            let me = comm.rank();
            return Err(Error::Invalid(format!("relay: rank {me} sends, but it receives from rank {from}")));
        }
        self.forward(comm, &(msg.len() as u64).to_le_bytes())?;
        msg.chunks(self.chunk).try_for_each(|piece| self.forward(comm, piece))
    }

    /// The sender's next message (any rank but the sender), forwarded to the next rank chunk by
    /// chunk as it arrives.
    pub fn recv(&self, comm: &dyn Comm) -> Result<Vec<u8>> {
        let me = comm.rank();
        let from = self.from.ok_or_else(|| Error::Invalid(format!("relay: rank {me} is the sender")))?;
        let bad = |why: String| Error::collective(me, format!("relayed message from rank {from}"), why);
        let head = comm.recv_bytes(from)?;
        let len = <[u8; 8]>::try_from(head.as_slice())
            .map_err(|_| bad(format!("a {}-byte length (8 expected): ranks disagree on the protocol", head.len())))?;
        let total = usize::try_from(u64::from_le_bytes(len)).map_err(|_| bad("a length beyond memory".into()))?;
        self.forward(comm, &head)?;
        let mut out = Vec::new();
        if total > self.chunk {
            out.try_reserve_exact(total).map_err(|e| bad(format!("{total} bytes do not fit in memory: {e}")))?;
        }
        while out.len() < total {
            let piece = comm.recv_bytes(from)?;
            if piece.is_empty() || out.len() + piece.len() > total {
                return Err(bad(format!("a chunk of {} bytes after {} of {total}", piece.len(), out.len())));
            }
            self.forward(comm, &piece)?;
            // (a message of one chunk is that chunk: no copy)
            if piece.len() == total {
                out = piece;
            } else {
                out.extend_from_slice(&piece);
            }
        }
        Ok(out)
    }

    fn forward(&self, comm: &dyn Comm, bytes: &[u8]) -> Result<()> {
        self.to.map_or(Ok(()), |to| comm.send_bytes(to, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::tcp_comm::tests::job;

    /// The relay passes every member once, in the members' order (which need not be the ranks'),
    /// and refuses a rank that is not a member or one listed twice.
    #[test]
    fn the_relay_passes_every_member_once_in_order() {
        let members = [0, 9, 4, 7];
        let places: Vec<Relay> = members.iter().map(|&m| Relay::new(&members, m).unwrap()).collect();
        let edges: Vec<(Option<usize>, Option<usize>)> = places.iter().map(|p| (p.from, p.to)).collect();
        assert_eq!(edges, [(None, Some(9)), (Some(0), Some(4)), (Some(9), Some(7)), (Some(4), None)]);
        assert_eq!(Relay::new(&[3], 3).unwrap().to, None);
        let bad = Relay::new(&[0, 3, 4], 2).unwrap_err().to_string();
        assert!(bad.contains("rank 2 is not a member"), "{bad}");
        let twice = Relay::new(&[0, 3, 3], 0).unwrap_err().to_string();
        assert!(twice.contains("rank 3 appears twice"), "{twice}");
    }

    /// Five ranks (the sender and four receivers in an order other than their ranks', so three
    /// forward): messages of many chunks, of less than one, of exactly two and empty ones arrive
    /// whole and in order at every receiver; a receiver's own send and the sender's receive are
    /// refused.
    #[test]
    fn every_receiver_gets_every_message_whole_and_in_order() {
        let msgs: Vec<Vec<u8>> = [1000usize, 5, 0, 14, 7 * 3 + 2]
            .iter()
            .enumerate()
            .map(|(k, &len)| (0..len).map(|i| (i * 31 + k * 7) as u8).collect())
            .collect();
        let sent = msgs.clone();
        let (_, got) = job(5, move |c| {
            let relay = Relay::with_chunk(&[0, 3, 1, 4, 2], c.rank(), 7).unwrap();
            if c.rank() == 0 {
                for m in &sent {
                    relay.send(&c, m).unwrap();
                }
                assert!(relay.recv(&c).unwrap_err().to_string().contains("is the sender"));
                Vec::new()
            } else {
                let got: Vec<Vec<u8>> = (0..sent.len()).map(|_| relay.recv(&c).unwrap()).collect();
                assert!(relay.send(&c, b"x").unwrap_err().to_string().contains("receives from rank"));
                got
            }
        });
        for (r, g) in got.iter().enumerate().skip(1) {
            assert_eq!(g, &msgs, "rank {r}");
        }
    }
}
