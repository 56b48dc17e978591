//! Seeded pseudo-random numbers: SplitMix64 streams keyed by coordinates, ziggurat normals.
//!
//! Every random draw in the simulator comes from a stream derived from coordinates
//! (seed, purpose, prompt id, sample index, attempt, turn), so the same prompt gets the same
//! lengths under every policy (common random numbers) and results do not depend on event order.
//!
//! A stream is short (one to a few draws), so the generator is SplitMix64 itself (Steele, Lea &
//! Flood 2014: a Weyl sequence through a 64-bit finaliser; passes BigCrush): its whole state is
//! the coordinate key, so opening a stream costs no seeding rounds. Normal deviates use a
//! 256-layer ziggurat (Marsaglia & Tsang 2000): one 64-bit draw and a table lookup on ~99 % of
//! calls, no transcendental function on the fast path.

use std::sync::OnceLock;

/// SplitMix64 step: `z = (x += 0x9E37..); z = mix(z)`.
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix64(*state)
}

/// The SplitMix64 finaliser (a bijection of u64 with full avalanche).
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash a list of coordinates into one 64-bit stream key (order matters).
#[inline]
pub fn derive_key(seed: u64, coords: &[u64]) -> u64 {
    let mut k = mix64(seed ^ 0x5851_F42D_4C95_7F2D);
    for &c in coords {
        k = mix64(k.wrapping_add(0x9E37_79B9_7F4A_7C15) ^ c.wrapping_mul(0x2545_F491_4F6C_DD1D));
    }
    k
}

/// A random stream: SplitMix64 over a 64-bit state.
#[derive(Clone, Debug)]
pub struct Rng {
    s: u64,
}

impl Rng {
    /// New generator from one 64-bit seed.
    pub fn new(seed: u64) -> Self {
        Rng { s: mix64(seed) }
    }

    /// Generator for the stream named by `coords` under `seed`.
    #[inline]
    pub fn for_coords(seed: u64, coords: &[u64]) -> Self {
        Rng { s: derive_key(seed, coords) }
    }

    /// Next raw 64-bit value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.s)
    }

    /// Uniform in [0, 1) with 53 random bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1], safe for `ln`.
    #[inline]
    pub fn uniform_open(&mut self) -> f64 {
        1.0 - self.uniform()
    }

    /// Uniform integer in [0, n) (n > 0), by multiply-shift.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal deviate (ziggurat).
    #[inline]
    pub fn normal(&mut self) -> f64 {
        let z = zig();
        loop {
            let r = self.next_u64();
            let i = (r & 0xFF) as usize;
            let neg = r & 0x100 != 0;
            let u = (r >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            let x = u * z.x[i];
            if x < z.x[i + 1] {
                return if neg { -x } else { x };
            }
            if let Some(x) = self.normal_slow(z, i, x) {
                return if neg { -x } else { x };
            }
        }
    }

    /// Ziggurat rejection: the base layer's tail beyond `r`, or a wedge of layer `i` (None: retry).
    #[cold]
    fn normal_slow(&mut self, z: &Ziggurat, i: usize, x: f64) -> Option<f64> {
        if i == 0 {
            // Tail x > r (Marsaglia 1964): exponential proposals, accepted with the normal's curvature.
            for _ in 0..1000 {
                let a = -self.uniform_open().ln() / ZIG_R;
                let b = -self.uniform_open().ln();
                if 2.0 * b > a * a {
                    return Some(ZIG_R + a);
                }
            }
            return Some(ZIG_R);
        }
        // Layer i spans heights [f(x_i), f(x_{i+1})]: accept if a uniform height falls under the curve.
        let y = z.f[i] + self.uniform() * (z.f[i + 1] - z.f[i]);
        (y < (-0.5 * x * x).exp()).then_some(x)
    }

    /// Bernoulli draw with probability `p`.
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.uniform() < p
    }
}

/// Layers of the ziggurat.
const ZIG_N: usize = 256;
/// Right edge of the base layer and the common area of every layer, for f(x) = exp(−x²/2), 256 layers.
const ZIG_R: f64 = 3.654_152_885_361_009;
const ZIG_V: f64 = 0.004_928_673_233_99;

/// Ziggurat tables: `x[i]` is the width of layer i (x[0] = v / f(r) for the base layer with its tail,
/// x[1] = r, decreasing to x[N] = 0), `f[i] = f(x[i])`.
struct Ziggurat {
    x: [f64; ZIG_N + 1],
    f: [f64; ZIG_N + 1],
}

fn zig() -> &'static Ziggurat {
    static Z: OnceLock<Ziggurat> = OnceLock::new();
    Z.get_or_init(|| {
        let f = |x: f64| (-0.5 * x * x).exp();
        let mut t = Ziggurat { x: [0.0; ZIG_N + 1], f: [0.0; ZIG_N + 1] };
        t.x[0] = ZIG_V / f(ZIG_R);
        t.x[1] = ZIG_R;
        for i in 1..ZIG_N {
            // Layer i has width x[i] and area v: its top is at height f(x[i]) + v / x[i].
            let top = f(t.x[i]) + ZIG_V / t.x[i];
            t.x[i + 1] = if top >= 1.0 { 0.0 } else { (-2.0 * top.ln()).sqrt() };
        }
        t.x[ZIG_N] = 0.0;
        for i in 0..=ZIG_N {
            t.f[i] = f(t.x[i]);
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_moments() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng::new(1);
        let n = 200_000;
        let (mut s, mut s2, mut s4) = (0.0, 0.0, 0.0);
        for _ in 0..n {
            let z = r.normal();
            s += z;
            s2 += z * z;
            s4 += z * z * z * z;
        }
        assert!((s / n as f64).abs() < 0.01);
        assert!((s2 / n as f64 - 1.0).abs() < 0.02);
        assert!((s4 / n as f64 - 3.0).abs() < 0.1, "kurtosis {}", s4 / n as f64);
        assert_ne!(derive_key(1, &[1, 2]), derive_key(1, &[2, 1]));
        assert_ne!(derive_key(1, &[1]), derive_key(2, &[1]));
    }

    /// The ziggurat's layers close at the top, and its draws follow the normal CDF, tails included.
    #[test]
    fn ziggurat_matches_normal_cdf() {
        let z = zig();
        let top = (-0.5 * z.x[ZIG_N - 1] * z.x[ZIG_N - 1]).exp() + ZIG_V / z.x[ZIG_N - 1];
        assert!((top - 1.0).abs() < 1e-6, "top layer ends at {top}");
        // Φ at a few points (Abramowitz & Stegun table values).
        let points = [(-3.0, 0.001_349_9), (-2.0, 0.022_750), (-1.0, 0.158_655), (0.0, 0.5), (0.5, 0.691_462)];
        let mut r = Rng::new(11);
        let n = 400_000;
        let draws: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        for (x, phi) in points {
            let p = draws.iter().filter(|&&d| d < x).count() as f64 / n as f64;
            let se = (phi * (1.0 - phi) / n as f64).sqrt();
            assert!((p - phi).abs() < 5.0 * se + 1e-5, "P(Z < {x}) = {p}, want {phi}");
        }
        // Beyond the base layer (|z| > r ≈ 3.65): P = 2.58e-4.
        let tail = draws.iter().filter(|d| d.abs() > ZIG_R).count() as f64 / n as f64;
        assert!((tail - 2.58e-4).abs() < 8e-5, "tail {tail}");
    }
}
