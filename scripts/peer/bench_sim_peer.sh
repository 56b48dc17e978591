#!/usr/bin/env bash
# Events/s of arbor-sim vs a SimPy implementation of the same queue-scheduling rollout model.
# Usage: scripts/peer/bench_sim_peer.sh [STEPS]   (needs: cargo, python3 with simpy — pip install simpy)
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-100}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s/^steps = .*/steps = ${steps}/" sim/scenarios/peer-rollout.toml > "$tmp/peer-rollout.toml"
cargo build --release -q -p arbor-sim
bin="${CARGO_TARGET_DIR:-target}/release/arbor-sim"
arbor_json="$("$bin" run --scenario "$tmp/peer-rollout.toml" --json 2>/dev/null)"
simpy_json="$(python3 scripts/peer/simpy_rollout.py --steps "$steps" --gpus 64 --prompts 256 --n 8)"
python3 - "$arbor_json" "$simpy_json" <<'PY'
import json, sys
a, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pa = a["policies"][0]
print(f"arbor-sim: {a['events']} events in {a['wall_s']:.3f} s = {a['events_per_s']:.3e} events/s, step {pa['step_time_s_mean']:.1f} s")
print(f"simpy    : {s['events']} events in {s['wall_s']:.3f} s = {s['events_per_s']:.3e} events/s, step {s['step_time_s_mean']:.1f} s")
print(f"ratio arbor/simpy events/s: {a['events_per_s'] / s['events_per_s']:.1f}x (target >= 50x)")
PY
