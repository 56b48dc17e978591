//! `arbor bench allreduce`: gradient all-reduce bandwidth under mpirun, bucketed (what training
//! uses) vs one raw MPI all-reduce of the same bytes. One JSON line on rank 0.

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

/// Run the benchmark (needs the `mpi` feature and an MPI launcher).
#[cfg(feature = "mpi")]
pub fn run(args: &AllreduceArgs) -> anyhow::Result<()> {
    use crate::parallel::mpi_comm::{launched_by_mpi, MpiComm};
    use crate::parallel::{all_reduce_buckets, Comm};
    use std::time::Instant;
    anyhow::ensure!(launched_by_mpi(), "arbor bench allreduce must run under mpirun/srun (e.g. mpirun -np 2 ...)");
    anyhow::ensure!(
        args.mb > 0.0 && args.bucket_mb > 0.0 && args.reps > 0,
        "--mb, --bucket-mb and --reps must be positive"
    );
    let universe = mpi::initialize().ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
    let comm = MpiComm::new(universe.world(), None);
    let n = ((args.mb * 1048576.0) as usize / 4).max(1);
    let bucket = ((args.bucket_mb * 1048576.0) as usize).max(4);
    let mut buf: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 1e-3).collect();
    let mut time = |bucketed: bool| -> anyhow::Result<(f64, usize)> {
        // one untimed warm-up round
        let buckets = if bucketed { all_reduce_buckets(&comm, &mut buf, bucket)? } else { 1 };
        if !bucketed {
            comm.all_reduce_sum_f32(&mut buf)?;
        }
        comm.barrier()?;
        let t0 = Instant::now();
        for _ in 0..args.reps {
            if bucketed {
                all_reduce_buckets(&comm, &mut buf, bucket)?;
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
            "ranks": comm.size(), "bytes": n * 4, "bucket_bytes": bucket, "buckets": buckets,
            "raw_s": raw_s, "bucketed_s": bucketed_s,
            "raw_gb_per_s": bytes / raw_s / 1e9, "bucketed_gb_per_s": bytes / bucketed_s / 1e9,
            "bucketed_over_raw": raw_s / bucketed_s,
        });
        println!("{line}");
    }
    Ok(())
}

/// Without the `mpi` feature there is nothing to measure.
#[cfg(not(feature = "mpi"))]
pub fn run(_args: &AllreduceArgs) -> anyhow::Result<()> {
    anyhow::bail!("this arbor was built without the `mpi` feature")
}
