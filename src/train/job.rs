//! A training job, top to bottom: the run directory, the model and its optimizer (fresh, or
//! resumed from a checkpoint with its config record), the metrics file, then the supervised
//! phase (`pretrain.rs`) and the RL phase of the run plan (`rl.rs`, or `async_rl.rs` under
//! `[async]`).

use crate::config::{RunConfig, Schedule};
use crate::error::{Error, Result};
use crate::io::space::SpaceCheckedFile;
use crate::parallel::Grid;
use crate::tokenizer::char::CharTokenizer;
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::load_checkpoint;
use crate::train::metrics::write_line;
use crate::train::pretrain::{build_model, Eval, SftPhase, SftReport};
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

/// [`run`] on one rank of an SPMD job: each step's sequences are partitioned over the
/// data-parallel ranks (the global batch is the same for any dp), gradients and loss
/// normalisers are all-reduced, and only the world's rank 0 writes files; the others pass a sink
/// as `log`.
pub fn run_on(cfg: &RunConfig, resume: Option<&Path>, grid: &Grid, log: &mut dyn Write) -> Result<TrainReport> {
    let root = grid.is_root();
    // a run asking for a GPU where none is usable stops before it writes anything
    crate::train::probe::probe(cfg.train.device)?;
    let tok = CharTokenizer::default();
    let task = cfg.task()?;
    let out_dir = cfg.run.out_dir.join(&cfg.run.name);

    let model = build_model(cfg, &tok)?;
    // a [critic]'s dimensions are checked against the policy's now, not after the supervised phase
    if let Some(critic) = &cfg.critic {
        critic.model_config(model.full_config())?;
    }
    // under tensor parallelism every rank built the full model; it keeps its shard
    let mut model = model.shard(grid.tp.clone())?;
    let t = &cfg.train;
    let adam = AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay };
    let mut opt = AdamW::for_layout(adam, &model.params.layout);
    let mut start = 0u64;
    let (mut rl_before, mut sampling) = (None, None);
    if let Some(dir) = resume {
        let ck = load_checkpoint(dir)?;
        if &ck.config != model.full_config() {
            return Err(Error::Invalid(format!("{}: the checkpoint's model differs from the config's", dir.display())));
        }
        if ck.state.seed != cfg.run.seed {
            return Err(Error::Invalid(format!(
                "{}: checkpoint seed {} differs from run.seed {}",
                dir.display(),
                ck.state.seed,
                cfg.run.seed
            )));
        }
        let total = t.steps + cfg.rl.as_ref().map_or(0, |r| r.steps);
        if ck.state.step > total {
            return Err(Error::Invalid(format!(
                "{}: checkpoint step {} is past the run's {total} steps",
                dir.display(),
                ck.state.step
            )));
        }
        let moments = |data: Vec<f32>| model.scatter(&crate::model::Params { layout: ck.params.layout.clone(), data });
        let (m, v) = (moments(ck.exp_avg)?, moments(ck.exp_avg_sq)?);
        model.params.data = model.scatter(&ck.params)?;
        (opt.m, opt.v, opt.t) = (m, v, ck.state.adam_t);
        start = ck.state.step;
        sampling = ck.state.sampling;
        rl_before = ck.state.rl_eval_before.map(|[sampled, greedy]| crate::train::rl::SolveRate { greedy, sampled });
    }
    // nothing an earlier run wrote is overwritten or pruned (run_dir.rs), and a resume from another
    // run's checkpoint brings that run's record: before anything is written
    let mut dir_notes = Vec::new();
    if root {
        dir_notes = crate::train::run_dir::prepare(&out_dir, resume.map(|d| (d, start)))?;
        crate::train::checkpoint::remove_stale_temporaries(&out_dir)?;
    }
    // the run directory's record of its config: written fresh, or compared on a resume
    let mut config_event = None;
    if root {
        let resolved = toml::to_string(cfg).map_err(|e| Error::Invalid(format!("serializing the config: {e}")))?;
        match resume {
            Some(_) => {
                config_event =
                    crate::train::run_record::resume_config(&out_dir, &resolved, start, cfg.allow_config_change)?;
            }
            None => crate::io::atomic::write_atomic(&out_dir.join("config.toml"), resolved.as_bytes())?,
        }
    }
    let metrics_path = out_dir.join("metrics.jsonl");
    let mut metrics: Box<dyn Write> =
        if root { Box::new(open_metrics(&metrics_path, start, t.steps)?) } else { Box::new(std::io::sink()) };
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
    say(
        log,
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
        ),
    );
    let tokenizer = Tokenizer::Char(tok.clone());
    let sft = SftPhase { cfg, task: task.as_ref(), grid, run_dir: &out_dir, tokenizer: &tokenizer };
    let mut sft_report = SftReport::default();
    crate::train::pretrain::run_phase(&sft, &mut model, &mut opt, start, &mut metrics, log, &mut sft_report)?;
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
        let mut rl_opt = if done > 0 { opt } else { AdamW::for_layout(adam, &model.params.layout) };
        let phase = crate::train::rl::Phase {
            cfg,
            plan,
            rl,
            loss: &plan.loss,
            task: task.as_ref(),
            run_dir: &out_dir,
            offset: t.steps,
            tokenizer: &tokenizer,
        };
        let begin =
            crate::train::rl::PhaseStart { done, before: rl_before, sampling, from: resume.map(Path::to_path_buf) };
        let rates = match &plan.schedule {
            Schedule::Sync => {
                crate::train::rl::run_phase(&mut model, &mut rl_opt, &phase, begin, grid, &mut metrics, log)?
            }
            Schedule::Async(_) => {
                crate::train::async_rl::run_phase(&mut model, &mut rl_opt, &phase, begin, grid, &mut metrics, log)?
            }
        };
        report.rl = Some(rates);
        final_step = t.steps + rl.steps;
    }
    let ckpt = out_dir.join("checkpoints").join(format!("step-{final_step}"));
    say(log, format!("saved {} (HF layout: transformers loads it)", ckpt.display()));
    report.final_params = model.gather(&model.params.data)?.data;
    Ok(report)
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
