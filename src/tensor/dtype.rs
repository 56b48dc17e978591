//! The operand type of matrix products (`[train] dtype`): what a backend rounds a product's
//! inputs to before multiplying (accumulation and results stay f32).

use serde::{Deserialize, Serialize};

/// Operand type of a run's matrix products (`[train] dtype`). Every product accumulates in f32 and
/// writes f32; only its inputs are rounded: "f32" is exact (the reference, and the only choice on
/// the CPU), "tf32" rounds them to TF32 (10-bit mantissa) inside cuBLAS, "bf16" rounds both
/// operands to bf16 before a tensor-core GEMM (as PyTorch's autocast does for matmuls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    Tf32,
    Bf16,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Tf32 => "tf32",
            Dtype::Bf16 => "bf16",
        }
    }
}
