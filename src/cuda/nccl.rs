//! NCCL as a [`Comm`]: the reductions run on the GPU through NCCL, everything else (bytes,
//! barriers, splits, abort) on the bootstrap communicator (MPI under mpirun), which also carries
//! the NCCL unique id from rank 0 to the others.

use crate::cuda::driver_error::drv;
use crate::error::{Error, Result};
use crate::parallel::Comm;
use cudarc::driver::{CudaStream, DevicePtrMut};
use cudarc::nccl::{Id, ReduceOp};
use std::sync::Arc;

/// A NCCL communicator over the ranks of `boot`, one GPU per rank.
pub struct Nccl {
    comm: cudarc::nccl::Comm,
    stream: Arc<CudaStream>,
    boot: Box<dyn Comm>,
}

// SAFETY: the NCCL communicator is used by one thread at a time (the trainer's); moving it
// between threads is allowed by NCCL as long as calls are not concurrent.
unsafe impl Send for Nccl {}

fn nccl_err(what: &str) -> impl Fn(cudarc::nccl::result::NcclError) -> Error + '_ {
    move |e| Error::device(format!("NCCL {what}"), format!("{e:?}"))
}

impl Nccl {
    /// Create the communicator: rank 0 makes the unique id, `boot` broadcasts it, every rank
    /// joins with its GPU. Fails with a clear error where NCCL (libnccl.so) is missing.
    pub fn new(stream: &Arc<CudaStream>, boot: Box<dyn Comm>) -> Result<Nccl> {
        // SAFETY: only looks the library up on the loader path (dlopen); nothing in it is called.
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(Error::device(
                "NCCL",
                "libnccl.so not found on the loader path (NCCL ships libnccl.so.2: link it as libnccl.so)",
            ));
        }
        let mut bytes = if boot.rank() == 0 {
            let id = Id::new().map_err(nccl_err("unique id"))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            vec![0u8; 128]
        };
        boot.broadcast_bytes(0, &mut bytes)?;
        if bytes.len() != 128 {
            let msg = format!("received {} bytes, expected 128", bytes.len());
            return Err(Error::collective(0, "broadcast of the NCCL unique id", msg));
        }
        let mut raw = [0 as std::ffi::c_char; 128];
        for (r, b) in raw.iter_mut().zip(&bytes) {
            *r = *b as std::ffi::c_char;
        }
        let stream = stream.clone();
        let comm = cudarc::nccl::Comm::from_rank(stream.clone(), boot.rank(), boot.size(), Id::uninit(raw))
            .map_err(nccl_err("init"))?;
        Ok(Nccl { comm, stream, boot })
    }

    /// Sum a device buffer (or a view of one) over the group, in place, on the stream.
    pub fn all_reduce_device<B: DevicePtrMut<f32>>(&self, buf: &mut B) -> Result<()> {
        self.comm.all_reduce_in_place(buf, &ReduceOp::Sum).map_err(nccl_err("all-reduce"))?;
        Ok(())
    }

    /// Give every rank rank `root`'s values of a device buffer (or a view of one), in place, on
    /// the stream.
    pub fn broadcast_device<B: DevicePtrMut<f32>>(&self, buf: &mut B, root: usize) -> Result<()> {
        self.comm.broadcast_in_place(buf, root as i32).map_err(nccl_err("broadcast"))?;
        Ok(())
    }

    fn reduce_host<T>(&self, buf: &mut [T], op: ReduceOp) -> Result<()>
    where
        T: cudarc::nccl::NcclType + cudarc::driver::DeviceRepr + Copy,
    {
        if buf.is_empty() {
            return Ok(());
        }
        let mut dev = self.stream.clone_htod(buf).map_err(drv("upload"))?;
        self.comm.all_reduce_in_place(&mut dev, &op).map_err(nccl_err("all-reduce"))?;
        self.stream.memcpy_dtoh(&dev, buf).map_err(drv("download"))?;
        self.stream.synchronize().map_err(drv("synchronize"))
    }
}

impl Comm for Nccl {
    fn rank(&self) -> usize {
        self.boot.rank()
    }
    fn size(&self) -> usize {
        self.boot.size()
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.reduce_host(buf, ReduceOp::Sum)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_host(buf, ReduceOp::Sum)
    }
    fn all_reduce_max_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_host(buf, ReduceOp::Max)
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<()> {
        self.boot.broadcast_bytes(root, buf)
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.boot.all_gather_bytes(mine)
    }
    fn barrier(&self) -> Result<()> {
        self.boot.barrier()
    }
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Comm>> {
        self.boot.split(color, key)
    }
    fn abort(&self, msg: &str) -> ! {
        self.boot.abort(msg)
    }
    fn describe(&self) -> String {
        format!("NCCL over {}", self.boot.describe())
    }
}
