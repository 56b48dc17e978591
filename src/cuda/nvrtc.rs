//! Kernel sources and their run-time compilation by NVRTC.
//!
//! Every `cuda/*.cu` file is embedded in the binary; `common.cuh` is prepended to each, and after it
//! the headers a file names on its first line (`// prelude: mma.cuh wgmma.cuh`, each one of
//! [`HEADERS`], in that order); kernel
//! files never `#include`, so NVRTC needs no include path and no CUDA headers. A compile that
//! prints any warning is an error, exactly as in `scripts/nvrtc_check.py`.

use crate::error::{Error, Result};
use std::ffi::CString;

/// cuda/common.cuh.
pub const COMMON: &str = include_str!("../../cuda/common.cuh");

/// The headers a kernel file may name as its prelude (after common.cuh).
pub const HEADERS: &[(&str, &str)] =
    &[("mma.cuh", include_str!("../../cuda/mma.cuh")), ("wgmma.cuh", include_str!("../../cuda/wgmma.cuh"))];

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
    ("value_head", include_str!("../../cuda/value_head.cu")),
];

/// The source of module `name`: common.cuh, the prelude headers its first line names, then the file.
pub fn source(name: &str) -> Result<String> {
    let (_, body) = SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| Error::device("NVRTC", format!("no CUDA kernel module named {name:?}")))?;
    let mut prelude = String::new();
    for h in prelude_of(body) {
        let (_, text) = HEADERS.iter().find(|(n, _)| *n == h).ok_or_else(|| {
            Error::device("NVRTC", format!("cuda/{name}.cu names the prelude {h:?}, which is not in cuda/"))
        })?;
        prelude.push_str(&format!("#line 1 \"{h}\"\n{text}\n"));
    }
    Ok(format!("{COMMON}\n{prelude}#line 1 \"{name}.cu\"\n{body}"))
}

/// The headers a kernel file's first line names (`// prelude: NAME NAME ...`), in order; none
/// without that line.
pub fn prelude_of(body: &str) -> Vec<&str> {
    let first = body.lines().next().unwrap_or("").trim();
    first.strip_prefix("// prelude:").map_or_else(Vec::new, |names| names.split_whitespace().collect())
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
/// per file, loading the PTX far less), and kept on disk across processes ([`disk_cache_dir`]:
/// a run of benchmarks, each its own process, compiles each file once).
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
    let ptx = Arc::new(ptx_on_disk(disk_cache_dir().as_deref(), name, arch)?);
    cache.lock().map_err(|_| Error::device("NVRTC cache", "poisoned"))?.insert(key, ptx.clone());
    Ok(ptx)
}

/// Where compiled PTX is kept across processes: `$ARBOR_PTX_CACHE` (empty or "off": nowhere),
/// else `$XDG_CACHE_HOME/arbor/ptx`, else `$HOME/.cache/arbor/ptx`.
pub fn disk_cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    match std::env::var("ARBOR_PTX_CACHE") {
        Ok(v) if v.is_empty() || v == "off" => None,
        Ok(v) => Some(PathBuf::from(v)),
        Err(_) => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("arbor").join("ptx")),
    }
}

/// The file in `dir` that holds module `name`'s PTX for `arch`: named by the module, the
/// architecture and a hash of everything the PTX depends on (the full source with its
/// preludes, the architecture, the options and NVRTC's version), so an edited kernel or another
/// NVRTC never reads an old file.
pub fn cache_file(dir: &std::path::Path, name: &str, arch: &str) -> Result<std::path::PathBuf> {
    let (major, minor) = version()?;
    let material = format!("{}\0{arch}\0{}\0nvrtc {major}.{minor}", source(name)?, OPTIONS.join(" "));
    // FNV-1a, 64 bits
    let hash = material.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    Ok(dir.join(format!("{name}-{arch}-{hash:016x}.ptx")))
}

/// Module `name`'s PTX for `arch`: read from its file in `dir` when one is there and holds PTX,
/// else compiled and written there (through a temporary file and a rename, so a reader never sees
/// half a file). A cache that cannot be read or written is passed over: the module compiles.
pub fn ptx_on_disk(dir: Option<&std::path::Path>, name: &str, arch: &str) -> Result<Vec<u8>> {
    let Some(dir) = dir else { return Ok(compile(name, arch)?.ptx) };
    let file = cache_file(dir, name, arch)?;
    if let Ok(ptx) = std::fs::read(&file) {
        if ptx.windows(7).any(|w| w == b".entry ") {
            return Ok(ptx);
        }
    }
    let ptx = compile(name, arch)?.ptx;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, &ptx))
        .and_then(|_| std::fs::rename(&tmp, &file));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(ptx)
}

/// NVRTC's options besides the architecture.
const OPTIONS: [&str; 2] = ["--std=c++17", "-default-device"];

/// The assembler's report on module `name` compiled to machine code for the real architecture `sm`
/// (e.g. "sm_90a"): NVRTC runs ptxas with its resource report on (`-v`). What a PTX compile
/// cannot show is in it: ptxas's warnings, wgmma products it had to serialise, spills.
pub fn ptxas_log(name: &str, sm: &str) -> Result<String> {
    Ok(run(name, sm, &["--ptxas-options=-v"], false)?.log)
}

/// Compile module `name` for virtual architecture `arch` (e.g. "compute_90"). Errors carry the
/// compiler log; a log with warnings is returned in `Compiled::log` (the caller decides).
pub fn compile(name: &str, arch: &str) -> Result<Compiled> {
    run(name, arch, &[], true)
}

/// One NVRTC compile of module `name` for `arch` with `extra` options: the log, and the PTX when
/// `want_ptx` (a real architecture's compile makes machine code instead).
fn run(name: &str, arch: &str, extra: &[&str], want_ptx: bool) -> Result<Compiled> {
    if !available() {
        return Err(no_nvrtc());
    }
    use cudarc::nvrtc::result;
    let src = CString::new(source(name)?).map_err(|_| Error::device("NVRTC", format!("{name}.cu holds a NUL byte")))?;
    let cname =
        CString::new(format!("{name}.cu")).map_err(|_| Error::device("NVRTC", format!("bad module name {name:?}")))?;
    let prog = result::create_program(&src, Some(&cname))
        .map_err(|e| Error::device(format!("nvrtcCreateProgram({name})"), format!("{e:?}")))?;
    let mut opts = vec![format!("--gpu-architecture={arch}")];
    opts.extend(OPTIONS.iter().chain(extra).map(|o| o.to_string()));
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
        Ok(()) if !want_ptx => Ok(Vec::new()),
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

    /// The preludes a kernel file names are embedded headers and land in its source after
    /// common.cuh and before the file, in the order named; the tensor-core attention files name
    /// mma.cuh then wgmma.cuh, the others none.
    #[test]
    fn named_preludes_are_embedded_and_prepended() {
        for (name, body) in SOURCES {
            let src = source(name).unwrap();
            let file_at = src.find(&format!("#line 1 \"{name}.cu\"")).unwrap();
            let mut after = COMMON.len();
            for h in prelude_of(body) {
                let (_, text) = HEADERS.iter().find(|(n, _)| *n == h).expect("an embedded header");
                let at = src.find(text).expect("the header's text in the source");
                assert!(after <= at && at < file_at, "{name}: {h} is not after the headers before it, before the file");
                after = at + text.len();
            }
            let want: &[&str] = if name.starts_with("attention_mma") { &["mma.cuh", "wgmma.cuh"] } else { &[] };
            assert_eq!(prelude_of(body), want, "{name}");
        }
        assert_eq!(prelude_of("// prelude: mma.cuh\nint x;"), ["mma.cuh"]);
        assert_eq!(prelude_of("// prelude:  mma.cuh   wgmma.cuh \nint x;"), ["mma.cuh", "wgmma.cuh"]);
        assert!(prelude_of("// a comment\n// prelude: mma.cuh").is_empty());
    }

    /// The disk cache: a first use compiles and writes the module's file; a second reads it back
    /// (a marked copy comes back as it is); a file without PTX in it is compiled again and
    /// replaced; architectures and modules have files of their own; no temporary file is left;
    /// a directory that cannot be made still gives the compiled PTX.
    #[test]
    fn compiled_ptx_is_kept_on_disk_and_read_back() {
        if !available() {
            println!("skipped: libnvrtc not found on the loader path");
            return;
        }
        use std::fs;
        let dir = std::env::temp_dir().join(format!("arbor-ptx-cache-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (name, arch) = ("rope", "compute_80");
        let fresh = compile(name, arch).unwrap().ptx;
        assert_eq!(ptx_on_disk(Some(&dir), name, arch).unwrap(), fresh);
        let file = cache_file(&dir, name, arch).unwrap();
        assert_eq!(fs::read(&file).unwrap(), fresh, "the compiled PTX is written");
        let mut marked = fresh.clone();
        marked.extend_from_slice(b"\n// read from the disk cache\n");
        fs::write(&file, &marked).unwrap();
        assert_eq!(ptx_on_disk(Some(&dir), name, arch).unwrap(), marked, "the second use reads the file");
        fs::write(&file, b"half a fi").unwrap();
        assert_eq!(ptx_on_disk(Some(&dir), name, arch).unwrap(), fresh);
        assert_eq!(fs::read(&file).unwrap(), fresh, "a file without PTX is replaced");
        assert_ne!(cache_file(&dir, name, "compute_90").unwrap(), file);
        assert_ne!(cache_file(&dir, "swiglu", arch).unwrap(), file);
        let names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| n.ends_with(".ptx")), "left behind: {names:?}");
        let blocked = dir.join("not-a-directory");
        fs::write(&blocked, b"x").unwrap();
        assert_eq!(ptx_on_disk(Some(&blocked), name, arch).unwrap(), fresh);
        assert_eq!(ptx_on_disk(None, name, arch).unwrap(), fresh);
        fs::remove_dir_all(&dir).unwrap();
    }
}
