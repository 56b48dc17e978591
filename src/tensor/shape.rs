//! Shapes that the operations of every backend take (a file of its own, below everything else
//! in `tensor`, so the CPU kernels and the backend interface can both use them).

/// Sizes of a row-major product c[m, n] = a · b with inner dimension k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl GemmShape {
    /// The shape of c[m, n] (+)= a · b over an inner dimension k.
    pub const fn new(m: usize, n: usize, k: usize) -> Self {
        GemmShape { m, n, k }
    }
}
