//! Reading a safetensors file's header (and single small tensors) without loading the whole file.

use super::dtype::decode_into;
use crate::error::{Error, Result};
use safetensors::Dtype;
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Largest header accepted (the safetensors format's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// Dtype tag as written in the file (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range [begin, end) relative to the start of the data section.
    pub data_offsets: (u64, u64),
}

impl TensorEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed safetensors header.
#[derive(Debug, Clone)]
pub struct SafetensorsHeader {
    /// The file it came from.
    pub path: PathBuf,
    /// Tensors sorted by data offset.
    pub tensors: Vec<TensorEntry>,
    /// The `__metadata__` string map, if any.
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// Byte position where the data section starts (8 + header length).
    pub data_start: u64,
    /// Total file length in bytes.
    pub file_len: u64,
}

/// Read and validate the header of a safetensors file: every tensor's byte range must lie inside the file,
/// so a truncated file is reported here. A dtype tag arbor does not know is listed, not refused:
/// [`SafetensorsHeader::load_problems`] says what loading the file would refuse.
pub fn read_header(path: &Path) -> Result<SafetensorsHeader> {
    let bad = |msg: String| invalid(path, msg);
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8).map_err(|_| bad(format!("{file_len} bytes is too short for a header")))?;
    let header_len = header_len(path, len8, file_len)?;
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    parse_json(path, &header, file_len)
}

/// Parse the header of a whole safetensors file held in memory (`path` names it in errors);
/// the same checks as [`read_header`].
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<SafetensorsHeader> {
    let file_len = bytes.len() as u64;
    let len8: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| invalid(path, format!("{file_len} bytes is too short for a header")))?;
    let header_len = header_len(path, len8, file_len)?;
    // header_len fits in the file, so the range is in bounds
    parse_json(path, &bytes[8..8 + header_len as usize], file_len)
}

fn invalid(path: &Path, msg: String) -> Error {
    Error::format(path, format!("not a valid safetensors file: {msg}"))
}

/// The header length of the first 8 bytes, checked against the format's limit and the file length.
fn header_len(path: &Path, len8: [u8; 8], file_len: u64) -> Result<u64> {
    let header_len = u64::from_le_bytes(len8);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
        return Err(invalid(path, format!("header length {header_len} does not fit in a {file_len}-byte file")));
    }
    Ok(header_len)
}

fn parse_json(path: &Path, header: &[u8], file_len: u64) -> Result<SafetensorsHeader> {
    let bad = |msg: String| invalid(path, msg);
    let v: Value = serde_json::from_slice(header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_start = 8 + header.len() as u64;
    let mut tensors = Vec::with_capacity(obj.len());
    let mut metadata = None;
    for (name, info) in obj {
        if name == "__metadata__" {
            metadata = Some(info.as_object().cloned().ok_or_else(|| bad("`__metadata__` is not an object".into()))?);
            continue;
        }
        let field = |k: &str| info.get(k).ok_or_else(|| bad(format!("tensor `{name}` has no `{k}`")));
        let dtype = field("dtype")?.as_str().ok_or_else(|| bad(format!("tensor `{name}`: dtype is not a string")))?;
        let nums = |k: &str| -> Result<Vec<u64>> {
            field(k)?
                .as_array()
                .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
                .ok_or_else(|| bad(format!("tensor `{name}`: `{k}` is not a list of integers")))
        };
        let shape = nums("shape")?
            .into_iter()
            .map(usize::try_from)
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map_err(|_| bad(format!("tensor `{name}`: a dimension does not fit in this machine's usize")))?;
        let offsets = nums("data_offsets")?;
        let (begin, end) = match offsets.as_slice() {
            [b, e] if b <= e => (*b, *e),
            _ => return Err(bad(format!("tensor `{name}`: bad data_offsets {offsets:?}"))),
        };
        let numel = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        if let Some(dt) = parse_dtype(dtype) {
            if (numel as u64).checked_mul(dt.bitsize() as u64) != (end - begin).checked_mul(8) {
                let msg = format!("tensor `{name}`: {} bytes do not hold {dtype} of shape {shape:?}", end - begin);
                return Err(bad(msg));
            }
        }
        if !matches!(data_start.checked_add(end), Some(e) if e <= file_len) {
            return Err(bad(format!(
                "tensor `{name}` (data bytes {begin}..{end}) ends past the end of the {file_len}-byte file; truncated?"
            )));
        }
        tensors.push(TensorEntry { name: name.clone(), dtype: dtype.to_string(), shape, data_offsets: (begin, end) });
    }
    tensors.sort_by_key(|t| t.data_offsets);
    Ok(SafetensorsHeader { path: path.to_path_buf(), tensors, metadata, data_start, file_len })
}

impl SafetensorsHeader {
    /// What loading this file for training ([`crate::io::load_hf_dir`]) refuses whatever the
    /// model, as (tensor, message): a dtype tag that is not a safetensors dtype, a value of
    /// `__metadata__` that is not a string, data ranges with gaps or overlaps, bytes after the
    /// last tensor. Empty when the file loads; which tensors the model needs is checked apart.
    pub fn load_problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in self.metadata.iter().flatten() {
            if !v.is_string() {
                out.push(("__metadata__".to_string(), format!("value of `{k}` is {v}, not a string")));
            }
        }
        for t in &self.tensors {
            if parse_dtype(&t.dtype).is_none() {
                out.push((t.name.clone(), unknown_dtype(&t.dtype)));
            }
        }
        let mut at = 0u64;
        for t in &self.tensors {
            let (begin, end) = t.data_offsets;
            if begin != at {
                let what = if begin > at { "a gap before it" } else { "overlapping the tensor before it" };
                out.push((t.name.clone(), format!("data bytes {begin}..{end}: {what} (expected to start at {at})")));
            }
            at = at.max(end);
        }
        let data_len = self.file_len - self.data_start;
        if at != data_len {
            let last = self.tensors.last().map_or("<none>".to_string(), |t| t.name.clone());
            out.push((last, format!("the tensors' data ends at byte {at} of a {data_len}-byte data section")));
        }
        out
    }
}

/// Why a dtype tag that is not a safetensors dtype is refused.
pub fn unknown_dtype(tag: &str) -> String {
    format!(
        "unknown dtype {tag:?}: not a safetensors dtype, so the file does not load (arbor loads F32, BF16, F16, F64)"
    )
}

/// Parse a safetensors dtype tag.
pub fn parse_dtype(tag: &str) -> Option<Dtype> {
    serde_json::from_value(Value::String(tag.to_string())).ok()
}

/// Read one floating-point tensor of `header` as f32 (seeks; does not read the rest of the file).
pub fn read_tensor_f32(header: &SafetensorsHeader, entry: &TensorEntry) -> Result<Vec<f32>> {
    let path = &header.path;
    let dtype = parse_dtype(&entry.dtype).ok_or_else(|| Error::Checkpoint {
        file: path.clone(),
        tensor: entry.name.clone(),
        msg: format!("unknown dtype {}", entry.dtype),
    })?;
    let (begin, end) = entry.data_offsets;
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(header.data_start + begin)).map_err(|e| Error::io(path, e))?;
    let mut out = vec![0.0f32; entry.numel()];
    // f32 little-endian, as stored: read into the values' own bytes (no second copy of a large tensor)
    if dtype == Dtype::F32 && cfg!(target_endian = "little") && end - begin == 4 * out.len() as u64 {
        f.read_exact(bytemuck::cast_slice_mut(&mut out)).map_err(|e| Error::io(path, e))?;
        return Ok(out);
    }
    let mut bytes = vec![0u8; (end - begin) as usize];
    f.read_exact(&mut bytes).map_err(|e| Error::io(path, e))?;
    decode_into(dtype, &bytes, &mut out).map_err(|msg| Error::Checkpoint {
        file: path.clone(),
        tensor: entry.name.clone(),
        msg,
    })?;
    Ok(out)
}
