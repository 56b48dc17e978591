//! `scripts/gpu-check.sh` rehearsed on the SIMT host emulator (`GPU_CHECK_REHEARSE=1`): every
//! command of a GPU session (each benchmark with its flags, the Countdown job, the `[async]` job
//! under `arbor launch`, the summary) runs with a tiny model and shapes, so that a flag, a code path
//! or a summary line that would fail on a GPU fails here, before a scarce GPU session spends its
//! minutes on it. The figures are the emulator's and are not looked at; what is checked is that
//! every command ran and wrote what the summary reads.

use super::emulated;
use std::path::Path;
use std::process::Command;

#[test]
fn gpu_check_rehearsal_runs_every_command_on_the_emulator() {
    if !emulated() {
        // (on a GPU, gpu-check.sh is the real thing and never runs this test)
        println!("skipped: the rehearsal of scripts/gpu-check.sh runs on the SIMT host emulator (ARBOR_SIMT=1)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    // the binaries as `gpu-check.sh --build` leaves them: arbor and this test binary
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_arbor"), bin.join("arbor")).unwrap();
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), bin.join("cuda-tests")).unwrap();
    // as a device session runs it: packed (the files in a scratch folder, $OUT gets the archive and
    // the summaries), with a time budget (every command under `timeout`)
    let dest = tmp.path().join("out");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let run = Command::new("bash")
        .arg(root.join("scripts/gpu-check.sh"))
        .arg(&bin)
        .current_dir(root)
        .env("OUT", &dest)
        .env("TMPDIR", &scratch)
        .env("GPU_CHECK_REHEARSE", "1")
        .env("GPU_CHECK_PEERS", "0")
        .env("GPU_CHECK_TESTS_FILTER", "kernels::elementwise")
        .env("ARBOR_REQUIRE_GPU", "1")
        .env("GPU_CHECK_PACK", "1")
        .env("GPU_CHECK_BUDGET_S", "3000")
        .env_remove("GPU_CHECK_PARTS")
        .env_remove("GPU_CHECK_FULL")
        .output()
        .unwrap();
    let out = scratch.join("gpu-check-work");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        s.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect::<String>()
    };
    assert!(
        run.status.success(),
        "gpu-check.sh rehearsal failed ({}):\nfailed.txt:\n{}\nstdout tail:\n{}\nstderr tail:\n{}",
        run.status,
        read("failed.txt"),
        tail(&run.stdout),
        tail(&run.stderr)
    );
    assert_eq!(read("failed.txt"), "", "commands that failed");

    // every command the script ran: its stderr file NAME.err and its JSON line NAME.json
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|f| f.strip_suffix(".err").map(str::to_string))
        .filter(|n| n != "arbor_start" && n != "summary")
        .collect();
    names.sort();
    println!("rehearsed {} benchmark commands: {}", names.len(), names.join(" "));
    // (the script runs 47 arbor benchmarks with the peers off, on an sm_90: the wgmma ones too)
    assert!(names.len() >= 40, "only {} benchmark commands ran: {names:?}", names.len());
    for kind in ["ceilings", "attention_bf16_wgmma", "train_step_bf16", "generate_sampled_0.5b_b256_bf16_graphs"] {
        assert!(names.iter().any(|n| n == kind), "{kind} did not run");
    }
    assert!(names.iter().any(|n| n.starts_with("rl_step")), "no rl-step ran");
    for name in &names {
        let json = read(&format!("{name}.json"));
        let v: serde_json::Value = serde_json::from_str(json.trim())
            .unwrap_or_else(|e| panic!("{name}.json is not one JSON object ({e}): {json:?}"));
        assert_eq!(v["impl"], "arbor-cuda", "{name}.json: {json}");
        let device = v["device"].as_str().unwrap_or_default();
        assert!(device.contains("SIMT host emulator"), "{name}.json ran on {device:?}");
    }

    // the tests part ran its one selected test; the jobs ran to their end
    assert!(read("tests.txt").contains("test result: ok. 1 passed"), "tests.txt:\n{}", read("tests.txt"));
    assert_eq!(read("tests_rc.txt").trim(), "0");
    let countdown = read("countdown_gpu.txt");
    assert!(countdown.contains("held-out solve rate") && !countdown.contains("failed"), "{countdown}");
    let asynchronous = read("async_gpu.txt");
    assert!(asynchronous.contains("exit status: 0"), "{asynchronous}");
    assert!(!read("async_gpu_metrics.jsonl").is_empty(), "the async job wrote no metrics");

    // the summary, the ratios and the markdown row of docs/benchmarks.md read every file
    let summary = read("summary.txt");
    assert!(summary.contains("device: arbor SIMT host emulator (rehearsal"), "{summary}");
    assert!(summary.contains("tests: 1 passed, 0 failed"), "{summary}");
    assert!(!summary.contains("FAILED"), "{summary}");
    for name in &names {
        assert!(summary.contains(&format!("  {name} ")), "summary.txt lacks {name}:\n{summary}");
    }
    assert_eq!(read("summary.err"), "", "gpu_summary.py wrote errors");
    assert!(read("ratios.txt").contains("batch 256"), "ratios.txt:\n{}", read("ratios.txt"));
    let row = read("benchmarks_row.md");
    assert!(row.starts_with("| arbor SIMT host emulator"), "benchmarks_row.md: {row}");
    // what a device session brings back: the archive of every file and the summaries beside it
    for f in ["summary.txt", "ratios.txt", "benchmarks_row.md", "tests.txt", "skipped.txt", "failed.txt"] {
        let brought = std::fs::read_to_string(dest.join(f)).unwrap_or_else(|e| panic!("$OUT/{f}: {e}"));
        assert_eq!(brought, read(f), "$OUT/{f} differs from the run's own");
    }
    let tgz = std::fs::metadata(dest.join("gpu-check.tgz")).expect("$OUT/gpu-check.tgz");
    assert!(tgz.len() > 10_000, "gpu-check.tgz holds {} bytes", tgz.len());
}
