//! Checksums of bytes: what a checkpoint's manifest records for each file and what a weights
//! message between ranks carries (to detect corruption and truncation; not a cryptographic hash).
//!
//! [`checksum64`] runs at memory speed: four independent lanes each take one little-endian 64-bit
//! word of every 32-byte block (a multiply, an add and a rotation per word, with no dependency
//! between lanes), and the lanes, the tail and the length are folded together at the end. Every
//! step is a bijection of the state for a fixed input word and of the word for a fixed state, so
//! two inputs of the same length that differ within one aligned 8-byte word never share a
//! checksum. It replaced byte-at-a-time FNV-1a (~0.6 GB/s on one core: 3 s to check a 0.5B
//! model's f32 weights at every async weights message, 10 s for its checkpoint), which
//! [`fnv1a64`] keeps for the manifests written before.

/// Multipliers: the first 64 bits of the fractional parts of √3, √5, √7 and √11 (all odd).
const K3: u64 = 0xbb67_ae85_84ca_a73b;
const K5: u64 = 0x3c6e_f372_fe94_f82b;
const K7: u64 = 0xa54f_f53a_5f1d_36f1;
const K11: u64 = 0x510e_527f_ade6_82d1;

/// Bytes a block gives the lanes (one 8-byte word each).
const BLOCK: usize = 32;

/// One lane's state after word `w`.
#[inline(always)]
fn mix(state: u64, w: u64) -> u64 {
    state.wrapping_add(w.wrapping_mul(K5)).rotate_left(31).wrapping_mul(K3)
}

/// `h` after folding in `v` (a lane, a tail word or the length).
#[inline(always)]
fn fold(h: u64, v: u64) -> u64 {
    (h ^ mix(0, v)).rotate_left(27).wrapping_mul(K3).wrapping_add(K11)
}

/// The 8-byte little-endian word at the start of `b` (which holds at least 8 bytes).
#[inline(always)]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// [`checksum64`] taken a piece at a time: `update` with the bytes in order, in pieces of any
/// sizes, then `finish`.
#[derive(Debug, Clone)]
pub struct Checksum64 {
    lanes: [u64; 4],
    pending: [u8; BLOCK],
    pending_len: usize,
    len: u64,
}

impl Default for Checksum64 {
    fn default() -> Self {
        Checksum64 { lanes: [K3, K5, K7, K11], pending: [0; BLOCK], pending_len: 0, len: 0 }
    }
}

impl Checksum64 {
    pub fn new() -> Self {
        Self::default()
    }

    /// Take the next `bytes`.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.pending_len > 0 {
            let take = (BLOCK - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < BLOCK {
                return;
            }
            let block = self.pending;
            self.blocks(&block);
            self.pending_len = 0;
        }
        let whole = bytes.len() / BLOCK * BLOCK;
        self.blocks(&bytes[..whole]);
        let rest = &bytes[whole..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// Whole blocks into the lanes.
    fn blocks(&mut self, bytes: &[u8]) {
        let [mut a, mut b, mut c, mut d] = self.lanes;
        for blk in bytes.chunks_exact(BLOCK) {
            a = mix(a, word(&blk[0..]));
            b = mix(b, word(&blk[8..]));
            c = mix(c, word(&blk[16..]));
            d = mix(d, word(&blk[24..]));
        }
        self.lanes = [a, b, c, d];
    }

    /// The checksum of every byte taken.
    pub fn finish(&self) -> u64 {
        let mut h = fold(K7, self.len);
        for lane in self.lanes {
            h = fold(h, lane);
        }
        let tail = &self.pending[..self.pending_len];
        let mut words = tail.chunks_exact(8);
        for w in words.by_ref() {
            h = fold(h, word(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            h = fold(h, u64::from_le_bytes(w));
        }
        // the final avalanche: every input bit reaches every output bit
        h ^= h >> 33;
        h = h.wrapping_mul(K5);
        h ^= h >> 29;
        h = h.wrapping_mul(K7);
        h ^ (h >> 32)
    }
}

/// The checksum of `bytes` (see the module's notes).
pub fn checksum64(bytes: &[u8]) -> u64 {
    let mut c = Checksum64::new();
    c.update(bytes);
    c.finish()
}

/// 64-bit FNV-1a of `bytes`: the checksum of checkpoint manifests written before [`checksum64`]
/// (their entries say `fnv1a64`), still verified on load.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_more(0xcbf2_9ce4_8422_2325, bytes)
}

/// FNV-1a state `h` after `bytes` more.
pub fn fnv1a64_more(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic test bytes.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        (0..n as u64).map(|i| ((i + seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8).collect()
    }

    /// The checksum is a format (checkpoint manifests record it): these values may never change.
    #[test]
    fn the_checksum_of_fixed_inputs_never_changes() {
        let got: Vec<String> =
            [0, 1, 7, 8, 31, 32, 33, 100, 4096].iter().map(|&n| format!("{:016x}", checksum64(&bytes(n, 1)))).collect();
        let want = [
            "2d8fcdfadcf56ba5",
            "5eacd786ea19abfd",
            "4dab45221ec237f0",
            "46ae10eda4bbaa40",
            "88bd4facc71f2d59",
            "ba2c9f292b2df0c1",
            "3d7294917efbf00e",
            "ec70140debb448d5",
            "d76eb7b232bfadc5",
        ];
        assert_eq!(got, want);
    }

    /// Pieces of any sizes give the checksum of the whole.
    #[test]
    fn pieces_of_any_sizes_give_the_checksum_of_the_whole() {
        let data = bytes(1000, 3);
        let whole = checksum64(&data);
        for cuts in [vec![0, 1000], vec![1, 2, 3, 40, 999], vec![31, 32, 33, 64, 65, 500], vec![7; 1]] {
            let mut c = Checksum64::new();
            let mut at = 0;
            for &cut in &cuts {
                c.update(&data[at..cut.max(at)]);
                at = cut.max(at);
            }
            c.update(&data[at..]);
            assert_eq!(c.finish(), whole, "cuts {cuts:?}");
        }
    }

    /// A change within one aligned word is always seen (the steps are bijections), anywhere in
    /// the blocks or the tail; so are a truncation and trailing zeros.
    #[test]
    fn a_changed_word_a_truncation_and_trailing_zeros_change_the_checksum() {
        let data = bytes(203, 5);
        let base = checksum64(&data);
        for at in 0..data.len() {
            for bit in [0u8, 3, 7] {
                let mut d = data.clone();
                d[at] ^= 1 << bit;
                assert_ne!(checksum64(&d), base, "byte {at} bit {bit}");
            }
        }
        // two bytes of one word changed at once
        let mut d = data.clone();
        (d[40], d[47]) = (d[40] ^ 0x80, d[47] ^ 1);
        assert_ne!(checksum64(&d), base);
        assert_ne!(checksum64(&data[..202]), base);
        let mut longer = data.clone();
        longer.push(0);
        assert_ne!(checksum64(&longer), base);
        assert_ne!(checksum64(&[]), checksum64(&[0]));
        assert_ne!(checksum64(&[0; 32]), checksum64(&[0; 64]));
    }

    /// FNV-1a's published test values (the legacy manifests' checksum).
    #[test]
    fn fnv1a64_gives_its_published_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
