//! PPO with GAE and AsyPPO's mini-critics (`[critic]`): a critic learns its targets, the
//! uncertainty masks reach the metrics, and a resumed run restores the critics' weights and
//! optimizer state exactly (the uninterrupted run is reproduced bit for bit).

mod common;
use arbor::config::{RunConfig, DEFAULT_CONFIG};
use arbor::model::init::init_params;
use arbor::model::micro_batch::MicroBatch;
use arbor::model::Model;
use arbor::parallel::Local;
use arbor::train::critic::{Critic, CriticConfig, ValueTargets};
use arbor::train::job;
use arbor::train::rl::Sample;
use common::metrics_without_clock as metrics;
use std::path::Path;

/// The default job (Countdown from the shipped warm start, where some answers are right) cut to
/// `rl_steps` short RL steps, with `critics` small critics.
fn config_text(rl_steps: u64, critics: usize) -> String {
    DEFAULT_CONFIG
        .replace(
            "hf_dir = \"configs/warmstart/countdown-sft\"",
            &format!("hf_dir = \"{}/configs/warmstart/countdown-sft\"", env!("CARGO_MANIFEST_DIR")),
        )
        .replace("keep_checkpoints = 2", "keep_checkpoints = 20")
        .replace("steps = 1500", &format!("steps = {rl_steps}"))
        .replace("prompts_per_step = 32", "prompts_per_step = 6")
        .replace("eval_problems = 500", "eval_problems = 8")
        .replace("eval_every = 500", "eval_every = 2")
        + "\n[critic]\ncount = "
        + &critics.to_string()
        + "\nhidden_size = 32\nintermediate_size = 64\nnum_layers = 1\nnum_heads = 2\nnum_kv_heads = 1\nlr = 1e-2\nvalue_clip = 0.5\nwarmup_steps = 1\n"
}

fn config(out: &Path, rl_steps: u64, critics: usize) -> RunConfig {
    let mut c = RunConfig::parse(&config_text(rl_steps, critics), Path::new("critic.toml")).unwrap();
    c.run.out_dir = out.to_path_buf();
    c
}

/// A critic whose heads do not divide its width is refused naming the key, before the run
/// directory is made (its head size was silently rounded down: 100 / 6 gave 16).
#[test]
fn a_critic_whose_heads_do_not_divide_its_width_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(1, 2)
        .replace("hidden_size = 32\n", "hidden_size = 100\n")
        .replace("num_heads = 2\n", "num_heads = 6\n");
    let mut cfg = RunConfig::parse(&text, Path::new("critic.toml")).unwrap();
    cfg.run.out_dir = dir.path().to_path_buf();
    let e = job::run(&cfg, None, &mut Vec::new()).unwrap_err().to_string();
    assert!(e.contains("critic.num_heads") && e.contains("do not divide hidden_size 100"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the run directory was made");
}

#[test]
fn a_critic_fits_its_returns() {
    let cfg = config(Path::new("/tmp"), 1, 1);
    let small = RunConfig::parse(arbor::config::ADDITION_CONFIG, Path::new("a.toml")).unwrap();
    let mc = small.fresh_model(32, 2, Path::new("m")).unwrap();
    let policy = Model::new(mc.clone(), init_params(&mc, 1, 0.02)).unwrap();
    let cc = CriticConfig { count: 1, lr: 3e-3, ..cfg.critic.clone().unwrap() };
    let mut critic = Critic::new(&cc, &policy, 0, 7, 0.02).unwrap();
    let s = Sample {
        prompt: vec![1, 5, 6],
        response: vec![7, 8, 9, 2],
        behav_logp: vec![0.0; 4],
        advantages: vec![0.0; 4],
        reward: 1.0,
    };
    let returns = [0.2f32, 0.4, 0.6, 1.0];
    let loss = |c: &mut Critic| {
        let v = c.values(&[&s]).unwrap();
        v.iter().zip(&returns).map(|(a, b)| 0.5 * ((a - b) as f64).powi(2)).sum::<f64>() / 4.0
    };
    let first = loss(&mut critic);
    let mut reported = Vec::new();
    for _ in 0..200 {
        let old = critic.values(&[&s]).unwrap();
        let targets = ValueTargets { returns: &returns, old: &old, tokens_total: 4.0 };
        reported.push(critic.train(&[&s], targets, 0.0, 3e-3, &Local, 1 << 20).unwrap());
    }
    let last = loss(&mut critic);
    assert!((reported[0] - first).abs() < 1e-6, "the reported loss is 0.5·mean (V − R)²: {} vs {first}", reported[0]);
    assert!(last < 0.05 * first, "the value loss fell from {first} to {last}");
}

/// `rl.micro_batch` (and `rl.micro_batch_tokens`) bound a critic's forwards: values in chunks of
/// samples equal the values of
/// one forward, and an update accumulated over chunks reports the same loss and ends with the same
/// weights, to f32 rounding (the products' blocking follows the rows).
#[test]
fn a_critic_in_micro_batches_matches_one_forward() {
    let cfg = config(Path::new("/tmp"), 1, 1);
    let small = RunConfig::parse(arbor::config::ADDITION_CONFIG, Path::new("a.toml")).unwrap();
    let mc = small.fresh_model(32, 2, Path::new("m")).unwrap();
    let policy = Model::new(mc.clone(), init_params(&mc, 1, 0.02)).unwrap();
    let cc = CriticConfig { count: 1, lr: 3e-3, ..cfg.critic.clone().unwrap() };
    let samples: Vec<Sample> = (0..5u32)
        .map(|i| Sample {
            prompt: vec![1, 5 + i, 6],
            response: (0..2 + i).map(|t| 7 + (t * 3 + i) % 20).collect(),
            behav_logp: vec![0.0; 2 + i as usize],
            advantages: vec![0.0; 2 + i as usize],
            reward: 1.0,
        })
        .collect();
    let refs: Vec<&Sample> = samples.iter().collect();
    let tokens: usize = samples.iter().map(|s| s.response.len()).sum();
    let returns: Vec<f32> = (0..tokens).map(|t| (t % 7) as f32 / 7.0).collect();
    let run = |micro: MicroBatch| {
        let mut critic = Critic::new(&cc, &policy, 0, 7, 0.02).unwrap().with_micro_batch(micro);
        let old = critic.values(&refs).unwrap();
        let targets = ValueTargets { returns: &returns, old: &old, tokens_total: tokens as f64 };
        let loss = critic.train(&refs, targets, 0.5, 3e-3, &Local, 1 << 20).unwrap();
        (old, loss, critic.model.params.data.clone(), critic.head.clone())
    };
    let whole = run(MicroBatch::default());
    assert_eq!(whole.0.len(), tokens);
    let close = common::max_abs_diff;
    // (samples of 5 to 9 positions: a budget of 12 takes two of the short ones, then one at a time)
    for micro in [1.into(), 2.into(), 4.into(), MicroBatch { samples: 0, tokens: 12 }] {
        let (values, loss, params, head) = run(micro);
        assert_eq!(values.len(), tokens);
        let worst = close(&values, &whole.0);
        assert!(worst <= 1e-6, "micro-batch {micro:?}: values differ from one forward's by {worst}");
        assert!(
            (loss - whole.1).abs() <= 1e-9 * whole.1.abs().max(1.0),
            "micro-batch {micro:?}: loss {loss} vs {}",
            whole.1
        );
        let worst = close(&head, &whole.3).max(close(&params, &whole.2));
        assert!(worst <= 1e-6, "micro-batch {micro:?}: weights differ from one forward's update by {worst}");
    }
}

#[test]
fn critic_resume_restores_weights_and_optimizer_state_exactly() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = job::run(&config(a.path(), 4, 2), None, &mut Vec::new()).unwrap();
    job::run(&config(b.path(), 4, 2), None, &mut Vec::new()).unwrap();
    let run_a = a.path().join("default");
    let run_b = b.path().join("default");
    // the AsyPPO metrics are there: at most k = 20 % of tokens masked, h = 20 % excluded; at the
    // first step the fresh critics (value heads at 0) agree on every token, and a tie masks none
    let lines = metrics(&run_a);
    let rl: Vec<_> = lines.iter().filter(|m| m.get("critic_0_value_loss").is_some()).collect();
    assert_eq!(rl.len(), 4);
    for (i, m) in rl.iter().enumerate() {
        for k in ["adv_masked_frac", "entropy_excluded_frac"] {
            let f = m[k].as_f64().unwrap();
            assert!(if i == 0 { f == 0.0 } else { f > 0.15 && f <= 0.2 }, "step {}: {k} = {f}", i + 1);
        }
    }
    // both critics learned something (some answers are right, so returns are not all zero)
    for k in ["critic_0_value_loss", "critic_1_value_loss"] {
        assert!(rl.iter().any(|m| m[k].as_f64().unwrap() > 0.0), "{k} stayed 0");
    }
    assert!(rl.last().unwrap()["critic_sigma_mean"].as_f64().unwrap() > 0.0, "the critics disagree somewhere");
    // resume after RL step 2: critics come back from critic-<m>.safetensors
    let ck = run_b.join("checkpoints/step-2");
    assert!(ck.join("critic-0.safetensors").exists() && ck.join("critic-1.safetensors").exists());
    let resumed = job::run(&config(b.path(), 4, 2), Some(&ck), &mut Vec::new()).unwrap();
    assert_eq!(straight.final_params, resumed.final_params, "policy weights differ after a critic resume");
    assert_eq!(metrics(&run_a), metrics(&run_b), "metrics (value losses included) differ after a resume");
    for m in 0..2 {
        let f = format!("checkpoints/step-4/critic-{m}.safetensors");
        let (x, y) = (std::fs::read(run_a.join(&f)).unwrap(), std::fs::read(run_b.join(&f)).unwrap());
        assert!(x == y, "critic {m}: weights or optimizer state differ after the resume");
    }
    // a checkpoint without the critics' state refuses to resume a [critic] run, naming it: the
    // critics' files are under the checkpoint's manifest
    std::fs::remove_file(ck.join("critic-1.safetensors")).unwrap();
    let err = job::run(&config(b.path(), 4, 2), Some(&ck), &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("critic-1.safetensors"), "{err}");
}

#[test]
fn the_critic_section_is_validated() {
    let bad = |from: &str, to: &str| {
        let text = config_text(2, 2).replace(from, to);
        RunConfig::parse(&text, Path::new("c.toml")).unwrap_err().to_string()
    };
    assert!(bad("count = 2", "count = 0").contains("critic.count"));
    assert!(bad("lr = 1e-2", "lr = -1.0").contains("critic.lr"));
    assert!(bad("warmup_steps = 1", "warmup_steps = 1\ngae_lambda = 1.5").contains("critic.gae_lambda"));
    let e = bad("warmup_steps = 1", "warmup_steps = 1\nmask_low_frac = 0.7\nentropy_exclude_high_frac = 0.5");
    assert!(e.contains("critic.mask_low_frac"), "{e}");
    // dimensions that make no model stop the job before its supervised phase, writing nothing
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2, 2);
    cfg.train.steps = 1_000_000;
    cfg.critic.as_mut().unwrap().num_kv_heads = Some(3);
    let e = arbor::train::job::run(&cfg, None, &mut Vec::new()).unwrap_err().to_string();
    assert!(e.contains("[critic]"), "{e}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing written");
}
