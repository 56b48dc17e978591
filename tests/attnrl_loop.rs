//! AttnRL and rhythm inside the RL phase, end to end from the shipped warm start: tree sampling
//! branches responses and trains one sequence per leaf, the run is a pure function of the seed,
//! and a resume inside the phase (adaptive-sampling state restored) is bit-identical.

mod common;
use arbor::config::{RunConfig, DEFAULT_CONFIG};
use arbor::train::checkpoint::load_checkpoint;
use arbor::train::job;
use common::metrics_without_clock as metrics;
use std::path::Path;

fn config(out: &Path, extra: &str) -> RunConfig {
    let text = common::small_default() + extra;
    let mut c = RunConfig::parse(&text, Path::new("attnrl.toml")).unwrap();
    c.run.out_dir = out.to_path_buf();
    c
}

const ATTNRL: &str = "\n[attnrl]\nstep_separators = [\"\\n\"]\nfci_step_gap = 1\nmin_branch_distance = 2\n";

#[test]
fn attnrl_trees_train_leaves_and_resume_bit_identically() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = job::run(&config(a.path(), ATTNRL), None, &mut Vec::new()).unwrap();
    let m = metrics(&a.path().join("default"));
    let steps: Vec<&serde_json::Value> = m.iter().filter(|l| l.get("branch_points").is_some()).collect();
    assert_eq!(steps.len(), 4);
    assert!(steps.iter().any(|s| s["branch_points"].as_u64().unwrap() > 0), "nothing was branched: {steps:?}");
    // one training sequence per leaf: more trained sequences than initial responses of kept questions
    assert!(steps.iter().any(|s| s["trained_samples"].as_u64().unwrap() > 0));
    for s in &steps {
        let e = s["effective_sample_ratio"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&e));
    }
    // the compass view of a dumped sample: steps with their FCI, scored by the newest checkpoint
    #[cfg(feature = "hdf5")]
    {
        let dump = a.path().join("default/trajectories.h5");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["inspect", dump.to_str().unwrap(), "--sample", "0", "--fci-step-gap", "1"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("FCI (Δ = 1 steps) scored by") && text.contains("step-4"), "{text}");
        assert!(text.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).count() >= 2, "{text}");
        let bad = std::process::Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["inspect", dump.to_str().unwrap(), "--sample", "100000"])
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&bad.stderr).contains("out of range"));
        // the dump holds the trees: continuations name their parent response and branch token,
        // initial responses carry their steps' FCI, and the trained node advantages are there
        let t = arbor::io::trajectories::read_trajectories(&dump).unwrap();
        let mut continuations = 0;
        for i in 0..t.len() {
            let r = t.record(i).unwrap();
            if r.branch_parent >= 0 {
                continuations += 1;
                assert!(r.branch_token >= 1 && (r.sample_index as i64) > r.branch_parent, "sample {i}");
                assert!(r.fci.iter().all(|x| x.is_nan()), "continuations are not scored");
            } else if !r.response.is_empty() {
                assert!(r.fci.iter().all(|x| x.is_finite() && *x >= 0.0), "sample {i}: {:?}", r.fci);
                assert!(r.step_index.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1), "steps are consecutive");
            }
        }
        assert!(continuations > 0, "no continuation in the dump");
        assert!(t.advantages.iter().any(|&a| a != 0.0), "tree advantages reach the dump");
        assert!(t.waad.iter().all(|x| x.is_nan()), "no rhythm in this run");
    }
    // the same seed gives the same run; a resume after step 2 continues exactly
    job::run(&config(b.path(), ATTNRL), None, &mut Vec::new()).unwrap();
    let ck = b.path().join("default/checkpoints/step-2");
    let st = load_checkpoint(&ck).unwrap().state;
    assert!(st.sampling.is_some_and(|s| s.next_problem > 0), "the sampling state is checkpointed");
    let resumed = job::run(&config(b.path(), ATTNRL), Some(&ck), &mut Vec::new()).unwrap();
    assert_eq!(straight.final_params, resumed.final_params, "AttnRL resume changed the weights");
    assert_eq!(m, metrics(&b.path().join("default")), "AttnRL resume changed the metrics");
}

#[test]
fn the_one_step_off_policy_pipeline_trains_on_stale_prefixes_and_resumes_exactly() {
    let off = ATTNRL.to_string() + "off_policy = true\n";
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = job::run(&config(a.path(), &off), None, &mut Vec::new()).unwrap();
    let m = metrics(&a.path().join("default"));
    let steps: Vec<&serde_json::Value> = m.iter().filter(|l| l.get("branch_points").is_some()).collect();
    assert_eq!(steps.len(), 4);
    // one update per step: on-policy π_old is the current policy (ratio 1, KL 0); off-policy, the
    // original-response tokens keep θ_{m−1}'s log-probs, so from the second step on π_old differs
    job::run(&config(c.path(), ATTNRL), None, &mut Vec::new()).unwrap();
    let on: Vec<f64> = metrics(&c.path().join("default"))
        .iter()
        .filter_map(|l| l.get("branch_points").and(l["approx_kl"].as_f64()))
        .collect();
    assert!(on.iter().all(|&k| k == 0.0), "on-policy KL to π_old: {on:?}");
    let kl: Vec<f64> = steps.iter().map(|s| s["approx_kl"].as_f64().unwrap()).collect();
    // step 1 trains batch 0, generated by θ_0 = the current policy (decode vs forward rounding only)
    assert!(kl[0] < 1e-9, "{kl:?}");
    assert!(kl[1..].iter().any(|&k| k > 1e3 * kl[0].max(1e-12)), "later steps train on θ_(m−1) prefixes: {kl:?}");
    // the last step generates no next batch (nothing would train it): the final checkpoint's
    // pending batch is empty, and the questions drawn are those of the steps; a run extended past
    // it (a changed rl.steps) starts the pipeline afresh
    let last = a.path().join("default/checkpoints/step-4");
    let pending = std::fs::read(last.join("pending-rank0.json")).unwrap();
    assert!(pending.is_empty(), "the last step drew a batch it never trains");
    let drawn = load_checkpoint(&last).unwrap().state.sampling.unwrap().next_problem;
    let trained: u64 = steps.iter().map(|s| s["prompts"].as_f64().unwrap() as u64).sum();
    assert_eq!(drawn, trained, "questions drawn vs trained");
    let x = tempfile::tempdir().unwrap();
    let mut longer = config(x.path(), &off);
    longer.rl.as_mut().unwrap().steps = 5;
    longer.allow_config_change = true;
    job::run(&longer, Some(&last), &mut Vec::new()).unwrap();
    let fifth = metrics(&x.path().join("default")).into_iter().filter(|l| l.get("branch_points").is_some()).count();
    assert_eq!(fifth, 5, "the extended run's steps");
    // π_old of the original responses is taken under the weights that generated them, at
    // temperature 1 (ALGORITHMS.md §4), not from the sampler's tempered log-probs: sampled at T =
    // 0.7, step 1 still starts at ratio 1
    let d = tempfile::tempdir().unwrap();
    let hot = off.clone();
    let mut cfg = config(d.path(), &hot);
    cfg.rl.as_mut().unwrap().temperature = 0.7;
    job::run(&cfg, None, &mut Vec::new()).unwrap();
    let kl0 = metrics(&d.path().join("default"))
        .iter()
        .find_map(|l| l.get("branch_points").and(l["approx_kl"].as_f64()))
        .unwrap();
    assert!(kl0 < 1e-9, "step 1's KL to π_old at T = 0.7: {kl0}");
    // the pending batch (next step's scored initial responses) is checkpointed; a resume continues exactly
    job::run(&config(b.path(), &off), None, &mut Vec::new()).unwrap();
    let ck = b.path().join("default/checkpoints/step-2");
    assert!(ck.join("pending-rank0.json").is_file(), "the pending batch is saved with the checkpoint");
    let resumed = job::run(&config(b.path(), &off), Some(&ck), &mut Vec::new()).unwrap();
    assert_eq!(straight.final_params, resumed.final_params, "off-policy resume changed the weights");
    assert_eq!(m, metrics(&b.path().join("default")), "off-policy resume changed the metrics");
    // a checkpoint of two data-parallel ranks (two pending batches) resumed by one rank would lose
    // the other rank's half of the next batch: refused, naming dp, before the run is touched
    let e = tempfile::tempdir().unwrap();
    let two = e.path().join("default/checkpoints/step-2");
    std::fs::create_dir_all(&two).unwrap();
    for f in std::fs::read_dir(&ck).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, two.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::copy(two.join("pending-rank0.json"), two.join("pending-rank1.json")).unwrap();
    let listing = |d: &Path| std::fs::read_dir(d).unwrap().count();
    let files = listing(&e.path().join("default"));
    let err = job::run(&config(e.path(), &off), Some(&two), &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("pending batch of 2 data-parallel rank(s)") && err.contains("dp = 1"), "{err}");
    assert_eq!(listing(&e.path().join("default")), files, "a refused resume wrote into the run");
}

/// Every continuation in the dump is rewarded as the whole response it completes (its parent's
/// tokens before the branch point, then its own); returns how many continuations there were and
/// how many of them the continuation's own text alone would have graded otherwise.
#[cfg(feature = "hdf5")]
fn continuation_rewards_grade_whole_responses(dump: &Path, cfg: &RunConfig) -> (usize, usize) {
    use arbor::tokenizer::{CharTokenizer, EOS_ID};
    let task = cfg.task(&arbor::tokenizer::TextCodec::default()).unwrap();
    let tok = CharTokenizer::default();
    let t = arbor::io::trajectories::read_trajectories(dump).unwrap();
    let records: Vec<_> = (0..t.len()).map(|i| t.record(i).unwrap()).collect();
    let text = |ids: &[u32]| tok.decode(&ids.iter().copied().filter(|&x| x != EOS_ID).collect::<Vec<u32>>());
    let (mut continuations, mut differ) = (0, 0);
    for r in records.iter().filter(|r| r.branch_parent >= 0) {
        let parent = records
            .iter()
            .find(|p| p.step == r.step && p.prompt_id == r.prompt_id && i64::from(p.sample_index) == r.branch_parent)
            .expect("a continuation's parent is in the dump");
        let problem = task.problem(arbor::tasks::SPLIT_TRAIN, r.prompt_id);
        let mut whole = parent.response[..r.branch_token as usize].to_vec();
        whole.extend_from_slice(r.response);
        assert_eq!(r.reward, task.reward(&problem, &text(&whole)), "step {} prompt {}", r.step, r.prompt_id);
        continuations += 1;
        differ += usize::from(task.reward(&problem, &text(r.response)) != r.reward);
    }
    (continuations, differ)
}

#[test]
fn entropy_branching_and_rhythm_schemes_run() {
    for extra in [
        ATTNRL.replace("[attnrl]\n", "[attnrl]\nbranch_by = \"entropy\"\n"),
        "\n[rhythm]\nscheme = \"coupled\"\nlayers = 2\nfai_min_offset = 2\nfai_max_offset = 16\n".to_string(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &extra);
        let r = job::run(&cfg, None, &mut Vec::new()).unwrap();
        #[cfg(feature = "hdf5")]
        if extra.contains("entropy") {
            // branched inside lines: a continuation's own text is rarely a whole answer
            let dump = dir.path().join("default/trajectories.h5");
            let (continuations, differ) = continuation_rewards_grade_whole_responses(&dump, &cfg);
            assert!(continuations > 0 && differ > 0, "{continuations} continuations, {differ} graded apart");
        }
        let (before, after) = r.rl.unwrap();
        assert!((0.0..=1.0).contains(&before.sampled) && (0.0..=1.0).contains(&after.sampled));
        let m = metrics(&dir.path().join("default"));
        if extra.contains("rhythm") {
            let amp: Vec<f64> = m.iter().filter_map(|l| l.get("rhythm_amplified_frac")?.as_f64()).collect();
            assert_eq!(amp.len(), 4);
            // 0 on a step where every group had equal rewards (nothing trained)
            assert!(amp.iter().all(|&f| (0.0..1.0).contains(&f)), "{amp:?}");
            assert!(amp.iter().any(|&f| f > 0.1), "coupled rhythm amplifies some tokens: {amp:?}");
            #[cfg(feature = "hdf5")]
            {
                let t =
                    arbor::io::trajectories::read_trajectories(&dir.path().join("default/trajectories.h5")).unwrap();
                let finite = t.waad.iter().zip(&t.fai).filter(|(w, f)| w.is_finite() && f.is_finite()).count();
                assert!(finite > 0, "the rhythm's WAAD/FAI reach the dump of the trained samples");
            }
        }
    }
}

#[test]
fn attnrl_without_rl_is_rejected_by_key() {
    let text = arbor::config::ADDITION_CONFIG.to_string() + ATTNRL;
    let e = RunConfig::parse(&text, Path::new("x.toml")).unwrap_err().to_string();
    assert!(e.contains("x.toml") && e.contains("attnrl"), "{e}");
    let bad = DEFAULT_CONFIG.to_string() + "\n[attnrl]\nrho = 2.0\n";
    let e = RunConfig::parse(&bad, Path::new("y.toml")).unwrap_err().to_string();
    assert!(e.contains("attnrl.rho"), "{e}");
}
