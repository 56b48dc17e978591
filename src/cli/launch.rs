//! `arbor launch --nproc N -- ARGS`: run `arbor ARGS` as an N-rank SPMD job on this machine
//! without MPI, or with `--nnodes M --master HOST:PORT` as one machine's N ranks of an M·N-rank job
//! (one launcher a machine, e.g. started by `srun --ntasks-per-node=1`; the node index from
//! `--node-rank` or $SLURM_NODEID). Node 0's launcher serves the ranks' collectives and messages
//! over TCP (`parallel::hub`; the ranks' side is `parallel::tcp_comm`): on the loopback interface
//! with one machine, on `--master`'s port with several. It gives each rank its world rank and
//! `LOCAL_RANK`, its index on its machine (so with `device = "cuda"` local rank i takes GPU i
//! modulo the visible ones), and ends the job as soon as one rank fails: the others are stopped
//! and the launcher exits with the failed rank's status (a failure on another machine reaches
//! node 0's hub as a lost connection or an abort, and the other machines' ranks as the hub's end). SIGTERM and SIGUSR1 sent to the launcher (Slurm's preemption and time
//! limit) are passed on to every rank, which checkpoints and stops as `arbor train` does
//! (`train::preempt`); the launcher then exits with the ranks' status (75: requeue). A second
//! SIGTERM ends the ranks at once (a step too long to end in time), and a rank dies
//! with its launcher.

use crate::parallel::hub::{serve, HubEnd};
use crate::parallel::tcp_comm::{HUB_VAR, JOIN_VAR, RANK_VAR, SIZE_VAR};
use crate::train::preempt::EXIT_PREEMPTED;
use std::net::TcpListener;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// The last stop signal the launcher caught and has not yet passed on (0: none), and how many
/// SIGTERMs it has caught in all.
static CAUGHT: AtomicI32 = AtomicI32::new(0);
static TERMS: AtomicI32 = AtomicI32::new(0);

/// A SIGTERM that ends the ranks at once comes at least this long after the first was passed on
/// (an earlier one repeats the first: srun and slurmstepd each send one).
const SECOND_TERM_AFTER: Duration = Duration::from_secs(5);

extern "C" fn on_signal(sig: libc::c_int) {
    // async-signal-safe: atomic operations only
    if sig == libc::SIGTERM {
        TERMS.fetch_add(1, Ordering::SeqCst);
    }
    CAUGHT.store(sig, Ordering::SeqCst);
}

/// Catch SIGTERM and SIGUSR1, to pass them on to the ranks instead of dying before them.
fn catch_stop_signals() -> anyhow::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGUSR1] {
        crate::train::preempt::catch_signal(sig, on_signal)?;
    }
    Ok(())
}

/// Raise the open-file limit to its hard limit: the hub holds two descriptors per rank.
fn raise_file_limit() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// How long the other ranks have to finish after one stopped for a preemption (their
/// checkpoint is written by then; they are past the last barrier).
const PREEMPT_GRACE: Duration = Duration::from_secs(60);

/// The most ranks `arbor launch` starts on one machine, and in a job.
const MAX_NPROC: usize = 1024;
const MAX_WORLD: usize = 16384;

#[derive(Debug, clap::Args)]
pub struct LaunchArgs {
    /// Ranks to start on this machine.
    #[arg(long)]
    pub nproc: usize,
    /// Machines in the job: one `arbor launch` runs on each, with the same --nproc, --nnodes and
    /// --master (under Slurm: `srun --ntasks-per-node=1 arbor launch ...`).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This machine's index in 0..nnodes; its ranks are node_rank·nproc + 0..nproc. Default:
    /// $SLURM_NODEID, else 0 (with one machine).
    #[arg(long)]
    pub node_rank: Option<usize>,
    /// HOST:PORT (or `[IPv6]`:PORT) of the job's hub, which node 0's launcher serves on PORT (every
    /// interface) and every rank connects to; required with --nnodes > 1. Default: a free port on the loopback
    /// interface (one machine).
    #[arg(long)]
    pub master: Option<String>,
    /// How long the hub waits for every rank to connect, and a rank for the hub, in seconds.
    #[arg(long, default_value_t = 600)]
    pub join_timeout_s: u64,
    /// What each rank runs: arbor's own arguments, e.g. `--threads 2 train --config job.toml`
    /// (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

/// Where this launcher stands in the job: its node, the world's size, the hub's address for its
/// ranks, and (node 0 only) the hub's listening socket.
struct Placement {
    node: usize,
    world: usize,
    hub_addr: String,
    listener: Option<TcpListener>,
}

/// The job's shape from the flags (and $SLURM_NODEID), checked, with node 0's hub socket bound.
fn placement(a: &LaunchArgs) -> anyhow::Result<Placement> {
    let (n, nodes) = (a.nproc, a.nnodes);
    anyhow::ensure!((1..=MAX_NPROC).contains(&n), "--nproc {n}: between 1 and {MAX_NPROC}");
    anyhow::ensure!(nodes >= 1, "--nnodes {nodes}: at least 1");
    anyhow::ensure!(
        n.checked_mul(nodes).is_some_and(|w| w <= MAX_WORLD),
        "--nproc {n} × --nnodes {nodes}: at most {MAX_WORLD} ranks in all"
    );
    anyhow::ensure!(
        (1..=86_400).contains(&a.join_timeout_s),
        "--join-timeout-s {}: between 1 and 86400",
        a.join_timeout_s
    );
    let node = match (a.node_rank, std::env::var("SLURM_NODEID")) {
        (Some(k), _) => k,
        (None, _) if nodes == 1 => 0,
        (None, Ok(v)) => v.trim().parse().map_err(|_| anyhow::anyhow!("SLURM_NODEID = {v:?} is not a node index"))?,
        (None, Err(_)) => anyhow::bail!("--nnodes {nodes}: say which machine this is with --node-rank (or run under srun, which sets $SLURM_NODEID)"),
    };
    anyhow::ensure!(node < nodes, "--node-rank {node}: --nnodes is {nodes}, so it must be below {nodes}");
    let world = n * nodes;
    let Some(master) = &a.master else {
        anyhow::ensure!(
            nodes == 1,
            "--nnodes {nodes} needs --master HOST:PORT (node 0's address, reachable from every node)"
        );
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let hub_addr = listener.local_addr()?.to_string();
        return Ok(Placement { node, world, hub_addr, listener: Some(listener) });
    };
    let port = master
        .rsplit_once(':')
        .and_then(|(host, p)| (!host.is_empty()).then_some(p))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| anyhow::anyhow!("--master {master:?}: expected HOST:PORT with a port in 1..65535"))?;
    if node != 0 {
        return Ok(Placement { node, world, hub_addr: master.clone(), listener: None });
    }
    // every interface of the master address's family ([v6]:port: IPv6)
    let (any, local) = match master.starts_with('[') {
        true => ("::", format!("[::1]:{port}")),
        false => ("0.0.0.0", format!("127.0.0.1:{port}")),
    };
    let listener = TcpListener::bind((any, port)).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (another job on this machine may hold it: give each job its own port, e.g. \
                 $((20000 + SLURM_JOB_ID % 10000)) under Slurm)"
            }
            _ => "",
        };
        anyhow::anyhow!("--master {master}: cannot listen on port {port}: {e}{hint}")
    })?;
    Ok(Placement { node, world, hub_addr: local, listener: Some(listener) })
}

/// Run the job; returns only when every rank finished cleanly (a failure exits the process with
/// the failed rank's status, after stopping the others).
pub fn run(a: &LaunchArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let n = a.nproc;
    let Placement { node, world, hub_addr: addr, listener } = placement(a)?;
    catch_stop_signals()?;
    raise_file_limit();
    let join = Duration::from_secs(a.join_timeout_s);
    // node 0 serves the hub; the others' launchers only watch their ranks
    let hub_end = listener.map(|listener| {
        let (to_main, hub_end) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = to_main.send(serve(listener, world, join));
        });
        hub_end
    });
    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for local in 0..n {
        let rank = node * n + local;
        let mut c = Command::new(&exe);
        c.args(&a.args)
            .env(HUB_VAR, &addr)
            .env(RANK_VAR, rank.to_string())
            .env(SIZE_VAR, world.to_string())
            .env(JOIN_VAR, a.join_timeout_s.to_string())
            .env("LOCAL_RANK", local.to_string());
        // the launcher's own place under srun or mpirun (e.g. SLURM_LOCALID = 0 with one launcher a
        // machine) is not its ranks': they take their GPU from LOCAL_RANK (`cuda::placement`)
        for var in ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"] {
            c.env_remove(var);
        }
        let launcher = std::process::id() as libc::pid_t;
        // SAFETY: prctl, getppid and _exit are async-signal-safe and touch no memory of the
        // parent: a rank dies with the launcher instead of running on without its hub (and one
        // whose launcher died before prctl took effect ends at once)
        unsafe {
            c.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != launcher {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        match c.spawn() {
            Ok(child) => children.push(child),
            Err(e) => stop(&mut children, &format!("could not start rank {rank} ({}): {e}", exe.display()), 1),
        }
    }
    let mut done = vec![false; n];
    let mut preempted: Option<std::time::Instant> = None;
    // when the first SIGTERM was passed on: one that follows within SECOND_TERM_AFTER is the same
    // request again (under srun both slurmstepd and srun send it), not an order to kill
    let mut first_term: Option<std::time::Instant> = None;
    let mut hub_running = hub_end.is_some();
    let mut remote_wait: Option<std::time::Instant> = None;
    loop {
        let sig = CAUGHT.swap(0, Ordering::SeqCst);
        if TERMS.load(Ordering::SeqCst) >= 2 {
            match first_term {
                // a second SIGTERM: the ranks did not stop in time (a step longer than the
                // pause), end them now
                Some(t) if t.elapsed() >= SECOND_TERM_AFTER => {
                    stop(&mut children, "a second SIGTERM", 128 + libc::SIGTERM)
                }
                _ => TERMS.store(1, Ordering::SeqCst),
            }
        }
        if sig == libc::SIGTERM && first_term.is_none() {
            first_term = Some(std::time::Instant::now());
        }
        if sig != 0 {
            for (child, _) in children.iter().zip(&done).filter(|(_, &d)| !d) {
                // SAFETY: kill(2) on the pid of a child not yet reaped (so not reused)
                unsafe {
                    libc::kill(child.id() as libc::pid_t, sig);
                }
            }
        }
        // the ranks' own statuses first: they say more than the hub's view of a lost rank
        let hub = hub_end.as_ref().filter(|_| hub_running).map(HubReason::Ask);
        check_children(&mut children, node * n, &mut done, &mut preempted, hub);
        let hub_news = match (&hub_end, hub_running) {
            (Some(h), true) => h.try_recv(),
            _ => Err(mpsc::TryRecvError::Empty),
        };
        match hub_news {
            Ok(Ok(HubEnd::Aborted(why))) => {
                std::thread::sleep(Duration::from_millis(200));
                // (the ranks that failed with it are reported after the hub's reason, already taken)
                check_children(&mut children, node * n, &mut done, &mut preempted, Some(HubReason::Known(&why)));
                stop(&mut children, &why, 1)
            }
            Ok(Err(e)) => stop(&mut children, &e.to_string(), 1),
            Err(mpsc::TryRecvError::Disconnected) => stop(&mut children, "the launcher's hub stopped", 1),
            // every rank left the hub: their statuses end the job
            Ok(Ok(HubEnd::Done)) => hub_running = false,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        // node 0's ranks are done, but its hub may still serve other machines' ranks: wait for
        // them to leave it (bounded by the join timeout)
        let remote = hub_running && world > n;
        if remote && done.iter().all(|&d| d) {
            let since = *remote_wait.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > join {
                eprintln!(
                    "arbor launch: other machines' ranks still connected {} s after this machine's ended",
                    join.as_secs()
                );
                std::process::exit(1);
            }
        } else if done.iter().all(|&d| d) {
            if preempted.is_some() {
                eprintln!("arbor launch: the ranks stopped for a preemption after a checkpoint");
                std::process::exit(EXIT_PREEMPTED);
            }
            return Ok(());
        }
        if preempted.is_some_and(|t| t.elapsed() > PREEMPT_GRACE) {
            stop(&mut children, "ranks still running after the others stopped for a preemption", EXIT_PREEMPTED);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the hub's reason for ending a job comes from, when a rank's failure is reported.
enum HubReason<'a> {
    /// The hub's channel: its reason if it has ended the job.
    Ask(&'a mpsc::Receiver<crate::error::Result<HubEnd>>),
    /// A reason the launcher already took from the channel.
    Known(&'a str),
}

/// Reap the ranks that exited: a failure stops the job with the rank's status (128 + the signal
/// for a rank a signal killed); a preemption's status (75) starts the others' grace period.
/// Ranks that fail together (one's failure makes the launcher end the others' collectives) are
/// reported together, after a moment for the rest to exit, the job's status being the first that
/// is not 1 (the status of a rank that lost its job).
fn check_children(
    children: &mut [Child],
    first: usize,
    done: &mut [bool],
    preempted: &mut Option<std::time::Instant>,
    hub: Option<HubReason<'_>>,
) {
    let mut failed = reap(children, first, done, preempted);
    if failed.is_empty() {
        return;
    }
    std::thread::sleep(Duration::from_millis(200));
    failed.extend(reap(children, first, done, preempted));
    let mut why: Vec<String> =
        failed.iter().map(|(rank, status, _)| format!("rank {rank} exited with {status}")).collect();
    // the hub's reason first where it ended the job (a rank that never connected, a rank's abort)
    match hub {
        Some(HubReason::Known(reason)) => why.insert(0, reason.to_string()),
        Some(HubReason::Ask(h)) => match h.try_recv() {
            Ok(Ok(HubEnd::Aborted(reason))) => why.insert(0, reason),
            Ok(Err(e)) => why.insert(0, e.to_string()),
            _ => {}
        },
        None => {}
    }
    let code = failed.iter().map(|f| f.2).find(|&c| c != 1).unwrap_or(1);
    stop(children, &why.join("; "), code)
}

/// The ranks that exited since the last call and failed: (world rank, status, exit code), the
/// children being ranks `first`...
fn reap(
    children: &mut [Child],
    first: usize,
    done: &mut [bool],
    preempted: &mut Option<std::time::Instant>,
) -> Vec<(usize, std::process::ExitStatus, i32)> {
    use std::os::unix::process::ExitStatusExt;
    let mut failed = Vec::new();
    for rank in 0..children.len() {
        if done[rank] {
            continue;
        }
        let status = match children[rank].try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => continue,
            Err(e) => stop(children, &format!("cannot watch rank {}: {e}", first + rank), 1),
        };
        done[rank] = true;
        match status.code() {
            Some(0) => {}
            Some(EXIT_PREEMPTED) => {
                preempted.get_or_insert_with(std::time::Instant::now);
            }
            code => failed.push((first + rank, status, code.or(status.signal().map(|s| 128 + s)).unwrap_or(1))),
        }
    }
    failed
}

/// Stop every rank still running, say why, and exit with `code`.
fn stop(children: &mut [Child], why: &str, code: i32) -> ! {
    for c in children.iter_mut() {
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
        }
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
    eprintln!("arbor launch: {why}; the job was stopped");
    std::process::exit(if code == 0 { 1 } else { code })
}
