//! Run plans and the rules across sections: every committed config and every example of
//! docs/config.md resolves to the plan it is meant to have, and each rule of
//! `arbor::config::rules::RULES` refuses its combination with its key and message.

use arbor::config::rules::RULES;
use arbor::config::{AdvantageSource, RunConfig, RunPlan, Sampler, Schedule, ADDITION_CONFIG};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The plan in the words of docs/config.md's `# plan:` markers.
fn shape(plan: &RunPlan) -> String {
    let Some(rl) = &plan.rl else { return "rl = none".into() };
    let sampler = match rl.sampler {
        Sampler::Groups => "groups",
        Sampler::Trees(_) => "trees",
        Sampler::OffPolicyTrees(_) => "off_policy_trees",
        Sampler::Env(_) => "env",
    };
    let advantage = match rl.advantage {
        AdvantageSource::Group(_) => "group",
        AdvantageSource::Gae(_) => "gae",
        AdvantageSource::Tree => "tree",
    };
    let shaping = if rl.shaping.is_some() { "rhythm" } else { "none" };
    let schedule = match rl.schedule {
        Schedule::Sync => "sync",
        Schedule::Async(_) => "async",
    };
    format!("sampler = {sampler}, advantage = {advantage}, shaping = {shaping}, schedule = {schedule}")
}

const GROUPS: &str = "sampler = groups, advantage = group, shaping = none, schedule = sync";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir`, recursively, in name order.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The plan a committed run config is meant to have (a new config needs a row here).
fn expected_plan(file: &str) -> &'static str {
    match file {
        "addition-sft.toml" => "rl = none",
        "addition-grpo.toml" | "countdown-grpo.toml" | "countdown-gpu.toml" | "default.toml" | "longtail.toml" => {
            GROUPS
        }
        // configs/hub: a Hub model with its own tokenizer
        "qwen2.5-0.5b-gsm8k.toml" | "qwen3-1.7b-base-gsm8k.toml" => GROUPS,
        // configs/eff20: the default job as of docs/efficacy.md §3c (from step 2400) with one key changed
        "a-lr1e-4.toml" | "c-steps2000.toml" | "d-lr3e-4.toml" | "e-groups16x16.toml" | "f-prompts64.toml"
        | "g-entropy0.01.toml" | "h-temp1.2.toml" | "j-wd0.toml" | "k-rloo.toml" | "l-entropy0.05.toml"
        | "m-entropy0.1.toml" | "n-kl0.02.toml" | "o-wreinforce.toml" => GROUPS,
        "i-attnrl.toml" => "sampler = trees, advantage = tree, shaping = none, schedule = sync",
        "env-guess.toml" => "sampler = env, advantage = group, shaping = none, schedule = sync",
        other => panic!("configs/{other}: add its expected plan to tests/config_plan.rs"),
    }
}

/// The plan of a method of `arbor experiment compare`.
fn expected_method_plan(method: &str) -> &'static str {
    match method {
        "grpo" => GROUPS,
        "treerl" => "sampler = trees, advantage = tree, shaping = none, schedule = sync",
        "attnrl" => "sampler = off_policy_trees, advantage = tree, shaping = none, schedule = sync",
        "rhythm-local" | "rhythm-global" | "rhythm-coupled" => {
            "sampler = groups, advantage = group, shaping = rhythm, schedule = sync"
        }
        "ppo" | "asyppo" => "sampler = groups, advantage = gae, shaping = none, schedule = sync",
        other => panic!("compare method {other}: add its expected plan to tests/config_plan.rs"),
    }
}

/// Every TOML file under configs/ is either a run config (a `[run]` table: it must parse and
/// plan) or a comparison preset (a `[compare]` table: every method's run config must pass the
/// same checks and plan); the other files there (HF model directories, the warm start's
/// weights and README) are not configs.
#[test]
fn every_committed_config_resolves_to_its_plan() {
    let (mut runs, mut presets) = (0, 0);
    for path in files_under(&root().join("configs")) {
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if table.contains_key("compare") {
            let cfgs = arbor::cli::experiment::plan(&path).unwrap_or_else(|e| panic!("{e:#}"));
            assert!(!cfgs.is_empty(), "{name}");
            for cfg in &cfgs {
                // the methods' configs are built in code: they pass parse's checks too
                cfg.validate().unwrap_or_else(|e| panic!("{name}: method {}: {e:?}", cfg.run.name));
                assert_eq!(shape(&cfg.plan()), expected_method_plan(&cfg.run.name), "{name}: {}", cfg.run.name);
            }
            presets += 1;
            continue;
        }
        assert!(table.contains_key("run"), "{name}: neither a run config nor a comparison preset");
        let cfg = RunConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let plan = cfg.plan();
        assert_eq!(shape(&plan), expected_plan(&name), "{name}");
        assert_eq!(plan.supervised_steps, cfg.train.steps, "{name}");
        if let Some(rl) = &plan.rl {
            assert_eq!(rl.section.steps, cfg.rl.as_ref().unwrap().steps, "{name}");
            assert_eq!(rl.loss, cfg.loss.clone().unwrap_or_default(), "{name}: [loss] or its default");
            assert_eq!(rl.workload.is_some(), name == "longtail.toml", "{name}: [workload]");
        }
        runs += 1;
    }
    assert!(runs >= 6 && presets >= 2, "found {runs} run configs and {presets} presets");
}

/// The ```toml blocks of docs/config.md, each with its `# plan:` marker.
fn doc_examples() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("docs/config.md")).unwrap();
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("a closed ```toml block");
        let block = &body[..end];
        let marker = block
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# plan: "))
            .unwrap_or_else(|| panic!("docs/config.md: a ```toml block must start with `# plan: ...`:\n{block}"));
        out.push((marker.to_string(), block.to_string()));
        rest = &body[end + 3..];
    }
    out
}

#[test]
fn every_docs_example_resolves_to_the_plan_it_names() {
    let examples = doc_examples();
    let mut shapes = BTreeSet::new();
    for (i, (marker, block)) in examples.iter().enumerate() {
        let file = format!("docs/config.md example {i}");
        let cfg = RunConfig::parse(block, Path::new(&file)).unwrap_or_else(|e| panic!("{e}\n{block}"));
        assert_eq!(&shape(&cfg.plan()), marker, "{file}");
        shapes.insert(marker.clone());
    }
    // one example per shape: groups, trees, off-policy trees, env, critic, rhythm, async (and SFT)
    for want in [
        "rl = none",
        GROUPS,
        "sampler = trees, advantage = tree, shaping = none, schedule = sync",
        "sampler = off_policy_trees, advantage = tree, shaping = none, schedule = sync",
        "sampler = env, advantage = group, shaping = none, schedule = sync",
        "sampler = groups, advantage = gae, shaping = none, schedule = sync",
        "sampler = groups, advantage = group, shaping = rhythm, schedule = sync",
        "sampler = groups, advantage = group, shaping = none, schedule = async",
    ] {
        assert!(shapes.contains(want), "docs/config.md has no example of `{want}`");
    }
    assert_eq!(shapes.len(), examples.len(), "one example per shape");
}

#[test]
fn the_plan_accessors_follow_the_sections() {
    let parse = |extra: &str| {
        RunConfig::parse(&format!("{ADDITION_CONFIG}\n[rl]\nsteps = 2\n{extra}"), Path::new("a.toml")).unwrap().plan()
    };
    let groups = parse("advantage = \"rloo\"\n").rl.unwrap();
    assert!(matches!(groups.advantage, AdvantageSource::Group(arbor::rl::AdvantageKind::Rloo)));
    assert!(!groups.is_trees() && groups.attnrl().is_none() && groups.critic().is_none());
    assert!(groups.env().is_none() && groups.async_cfg().is_none() && groups.shaping.is_none());
    let trees = parse("[attnrl]\nbranch_points = 3\n").rl.unwrap();
    assert!(trees.is_trees() && trees.attnrl().unwrap().branch_points == 3);
    let off = parse("[attnrl]\noff_policy = true\n").rl.unwrap();
    assert!(off.is_trees() && off.attnrl().unwrap().off_policy);
    let gae = parse("[critic]\ncount = 3\n").rl.unwrap();
    assert_eq!(gae.critic().map(|c| c.count), Some(3));
    let env = parse("[env]\nkind = \"guess\"\nhigh = 9\n").rl.unwrap();
    assert_eq!(env.env().map(|e| e.high), Some(9));
    let asynchronous = parse("[async]\nrollout_ranks = 2\nalpha = 1.5\n").rl.unwrap();
    assert_eq!(asynchronous.async_cfg().map(|a| a.lag()), Some(2));
    let loss = parse("[loss]\nkind = \"cispo\"\n").rl.unwrap();
    assert_eq!(loss.loss.kind, arbor::rl::LossKind::Cispo);
}

/// One row per rule: its name, the config that breaks it, the key and a part of the message.
struct Row {
    rule: &'static str,
    key: &'static str,
    msg: &'static str,
}

const RL: &str = "[rl]\nsteps = 1\n";

fn rows() -> Vec<(Row, String)> {
    let sft = ADDITION_CONFIG.to_string();
    let with = |sections: &[&str]| format!("{sft}\n{}", sections.join("\n"));
    let cuda = ADDITION_CONFIG.replace("[train]\n", "[train]\ndevice = \"cuda\"\n");
    let row = |rule, key, msg| Row { rule, key, msg };
    vec![
        (
            row("steps_or_rl", "train.steps", "0: a run without an [rl] phase needs supervised steps"),
            sft.replace("steps = 400", "steps = 0"),
        ),
        (
            row("group_of_two", "rl.samples_per_prompt", "so a group needs at least 2 (or add a [critic]"),
            with(&["[rl]\nsteps = 1\nsamples_per_prompt = 1\n"]),
        ),
        (
            row(
                "cuda_env_sync",
                "env.mode",
                "on the GPU a batch's generation depends on its makeup: use mode = \"sync\"",
            ),
            format!("{cuda}\n{RL}\n[env]\nkind = \"guess\"\n"),
        ),
        (
            row("cuda_head_dim", "model.num_heads", "2: hidden_size 512 / 2 heads = head_dim 256"),
            cuda.replace("hidden_size = 128", "hidden_size = 512").replace("num_heads = 4", "num_heads = 2"),
        ),
        (
            row("cuda_critic_head_dim", "critic.num_heads", "1: hidden_size 256 / 1 heads = head_dim 256"),
            format!("{cuda}\n{RL}\n[critic]\nhidden_size = 256\nnum_heads = 1\nnum_kv_heads = 1\n"),
        ),
        (
            row("cuda_max_batch", "rl.max_batch", "70000: train.device = \"cuda\" decodes at most 65,535"),
            format!("{cuda}\n[rl]\nsteps = 1\nmax_batch = 70000\n"),
        ),
        (
            row(
                "attention_pass_tp_one",
                "parallel.tp",
                "2: the attention-statistics pass ([attnrl], [rhythm]) needs every head on one rank",
            ),
            with(&[RL, "[parallel]\ntp = 2\n", "[rhythm]\n"]),
        ),
        (row("critic_needs_rl", "critic", "[critic] needs an [rl] phase"), with(&["[critic]\n"])),
        (
            row("critic_not_trees", "critic", "it does not combine with [attnrl] trees"),
            with(&[RL, "[critic]\n", "[attnrl]\n"]),
        ),
        (
            row("critic_not_async", "critic", "[critic] runs in the synchronous trainer; drop [async]"),
            with(&[RL, "[critic]\n", "[async]\nrollout_ranks = 1\n"]),
        ),
        (
            row("workload_needs_rl", "workload", "[workload] shapes RL generation: add an [rl] table"),
            with(&["[workload]\nlengths = { kind = \"constant\", value = 4 }\n"]),
        ),
        (
            row("env_needs_rl", "env.kind", "[env] is played in the RL phase: add an [rl] table"),
            with(&["[env]\nkind = \"guess\"\n"]),
        ),
        (
            row("env_group_count", "env.extra_groups", "groups per step (with the extra ones) must stay below 2^24"),
            with(&[RL, "[env]\nkind = \"guess\"\nextra_groups = 16777216\n"]),
        ),
        (
            row("env_sample_count", "env.extra_samples", "too many samples per group"),
            with(&[RL, "[env]\nkind = \"guess\"\nextra_samples = 8388608\n"]),
        ),
        (
            row(
                "env_groups_only",
                "env.kind",
                "[env] runs group sampling; drop [attnrl], [rhythm], [critic] and [workload]",
            ),
            with(&[RL, "[env]\nkind = \"guess\"\n", "[workload]\nlengths = { kind = \"constant\", value = 4 }\n"]),
        ),
        (
            row("env_not_async", "async.mode", "[env] runs with [async] mode = \"batch\" and replicate = false"),
            with(&[RL, "[env]\nkind = \"guess\"\n", "[async]\nrollout_ranks = 1\nmode = \"continuous\"\n"]),
        ),
        (
            row("env_tp_one", "env.kind", "[env] runs with tp = 1 (parallel.tp = 2)"),
            with(&[RL, "[env]\nkind = \"guess\"\n", "[parallel]\ntp = 2\n"]),
        ),
        (
            row("env_no_template", "model.prompt_template", "a template would frame the first turn only"),
            format!(
                "{}\n{RL}\n[env]\nkind = \"guess\"\n",
                sft.replace("[model]\n", "[model]\nprompt_template = \"Q: {prompt}\\nA: \"\n")
            ),
        ),
        (
            row("async_needs_rl", "async.rollout_ranks", "[async] needs an [rl] phase"),
            with(&["[async]\nrollout_ranks = 1\n"]),
        ),
        (
            row("async_attention_batch", "async.mode", "[attnrl] and [rhythm] with [async] need mode = \"batch\""),
            with(&[RL, "[async]\nrollout_ranks = 1\nmode = \"continuous\"\n", "[attnrl]\n"]),
        ),
        (
            row("async_no_off_policy", "attnrl.off_policy", "true: [async]'s rollout ranks already sample ahead"),
            with(&[RL, "[async]\nrollout_ranks = 1\n", "[attnrl]\noff_policy = true\n"]),
        ),
        (
            row("async_tp_one", "async.rollout_ranks", "[async] trains with tp = 1 (parallel.tp = 2)"),
            with(&[RL, "[async]\nrollout_ranks = 1\n", "[parallel]\ntp = 2\n"]),
        ),
        (
            row(
                "async_unsharded",
                "parallel.shard_optimizer",
                "[async] trains with its optimizer unsharded (its training ranks are a group of their own)",
            ),
            with(&[RL, "[async]\nrollout_ranks = 1\n", "[parallel]\nshard_optimizer = true\n"]),
        ),
        (
            row("attnrl_needs_rl", "attnrl", "[attnrl] and [rhythm] shape the RL phase: add an [rl] table"),
            with(&["[attnrl]\n"]),
        ),
        (
            row("hf_dir_init_std", "model.init_std", "0.5: a model loaded from hf_dir keeps its weights"),
            arbor::config::DEFAULT_CONFIG.replace("[model]\n", "[model]\ninit_std = 0.5\n"),
        ),
        (
            row("behaviour_ratio_t1", "loss.old_logprobs", "\"behaviour\": the sampler's log-probs are those"),
            with(&["[rl]\nsteps = 2\ntemperature = 0.8\n", "[loss]\nold_logprobs = \"behaviour\"\n"]),
        ),
    ]
}

#[test]
fn each_rule_refuses_its_combination_with_its_key_and_message() {
    let rows = rows();
    let names: Vec<&str> = RULES.iter().map(|r| r.name).collect();
    let covered: Vec<&str> = rows.iter().map(|(r, _)| r.rule).collect();
    assert_eq!(covered, names, "one row per rule of config::rules::RULES, in its order");
    for (row, text) in &rows {
        let rule = RULES.iter().find(|r| r.name == row.rule).unwrap();
        assert_eq!(rule.key, row.key, "{}", row.rule);
        // the rule itself, on the config as written (no checks)
        let raw: RunConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{}: {e}", row.rule));
        let msg = rule.check(&raw).unwrap_or_else(|| panic!("{}: the config keeps the rule", row.rule));
        assert!(msg.contains(row.msg), "{}: {msg}", row.rule);
        // and through parse: the first broken rule, named with the file and key
        let err = RunConfig::parse(text, Path::new("rules.toml")).expect_err(row.rule);
        match (&err, row.rule) {
            // a build without the `cuda` feature refuses the device before the rule
            (arbor::Error::Config { key, msg, .. }, rule) if rule.starts_with("cuda_") && !cfg!(feature = "cuda") => {
                assert!(key == "train.device" && msg.contains("without the `cuda` feature"), "{err}")
            }
            (arbor::Error::Config { file, key, msg }, _) => {
                assert_eq!(file, Path::new("rules.toml"));
                assert_eq!(key, row.key, "{}: {err}", row.rule);
                assert!(msg.contains(row.msg), "{}: {err}", row.rule);
            }
            _ => panic!("{}: not a config error: {err}", row.rule),
        }
    }
}

#[test]
fn a_config_that_keeps_every_rule_breaks_none() {
    for text in doc_examples().iter().map(|(_, b)| b).chain([&ADDITION_CONFIG.to_string()]) {
        let cfg: RunConfig = toml::from_str(text).unwrap();
        for rule in RULES {
            assert_eq!(rule.check(&cfg), None, "{}", rule.name);
        }
    }
}

/// Every `[async]` mode runs on the GPU (the streaming modes decode on the rollout rank's engine):
/// no rule refuses continuous rollout or replication with `device = "cuda"`.
#[test]
fn streaming_async_modes_are_not_refused_on_the_gpu() {
    let cuda = ADDITION_CONFIG.replace("[train]\n", "[train]\ndevice = \"cuda\"\n");
    for mode in ["mode = \"continuous\"", "replicate = true", "mode = \"continuous\"\nreplicate = true"] {
        let text = format!("{cuda}\n{RL}\n[async]\nrollout_ranks = 2\n{mode}\n");
        let cfg: RunConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg.train.device, arbor::config::Device::Cuda);
        assert!(cfg.async_rl.as_ref().is_some_and(|a| a.streams()), "{mode}");
        for rule in RULES {
            assert_eq!(rule.check(&cfg), None, "{mode}: {}", rule.name);
        }
    }
}

/// Dr.GRPO's T_max is the generation budget unless the config names one; other aggregations
/// have none.
#[test]
fn the_sum_norm_aggregation_divides_by_the_generation_budget() {
    let base = arbor::config::DEFAULT_CONFIG;
    assert!(base.contains("agg = \"token-mean\"\n"));
    let with = |loss: &str| {
        let text = base.replace("agg = \"token-mean\"\n", &format!("{loss}\n"));
        RunConfig::parse(&text, Path::new("t.toml")).unwrap().plan().rl.unwrap()
    };
    let rl = with("agg = \"seq-mean-token-sum-norm\"");
    assert_eq!(rl.loss.t_max, Some(rl.section.max_new_tokens));
    assert_eq!(with("agg = \"seq-mean-token-sum-norm\"\nt_max = 77").loss.t_max, Some(77));
    assert_eq!(with("agg = \"token-mean\"").loss.t_max, None);
}
