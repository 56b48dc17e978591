//! ZeRO stage 1 (`[parallel] shard_optimizer`) under mpirun: the sharded runs' bytes are the
//! unsharded runs'.

use super::*;

/// `[parallel] shard_optimizer` (ZeRO stage 1) with dp = 2: every rank keeps the AdamW moments of
/// half the weights and updates that half, then the halves are gathered. The supervised job, the
/// GRPO job (mini-batches, micro-batches, a KL term) and the supervised job with tp = 2 × dp = 2
/// (each tensor-parallel shard split over its two replicas) end with the unsharded runs' weights and
/// checkpoint files byte for byte (the checkpoints' moments gathered), each rank's
/// `train_state_mib` falls by the moments it no longer holds, and a sharded run resumes from an
/// unsharded run's checkpoint to the same bytes.
#[test]
fn a_sharded_optimizer_gives_the_unsharded_runs_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let tp = sft_config() + "\n[parallel]\ntp = 2\n";
    for (job, config, name, np) in
        [("sft", sft_config(), "addition-sft", 2), ("grpo", grpo_config(), "default", 2), ("tp", tp, "addition-sft", 4)]
    {
        let last = "step-3";
        let cfg = dir.path().join(format!("{job}.toml"));
        std::fs::write(&cfg, &config).unwrap();
        let cfg = cfg.to_str().unwrap();
        let run = |sharded: bool, tag: &str, resume: Option<&Path>| {
            let o = out(&format!("{job}-{tag}"));
            let set = format!("parallel.shard_optimizer={sharded}");
            let mut args = vec!["--threads", "1", "train", "--config", cfg, "--out-dir", &o, "--set", &set];
            let ck;
            if let Some(r) = resume {
                ck = r.to_str().unwrap().to_string();
                args.extend(["--resume", &ck]);
            }
            let r = mpirun(np, &args, &[]);
            assert!(r.status.success(), "{job} {tag}: {}", text(&r));
            dir.path().join(format!("{job}-{tag}")).join(name)
        };
        let (plain, sharded) = (run(false, "plain", None), run(true, "sharded", None));
        let files = |run: &Path| {
            ["model.safetensors", "optimizer.safetensors"]
                .map(|f| std::fs::read(run.join("checkpoints").join(last).join(f)).unwrap())
        };
        assert!(files(&plain) == files(&sharded), "{job}: the sharded run's checkpoint differs");
        let (mp, ms) = (metrics(&plain), metrics(&sharded));
        assert_eq!(mp.len(), ms.len());
        let mut state_seen = false;
        for (a, b) in mp.iter().zip(&ms) {
            let (mut a, mut b) = (a.clone(), b.clone());
            let (sa, sb) = (
                a.as_object_mut().unwrap().remove("train_state_mib"),
                b.as_object_mut().unwrap().remove("train_state_mib"),
            );
            if let (Some(sa), Some(sb)) = (sa.and_then(|v| v.as_f64()), sb.and_then(|v| v.as_f64())) {
                // (the policy's moments, 8 bytes a parameter, halved)
                assert!(sb < sa, "{job}: train_state_mib {sb} sharded vs {sa}");
                state_seen = true;
            }
            assert_eq!(a, b, "{job}: metrics differ");
        }
        assert_eq!(state_seen, job == "grpo", "the RL steps report train_state_mib");
        // resumed sharded from the unsharded run's step 2
        let resumed = run(true, "resumed", Some(&plain.join("checkpoints/step-2")));
        assert!(files(&plain) == files(&resumed), "{job}: the resumed sharded run's checkpoint differs");
    }
}
