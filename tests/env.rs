//! Multi-turn environments: the guess game played by the runner in sync and env-level async
//! modes, with latency, failures, retries and redundancy; and an RL phase on `[env]`.

use arbor::config::{RunConfig, ADDITION_CONFIG};
use arbor::env::latency::{CallKey, LatencyModel};
use arbor::env::runner::Play;
use arbor::env::{rollout, EnvConfig, EnvMode, EnvRollout};
mod common;

use arbor::io::load_hf_dir;
use arbor::model::Model;
use arbor::rollout::{GenerateConfig, SamplingParams};
use arbor::tokenizer::char::EOS_ID;
use arbor::tokenizer::TextCodec;
use arbor::train::job;
use std::path::Path;

fn model() -> Model {
    let (cfg, params) = load_hf_dir(&common::fixture("qwen2_tiny")).unwrap();
    Model::new(cfg, params).unwrap()
}

fn env(extra: &str) -> EnvConfig {
    let text = format!(
        "kind = \"guess\"\nlow = 1\nhigh = 8\nmax_turns = 3\nstep_latency_ms = {{ kind = \"lognormal\", median = 1.0, sigma = 1.0, max = 8 }}\n{extra}"
    );
    toml::from_str(&text).unwrap()
}

/// The games' settings: seed 11, 4 new tokens a turn, latencies and failures on.
fn settings<'a>(m: &'a Model, codec: &'a TextCodec, ec: &'a EnvConfig, mode: EnvMode) -> Play<'a> {
    Play {
        model: m,
        codec,
        env: ec,
        gen: GenerateConfig {
            sampling: SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 4 },
            stop_tokens: vec![EOS_ID],
            seed: 11,
            step: 1,
            max_batch: 16,
            workload: None,
        },
        seed: 11,
        latent: true,
        mode,
    }
}

fn play(m: &Model, ec: &EnvConfig, mode: EnvMode, games: &[u64], keep: usize, n: u32, extra: u32) -> EnvRollout {
    let codec = TextCodec::default();
    let p = settings(m, &codec, ec, mode);
    let mut cpu = |reqs: &[arbor::rollout::Request], gen: &GenerateConfig| arbor::rollout::generate(m, reqs, gen);
    rollout(&p, &mut cpu, games, keep, n, extra).unwrap()
}

/// Whether the trajectory (game, sample) meets a call that fails on every attempt.
fn doomed(ec: &EnvConfig, game: u64, sample: u32, calls: u32) -> bool {
    let m: LatencyModel = ec.latency();
    (0..calls)
        .any(|call| (0..=ec.max_retries).all(|attempt| m.draw(CallKey { seed: 11, game, sample, call, attempt }).1))
}

#[test]
fn a_turn_that_exactly_fills_the_context_is_played() {
    // BOS and the first observation, then a reply of max_new_tokens: 256 positions, the model's all
    let (m, codec, ec) = (model(), TextCodec::default(), env("failure_rate = 0.0\n"));
    let first = 1 + "Guess my number from 1 to 8.\n".len();
    let mut p = settings(&m, &codec, &ec, EnvMode::Sync);
    p.gen.sampling.max_new_tokens = m.cfg.max_position_embeddings - first;
    let mut cpu = |reqs: &[arbor::rollout::Request], gen: &GenerateConfig| arbor::rollout::generate(&m, reqs, gen);
    let r = rollout(&p, &mut cpu, &[1, 2], 2, 2, 0).unwrap();
    assert_eq!(r.groups.len(), 2);
    for t in r.groups.iter().flatten() {
        assert!(!t.turns.is_empty(), "game {} sample {}: the first turn fits the context", t.game, t.sample);
        assert_eq!(t.turns[0].prompt.len(), first);
    }
}

#[test]
fn sync_and_env_async_play_the_same_games() {
    let m = model();
    let ec = env("failure_rate = 0.2\nmax_retries = 1");
    let games: Vec<u64> = (0..6).collect();
    let a = play(&m, &ec, EnvMode::Sync, &games, 6, 3, 0);
    let b = play(&m, &ec, EnvMode::Async, &games, 6, 3, 0);
    assert_eq!(a.groups, b.groups, "the mode changes timing only");
    // a closed group records nothing more, so its counters do not depend on when its other
    // trajectories learn of the abort: one recorded failure per failed group, whatever the mode
    assert_eq!(a.failed_groups, b.failed_groups);
    assert_eq!((a.failed_trajectories, a.retries), (b.failed_trajectories, b.retries), "counters are timing-free");
    assert_eq!(a.failed_trajectories, a.failed_groups);
    // the retries are those of the kept trajectories, recomputed from the seeded failure draws
    let lm: LatencyModel = ec.latency();
    let expect: usize = (a.groups.iter().flatten())
        .map(|t| {
            (0..=t.turns.len() as u32)
                .map(|call| {
                    (0..ec.max_retries)
                        .take_while(|&attempt| {
                            lm.draw(CallKey { seed: 11, game: t.game, sample: t.sample, call, attempt }).1
                        })
                        .count()
                })
                .sum::<usize>()
        })
        .sum();
    assert_eq!(a.retries, expect, "retried calls of the kept trajectories");
    assert!(a.retries > 0, "failures were injected and retried");
    assert!(a.generate_calls <= 3 + 1, "sync mode batches every turn: {} calls", a.generate_calls);
    assert!(b.generate_calls >= a.generate_calls, "async serves requests as they come");
    // the groups that failed are exactly those with a trajectory failing every attempt of a call
    for g in &a.groups {
        assert_eq!(g.len(), 3);
        for t in g {
            assert!(!doomed(&ec, t.game, t.sample, t.turns.len() as u32 + 1), "a doomed trajectory was kept");
            assert!(!t.turns.is_empty() && t.turns.len() <= 3);
            // each turn's prompt extends the previous turn's prompt and response
            for w in t.turns.windows(2) {
                let (p0, r0) = (&w[0].prompt, &w[0].completion.tokens);
                assert!(w[1].prompt.starts_with(p0) && w[1].prompt[p0.len()..].starts_with(r0));
            }
        }
    }
    assert_eq!(a.groups.len() + a.failed_groups + a.aborted_groups, games.len());
}

#[test]
fn redundant_groups_replace_failed_ones_without_losing_or_duplicating_samples() {
    let m = model();
    // every call fails 10 % of the time and is never retried: some groups fail
    let ec = env("failure_rate = 0.1\nmax_retries = 0");
    let games: Vec<u64> = (100..112).collect();
    for mode in [EnvMode::Sync, EnvMode::Async] {
        let r = play(&m, &ec, mode, &games, 3, 2, 1);
        assert_eq!(r.groups.len(), 3, "{mode:?}: 12 groups with 3 needed keep the batch whole ({r:?})");
        let mut seen = std::collections::HashSet::new();
        for g in &r.groups {
            assert_eq!(g.len(), 2, "exactly n trajectories per kept group");
            for t in g {
                assert!(seen.insert((t.game, t.sample)), "duplicate trajectory {:?}", (t.game, t.sample));
                assert!(!doomed(&ec, t.game, t.sample, t.turns.len() as u32 + 1));
            }
        }
        assert!(r.failed_trajectories > 0, "{mode:?}: failures happened");
        assert_eq!(r.groups.len() + r.failed_groups + r.aborted_groups, games.len(), "{mode:?}: every group accounted");
    }
}

#[test]
fn failures_without_redundancy_shrink_the_batch_but_never_corrupt_it() {
    let m = model();
    let ec = env("failure_rate = 0.5\nmax_retries = 0");
    let games: Vec<u64> = (0..8).collect();
    let r = play(&m, &ec, EnvMode::Async, &games, 8, 2, 0);
    let expect_kept = games.iter().filter(|&&g| (0..2).all(|s| !doomed(&ec, g, s, 1))).count();
    assert!(r.groups.len() < games.len(), "a failure rate of 50 % loses groups");
    assert!(r.groups.len() <= expect_kept);
    assert_eq!(r.groups.len() + r.failed_groups, games.len());
}

fn rl_config(out: &Path, extra_env: &str) -> RunConfig {
    let text = common::small_addition(5)
        + "\n[rl]\nsteps = 3\nprompts_per_step = 4\nsamples_per_prompt = 3\nmax_new_tokens = 4\n"
        + "eval_samples = 2\nlog_every = 1\nfilter_zero_std = false\n"
        + "\n[env]\nkind = \"guess\"\nhigh = 8\nmax_turns = 3\neval_games = 6\n"
        + "step_latency_ms = { kind = \"constant\", value = 1 }\n"
        + extra_env;
    let mut cfg = RunConfig::parse(&text, Path::new("env.toml")).unwrap();
    cfg.run.out_dir = out.to_path_buf();
    cfg
}

#[test]
fn an_rl_phase_trains_on_every_turn_of_kept_groups() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let extra = "failure_rate = 0.1\nmax_retries = 1\nmode = \"sync\"\n";
    let ra = job::run(&rl_config(a.path(), extra), None, &mut Vec::new()).unwrap();
    let rb = job::run(&rl_config(b.path(), extra), None, &mut Vec::new()).unwrap();
    assert_eq!(ra.final_params, rb.final_params, "no redundancy: a pure function of the seed");
    let (before, after) = ra.rl.unwrap();
    assert!((0.0..=1.0).contains(&before.greedy) && (0.0..=1.0).contains(&after.sampled));
    // pass@2: games won by either sample (rewards are 0 or 1: at least the mean, at most 1)
    for r in [before, after] {
        let p = r.pass.unwrap();
        assert!(p.k == 2 && (r.sampled..=1.0).contains(&p.rate), "{r:?}");
    }
    let metrics = std::fs::read_to_string(a.path().join("addition-sft/metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("env_groups_kept").is_some())
        .collect();
    assert_eq!(steps.len(), 3);
    for s in &steps {
        let kept = s["env_groups_kept"].as_u64().unwrap();
        let failed = s["env_groups_failed"].as_u64().unwrap();
        assert_eq!(kept + failed, 4, "{s}");
        assert_eq!(s["env_trajectories"].as_u64().unwrap(), 3 * kept);
        // one training sample per turn
        assert_eq!(s["trained_samples"].as_u64().unwrap(), s["env_turns"].as_u64().unwrap(), "{s}");
    }
}

#[test]
fn the_env_section_is_validated_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = rl_config(dir.path(), "");
    assert!(base.env.is_some());
    let text = |extra: &str| ADDITION_CONFIG.to_string() + "\n[rl]\nsteps = 1\n\n[env]\nkind = \"guess\"\n" + extra;
    for (bad, key) in [
        ("failure_rate = 1.0", "env.failure_rate"),
        ("max_turns = 0", "env.max_turns"),
        ("low = 5\nhigh = 4", "env.low"),
        ("eval_games = 0", "env.eval_games"),
        ("step_latency_ms = { kind = \"lognormal\", median = 5, sigma = -1 }", "env.step_latency_ms"),
    ] {
        let e = RunConfig::parse(&text(bad), Path::new("e.toml")).unwrap_err().to_string();
        assert!(e.contains("e.toml") && e.contains(key), "{bad}: {e}");
    }
    let e = RunConfig::parse(&text("").replace("\"guess\"", "\"chess\""), Path::new("e.toml")).unwrap_err();
    assert!(e.to_string().contains("chess"), "{e}");
}

/// A generation that fails mid-rollout is the rollout's error, in both modes: every trajectory is
/// stopped and every turn still asked for is answered, so no thread is left waiting (the runner
/// once hung there in env-level async mode).
#[test]
fn a_failed_generation_ends_the_rollout_with_its_error() {
    let m = model();
    let ec = env("");
    let codec = TextCodec::default();
    for mode in [EnvMode::Async, EnvMode::Sync] {
        let p = settings(&m, &codec, &ec, mode);
        let mut calls = 0;
        let mut flaky = |reqs: &[arbor::rollout::Request], gen: &GenerateConfig| {
            calls += 1;
            if calls == 2 {
                return Err(arbor::Error::Invalid("the model server fell over".into()));
            }
            arbor::rollout::generate(&m, reqs, gen)
        };
        let err = rollout(&p, &mut flaky, &[1, 2, 3], 3, 4, 0).expect_err("a failed generation is an error");
        assert!(err.to_string().contains("fell over"), "{mode:?}: {err}");
    }
}
