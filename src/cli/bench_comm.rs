//! The communication benchmarks, under mpirun or `arbor launch`, each one JSON line on rank 0:
//! `arbor bench allreduce`, gradient all-reduce bandwidth, bucketed (what training uses) vs one
//! raw all-reduce of the same bytes; `arbor bench broadcast`, one rank's message to all the
//! others (`[async]` publishing weights), a copy sent to each vs along a relay.

use clap::Args;

/// Arguments of `arbor bench allreduce`.
#[derive(Debug, Args)]
pub struct AllreduceArgs {
    /// Buffer size in MiB (f32 gradients).
    #[arg(long, default_value_t = 64.0)]
    pub mb: f64,
    /// Bucket size in MiB.
    #[arg(long, default_value_t = 4.0)]
    pub bucket_mb: f64,
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
}

/// Arguments of `arbor bench broadcast`.
#[derive(Debug, Args)]
pub struct BroadcastArgs {
    /// Message size in MiB (the weights of a policy version).
    #[arg(long, default_value_t = 64.0)]
    pub mb: f64,
    /// Chunk size of the relay in MiB.
    #[arg(long, default_value_t = (crate::parallel::relay::CHUNK_BYTES >> 20) as f64)]
    pub chunk_mb: f64,
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
}

/// Run `arbor bench allreduce` under an SPMD launcher.
pub fn allreduce(args: &AllreduceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.mb > 0.0 && args.bucket_mb > 0.0 && args.reps > 0,
        "--mb, --bucket-mb and --reps must be positive"
    );
    launched("allreduce", |comm, transport| measure(comm, transport, args))
}

/// Run `arbor bench broadcast` under an SPMD launcher.
pub fn broadcast(args: &BroadcastArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.mb > 0.0 && args.chunk_mb > 0.0 && args.reps > 0,
        "--mb, --chunk-mb and --reps must be positive"
    );
    launched("broadcast", |comm, transport| measure_broadcast(comm, transport, args))
}

/// Run `body` on the world of an SPMD launcher: `arbor launch` (TCP through the launcher) or,
/// with the `mpi` feature, mpirun/srun; without one, an error that says how to start `name`.
fn launched(
    name: &str,
    body: impl FnOnce(&dyn crate::parallel::Comm, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if crate::parallel::tcp_comm::launched_by_hub() {
        let comm = crate::parallel::tcp_comm::TcpComm::from_env(None)?;
        return body(&comm, "arbor launch");
    }
    #[cfg(feature = "mpi")]
    if crate::parallel::mpi_comm::launched_by_mpi() {
        let universe = mpi::initialize().ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
        let comm = crate::parallel::mpi_comm::MpiComm::new(universe.world(), None);
        return body(&comm, "mpi");
    }
    anyhow::bail!("arbor bench {name} runs under a launcher: mpirun -np 2 arbor bench {name}, or arbor launch --nproc 2 -- bench {name}")
}

/// Time raw and bucketed all-reduces over `comm` (`transport` names it in the JSON).
fn measure(comm: &dyn crate::parallel::Comm, transport: &str, args: &AllreduceArgs) -> anyhow::Result<()> {
    use crate::parallel::all_reduce_buckets;
    use std::time::Instant;
    let n = ((args.mb * 1048576.0) as usize / 4).max(1);
    let bucket = ((args.bucket_mb * 1048576.0) as usize).max(4);
    let mut buf: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 1e-3).collect();
    let mut time = |bucketed: bool| -> anyhow::Result<(f64, usize)> {
        // one untimed warm-up round
        let buckets = if bucketed { all_reduce_buckets(comm, &mut buf, bucket)? } else { 1 };
        if !bucketed {
            comm.all_reduce_sum_f32(&mut buf)?;
        }
        comm.barrier()?;
        let t0 = Instant::now();
        for _ in 0..args.reps {
            if bucketed {
                all_reduce_buckets(comm, &mut buf, bucket)?;
            } else {
                comm.all_reduce_sum_f32(&mut buf)?;
            }
        }
        comm.barrier()?;
        Ok((t0.elapsed().as_secs_f64() / args.reps as f64, buckets))
    };
    let (raw_s, _) = time(false)?;
    let (bucketed_s, buckets) = time(true)?;
    if comm.rank() == 0 {
        let bytes = (n * 4) as f64;
        let line = serde_json::json!({
            "transport": transport,
            "ranks": comm.size(), "bytes": n * 4, "bucket_bytes": bucket, "buckets": buckets,
            "raw_s": raw_s, "bucketed_s": bucketed_s,
            "raw_gb_per_s": bytes / raw_s / 1e9, "bucketed_gb_per_s": bytes / bucketed_s / 1e9,
            "bucketed_over_raw": raw_s / bucketed_s,
        });
        println!("{line}");
    }
    Ok(())
}

/// Time rank 0's message to every other rank, sent to each in turn ("direct", what `[async]` did
/// before the relay) and along the [`Relay`], until the last rank has it (a barrier after
/// each); the same bytes must arrive both ways.
fn measure_broadcast(comm: &dyn crate::parallel::Comm, transport: &str, args: &BroadcastArgs) -> anyhow::Result<()> {
    use crate::parallel::Relay;
    use std::time::Instant;
    let (rank, size) = (comm.rank(), comm.size());
    let bytes = ((args.mb * 1048576.0) as usize).max(1);
    let chunk = ((args.chunk_mb * 1048576.0) as usize).max(1);
    let msg: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let relay = Relay::with_chunk(&(0..size).collect::<Vec<_>>(), rank, chunk)?;
    let once = |direct: bool| -> anyhow::Result<()> {
        match (rank, direct) {
            (0, true) => (1..size).try_for_each(|r| comm.send_bytes(r, &msg))?,
            (0, false) => relay.send(comm, &msg)?,
            (_, direct) => {
                let got = if direct { comm.recv_bytes(0)? } else { relay.recv(comm)? };
                anyhow::ensure!(got == msg, "rank {rank}: the message arrived changed");
            }
        }
        Ok(())
    };
    let time = |direct: bool| -> anyhow::Result<f64> {
        // one untimed warm-up round
        once(direct)?;
        comm.barrier()?;
        let t0 = Instant::now();
        for _ in 0..args.reps {
            once(direct)?;
            comm.barrier()?;
        }
        Ok(t0.elapsed().as_secs_f64() / args.reps as f64)
    };
    let direct_s = time(true)?;
    let relay_s = time(false)?;
    if rank == 0 {
        let line = serde_json::json!({
            "transport": transport, "ranks": size, "bytes": bytes, "chunk_bytes": chunk,
            "direct_s": direct_s, "relay_s": relay_s, "direct_over_relay": direct_s / relay_s,
        });
        println!("{line}");
    }
    Ok(())
}
