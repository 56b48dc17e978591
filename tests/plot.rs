//! `arbor plot`: PNGs from a synthetic metrics.jsonl of both phases, and clear errors (exit 1, never a
//! panic) for missing, empty, malformed or unplottable input.

use arbor_sim::plot::{write_png, Rendered};
use std::path::Path;
use std::process::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn arbor_plot(args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_arbor")).arg("plot").args(args).output().expect("run arbor");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A run of 40 supervised steps (eval every 20) then 60 RL steps (eval every 20), as the trainer writes
/// them, plus keys no plot knows and a `null` (NaN) value.
fn synthetic_metrics() -> String {
    let mut s = String::new();
    for step in 0..=40u32 {
        if step > 0 {
            let loss = 4.0 * (-(step as f64) / 10.0).exp() + 0.5;
            s += &format!(
                "{{\"step\":{step},\"loss\":{loss},\"grad_norm\":1.5,\"lr\":0.001,\"tokens\":4096,\"step_s\":0.1}}\n"
            );
        }
        if step % 20 == 0 {
            let nll = 3.0 - step as f64 / 20.0;
            s += &format!("{{\"step\":{step},\"eval_answer_nll\":{nll},\"eval_answer_exact\":0.1}}\n");
        }
    }
    for step in 0..=60u32 {
        if step > 0 {
            let r = 0.2 + 0.01 * step as f64 * if step % 2 == 0 { 1.0 } else { 0.5 };
            let loss = if step == 30 { "null".to_string() } else { format!("{}", 0.01 * (step as f64).sin()) };
            s += &format!(
                "{{\"rl_step\":{step},\"reward_mean\":{r},\"reward_std\":0.4,\"solve_rate\":{r},\
                 \"response_len_mean\":{},\"response_len_max\":{},\"response_clip_ratio\":0.0,\"loss\":{loss},\
                 \"clip_frac\":0.01,\"approx_kl\":0.001,\"entropy\":{},\"grad_norm\":1.0,\"lr\":1e-5,\
                 \"future_key\":[1,2],\"gen_tokens_per_s\":1234.5}}\n",
                20.0 + step as f64 / 10.0,
                30 + step % 5,
                0.5 - step as f64 / 200.0
            );
        }
        if step % 20 == 0 {
            let e = 0.2 + step as f64 / 300.0;
            s += &format!("{{\"rl_step\":{step},\"eval_solve_rate\":{e},\"eval_solve_rate_greedy\":{}}}\n", e + 0.05);
        }
    }
    s
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(path: &Path) -> (u32, u32, usize) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(b.len() > 24, "{}: {} bytes", path.display(), b.len());
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}: not a PNG", path.display());
    assert_eq!(&b[12..16], b"IHDR", "{}", path.display());
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20), b.len())
}

/// Size of an all-white PNG of `w`×`h` from the same encoder.
fn blank_png_len(dir: &Path, (w, h): (u32, u32)) -> usize {
    let path = dir.join(format!("blank-{w}x{h}.png"));
    let r = Rendered { rgb: vec![255; (w * h * 3) as usize], size: (w, h), text: false };
    write_png(&path, &r).unwrap();
    std::fs::metadata(&path).unwrap().len() as usize
}

#[test]
fn writes_every_plot_for_a_two_phase_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("metrics.jsonl"), synthetic_metrics()).unwrap();
    let out = arbor_plot(&[dir.path().to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "text must be drawn: {}", out.stderr);
    let plots = dir.path().join("plots");
    let expected = [
        ("reward.png", (900, 500)),
        ("solve_rate.png", (900, 500)),
        ("length.png", (900, 500)),
        // Two stacked 900×420 panels (supervised, RL); four 600×380 panels on a 2×2 grid.
        ("loss.png", (900, 840)),
        ("rl_stats.png", (1200, 760)),
    ];
    let listed: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(listed.len(), expected.len(), "{}", out.stdout);
    for ((name, size), line) in expected.iter().zip(&listed) {
        let path = plots.join(name);
        assert_eq!(Path::new(line), path, "stdout lists the files written");
        let (w, h, len) = png_size(&path);
        assert_eq!((w, h), *size, "{name}");
        // Lines, text and grids make a plot several times larger than a blank image of its size.
        let blank = blank_png_len(dir.path(), *size);
        assert!(len > 4 * blank, "{name}: {len} bytes, blank {blank}");
    }
}

#[test]
fn supervised_only_run_gets_a_loss_plot_in_the_chosen_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sft: String =
        synthetic_metrics().lines().filter(|l| !l.contains("rl_step")).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("metrics.jsonl"), sft).unwrap();
    let target = dir.path().join("elsewhere/figs");
    let out = arbor_plot(&[dir.path().to_str().unwrap(), "--out", target.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), target.join("loss.png").display().to_string());
    assert_eq!(png_size(&target.join("loss.png")).0, 900);
    assert_eq!(png_size(&target.join("loss.png")).1, 420, "one panel");
    assert!(!target.join("reward.png").exists());
    assert!(!dir.path().join("plots").exists());
}

/// Exit code 1 (not a panic's 101) and a message containing every `needle`.
fn assert_fails(args: &[&str], needles: &[&str]) {
    let out = arbor_plot(args);
    assert_eq!(out.code, 1, "args {args:?}: {}", out.stderr);
    for n in needles {
        assert!(out.stderr.contains(n), "args {args:?}: expected {n:?} in {}", out.stderr);
    }
}

#[test]
fn bad_input_fails_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let metrics = run.join("metrics.jsonl");
    let arg = run.to_str().unwrap();
    let name = metrics.display().to_string();

    assert_fails(&[run.join("absent").to_str().unwrap()], &["absent", "no such run directory"]);
    assert_fails(&[arg], &[&format!("{name}: no such file")]);

    std::fs::write(&metrics, "").unwrap();
    assert_fails(&[arg], &[&format!("{name}: empty")]);

    let mut lines: Vec<String> = synthetic_metrics().lines().take(5).map(String::from).collect();
    lines[2] = "{\"step\": 3, \"loss\": 1.0".into(); // truncated mid-write
    std::fs::write(&metrics, lines.join("\n")).unwrap();
    assert_fails(&[arg], &[&format!("{name}:3: invalid JSON")]);

    std::fs::write(&metrics, "{\"rl_step\":1,\"reward_mean\":0.5}\n{\"rl_step\":2,\"reward_mean\":true}\n").unwrap();
    assert_fails(&[arg], &[&format!("{name}:2: key `reward_mean`: expected a number, found a boolean")]);

    std::fs::write(&metrics, "{\"rl_step\":\"two\",\"reward_mean\":0.5}\n").unwrap();
    assert_fails(&[arg], &[&format!("{name}:1: key `rl_step`")]);

    std::fs::write(&metrics, "{\"run\":\"x\"}\n{\"step\":1,\"lr\":0.1}\n").unwrap();
    assert_fails(&[arg], &[&format!("{name}: no plottable data")]);
    assert!(!run.join("plots").exists(), "nothing is created on error");

    // The file itself is accepted in place of its directory.
    std::fs::write(&metrics, "{\"rl_step\":1,\"reward_mean\":0.5}\n{\"rl_step\":2,\"reward_mean\":0.7}\n").unwrap();
    let out = arbor_plot(&[metrics.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(run.join("plots/reward.png").is_file());
}
