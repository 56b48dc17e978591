//! A data-parallel rank's share of the optimizer on the GPU (`[parallel] shard_optimizer`,
//! `parallel::zero`): the moments of its part of the weights only, and the parts given to every
//! rank after the update, in place, by NCCL broadcasts on the stream.

use super::GpuModel;
use crate::cuda::nccl::Nccl;
use crate::error::Result;
use crate::parallel::zero::shard_range;

impl GpuModel {
    /// Keep AdamW moments for `len` weights (a shard's; zeros), freeing the others.
    pub fn shard_moments(&mut self, len: usize) -> Result<()> {
        self.check_trainable()?;
        if len != self.m.len() {
            // (the old buffers go first: their memory may serve the new ones)
            self.m = self.gpu.alloc(1, "the AdamW moments")?;
            self.v = self.gpu.alloc(1, "the AdamW moments")?;
            self.m = self.gpu.alloc(len.max(1), "the AdamW moments")?;
            self.v = self.gpu.alloc(len.max(1), "the AdamW moments")?;
        }
        Ok(())
    }

    /// Every rank of `group` gets every rank's part of the weights ([`shard_range`]), then the
    /// bf16 image follows the whole buffer.
    pub fn gather_shards(&mut self, group: &Nccl) -> Result<()> {
        use crate::parallel::Comm;
        let (n, size) = (self.params.len(), group.size());
        for root in 0..size {
            let part = shard_range(n, root, size);
            if !part.is_empty() {
                group.broadcast_device(&mut self.params.slice_mut(part), root)?;
            }
        }
        if let Some(image) = self.image.as_mut() {
            image.refresh(&self.params)?;
        }
        Ok(())
    }
}
