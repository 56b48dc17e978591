//! Which GPU a process uses. Under `mpirun` or `srun` every rank of a node sees the same devices
//! unless the launcher binds them (Slurm's `--gpus-per-task`, a `CUDA_VISIBLE_DEVICES` wrapper);
//! so rank r of a node takes device r mod (visible devices): one GPU per rank on an 8-GPU node
//! launched with 8 ranks, and device 0 of the one it was given when the launcher binds. The
//! node-local rank comes from the launcher's environment; `ARBOR_CUDA_DEVICE` overrides it all.

use crate::error::{Error, Result};

/// The variable that names the device outright.
pub const DEVICE_VAR: &str = "ARBOR_CUDA_DEVICE";

/// Where launchers put a process's rank among the processes of its node, in the order they are
/// read: Open MPI, MPICH / Intel MPI, Slurm's srun, torchrun-style launchers.
pub const LOCAL_RANK_VARS: [&str; 4] = ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"];

/// The device ordinal among `count` visible devices, from the environment `get`: `ARBOR_CUDA_DEVICE`
/// when set (it must name a visible device), else the node-local rank mod `count`, else 0. A value
/// that is not a number is an error naming its variable.
pub fn device_ordinal(get: impl Fn(&str) -> Option<String>, count: usize) -> Result<usize> {
    let parse = |var: &str, v: String| {
        v.trim().parse::<usize>().map_err(|_| Error::Invalid(format!("{var} = {v:?}: not a device number / rank")))
    };
    if count == 0 {
        return Err(Error::Invalid("no CUDA device is visible".into()));
    }
    if let Some(v) = get(DEVICE_VAR) {
        let d = parse(DEVICE_VAR, v)?;
        if d >= count {
            return Err(Error::Invalid(format!("{DEVICE_VAR} = {d}: only {count} CUDA device(s) are visible")));
        }
        return Ok(d);
    }
    for var in LOCAL_RANK_VARS {
        if let Some(v) = get(var) {
            return Ok(parse(var, v)? % count);
        }
    }
    Ok(0)
}

/// The first two ranks of a data-parallel group that run on the same device, from every rank's
/// device id (its UUID) in rank order: NCCL refuses a group with a device twice, with an error that
/// does not say why, so the engine names the ranks and the cure first.
pub fn shared_device(ids: &[Vec<u8>]) -> Option<(usize, usize)> {
    (0..ids.len()).find_map(|j| (0..j).find(|&i| ids[i] == ids[j]).map(|i| (i, j)))
}

/// The error for ranks `a` and `b` of a `group` ("data-parallel", "tensor-parallel") sharing one
/// GPU.
pub fn shared_device_error(group: &str, a: usize, b: usize) -> Error {
    Error::Invalid(format!(
        "{group} ranks {a} and {b} (their ranks in the group) run on the same GPU, which NCCL refuses: start one rank per GPU \
         (e.g. srun --gpus-per-task=1, or as many ranks per node as it has GPUs), or name each rank's \
         device with {DEVICE_VAR}"
    ))
}

/// [`device_ordinal`] from this process's environment and the driver's device count.
pub fn this_process(count: usize) -> Result<usize> {
    device_ordinal(|k| std::env::var(k).ok(), count)
}

/// The memory of this process's device ([`this_process`]) in bytes, and the logits of the LM
/// head's chunk a [`crate::cuda::Gpu`] on it takes; `None` where no device is usable. Opens the
/// device's context (which the run's `Gpu` then shares), nothing else.
pub fn this_process_memory() -> Option<(u64, usize)> {
    if crate::cuda::unavailable().is_some() {
        return None;
    }
    let ordinal = this_process(crate::cuda::device_count()).ok()?;
    let total = cudarc::driver::CudaContext::new(ordinal).ok()?.total_mem().ok()?;
    Some((total as u64, crate::tensor::backend::gpu_head_chunk(total as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn ranks_sharing_a_device_are_named() {
        let id = |b: u8| vec![b; 16];
        assert_eq!(shared_device(&[id(1), id(2), id(3)]), None);
        assert_eq!(shared_device(&[id(1), id(2), id(1), id(2)]), Some((0, 2)));
        assert_eq!(shared_device(&[id(4), id(5), id(5)]), Some((1, 2)));
        assert_eq!(shared_device(&[]), None);
        let msg = shared_device_error("tensor-parallel", 1, 2).to_string();
        assert!(msg.contains("tensor-parallel ranks 1 and 2") && msg.contains(DEVICE_VAR), "{msg}");
    }

    #[test]
    fn ranks_of_a_node_spread_over_its_devices() {
        assert_eq!(device_ordinal(env(&[]), 8).unwrap(), 0);
        assert_eq!(device_ordinal(env(&[("OMPI_COMM_WORLD_LOCAL_RANK", "5")]), 8).unwrap(), 5);
        assert_eq!(device_ordinal(env(&[("SLURM_LOCALID", "3")]), 8).unwrap(), 3);
        assert_eq!(device_ordinal(env(&[("MPI_LOCALRANKID", "9")]), 8).unwrap(), 1, "more ranks than devices share");
        // a launcher that binds one device per task: every rank sees one, its own
        assert_eq!(device_ordinal(env(&[("SLURM_LOCALID", "6")]), 1).unwrap(), 0);
        // Open MPI's variable is read before Slurm's (mpirun inside an allocation sets both)
        assert_eq!(device_ordinal(env(&[("SLURM_LOCALID", "0"), ("OMPI_COMM_WORLD_LOCAL_RANK", "2")]), 4).unwrap(), 2);
        assert_eq!(device_ordinal(env(&[(DEVICE_VAR, "7"), ("SLURM_LOCALID", "1")]), 8).unwrap(), 7);
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        let e = device_ordinal(env(&[(DEVICE_VAR, "8")]), 8).unwrap_err().to_string();
        assert!(e.contains(DEVICE_VAR) && e.contains("8 CUDA device"), "{e}");
        let e = device_ordinal(env(&[(DEVICE_VAR, "gpu1")]), 8).unwrap_err().to_string();
        assert!(e.contains(DEVICE_VAR) && e.contains("gpu1"), "{e}");
        let e = device_ordinal(env(&[("SLURM_LOCALID", "x")]), 8).unwrap_err().to_string();
        assert!(e.contains("SLURM_LOCALID"), "{e}");
        assert!(device_ordinal(env(&[]), 0).is_err());
    }
}
