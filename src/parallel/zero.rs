//! Optimizer-state sharding over the data-parallel group (`[parallel] shard_optimizer`, ZeRO
//! stage 1): every rank still sums the whole gradient and clips by the whole norm, but keeps the
//! AdamW moments of one contiguous part of the flat parameter buffer ([`shard_range`]) and updates
//! only that part; the parts are then given to every rank ([`gather_shards`]). AdamW is
//! elementwise, so the weights are the unsharded update's bits, and each rank holds 8/dp bytes of
//! moments a parameter instead of 8.

use crate::error::Result;
use crate::parallel::Comm;

/// Rank `rank`'s part of `total` elements split over `size` ranks: contiguous, in rank order,
/// sizes differing by at most one.
pub fn shard_range(total: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let size = size.max(1);
    let at = |r: usize| (total as u128 * r as u128 / size as u128) as usize;
    at(rank)..at(rank + 1)
}

/// Bytes a broadcast carries at most (a part is sent in pieces of this size).
const PIECE_BYTES: usize = 64 << 20;

/// Every rank of `group` gets every rank's part ([`shard_range`] of `buf.len()`) of `buf`, in
/// place: each rank broadcasts its own, in pieces.
pub fn gather_shards(group: &dyn Comm, buf: &mut [f32]) -> Result<()> {
    let (n, size) = (buf.len(), group.size());
    if size < 2 {
        return Ok(());
    }
    for root in 0..size {
        let part = shard_range(n, root, size);
        for start in part.clone().step_by(PIECE_BYTES / 4) {
            let piece = start..(start + PIECE_BYTES / 4).min(part.end);
            let mut bytes = match group.rank() == root {
                true => bytemuck::cast_slice(&buf[piece.clone()]).to_vec(),
                false => Vec::new(),
            };
            group.broadcast_bytes(root, &mut bytes)?;
            if bytes.len() != 4 * piece.len() {
                let msg = format!("rank {root}'s part: {} bytes for {} values", bytes.len(), piece.len());
                return Err(crate::error::Error::collective(group.rank(), "gather_shards", msg));
            }
            if group.rank() != root {
                for (x, b) in buf[piece].iter_mut().zip(bytes.chunks_exact(4)) {
                    *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_cover_the_buffer_in_order() {
        for (total, size) in [(0, 3), (1, 4), (10, 3), (1000, 7), (7, 7)] {
            let parts: Vec<_> = (0..size).map(|r| shard_range(total, r, size)).collect();
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts[size - 1].end, total);
            for w in parts.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{lens:?}");
        }
    }
}
