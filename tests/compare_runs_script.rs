//! scripts/compare_runs.py: the keys it leaves out and how it reads an unfinished metrics line.
//! Skipped (with a note) where `python3` is not installed.

use std::path::Path;
use std::process::{Command, Output};

fn python() -> bool {
    let ok = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("python3 not found: scripts/compare_runs.py not tested");
    }
    ok
}

fn run_dir(root: &Path, name: &str, metrics: &str) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    dir.display().to_string()
}

fn compare(a: &str, b: &str) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compare_runs.py");
    Command::new("python3").arg(script).args([a, b]).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn async_wall_clock_keys_are_left_out() {
    if !python() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let line = |idle: f64, queue: f64, util: f64| {
        format!(
            "{{\"rl_step\":1,\"loss\":0.5,\"staleness_mean\":1.0,\"trainer_idle_frac\":{idle},\"reward_queue_s\":{queue},\"rollout_slot_util\":{util},\"step_s\":{idle}}}\n"
        )
    };
    let a = run_dir(d.path(), "a", &line(0.25, 0.5, 0.75));
    let b = run_dir(d.path(), "b", &line(0.5, 0.125, 0.5));
    let o = compare(&a, &b);
    assert!(o.status.success(), "{}", text(&o));
    // a key that is not about time still counts
    let c = run_dir(d.path(), "c", &line(0.25, 0.5, 0.75).replace("\"loss\":0.5", "\"loss\":0.6"));
    let o = compare(&a, &c);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn an_unfinished_last_line_is_left_out_and_a_bad_middle_line_stops_it() {
    if !python() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let good = "{\"rl_step\":1,\"loss\":0.5}\n{\"rl_step\":2,\"loss\":0.25}\n";
    let a = run_dir(d.path(), "a", good);
    let b = run_dir(d.path(), "b", &format!("{good}{{\"rl_step\":3,\"rew"));
    let o = compare(&a, &b);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("metrics.jsonl:3: the last line is incomplete"), "{}", text(&o));
    let c = run_dir(d.path(), "c", &format!("{{\"rl_step\":1,\"rew\n{good}"));
    let o = compare(&a, &c);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("metrics.jsonl:1: invalid JSON"), "{}", text(&o));
}
