//! `arbor bench allreduce`: gradient all-reduce bandwidth under mpirun or `arbor launch`, bucketed
//! (what training uses) vs one raw all-reduce of the same bytes. One JSON line on rank 0.

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

/// Run the benchmark under an SPMD launcher: `arbor launch` (TCP through the launcher) or, with
/// the `mpi` feature, mpirun/srun.
pub fn run(args: &AllreduceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.mb > 0.0 && args.bucket_mb > 0.0 && args.reps > 0,
        "--mb, --bucket-mb and --reps must be positive"
    );
    if crate::parallel::tcp_comm::launched_by_hub() {
        let comm = crate::parallel::tcp_comm::TcpComm::from_env(None)?;
        return measure(&comm, "arbor launch", args);
    }
    #[cfg(feature = "mpi")]
    if crate::parallel::mpi_comm::launched_by_mpi() {
        let universe = mpi::initialize().ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
        let comm = crate::parallel::mpi_comm::MpiComm::new(universe.world(), None);
        return measure(&comm, "mpi", args);
    }
    anyhow::bail!("arbor bench allreduce runs under a launcher: mpirun -np 2 arbor bench allreduce, or arbor launch --nproc 2 -- bench allreduce")
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
