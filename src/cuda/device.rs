//! One CUDA device: context, stream, cuBLAS handle and the kernel cache.
//!
//! Everything runs on one stream, so operations are ordered without events (cudarc's per-buffer
//! event tracking is switched off). Kernels are compiled by NVRTC for the device's own
//! architecture the first time a module is used and kept for the life of the process.

use crate::cuda::nvrtc;
use crate::cuda::plans::{AttnMma, AttnRows, Choice, DecodeAttn, DkdvPlan};
use crate::cuda::pool::{self, Pool, PoolPolicy};
use crate::error::{Error, Result};
use crate::tensor::Dtype;
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut,
    DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Shared memory a block may use without raising the function's attribute.
const DEFAULT_SMEM: u32 = 48 * 1024;

/// A kernel argument: a device pointer (0 = NULL), an int, a float or a 64-bit int.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    P(u64),
    I(i32),
    F(f32),
    L(i64),
}

/// The suffix of a module name that asks for its Hopper variant: the same source compiled for
/// the arch-specific compute_90a, where the wgmma entries hold their kernels (elsewhere they
/// trap). Only the opt-in wgmma launches load it, so a driver that rejected it would fail those
/// alone, never the default kernels of the plain module.
pub(crate) const HOPPER_VARIANT: &str = "@90a";

/// The source and the virtual architecture of module `name` on a device of architecture `arch`.
pub(crate) fn module_target<'a>(name: &'a str, arch: &'a str) -> (&'a str, &'a str) {
    match name.strip_suffix(HOPPER_VARIANT) {
        Some(source) => (source, "compute_90a"),
        None => (name, arch),
    }
}

/// The attention's tensor-core products `ARBOR_ATTN_MMA` asks for (`mma` or `wgmma`; unset or
/// empty: none), or an error naming the variable.
pub(crate) fn attn_mma_from_env(value: Option<&str>) -> Result<Option<AttnMma>> {
    match value {
        None | Some("") => Ok(None),
        Some("mma") => Ok(Some(AttnMma::Mma)),
        Some("wgmma") => Ok(Some(AttnMma::Wgmma)),
        Some(v) => Err(Error::Invalid(format!("ARBOR_ATTN_MMA={v:?}: expected \"mma\" or \"wgmma\""))),
    }
}

/// Bytes of the workspace cuBLAS is given (NVIDIA's advice for Hopper, more than Ampere needs).
const BLAS_WORKSPACE: usize = 32 << 20;

/// A CUDA device ready to run arbor's kernels.
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    /// cuBLAS's workspace, owned here (dropped after the handle), so that cuBLAS allocates
    /// nothing of its own, inside a captured decode step or out ([`BLAS_WORKSPACE`] bytes).
    _blas_workspace: CudaSlice<u8>,
    arch: String,
    name: String,
    ordinal: usize,
    sms: u32,
    /// Dynamic shared memory a block may be given (after raising the function's attribute;
    /// lowered by [`Gpu::cap_smem`]).
    max_smem: AtomicU32,
    /// Bytes of device memory.
    total_mem: usize,
    /// The stream-ordered pool every buffer comes from (`cuda::pool`); `None` where the driver
    /// has no such pool (buffers then come from `cuMemAlloc`).
    pool: Option<Pool>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, (CudaFunction, u32)>>,
    /// Reused f32 scratch of the column-sum passes (grown on demand, never shrunk), so a training
    /// step allocates nothing.
    scratch: Mutex<Option<CudaSlice<f32>>>,
    /// Operand type of the matrix products (`[train] dtype`, [`Gpu::set_dtype`]).
    dtype: AtomicU8,
    /// How the attention backward sums dK/dV over a GQA group ([`DkdvPlan`]).
    pub(crate) dkdv_plan: Choice<DkdvPlan>,
    /// The bf16 attention's tensor-core products ([`AttnMma`]; `cuda::attention`).
    pub(crate) attn_mma: Choice<AttnMma>,
    /// Rows per block of the bf16 attention ([`AttnRows`]; `cuda::attention`).
    pub(crate) attn_rows: Choice<AttnRows>,
    /// The decode attention kernel ([`DecodeAttn`]).
    pub(crate) decode_attn: Choice<DecodeAttn>,
    /// Positions per split of the per-group decode attention (0: chosen per step shape,
    /// `cuda::decode_attn::decode_splits`).
    pub(crate) decode_split: AtomicUsize,
    /// Reused bf16 copies of both operands of a "bf16" product (grown on demand).
    pub(crate) bf16_scratch: Mutex<Option<CudaSlice<u16>>>,
    /// The registered bf16 images of weight buffers (`cuda::image`).
    pub(crate) images: Mutex<Vec<ImageEntry>>,
    /// Operation timing while on (`cuda::profile`), and whether it is on (read before the lock,
    /// so an unprofiled launch takes no lock).
    pub(crate) profile: Mutex<Option<Profile>>,
    pub(crate) profiling: std::sync::atomic::AtomicBool,
    /// The NCCL communicator of this process's tensor-parallel group on this device (with the
    /// group's `TpGroup::id`), made at the group's first sum or broadcast on the device
    /// (`Backend::all_reduce_tp`; every rank of the group makes it there).
    pub(crate) tp_nccl: Mutex<Option<(usize, super::nccl::Nccl)>>,
}

/// Where the images of a device are: (f32 buffer address, its length in elements, image address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageEntry {
    pub base: u64,
    pub len: usize,
    pub image: u64,
}

/// The image address of the `len` f32 elements at `ptr` when they lie inside one entry's buffer.
pub fn lookup(entries: &[ImageEntry], ptr: u64, len: usize) -> Option<u64> {
    entries
        .iter()
        .find(|e| ptr >= e.base && ptr + 4 * len as u64 <= e.base + 4 * e.len as u64)
        .map(|e| e.image + (ptr - e.base) / 2)
}

pub(crate) use super::driver_error::drv;

/// What an allocation the device could not make says: what it was for and its size, the memory
/// the device has (`free`, `total` bytes), and the settings that need less.
pub(crate) fn out_of_memory(what: &str, bytes: usize, (free, total): (usize, usize), name: &str) -> String {
    let mib = |b: usize| (b as f64 / (1u64 << 20) as f64).ceil() as u64;
    let free = match free {
        0 => "an unknown amount".to_string(),
        f => format!("{} MiB", mib(f)),
    };
    format!(
        "{name} is out of memory: {what} asks for {} MiB, and {free} of its {} MiB are free. Lower [rl] \
         micro_batch or micro_batch_tokens or [train] batch_size (the activations of a forward and backward), [rl] max_batch (the KV \
         cache of generation), use [train] dtype = \"bf16\" (bf16 activations and KV cache), or train a \
         smaller model",
        mib(bytes),
        mib(total)
    )
}

/// `x` as a kernel/cuBLAS `int`, or an error naming the quantity.
pub(crate) fn int(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| Error::Invalid(format!("{what} = {x} exceeds the CUDA kernels' int range")))
}

/// Why no CUDA device can be used here, or `None` when one can. Never panics: the driver library
/// is looked up before anything calls into it.
pub fn unavailable() -> Option<String> {
    // SAFETY: only tries to dlopen the library by its candidate names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no CUDA driver (libcuda.so) on the loader path".into());
    }
    match CudaContext::device_count() {
        Ok(0) => Some("the CUDA driver reports no device".into()),
        Ok(_) => None,
        Err(e) => Some(format!("no CUDA device ({e:?})")),
    }
}

/// How many CUDA devices the driver reports (0 without a driver or device).
pub fn device_count() -> usize {
    if unavailable().is_some() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

impl Gpu {
    /// Open device `ordinal`: a clear error (never a crash) when there is no driver, no device,
    /// no NVRTC or no cuBLAS.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        if let Some(why) = unavailable() {
            return Err(Error::device("CUDA backend", why));
        }
        if !nvrtc::available() {
            return Err(Error::device("CUDA backend", "NVRTC (libnvrtc.so) not found; kernels cannot be compiled"));
        }
        // SAFETY: only looks the library up on the loader path (dlopen); nothing in it is called.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::device("CUDA backend", "cuBLAS (libcublas.so) not found"));
        }
        let count = CudaContext::device_count().map_err(drv("device count"))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::device("CUDA backend", format!("device {ordinal} requested, {count} present")));
        }
        let policy = pool::policy_from_env(std::env::var("ARBOR_CUDA_POOL").ok().as_deref())?;
        let ctx = CudaContext::new(ordinal).map_err(drv("context"))?;
        let pool = match ctx.has_async_alloc() {
            true => {
                let p = Pool::of_device(ctx.cu_device())?;
                p.apply(policy)?;
                Some(p)
            }
            false => None,
        };
        // One stream orders everything; per-buffer events would only cost time.
        // SAFETY: called before any buffer or stream of this context exists.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("stream"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| Error::device("cuBLAS", format!("{e:?}")))?;
        let blas_workspace = stream.alloc_zeros::<u8>(BLAS_WORKSPACE).map_err(drv("cuBLAS workspace"))?;
        // SAFETY: the handle is live and bound to `stream` (set once, by CudaBlas::new: a later
        // cublasSetStream would reset the workspace); the buffer holds BLAS_WORKSPACE bytes,
        // 256-byte aligned, and is kept in the Gpu, which drops it after the handle.
        unsafe {
            let ptr = blas_workspace.device_ptr(&stream).0 as *mut std::ffi::c_void;
            cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ptr, BLAS_WORKSPACE)
        }
        .result()
        .map_err(|e| Error::device("cuBLAS workspace", format!("{e:?}")))?;
        let (major, minor) = ctx.compute_capability().map_err(drv("compute capability"))?;
        let name = ctx.name().map_err(drv("device name"))?;
        let sms = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("SM count"))?;
        let total_mem = ctx.total_mem().map_err(drv("device memory"))?;
        let max_smem = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(drv("shared memory per block"))?;
        Ok(Gpu {
            ctx,
            stream,
            blas,
            _blas_workspace: blas_workspace,
            arch: format!("compute_{major}{minor}"),
            name,
            ordinal,
            sms: sms.max(1) as u32,
            max_smem: AtomicU32::new(max_smem.max(0) as u32),
            total_mem,
            pool,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            scratch: Mutex::new(None),
            dtype: AtomicU8::new(Dtype::F32 as u8),
            dkdv_plan: Choice::new(DkdvPlan::PerHead),
            attn_mma: Choice::new(AttnMma::Mma),
            attn_rows: Choice::new(AttnRows::R128),
            decode_attn: Choice::new(DecodeAttn::PerGroup),
            decode_split: AtomicUsize::new(0),
            bf16_scratch: Mutex::new(None),
            images: Mutex::new(Vec::new()),
            profile: Mutex::new(None),
            profiling: std::sync::atomic::AtomicBool::new(false),
            tp_nccl: Mutex::new(None),
        })
        .and_then(|g| {
            // ARBOR_ATTN_MMA=wgmma: the bf16 attention on Hopper's warpgroup products from the
            // start, for any job (opt-in; refused on other GPUs)
            if let Some(kind) = attn_mma_from_env(std::env::var("ARBOR_ATTN_MMA").ok().as_deref())? {
                g.set_attn_mma(kind).map_err(|e| Error::Invalid(format!("ARBOR_ATTN_MMA={}: {e}", kind.name())))?;
            }
            Ok(g)
        })
    }

    /// The device's UUID (one per physical GPU, whatever the process's visible-device numbering).
    pub fn uuid(&self) -> Result<[u8; 16]> {
        let u = self.ctx.uuid().map_err(drv("device UUID"))?;
        Ok(u.bytes.map(|b| b as u8))
    }

    /// The device's compute capability as one number: 90 for 9.0, 86 for 8.6, 100 for 10.0.
    pub fn compute_capability(&self) -> u32 {
        self.arch.trim_start_matches("compute_").parse().unwrap_or(0)
    }

    /// Whether the device runs Hopper's warpgroup products (`wgmma`: compute capability 9.0, the
    /// kernels in modules' `HOPPER_VARIANT`s).
    pub fn has_wgmma(&self) -> bool {
        self.arch == "compute_90"
    }

    /// "cuda:0 (NVIDIA H100 80GB HBM3, compute_90)", with ", bf16 products" (or tf32) when the
    /// products do not take exact f32 operands.
    pub fn describe(&self) -> String {
        let mut products = match self.dtype() {
            Dtype::F32 => String::new(),
            d => format!(", {} products", d.name()),
        };
        if self.attn_mma() == AttnMma::Wgmma {
            products += ", wgmma attention";
        }
        if self.pool_policy() == Some(PoolPolicy::Release) {
            products += ", memory released at every sync";
        }
        format!("cuda:{} ({}, {}{products})", self.ordinal, self.name, self.arch)
    }

    /// The stream every operation of this device runs on (for callers managing their own buffers).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Bytes of the device's memory in use (total − free, as the driver reports it: every
    /// process's), or `None` when the driver cannot say.
    pub fn mem_used(&self) -> Option<usize> {
        self.ctx.mem_get_info().ok().map(|(free, total)| total.saturating_sub(free))
    }

    /// Dynamic shared memory a kernel's block may be given on this device (bytes).
    pub fn smem_limit(&self) -> u32 {
        self.max_smem.load(Ordering::Relaxed).max(DEFAULT_SMEM)
    }

    /// Give kernels at most `bytes` of dynamic shared memory per block from now on, as a
    /// smaller GPU would (an RTX 4090 or L40S gives 99 KiB): what runs where a kernel's tiles do
    /// not fit can then be tested on a large GPU.
    pub fn cap_smem(&self, bytes: u32) {
        self.max_smem.fetch_min(bytes, Ordering::Relaxed);
    }

    /// The operand type of every matrix product from now on (training, decoding, statistics).
    pub fn set_dtype(&self, dtype: Dtype) {
        self.dtype.store(dtype as u8, Ordering::Relaxed);
    }

    /// The operand type of the matrix products.
    pub fn dtype(&self) -> Dtype {
        match self.dtype.load(Ordering::Relaxed) {
            x if x == Dtype::Tf32 as u8 => Dtype::Tf32,
            x if x == Dtype::Bf16 as u8 => Dtype::Bf16,
            _ => Dtype::F32,
        }
    }

    /// Streaming multiprocessors.
    /// Bytes of device memory.
    pub fn total_mem(&self) -> usize {
        self.total_mem
    }

    pub fn sms(&self) -> u32 {
        self.sms
    }

    /// Wait for the stream.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv("synchronize"))
    }

    fn module(&self, name: &'static str) -> Result<Arc<CudaModule>> {
        let mut mods = self.modules.lock().map_err(|_| Error::device("CUDA module cache", "poisoned"))?;
        if let Some(m) = mods.get(name) {
            return Ok(m.clone());
        }
        let (source, arch) = module_target(name, &self.arch);
        let c = nvrtc::ptx_cached(source, arch)?;
        let ptx = cudarc::nvrtc::Ptx::from_src(String::from_utf8_lossy(&c).into_owned());
        let m = self.ctx.load_module(ptx).map_err(drv("module load"))?;
        mods.insert(name, m.clone());
        Ok(m)
    }

    /// Kernel `entry` of module `module`, allowed `smem` bytes of dynamic shared memory.
    pub(crate) fn function(&self, module: &'static str, entry: &str, smem: u32) -> Result<CudaFunction> {
        let key = format!("{module}/{entry}");
        {
            let fns = self.functions.lock().map_err(|_| Error::device("CUDA kernel cache", "poisoned"))?;
            if let Some((f, allowed)) = fns.get(&key) {
                if smem <= (*allowed).max(DEFAULT_SMEM) {
                    return Ok(f.clone());
                }
            }
        }
        if smem > self.smem_limit() {
            let why = format!(
                "needs {smem} bytes of shared memory per block; {} gives at most {}",
                self.name,
                self.smem_limit()
            );
            return Err(Error::device(format!("CUDA kernel {module}/{entry}"), why));
        }
        let f = self.module(module)?.load_function(entry).map_err(drv("kernel lookup"))?;
        if smem > DEFAULT_SMEM {
            // SAFETY: `f` is a live function of a module loaded in this context (kept in the
            // cache for the life of the process), and the attribute takes a plain int.
            unsafe {
                cudarc::driver::result::function::set_function_attribute(
                    f.cu_function(),
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
            }
            .map_err(drv("shared memory attribute"))?;
        }
        let mut fns = self.functions.lock().map_err(|_| Error::device("CUDA kernel cache", "poisoned"))?;
        fns.insert(key, (f.clone(), smem));
        Ok(f)
    }

    /// Launch `module/entry` on the stream.
    pub(crate) fn launch(
        &self,
        module: &'static str,
        entry: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let f = self.function(module, entry, smem)?;
        let mut b = self.stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::P(x) => b.arg(x),
                Arg::I(x) => b.arg(x),
                Arg::F(x) => b.arg(x),
                Arg::L(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: smem };
        self.profiled(
            || entry.to_string(),
            || {
                // SAFETY: every launch site passes the arguments its kernel's ABI comment lists,
                // with pointers into live buffers of this context large enough for the shapes it
                // passes.
                unsafe { b.launch(cfg) }
                    .map(|_| ())
                    .map_err(|e| Error::device(format!("CUDA launch {module}/{entry}"), format!("{e:?}")))
            },
        )
    }

    /// A device copy of `data` (one zero element when `data` is empty: the driver's stream-ordered
    /// allocator is never asked for zero bytes).
    pub(crate) fn htod<T: DeviceRepr + ValidAsZeroBits>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            return self.alloc(1, "an upload");
        }
        let bytes = std::mem::size_of_val(data);
        pool::retry_after_trim(|| self.stream.clone_htod(data), || self.trim_pool())
            .map_err(|e| self.alloc_failed(e, "an upload", bytes))
    }

    /// `n` zeroed values on the device (at least one: the stream-ordered allocator is never asked
    /// for zero bytes) for `what`. Out of memory is an error naming `what`, its size, the memory the
    /// device has and the settings that need less.
    pub(crate) fn alloc<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize, what: &str) -> Result<CudaSlice<T>> {
        let n = n.max(1);
        pool::retry_after_trim(|| self.stream.alloc_zeros(n), || self.trim_pool())
            .map_err(|e| self.alloc_failed(e, what, n * std::mem::size_of::<T>()))
    }

    /// Wait for the stream (frees queued on it happen), then hand the memory the pool keeps
    /// unused back to the device: what an allocation short of memory does before its last try.
    fn trim_pool(&self) -> Result<()> {
        if let Some(p) = &self.pool {
            self.sync()?;
            p.trim()?;
        }
        Ok(())
    }

    /// What the memory pool keeps of freed buffers, as the driver reports its release threshold
    /// (every byte: keep; none: release); `None` without a stream-ordered pool, when the driver
    /// cannot say, or for another threshold (set by someone else).
    pub fn pool_policy(&self) -> Option<PoolPolicy> {
        match self.pool.as_ref()?.threshold().ok()? {
            u64::MAX => Some(PoolPolicy::Keep),
            0 => Some(PoolPolicy::Release),
            _ => None,
        }
    }

    /// Make the memory pool follow `policy` from now on (for the device, so every `Gpu` of it).
    pub fn set_pool_policy(&self, policy: PoolPolicy) -> Result<()> {
        match &self.pool {
            Some(p) => p.apply(policy),
            None => Err(Error::device("CUDA memory pool", "this driver has no stream-ordered pool")),
        }
    }

    /// Bytes of this process's buffers at their peak since the last call (the pool's high-water
    /// mark of memory in use), starting a new peak; `None` without a stream-ordered pool or when
    /// the driver cannot say.
    pub fn take_peak_bytes(&self) -> Option<u64> {
        let p = self.pool.as_ref()?;
        let peak = p.peak_used().ok()?;
        p.reset_peak().ok()?;
        Some(peak)
    }

    /// The error of an allocation of `bytes` for `what` that failed with `e`.
    pub(crate) fn alloc_failed(&self, e: cudarc::driver::DriverError, what: &str, bytes: usize) -> Error {
        if e.0 != cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return Error::device(format!("CUDA allocation ({what})"), format!("{e:?}"));
        }
        let info = self.ctx.mem_get_info().unwrap_or((0, self.total_mem));
        Error::device("CUDA memory", out_of_memory(what, bytes, info, &self.name))
    }

    /// Device address of a scratch buffer of at least `len` f32 (contents undefined), valid until
    /// the next call; every use is ordered on the one stream.
    pub(crate) fn scratch(&self, len: usize) -> Result<u64> {
        let mut s = self.scratch.lock().map_err(|_| Error::device("CUDA scratch", "poisoned"))?;
        if s.as_ref().is_none_or(|b| b.len() < len) {
            *s = None; // freed first: its memory may serve the larger one
            *s = Some(self.alloc(len, "a column-sum scratch")?);
        }
        let buf = s.as_ref().ok_or_else(|| Error::device("CUDA scratch", "missing"))?;
        let ptr = buf.device_ptr(&self.stream).0;
        Ok(ptr)
    }

    /// The addresses of the reused scratch buffers (0 where none is allocated yet): a captured
    /// decode step bakes them in (`cuda::graphs`).
    pub(crate) fn scratch_addresses(&self) -> [u64; 2] {
        let f = self.scratch.lock().ok().and_then(|s| s.as_ref().map(|b| b.device_ptr(&self.stream).0));
        let h = self.bf16_scratch.lock().ok().and_then(|s| s.as_ref().map(|b| b.device_ptr(&self.stream).0));
        [f.unwrap_or(0), h.unwrap_or(0)]
    }

    /// Device address of a view (for kernel arguments).
    pub(crate) fn pr(&self, v: &CudaView<'_, f32>) -> u64 {
        v.device_ptr(&self.stream).0
    }

    /// Device address of a writable view.
    pub(crate) fn pm(&self, v: &mut CudaViewMut<'_, f32>) -> u64 {
        v.device_ptr_mut(&self.stream).0
    }
}

/// The events of the operations timed since profiling started (`Gpu::profiled` records them,
/// `Gpu::profile_report` reads them back).
#[derive(Default)]
pub struct Profile {
    pub(crate) ops: Vec<(String, cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)>,
}

#[cfg(test)]
mod tests {
    use super::{attn_mma_from_env, module_target, out_of_memory};
    use crate::cuda::plans::AttnMma;

    /// `ARBOR_ATTN_MMA` names the attention's products, or nothing; another value is refused,
    /// naming the variable.
    #[test]
    fn arbor_attn_mma_names_the_attention_products() {
        assert_eq!(attn_mma_from_env(None).unwrap(), None);
        assert_eq!(attn_mma_from_env(Some("")).unwrap(), None);
        assert_eq!(attn_mma_from_env(Some("mma")).unwrap(), Some(AttnMma::Mma));
        assert_eq!(attn_mma_from_env(Some("wgmma")).unwrap(), Some(AttnMma::Wgmma));
        let e = attn_mma_from_env(Some("wgmmma")).unwrap_err().to_string();
        assert!(e.contains("ARBOR_ATTN_MMA") && e.contains("wgmmma"), "{e}");
    }

    /// A module compiles for the device's own architecture; its Hopper variant, the same source,
    /// for compute_90a.
    #[test]
    fn a_module_compiles_for_the_device_architecture_and_its_hopper_variant_for_compute_90a() {
        assert_eq!(module_target("attention_mma", "compute_80"), ("attention_mma", "compute_80"));
        assert_eq!(module_target("attention_mma", "compute_90"), ("attention_mma", "compute_90"));
        assert_eq!(module_target("attention_mma@90a", "compute_90"), ("attention_mma", "compute_90a"));
        assert_eq!(module_target("attention_mma_bwd@90a", "compute_90"), ("attention_mma_bwd", "compute_90a"));
    }

    /// An allocation the GPU could not make names what it was for, its size and what the device
    /// has, in MiB rounded up, and the settings that need less memory.
    #[test]
    fn out_of_memory_says_what_how_much_and_what_to_lower() {
        let gib = 1usize << 30;
        let msg = out_of_memory("the KV cache (lower max_batch)", 3 * gib + 1, (gib / 2, 80 * gib), "NVIDIA H100");
        for part in [
            "NVIDIA H100 is out of memory",
            "the KV cache (lower max_batch) asks for 3073 MiB",
            "512 MiB of its 81920 MiB are free",
            "micro_batch",
            "batch_size",
            "max_batch",
            "dtype = \"bf16\"",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
    }
}
