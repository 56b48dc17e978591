#!/usr/bin/env python3
"""Are two runs of arbor the same? Compares two run directories (runs/<name>/):

- metrics.jsonl line by line, every key except the timing ones (time_*, *_per_s, step_s, and under [async]
  trainer_idle_frac, reward_queue_s and rollout_slot_util) and the GPU memory in use (device_mem_mib), exactly;
  an unfinished last line (no newline after it, not JSON: a run still writing it, or killed) is left out
  with a warning, while a malformed line elsewhere stops the comparison with FILE:LINE;
- model.safetensors and optimizer.safetensors of every checkpoint kept in the first run, by sha256.

Usage: scripts/compare_runs.py RUN_A RUN_B   (exit status 1 when anything differs)
Used to check that a refactor leaves training bit-identical, e.g.
  arbor-before train --out-dir /tmp/a && arbor-after train --out-dir /tmp/b
  scripts/compare_runs.py /tmp/a/default /tmp/b/default
"""
import hashlib
import json
import pathlib
import sys


# wall-clock fields of [async] runs: how long the trainer and the rollout ranks waited
ASYNC_TIMING = {"trainer_idle_frac", "reward_queue_s", "rollout_slot_util"}


def timing(key):
    # wall-clock fields, and the GPU memory in use (the machine's state, not the run's)
    return (
        key.startswith("time_")
        or key.endswith("_per_s")
        or key in ("step_s", "device_mem_mib")
        or key in ASYNC_TIMING
    )


def lines(run):
    path = pathlib.Path(run) / "metrics.jsonl"
    pieces = path.read_bytes().split(b"\n")
    out = []
    for i, raw in enumerate(pieces):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw.decode("utf-8"))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            if i == len(pieces) - 1:  # no newline after it: being written, or cut short by a kill
                print(f"warning: {path}:{i + 1}: the last line is incomplete (no newline, not JSON); left out")
                continue
            sys.exit(f"{path}:{i + 1}: invalid JSON: {e}")
        out.append({k: v for k, v in line.items() if not timing(k)})
    return out


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(a, b):
    la, lb = lines(a), lines(b)
    bad = [i for i in range(min(len(la), len(lb))) if la[i] != lb[i]]
    same = not bad and len(la) == len(lb)
    print(f"metrics.jsonl: {len(la)} vs {len(lb)} lines, {len(bad)} differ (timing keys left out)")
    for i in bad[:3]:
        diff = {k: (la[i].get(k), lb[i].get(k)) for k in set(la[i]) | set(lb[i]) if la[i].get(k) != lb[i].get(k)}
        print(f"  line {i + 1}: {diff}")
    for ck in sorted((pathlib.Path(a) / "checkpoints").glob("step-*")):
        for name in ("model.safetensors", "optimizer.safetensors"):
            other = pathlib.Path(b) / "checkpoints" / ck.name / name
            ok = other.is_file() and sha(ck / name) == sha(other)
            same &= ok
            print(f"{ck.name}/{name}: {'identical' if ok else 'DIFFERENT or missing'}")
    print("runs identical" if same else "runs differ")
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
