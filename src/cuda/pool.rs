//! The device's stream-ordered memory pool: what it keeps, and what a failed allocation does.
//!
//! cudarc allocates every buffer with `cuMemAllocAsync` from the device's current pool. The
//! driver's default for that pool is a release threshold of zero: at every host synchronisation
//! (each read of a loss, of a decode step's sampled ids) all the memory the pool holds unused goes
//! back to the device, and the next step's activations are mapped again from scratch. arbor keeps
//! it instead (`keep`, the default: threshold = all of it), so a step reuses the previous step's
//! memory, as PyTorch's caching allocator does. `ARBOR_CUDA_POOL=release` restores the driver's
//! default (to measure what keeping buys, or to share a GPU with other processes).
//!
//! Memory the pool keeps unused is still the process's: an allocation that fails for want of
//! memory waits for the stream, hands the pool's unused memory back ([`retry_after_trim`]) and
//! tries once more before reporting the shortage.

use crate::cuda::device::drv;
use crate::error::{Error, Result};
use cudarc::driver::sys::{self, CUmemPool_attribute as Attr};
use cudarc::driver::{result, DriverError};

/// What the pool does with memory freed by the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolPolicy {
    /// Keep it for the next allocation (the release threshold is every byte).
    Keep,
    /// The driver's default: hand it back at every synchronisation (threshold 0).
    Release,
}

impl PoolPolicy {
    pub fn name(self) -> &'static str {
        match self {
            PoolPolicy::Keep => "keep",
            PoolPolicy::Release => "release",
        }
    }

    /// The pool's release threshold for this policy, in bytes.
    pub fn threshold(self) -> u64 {
        match self {
            PoolPolicy::Keep => u64::MAX,
            PoolPolicy::Release => 0,
        }
    }
}

/// The policy `ARBOR_CUDA_POOL` asks for (unset or empty: keep), or an error naming the variable.
pub fn policy_from_env(value: Option<&str>) -> Result<PoolPolicy> {
    match value {
        None | Some("") | Some("keep") => Ok(PoolPolicy::Keep),
        Some("release") => Ok(PoolPolicy::Release),
        Some(v) => Err(Error::Invalid(format!("ARBOR_CUDA_POOL={v:?}: expected \"keep\" or \"release\""))),
    }
}

/// A device's current memory pool (the one `cuMemAllocAsync` draws from).
pub(crate) struct Pool(sys::CUmemoryPool);

// SAFETY: a memory pool handle names a driver object that any thread of the process may use; the
// driver serialises the calls on it.
unsafe impl Send for Pool {}
// SAFETY: as above; `Pool` holds no host state beside the handle.
unsafe impl Sync for Pool {}

impl Pool {
    /// The current pool of `device`.
    pub(crate) fn of_device(device: sys::CUdevice) -> Result<Pool> {
        // SAFETY: the driver is initialised (a context of this device exists) and `device` is one
        // of its devices.
        let pool = unsafe { result::device::get_mem_pool(device) }.map_err(drv("memory pool"))?;
        Ok(Pool(pool))
    }

    fn set(&self, attr: Attr, mut value: u64) -> Result<()> {
        // SAFETY: the handle is live; every attribute set here takes a cuuint64_t.
        unsafe { sys::cuMemPoolSetAttribute(self.0, attr, (&mut value as *mut u64).cast()) }
            .result()
            .map_err(|e| Error::device("CUDA memory pool", format!("setting {attr:?}: {e:?}")))
    }

    fn get(&self, attr: Attr) -> Result<u64> {
        let mut value = 0u64;
        // SAFETY: the handle is live; every attribute read here is a cuuint64_t.
        unsafe { sys::cuMemPoolGetAttribute(self.0, attr, (&mut value as *mut u64).cast()) }
            .result()
            .map_err(|e| Error::device("CUDA memory pool", format!("reading {attr:?}: {e:?}")))?;
        Ok(value)
    }

    /// Apply `policy`'s release threshold.
    pub(crate) fn apply(&self, policy: PoolPolicy) -> Result<()> {
        self.set(Attr::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, policy.threshold())
    }

    /// The release threshold in force (bytes the pool keeps unused at a synchronisation).
    pub(crate) fn threshold(&self) -> Result<u64> {
        self.get(Attr::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD)
    }

    /// Hand every unused byte the pool holds back to the device (the caller has waited for the
    /// stream, so that frees still queued on it have happened).
    pub(crate) fn trim(&self) -> Result<()> {
        // SAFETY: the handle is live.
        unsafe { sys::cuMemPoolTrimTo(self.0, 0) }.result().map_err(drv("memory pool trim"))
    }

    /// Bytes in use in the pool at most since the last [`Pool::reset_peak`] (the process's live
    /// buffers at their peak).
    pub(crate) fn peak_used(&self) -> Result<u64> {
        self.get(Attr::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
    }

    /// Start a new peak from the bytes in use now.
    pub(crate) fn reset_peak(&self) -> Result<()> {
        self.set(Attr::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)
    }
}

/// Run `alloc`; when it fails for want of memory, run `trim` (wait for the stream, then hand the
/// pool's unused memory back) and `alloc` once more. Any other failure, and a second shortage,
/// is returned as it is.
pub(crate) fn retry_after_trim<T>(
    mut alloc: impl FnMut() -> std::result::Result<T, DriverError>,
    trim: impl FnOnce() -> Result<()>,
) -> std::result::Result<T, DriverError> {
    match alloc() {
        Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
            // A trim that fails leaves the pool as it was: the second try then reports the shortage.
            let _ = trim();
            alloc()
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn oom() -> DriverError {
        DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)
    }

    #[test]
    fn a_shortage_trims_the_pool_and_tries_once_more() {
        let (tries, trims) = (Cell::new(0), Cell::new(0));
        let got = retry_after_trim(
            || {
                tries.set(tries.get() + 1);
                if trims.get() == 0 {
                    Err(oom())
                } else {
                    Ok(7)
                }
            },
            || {
                trims.set(trims.get() + 1);
                Ok(())
            },
        );
        assert_eq!((got.ok(), tries.get(), trims.get()), (Some(7), 2, 1));
    }

    #[test]
    fn a_second_shortage_and_other_failures_are_returned_untouched() {
        let tries = Cell::new(0);
        let got: std::result::Result<(), _> = retry_after_trim(
            || {
                tries.set(tries.get() + 1);
                Err(oom())
            },
            || Ok(()),
        );
        assert_eq!((got.err().map(|e| e.0), tries.get()), (Some(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY), 2));

        let trims = Cell::new(0);
        let got: std::result::Result<(), _> = retry_after_trim(
            || Err(DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE)),
            || {
                trims.set(trims.get() + 1);
                Ok(())
            },
        );
        assert_eq!((got.err().map(|e| e.0), trims.get()), (Some(sys::CUresult::CUDA_ERROR_INVALID_VALUE), 0));
    }

    #[test]
    fn the_policy_comes_from_arbor_cuda_pool() {
        assert_eq!(policy_from_env(None).unwrap(), PoolPolicy::Keep);
        assert_eq!(policy_from_env(Some("")).unwrap(), PoolPolicy::Keep);
        assert_eq!(policy_from_env(Some("release")).unwrap().threshold(), 0);
        assert_eq!(PoolPolicy::Keep.threshold(), u64::MAX);
        let e = policy_from_env(Some("forever")).unwrap_err().to_string();
        assert!(e.contains("ARBOR_CUDA_POOL") && e.contains("forever") && e.contains("release"), "{e}");
    }
}
