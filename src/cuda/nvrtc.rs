//! Kernel sources and their run-time compilation by NVRTC.
//!
//! Every `cuda/*.cu` file is embedded in the binary; `common.cuh` is prepended to each, and after it
//! the header a file names on its first line (`// prelude: mma.cuh`, one of [`HEADERS`]); kernel
//! files never `#include`, so NVRTC needs no include path and no CUDA headers. A compile that
//! prints any warning is an error, exactly as in `scripts/nvrtc_check.py`.

use crate::error::{Error, Result};
use std::ffi::CString;

/// cuda/common.cuh.
pub const COMMON: &str = include_str!("../../cuda/common.cuh");

/// The headers a kernel file may name as its prelude (after common.cuh).
pub const HEADERS: &[(&str, &str)] = &[("mma.cuh", include_str!("../../cuda/mma.cuh"))];

/// (module name, source) of every kernel file.
pub const SOURCES: &[(&str, &str)] = &[
    ("adamw", include_str!("../../cuda/adamw.cu")),
    ("attention_bwd", include_str!("../../cuda/attention_bwd.cu")),
    ("attention_fwd", include_str!("../../cuda/attention_fwd.cu")),
    ("attention_mma", include_str!("../../cuda/attention_mma.cu")),
    ("attention_mma_bwd", include_str!("../../cuda/attention_mma_bwd.cu")),
    ("attn_stats", include_str!("../../cuda/attn_stats.cu")),
    ("decode_attention", include_str!("../../cuda/decode_attention.cu")),
    ("elementwise", include_str!("../../cuda/elementwise.cu")),
    ("embedding", include_str!("../../cuda/embedding.cu")),
    ("grad_norm", include_str!("../../cuda/grad_norm.cu")),
    ("logprob", include_str!("../../cuda/logprob.cu")),
    ("rmsnorm", include_str!("../../cuda/rmsnorm.cu")),
    ("rope", include_str!("../../cuda/rope.cu")),
    ("sample", include_str!("../../cuda/sample.cu")),
    ("swiglu", include_str!("../../cuda/swiglu.cu")),
];

/// The source of module `name`: common.cuh, the prelude header its first line names, then the file.
pub fn source(name: &str) -> Result<String> {
    let (_, body) = SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| Error::device("NVRTC", format!("no CUDA kernel module named {name:?}")))?;
    let prelude = match prelude_of(body) {
        Some(h) => {
            let (_, text) = HEADERS.iter().find(|(n, _)| *n == h).ok_or_else(|| {
                Error::device("NVRTC", format!("cuda/{name}.cu names the prelude {h:?}, which is not in cuda/"))
            })?;
            format!("#line 1 \"{h}\"\n{text}\n")
        }
        None => String::new(),
    };
    Ok(format!("{COMMON}\n{prelude}#line 1 \"{name}.cu\"\n{body}"))
}

/// The header a kernel file's first line names (`// prelude: NAME`), if any.
pub fn prelude_of(body: &str) -> Option<&str> {
    body.lines().next()?.trim().strip_prefix("// prelude:").map(str::trim)
}

/// The `extern "C" __global__` entry names a source declares.
pub fn entries(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in src.match_indices("extern \"C\"") {
        let rest = src[i + 10..].trim_start();
        let Some(rest) = rest.strip_prefix("__global__") else { continue };
        let Some(after) = rest.trim_start().strip_prefix("void") else { continue };
        let mut after = after.trim_start();
        if let Some(bounds) = after.strip_prefix("__launch_bounds__") {
            let Some(close) = bounds.find(')') else { continue };
            after = bounds[close + 1..].trim_start();
        }
        let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

/// Whether an NVRTC library can be loaded (it is looked up on the loader path at run time).
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version (major, minor).
pub fn version() -> Result<(i32, i32)> {
    if !available() {
        return Err(no_nvrtc());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above) and the call only writes two ints through
    // pointers to these locals.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::device("nvrtcVersion", format!("{e:?}")))?;
    Ok((major, minor))
}

fn no_nvrtc() -> Error {
    Error::device(
        "NVRTC",
        "libnvrtc.so was not found on the loader path; install the CUDA toolkit or \
         `pip install nvidia-cuda-nvrtc-cu12` and add its lib directory to LD_LIBRARY_PATH",
    )
}

/// A compiled module: its PTX text and the compiler's log (empty when clean).
pub struct Compiled {
    pub ptx: Vec<u8>,
    pub log: String,
}

/// The PTX of module `name` for `arch`, compiled once per process (every device context of the
/// process, e.g. one engine per training phase, loads the same text; NVRTC takes about a second
/// per file, loading the PTX far less).
pub fn ptx_cached(name: &str, arch: &str) -> Result<std::sync::Arc<Vec<u8>>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Cache = Mutex<HashMap<(String, String), Arc<Vec<u8>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (name.to_string(), arch.to_string());
    if let Some(p) = cache.lock().map_err(|_| Error::device("NVRTC cache", "poisoned"))?.get(&key) {
        return Ok(p.clone());
    }
    // compiled outside the lock (another thread may compile the same module: both results agree)
    let ptx = Arc::new(compile(name, arch)?.ptx);
    cache.lock().map_err(|_| Error::device("NVRTC cache", "poisoned"))?.insert(key, ptx.clone());
    Ok(ptx)
}

/// Compile module `name` for virtual architecture `arch` (e.g. "compute_90"). Errors carry the
/// compiler log; a log with warnings is returned in `Compiled::log` (the caller decides).
pub fn compile(name: &str, arch: &str) -> Result<Compiled> {
    if !available() {
        return Err(no_nvrtc());
    }
    use cudarc::nvrtc::result;
    let src = CString::new(source(name)?).map_err(|_| Error::device("NVRTC", format!("{name}.cu holds a NUL byte")))?;
    let cname =
        CString::new(format!("{name}.cu")).map_err(|_| Error::device("NVRTC", format!("bad module name {name:?}")))?;
    let prog = result::create_program(&src, Some(&cname))
        .map_err(|e| Error::device(format!("nvrtcCreateProgram({name})"), format!("{e:?}")))?;
    let opts = [format!("--gpu-architecture={arch}"), "--std=c++17".into(), "-default-device".into()];
    // SAFETY: `prog` is a live program (created above, destroyed only at the end).
    let outcome = unsafe { result::compile_program(prog, &opts) };
    // SAFETY: `prog` is still live; the log is copied into an owned buffer before it is destroyed.
    let log = unsafe { result::get_program_log(prog) }
        .map(|raw| {
            let bytes: Vec<u8> = raw.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            String::from_utf8_lossy(&bytes).trim().to_string()
        })
        .unwrap_or_default();
    let ptx = match outcome {
        // SAFETY: `prog` is live and compiled; the PTX is copied into an owned buffer.
        Ok(()) => unsafe { result::get_ptx(prog) }
            .map(|raw| raw.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect::<Vec<u8>>())
            .map_err(|e| Error::device(format!("nvrtcGetPTX({name})"), format!("{e:?}"))),
        Err(e) => Err(Error::device("NVRTC", format!("failed to compile cuda/{name}.cu for {arch} ({e:?}):\n{log}"))),
    };
    // SAFETY: destroyed once, after its last use.
    let _ = unsafe { result::destroy_program(prog) };
    Ok(Compiled { ptx: ptx?, log })
}

/// Compile module `name` for `arch` and insist on a clean log and on every declared entry being
/// in the PTX, with no entry using local memory (the CI compile check).
pub fn compile_clean(name: &str, arch: &str) -> Result<Compiled> {
    let c = compile(name, arch)?;
    if !c.log.is_empty() {
        return Err(Error::device("NVRTC", format!("cuda/{name}.cu for {arch}: the compiler printed:\n{}", c.log)));
    }
    let ptx = String::from_utf8_lossy(&c.ptx);
    let src = source(name)?;
    for e in entries(&src) {
        if !ptx.contains(&format!(".entry {e}(")) {
            return Err(Error::device("NVRTC", format!("cuda/{name}.cu for {arch}: no .entry {e} in the PTX")));
        }
    }
    // a per-thread array the compiler could not keep in registers lives in (slow) local memory
    for body in ptx.split(".entry ").skip(1) {
        if body.contains("__local_depot") {
            let entry: String = body.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            return Err(Error::device("NVRTC", format!("cuda/{name}.cu for {arch}: {entry} uses local memory")));
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prelude a kernel file names is one of the embedded headers and lands in its source after
    /// common.cuh and before the file; the tensor-core attention files name mma.cuh, the others none.
    #[test]
    fn named_preludes_are_embedded_and_prepended() {
        for (name, body) in SOURCES {
            let src = source(name).unwrap();
            let file_at = src.find(&format!("#line 1 \"{name}.cu\"")).unwrap();
            match prelude_of(body) {
                Some(h) => {
                    let (_, text) = HEADERS.iter().find(|(n, _)| *n == h).expect("an embedded header");
                    let at = src.find(text).expect("the header's text in the source");
                    assert!(COMMON.len() <= at && at < file_at, "{name}: {h} is not between common.cuh and the file");
                }
                None => assert!(!name.starts_with("attention_mma"), "{name} names no prelude"),
            }
        }
        assert_eq!(prelude_of("// prelude: mma.cuh\nint x;"), Some("mma.cuh"));
        assert_eq!(prelude_of("// a comment\n// prelude: mma.cuh"), None);
    }
}
