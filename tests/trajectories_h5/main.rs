//! HDF5 trajectory dumps (src/io/trajectories.rs): written by arbor, read back by h5py (the reference reader,
//! through scripts/read_trajectories.py) and by arbor's own reader and `arbor inspect`.
//!
//! The h5py tests need `python3` with h5py; scripts/setup.sh installs it. They fail (not skip) without it.

use std::process::Command;

#[cfg(feature = "hdf5")]
mod crash;

#[cfg(feature = "hdf5")]
mod with_hdf5 {
    use super::*;
    use std::path::Path;
    /// An owned sample, turned into a `TrajectoryRecord` for the writer.
    #[derive(Debug, Clone)]
    pub(super) struct Sample {
        step: u64,
        policy_version: u64,
        prompt_id: u64,
        sample_index: u32,
        prompt: Vec<u32>,
        response: Vec<u32>,
        behav_logp: Vec<f32>,
        logp: Vec<f32>,
        advantages: Vec<f32>,
        reward: f32,
        branch: (i64, i64),
        step_index: Vec<u32>,
        stats: [Vec<f32>; 3],
    }

    /// f32 values a lossy reader or writer would change: NaN payloads, signed zero, infinities, subnormals.
    const ODD_F32: [f32; 8] =
        [f32::NAN, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1e-45, f32::MAX, f32::MIN_POSITIVE, -1.5e-7];

    /// `count` samples of `step`; response lengths are ragged and the second sample's response is empty.
    pub(super) fn samples(step: u64, count: usize, salt: u32) -> Vec<Sample> {
        (0..count)
            .map(|i| {
                let i32_ = i as u32;
                let rlen = if i == 1 { 0 } else { 1 + (i * 3 + salt as usize) % 7 };
                let plen = 2 + (i + salt as usize) % 4;
                let prompt: Vec<u32> = (0..plen as u32).map(|t| salt * 1000 + i32_ * 10 + t).collect();
                let response: Vec<u32> = (0..rlen as u32).map(|t| u32::MAX - salt * 100 - i32_ * 10 - t).collect();
                let f = |t: usize, k: u32| {
                    let j = (t + i + k as usize + salt as usize) % (ODD_F32.len() + 3);
                    if j < ODD_F32.len() {
                        ODD_F32[j]
                    } else {
                        -(t as f32) * 0.37 - k as f32 - salt as f32 * 0.01
                    }
                };
                Sample {
                    step,
                    policy_version: step + 100,
                    prompt_id: (1u64 << 40) + salt as u64 * 7 + i as u64 / 2,
                    sample_index: i32_ % 2 + salt,
                    prompt,
                    behav_logp: (0..rlen).map(|t| f(t, 0)).collect(),
                    // The trainer does not recompute the log-probs of every other sample: NaN there.
                    logp: (0..rlen).map(|t| if i % 2 == 0 { f(t, 1) } else { f32::NAN }).collect(),
                    advantages: (0..rlen).map(|t| f(t, 2)).collect(),
                    reward: if i == 2 { f32::from_bits(0x7fc0_1234) } else { i as f32 * 0.25 - salt as f32 },
                    // every third sample is a continuation branched from sample 0 at a token position
                    branch: if i % 3 == 2 { (0, 1 + i as i64) } else { (-1, -1) },
                    step_index: (0..rlen as u32).map(|t| t / 2).collect(),
                    stats: [
                        (0..rlen).map(|t| f(t, 3)).collect(),
                        (0..rlen).map(|t| f(t, 4)).collect(),
                        (0..rlen).map(|t| f(t, 5)).collect(),
                    ],
                    response,
                }
            })
            .collect()
    }
    use arbor::io::trajectories::{read_summary, read_trajectories, TrajectoryRecord, TrajectoryWriter};
    use serde_json::Value;

    pub(super) const CONFIG: &str = "[run]\nname = \"h5-test\"\nseed = 7\n\n[rl]\ngroup_size = 4 # ünïcode\n";

    impl Sample {
        fn record(&self) -> TrajectoryRecord<'_> {
            TrajectoryRecord {
                step: self.step,
                policy_version: self.policy_version,
                prompt_id: self.prompt_id,
                sample_index: self.sample_index,
                prompt: &self.prompt,
                response: &self.response,
                behav_logp: &self.behav_logp,
                logp: &self.logp,
                advantages: &self.advantages,
                reward: self.reward,
                branch_parent: self.branch.0,
                branch_token: self.branch.1,
                step_index: &self.step_index,
                fci: &self.stats[0],
                waad: &self.stats[1],
                fai: &self.stats[2],
            }
        }
    }

    pub(super) fn append(w: &mut TrajectoryWriter, s: &[Sample]) {
        let recs: Vec<TrajectoryRecord> = s.iter().map(Sample::record).collect();
        w.append(&recs).unwrap();
    }

    fn bits(v: &[f32]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits() as u64).collect()
    }

    /// Expected content of every dataset for `s`, as h5py's JSON gives it (floats as bit patterns).
    fn expected_columns(s: &[Sample]) -> Vec<(&'static str, &'static str, Vec<u64>)> {
        let flat_u32 = |f: fn(&Sample) -> &Vec<u32>| s.iter().flat_map(|x| f(x).iter().map(|&t| t as u64)).collect();
        let flat_f32 = |f: fn(&Sample) -> &Vec<f32>| s.iter().flat_map(|x| bits(f(x))).collect();
        let offsets = |f: fn(&Sample) -> usize| {
            let mut o = vec![0u64];
            for x in s {
                o.push(o[o.len() - 1] + f(x) as u64);
            }
            o
        };
        vec![
            ("step", "uint64", s.iter().map(|x| x.step).collect()),
            ("policy_version", "uint64", s.iter().map(|x| x.policy_version).collect()),
            ("prompt_id", "uint64", s.iter().map(|x| x.prompt_id).collect()),
            ("sample_index", "uint32", s.iter().map(|x| x.sample_index as u64).collect()),
            ("reward", "float32", s.iter().map(|x| x.reward.to_bits() as u64).collect()),
            ("prompt_offsets", "uint64", offsets(|x| x.prompt.len())),
            ("response_offsets", "uint64", offsets(|x| x.response.len())),
            ("prompt_tokens", "uint32", flat_u32(|x| &x.prompt)),
            ("response_tokens", "uint32", flat_u32(|x| &x.response)),
            ("behav_logp", "float32", flat_f32(|x| &x.behav_logp)),
            ("logp", "float32", flat_f32(|x| &x.logp)),
            ("advantages", "float32", flat_f32(|x| &x.advantages)),
            ("branch_parent", "int64", s.iter().map(|x| x.branch.0 as u64).collect()),
            ("branch_token", "int64", s.iter().map(|x| x.branch.1 as u64).collect()),
            ("step_index", "uint32", flat_u32(|x| &x.step_index)),
            ("fci", "float32", flat_f32(|x| &x.stats[0])),
            ("waad", "float32", flat_f32(|x| &x.stats[1])),
            ("fai", "float32", flat_f32(|x| &x.stats[2])),
        ]
    }

    /// Run scripts/read_trajectories.py on `path`; fails with install instructions when h5py is missing.
    pub(super) fn h5py_json(path: &Path) -> Value {
        h5py_json_locking(path, "FALSE")
    }

    /// Same, with the reader's HDF5_USE_FILE_LOCKING set to `locking`.
    fn h5py_json_locking(path: &Path, locking: &str) -> Value {
        let probe = Command::new("python3").args(["-c", "import h5py"]).output();
        match probe {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "python3 cannot import h5py ({}): run scripts/setup.sh, or `apt-get install python3-h5py` \
                 (Debian's python3) or `python3 -m pip install h5py`",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("cannot run python3 ({e}): run scripts/setup.sh to install python3 and h5py"),
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/read_trajectories.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(path)
            .env("HDF5_USE_FILE_LOCKING", locking)
            .output()
            .expect("running python3");
        assert!(
            out.status.success(),
            "read_trajectories.py failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("read_trajectories.py prints JSON")
    }

    /// Check every dataset h5py sees against `s`, and the datasets' storage settings.
    pub(super) fn check_h5py_datasets(json: &Value, s: &[Sample]) {
        let ds = json["datasets"].as_object().unwrap();
        let expected = expected_columns(s);
        assert_eq!(ds.len(), expected.len(), "datasets: {:?}", ds.keys().collect::<Vec<_>>());
        for (name, dtype, values) in expected {
            let d = &ds[name];
            assert_eq!(d["dtype"], dtype, "{name}");
            assert_eq!(d["shape"], serde_json::json!([values.len()]), "{name}");
            assert_eq!(d["maxshape"], serde_json::json!([null]), "{name}: must be resizable without limit");
            assert!(d["chunks"].is_array(), "{name}: must be chunked");
            assert_eq!(d["compression"], "gzip", "{name}");
            assert_eq!(d["shuffle"], true, "{name}");
            // signed columns (-1 = none) compare as their two's-complement bits
            let got: Vec<u64> = d["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().or_else(|| v.as_i64().map(|x| x as u64)).unwrap())
                .collect();
            assert_eq!(got, values, "{name}");
        }
    }

    pub(super) fn check_rust_reader(path: &Path, s: &[Sample]) {
        let t = read_trajectories(path).unwrap();
        assert_eq!(t.len(), s.len());
        for (i, want) in s.iter().enumerate() {
            let got = t.record(i).unwrap();
            assert_eq!(
                (got.step, got.policy_version, got.prompt_id, got.sample_index),
                (want.step, want.policy_version, want.prompt_id, want.sample_index),
                "sample {i}"
            );
            assert_eq!(got.prompt, &want.prompt[..], "sample {i}");
            assert_eq!(got.response, &want.response[..], "sample {i}");
            assert_eq!(bits(got.behav_logp), bits(&want.behav_logp), "sample {i}");
            assert_eq!(bits(got.logp), bits(&want.logp), "sample {i}");
            assert_eq!(bits(got.advantages), bits(&want.advantages), "sample {i}");
            assert_eq!(got.reward.to_bits(), want.reward.to_bits(), "sample {i}");
            assert_eq!((got.branch_parent, got.branch_token), want.branch, "sample {i}");
            assert_eq!(got.step_index, &want.step_index[..], "sample {i}");
            for (g, w) in [(got.fci, &want.stats[0]), (got.waad, &want.stats[1]), (got.fai, &want.stats[2])] {
                assert_eq!(bits(g), bits(w), "sample {i}");
            }
        }
        assert!(t.record(s.len()).is_none());
    }

    #[test]
    fn h5py_reads_back_every_dataset_and_attribute() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trajectories.h5");
        let step0 = samples(0, 4, 0);
        let step1 = samples(1, 3, 1);
        let mut w = TrajectoryWriter::create(&path, CONFIG).unwrap();
        assert_eq!(w.samples(), 0);
        append(&mut w, &step0);
        assert_eq!(w.samples(), 4);
        append(&mut w, &[]);
        append(&mut w, &step1);
        assert_eq!(w.samples(), 7);
        w.set_attribute("tokenizer", "byte-level BPE (test)").unwrap();
        w.set_attribute("tokenizer", "gpt2").unwrap();
        drop(w);

        let all: Vec<Sample> = step0.iter().chain(&step1).cloned().collect();
        assert!(all.iter().any(|s| s.response.is_empty()), "test data must include an empty response");
        let json = h5py_json(&path);
        let attrs = json["attrs"].as_object().unwrap();
        assert_eq!(attrs["format_version"], 2);
        assert_eq!(attrs["arbor_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(attrs["config"], CONFIG);
        assert_eq!(attrs["tokenizer"], "gpt2");
        assert_eq!(attrs.len(), 4, "attributes: {:?}", attrs.keys().collect::<Vec<_>>());
        check_h5py_datasets(&json, &all);
        check_rust_reader(&path, &all);
        let t = read_trajectories(&path).unwrap();
        assert_eq!((t.format_version, t.config.as_str()), (2, CONFIG));
        assert_eq!(t.attributes["tokenizer"], "gpt2");
    }

    #[test]
    fn h5py_reads_the_file_while_the_writer_is_open_and_after_it_is_leaked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.h5");
        let step0 = samples(0, 3, 2);
        let step1 = samples(1, 5, 3);
        let mut w = TrajectoryWriter::create(&path, CONFIG).unwrap();
        append(&mut w, &step0);
        // Still open for writing, in this process and (through h5py) in another one. The writer takes no file
        // lock, so even a reader that locks (HDF5's default) can open the file.
        check_h5py_datasets(&h5py_json_locking(&path, "TRUE"), &step0);
        assert_eq!(read_summary(&path).unwrap().samples, 3);
        append(&mut w, &step1);
        // Never closed: what is on disk is what a crash would leave behind.
        std::mem::forget(w);
        let all: Vec<Sample> = step0.iter().chain(&step1).cloned().collect();
        check_h5py_datasets(&h5py_json(&path), &all);
        check_rust_reader(&path, &all);
    }

    /// Small appends in SWMR mode leave each column's rewritten last chunk behind; `finish`
    /// rewrites the file without that space, the same samples and attributes bit for bit.
    #[test]
    fn finish_compacts_the_space_small_appends_left_and_keeps_every_sample() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small-steps.h5");
        let steps: Vec<Vec<Sample>> = (0..60).map(|k| samples(k, 40, (k % 7) as u32)).collect();
        let mut w = TrajectoryWriter::create(&path, CONFIG).unwrap();
        for s in &steps {
            append(&mut w, s);
        }
        w.set_attribute("tokenizer", "gpt2").unwrap();
        let appended = std::fs::metadata(&path).unwrap().len();
        w.finish().unwrap();
        let compacted = std::fs::metadata(&path).unwrap().len();
        println!("{appended} bytes after 60 appends, {compacted} compacted");
        assert!(compacted * 10 < appended * 7, "{appended} bytes compacted to {compacted}");
        let all: Vec<Sample> = steps.concat();
        check_rust_reader(&path, &all);
        let json = h5py_json(&path);
        check_h5py_datasets(&json, &all);
        let attrs = json["attrs"].as_object().unwrap();
        assert_eq!((attrs["config"].as_str(), attrs["tokenizer"].as_str()), (Some(CONFIG), Some("gpt2")));
        assert_eq!(attrs["arbor_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(attrs.len(), 4, "attributes: {:?}", attrs.keys().collect::<Vec<_>>());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary file was left");
        // a compacted dump is a dump like any other: a resumed run appends to it
        let mut w = TrajectoryWriter::resume(&path, 59).unwrap();
        assert_eq!(w.samples(), 59 * 40);
        append(&mut w, &steps[59]);
        drop(w);
        check_rust_reader(&path, &all);
    }

    #[test]
    fn resume_drops_rows_from_the_first_dropped_step_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resume.h5");
        let steps: Vec<Vec<Sample>> = (0..4).map(|k| samples(k, 3 + k as usize, k as u32)).collect();
        let mut w = TrajectoryWriter::create(&path, CONFIG).unwrap();
        for s in &steps {
            append(&mut w, s);
        }
        w.set_attribute("tokenizer", "gpt2").unwrap();
        drop(w);

        // The checkpoint was taken after step 1: steps 2 and 3 are written again by the resumed run.
        let mut w = TrajectoryWriter::resume(&path, 2).unwrap();
        assert_eq!(w.samples(), (steps[0].len() + steps[1].len()) as u64);
        let redo2 = samples(2, 2, 9);
        append(&mut w, &redo2);
        drop(w);
        let want: Vec<Sample> = steps[0].iter().chain(&steps[1]).chain(&redo2).cloned().collect();
        let json = h5py_json(&path);
        check_h5py_datasets(&json, &want);
        assert_eq!(json["attrs"]["config"], CONFIG);
        assert_eq!(json["attrs"]["tokenizer"], "gpt2");
        check_rust_reader(&path, &want);

        // Resuming past the last step keeps everything; from step 0 drops everything.
        let w = TrajectoryWriter::resume(&path, 1000).unwrap();
        assert_eq!(w.samples(), want.len() as u64);
        drop(w);
        let mut w = TrajectoryWriter::resume(&path, 0).unwrap();
        assert_eq!(w.samples(), 0);
        append(&mut w, &steps[3]);
        drop(w);
        check_h5py_datasets(&h5py_json(&path), &steps[3]);
    }

    #[test]
    fn resume_with_steps_out_of_order_keeps_exactly_the_earlier_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unordered.h5");
        let (a, b, c) = (samples(5, 3, 1), samples(2, 4, 2), samples(7, 2, 3));
        let mut w = TrajectoryWriter::create(&path, CONFIG).unwrap();
        append(&mut w, &a);
        append(&mut w, &b);
        append(&mut w, &c);
        drop(w);
        let mut w = TrajectoryWriter::resume(&path, 5).unwrap();
        assert_eq!(w.samples(), b.len() as u64);
        let d = samples(5, 3, 4);
        append(&mut w, &d);
        drop(w);
        let want: Vec<Sample> = b.iter().chain(&d).cloned().collect();
        check_h5py_datasets(&h5py_json(&path), &want);
        check_rust_reader(&path, &want);
    }

    #[test]
    fn rows_of_an_interrupted_append_are_ignored_and_dropped_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("torn.h5");
        let step0 = samples(0, 3, 1);
        let mut w = TrajectoryWriter::create(&path, CONFIG).unwrap();
        append(&mut w, &step0);
        drop(w);
        // What a crash between two dataset writes of an append leaves: the flat data and `step` already grown,
        // the other columns and the offsets not yet.
        {
            let f = hdf5::File::open_rw(&path).unwrap();
            for name in ["step", "response_tokens", "behav_logp"] {
                let ds = f.dataset(name).unwrap();
                let n = ds.size();
                ds.resize(n + 2).unwrap();
            }
        }
        let s = read_summary(&path).unwrap();
        assert_eq!((s.samples, s.incomplete_rows), (3, 2));
        check_rust_reader(&path, &step0);
        let mut w = TrajectoryWriter::resume(&path, u64::MAX).unwrap();
        assert_eq!(w.samples(), 3);
        let step1 = samples(1, 2, 2);
        append(&mut w, &step1);
        drop(w);
        let want: Vec<Sample> = step0.iter().chain(&step1).cloned().collect();
        check_h5py_datasets(&h5py_json(&path), &want);
    }

    #[test]
    fn per_token_arrays_of_the_wrong_length_are_an_error_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.h5");
        let good = samples(0, 3, 1);
        let mut w = TrajectoryWriter::create(&path, CONFIG).unwrap();
        append(&mut w, &good);
        for field in ["behav_logp", "logp", "advantages"] {
            let mut bad = samples(1, 3, 2);
            let v = match field {
                "behav_logp" => &mut bad[2].behav_logp,
                "logp" => &mut bad[2].logp,
                _ => &mut bad[2].advantages,
            };
            v.push(0.5);
            let recs: Vec<TrajectoryRecord> = bad.iter().map(Sample::record).collect();
            let err = w.append(&recs).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{err}");
            assert!(err.contains("bad.h5"), "{err}");
            assert_eq!(w.samples(), 3, "a rejected append must write nothing");
        }
        // The writer is still usable and the file holds only the good samples plus what came after.
        let more = samples(1, 2, 3);
        append(&mut w, &more);
        drop(w);
        let want: Vec<Sample> = good.iter().chain(&more).cloned().collect();
        check_rust_reader(&path, &want);
        assert!(TrajectoryWriter::create(&path, CONFIG).unwrap().set_attribute("format_version", "2").is_err());
    }

    #[test]
    fn opening_a_missing_or_foreign_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.h5");
        for err in [
            TrajectoryWriter::resume(&missing, 0).err().unwrap().to_string(),
            read_summary(&missing).unwrap_err().to_string(),
        ] {
            assert!(err.contains("missing.h5"), "{err}");
        }
        let text = dir.path().join("text.h5");
        std::fs::write(&text, "not hdf5\n").unwrap();
        let err = read_trajectories(&text).unwrap_err().to_string();
        assert!(err.contains("text.h5") && err.contains("HDF5"), "{err}");

        let foreign = dir.path().join("foreign.h5");
        {
            let f = hdf5::File::create(&foreign).unwrap();
            f.new_attr::<i64>().create("format_version").unwrap().write_scalar(&2i64).unwrap();
            f.new_dataset::<u64>().shape(3).create("step").unwrap();
        }
        for err in [
            read_summary(&foreign).unwrap_err().to_string(),
            TrajectoryWriter::resume(&foreign, 0).err().unwrap().to_string(),
        ] {
            assert!(err.contains("foreign.h5") && err.contains("`policy_version`"), "{err}");
        }
        let wrong_type = dir.path().join("wrong_type.h5");
        drop(TrajectoryWriter::create(&wrong_type, CONFIG).unwrap());
        {
            let f = hdf5::File::open_rw(&wrong_type).unwrap();
            f.unlink("reward").unwrap();
            f.new_dataset::<f64>().shape(0).create("reward").unwrap();
        }
        let err = read_trajectories(&wrong_type).unwrap_err().to_string();
        assert!(err.contains("`reward`") && err.contains("float64") && err.contains("float32"), "{err}");
    }

    fn inspect(path: &Path) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_arbor")).arg("inspect").arg(path).output().unwrap()
    }

    #[test]
    fn arbor_inspect_prints_the_summary_of_a_dump() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trajectories.h5");
        let mut w = TrajectoryWriter::create(&path, CONFIG).unwrap();
        let mut all = Vec::new();
        for k in 0..14u64 {
            let s = samples(k * 10, 3, k as u32);
            append(&mut w, &s);
            all.extend(s);
        }
        w.set_attribute("tokenizer", "gpt2").unwrap();
        drop(w);
        let out = inspect(&path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let resp: usize = all.iter().map(|s| s.response.len()).sum();
        let prompt: usize = all.iter().map(|s| s.prompt.len()).sum();
        let max_len = all.iter().map(|s| s.response.len()).max().unwrap();
        for want in [
            "format 2".to_string(),
            format!("arbor {}", env!("CARGO_PKG_VERSION")),
            "tokenizer: gpt2".into(),
            "config: 6 lines".into(),
            "samples: 42\n".into(),
            "steps: 14 (step 0 .. 130)".into(),
            "policy versions: 100 .. 230".into(),
            "  step     40:".into(),
            "... 4 steps not shown".into(),
            "  step    130:".into(),
            format!("max {max_len}\n"),
            format!("tokens: {prompt} prompt, {resp} response"),
            "response_tokens".into(),
            "uint32".into(),
            "deflate(4)".into(),
        ] {
            assert!(stdout.contains(&want), "missing {want:?} in:\n{stdout}");
        }
        assert!(!stdout.contains("  step     50:"), "steps in the middle must be elided:\n{stdout}");

        // `arbor inspect … | head -0`: the reader closes the pipe (here before arbor, which reads
        // the file first, writes anything); arbor ends quietly (it panicked on the write before)
        let mut child = Command::new(env!("CARGO_BIN_EXE_arbor"))
            .arg("inspect")
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    }

    #[test]
    fn arbor_inspect_rejects_non_hdf5_and_foreign_files_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.h5");
        std::fs::write(&text, "hello").unwrap();
        let foreign = dir.path().join("other.hdf5");
        hdf5::File::create(&foreign).unwrap().new_dataset::<f32>().shape(4).create("data").unwrap();
        for (path, what) in [(&text, "HDF5"), (&foreign, "format_version"), (&dir.path().join("none.h5"), "none.h5")] {
            let out = inspect(path);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains(&path.file_name().unwrap().to_string_lossy().to_string()), "{stderr}");
            assert!(stderr.contains(what), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

#[cfg(not(feature = "hdf5"))]
#[test]
fn without_the_hdf5_feature_dumps_are_refused_clearly() {
    use arbor::io::trajectories::{read_summary, TrajectoryWriter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.h5");
    let err = TrajectoryWriter::create(&path, "").err().unwrap().to_string();
    assert!(err.contains("without the `hdf5` feature"), "{err}");
    assert!(read_summary(&path).unwrap_err().to_string().contains("without the `hdf5` feature"));
    let out = Command::new(env!("CARGO_BIN_EXE_arbor")).arg("inspect").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("built without the `hdf5` feature"), "{stderr}");
}
