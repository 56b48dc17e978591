//! A batch on the device (tokens, targets, positions, sequence starts, and the table the
//! embedding backward sums by), and the device-side helpers that read token ids.

use crate::cuda::device::{drv, int, Arg, Gpu};
use crate::error::{Error, Result};
use crate::tensor::backend::PackedBatch;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr};
use std::ops::Range;

/// A packed batch in device memory.
pub struct GpuBatch {
    pub tokens: CudaSlice<u32>,
    pub targets: CudaSlice<u32>,
    pub positions: CudaSlice<u32>,
    /// [n_seq + 1] sequence starts as int.
    pub cu_seqlens: CudaSlice<i32>,
    /// The tokens grouped by id for the embedding backward ([`embedding_csr`]), and its id count.
    pub emb_csr: CudaSlice<u32>,
    pub emb_ids: usize,
    pub n_seq: usize,
    pub max_len: usize,
}

/// The layout the embedding backward kernel reads (cuda/embedding.cu): `[ids | starts | rows]`,
/// the u distinct token ids ascending, u + 1 offsets, and the row indices grouped by id,
/// ascending within each id (so each id's rows are summed in the CPU's order).
pub fn embedding_csr(tokens: &[u32]) -> Vec<u32> {
    let mut rows: Vec<u32> = (0..tokens.len() as u32).collect();
    rows.sort_by_key(|&r| tokens[r as usize]); // stable: rows stay ascending within an id
    let (mut ids, mut starts) = (Vec::new(), Vec::new());
    for (k, &r) in rows.iter().enumerate() {
        let t = tokens[r as usize];
        if ids.last() != Some(&t) {
            ids.push(t);
            starts.push(k as u32);
        }
    }
    starts.push(rows.len() as u32);
    let mut out = ids;
    out.extend(starts);
    out.extend(rows);
    out
}

impl Gpu {
    /// `batch` in device memory, with the embedding backward's table ([`embedding_csr`]).
    pub(crate) fn upload_batch(&self, batch: PackedBatch<'_>) -> Result<GpuBatch> {
        let up = |x: &[u32]| self.htod(x);
        let starts = batch.seq_starts.iter().map(|&s| int(s, "token index")).collect::<Result<Vec<i32>>>()?;
        let csr = embedding_csr(batch.tokens);
        Ok(GpuBatch {
            emb_ids: (csr.len() - 1 - batch.tokens.len()) / 2,
            emb_csr: up(&csr)?,
            tokens: up(batch.tokens)?,
            targets: up(batch.targets)?,
            positions: up(batch.positions)?,
            cu_seqlens: self.htod(&starts)?,
            n_seq: batch.num_seqs(),
            max_len: batch.max_seq_len(),
        })
    }
    /// out[i] = table[ids[i]] for the `out.len() / c` token ids at device address `ids` (rows of
    /// `c`).
    pub(crate) fn embed_ids(
        &self,
        mut out: CudaViewMut<'_, f32>,
        table: CudaView<'_, f32>,
        ids: u64,
        c: usize,
    ) -> Result<()> {
        let n = out.len() / c.max(1);
        let args = [
            Arg::P(self.pm(&mut out)),
            Arg::P(self.pr(&table)),
            Arg::P(ids),
            Arg::I(int(n, "tokens")?),
            Arg::I(int(c, "hidden")?),
        ];
        self.launch("embedding", "embedding_fwd_f32", (n as u32, 1, 1), (256, 1, 1), 0, &args)
    }

    /// Copy `buf[r]` to `out` (its length `r.len()`) and wait for it.
    pub(crate) fn download_range(&self, buf: &CudaSlice<f32>, r: Range<usize>, out: &mut [f32]) -> Result<()> {
        if out.len() != r.len() || r.end > buf.len() {
            let why = format!("{:?} of a buffer of {} into {} values", r, buf.len(), out.len());
            return Err(Error::shape("download", why));
        }
        self.stream.memcpy_dtoh(&buf.slice(r), out).map_err(drv("download"))?;
        self.sync()
    }

    pub(crate) fn ids_ptr<T>(&self, s: &CudaSlice<T>, offset: usize) -> u64 {
        s.device_ptr(&self.stream).0 + (offset * std::mem::size_of::<T>()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::embedding_csr;

    /// The embedding backward kernel's contract, emulated on the host over the CSR the backend
    /// uploads: one block per distinct id, each element summed serially in row order — bit for
    /// bit the CPU's `ops::embedding_backward`, for repeated, absent and out-of-order ids.
    #[test]
    fn embedding_backward_over_the_csr_is_the_cpus_sum_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(3);
        for (n, v) in [(0usize, 5usize), (1, 3), (37, 4), (200, 50), (64, 1000)] {
            let c = 7;
            let tokens: Vec<u32> = (0..n).map(|_| (rng.next_u64() % v as u64) as u32).collect();
            let dout: Vec<f32> = (0..n * c).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
            let init: Vec<f32> = (0..v * c).map(|_| rng.uniform() as f32).collect();
            let mut cpu = init.clone();
            crate::tensor::cpu::ops::embedding_backward(&mut cpu, &dout, &tokens, c);
            let csr = embedding_csr(&tokens);
            let u = (csr.len() - 1 - n) / 2;
            let (ids, starts, rows) = (&csr[..u], &csr[u..2 * u + 1], &csr[2 * u + 1..]);
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend and are distinct");
            let mut emu = init.clone();
            for k in 0..u {
                for j in 0..c {
                    let mut acc = emu[ids[k] as usize * c + j];
                    for &r in &rows[starts[k] as usize..starts[k + 1] as usize] {
                        acc += dout[r as usize * c + j];
                    }
                    emu[ids[k] as usize * c + j] = acc;
                }
            }
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&emu), bits(&cpu), "n {n} v {v}");
            if n > v {
                assert!(u < n, "repeated ids are grouped");
            }
        }
    }
}
