//! The frames `arbor launch`'s hub ([`super::hub`]) and its ranks ([`super::tcp_comm`]) exchange
//! over TCP: a 33-byte header (kind, communicator, two arguments, payload length; little-endian)
//! and the payload.

use std::io::{self, Read, Write};

/// Rank → hub: this connection is world rank `a` of `b`.
pub const HELLO: u8 = 1;
/// Rank → hub: a collective on communicator `comm`, operation `a` (an `OP_*`), argument `b`.
pub const COLLECTIVE: u8 = 2;
/// Rank → hub: a message to rank `a` of `comm`.
pub const SEND: u8 = 3;
/// Rank → hub: abort the job; the payload says why.
pub const ABORT: u8 = 4;
/// Rank → hub: this rank is leaving on purpose (its communicators were dropped, not unwound by
/// a panic): the end of its connection that follows is not a crash. A connection that ends
/// without it ends the job at once, even for ranks that wait outside the hub (in NCCL).
pub const GOODBYE: u8 = 5;
/// Hub → rank: the result of the rank's oldest pending collective on `comm` (a split: the new
/// communicator `a`, the rank's place `b` in it, the members' world ranks as the payload).
pub const REPLY: u8 = 10;
/// Hub → rank: a message from rank `a` of `comm`.
pub const DELIVER: u8 = 11;
/// Hub → rank: every rank of the job has connected (a rank waits for it before its first
/// collective, so a machine that starts late is waited for by the hub's join timeout, not by the
/// collective watchdog).
pub const WELCOME: u8 = 12;
/// Hub → rank: world rank `a` has exited (its connection ended): a message it had not sent will
/// not come. Sent after every message the departed rank sent, so those are received first.
pub const LEFT: u8 = 13;

pub const OP_SUM_F32: u64 = 1;
pub const OP_SUM_F64: u64 = 2;
pub const OP_MAX_F64: u64 = 3;
/// Broadcast from root `b`.
pub const OP_BROADCAST: u64 = 4;
pub const OP_ALL_GATHER: u64 = 5;
pub const OP_BARRIER: u64 = 6;
/// Split by color `b`, ordered by the key in the payload (u64), then by rank.
pub const OP_SPLIT: u64 = 7;

/// The largest payload a frame may carry (a corrupt length fails instead of allocating it): 64 GiB,
/// a 16B-parameter model's f32 weights.
const MAX_PAYLOAD: u64 = 1 << 36;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub comm: u64,
    pub a: u64,
    pub b: u64,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: u8, comm: u64, (a, b): (u64, u64), payload: Vec<u8>) -> Frame {
        Frame { kind, comm, a, b, payload }
    }

    /// Write the frame.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        write_frame(w, self.kind, self.comm, (self.a, self.b), &self.payload)
    }

    /// Read one frame.
    pub fn read_from(r: &mut impl Read) -> io::Result<Frame> {
        let mut head = [0u8; 33];
        r.read_exact(&mut head)?;
        let word = |i: usize| u64::from_le_bytes(head[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes"));
        let len = word(3);
        if len > MAX_PAYLOAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
        }
        let mut payload = Vec::new();
        payload.try_reserve_exact(len as usize).map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))?;
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload)?;
        Ok(Frame { kind: head[0], comm: word(0), a: word(1), b: word(2), payload })
    }
}

/// Write one frame from its parts (the payload is not copied: header, then payload).
pub fn write_frame(w: &mut impl Write, kind: u8, comm: u64, (a, b): (u64, u64), payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 33];
    head[0] = kind;
    for (i, x) in [comm, a, b, payload.len() as u64].into_iter().enumerate() {
        head[1 + 8 * i..9 + 8 * i].copy_from_slice(&x.to_le_bytes());
    }
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// u64s as little-endian bytes.
pub fn u64s_to_bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes as u64s (a trailing partial word is dropped).
pub fn bytes_to_u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_corrupt_length_is_an_error() {
        let f = Frame::new(COLLECTIVE, 7, (OP_SPLIT, 3), vec![1, 2, 3]);
        let mut buf = Vec::new();
        f.write_to(&mut buf).unwrap();
        Frame::new(REPLY, 0, (0, 0), Vec::new()).write_to(&mut buf).unwrap();
        let mut r = &buf[..];
        assert_eq!(Frame::read_from(&mut r).unwrap(), f);
        assert_eq!(Frame::read_from(&mut r).unwrap().kind, REPLY);
        assert!(Frame::read_from(&mut r).is_err(), "end of stream");
        let mut bad = buf.clone();
        bad[25..33].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Frame::read_from(&mut &bad[..]).is_err());
        assert_eq!(bytes_to_u64s(&u64s_to_bytes(&[5, u64::MAX])), [5, u64::MAX]);
    }
}
