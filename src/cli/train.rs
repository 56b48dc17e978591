//! `arbor train`: run a training job from a TOML config (or the embedded default).

use crate::config::{Override, RunConfig};
use clap::Args;
use std::path::PathBuf;

/// Arguments of `arbor train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Run configuration (TOML); without it the embedded default job runs (configs/default.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set a config key as the file would (repeatable; the last wins): `--set rl.lr=1e-6 --set
    /// loss.kind=cispo`. VALUE is read as a TOML value (a number, `true`, `"123"`, `[1, 2]`,
    /// `{ lr = 1e-5 }` for a whole table), else taken as a string; checked and recorded in the
    /// run's config.toml like a key in the file. --steps, --seed and --out-dir apply after it.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = Override::parse)]
    pub set: Vec<Override>,
    /// Override `train.steps`.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override `run.out_dir`.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Override `run.seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from a checkpoint directory, `latest` (the newest under the run's directory), or
    /// `auto` (the newest if there is one, else start fresh: what a requeued Slurm job runs).
    #[arg(long)]
    pub resume: Option<String>,
    /// Let `--resume` continue with settings that differ from the run's recorded config.toml (the
    /// change is recorded in config-history.jsonl and metrics.jsonl); without it such a resume is refused.
    #[arg(long)]
    pub allow_config_change: bool,
    /// Check the job without running it: read the config, the model or checkpoint, a resume's config
    /// record and every dataset record as the run would, print what it would do and the config it
    /// would record, and write nothing (before a job waits in a queue). A missing GPU is a note.
    #[arg(long)]
    pub check: bool,
    /// With `--check` of a `device = "cuda"` job: compare its device memory plan with a GPU of
    /// this many GiB (the one it will run on) instead of this machine's (a login node has none).
    #[arg(long, value_name = "GIB", requires = "check")]
    pub device_memory: Option<f64>,
    /// With `--check` of a `device = "cuda"` job: plan its memory for a job of this many ranks
    /// (dp = ranks / parallel.tp; each rank's tensor-parallel shard, its share of a step's
    /// samples, its part of a sharded optimizer) instead of this one process.
    #[arg(long, value_name = "N", requires = "check")]
    pub ranks: Option<usize>,
    /// Stop before this much wall time has passed, as at a preemption signal: at the first step
    /// end after it every rank stops, a checkpoint is written, and arbor exits with status 75 (a
    /// requeue's cue; `--resume auto` continues). `3h55m`, `90m`, `45s`, `5400` (seconds) or Slurm's
    /// `HH:MM:SS` / `D-HH:MM:SS`; leave a margin for a step and a checkpoint. For schedulers
    /// without a warning signal. Under `[async]` the training ranks stop and halt the rollout ranks
    /// (leave a margin for a batch's generation too). At the job's last step it stops nothing: the
    /// run ends finished (exit 0).
    #[arg(long, value_name = "DURATION", value_parser = parse_time_limit)]
    pub time_limit: Option<(std::time::Duration, String)>,
    /// Replay a continuous `[async]` run's weight-install schedule (its rollout-schedule.jsonl):
    /// the same seed and schedule give the same samples and weights.
    #[arg(long)]
    pub replay: Option<PathBuf>,
}

/// `--time-limit`'s value: the duration and the text as given. Units `d`, `h`, `m`, `s` (integers,
/// largest first: `1h30m`), a bare number of seconds, or Slurm's `[D-]HH:MM:SS` / `MM:SS`.
pub fn parse_time_limit(text: &str) -> std::result::Result<(std::time::Duration, String), String> {
    let bad = || format!("{text:?}: not a duration (e.g. 3h55m, 90m, 45s, 5400, 03:55:00 or 1-00:00:00)");
    let t = text.trim();
    let secs: u64 = if let Ok(n) = t.parse::<u64>() {
        n
    } else if t.contains(':') {
        // [D-]HH:MM:SS, HH:MM:SS or MM:SS
        let (days, clock) = match t.split_once('-') {
            Some((d, c)) => (d.parse::<u64>().map_err(|_| bad())?, c),
            None => (0, t),
        };
        let parts: Vec<u64> =
            clock.split(':').map(|p| p.parse::<u64>().map_err(|_| bad())).collect::<Result<_, _>>()?;
        let (h, m, s) = match parts[..] {
            [m, s] if days == 0 => (0, m, s),
            [h, m, s] => (h, m, s),
            _ => return Err(bad()),
        };
        if m >= 60 || s >= 60 {
            return Err(bad());
        }
        // (checked: an hour count near u64's end is refused, not wrapped)
        days.checked_mul(24)
            .and_then(|x| x.checked_add(h))
            .and_then(|x| x.checked_mul(3600))
            .and_then(|x| x.checked_add(m * 60 + s))
            .ok_or_else(bad)?
    } else {
        let (mut total, mut number, mut last_unit) = (0u64, String::new(), u64::MAX);
        for c in t.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let unit = match c {
                'd' => 86_400,
                'h' => 3_600,
                'm' => 60,
                's' => 1,
                _ => return Err(bad()),
            };
            // each unit once, largest first, after a number
            if number.is_empty() || unit >= last_unit {
                return Err(bad());
            }
            let n: u64 = number.parse().map_err(|_| bad())?;
            total = n.checked_mul(unit).and_then(|x| x.checked_add(total)).ok_or_else(bad)?;
            (number, last_unit) = (String::new(), unit);
        }
        if !number.is_empty() || last_unit == u64::MAX {
            return Err(bad());
        }
        total
    };
    Ok((std::time::Duration::from_secs(secs), t.to_string()))
}

/// Load the config with overrides applied.
pub fn resolve(args: &TrainArgs) -> anyhow::Result<RunConfig> {
    let mut cfg = RunConfig::load_or_default_with(args.config.as_deref(), &args.set)?;
    if let Some(s) = args.steps {
        anyhow::ensure!(s > 0, "--steps must be positive");
        cfg.train.steps = s;
    }
    if let Some(d) = &args.out_dir {
        cfg.run.out_dir = d.clone();
    }
    if let Some(s) = args.seed {
        cfg.run.seed = s;
    }
    cfg.allow_config_change = args.allow_config_change;
    if let Some(path) = &args.replay {
        // a recorded schedule starts at the run's first step: a resume would start mid-way
        anyhow::ensure!(
            args.resume.is_none(),
            "--replay {} with --resume: a replay reproduces a run from its first step; drop --resume",
            path.display()
        );
        let ac = cfg.async_rl.as_mut().filter(|a| a.mode == crate::config::RolloutMode::Continuous);
        let ac = ac.ok_or_else(|| {
            anyhow::anyhow!(
                "--replay {}: replays a continuous [async] run; the config has no [async] mode = \"continuous\"",
                path.display()
            )
        })?;
        anyhow::ensure!(path.is_file(), "--replay {}: no such file", path.display());
        ac.replay = Some(path.clone());
    }
    Ok(cfg)
}

/// What keeps a run's communicators usable while it runs: MPI's universe when an MPI launcher
/// started the run (MPI is finalised when it is dropped).
pub(crate) struct Spmd {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

/// The collective timeout of `cfg` (0: none).
fn collective_timeout(cfg: &RunConfig) -> std::time::Duration {
    let secs = cfg.parallel.collective_timeout_s;
    std::time::Duration::from_secs_f64(if secs > 0.0 { secs } else { 1e9 })
}

/// The dp × tp grid of an SPMD run with its watchdog: under `arbor launch` (TCP to the
/// launcher's hub) or an MPI launcher (mpirun, mpiexec, srun; feature `mpi`); otherwise `None`
/// (a single process).
pub(crate) fn spmd_grid(cfg: &RunConfig) -> anyhow::Result<Option<(Spmd, crate::parallel::Grid)>> {
    use crate::parallel::watchdog::Watchdog;
    if crate::parallel::tcp_comm::launched_by_hub() {
        let rank: usize =
            std::env::var(crate::parallel::tcp_comm::RANK_VAR).ok().and_then(|r| r.parse().ok()).unwrap_or(0);
        // a rank past its collective timeout exits; `arbor launch` then stops the others
        let watchdog = Watchdog::start(rank, collective_timeout(cfg), Box::new(|_msg| std::process::exit(3)));
        let comm = crate::parallel::tcp_comm::TcpComm::from_env(Some(watchdog.clone()))?;
        return Ok(Some((Spmd::none(), grid_of(Box::new(comm), cfg, watchdog)?)));
    }
    #[cfg(feature = "mpi")]
    {
        use crate::parallel::mpi_comm::{launched_by_mpi, MpiComm};
        if launched_by_mpi() {
            let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Multiple)
                .ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
            let multiple = mpi_threads_suffice(level == mpi::Threading::Multiple, cfg.async_rl.is_some())?;
            let world = universe.world();
            let rank = mpi::traits::Communicator::rank(&world) as usize;
            // MPI_Abort on the world from the watchdog thread where MPI_THREAD_MULTIPLE was granted;
            // elsewhere the rank exits and mpirun ends the others
            let watchdog = Watchdog::start(
                rank,
                collective_timeout(cfg),
                Box::new(move |_msg| {
                    if multiple {
                        // SAFETY: MPI is initialised for the whole run (the universe outlives the
                        // watchdog's use) and MPI_Abort may be called from any thread under
                        // MPI_THREAD_MULTIPLE, which was granted.
                        unsafe {
                            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 3);
                        }
                    }
                    std::process::exit(3);
                }),
            );
            let comm = MpiComm::new(world, Some(watchdog.clone()));
            return Ok(Some((Spmd { _universe: Some(universe) }, grid_of(Box::new(comm), cfg, watchdog)?)));
        }
    }
    Ok(None)
}

/// Whether MPI may be called from any thread (`multiple`: MPI_THREAD_MULTIPLE was granted); an
/// `[async]` run, whose rollout ranks send and receive from several threads, needs it and is
/// refused without it (an MPI built without thread support would hang or crash it).
#[cfg(any(test, feature = "mpi"))]
fn mpi_threads_suffice(multiple: bool, is_async: bool) -> anyhow::Result<bool> {
    anyhow::ensure!(
        multiple || !is_async,
        "MPI granted less than MPI_THREAD_MULTIPLE, which [async] needs (its rollout ranks use MPI from \
         several threads): use an MPI built with thread support, or start the job with `arbor launch`"
    );
    Ok(multiple)
}

impl Spmd {
    fn none() -> Spmd {
        Spmd {
            #[cfg(feature = "mpi")]
            _universe: None,
        }
    }
}

/// The grid over `world` with `watchdog`, announced by the root.
fn grid_of(
    world: Box<dyn crate::parallel::Comm>,
    cfg: &RunConfig,
    watchdog: crate::parallel::watchdog::Watchdog,
) -> anyhow::Result<crate::parallel::Grid> {
    let mut grid = crate::parallel::Grid::new(world, cfg.parallel.tp)?;
    grid.watchdog = Some(watchdog);
    if grid.is_root() {
        println!("arbor: SPMD {}", grid.describe());
    }
    Ok(grid)
}

/// `choose()` run on the world's root (or here, without a world) and its answer, a path or none or
/// an error, sent to every rank: all of them go on with the same one.
fn agreed_on_root(
    world: Option<&dyn crate::parallel::Comm>,
    choose: impl FnOnce() -> anyhow::Result<Option<std::path::PathBuf>>,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let Some(world) = world else { return choose() };
    // the answer as bytes: b'0' none, b'1' + path, b'2' + the error
    let mut msg = Vec::new();
    if world.rank() == 0 {
        msg = match choose() {
            Ok(None) => vec![b'0'],
            Ok(Some(dir)) => [&b"1"[..], dir.as_os_str().as_bytes()].concat(),
            Err(e) => [&b"2"[..], format!("{e:#}").as_bytes()].concat(),
        };
    }
    world.broadcast_bytes(0, &mut msg)?;
    let rest = msg.get(1..).unwrap_or_default();
    match msg.first() {
        Some(b'0') => Ok(None),
        Some(b'1') => Ok(Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(rest)))),
        Some(b'2') => Err(anyhow::anyhow!("{}", String::from_utf8_lossy(rest))),
        _ => Err(anyhow::anyhow!("--resume: the root's choice of checkpoint arrived malformed ({} bytes)", msg.len())),
    }
}

/// The checkpoint `--resume` names (`auto`, `latest` or a directory) for the run of `cfg`: the
/// newest one a crash did not leave incomplete or damaged, chosen by the root of `world` alone (it
/// reads the candidate whole to check it) and sent to every rank.
pub(crate) fn resume_dir(
    cfg: &RunConfig,
    resume: Option<&str>,
    world: Option<&dyn crate::parallel::Comm>,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    let run_dir = cfg.run.out_dir.join(&cfg.run.name);
    Ok(match resume {
        None => None,
        Some(which @ ("auto" | "latest")) => {
            let dir = agreed_on_root(world, || {
                let (dir, skipped) = crate::train::checkpoint::newest_intact(&run_dir)?;
                for line in &skipped {
                    eprintln!("arbor: --resume {which}: {line}");
                }
                Ok(dir)
            })?;
            if dir.is_none() && which == "latest" {
                anyhow::bail!("--resume latest: no complete checkpoint under {}", run_dir.display());
            }
            dir
        }
        Some(path) => Some(std::path::PathBuf::from(path)),
    })
}

/// `arbor train --check`: the job checked in this process, nothing written (`train::job::check`).
/// `device_gib`: the GPU's memory to plan against (`--device-memory`), else this machine's;
/// `ranks`: the job's ranks to plan for (`--ranks`), else this process.
pub fn check(
    cfg: &RunConfig,
    resume: Option<&str>,
    (device_gib, ranks): (Option<f64>, Option<usize>),
) -> anyhow::Result<()> {
    let device = match device_gib {
        Some(g) if g.is_finite() && g > 0.0 && g < 1e9 => Some((g * (1u64 << 30) as f64) as u64),
        Some(g) => anyhow::bail!("--device-memory {g}: a GPU's memory in GiB, e.g. 80"),
        None => None,
    };
    let dir = resume_dir(cfg, resume, None)?;
    let target = crate::train::job::PlanTarget { device, ranks };
    crate::train::job::check(cfg, dir.as_deref(), target, &mut std::io::stdout())?;
    Ok(())
}

/// Run `arbor train` (the thread pool is set up by the caller from `run.threads`).
pub fn run(cfg: &RunConfig, resume: Option<&str>) -> anyhow::Result<()> {
    let grid = spmd_grid(cfg)?;
    let dir = resume_dir(cfg, resume, grid.as_ref().map(|(_, g)| g.world.as_ref()))?;
    let report = match grid {
        None => crate::train::job::run(cfg, dir.as_deref(), &mut std::io::stdout())?,
        Some((_spmd, grid)) => {
            let root = grid.is_root();
            let mut out: Box<dyn std::io::Write> =
                if root { Box::new(std::io::stdout()) } else { Box::new(std::io::sink()) };
            // the job's last barrier: under [async] the rollout ranks reach it while the trainer
            // still evaluates and writes its last checkpoint, so it waits as long as a step may
            // (parallel.step_timeout_s; 0: no limit) where that is longer than a collective
            let last_wait = match cfg.parallel.step_timeout_s {
                s if s > 0.0 => std::time::Duration::from_secs_f64(s),
                _ => std::time::Duration::MAX,
            };
            let run = crate::train::job::run_on(cfg, dir.as_deref(), &grid, &mut out);
            let _longer = grid.watchdog.as_ref().map(|w| w.lengthen_collectives(last_wait));
            match run {
                Ok(r) => {
                    grid.world.barrier()?;
                    if let Some(w) = &grid.watchdog {
                        w.stop();
                    }
                    if !root {
                        return Ok(());
                    }
                    r
                }
                // a preempted run: every rank stopped at the same step; rank 0 reports it
                Err(e @ crate::error::Error::Preempted { .. }) => {
                    grid.world.barrier()?;
                    if let Some(w) = &grid.watchdog {
                        w.stop();
                    }
                    return Err(e.into());
                }
                // a failing rank takes the whole job down instead of leaving the others in a collective
                Err(e) => grid.world.abort(&crate::error::on_rank(grid.world.rank(), &e)),
            }
        }
    };
    if let (Some(first), false) = (report.losses.first(), report.losses.is_empty()) {
        let last_k = report.losses.len().min(10);
        let last = report.losses[report.losses.len() - last_k..].iter().sum::<f64>() / last_k as f64;
        println!(
            "supervised: loss {first:.4} → {last:.4} (mean of the last {last_k} steps), {:.0} tokens/s",
            report.tokens_per_s
        );
    }
    if let Some((before, after)) = report.rl {
        println!(
            "rl: held-out solve rate (sampled, T = 1) {:.1}% → {:.1}% ({:+.1} points), greedy {:.1}% → {:.1}%{}",
            100.0 * before.sampled,
            100.0 * after.sampled,
            100.0 * (after.sampled - before.sampled),
            100.0 * before.greedy,
            100.0 * after.greedy,
            match (before.pass, after.pass) {
                (Some(b), Some(a)) if a.k == b.k =>
                    format!(", pass@{} {:.1}% → {:.1}%", a.k, 100.0 * b.rate, 100.0 * a.rate),
                _ => String::new(),
            }
        );
    }
    println!("done: output in {}", report.out_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_limits_read_as_schedulers_and_people_write_them() {
        let secs = |t: &str| parse_time_limit(t).map(|(d, _)| d.as_secs());
        for (t, s) in [
            ("5400", 5400),
            ("0", 0),
            ("45s", 45),
            ("90m", 5400),
            ("3h55m", 14_100),
            ("1h30m15s", 5415),
            ("2d", 172_800),
            ("1d12h", 129_600),
            ("03:55:00", 14_100),
            ("55:00", 3300),
            ("1-00:00:00", 86_400),
            ("2-12:30:00", 217_800),
            (" 10m ", 600),
        ] {
            assert_eq!(secs(t), Ok(s), "{t}");
        }
        for t in [
            "",
            "h",
            "10x",
            "5m3h",
            "3h3h",
            "1.5h",
            "10m5",
            "-5",
            "1:60",
            "1-55:00",
            "9999999999999999999:00:00",
            "999999999999999999-00:00:00",
            "1:2:3:4",
            "a:b:c",
            "99999999999999999999d",
        ] {
            let e = secs(t).unwrap_err();
            assert!(e.contains("not a duration"), "{t}: {e}");
        }
        assert_eq!(parse_time_limit("3h55m").unwrap().1, "3h55m");
    }

    /// An `[async]` run needs MPI_THREAD_MULTIPLE; a synchronous one runs with any level, its
    /// watchdog aborting through MPI only where the level allows it.
    #[test]
    fn async_runs_need_mpi_thread_multiple() {
        assert!(mpi_threads_suffice(true, true).unwrap());
        assert!(mpi_threads_suffice(true, false).unwrap());
        assert!(!mpi_threads_suffice(false, false).unwrap());
        let e = mpi_threads_suffice(false, true).unwrap_err().to_string();
        assert!(e.contains("MPI_THREAD_MULTIPLE") && e.contains("[async]"), "{e}");
    }
}
