#!/usr/bin/env python3
"""Are two runs of arbor the same? Compares two run directories (runs/<name>/):

- metrics.jsonl line by line, every key except the timing ones (time_*, *_per_s, step_s) and the GPU memory in use (device_mem_mib), exactly;
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


def timing(key):
    # wall-clock fields, and the GPU memory in use (the machine's state, not the run's)
    return key.startswith("time_") or key.endswith("_per_s") or key == "step_s" or key == "device_mem_mib"


def lines(run):
    with open(pathlib.Path(run) / "metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(l).items() if not timing(k)} for l in f]


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
