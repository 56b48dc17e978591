//! TensorBoard event files (`events.out.tfevents.*`), the subset arbor writes and reads back:
//! records framed as TFRecords (length, masked CRC-32C of the length, the bytes, masked CRC-32C
//! of the bytes) holding `Event` protocol buffers with a wall time, a step and one of a file
//! version, a session start, or a summary of scalars (`simple_value`, what PyTorch's
//! `SummaryWriter.add_scalar` writes). Encoded by hand: the few fields are written as protobuf's
//! proto3 rules say (zero scalars outside a oneof are left out), so the bytes equal TensorBoard's
//! own writer's (tests/fixtures/tensorboard, made by scripts/make_tensorboard_fixtures.py).

use crate::error::{Error, Result};

/// The file version TensorBoard's writers put in a file's first event.
pub const FILE_VERSION: &str = "brain.Event:2";

/// What an event holds besides its wall time and step.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// `file_version` (the first event of a file).
    FileVersion(String),
    /// `session_log { status: START }`: a (re)start; readers drop what they saw at this step or later.
    SessionStart,
    /// `summary`: scalar values by tag.
    Scalars(Vec<(String, f32)>),
    /// A field arbor does not write (a graph, a histogram, ...), read past.
    Other,
}

/// One event of an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    pub step: i64,
    pub what: What,
}

// protobuf wire types
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

impl Event {
    /// The event's protobuf bytes (`tensorflow.Event`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.wall_time != 0.0 {
            key(&mut out, 1, FIXED64);
            out.extend_from_slice(&self.wall_time.to_le_bytes());
        }
        if self.step != 0 {
            key(&mut out, 2, VARINT);
            varint(&mut out, self.step as u64); // (int64: a negative step is ten bytes, as protobuf's)
        }
        match &self.what {
            What::FileVersion(v) => bytes_field(&mut out, 3, v.as_bytes()),
            What::SessionStart => bytes_field(&mut out, 7, &[0x08, 0x01]), // SessionLog { status (1): START (1) }
            What::Scalars(values) => {
                let mut summary = Vec::new();
                for (tag, value) in values {
                    // Summary.Value { tag (1), simple_value (2, in a oneof: written even when 0) }
                    let mut v = Vec::new();
                    bytes_field(&mut v, 1, tag.as_bytes());
                    key(&mut v, 2, FIXED32);
                    v.extend_from_slice(&value.to_le_bytes());
                    bytes_field(&mut summary, 1, &v);
                }
                bytes_field(&mut out, 5, &summary);
            }
            What::Other => {}
        }
        out
    }

    /// Parse an event's protobuf bytes; an error says what is malformed.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Event, String> {
        let mut e = Event { wall_time: 0.0, step: 0, what: What::Other };
        for field in Fields(bytes) {
            match field? {
                (1, Value::Fixed64(v)) => e.wall_time = f64::from_bits(v),
                (2, Value::Varint(v)) => e.step = v as i64,
                (3, Value::Bytes(b)) => {
                    e.what = What::FileVersion(String::from_utf8(b.to_vec()).map_err(|_| "file_version: not UTF-8")?)
                }
                (5, Value::Bytes(b)) => e.what = What::Scalars(decode_summary(b)?),
                (7, Value::Bytes(b)) => {
                    let start = Fields(b).any(|f| matches!(f, Ok((1, Value::Varint(1)))));
                    e.what = if start { What::SessionStart } else { What::Other };
                }
                // the oneof's other members (a graph, a log message, run metadata): the last one wins
                (4 | 6 | 8 | 9, _) => e.what = What::Other,
                _ => {}
            }
        }
        Ok(e)
    }
}

/// The scalar values of a `Summary` (values of other kinds are skipped).
fn decode_summary(bytes: &[u8]) -> std::result::Result<Vec<(String, f32)>, String> {
    let mut out = Vec::new();
    for field in Fields(bytes) {
        if let (1, Value::Bytes(v)) = field? {
            let (mut tag, mut value) = (None, None);
            for f in Fields(v) {
                match f? {
                    (1, Value::Bytes(t)) => tag = Some(String::from_utf8(t.to_vec()).map_err(|_| "a tag: not UTF-8")?),
                    (2, Value::Fixed32(x)) => value = Some(f32::from_bits(x)),
                    _ => {}
                }
            }
            if let (Some(t), Some(x)) = (tag, value) {
                out.push((t, x));
            }
        }
    }
    Ok(out)
}

/// A protobuf field's value, by wire type.
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The (field number, value) pairs of a message; an error ends it.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or("a varint runs past the end")?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("a varint longer than ten bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err(format!("a field of {n} bytes runs past the end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn field(&mut self) -> std::result::Result<(u64, Value<'a>), String> {
        let k = self.varint()?;
        let value = match (k & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            FIXED64 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| "a length beyond memory")?;
                Value::Bytes(self.take(n)?)
            }
            FIXED32 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
            w => return Err(format!("wire type {w} (groups are not read)")),
        };
        Ok((k >> 3, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = std::result::Result<(u64, Value<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let f = self.field();
        if f.is_err() {
            self.0 = &[]; // (no way to resynchronise)
        }
        Some(f)
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), a byte at a time from a table.
pub fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !bytes.iter().fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC (a CRC of data holding CRCs is weak; the mask rotates and offsets it).
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The events of an event file's bytes (`name` in errors). A last record cut short (a writer
/// killed mid-record) is left out; a record whose checksum fails, or that is not an event, is an
/// error naming its offset.
pub fn read_events(name: &str, bytes: &[u8]) -> Result<Vec<Event>> {
    let bad = |at: usize, what: String| Error::Invalid(format!("{name}: the record at byte {at}: {what}"));
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 12 {
            break; // a header cut short
        }
        let (len, crc) = (&rest[..8], u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")));
        if masked_crc(len) != crc {
            return Err(bad(at, "the length's checksum does not match".into()));
        }
        let n = usize::try_from(u64::from_le_bytes(len.try_into().expect("8 bytes"))).unwrap_or(usize::MAX);
        let Some(end) = n.checked_add(16).filter(|&end| end <= rest.len()) else { break }; // cut short
        let data = &rest[12..12 + n];
        if masked_crc(data).to_le_bytes() != rest[12 + n..end] {
            return Err(bad(at, "the data's checksum does not match".into()));
        }
        out.push(Event::decode(data).map_err(|e| bad(at, e))?);
        at += end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events of scripts/make_tensorboard_fixtures.py's reference file.
    fn reference_events() -> Vec<Event> {
        let s = |pairs: &[(&str, f32)]| What::Scalars(pairs.iter().map(|(t, v)| (t.to_string(), *v)).collect());
        vec![
            Event { wall_time: 1_700_000_000.25, step: 0, what: What::FileVersion(FILE_VERSION.into()) },
            Event { wall_time: 1_700_000_000.5, step: 0, what: What::SessionStart },
            Event {
                wall_time: 1_700_000_001.0,
                step: 3,
                what: s(&[("rl/reward_mean", 0.40625), ("rl/loss", -0.0125), ("rl/zero", 0.0)]),
            },
            Event {
                wall_time: 1_700_000_002.75,
                step: 1 << 40,
                what: s(&[
                    ("sft/grad_norm", 3.0e-8),
                    ("sft/eval_answer_nll", 1.0e30),
                    (&"x".repeat(200), 2.5),
                    ("ü/ω", 1.0),
                ]),
            },
        ]
    }

    const REFERENCE: &[u8] = include_bytes!("../../tests/fixtures/tensorboard/reference.tfevents");

    #[test]
    fn crc32c_matches_the_published_check_values() {
        // the catalogue's check value, and RFC 3720 B.4's vectors
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(&[]), 0);
    }

    #[test]
    fn events_are_the_bytes_tensorboards_own_writer_writes() {
        let written: Vec<u8> = reference_events().iter().flat_map(|e| record(&e.encode())).collect();
        assert_eq!(written.len(), REFERENCE.len());
        assert!(written == REFERENCE, "the bytes differ from TensorBoard's");
    }

    #[test]
    fn tensorboards_file_reads_back_and_a_torn_tail_is_left_out() {
        assert_eq!(read_events("ref", REFERENCE).unwrap(), reference_events());
        // every cut inside the last record: the first three events
        let last = REFERENCE.len() - record(&reference_events()[3].encode()).len();
        for cut in last..REFERENCE.len() {
            assert_eq!(read_events("ref", &REFERENCE[..cut]).unwrap().len(), 3, "cut at {cut}");
        }
        // a flipped bit in the data or in the length: an error naming the record
        let mut bad = REFERENCE.to_vec();
        bad[last + 20] ^= 0x10;
        let e = read_events("ref", &bad).unwrap_err().to_string();
        assert!(e.contains(&format!("record at byte {last}")) && e.contains("data's checksum"), "{e}");
        bad[last + 20] ^= 0x10;
        bad[last + 1] ^= 0x01;
        let e = read_events("ref", &bad).unwrap_err().to_string();
        assert!(e.contains("length's checksum"), "{e}");
    }

    #[test]
    fn a_negative_step_and_fields_arbor_does_not_write_decode() {
        let e = Event { wall_time: -1.0, step: -5, what: What::Scalars(vec![("a".into(), f32::MIN_POSITIVE)]) };
        let bytes = e.encode();
        assert_eq!(Event::decode(&bytes).unwrap(), e);
        // a graph_def (field 4) is read past; a truncated field is an error
        let mut other = bytes.clone();
        bytes_field(&mut other, 4, b"graph");
        let d = Event::decode(&other).unwrap();
        assert_eq!((d.step, d.what), (-5, What::Other));
        assert!(Event::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
