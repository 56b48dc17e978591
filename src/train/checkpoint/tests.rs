//! Tests of checkpoint files: checksums, incomplete and damaged checkpoints, removals, the
//! trainer state's floats, and commits in the background.

use super::*;

/// Checkpoints of steps 1..=n of a tiny model in `run`, every one kept.
fn saved(run: &Path, n: u64) {
    save_steps(run, 1..=n, 10, None).unwrap();
}

/// Checkpoints of `steps` of a tiny model in `run`, the newest `keep_last` kept, committed by
/// `commit` (or before each save returns); the folders the saves returned.
fn save_steps(
    run: &Path,
    steps: std::ops::RangeInclusive<u64>,
    keep_last: usize,
    commit: Option<&Committer>,
) -> Result<Vec<PathBuf>> {
    save_marked(run, steps, keep_last, commit, &[])
}

/// [`save_steps`], the saves of the steps in `best` marked as the best so far (value: the step).
fn save_marked(
    run: &Path,
    steps: std::ops::RangeInclusive<u64>,
    keep_last: usize,
    commit: Option<&Committer>,
    best: &[u64],
) -> Result<Vec<PathBuf>> {
    let cfg = ModelConfig {
        arch: crate::model::config::Arch::Qwen2,
        hidden_size: 8,
        intermediate_size: 8,
        num_layers: 1,
        num_heads: 2,
        num_kv_heads: 1,
        head_dim: 4,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        vocab_size: 11,
        max_position_embeddings: 16,
        tie_word_embeddings: true,
        qkv_bias: false,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    };
    let params = crate::model::init::init_params(&cfg, 1, 0.02);
    let opt = AdamW::for_layout(crate::train::adamw::AdamWConfig::default(), &params.layout);
    let extra: ExtraFiles = &|_| Ok(());
    let mut dirs = Vec::new();
    for step in steps {
        let mark = best.contains(&step).then(|| Best {
            step,
            rl_step: step,
            metric: "eval_solve_rate".into(),
            value: step as f64,
        });
        let files =
            CheckpointFiles { tokenizer: None, keep_last, extra, run_config: None, commit, best: mark.as_ref() };
        let state = TrainerState { step, seed: 1, adam_t: step, ..TrainerState::default() };
        dirs.push(save_checkpoint(run, &cfg, &params, &opt, &state, &files)?);
    }
    Ok(dirs)
}

/// `[rl] keep_best`: the checkpoint best.json names survives the pruning of older ones until a
/// better one is marked; the file names only a checkpoint of its run, and goes with `None`.
#[test]
fn the_best_checkpoint_outlives_pruning_until_a_better_one() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path();
    let steps = || list_checkpoints(run).unwrap().into_iter().map(|c| c.0).collect::<Vec<_>>();
    let commit = Committer::new();
    save_marked(run, 1..=5, 2, Some(&commit), &[2]).unwrap();
    commit.wait().unwrap();
    assert_eq!(steps(), [2, 4, 5]);
    assert_eq!(read_best(run).map(|b| b.step), Some(2));
    save_marked(run, 6..=6, 2, None, &[6]).unwrap();
    assert_eq!((steps(), read_best(run).map(|b| b.step)), (vec![5, 6], Some(6)));
    save_marked(run, 7..=8, 2, None, &[]).unwrap();
    assert_eq!(steps(), [6, 7, 8], "the best is kept beside the newest two");
    let gone = Best { step: 99, rl_step: 99, metric: "eval_solve_rate".into(), value: 1.0 };
    write_best(run, Some(&gone)).unwrap();
    assert_eq!(read_best(run), None, "a checkpoint not in the run is not named");
    write_best(run, Some(&Best { step: 7, ..gone })).unwrap();
    assert_eq!(read_best(run).map(|b| b.step), Some(7));
    write_best(run, None).unwrap();
    assert!(!run.join("checkpoints").join(BEST_FILE).exists());
}

/// Checkpoints committed in the background: each save waits for the commit before it, a waited
/// commit is in place with its manifest and the oldest pruned, and the same bytes are written
/// as by a save that commits before it returns; a commit's failure is the next wait's error and
/// leaves no temporary folder.
#[test]
fn a_background_commit_is_waited_for_and_its_failure_reported() {
    let t = tempfile::tempdir().unwrap();
    let (bg, fg) = (t.path().join("bg"), t.path().join("fg"));
    let commit = Committer::new();
    let dirs = save_steps(&bg, 1..=3, 2, Some(&commit)).unwrap();
    assert_eq!(commit.wait().unwrap(), Some(dirs[2].clone()));
    assert_eq!(commit.wait().unwrap(), None, "nothing left in flight");
    save_steps(&fg, 1..=3, 2, None).unwrap();
    let steps = |run: &Path| list_checkpoints(run).unwrap().into_iter().map(|c| c.0).collect::<Vec<_>>();
    assert_eq!((steps(&bg), steps(&fg)), (vec![2, 3], vec![2, 3]));
    for name in ["model.safetensors", OPTIMIZER_FILE, STATE_FILE, MANIFEST_FILE] {
        let read = |run: &Path| std::fs::read(run.join("checkpoints/step-3").join(name)).unwrap();
        assert_eq!(read(&bg), read(&fg), "{name}");
    }
    verify_checksums(&dirs[2], &check_complete(&dirs[2]).unwrap()).unwrap();
    // a file where step 4's folder goes: the commit cannot rename over it
    std::fs::write(bg.join("checkpoints/step-4"), b"in the way").unwrap();
    save_steps(&bg, 4..=4, 2, Some(&commit)).unwrap();
    let e = save_steps(&bg, 5..=5, 2, Some(&commit)).unwrap_err().to_string();
    assert!(e.contains("step-4"), "{e}");
    let names: Vec<String> = std::fs::read_dir(bg.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") && !n.ends_with("tmp-removed"))
        .collect();
    assert!(names.is_empty(), "temporary folders left: {names:?}");
    assert_eq!(steps(&bg), vec![2, 3]);
}

/// A file's checksum read a piece at a time is the checksum of its bytes (pieces of 1 MiB: the
/// file spans three, the last one short), of either kind.
#[test]
fn a_file_checksum_read_in_pieces_equals_the_whole_ones() {
    use crate::io::checksum::checksum64;
    let t = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..(5usize << 19) + 7).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let path = t.path().join("f");
    std::fs::write(&path, &bytes).unwrap();
    let n = bytes.len() as u64;
    assert_eq!(file_checksum(&path, Sum::Checksum64).unwrap(), (checksum64(&bytes), n));
    assert_eq!(file_checksum(&path, Sum::Fnv1a64).unwrap(), (fnv1a64(&bytes), n));
    std::fs::write(&path, b"").unwrap();
    assert_eq!(file_checksum(&path, Sum::Checksum64).unwrap(), (checksum64(&[]), 0));
    assert!(file_checksum(&t.path().join("missing"), Sum::Fnv1a64).unwrap_err().to_string().contains("missing"));
}

/// `--resume latest|auto` skips a newest checkpoint whose files a crash left short or missing,
/// or whose bytes were damaged, naming the file; a checkpoint removed part-way (pruned, or replaced by a save of its step)
/// leaves a temporary folder the next start removes, never a `step-N` without its manifest.
#[test]
fn an_incomplete_newest_checkpoint_is_skipped_and_removals_leave_temporaries() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path();
    saved(run, 3);
    let newest = |run: &Path| newest_intact(run).unwrap();
    assert_eq!(newest(run), (Some(run.join("checkpoints/step-3")), vec![]));
    std::fs::write(run.join("checkpoints/step-3/trainer_state.json"), b"{").unwrap();
    std::fs::remove_file(run.join("checkpoints/step-2/optimizer.safetensors")).unwrap();
    let (dir, skipped) = newest(run);
    assert_eq!(dir, Some(run.join("checkpoints/step-1")));
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].contains("step-3") && skipped[0].contains("trainer_state.json"), "{skipped:?}");
    assert!(skipped[1].contains("step-2") && skipped[1].contains("optimizer.safetensors"), "{skipped:?}");
    // a damaged byte at the right size: skipped as corrupt, naming the file
    let w = run.join("checkpoints/step-1/model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    bytes[100] ^= 4;
    std::fs::write(&w, &bytes).unwrap();
    let (dir, skipped) = newest(run);
    assert_eq!(dir, None);
    assert!(skipped[2].contains("step-1: skipped, corrupt") && skipped[2].contains("model.safetensors"), "{skipped:?}");
    // the short file fails the load too, by size before any checksum
    let e = load_checkpoint(&run.join("checkpoints/step-3")).unwrap_err().to_string();
    assert!(e.contains("trainer_state.json") && e.contains("incomplete"), "{e}");
    // a removal goes through a temporary name
    remove_checkpoint_dir(&run.join("checkpoints/step-2")).unwrap();
    assert!(!run.join("checkpoints/step-2").exists() && !run.join("checkpoints/.step-2.tmp-removed").exists());
    // (one a kill interrupted: the renamed folder is left, and the next start removes it)
    std::fs::create_dir_all(run.join("checkpoints/.step-1.tmp-removed")).unwrap();
    assert_eq!(remove_stale_temporaries(run).unwrap(), 1);
    assert_eq!(list_checkpoints(run).unwrap().iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 3]);
}

#[test]
fn the_trainer_states_floats_read_back_bit_for_bit() {
    // solve rates k/300, k/1200 and a running mean: JSON text that a parser which divides by a
    // power of ten after rounding would read one unit in the last place off
    let mut values: Vec<f64> = (0..=300).map(|k| k as f64 / 300.0).collect();
    values.extend((0..=1200).map(|k| k as f64 / 1200.0));
    values.push(0.385_714_285_714_285_73);
    for pair in values.chunks(2) {
        let (a, b) = (pair[0], *pair.last().unwrap());
        let state = TrainerState {
            step: 3,
            seed: 1,
            adam_t: 3,
            rl_eval_before: Some([a, b]),
            rl_eval_before_pass_at_k: Some((4, a)),
            sampling: Some(SamplingState { next_problem: 1, prompts: 2, fci_mean: b, fci_count: 4 }),
            nonfinite_in_a_row: 0,
            data_fingerprint: None,
            rl_best: Some(Best { step: 7, rl_step: 4, metric: "eval_solve_rate".into(), value: a }),
        };
        let text = serde_json::to_string(&state).unwrap();
        let back: TrainerState = serde_json::from_str(&text).unwrap();
        let bits = |s: &TrainerState| {
            let [x, y] = s.rl_eval_before.unwrap();
            let (k, p) = s.rl_eval_before_pass_at_k.unwrap();
            let best = s.rl_best.as_ref().unwrap().value;
            [
                x.to_bits(),
                y.to_bits(),
                s.sampling.unwrap().fci_mean.to_bits(),
                u64::from(k),
                p.to_bits(),
                best.to_bits(),
            ]
        };
        assert_eq!(bits(&back), bits(&state), "{text}");
    }
    // a checkpoint of before the count existed reads as no bad steps in a row
    let old: TrainerState = serde_json::from_str(r#"{"step":2,"seed":1,"adam_t":2}"#).unwrap();
    assert_eq!((old.nonfinite_in_a_row, old.rl_eval_before_pass_at_k, old.rl_best), (0, None, None));
}
