//! The memory this process may use: the machine's (`MemTotal` of /proc/meminfo), or less where
//! its cgroup says so. A Slurm job's `--mem` (and a container's limit) is enforced by the
//! cgroup: a model that passes a MemTotal check there is killed by the kernel mid-allocation,
//! with no message. Memory checks read this instead.

use std::path::{Path, PathBuf};

/// The bytes available to this process and where the figure comes from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMemory {
    pub bytes: u64,
    pub source: String,
}

impl HostMemory {
    /// `bytes` of the machine's memory (`MemTotal`).
    pub fn mem_total(bytes: u64) -> HostMemory {
        HostMemory { bytes, source: "MemTotal in /proc/meminfo".into() }
    }
}

/// The memory this process may use, or `None` where neither /proc/meminfo nor a cgroup limit
/// can be read (another OS, a sandbox): callers then skip their memory checks.
pub fn host_memory() -> Option<HostMemory> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let total = read(Path::new("/proc/meminfo")).as_deref().and_then(parse_mem_total).map(HostMemory::mem_total);
    let limit = read(Path::new("/proc/self/cgroup")).and_then(|c| cgroup_limit(&c, &read));
    lesser(total, limit)
}

/// The lesser of the machine's memory and the cgroup's limit `(bytes, file)`.
fn lesser(total: Option<HostMemory>, limit: Option<(u64, PathBuf)>) -> Option<HostMemory> {
    let limit = limit.map(|(bytes, file)| HostMemory {
        bytes,
        source: format!("the memory limit of this process's cgroup, {}", file.display()),
    });
    match (total, limit) {
        (Some(t), Some(l)) if l.bytes < t.bytes => Some(l),
        (Some(t), _) => Some(t),
        (None, l) => l,
    }
}

/// `MemTotal` of a /proc/meminfo text, in bytes (the file gives kB).
pub(crate) fn parse_mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kb.checked_mul(1024)
}

/// A limit at or above this means none (cgroup v1 writes 2^63 rounded down to a page for
/// "unlimited").
const NO_LIMIT: u64 = 1 << 62;

/// The smallest memory limit on the path from this process's cgroup (`self_cgroup`: the text of
/// /proc/self/cgroup) to the root, with the file that sets it: cgroup v2's `memory.max`, or v1's
/// `memory.limit_in_bytes` of the memory controller. The limit may sit on an ancestor (Slurm sets
/// it on the job's and the step's cgroup, the task's own says "max"); a container sees its own
/// cgroup as the root, which the walk reads last. `read` gives a file's text.
pub(crate) fn cgroup_limit(self_cgroup: &str, read: &dyn Fn(&Path) -> Option<String>) -> Option<(u64, PathBuf)> {
    let mut best: Option<(u64, PathBuf)> = None;
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (root, file) = if id == "0" && controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        // under a cgroup namespace a path outside it reads "/../..": its own cgroup is then the
        // mount's root, the only one to read
        let own = Path::new(path);
        let inside = !own.components().any(|c| c == std::path::Component::ParentDir);
        let mut dir = Some(if inside { own } else { Path::new("/") });
        while let Some(d) = dir {
            let at = Path::new(root).join(d.strip_prefix("/").unwrap_or(d)).join(file);
            let limit = read(&at).and_then(|t| t.trim().parse::<u64>().ok()).filter(|&b| b < NO_LIMIT);
            if let Some(b) = limit.filter(|&b| best.as_ref().is_none_or(|(x, _)| b < *x)) {
                best = Some((b, at));
            }
            dir = d.parent();
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fs(files: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = files.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
        move |p: &Path| map.get(p).cloned()
    }

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemTotal:       24683784 kB\nMemFree:        23000000 kB\n";
        assert_eq!(parse_mem_total(text), Some(24683784 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots\n"), None);
        if cfg!(target_os = "linux") {
            assert!(host_memory().is_some_and(|m| m.bytes > 1 << 20));
        }
    }

    #[test]
    fn a_slurm_jobs_limit_on_an_ancestor_cgroup_is_found() {
        // cgroup v2, as slurmstepd lays a task out: the limit on the job and the step, "max" below
        let own = "0::/system.slice/slurmstepd.scope/job_77/step_0/user/task_0\n";
        let read = fs(&[
            ("/sys/fs/cgroup/system.slice/slurmstepd.scope/job_77/step_0/user/task_0/memory.max", "max\n"),
            ("/sys/fs/cgroup/system.slice/slurmstepd.scope/job_77/step_0/memory.max", "17179869184\n"),
            ("/sys/fs/cgroup/system.slice/slurmstepd.scope/job_77/memory.max", "34359738368\n"),
            ("/sys/fs/cgroup/memory.max", "max\n"),
        ]);
        let (bytes, file) = cgroup_limit(own, &read).unwrap();
        assert_eq!(bytes, 16 << 30);
        assert_eq!(file, Path::new("/sys/fs/cgroup/system.slice/slurmstepd.scope/job_77/step_0/memory.max"));
        let mem = lesser(Some(HostMemory::mem_total(512 << 30)), Some((bytes, file))).unwrap();
        assert_eq!(mem.bytes, 16 << 30);
        assert!(mem.source.contains("cgroup") && mem.source.contains("step_0/memory.max"), "{}", mem.source);
    }

    #[test]
    fn cgroup_v1_and_a_containers_root_are_read_and_no_limit_is_none() {
        // v1 (hybrid: v2's line is there too, without a memory controller file)
        let own = "9:cpu,cpuacct:/x\n4:memory:/process_api/abc\n0::/\n";
        let unlimited = "9223372036854771712\n";
        let read = fs(&[
            ("/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes", "8589934592\n"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", unlimited),
        ]);
        assert_eq!(cgroup_limit(own, &read).unwrap().0, 8 << 30);
        // a container: /proc/self/cgroup names the host's path, the mount shows its own cgroup
        let read = fs(&[("/sys/fs/cgroup/memory.max", "4294967296")]);
        assert_eq!(cgroup_limit("0::/kubepods/pod1/c1\n", &read).unwrap().0, 4 << 30);
        // nothing limited, nothing readable
        let read =
            fs(&[("/sys/fs/cgroup/memory/memory.limit_in_bytes", unlimited), ("/sys/fs/cgroup/memory.max", "max")]);
        assert_eq!(cgroup_limit(own, &read), None);
        assert_eq!(cgroup_limit("garbage\n", &fs(&[])), None);
        // a cgroup namespace showing a path outside it: the mount's root only, never above it
        let read = fs(&[("/sys/fs/cgroup/memory.max", "2147483648"), ("/sys/fs/memory.max", "1")]);
        assert_eq!(cgroup_limit("0::/../..\n", &read).unwrap().0, 2 << 30);
        // a limit above the machine's memory changes nothing
        let total = HostMemory::mem_total(24 << 30);
        assert_eq!(lesser(Some(total.clone()), Some((64 << 30, "/m".into()))), Some(total.clone()));
        assert_eq!(lesser(Some(total.clone()), None), Some(total));
        assert_eq!(lesser(None, Some((1 << 30, "/m".into()))).map(|m| m.bytes), Some(1 << 30));
    }
}
