//! Which x86 kernel family the CPU kernels use: the widest the CPU has (AVX-512F, else AVX2 + FMA,
//! else portable code), capped by the `ARBOR_ISA` environment variable (`avx512`, `avx2` or
//! `portable`).
//!
//! The cap exists to check, on one machine, what another CPU would compute: the AVX-512 and
//! AVX2 kernels give the same bits (tests/machine_independence.rs runs a job both ways), while
//! the portable kernels round a separate multiply and add where the others fuse them.

use std::sync::OnceLock;

/// Kernel families, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No intrinsics (any CPU).
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F.
    Avx512,
}

/// The environment variable that caps the kernel family.
pub const ENV: &str = "ARBOR_ISA";

/// Parse `ARBOR_ISA`'s value.
pub fn parse(value: &str) -> Result<Isa, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "avx512" => Ok(Isa::Avx512),
        "avx2" => Ok(Isa::Avx2),
        "portable" => Ok(Isa::Portable),
        other => Err(format!("{ENV}={other:?}: expected \"avx512\", \"avx2\" or \"portable\"")),
    }
}

/// The cap from the environment (`Avx512`, no cap, when unset); an invalid value is an error
/// (checked by the command line at start-up, before any kernel runs).
pub fn cap_from_env() -> Result<Isa, String> {
    match std::env::var(ENV) {
        Ok(v) => parse(&v),
        Err(std::env::VarError::NotPresent) => Ok(Isa::Avx512),
        Err(e) => Err(format!("{ENV}: {e}")),
    }
}

/// The widest family this CPU has.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// The kernel family in use: the CPU's widest, capped by `ARBOR_ISA` (an invalid value, already
/// refused by the command line, caps nothing).
pub fn active() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| detected().min(cap_from_env().unwrap_or(Isa::Avx512)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_bad_ones_are_named() {
        assert_eq!(parse("AVX2"), Ok(Isa::Avx2));
        assert_eq!(parse(" portable "), Ok(Isa::Portable));
        assert_eq!(parse("avx512"), Ok(Isa::Avx512));
        let e = parse("sse4").unwrap_err();
        assert!(e.contains("ARBOR_ISA") && e.contains("sse4"), "{e}");
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
    }
}
