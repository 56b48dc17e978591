//! A training job, top to bottom: the run directory, the model and its optimizer (fresh, or
//! resumed from a checkpoint with its config record), the metrics file, then the supervised
//! phase (`pretrain.rs`) and the RL phase of the run plan (`rl.rs`, or `async_rl.rs` under
//! `[async]`).

use crate::config::{RunConfig, Schedule};
use crate::error::{Error, Result};
use crate::io::space::SpaceCheckedFile;
use crate::parallel::Grid;
use crate::train::checkpoint::load_checkpoint;
use crate::train::metrics::write_line;
use crate::train::pretrain::{build_model, model_config, Eval, SftPhase, SftReport};
use crate::train::{AdamW, AdamWConfig};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a run did, for callers and tests.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub losses: Vec<f64>,
    pub evals: Vec<(u64, Eval)>,
    pub tokens_per_s: f64,
    pub out_dir: PathBuf,
    pub final_params: Vec<f32>,
    /// Held-out solve rates before and after the RL phase, when the config has one.
    pub rl: Option<(crate::train::rl::SolveRate, crate::train::rl::SolveRate)>,
}

/// Run the configured job, printing progress to `log` and writing `<out_dir>/<name>/`:
/// `config.toml` (resolved), `metrics.jsonl` and `checkpoints/step-N/` (HF weights + optimizer
/// state). With `resume`, training continues from that checkpoint exactly as if never stopped.
pub fn run(cfg: &RunConfig, resume: Option<&Path>, log: &mut dyn Write) -> Result<TrainReport> {
    run_on(cfg, resume, &Grid::local(), log)
}

/// What a job has read and checked before it writes anything: the first half of [`run_on`], and
/// all that [`check`] (`arbor train --check`) runs.
struct Prepared {
    /// The checkpoint resumed from, by its absolute path.
    resume: Option<PathBuf>,
    codec: crate::tokenizer::TextCodec,
    task: Box<dyn crate::tasks::Task>,
    /// The run directory, `<out_dir>/<name>`.
    out_dir: PathBuf,
    model: crate::model::Model,
    adam: AdamWConfig,
    opt: AdamW,
    /// Global steps done (the checkpoint's; 0 for a fresh run).
    start: u64,
    nonfinite_in_a_row: u64,
    rl_before: Option<crate::train::rl::SolveRate>,
    sampling: Option<crate::train::checkpoint::SamplingState>,
    /// Under `[rl] keep_best`: the checkpoint's best evaluation so far.
    rl_best: Option<crate::train::checkpoint::Best>,
    /// The resolved config, as `config.toml` records it.
    resolved: String,
    /// A resume's config compared with the run's record (rank 0 only).
    config_check: Option<crate::train::run_record::ConfigResume>,
}

/// Read and check everything a job needs before it writes anything (the model, a resume's
/// checkpoint and config record, every dataset record against the context): an error here leaves
/// the file system as it was.
fn prepare(cfg: &RunConfig, resume: Option<&Path>, grid: &Grid, log: &mut dyn Write) -> Result<Prepared> {
    let root = grid.is_root();
    // the checkpoint by its absolute path: a relative or symlinked one names the same run as the
    // run directory does (a rollback, not another run's record to copy over this one)
    let resume = match resume {
        Some(dir) => Some(std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?),
        None => None,
    };
    let resume_path = resume.clone();
    let resume = resume.as_deref();
    // a resume reads text as the checkpoint's run did: with the tokenizer saved in the checkpoint
    // (a model directory re-downloaded since may hold another revision of it)
    let codec = match resume {
        Some(dir) if dir.join(crate::tokenizer::TOKENIZER_FILE).is_file() => {
            crate::tokenizer::TextCodec::for_model(Some(dir), cfg.model.prompt_template.as_deref())?
        }
        _ => cfg.text_codec()?,
    };
    let task = cfg.task(&codec)?;
    let out_dir = cfg.run.out_dir.join(&cfg.run.name);

    // a resume whose model directory is gone (a scratch file system purged since the run began)
    // takes the checkpoint's own config.json, weights and tokenizer: nothing else was read from it
    let hf_dir_gone = match (&cfg.model.hf_dir, resume) {
        (Some(hf), Some(ck)) if !hf.join("config.json").is_file() => {
            if root {
                let (hf, ck) = (hf.display(), ck.display());
                let _ = writeln!(log, "arbor: {hf} has no config.json any more: the resume takes the model of {ck}");
            }
            true
        }
        _ => false,
    };
    // training an hf_dir model needs 16 bytes a parameter: refused before its weights are read
    // (a fresh model's shape is checked when the config is read)
    if let Some(dir) = &cfg.model.hf_dir {
        let file = match resume {
            Some(ck) if hf_dir_gone => ck.join("config.json"),
            _ => dir.join("config.json"),
        };
        let mc = crate::model::ModelConfig::from_hf_file(&file)?;
        if let Some(msg) = crate::model::host_memory::host_memory().and_then(|m| mc.hf_memory_shortfall(&m)) {
            return Err(Error::Config { file, key: "model.hf_dir".into(), msg });
        }
    }
    // a resume's model is the checkpoint's (its weights moved in: the model directory's are not
    // read, and the host holds one copy of the weights and moments, 12 bytes a parameter)
    let (model, resumed) = match resume {
        None => (build_model(cfg, &codec)?, None),
        Some(dir) => {
            crate::train::run_dir::check_resume_target(&out_dir, dir)?;
            let want = if hf_dir_gone { None } else { Some(model_config(cfg, &codec)?) };
            let ck = load_checkpoint(dir)?;
            if let Some(want) = want.filter(|want| ck.config != *want) {
                return Err(Error::Invalid(format!(
                    "{}: the checkpoint's model differs from the config's ({})",
                    dir.display(),
                    model_differences(&ck.config, &want)
                )));
            }
            let crate::train::checkpoint::LoadedState { config, params, exp_avg, exp_avg_sq, state } = ck;
            (crate::model::Model::new(config, params)?, Some((dir, state, exp_avg, exp_avg_sq)))
        }
    };
    // a [critic]'s dimensions are checked against the policy's now, not after the supervised phase
    if let Some(critic) = &cfg.critic {
        critic.model_config(model.full_config())?;
    }
    // under tensor parallelism every rank built the full model; it keeps its shard
    let full_layout = model.params.layout.clone();
    let model = model.shard(grid.tp.clone())?;
    let t = &cfg.train;
    let adam = AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay };
    let mut opt = AdamW::for_layout(adam, &model.params.layout);
    let (mut start, mut nonfinite_in_a_row) = (0u64, 0u64);
    let (mut rl_before, mut sampling, mut rl_best) = (None, None, None);
    if let Some((dir, state, exp_avg, exp_avg_sq)) = resumed {
        if state.seed != cfg.run.seed {
            return Err(Error::Invalid(format!(
                "{}: checkpoint seed {} differs from run.seed {}",
                dir.display(),
                state.seed,
                cfg.run.seed
            )));
        }
        // problem i is record i of the dataset as it is now: other records would silently train
        // and evaluate on other problems than the checkpoint's steps did
        let now = crate::train::checkpoint::data_fingerprint(task.as_ref());
        if let (Some(was), Some(now)) = (&state.data_fingerprint, &now) {
            if was != now && !cfg.allow_config_change {
                let path = cfg.data.path.clone().unwrap_or_default();
                return Err(Error::Config {
                    file: path,
                    key: "data.path".into(),
                    msg: format!(
                        "the dataset's records differ from those checkpoint {} trained on (fingerprint {was}, now \
                         {now}): problem ids would name other records. Resume with the data it trained on, or \
                         pass --allow-config-change to go on with these records",
                        dir.display()
                    ),
                });
            }
        }
        let total = t.steps + cfg.rl.as_ref().map_or(0, |r| r.steps);
        if state.step > total {
            return Err(Error::Invalid(format!(
                "{}: checkpoint step {} is past the run's {total} steps",
                dir.display(),
                state.step
            )));
        }
        // (the moments as the weights: the shard's part under tensor parallelism, else moved in)
        let moments = |data: Vec<f32>| match model.tp {
            None => Ok(data),
            Some(_) => model.scatter(&crate::model::Params { layout: full_layout.clone(), data }),
        };
        (opt.m, opt.v, opt.t) = (moments(exp_avg)?, moments(exp_avg_sq)?, state.adam_t);
        start = state.step;
        sampling = state.sampling;
        rl_best = state.rl_best;
        nonfinite_in_a_row = state.nonfinite_in_a_row;
        let pass = state.rl_eval_before_pass_at_k.map(|(k, rate)| crate::train::rl::PassAtK { k, rate });
        rl_before = state.rl_eval_before.map(|[sampled, greedy]| crate::train::rl::SolveRate { greedy, sampled, pass });
        if let Some(plan) = &cfg.plan().rl {
            let done = start.saturating_sub(t.steps);
            crate::train::rl::check_resume(plan, &plan.loss, dir, done, grid.dp.size())?;
        }
    }
    // every dataset record fits the model's context (and has the solution supervised steps need),
    // checked on every rank before anything is written: a bad record is named by file and line
    let context_key = match &cfg.model.hf_dir {
        Some(dir) => format!("max_position_embeddings of {}", dir.join("config.json").display()),
        None => "model.max_position_embeddings".to_string(),
    };
    crate::tasks::check_fits(
        task.as_ref(),
        &crate::tasks::ContextCheck {
            codec: &codec,
            max_position_embeddings: model.full_config().max_position_embeddings,
            context_key: &context_key,
            // a resume past the supervised phase runs no supervised step
            supervised_steps: if start < t.steps { t.steps } else { 0 },
            // an [env] supplies the RL prompts itself
            rl_max_new_tokens: cfg.rl.as_ref().filter(|_| cfg.env.is_none()).map(|r| r.max_new_tokens),
        },
    )?;
    // a resume's config is compared with the record of the run that wrote the checkpoint before the
    // run directory is touched: a refused resume leaves the run as it was
    let resolved = cfg.to_toml()?;
    let config_check = match resume {
        Some(dir) if root => {
            // the config the checkpoint's own steps ran with (a rollback past a config change is
            // compared with the config of its time); a checkpoint of before it was saved there: its run's
            let own = dir.join(crate::train::checkpoint::RUN_CONFIG_FILE);
            let recorded = match own.is_file() {
                true => Some(own),
                false => crate::train::run_dir::run_of_checkpoint(dir).map(|r| r.join("config.toml")),
            };
            Some(crate::train::run_record::check_resume_config(
                recorded.as_deref(),
                &resolved,
                start,
                cfg.allow_config_change,
            )?)
        }
        _ => None,
    };
    // (a resume loaded the whole optimizer's moments: a sharding rank keeps its part)
    let opt = own_part(opt, cfg, grid);
    Ok(Prepared {
        resume: resume_path,
        codec,
        task,
        out_dir,
        model,
        adam,
        opt,
        start,
        nonfinite_in_a_row,
        rl_before,
        sampling,
        rl_best,
        resolved,
        config_check,
    })
}

/// [`run`] on one rank of an SPMD job: each step's sequences are partitioned over the
/// data-parallel ranks (the global batch is the same for any dp), gradients and loss
/// normalisers are all-reduced, and only the world's rank 0 writes files; the others pass a sink
/// as `log`.
pub fn run_on(cfg: &RunConfig, resume: Option<&Path>, grid: &Grid, log: &mut dyn Write) -> Result<TrainReport> {
    let root = grid.is_root();
    // a run asking for a GPU where none is usable stops before it writes anything
    crate::train::probe::probe(cfg.train.device)?;
    let Prepared {
        resume,
        codec,
        task,
        out_dir,
        mut model,
        adam,
        mut opt,
        start,
        nonfinite_in_a_row,
        rl_before,
        sampling,
        rl_best,
        resolved,
        config_check,
    } = prepare(cfg, resume, grid, log)?;
    let resume = resume.as_deref();
    let t = &cfg.train;
    // nothing an earlier run wrote is overwritten or pruned (run_dir.rs), and a resume from another
    // run's checkpoint brings that run's record: before anything is written
    let mut dir_notes = Vec::new();
    if root {
        // a resume inside the RL phase reopens the dump (trimmed to its step): it travels with it
        let dump = cfg!(feature = "hdf5") && start > t.steps && cfg.rl.as_ref().is_some_and(|r| r.dump_trajectories);
        dir_notes = crate::train::run_dir::prepare(&out_dir, resume.map(|d| (d, start)), dump)?;
        crate::train::checkpoint::remove_stale_temporaries(&out_dir)?;
    }
    // the run directory's record of its config: written fresh, or the checked resume recorded
    let mut config_event = None;
    if root {
        match config_check {
            Some(checked) => {
                config_event = crate::train::run_record::record_resume_config(&out_dir, checked, &resolved, start)?;
            }
            None => crate::io::atomic::write_atomic(&out_dir.join("config.toml"), resolved.as_bytes())?,
        }
    }
    let metrics_path = out_dir.join("metrics.jsonl");
    let mut metrics: Box<dyn Write> = match root {
        false => Box::new(std::io::sink()),
        true => {
            let file = open_metrics(&metrics_path, start, t.steps)?;
            match cfg.run.tensorboard {
                true => Box::new(crate::train::tensorboard::mirror(file, &out_dir, &metrics_path, t.steps)?),
                false => Box::new(file),
            }
        }
    };
    let say = |log: &mut dyn Write, s: String| {
        let _ = writeln!(log, "{s}");
    };
    for note in dir_notes {
        say(log, note);
    }
    if let Some(event) = &config_event {
        write_line(&mut metrics, &metrics_path, event)?;
        say(
            log,
            format!(
                "resumed with a changed config (recorded in config-history.jsonl): {}",
                serde_json::Value::Object(event.changes.clone())
            ),
        );
    }
    say(log, job_line(cfg, &model, task.as_ref(), grid, &out_dir));
    if root {
        for line in memory_plan_lines(cfg, &model, (task.as_ref(), &codec), grid, PlanTarget::default())? {
            say(log, line);
        }
        if opt.is_shard(model.params.data.len()) {
            let (n, dp) = (model.params.data.len(), grid.dp.size());
            say(
                log,
                format!(
                    "optimizer state sharded over {dp} data-parallel ranks (ZeRO stage 1): each keeps the AdamW moments \
                     of about {} of the {n} weights",
                    n.div_ceil(dp)
                ),
            );
        }
    }
    // the checkpoint's count of non-finite steps belongs to the phase it was written in
    let sft_in_a_row = if start < t.steps { nonfinite_in_a_row } else { 0 };
    // checkpoints are committed in the background; a preempted run's last one is in place before
    // the process exits (its failure is then the run's error)
    let commit = crate::train::commit::Committer::new();
    let committed = |e: Error| match (commit.wait(), e) {
        (Err(c), Error::Preempted { .. }) => c,
        (_, e) => e,
    };
    let sft = SftPhase {
        cfg,
        task: task.as_ref(),
        grid,
        run_dir: &out_dir,
        codec: &codec,
        nonfinite_in_a_row: sft_in_a_row,
        commit: &commit,
    };
    let mut sft_report = SftReport::default();
    crate::train::pretrain::run_phase(&sft, &mut model, &mut opt, start, &mut metrics, log, &mut sft_report)
        .map_err(committed)?;
    let mut report = TrainReport {
        losses: sft_report.losses,
        evals: sft_report.evals,
        tokens_per_s: sft_report.tokens_per_s,
        out_dir: out_dir.clone(),
        final_params: vec![],
        rl: None,
    };
    let mut final_step = t.steps;
    if let Some(plan) = &cfg.plan().rl {
        let rl = &plan.section;
        let done = start.saturating_sub(t.steps);
        // the RL phase has its own AdamW; a resume inside the phase continues the loaded one
        let mut rl_opt =
            if done > 0 { opt } else { own_part(AdamW::for_layout(adam, &model.params.layout), cfg, grid) };
        let phase = crate::train::rl::Phase {
            cfg,
            plan,
            rl,
            loss: &plan.loss,
            task: task.as_ref(),
            run_dir: &out_dir,
            offset: t.steps,
            codec: &codec,
            commit: &commit,
        };
        let begin = crate::train::rl::PhaseStart {
            done,
            before: rl_before,
            sampling,
            from: resume.map(Path::to_path_buf),
            nonfinite_in_a_row: if done > 0 { nonfinite_in_a_row } else { 0 },
            best: if done > 0 { rl_best } else { None },
        };
        let rates = match &plan.schedule {
            Schedule::Sync => {
                crate::train::rl::run_phase(&mut model, &mut rl_opt, &phase, begin, grid, &mut metrics, log)
            }
            Schedule::Async(_) => {
                crate::train::async_rl::run_phase(&mut model, &mut rl_opt, &phase, begin, grid, &mut metrics, log)
            }
        }
        .map_err(committed)?;
        report.rl = Some(rates);
        final_step = t.steps + rl.steps;
    }
    commit.wait()?;
    let ckpt = out_dir.join("checkpoints").join(format!("step-{final_step}"));
    if root && ckpt.is_dir() {
        say(log, format!("saved {} (HF layout: transformers loads it)", ckpt.display()));
    }
    report.final_params = model.gather(&model.params.data)?.data;
    Ok(report)
}

/// The line a job starts with: the model, the task, the phases' steps, the threads and grid, the
/// run directory.
/// `opt` cut to this rank's part of the weights where `[parallel] shard_optimizer` shards it over
/// the data-parallel group (`parallel::zero`), else as it is.
fn own_part(opt: AdamW, cfg: &RunConfig, grid: &Grid) -> AdamW {
    let (rank, size) = (grid.dp.rank(), grid.dp.size());
    match cfg.parallel.shard_optimizer && size > 1 {
        true => {
            let n = opt.range().end;
            opt.shard(crate::parallel::zero::shard_range(n, rank, size))
        }
        false => opt,
    }
}

/// What `arbor train --check` plans a GPU job's memory for, where this process is not it: the
/// GPU's memory in bytes (`--device-memory`), the job's ranks (`--ranks`: dp = ranks / tp, each
/// rank's tensor-parallel shard).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanTarget {
    pub device: Option<u64>,
    pub ranks: Option<usize>,
}

/// A `device = "cuda"` run's memory plan ([`crate::train::memory_plan`]) as log lines, against
/// `target`'s device where given, else this process's device where one is usable, with a warning
/// line where it does not fit; nothing for a CPU run.
fn memory_plan_lines(
    cfg: &RunConfig,
    model: &crate::model::Model,
    (task, codec): (&dyn crate::tasks::Task, &crate::tokenizer::TextCodec),
    grid: &Grid,
    target: PlanTarget,
) -> Result<Vec<String>> {
    use crate::train::memory_plan::{Lengths, MemoryPlan, LARGE_GPU_HEAD_CHUNK};
    if cfg.train.device != crate::config::Device::Cuda {
        return Ok(Vec::new());
    }
    #[cfg(feature = "cuda")]
    let here = crate::cuda::this_process_memory();
    #[cfg(not(feature = "cuda"))]
    let here: Option<(u64, usize)> = None;
    let device = target.device.map(|d| (d, crate::train::memory_plan::gpu_head_chunk(d))).or(here);
    let head_chunk = device.map_or(LARGE_GPU_HEAD_CHUNK, |d| d.1);
    // the ranks of the job `--check` plans for: its data-parallel size and each rank's shard
    let tp = cfg.parallel.tp;
    let (dp, shard) = match target.ranks {
        Some(n) if n == 0 || n % tp != 0 => {
            return Err(Error::Invalid(format!("--ranks {n}: a multiple of parallel.tp = {tp}")));
        }
        Some(n) if tp > 1 && model.tp.is_none() => (n / tp, crate::model::shard::shard_config(&model.cfg, tp)?),
        Some(n) => (n / tp, model.cfg.clone()),
        None => (grid.dp.size(), model.cfg.clone()),
    };
    let full = model.full_config();
    let plan = MemoryPlan::of(cfg, (&shard, full), Lengths::of(task, codec)?, dp, head_chunk)?;
    let mut lines = plan.lines(device.map(|d| d.0));
    if let Some(over) = device.and_then(|d| plan.over(d.0)) {
        lines.push(format!("warning: {over}"));
    }
    Ok(lines)
}

fn job_line(
    cfg: &RunConfig,
    model: &crate::model::Model,
    task: &dyn crate::tasks::Task,
    grid: &Grid,
    out_dir: &Path,
) -> String {
    let t = &cfg.train;
    format!(
        "arbor train: {} params ({} layers, hidden {}), task {}, {} supervised steps × {} sequences{}, {} threads, {} → {}",
        model.full_config().num_params(),
        model.cfg.num_layers,
        model.cfg.hidden_size,
        task.name(),
        t.steps,
        t.batch_size,
        cfg.rl.as_ref().map_or(String::new(), |r| format!(
            ", then {} RL steps × {} prompts × {}{}",
            r.steps,
            r.prompts_per_step,
            match &cfg.attnrl {
                Some(a) => format!("{} initial responses, trees branched by {:?}", a.initial_responses, a.branch_by),
                None => format!("{} samples", r.samples_per_prompt),
            },
            cfg.rhythm.as_ref().map_or(String::new(), |h| format!(", rhythm {:?}", h.scheme))
        )),
        rayon::current_num_threads(),
        grid.describe(),
        out_dir.display()
    )
}

/// `arbor train --check`: everything a job reads and checks before it writes anything (the config,
/// the model or checkpoint, a resume's config record, every dataset record against the context and
/// the memory), and nothing written: what the run would do and the config it would record are
/// printed. A GPU this machine lacks is a note, not an error (a login node checks a GPU job).
pub fn check(cfg: &RunConfig, resume: Option<&Path>, target: PlanTarget, log: &mut dyn Write) -> Result<()> {
    let no_gpu = crate::train::probe::probe(cfg.train.device).err();
    let grid = Grid::local();
    let p = prepare(cfg, resume, &grid, log)?;
    let say = |log: &mut dyn Write, s: String| {
        let _ = writeln!(log, "{s}");
    };
    say(log, job_line(cfg, &p.model, p.task.as_ref(), &grid, &p.out_dir));
    for line in memory_plan_lines(cfg, &p.model, (p.task.as_ref(), &p.codec), &grid, target)? {
        say(log, line);
    }
    match &p.resume {
        Some(dir) => say(log, format!("resumes after step {} from {}", p.start, dir.display())),
        None if crate::train::run_dir::holds_a_run(&p.out_dir) => say(
            log,
            format!("{} holds an earlier run: the job moves it aside (nothing is deleted)", p.out_dir.display()),
        ),
        None => {}
    }
    if let Some(changes) = p.config_check.as_ref().and_then(|c| c.describe()) {
        say(log, format!("the resume changes the run's config (--allow-config-change): {changes}"));
    }
    if let Some(e) = no_gpu {
        say(log, format!("note: {e} here; the job needs one where it runs"));
    }
    say(log, format!("the config the run records (config.toml):\n{}", p.resolved.trim_end()));
    say(log, "check: OK (nothing was written)".into());
    Ok(())
}

/// Open metrics.jsonl: fresh for a new run; for a resume from global step `start`, keep only the
/// lines of steps ≤ start (a later step's lines belong to the lost tail) and append after them.
/// Supervised lines carry `step`; RL lines carry `rl_step` (global step `sft_steps + rl_step`, and
/// the eval before the first RL step, `rl_step` 0, is kept only once the phase has begun).
fn open_metrics(path: &Path, start: u64, sft_steps: u64) -> Result<SpaceCheckedFile> {
    open_metrics_file(path, start, sft_steps).map(|f| SpaceCheckedFile::new(f, path))
}

fn open_metrics_file(path: &Path, start: u64, sft_steps: u64) -> Result<std::fs::File> {
    if start > 0 {
        // (an unreadable file is an error: its lines are not rewritten from a partial read)
        let kept = crate::train::run_dir::kept_json_lines(path, |v| {
            let field = |k: &str| v[k].as_u64();
            match (field("step"), field("rl_step")) {
                (Some(s), _) => s <= start,
                (None, Some(r)) => start > sft_steps && sft_steps + r <= start,
                _ => false,
            }
        })?;
        // all at once: a failed rewrite (a full disk) keeps the old file
        crate::io::atomic::write_atomic(path, &kept)?;
        return std::fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e));
    }
    std::fs::File::create(path).map_err(|e| Error::io(path, e))
}

/// The `config.json` keys in which two model configs differ, `key: checkpoint a, config b` each.
fn model_differences(a: &crate::model::ModelConfig, b: &crate::model::ModelConfig) -> String {
    let (ja, jb) = (a.to_hf_json(), b.to_hf_json());
    let none = serde_json::Map::new();
    let (ma, mb) = (ja.as_object().unwrap_or(&none), jb.as_object().unwrap_or(&none));
    let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| ma.get(*k) != mb.get(*k))
        .map(|k| format!("{k}: checkpoint {}, config {}", show(ma.get(k)), show(mb.get(k))))
        .collect();
    match diffs.is_empty() {
        true => "their config.json forms agree; compare the checkpoint's config.json with the config".into(),
        false => diffs.join("; "),
    }
}
