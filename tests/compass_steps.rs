//! `arbor inspect DUMP --sample K` (the compass view) splits a sample into the steps its run used and
//! rescores FCI with the run's Δ: the stored `step_index` of a tree run, else the split at the dump
//! config's `[attnrl] step_separators`, and `fci_step_gap` unless a Δ is given; the `[attnrl]`
//! defaults where the dump's config has none.

#[cfg(feature = "hdf5")]
mod with_hdf5 {
    use arbor::cli::compass::print_sample;
    use arbor::io::trajectories::{TrajectoryRecord, TrajectoryWriter};
    use arbor::tokenizer::{CharTokenizer, BOS_ID};
    use std::path::{Path, PathBuf};

    /// A dump of one sample answering "1+2=" with `response`, its tokens in steps `step_index`.
    fn dump(dir: &Path, config: &str, response: &str, step_index: &[u32]) -> PathBuf {
        let tok = CharTokenizer::default();
        let prompt: Vec<u32> = std::iter::once(BOS_ID).chain(tok.encode("1+2=").unwrap()).collect();
        let response = tok.encode(response).unwrap();
        assert_eq!(response.len(), step_index.len());
        let n = response.len();
        let path = dir.join("trajectories.h5");
        let mut w = TrajectoryWriter::create(&path, config).unwrap();
        let (zeros, nan) = (vec![0.0f32; n], vec![f32::NAN; n]);
        w.append(&[TrajectoryRecord {
            step: 1,
            policy_version: 0,
            prompt_id: 0,
            sample_index: 0,
            prompt: &prompt,
            response: &response,
            behav_logp: &zeros,
            logp: &nan,
            advantages: &zeros,
            reward: 1.0,
            branch_parent: -1,
            branch_token: -1,
            step_index,
            fci: &nan,
            waad: &nan,
            fai: &nan,
        }])
        .unwrap();
        path
    }

    /// The compass view of sample 0, scored by the shipped warm start.
    fn view(path: &Path, delta: Option<usize>) -> String {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/warmstart/countdown-sft");
        let mut out = Vec::new();
        print_sample(path, 0, Some(&model), delta, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The text column of the step rows.
    fn steps(view: &str) -> Vec<String> {
        view.lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .map(|l| l.rsplit("  ").next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn a_tree_run_is_shown_in_its_own_steps_with_its_own_gap() {
        let d = tempfile::tempdir().unwrap();
        // the run split "3\n4\n5" after the first "4" (say its separator was "4"), not at the newlines
        let config = "[attnrl]\nstep_separators = [\"4\"]\nfci_step_gap = 2\n";
        let path = dump(d.path(), config, "3\n4\n5", &[0, 0, 0, 1, 1]);
        let v = view(&path, None);
        assert_eq!(steps(&v), ["\"3\\n4\"", "\"\\n5\""], "{v}");
        assert!(v.contains("FCI (Δ = 2 steps) scored by"), "{v}");
        assert!(v.contains("steps: as the run split them (step_index)"), "{v}");
        // a Δ given on the command line wins
        assert!(view(&path, Some(3)).contains("FCI (Δ = 3 steps)"));
    }

    #[test]
    fn a_single_stored_step_is_split_at_the_runs_separators() {
        let d = tempfile::tempdir().unwrap();
        // with separator "5" the run saw one step in "3\n5" (the defaults would see two)
        let path = dump(d.path(), "[attnrl]\nstep_separators = [\"5\"]\n", "3\n5", &[0; 3]);
        let v = view(&path, None);
        assert_eq!(steps(&v), ["\"3\\n5\""], "{v}");
        assert!(v.contains("steps: split at the separators [\"5\"]") && v.contains("FCI (Δ = 4 steps)"), "{v}");
    }

    #[test]
    fn a_run_without_trees_is_split_at_the_default_separators() {
        let d = tempfile::tempdir().unwrap();
        let path = dump(d.path(), "[run]\nseed = 1\n", "3\n4\n5", &[0; 5]);
        let v = view(&path, None);
        assert_eq!(steps(&v), ["\"3\\n\"", "\"4\\n\"", "\"5\""], "{v}");
        assert!(v.contains("FCI (Δ = 4 steps)"), "{v}");
    }
}
