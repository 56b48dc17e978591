//! Whether a `[train] device` can run here (cheap: no context is made), and the error of a run
//! that asks for a device it cannot have.

use crate::config::Device;
use crate::error::{Error, Result};

/// Whether `device` can be used at all: the error
/// [`Engine::new`](crate::train::engine::Engine::new) would give where CUDA is missing.
pub fn probe(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda => match crate::cuda::unavailable() {
            Some(why) => Err(unusable(format!("CUDA backend: {why}"))),
            None => Ok(()),
        },
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => Err(unusable("this binary was built without the `cuda` feature")),
    }
}

/// The error of a run that asks for "cuda" where no CUDA device is usable.
pub fn unusable(why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("[train] device = \"cuda\": no usable CUDA device ({why})"))
}
