#!/usr/bin/env bash
# arbor vs PyTorch CPU: one training step (forward, backward, clip, AdamW) on the bench-tiny
# config (hidden 256, 4 layers, 4/2 heads, vocab 512, untied), batch 8 × 128, same threads.
# Runs the two alternately (3 rounds) so machine noise hits both, and prints the ratio of medians.
# Usage: scripts/peer/bench_peer.sh THREADS PYTHON
set -euo pipefail
cd "$(dirname "$0")/../.."
threads="${1:-2}"
py="${2:-python3}"
cfg=configs/models/bench-tiny
arbor=(./target/release/arbor --threads "$threads" bench train-step --model-config "$cfg" --batch 8 --seq 128 --steps 10 --warmup 2)
torch=("$py" scripts/peer/torch_train_step.py --model-config "$cfg" --batch 8 --seq 128 --threads "$threads" --steps 10 --warmup 2)
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
for round in 1 2 3; do
    "${arbor[@]}" | tee -a "$out"
    "${torch[@]}" | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
a = [r for r in rows if r["impl"] == "arbor"]
t = [r for r in rows if r["impl"] == "pytorch"]
ta, tt = statistics.median(r["tokens_per_s"] for r in a), statistics.median(r["tokens_per_s"] for r in t)
peak = statistics.median(r["gemm_peak_gflops"] for r in a)
ga, gt = statistics.median(r["gflops"] for r in a), statistics.median(r["gflops"] for r in t)
print(f"arbor   : {ta:8.0f} tokens/s  {ga:6.1f} GFLOP/s  ({100 * ga / peak:.0f}% of the gemm crate's {peak:.1f} GFLOP/s measured in the same run)")
print(f"pytorch : {tt:8.0f} tokens/s  {gt:6.1f} GFLOP/s  ({100 * gt / peak:.0f}% of that peak)")
print(f"ratio arbor/pytorch tokens/s: {ta / tt:.2f}x")
PY
