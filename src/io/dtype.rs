//! Element types of checkpoint tensors: decoding stored bytes to f32 and encoding f32 for storage.

use half::{bf16, f16};
use safetensors::Dtype;
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// The element type weights are written in (`arbor convert --dtype`, [`super::SaveOptions::dtype`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreDtype {
    /// IEEE single precision, stored bit-exactly.
    #[default]
    F32,
    /// bfloat16 (8-bit exponent, 7-bit mantissa), rounded to nearest even.
    BF16,
    /// IEEE half precision, rounded to nearest even (values beyond ±65504 become ±inf).
    F16,
}

impl StoreDtype {
    /// The safetensors dtype tag.
    pub fn safetensors_dtype(self) -> Dtype {
        match self {
            StoreDtype::F32 => Dtype::F32,
            StoreDtype::BF16 => Dtype::BF16,
            StoreDtype::F16 => Dtype::F16,
        }
    }

    /// The `torch_dtype` string written to `config.json` ("float32", "bfloat16", "float16").
    pub fn torch_name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "float32",
            StoreDtype::BF16 => "bfloat16",
            StoreDtype::F16 => "float16",
        }
    }

    /// Bytes per stored element.
    pub fn size_bytes(self) -> usize {
        match self {
            StoreDtype::F32 => 4,
            StoreDtype::BF16 | StoreDtype::F16 => 2,
        }
    }

    /// Encode f32 values as little-endian bytes of this dtype (borrowed without copying for f32 on little-endian).
    pub fn encode(self, values: &[f32]) -> Cow<'_, [u8]> {
        match self {
            StoreDtype::F32 if cfg!(target_endian = "little") => Cow::Borrowed(bytemuck::cast_slice(values)),
            StoreDtype::F32 => Cow::Owned(values.iter().flat_map(|x| x.to_le_bytes()).collect()),
            StoreDtype::BF16 => Cow::Owned(values.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect()),
            StoreDtype::F16 => Cow::Owned(values.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect()),
        }
    }

    /// Round f32 values to this dtype and back (what a save/load round trip yields).
    pub fn round_trip(self, x: f32) -> f32 {
        match self {
            StoreDtype::F32 => x,
            StoreDtype::BF16 => bf16::from_f32(x).to_f32(),
            StoreDtype::F16 => f16::from_f32(x).to_f32(),
        }
    }
}

impl fmt::Display for StoreDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreDtype::F32 => "f32",
            StoreDtype::BF16 => "bf16",
            StoreDtype::F16 => "f16",
        })
    }
}

impl FromStr for StoreDtype {
    type Err = String;

    /// Accepts `f32`/`float32`/`fp32`, `bf16`/`bfloat16`, `f16`/`float16`/`fp16` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(StoreDtype::F32),
            "bf16" | "bfloat16" => Ok(StoreDtype::BF16),
            "f16" | "float16" | "fp16" | "half" => Ok(StoreDtype::F16),
            _ => Err(format!("unknown dtype {s:?} (expected f32, bf16 or f16)")),
        }
    }
}

/// Bytes per element of a dtype arbor loads as weights; for any other dtype (integers, bool,
/// fp8, ...) the message [`decode_into`] refuses it with.
pub fn loadable_width(dtype: Dtype) -> Result<usize, String> {
    match dtype {
        Dtype::F32 => Ok(4),
        Dtype::BF16 | Dtype::F16 => Ok(2),
        Dtype::F64 => Ok(8),
        other => Err(format!("unsupported dtype {other} (supported: F32, BF16, F16, F64)")),
    }
}

/// Decode little-endian stored elements of a floating-point dtype into `out` (len = element count).
///
/// Returns `Err(dtype name)` for dtypes arbor does not load as weights (integers, bool, fp8, ...).
pub fn decode_into(dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let width = loadable_width(dtype)?;
    if bytes.len() != out.len() * width {
        return Err(format!("{} bytes of {dtype} data for {} elements", bytes.len(), out.len()));
    }
    match dtype {
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Dtype::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trips_each_dtype() {
        let xs = [0.0f32, -1.5, 3.140625, 1e-3, -65504.0, 1.0e-8];
        for dt in [StoreDtype::F32, StoreDtype::BF16, StoreDtype::F16] {
            let bytes = dt.encode(&xs);
            let mut back = vec![0.0; xs.len()];
            decode_into(dt.safetensors_dtype(), &bytes, &mut back).expect("decodes");
            for (x, y) in xs.iter().zip(&back) {
                assert_eq!(dt.round_trip(*x).to_bits(), y.to_bits(), "{dt}: {x}");
            }
        }
    }

    #[test]
    fn integer_dtype_is_rejected_by_name() {
        let err = decode_into(Dtype::I32, &[0; 4], &mut [0.0]).unwrap_err();
        assert!(err.contains("I32"), "{err}");
    }
}
