//! Sweeps as job arrays: the partition of points over tasks, the task selection from flags or Slurm
//! variables, pieces and their merge (equal to the one-process sweep; refusals that name the file or
//! point), the `arbor-sim sweep` command line and the sbatch scripts run with a simulated array.

use arbor_sim::pieces::{self, merge, piece_name, Piece};
use arbor_sim::scenario::Scenario;
use arbor_sim::sweep::{select_task, table, task_points, SweepInfo, SweepPoint, SweepSpec, TaskSource};
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

const SCENARIO: &str = "scenarios/rlvr-small.toml";
const GPUS: [u32; 3] = [16, 32, 64];
const ALPHAS: [f64; 3] = [0.0, 1.0, f64::INFINITY];

/// A fresh, empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "arbor-sweep-array-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn scenario() -> Scenario {
    Scenario::load(Path::new(SCENARIO)).unwrap()
}

/// The 3 × 3 sweep of rlvr-small used throughout (9 points, inf among the alphas).
fn spec() -> SweepSpec {
    SweepSpec::new(scenario(), SCENARIO, None, &GPUS, &ALPHAS, 1).unwrap()
}

/// Every point of [`spec`], computed once per test binary.
fn local_points() -> &'static [SweepPoint] {
    static P: OnceLock<Vec<SweepPoint>> = OnceLock::new();
    P.get_or_init(|| {
        let s = spec();
        s.run_points(&(0..s.len()).collect::<Vec<_>>(), |_, _| Ok(())).unwrap()
    })
}

/// A directory holding the pieces of [`spec`] written by `tasks` tasks.
fn pieces_dir(tag: &str, tasks: usize) -> PathBuf {
    let dir = temp_dir(tag);
    let s = spec();
    for t in 0..tasks {
        pieces::run_task(&s, t, tasks, Some(&dir)).unwrap();
    }
    dir
}

fn err_text(r: anyhow::Result<pieces::Merged>) -> String {
    match r {
        Ok(m) => panic!("merge accepted {} pieces, expected a refusal", m.files.len()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn partition_covers_every_point_exactly_once() {
    for points in [0, 1, 2, 3, 5, 9, 10, 17, 64, 101] {
        for tasks in 1..=12 {
            let mut seen = vec![0u32; points];
            let mut loads = Vec::new();
            for task in 0..tasks {
                let mine = task_points(points, task, tasks);
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "task {task}/{tasks}: not increasing: {mine:?}");
                assert!(mine.iter().all(|&i| i % tasks == task), "task {task}/{tasks}: not round-robin: {mine:?}");
                for &i in &mine {
                    seen[i] += 1;
                }
                loads.push(mine.len());
            }
            assert!(seen.iter().all(|&c| c == 1), "points {points}, tasks {tasks}: counts {seen:?}");
            let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            assert!(hi - lo <= 1, "points {points}, tasks {tasks}: loads {loads:?}");
        }
    }
    // No task index outside 0..tasks gets anything (and none of this panics).
    assert!(task_points(9, 3, 3).is_empty());
    assert!(task_points(9, 0, 0).is_empty());
}

#[test]
fn task_selection_flags_then_slurm_variables_then_whole() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        let m: HashMap<&str, &str> = vars.iter().copied().collect();
        move |k: &str| m.get(k).map(|v| v.to_string())
    };
    let array = env(&[("SLURM_ARRAY_TASK_ID", "6"), ("SLURM_ARRAY_TASK_COUNT", "4"), ("SLURM_ARRAY_TASK_MIN", "5")]);
    // Flags win over the environment.
    let s = select_task(Some(2), Some(3), &array).unwrap();
    assert_eq!((s.task, s.tasks, s.source), (2, 3, TaskSource::Flags));
    // --array=5-8: index 6 is task 1 of 4.
    let s = select_task(None, None, &array).unwrap();
    assert_eq!((s.task, s.tasks, s.source), (1, 4, TaskSource::SlurmArray));
    // --array=0-9:3 → indices 0,3,6,9: index 9 is task 3 of 4.
    let stepped = env(&[
        ("SLURM_ARRAY_TASK_ID", "9"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
        ("SLURM_ARRAY_TASK_MIN", "0"),
        ("SLURM_ARRAY_TASK_STEP", "3"),
    ]);
    assert_eq!(select_task(None, None, &stepped).unwrap().task, 3);
    // No variables: the whole sweep.
    let s = select_task(None, None, env(&[])).unwrap();
    assert_eq!((s.task, s.tasks, s.source), (0, 1, TaskSource::Whole));

    let refuse = |task, tasks, e: &dyn Fn(&str) -> Option<String>, want: &[&str]| {
        let msg = format!("{:#}", select_task(task, tasks, e).unwrap_err());
        for w in want {
            assert!(msg.contains(w), "{msg:?} should mention {w:?}");
        }
    };
    let none = env(&[]);
    refuse(Some(1), None, &none, &["--task 1", "--tasks"]);
    refuse(None, Some(3), &none, &["--tasks 3", "--task"]);
    refuse(Some(3), Some(3), &none, &["--task 3", "< --tasks 3"]);
    refuse(Some(0), Some(0), &none, &["--tasks 0"]);
    // A list with gaps (--array=0,2,7: COUNT 3) does not map onto tasks 0..3.
    let gaps = env(&[("SLURM_ARRAY_TASK_ID", "7"), ("SLURM_ARRAY_TASK_COUNT", "3"), ("SLURM_ARRAY_TASK_MIN", "0")]);
    refuse(None, None, &gaps, &["SLURM_ARRAY_TASK_ID = 7", "SLURM_ARRAY_TASK_COUNT = 3", "--task I --tasks N"]);
    let no_count = env(&[("SLURM_ARRAY_TASK_ID", "1")]);
    refuse(None, None, &no_count, &["SLURM_ARRAY_TASK_COUNT"]);
    let junk = env(&[("SLURM_ARRAY_TASK_ID", "x1"), ("SLURM_ARRAY_TASK_COUNT", "3")]);
    refuse(None, None, &junk, &["SLURM_ARRAY_TASK_ID = \"x1\""]);
    let below = env(&[("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_COUNT", "2"), ("SLURM_ARRAY_TASK_MIN", "1")]);
    refuse(None, None, &below, &["SLURM_ARRAY_TASK_MIN = 1"]);
}

#[test]
fn sweep_spec_refuses_bad_grids_naming_the_option() {
    let bad = |policy: Option<&str>, gpus: &[u32], alphas: &[f64], want: &str| {
        let msg = format!("{:#}", SweepSpec::new(scenario(), SCENARIO, policy, gpus, alphas, 1).unwrap_err());
        assert!(msg.contains(want), "{msg:?} should mention {want:?}");
    };
    bad(Some("nope"), &[16], &[0.0], "--policy \"nope\"");
    bad(None, &[0], &[0.0], "--gpus 0");
    bad(None, &[2_000_000], &[0.0], "--gpus 2000000");
    bad(None, &[], &[0.0], "--gpus");
    bad(None, &[16], &[], "--alpha");
    bad(None, &[16], &[-1.0], "--alpha -1");
    bad(None, &[16], &[f64::NAN], "--alpha NaN");
}

#[test]
fn point_results_do_not_depend_on_the_task() {
    let s = spec();
    let local = local_points();
    assert_eq!(local.len(), 9);
    for tasks in [2, 3, 4, 9, 11] {
        let mut got: Vec<Option<SweepPoint>> = vec![None; s.len()];
        for t in 0..tasks {
            let idx = task_points(s.len(), t, tasks);
            let (pts, written) = pieces::run_task(&s, t, tasks, None).unwrap();
            assert!(written.is_empty());
            for (i, p) in idx.into_iter().zip(pts) {
                got[i] = Some(p);
            }
        }
        let got: Vec<SweepPoint> = got.into_iter().map(Option::unwrap).collect();
        assert_eq!(got, local, "{tasks} tasks");
    }
    // Different points really differ (the comparison above is not vacuous).
    assert!(local.windows(2).all(|w| w[0].trace_hash != w[1].trace_hash));
}

#[test]
fn merge_of_three_tasks_equals_the_local_sweep() {
    let dir = pieces_dir("three", 3);
    let m = merge(std::slice::from_ref(&dir)).unwrap();
    assert_eq!(m.files.len(), 9);
    assert_eq!(m.info, spec().info());
    // Bit-exact, inf included.
    let bits = |p: &SweepPoint| {
        [p.alpha, p.step_time_s_mean, p.samples_per_s, p.tokens_per_s, p.staleness_mean, p.inference_busy_fraction]
            .map(f64::to_bits)
    };
    for (a, b) in m.points.iter().zip(local_points()) {
        assert_eq!((a.gpus, bits(a), &a.trace_hash), (b.gpus, bits(b), &b.trace_hash));
    }
    assert_eq!(table(&m.points, false).unwrap(), table(local_points(), false).unwrap());
    assert_eq!(table(&m.points, true).unwrap(), table(local_points(), true).unwrap());
    // Which task wrote a piece is recorded, and follows the partition.
    let p = pieces::read_piece(&dir.join(piece_name(7)), Some(7)).unwrap();
    assert_eq!((p.task, p.tasks), (1, 3));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exact_floats_survive_a_piece() {
    let tricky = [0.1 + 0.2, 5e-324, 2.2250738585072014e-308, f64::MAX, -0.0, 1.0 / 3.0, 123456.789e-300];
    let alphas = [0.0, 0.5, f64::INFINITY];
    let info = SweepInfo {
        scenario: "x".into(),
        scenario_file: "x.toml".into(),
        scenario_hash: "00".into(),
        arbor_sim_version: "0".into(),
        policy: "p".into(),
        gpus: vec![8],
        alpha: alphas.to_vec(),
        seed: 3,
        points: 3,
    };
    for (k, &v) in tricky.iter().enumerate() {
        for (i, &a) in alphas.iter().enumerate() {
            let p = SweepPoint {
                gpus: 8,
                alpha: a,
                step_time_s_mean: v,
                samples_per_s: -v,
                tokens_per_s: f64::NEG_INFINITY,
                staleness_mean: f64::NAN,
                inference_busy_fraction: tricky[(k + 1) % tricky.len()],
                trace_hash: format!("{k}"),
            };
            let json = Piece::new(&info, i, 0, 1, &p).to_json().unwrap();
            let back = SweepPoint::from(&Piece::from_bytes(json.as_bytes(), Some(i)).unwrap().result);
            assert_eq!(back.alpha.to_bits(), a.to_bits(), "{json}");
            assert_eq!(back.step_time_s_mean.to_bits(), v.to_bits(), "{json}");
            assert_eq!(back.samples_per_s.to_bits(), (-v).to_bits(), "{json}");
            assert_eq!(back.tokens_per_s, f64::NEG_INFINITY);
            assert!(back.staleness_mean.is_nan());
            assert_eq!(back.inference_busy_fraction.to_bits(), p.inference_busy_fraction.to_bits());
        }
    }
}

#[test]
fn merge_refuses_missing_pieces_naming_points_and_tasks() {
    let dir = pieces_dir("missing", 3);
    std::fs::remove_file(dir.join(piece_name(4))).unwrap();
    std::fs::remove_file(dir.join(piece_name(5))).unwrap();
    let msg = err_text(merge(std::slice::from_ref(&dir)));
    for want in ["2 of 9 points missing: 4-5", "4: gpus=32 alpha=1", "5: gpus=32 alpha=inf", "task(s) 1-2", "TASKS=3"] {
        assert!(msg.contains(want), "{msg:?} should mention {want:?}");
    }
    // A task killed while writing point 4 leaves only a hidden temporary file: still "missing", and
    // the message points at the leftover; with the piece present the leftover is ignored.
    let tmp = dir.join(".point-000004.json.tmp-99-1");
    std::fs::write(&tmp, b"{\"format\": \"arbor-sim-sweep-pi").unwrap();
    let msg = err_text(merge(std::slice::from_ref(&dir)));
    assert!(msg.contains("points missing: 4-5") && msg.contains(".point-000004.json.tmp-99-1"), "{msg}");
    pieces::run_task(&spec(), 1, 3, Some(&dir)).unwrap();
    pieces::run_task(&spec(), 2, 3, Some(&dir)).unwrap();
    let m = merge(std::slice::from_ref(&dir)).unwrap();
    assert_eq!(m.temporary, vec![tmp]);
    assert_eq!(m.points, local_points());
    // An empty directory.
    let empty = temp_dir("empty");
    assert!(err_text(merge(std::slice::from_ref(&empty))).contains("no sweep pieces"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn merge_refuses_duplicates_naming_both_files() {
    let dir = pieces_dir("dup", 3);
    // Same point under two names in one directory.
    std::fs::copy(dir.join(piece_name(1)), dir.join("point-1.json")).unwrap();
    let msg = err_text(merge(std::slice::from_ref(&dir)));
    assert!(msg.contains("point 1 (gpus=16, alpha=1)"), "{msg}");
    assert!(msg.contains(&dir.join("point-000001.json").display().to_string()), "{msg}");
    assert!(msg.contains(&dir.join("point-1.json").display().to_string()), "{msg}");
    std::fs::remove_file(dir.join("point-1.json")).unwrap();
    // The same point in two of the merged directories.
    let other = temp_dir("dup-other");
    std::fs::copy(dir.join(piece_name(8)), other.join(piece_name(8))).unwrap();
    let msg = err_text(merge(&[dir.clone(), other.clone()]));
    assert!(msg.contains("point 8 (gpus=64, alpha=inf)"), "{msg}");
    assert!(msg.contains(&other.join(piece_name(8)).display().to_string()), "{msg}");
    // Pieces split over directories merge fine.
    std::fs::rename(dir.join(piece_name(8)), dir.join("moved")).unwrap();
    assert_eq!(merge(&[dir.clone(), other.clone()]).unwrap().points, local_points());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn merge_refuses_pieces_of_another_sweep_naming_the_files() {
    let dir = pieces_dir("mix", 3);
    let ours = std::fs::read(dir.join(piece_name(3))).unwrap();
    // Same grid, other seed.
    let seed2 = SweepSpec::new(scenario(), SCENARIO, None, &GPUS, &ALPHAS, 2).unwrap();
    let foreign = temp_dir("mix-foreign");
    pieces::run_task(&seed2, 0, 3, Some(&foreign)).unwrap();
    std::fs::copy(foreign.join(piece_name(3)), dir.join(piece_name(3))).unwrap();
    let msg = err_text(merge(std::slice::from_ref(&dir)));
    assert!(msg.contains("2 different sweeps"), "{msg}");
    assert!(msg.contains(&format!("fingerprint {}", seed2.info().fingerprint())), "{msg}");
    assert!(msg.contains(&format!("1 piece(s): {}", dir.join(piece_name(3)).display())), "{msg}");
    assert!(msg.contains("seed 2") && msg.contains("seed 1"), "{msg}");
    std::fs::write(dir.join(piece_name(3)), &ours).unwrap();

    // Same name, seed and grid, but the scenario's contents differ (steps = 6).
    let text = std::fs::read_to_string(SCENARIO).unwrap().replace("steps = 8", "steps = 6");
    let edited = Scenario::parse(&text, Path::new("scenarios")).unwrap();
    let other = SweepSpec::new(edited, SCENARIO, None, &GPUS, &ALPHAS, 1).unwrap();
    assert_ne!(other.info().scenario_hash, spec().info().scenario_hash);
    let edited_dir = temp_dir("mix-edited");
    pieces::run_task(&other, 2, 3, Some(&edited_dir)).unwrap();
    std::fs::copy(edited_dir.join(piece_name(5)), dir.join(piece_name(5))).unwrap();
    let msg = err_text(merge(std::slice::from_ref(&dir)));
    assert!(msg.contains(&dir.join(piece_name(5)).display().to_string()), "{msg}");
    assert!(msg.contains(&other.info().fingerprint()), "{msg}");

    // A task refuses to write into a directory holding another sweep's pieces, and leaves them alone.
    let before = std::fs::read(foreign.join(piece_name(0))).unwrap();
    let e = format!("{:#}", pieces::run_task(&spec(), 0, 3, Some(&foreign)).unwrap_err());
    assert!(e.contains(&foreign.join(piece_name(0)).display().to_string()) && e.contains("another sweep"), "{e}");
    assert_eq!(std::fs::read(foreign.join(piece_name(0))).unwrap(), before);
    for d in [dir, foreign, edited_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn merge_refuses_corrupt_pieces_naming_the_file() {
    let dir = pieces_dir("corrupt", 1);
    let path = dir.join(piece_name(2));
    let good = std::fs::read_to_string(&path).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_string(), "not JSON"),
        ("garbage", "\u{0}\u{1}binary".into(), "not JSON"),
        ("empty", String::new(), "not JSON"),
        ("another format", good.replace("arbor-sim-sweep-piece/1", "something/9"), "format = \"something/9\""),
        ("json, not a piece", "[1, 2, 3]".into(), "no \"format\" key"),
        ("edited result", good.replace("\"trace_hash\": \"", "\"trace_hash\": \"0"), "checksum"),
        ("edited sweep", good.replace("\"seed\": 1", "\"seed\": 7"), "fingerprint"),
        ("wrong index", good.replace("\"index\": 2", "\"index\": 1"), "file name is for point 2"),
        ("unknown key", good.replacen('{', "{\"extra\": 1,", 1), "unknown field `extra`"),
        ("bad float", good.replace("\"alpha\": \"inf\"", "\"alpha\": \"infinity\""), "\"infinity\""),
        ("bad task", good.replace("\"tasks\": 1", "\"tasks\": 0"), "tasks = 0"),
    ];
    for (what, text, want) in cases {
        assert_ne!(text, good, "{what}: the edit did not apply");
        std::fs::write(&path, &text).unwrap();
        let msg = err_text(merge(std::slice::from_ref(&dir)));
        assert!(msg.contains(&path.display().to_string()), "{what}: {msg}");
        assert!(msg.contains(want), "{what}: {msg:?} should mention {want:?}");
    }
    std::fs::write(&path, &good).unwrap();
    // A piece-like name that is not a piece name.
    std::fs::write(dir.join("point-abc.json"), "{}").unwrap();
    let msg = err_text(merge(std::slice::from_ref(&dir)));
    assert!(msg.contains("point-abc.json: not a piece name"), "{msg}");
    std::fs::remove_file(dir.join("point-abc.json")).unwrap();
    assert_eq!(merge(std::slice::from_ref(&dir)).unwrap().points, local_points());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pieces of a 2-point sweep (gpus 16, alpha 0 and 1), bytes by index, computed once.
fn small_pieces() -> &'static [Vec<u8>] {
    static P: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    P.get_or_init(|| {
        let dir = temp_dir("small");
        let s = SweepSpec::new(scenario(), SCENARIO, None, &[16], &[0.0, 1.0], 1).unwrap();
        pieces::run_task(&s, 0, 1, Some(&dir)).unwrap();
        let out = (0..2).map(|i| std::fs::read(dir.join(piece_name(i))).unwrap()).collect();
        let _ = std::fs::remove_dir_all(&dir);
        out
    })
}

fn small_points() -> &'static [SweepPoint] {
    static P: OnceLock<Vec<SweepPoint>> = OnceLock::new();
    P.get_or_init(|| {
        let dir = temp_dir("small-merge");
        for (i, b) in small_pieces().iter().enumerate() {
            std::fs::write(dir.join(piece_name(i)), b).unwrap();
        }
        let m = merge(std::slice::from_ref(&dir)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        m.points
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Arbitrary bytes as piece 0 (next to a valid piece 1): the merge returns an error naming the file,
    /// never panics.
    #[test]
    fn arbitrary_bytes_as_a_piece_never_panic_the_merge(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let dir = temp_dir("prop-bytes");
        std::fs::write(dir.join(piece_name(0)), &bytes).unwrap();
        std::fs::write(dir.join(piece_name(1)), &small_pieces()[1]).unwrap();
        let r = merge(std::slice::from_ref(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        let msg = format!("{:#}", r.expect_err("random bytes were accepted as a piece"));
        prop_assert!(msg.contains("point-000000.json"), "{}", msg);
    }

    /// A valid piece with bytes overwritten and possibly truncated: refused naming the file, or (when the
    /// edit did not change its meaning, e.g. whitespace) merged to exactly the original points.
    #[test]
    fn mutated_pieces_are_refused_or_harmless(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        which in 0usize..2,
    ) {
        let mut bytes = small_pieces()[which].clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len() + 1));
        }
        let dir = temp_dir("prop-mutate");
        for (i, b) in small_pieces().iter().enumerate() {
            std::fs::write(dir.join(piece_name(i)), if i == which { &bytes } else { b }).unwrap();
        }
        let r = merge(std::slice::from_ref(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        match r {
            Ok(m) => prop_assert_eq!(&m.points[..], small_points()),
            Err(e) => {
                let msg = format!("{e:#}");
                prop_assert!(msg.contains(&piece_name(which)), "{}", msg);
            }
        }
    }
}

// ---- the command line ----

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_arbor-sim"));
    for v in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP"] {
        c.env_remove(v);
    }
    c.env("RUST_BACKTRACE", "0");
    c
}

fn run_ok(c: &mut Command) -> Output {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn sweep_args(dir: &Path) -> Vec<String> {
    ["sweep", "--scenario", SCENARIO, "--gpus", "16,32,64", "--alpha", "0,1,inf", "--out"]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.display().to_string()])
        .collect()
}

fn png_ok(path: &Path) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(b.len() > 10_000 && b.starts_with(b"\x89PNG\r\n\x1a\n"), "{}: not a PNG plot", path.display());
}

#[test]
fn cli_three_array_tasks_merged_equal_the_local_sweep() {
    let local = temp_dir("cli-local");
    let arr = temp_dir("cli-array");
    let local_out = run_ok(bin().args(sweep_args(&local)));
    let local_json =
        run_ok(bin().args(["sweep", "--scenario", SCENARIO, "--gpus", "16,32,64", "--alpha", "0,1,inf", "--json"]));
    // Task 0 by flags, task 1 by Slurm variables (--array=5-7), task 2 by flags.
    for t in [0, 2] {
        let o = run_ok(bin().args(sweep_args(&arr)).args(["--task", &t.to_string(), "--tasks", "3"]));
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3, "one piece path per point");
    }
    let o = run_ok(
        bin()
            .args(sweep_args(&arr))
            .env("SLURM_ARRAY_TASK_ID", "6")
            .env("SLURM_ARRAY_TASK_COUNT", "3")
            .env("SLURM_ARRAY_TASK_MIN", "5"),
    );
    let listed = String::from_utf8(o.stdout).unwrap();
    let want: Vec<String> = [1, 4, 7].iter().map(|&i| arr.join(piece_name(i)).display().to_string()).collect();
    assert_eq!(listed.lines().collect::<Vec<_>>(), want);
    assert!(String::from_utf8_lossy(&o.stderr).contains("task 1 of 3 (from SLURM_ARRAY_TASK_*)"));

    let merged = run_ok(bin().args(["sweep", "--merge"]).arg(&arr));
    assert_eq!(String::from_utf8(merged.stdout).unwrap(), String::from_utf8(local_out.stdout.clone()).unwrap());
    let merged_json = run_ok(bin().args(["sweep", "--json", "--merge"]).arg(&arr));
    assert_eq!(merged_json.stdout, local_json.stdout);
    // The same files: sweep.csv is the printed table, sweep.png the same image.
    let csv = std::fs::read(arr.join("sweep.csv")).unwrap();
    assert_eq!(csv, local_out.stdout);
    assert_eq!(csv, std::fs::read(local.join("sweep.csv")).unwrap());
    png_ok(&arr.join("sweep.png"));
    assert_eq!(std::fs::read(arr.join("sweep.png")).unwrap(), std::fs::read(local.join("sweep.png")).unwrap());
    // --out puts the summary elsewhere; the local run's directory merges too.
    let elsewhere = temp_dir("cli-elsewhere");
    run_ok(bin().args(["sweep", "--merge"]).arg(&local).arg("--out").arg(&elsewhere));
    png_ok(&elsewhere.join("sweep.png"));
    assert_eq!(std::fs::read(elsewhere.join("sweep.csv")).unwrap(), local_out.stdout);
    // No half-written files anywhere.
    for d in [&local, &arr] {
        let stray: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }
    for d in [local, arr, elsewhere] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn cli_refusals_name_the_option_or_variable() {
    let fail = |c: &mut Command, want: &str| {
        let o = c.output().unwrap();
        assert!(!o.status.success(), "{c:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{c:?}: {err:?} should mention {want:?}");
    };
    // A split sweep needs a directory for its pieces.
    fail(
        bin()
            .args(["sweep", "--scenario", SCENARIO])
            .env("SLURM_ARRAY_TASK_ID", "1")
            .env("SLURM_ARRAY_TASK_COUNT", "3"),
        "--out DIR is required",
    );
    fail(bin().args(["sweep", "--scenario", SCENARIO, "--task", "1"]), "--tasks");
    fail(bin().args(["sweep", "--scenario", SCENARIO, "--task", "4", "--tasks", "4", "--out", "/tmp/x"]), "--task 4");
    fail(bin().args(["sweep", "--merge", "/tmp", "--gpus", "4"]), "--gpus");
    fail(bin().args(["sweep"]), "--scenario");
    fail(bin().args(["sweep", "--merge", "/nonexistent-arbor-dir"]), "/nonexistent-arbor-dir");
}

#[test]
fn sbatch_scripts_run_as_a_simulated_array_and_merge() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let out = temp_dir("sbatch");
    let local = run_ok(bin().args(["sweep", "--scenario", SCENARIO, "--gpus", "16,32,64", "--alpha", "0,1,inf"]));
    let script = |name: &str| {
        let mut c = Command::new("bash");
        c.arg(root.join("slurm").join(name))
            .env("SLURM_SUBMIT_DIR", &root)
            .env("ARBOR_SIM", env!("CARGO_BIN_EXE_arbor-sim"))
            .env("RUST_BACKTRACE", "0")
            .env_remove("TASKS");
        for v in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP"] {
            c.env_remove(v);
        }
        c
    };
    let args = ["sim/scenarios/rlvr-small.toml", out.to_str().unwrap(), "--gpus", "16,32,64", "--alpha", "0,1,inf"];
    // sbatch --array=0-2 ... : tasks 0 and 2 as Slurm starts them.
    for t in ["0", "2"] {
        let o = run_ok(
            script("sim-sweep.sbatch")
                .args(args)
                .env("SLURM_ARRAY_JOB_ID", "42")
                .env("SLURM_ARRAY_TASK_ID", t)
                .env("SLURM_ARRAY_TASK_COUNT", "3")
                .env("SLURM_ARRAY_TASK_MIN", "0"),
        );
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(&format!("pieces go to {}", out.display())), "{text}");
    }
    // The merge names what is missing ...
    let o = script("sim-sweep-merge.sbatch").arg(&out).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("3 of 9 points missing: 1, 4, 7") && err.contains("sbatch --array=1 with TASKS=3"), "{err}");
    // ... and the rerun of task 1 the way the message says (sbatch --array=1 --export=ALL,TASKS=3).
    run_ok(
        script("sim-sweep.sbatch")
            .args(args)
            .env("TASKS", "3")
            .env("SLURM_ARRAY_TASK_ID", "1")
            .env("SLURM_ARRAY_TASK_COUNT", "1")
            .env("SLURM_ARRAY_TASK_MIN", "1"),
    );
    let o = run_ok(script("sim-sweep-merge.sbatch").arg(&out));
    let text = String::from_utf8(o.stdout).unwrap();
    let local = String::from_utf8(local.stdout).unwrap();
    assert!(text.contains(&local), "merge job output:\n{text}\nlocal table:\n{local}");
    png_ok(&out.join("sweep.png"));
    // Without arguments, or outside an array: a usage error, nothing run.
    let o = script("sim-sweep.sbatch").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = script("sim-sweep.sbatch").args(args).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("SLURM_ARRAY_TASK_ID"));
    let _ = std::fs::remove_dir_all(&out);
}
