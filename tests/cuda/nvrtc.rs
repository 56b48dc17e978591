//! The NVRTC checks, run wherever libnvrtc loads (CI installs it with pip), with or without a
//! GPU: every kernel file compiles for compute_80, compute_90 and compute_90a with no error and
//! no warning, every declared entry is in the PTX, and wgmma is in the tensor-core attention's
//! compute_90a PTX only, whose exponentials flush subnormal results; ptxas assembles the Hopper attention without warnings, serialisation or
//! spills; a module compiles once per process; errors name the file.

use super::gpu_required;
use arbor::cuda::nvrtc;

/// Whether libnvrtc loads; else the test says why it skips (a failure under [`gpu_required`]).
fn nvrtc_here() -> bool {
    if !nvrtc::available() {
        assert!(!gpu_required(), "ARBOR_REQUIRE_GPU=1 but libnvrtc is not on the loader path");
        println!(
            "skipped: libnvrtc not found on the loader path (pip install nvidia-cuda-nvrtc-cu12 and add its lib \
             directory to LD_LIBRARY_PATH; scripts/setup.sh and scripts/test.sh do this)"
        );
    }
    nvrtc::available()
}

#[test]
fn every_kernel_compiles_cleanly_with_nvrtc_for_sm80_and_sm90() {
    if !nvrtc_here() {
        return;
    }
    let (major, minor) = nvrtc::version().expect("NVRTC version");
    let mut compiled = 0;
    // (the compiles on every core: NVRTC takes programs on several threads at once)
    let jobs: Vec<(&str, &str)> = nvrtc::SOURCES
        .iter()
        .flat_map(|(name, _)| ["compute_80", "compute_90", "compute_90a"].map(|arch| (*name, arch)))
        .collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(name, arch)) = jobs.get(i) else { return done };
                        done.push((i, nvrtc::compile_clean(name, arch)));
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a compile thread panicked")).collect()
    });
    results.sort_by_key(|r| r.0);
    for (i, result) in results {
        let (name, arch) = jobs[i];
        let c = result.unwrap_or_else(|e| panic!("{e}"));
        // Hopper's warpgroup products where the architecture allows them (the entries trap
        // elsewhere), and nowhere else
        let wgmma = String::from_utf8_lossy(&c.ptx).matches("wgmma.mma_async").count();
        let want = name.starts_with("attention_mma") && arch == "compute_90a";
        assert_eq!(wgmma > 0, want, "{name} for {arch}: {wgmma} wgmma instructions");
        // the bf16 attention's probabilities take one special-function instruction each (mma.cuh
        // exp2_ftz), not exp2f's three more that keep subnormal results, and P and dS become
        // product operands two values an instruction (pack_bf16_rn), not ten integer instructions
        // a value
        if name.starts_with("attention_mma") {
            let ptx = String::from_utf8_lossy(&c.ptx);
            let (ftz, kept) = (ptx.matches("ex2.approx.ftz.f32").count(), ptx.matches("ex2.approx.f32").count());
            assert!(ftz > 0 && kept == 0, "{name} for {arch}: {ftz} ex2.approx.ftz, {kept} ex2.approx");
            assert!(ptx.contains("cvt.rn.bf16x2.f32"), "{name} for {arch}: no cvt.rn.bf16x2.f32");
        }
        compiled += 1;
    }
    println!("NVRTC {major}.{minor}: {compiled} compiles clean");
    assert_eq!(compiled, 3 * nvrtc::SOURCES.len());
}

/// ptxas (run by NVRTC) assembles the tensor-core attention for Hopper (sm_90a) with no warning,
/// no wgmma it had to serialise and no spill: what the PTX compile check above cannot see. The
/// register counts of its entries are printed.
#[test]
fn the_hopper_attention_assembles_without_warnings_serialisation_or_spills() {
    if !nvrtc_here() {
        return;
    }
    for name in ["attention_mma", "attention_mma_bwd"] {
        let log = nvrtc::ptxas_log(name, "sm_90a").unwrap();
        let mut entries = 0;
        for line in log.lines() {
            let bad = ["warning", "Performance Loss", "serializ"].iter().any(|w| line.contains(w));
            assert!(!bad, "{name} for sm_90a: {line}");
            if let Some(at) = line.find(" bytes spill stores") {
                let stores: u32 = line[..at].rsplit(' ').next().and_then(|x| x.parse().ok()).unwrap();
                assert_eq!(stores, 0, "{name} for sm_90a spills: {line}");
            }
            if line.contains("Compiling entry function") || line.contains("Used ") {
                println!("{}", line.trim_start_matches("ptxas info    : "));
                entries += line.contains("Compiling entry function") as usize;
            }
        }
        assert_eq!(entries, nvrtc::entries(&nvrtc::source(name).unwrap()).len(), "{name}: every entry assembled");
    }
}

/// A module is compiled once per process: every device context (one engine per phase) loads the
/// same cached PTX, equal to a fresh compile.
#[test]
fn ptx_is_compiled_once_per_process() {
    if !nvrtc_here() {
        return;
    }
    let a = nvrtc::ptx_cached("swiglu", "compute_80").unwrap();
    let b = nvrtc::ptx_cached("swiglu", "compute_80").unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b), "the second request is served from the cache");
    assert_eq!(*a, nvrtc::compile("swiglu", "compute_80").unwrap().ptx);
    let c = nvrtc::ptx_cached("swiglu", "compute_90").unwrap();
    assert!(!std::sync::Arc::ptr_eq(&a, &c), "another architecture is another entry");
}

#[test]
fn compile_errors_and_warnings_are_reported_with_the_file_name() {
    if !nvrtc::available() {
        println!("skipped: libnvrtc not found");
        return;
    }
    // `entries` must find every kernel the files declare, including those after __launch_bounds__.
    let src = nvrtc::source("attention_fwd").unwrap();
    let e = nvrtc::entries(&src);
    assert!(e.iter().any(|x| x == "attn_fwd_64_bf16"), "{e:?}");
    let err = nvrtc::compile("no_such_module", "compute_90").err().expect("unknown module");
    assert!(err.to_string().contains("no_such_module"), "{err}");
}
