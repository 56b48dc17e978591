//! Every rule that spans two or more sections of a run config, in one place.
//!
//! Each rule is a named check with the key its error names; `RunConfig::parse` runs them in the
//! order of [`RULES`] after every section has passed its own checks, and reports the first
//! broken one. docs/config.md ("Run plans") lists them; tests/config_plan.rs breaks each one.

use super::{Device, RunConfig};

/// A rule spanning sections: its name, the key its error names, and the check.
pub struct Rule {
    /// Short name (tests/config_plan.rs covers every rule by name).
    pub name: &'static str,
    /// The dotted key (or table) the error names.
    pub key: &'static str,
    check: fn(&RunConfig) -> Option<String>,
}

impl Rule {
    /// The message when `cfg` breaks the rule, `None` when it keeps it.
    pub fn check(&self, cfg: &RunConfig) -> Option<String> {
        (self.check)(cfg)
    }
}

/// All rules, in the order they are checked.
pub const RULES: &[Rule] = &[
    Rule { name: "steps_or_rl", key: "train.steps", check: steps_or_rl },
    Rule { name: "group_of_two", key: "rl.samples_per_prompt", check: group_of_two },
    Rule { name: "cuda_env_sync", key: "env.mode", check: cuda_env_sync },
    Rule { name: "cuda_head_dim", key: "model.num_heads", check: cuda_head_dim },
    Rule { name: "cuda_critic_head_dim", key: "critic.num_heads", check: cuda_critic_head_dim },
    Rule { name: "cuda_max_batch", key: "rl.max_batch", check: cuda_max_batch },
    Rule { name: "attention_pass_tp_one", key: "parallel.tp", check: attention_pass_tp_one },
    Rule { name: "critic_needs_rl", key: "critic", check: critic_needs_rl },
    Rule { name: "critic_not_trees", key: "critic", check: critic_not_trees },
    Rule { name: "critic_not_async", key: "critic", check: critic_not_async },
    Rule { name: "workload_needs_rl", key: "workload", check: workload_needs_rl },
    Rule { name: "env_needs_rl", key: "env.kind", check: env_needs_rl },
    Rule { name: "env_group_count", key: "env.extra_groups", check: env_group_count },
    Rule { name: "env_sample_count", key: "env.extra_samples", check: env_sample_count },
    Rule { name: "env_groups_only", key: "env.kind", check: env_groups_only },
    Rule { name: "env_not_async", key: "async.mode", check: env_not_async },
    Rule { name: "env_tp_one", key: "env.kind", check: env_tp_one },
    Rule { name: "env_no_template", key: "model.prompt_template", check: env_no_template },
    Rule { name: "async_needs_rl", key: "async.rollout_ranks", check: async_needs_rl },
    Rule { name: "async_attention_batch", key: "async.mode", check: async_attention_batch },
    Rule { name: "async_no_off_policy", key: "attnrl.off_policy", check: async_no_off_policy },
    Rule { name: "async_tp_one", key: "async.rollout_ranks", check: async_tp_one },
    Rule { name: "async_unsharded", key: "parallel.shard_optimizer", check: async_unsharded },
    Rule { name: "attnrl_needs_rl", key: "attnrl", check: attnrl_needs_rl },
    Rule { name: "hf_dir_init_std", key: "model.init_std", check: hf_dir_init_std },
    Rule { name: "behaviour_ratio_t1", key: "loss.old_logprobs", check: behaviour_ratio_t1 },
];

/// The first rule `cfg` breaks: (key, message).
pub(super) fn check_all(cfg: &RunConfig) -> Result<(), (String, String)> {
    match RULES.iter().find_map(|r| r.check(cfg).map(|msg| (r.key.to_string(), msg))) {
        Some(broken) => Err(broken),
        None => Ok(()),
    }
}

/// `msg` when `broken`.
fn when(broken: bool, msg: impl FnOnce() -> String) -> Option<String> {
    broken.then(msg)
}

/// Attention statistics ([attnrl] trees or [rhythm] shaping) are computed.
fn attention_pass(cfg: &RunConfig) -> bool {
    cfg.attnrl.is_some() || cfg.rhythm.is_some()
}

/// `[train] steps = 0` is a run only with an RL phase.
fn steps_or_rl(cfg: &RunConfig) -> Option<String> {
    when(cfg.train.steps == 0 && cfg.rl.is_none(), || "0: a run without an [rl] phase needs supervised steps".into())
}

/// A group advantage compares the samples of one prompt: a group of one has none (a critic or
/// trees give per-sample values instead).
fn group_of_two(cfg: &RunConfig) -> Option<String> {
    let rl = cfg.rl.as_ref()?;
    when(rl.samples_per_prompt < 2 && cfg.critic.is_none() && cfg.attnrl.is_none(), || {
        format!(
            "{}: the {:?} advantage compares the samples of a prompt, so a group needs at least 2 \
             (or add a [critic] for per-sample values)",
            rl.samples_per_prompt, rl.advantage
        )
    })
}

/// Env-level async batches the model's turns as they arrive; a GPU's generation of a batch
/// depends on its makeup (its GEMMs are not batch-invariant, the CPU's are), so the run would
/// depend on timing.
fn cuda_env_sync(cfg: &RunConfig) -> Option<String> {
    let async_env = cfg.env.as_ref().is_some_and(|e| e.mode == crate::env::EnvMode::Async);
    when(cfg.train.device == Device::Cuda && async_env, || {
        "\"async\" batches the model's turns as they arrive, and on the GPU a batch's generation depends on its makeup: use mode = \"sync\" with train.device = \"cuda\"".into()
    })
}

/// The largest head dim of the CUDA attention kernels (`attn_dm` in src/cuda/attention.rs).
const CUDA_MAX_HEAD_DIM: usize = 128;

/// The message for a head dim the CUDA attention kernels do not take, from `hidden / heads`.
fn cuda_head_dim_msg(cfg: &RunConfig, hidden: Option<usize>, heads: Option<usize>) -> Option<String> {
    let (hidden, heads) = (hidden?, heads?.max(1));
    let d = hidden / heads;
    when(cfg.train.device == Device::Cuda && d > CUDA_MAX_HEAD_DIM, || {
        format!(
            "{heads}: hidden_size {hidden} / {heads} heads = head_dim {d}, and the CUDA attention kernels take at most \
             {CUDA_MAX_HEAD_DIM} with train.device = \"cuda\": use more heads"
        )
    })
}

/// A fresh policy's head dim (a model loaded from `model.hf_dir` is checked when the GPU loads it).
fn cuda_head_dim(cfg: &RunConfig) -> Option<String> {
    cuda_head_dim_msg(cfg, cfg.model.hidden_size, cfg.model.num_heads)
}

/// A value model's head dim (its width and heads default to the policy's).
fn cuda_critic_head_dim(cfg: &RunConfig) -> Option<String> {
    let c = cfg.critic.as_ref()?;
    if c.hidden_size.is_none() && c.num_heads.is_none() {
        return None;
    }
    cuda_head_dim_msg(cfg, c.hidden_size.or(cfg.model.hidden_size), c.num_heads.or(cfg.model.num_heads))
}

/// The GPU's decode kernels put a step's rows on grid y, whose limit is 65,535.
fn cuda_max_batch(cfg: &RunConfig) -> Option<String> {
    let b = cfg.rl.as_ref()?.max_batch;
    when(cfg.train.device == Device::Cuda && b > 65_535, || {
        format!("{b}: train.device = \"cuda\" decodes at most 65,535 sequences together")
    })
}

/// The attention-statistics pass needs every head on one rank.
fn attention_pass_tp_one(cfg: &RunConfig) -> Option<String> {
    let tp = cfg.parallel.tp;
    when(tp > 1 && attention_pass(cfg), || {
        format!(
            "{tp}: the attention-statistics pass ([attnrl], [rhythm]) needs every head on one rank; use tp = 1 with data parallelism"
        )
    })
}

fn critic_needs_rl(cfg: &RunConfig) -> Option<String> {
    when(cfg.critic.is_some() && cfg.rl.is_none(), || "[critic] needs an [rl] phase".into())
}

fn critic_not_trees(cfg: &RunConfig) -> Option<String> {
    when(cfg.critic.is_some() && cfg.attnrl.is_some(), || {
        "[critic] replaces group advantages; it does not combine with [attnrl] trees".into()
    })
}

fn critic_not_async(cfg: &RunConfig) -> Option<String> {
    when(cfg.critic.is_some() && cfg.async_rl.is_some(), || {
        "[critic] runs in the synchronous trainer; drop [async]".into()
    })
}

fn workload_needs_rl(cfg: &RunConfig) -> Option<String> {
    when(cfg.workload.is_some() && cfg.rl.is_none(), || "[workload] shapes RL generation: add an [rl] table".into())
}

fn env_needs_rl(cfg: &RunConfig) -> Option<String> {
    when(cfg.env.is_some() && cfg.rl.is_none(), || "[env] is played in the RL phase: add an [rl] table".into())
}

/// Groups per step, with the redundant ones, stay below 2^24.
fn env_group_count(cfg: &RunConfig) -> Option<String> {
    let (env, rl) = (cfg.env.as_ref()?, cfg.rl.as_ref()?);
    when(rl.prompts_per_step.checked_add(env.extra_groups).is_none_or(|groups| groups >= 1 << 24), || {
        "groups per step (with the extra ones) must stay below 2^24".into()
    })
}

/// Samples per group, with the redundant ones, stay at most 2^23.
fn env_sample_count(cfg: &RunConfig) -> Option<String> {
    let (env, rl) = (cfg.env.as_ref()?, cfg.rl.as_ref()?);
    when(u64::from(rl.samples_per_prompt) + u64::from(env.extra_samples) > 1 << 23, || {
        "too many samples per group".into()
    })
}

fn env_groups_only(cfg: &RunConfig) -> Option<String> {
    let other = attention_pass(cfg) || cfg.critic.is_some() || cfg.workload.is_some();
    when(cfg.env.is_some() && other, || {
        "[env] runs group sampling; drop [attnrl], [rhythm], [critic] and [workload]".into()
    })
}

/// `[loss] old_logprobs = "behaviour"` takes the sampler's log-probs as π_old: those of the
/// temperature-scaled distribution, which at T ≠ 1 is not the policy the ratio compares with.
fn behaviour_ratio_t1(cfg: &RunConfig) -> Option<String> {
    let (loss, rl) = (cfg.loss.as_ref()?, cfg.rl.as_ref()?);
    when(loss.old_logprobs == crate::rl::OldLogprobs::Behaviour && rl.temperature != 1.0, || {
        format!(
            "\"behaviour\": the sampler's log-probs are those of the distribution at rl.temperature = {}, not of \
             the policy π_θ is compared with; sample at temperature 1 or keep \"recompute\"",
            rl.temperature
        )
    })
}

/// `[env]` with `[async]`: whole batches only. Continuous rollout and replication schedule
/// single-turn groups sample by sample; a game is a sequence of turns whose next prompt depends
/// on the environment, which `[env]` already schedules turn by turn (env-level async) inside each
/// rollout rank.
fn env_not_async(cfg: &RunConfig) -> Option<String> {
    let streams = cfg.async_rl.as_ref().is_some_and(|a| a.streams());
    when(cfg.env.is_some() && streams, || {
        "[env] runs with [async] mode = \"batch\" and replicate = false (each rollout rank plays whole games, turn by turn)".into()
    })
}

fn env_tp_one(cfg: &RunConfig) -> Option<String> {
    let tp = cfg.parallel.tp;
    when(cfg.env.is_some() && tp != 1, || format!("[env] runs with tp = 1 (parallel.tp = {tp})"))
}

/// An environment's turns are written into the conversation as plain text: a prompt template
/// would frame its first observation only, and every later turn would be out of the format.
fn env_no_template(cfg: &RunConfig) -> Option<String> {
    when(cfg.env.is_some() && cfg.model.prompt_template.is_some(), || {
        "[env] writes its observations and the model's replies into one plain-text history; a template would frame \
         the first turn only: drop prompt_template with [env]"
            .into()
    })
}

fn async_needs_rl(cfg: &RunConfig) -> Option<String> {
    when(cfg.async_rl.is_some() && cfg.rl.is_none(), || "[async] needs an [rl] phase".into())
}

/// `[attnrl]` trees and `[rhythm]` run on the rollout ranks in batch mode, where each rank samples
/// (trees: with the FCI pass and the adaptive state, the same on every rollout rank) or shapes its
/// share of a batch with the policy that generated it, as a data-parallel rank does. Streaming
/// modes mix policy versions (continuous) or split groups over ranks (replication) within a
/// share, so no one policy sees the share, and a tree batch is not a set of groups.
fn async_attention_batch(cfg: &RunConfig) -> Option<String> {
    let ac = cfg.async_rl.as_ref()?;
    when(attention_pass(cfg) && ac.streams(), || {
        "[attnrl] and [rhythm] with [async] need mode = \"batch\" and replicate = false (each rollout rank samples or shapes its share of a batch with the policy that generated it)".into()
    })
}

/// AttnRL's one-step off-policy pipeline overlaps the next batch's sampling with training inside
/// one process; under `[async]` the rollout ranks run ahead of the trainer themselves (`alpha`).
fn async_no_off_policy(cfg: &RunConfig) -> Option<String> {
    when(cfg.async_rl.is_some() && cfg.attnrl.as_ref().is_some_and(|a| a.off_policy), || {
        "true: [async]'s rollout ranks already sample ahead of the trainer (async.alpha); drop off_policy".into()
    })
}

fn async_tp_one(cfg: &RunConfig) -> Option<String> {
    let tp = cfg.parallel.tp;
    when(cfg.async_rl.is_some() && tp != 1, || format!("[async] trains with tp = 1 (parallel.tp = {tp})"))
}

fn async_unsharded(cfg: &RunConfig) -> Option<String> {
    when(cfg.async_rl.is_some() && cfg.parallel.shard_optimizer, || {
        "[async] trains with its optimizer unsharded (its training ranks are a group of their own)".into()
    })
}

fn attnrl_needs_rl(cfg: &RunConfig) -> Option<String> {
    when(attention_pass(cfg) && cfg.rl.is_none(), || {
        "[attnrl] and [rhythm] shape the RL phase: add an [rl] table".into()
    })
}

/// `init_std` draws a fresh model's weights; a model loaded from `hf_dir` brings its own, so the key
/// is read only by a `[critic]`'s value models (drawn fresh beside the loaded policy).
fn hf_dir_init_std(cfg: &RunConfig) -> Option<String> {
    let m = &cfg.model;
    let default = super::ModelSection::DEFAULT_INIT_STD;
    when(m.hf_dir.is_some() && m.init_std != default && cfg.critic.is_none(), || {
        format!(
            "{}: a model loaded from hf_dir keeps its weights and only a [critic]'s fresh value models read init_std, \
             so it would have no effect; drop it",
            m.init_std
        )
    })
}
