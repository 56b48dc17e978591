//! A writer killed (SIGKILL: no destructor, no HDF5 close) between appends and at random moments
//! inside them: the file stays readable and holds every append that returned.

use crate::with_hdf5::{append, check_h5py_datasets, check_rust_reader, h5py_json, samples, Sample, CONFIG};
use arbor::io::trajectories::{read_summary, TrajectoryWriter};
use std::io::BufRead;
use std::path::Path;
use std::process::Command;

/// Set in the child process that `sigkill_leaves_a_readable_file` starts (this test binary, re-run).
const CHILD_ENV: &str = "ARBOR_TEST_H5_SIGKILL_CHILD";
const CHILD_READY: &str = "arbor-h5-child: appended";

#[test]
fn sigkill_leaves_a_readable_file() {
    let step0 = samples(0, 6, 4);
    let step1 = samples(1, 2, 5);
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        // Child: write two steps, say so, and wait to be killed (exit after a minute if nobody does).
        let mut w = TrajectoryWriter::create(Path::new(&path), CONFIG).unwrap();
        append(&mut w, &step0);
        append(&mut w, &step1);
        println!("{CHILD_READY}");
        std::thread::sleep(std::time::Duration::from_secs(60));
        std::process::exit(3);
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.h5");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash::sigkill_leaves_a_readable_file", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.contains(CHILD_READY) {
            break;
        }
        seen.push(line);
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no HDF5 close
    let status = child.wait().unwrap();
    assert!(!status.success(), "child exited by itself: {status:?}, output {seen:?}");
    assert!(path.exists(), "child never created the file; output {seen:?}");
    let all: Vec<Sample> = step0.iter().chain(&step1).cloned().collect();
    check_h5py_datasets(&h5py_json(&path), &all);
    check_rust_reader(&path, &all);
    // A resumed run can carry on from the killed one.
    let mut w = TrajectoryWriter::resume(&path, 1).unwrap();
    assert_eq!(w.samples(), 6);
    append(&mut w, &step1);
    drop(w);
    check_h5py_datasets(&h5py_json(&path), &all);
}

/// Set in the child process of `kills_inside_appends_leave_every_returned_append_readable`.
const APPENDER_ENV: &str = "ARBOR_TEST_H5_APPENDER";
const APPENDED: &str = "arbor-h5-appender: appended ";
/// Samples per append of the appender: enough for each append to rewrite several chunks of every
/// dataset and take milliseconds, so that most kills land inside one.
const PER_APPEND: usize = 3000;

/// The appender's step `k`.
fn appender_step(k: u64) -> Vec<Sample> {
    samples(k, PER_APPEND, (k % 5) as u32)
}

#[test]
fn kills_inside_appends_leave_every_returned_append_readable() {
    if let Some(path) = std::env::var_os(APPENDER_ENV) {
        // Child: append steps without end, saying after each that it returned (killed by the parent;
        // exits after a minute if nobody does). (libtest may print the test's name on the same line.)
        let mut w = TrajectoryWriter::create(Path::new(&path), CONFIG).unwrap();
        let t0 = std::time::Instant::now();
        for k in 0.. {
            append(&mut w, &appender_step(k));
            println!("{APPENDED}{}", k + 1);
            if t0.elapsed().as_secs() > 60 {
                std::process::exit(3);
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    // Kills at 24 moments spread over the first appends: each leaves a file that opens, whose
    // complete rows are exactly the first appends (all that returned, and perhaps the one cut
    // short if its rows all reached the disk), and that a resumed writer carries on.
    for kill in 0..24u64 {
        let path = dir.path().join(format!("killed-{kill}.h5"));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash::kills_inside_appends_leave_every_returned_append_readable", "--exact", "--nocapture"])
            .arg("--test-threads=1")
            .env(APPENDER_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // after the first append returned: a delay of 0 to 46 ms, another for every kill (an append
        // takes some 30 to 45 ms on a 2-core machine)
        let mut returned = 0u64;
        for line in lines.by_ref() {
            if let Some((_, n)) = line.unwrap().split_once(APPENDED) {
                returned = n.trim().parse().unwrap();
                break;
            }
        }
        assert_eq!(returned, 1, "kill {kill}: the appender never appended");
        std::thread::sleep(std::time::Duration::from_millis(2 * kill));
        child.kill().unwrap();
        child.wait().unwrap();
        for line in lines {
            if let Some((_, n)) = line.unwrap().split_once(APPENDED) {
                returned = n.trim().parse().unwrap();
            }
        }
        let summary = read_summary(&path)
            .unwrap_or_else(|e| panic!("kill {kill} after {returned} appends left an unreadable file: {e}"));
        let rows = summary.samples as usize;
        assert_eq!(rows % PER_APPEND, 0, "kill {kill}: {rows} rows, not whole appends");
        let kept = (rows / PER_APPEND) as u64;
        assert!(kept == returned || kept == returned + 1, "kill {kill}: {kept} appends kept, {returned} returned");
        let want: Vec<Sample> = (0..kept).flat_map(appender_step).collect();
        check_rust_reader(&path, &want);
        // a resumed run carries on: from a checkpoint before the last kept step, written again
        let mut w = TrajectoryWriter::resume(&path, kept - 1).unwrap();
        assert_eq!(w.samples() as usize, (kept as usize - 1) * PER_APPEND, "kill {kill}");
        append(&mut w, &appender_step(kept - 1));
        drop(w);
        assert_eq!(read_summary(&path).unwrap().samples as usize, rows, "kill {kill}");
        println!("kill {kill}: after {returned} returned appends, {kept} in the file");
    }
}
