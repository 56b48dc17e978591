//! The crate's error for a failed CUDA driver call (a module of its own, so that both
//! `cuda::device` and `cuda::nccl`, which the device holds, can use it).

use crate::error::Error;

/// Map a driver error of `what` (e.g. "upload") to the crate's device error.
pub(crate) fn drv(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::device(format!("CUDA {what}"), format!("{e:?}"))
}
