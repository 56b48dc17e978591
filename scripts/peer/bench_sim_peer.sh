#!/usr/bin/env bash
# Events/s of arbor-sim vs a SimPy implementation of the same queue-scheduling rollout model.
# Usage: scripts/peer/bench_sim_peer.sh [STEPS] [ARBOR_RUNS] [SIMPY_RUNS]
#   (needs: cargo, python3 with simpy — pip install simpy)
# Each engine runs several times and its fastest run counts (the usual estimator of uncontended time on a
# shared machine; both engines get the same treatment). Every run of one engine prints the same events.
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-100}"
arbor_runs="${2:-5}"
simpy_runs="${3:-3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s/^steps = .*/steps = ${steps}/" sim/scenarios/peer-rollout.toml > "$tmp/peer-rollout.toml"
cargo build --release -q -p arbor-sim
bin="${CARGO_TARGET_DIR:-target}/release/arbor-sim"
for _ in $(seq "$arbor_runs"); do "$bin" run --scenario "$tmp/peer-rollout.toml" --json 2>/dev/null >> "$tmp/arbor.jsonl"; done
for _ in $(seq "$simpy_runs"); do
    python3 scripts/peer/simpy_rollout.py --steps "$steps" --gpus 64 --prompts 256 --n 8 >> "$tmp/simpy.jsonl"
done
python3 - "$tmp/arbor.jsonl" "$tmp/simpy.jsonl" <<'PY'
import json, sys
def best(path):
    runs = [json.loads(l) for l in open(path) if l.strip()]
    return min(runs, key=lambda r: r["wall_s"]), [round(r["wall_s"], 3) for r in runs]
(a, aw), (s, sw) = best(sys.argv[1]), best(sys.argv[2])
pa = a["policies"][0]
print(f"arbor-sim: {a['events']} events in {a['wall_s']:.3f} s = {a['events_per_s']:.3e} events/s, step {pa['step_time_s_mean']:.1f} s  (runs: {aw})")
print(f"simpy    : {s['events']} events in {s['wall_s']:.3f} s = {s['events_per_s']:.3e} events/s, step {s['step_time_s_mean']:.1f} s  (runs: {sw})")
print(f"ratio arbor/simpy events/s: {a['events_per_s'] / s['events_per_s']:.1f}x (target >= 50x)")
PY
