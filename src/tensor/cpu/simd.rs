//! Vectorisable math for the elementwise kernels: a branch-free `exp` (Cephes-style polynomial,
//! ≤ 2 ulp on the range that matters) and a macro that compiles a kernel twice, generic and with
//! AVX2 + FMA, picking at run time (portable binaries, fast on every x86-64 server since 2013).

/// Define `fn name(args) -> ret` whose body is compiled for baseline x86-64 and for AVX2 + FMA,
/// with the AVX2 copy chosen at run time when the CPU has it.
macro_rules! simd_kernel {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn generic($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    generic($($arg),*)
                }
                if $crate::tensor::cpu::isa::active() >= $crate::tensor::cpu::isa::Isa::Avx2 {
                    // SAFETY: `active` reports AVX2 or wider only when the CPU has AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use simd_kernel;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding and subtracting it rounds an f32 to the nearest integer without a branch.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x for f32, branch-free so loops over it vectorise. Inputs are clamped to [−87.3, 88.3]
/// (results saturate at ~1e−38 and ~2e38; −inf gives ~1e−38 which callers treat as 0).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    // t = k + 1.5·2²³ holds the integer k = round(x·log2 e) in its low mantissa bits.
    let t = x * LOG2E + ROUND_MAGIC;
    let k_int = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()) as i32;
    let k = t - ROUND_MAGIC;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits((k_int.wrapping_add(127) as u32) << 23);
    y * scale
}

/// Logistic sigmoid 1 / (1 + e^−x) through the vectorisable `exp`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Lanes of the independent accumulators below (one AVX2 register of f32).
const LANES: usize = 8;

/// max(x) with 8 independent lanes (vectorises; a plain fold does not).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut m = rest.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

/// Σ a·b with 8 independent partial sums.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let split = n - n % LANES;
    for (ca, cb) in a[..split].chunks_exact(LANES).zip(b[..split].chunks_exact(LANES)) {
        for j in 0..LANES {
            acc[j] += ca[j] * cb[j];
        }
    }
    let tail: f32 = a[split..].iter().zip(&b[split..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// x ← e^(x − m) in place; returns Σ e^(x − m) (8 independent partial sums).
#[inline(always)]
pub fn exp_shift_sum(x: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let split = x.len() - x.len() % LANES;
    let (body, rest) = x.split_at_mut(split);
    for c in body.chunks_exact_mut(LANES) {
        for j in 0..LANES {
            let e = exp(c[j] - m);
            c[j] = e;
            acc[j] += e;
        }
    }
    let mut tail = 0.0;
    for v in rest {
        *v = exp(*v - m);
        tail += *v;
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_working_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(-1000.0) < 1e-37 && exp(1000.0).is_finite());
    }

    #[test]
    fn sigmoid_matches_std() {
        for i in -200..200 {
            let x = i as f32 * 0.1;
            let want = 1.0 / (1.0 + (-x as f64).exp());
            assert!((sigmoid(x) as f64 - want).abs() < 1e-7, "x = {x}");
        }
    }
}
