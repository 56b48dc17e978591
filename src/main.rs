//! The `arbor` command line: parsing and dispatch only.

use arbor::cli::{bench, convert, inspect, plot, train};
use clap::{Parser, Subcommand};

/// arbor: deterministic RL training of language models on verifiable reasoning tasks.
#[derive(Debug, Parser)]
#[command(name = "arbor", version, about)]
struct Cli {
    /// Worker threads (default: `run.threads` of the config for `train`, else all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model (default: the embedded tiny CPU job).
    Train(train::TrainArgs),
    /// Supervised warm start only: the config's `[train]` phase on the task's solver traces
    /// (any `[rl]` section is skipped); its checkpoint is an HF directory an RL run starts from.
    Sft(train::TrainArgs),
    /// Held-out solve rate of a model directory, measured as the RL phase's evaluation measures it.
    Eval(arbor::cli::eval::EvalArgs),
    /// Benchmarks of the numerical core.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Read an HF model directory and write it back (dtype, sharding).
    Convert(convert::ConvertArgs),
    /// Summarise a model directory or checkpoint.
    Inspect(inspect::InspectArgs),
    /// Experiments over several runs (`arbor experiment compare`).
    #[command(subcommand)]
    Experiment(arbor::cli::experiment::ExperimentCommand),
    /// PNG plots of a run's metrics.jsonl (reward, solve rate, length, loss, RL statistics).
    Plot(plot::PlotArgs),
    /// Run an SPMD job of N ranks on this machine without MPI: `arbor launch --nproc 2 -- train
    /// --config job.toml` (collectives over TCP through the launcher).
    Launch(arbor::cli::launch::LaunchArgs),
    /// Self-checking SPMD programs (`mpirun -np 2 arbor selftest tp`).
    #[command(subcommand)]
    Selftest(arbor::cli::selftest::SelftestCommand),
    /// Discrete-event simulation of RL training clusters.
    #[command(subcommand)]
    Sim(arbor_sim::cli::SimCommand),
}

fn init_threads(n: usize) -> anyhow::Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("could not start {n} worker threads: {e}"))
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli) {
        // a preempted run checkpointed and stopped on purpose: its own status, for requeue logic
        if let Some(p @ arbor::error::Error::Preempted { .. }) = e.downcast_ref::<arbor::error::Error>() {
            say_last(&format!("arbor: {p}\n"));
            std::process::exit(arbor::train::preempt::EXIT_PREEMPTED);
        }
        say_last(&format!("error: {e:#}\n"));
        std::process::exit(1);
    }
}

/// A process's last message, in one write: the ranks of a job share stderr, and a message
/// written in pieces would interleave with the other ranks' (a pipe keeps writes of up to 4 KiB
/// whole).
fn say_last(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    arbor::tensor::cpu::isa::cap_from_env().map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Train(args) => {
            let cfg = train::resolve(&args)?;
            init_threads(cli.threads.unwrap_or(cfg.run.threads))?;
            if args.check {
                return train::check(&cfg, args.resume.as_deref(), (args.device_memory, args.ranks));
            }
            arbor::train::preempt::arm(args.time_limit.as_ref())?;
            train::run(&cfg, args.resume.as_deref())
        }
        Command::Sft(args) => {
            let mut cfg = train::resolve(&args)?;
            // without its [rl] phase a run of no supervised steps would train nothing and write no
            // checkpoint
            if cfg.train.steps == 0 {
                let file =
                    args.config.as_ref().map_or(arbor::config::DEFAULT_CONFIG_NAME.into(), |p| p.display().to_string());
                anyhow::bail!(
                    "{file}: key `train.steps`: 0: `arbor sft` runs only the supervised phase (the [rl] phase is \
                     skipped), so it needs supervised steps: set train.steps or pass --steps N"
                );
            }
            cfg.rl = None;
            init_threads(cli.threads.unwrap_or(cfg.run.threads))?;
            if args.check {
                return train::check(&cfg, args.resume.as_deref(), (args.device_memory, args.ranks));
            }
            arbor::train::preempt::arm(args.time_limit.as_ref())?;
            train::run(&cfg, args.resume.as_deref())
        }
        Command::Eval(args) => {
            init_threads(cli.threads.unwrap_or(2))?;
            arbor::cli::eval::run(&args)
        }
        Command::Bench(cmd) => {
            init_threads(cli.threads.unwrap_or(0))?;
            match cmd {
                bench::BenchCommand::TrainStep(a) => bench::train_step(&a),
                bench::BenchCommand::Generate(a) => bench::generate(&a),
                bench::BenchCommand::Gemm { n, reps } => bench::gemm(n, reps),
                bench::BenchCommand::Allreduce(a) => arbor::cli::bench_comm::allreduce(&a),
                bench::BenchCommand::Broadcast(a) => arbor::cli::bench_comm::broadcast(&a),
                bench::BenchCommand::Env(a) => arbor::cli::bench_env::run(&a),
                bench::BenchCommand::Gpu(a) => arbor::cli::bench_gpu::run(&a),
            }
        }
        Command::Convert(args) => convert::run(&args),
        Command::Inspect(args) => {
            quiet_on_closed_pipe();
            inspect::run(&args)
        }
        Command::Plot(args) => plot::run(&args),
        Command::Experiment(cmd) => {
            init_threads(cli.threads.unwrap_or(2))?;
            arbor::cli::experiment::run(&cmd)
        }
        Command::Selftest(arbor::cli::selftest::SelftestCommand::Tp(a)) => {
            init_threads(cli.threads.unwrap_or(1))?;
            arbor::cli::selftest::tp(&a)
        }
        Command::Sim(cmd) => arbor_sim::cli::run(cmd),
        Command::Launch(mut args) => {
            // `arbor --threads N launch ...`: each rank runs with N threads
            if let Some(n) = cli.threads {
                args.args.splice(0..0, ["--threads".to_string(), n.to_string()]);
            }
            arbor::cli::launch::run(&args)
        }
    }
}

/// For a command that only prints (`arbor inspect … | head`): a reader that closes the pipe ends
/// the process quietly, as it ends `cat`, instead of Rust's `println!` panicking on the write.
/// (Not for the commands that talk over sockets or MPI, which handle a closed peer themselves.)
fn quiet_on_closed_pipe() {
    // SAFETY: restores the default disposition of SIGPIPE before any thread or handler of ours exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
