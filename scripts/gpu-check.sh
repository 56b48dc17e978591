#!/usr/bin/env bash
# Every GPU test and benchmark of the CUDA backend in one command, on a machine with an NVIDIA GPU.
#
#   bash scripts/gpu-check.sh              # builds with cargo (feature cuda only: no MPI/HDF5 needed)
#   bash scripts/gpu-check.sh gpu-bin      # uses prebuilt binaries (a GPU machine without cargo/registry):
#                                          # make them on a build machine with `bash scripts/gpu-check.sh --build gpu-bin`
#
# Prints each kernel's largest error against the CPU backend (tests/cuda/), then the benchmarks:
# (GPU_CHECK_PEERS=0 skips the PyTorch peers, GPU_CHECK_COUNTDOWN=0 the Countdown job,
# GPU_CHECK_FULL=1 runs that job whole instead of its short version)
# attention fwd+bwd vs PyTorch SDPA on the same shape (ratio), a train step of a ~0.5B
# Qwen2-shaped model (tokens/s, MFU), and writes them to $OUT (default gpu-check-out/) for
# docs/benchmarks.md. Needs libcuda, libnvrtc, libcublas on the loader path (PyTorch's wheels
# carry the last two: this script adds their directories) and, for the peer, python3 with torch.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"

if [ "${1:-}" = "--build" ]; then
    dest="${2:-gpu-bin}"
    mkdir -p "$dest"
    cargo build --release --no-default-features --features cuda
    cargo test --release --no-default-features --features cuda --test cuda --no-run 2>&1 | tee /tmp/gpu-build.log
    cp target/release/arbor "$dest/arbor"
    test_bin="$(grep -o 'target/release/deps/cuda-[0-9a-f]*' /tmp/gpu-build.log | tail -1)"
    cp "$test_bin" "$dest/cuda-tests"
    # without debug info both fit the device tool's 64 MiB carry limit
    strip "$dest/arbor" "$dest/cuda-tests" 2>/dev/null || true
    echo "gpu-check: binaries in $dest/ (arbor, cuda-tests): $(du -sh "$dest" | cut -f1)"
    exit 0
fi

# CUDA libraries shipped inside Python wheels (torch's nvidia-* packages), if any
pylibs="$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
dirs = set()
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(base, "nvidia", "*", "lib")):
        dirs.add(lib)
print(":".join(sorted(dirs)))
PY
)"
if [ -n "$pylibs" ]; then
    export LD_LIBRARY_PATH="$pylibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# and the toolkit's own, when installed
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    if [ -d "$d" ]; then export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"; fi
done
# NCCL ships libnccl.so.2 only; cudarc looks for libnccl.so
ncclso="$(ls ${pylibs//:/\/libnccl.so.2 }/libnccl.so.2 2>/dev/null | head -1 || true)"
if [ -n "$ncclso" ]; then
    mkdir -p "$out/lib" && ln -sf "$ncclso" "$out/lib/libnccl.so"
    export LD_LIBRARY_PATH="$PWD/$out/lib:$LD_LIBRARY_PATH"
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt" || true

if [ -n "${1:-}" ]; then
    arbor="$1/arbor"
    tests="$1/cuda-tests"
else
    cargo build --release --no-default-features --features cuda
    arbor=target/release/arbor
    tests="cargo test --release --no-default-features --features cuda --test cuda --"
fi

# from here on a failing step does not stop the rest (one GPU session should bring back
# everything it can); the exit status says at the end whether anything failed
set +e
tests_rc=0
echo "== kernel and train-step tests (GPU vs CPU; a missing device or NVRTC fails them)"
ARBOR_REQUIRE_GPU=1 $tests --nocapture --test-threads 1 2>&1 | tee "$out/tests.txt" || tests_rc=1
if grep -q "skipped: no CUDA device" "$out/tests.txt"; then
    echo "gpu-check: the tests found no CUDA device" >&2
    exit 1
fi

echo "== the device's ceilings: copy bandwidth, product rate of each dtype at a 0.5B training shape"
"$arbor" bench gpu --kind ceilings --batch 4 --seq 1024 | tee "$out/ceilings.json"
echo "== attention fwd+bwd vs PyTorch SDPA"
shape=(--batch 8 --seq 1024 --heads 14 --kv-heads 2 --head-dim 64)
"$arbor" bench gpu --kind attention "${shape[@]}" | tee "$out/attention.json"
"$arbor" bench gpu --kind attention --dtype bf16 "${shape[@]}" | tee "$out/attention_bf16.json"
"$arbor" bench gpu --kind attention --dtype bf16 --batch 4 --heads 16 --kv-heads 4 --head-dim 128 | tee "$out/attention_bf16_d128.json"
# the backward's other dK/dV plan (one block loops over a GQA group's heads), for the record
"$arbor" bench gpu --kind attention --dkdv grouped "${shape[@]}" | tee "$out/attention_grouped.json"
"$arbor" bench gpu --kind attention --dtype bf16 --dkdv grouped "${shape[@]}" | tee "$out/attention_bf16_grouped.json"
if python3 -c "import torch" 2>/dev/null; then
    python3 scripts/peer/sdpa_bench.py "${shape[@]}" --dtype f32 | tee "$out/sdpa.json"
    python3 scripts/peer/sdpa_bench.py "${shape[@]}" --dtype bf16 | tee "$out/sdpa_bf16.json"
    python3 scripts/peer/sdpa_bench.py --batch 4 --seq 1024 --heads 16 --kv-heads 4 --head-dim 128 --dtype bf16 \
        | tee "$out/sdpa_bf16_d128.json"
    python3 - "$out" <<'PY'
import json, os, sys
d = sys.argv[1]
for ours, peer in (("attention.json", "sdpa.json"), ("attention_grouped.json", "sdpa.json"),
                   ("attention_bf16.json", "sdpa_bf16.json"),
                   ("attention_bf16_grouped.json", "sdpa_bf16.json"),
                   ("attention_bf16_d128.json", "sdpa_bf16_d128.json")):
    if not (os.path.exists(f"{d}/{ours}") and os.path.exists(f"{d}/{peer}")):
        continue
    a = json.load(open(f"{d}/{ours}")); p = json.load(open(f"{d}/{peer}"))
    print(f"attention fwd+bwd ({a['dtype']}, dK/dV {a.get('dkdv', '-')}, d {a['head_dim']}): arbor {a['fwd_ms']:.2f} + {a['bwd_ms']:.2f} ms, torch SDPA {p.get('dtype')} "
          f"{p['fwd_bwd_ms']:.2f} ms, arbor speed = {p['fwd_bwd_ms'] / a['fwd_bwd_ms']:.2f}x SDPA ({a['device']})")
PY
fi

echo "== train step, Qwen2-0.5B shape (random weights): f32, then tf32 and bf16 products ([train] dtype)"
"$arbor" bench gpu --kind train-step --model-config configs/models/qwen2-0.5b-shape --batch 4 --seq 1024 \
    | tee "$out/train_step.json"
for dt in tf32 bf16; do
    "$arbor" bench gpu --kind train-step --dtype "$dt" --model-config configs/models/qwen2-0.5b-shape --batch 4 --seq 1024 \
        | tee "$out/train_step_$dt.json"
done
echo "== greedy generation (device KV cache), bench-tiny and the 0.5B shape"
"$arbor" bench gpu --kind generate --model-config configs/models/bench-tiny --batch 64 | tee "$out/generate_tiny.json"
"$arbor" bench gpu --kind generate --model-config configs/models/qwen2-0.5b-shape --batch 64 --new-tokens 256 \
    | tee "$out/generate_0.5b.json"
echo "== sampled generation (tokens drawn on the device), the 0.5B shape, batch 16 / 64 / 256"
for b in 16 64 256; do
    "$arbor" bench gpu --kind generate --sample --model-config configs/models/qwen2-0.5b-shape --batch "$b" --warmup 1 --steps 2 \
        --new-tokens 64 | tee "$out/generate_sampled_0.5b_b$b.json"
done
echo "== greedy generation with bf16 products, the 0.5B shape, batch 256, 16 + 256 tokens"
"$arbor" bench gpu --kind generate --dtype bf16 --model-config configs/models/qwen2-0.5b-shape --batch 256 --new-tokens 256 \
    --warmup 1 --steps 2 | tee "$out/generate_greedy_0.5b_b256_bf16.json"
"$arbor" bench gpu --kind generate --graphs --dtype bf16 --model-config configs/models/qwen2-0.5b-shape --batch 256 \
    --new-tokens 256 --warmup 1 --steps 2 | tee "$out/generate_greedy_0.5b_b256_bf16_graphs.json"
# the decode attention's other kernel (one block per query head, each reading the group's cache)
"$arbor" bench gpu --kind generate --decode-attn per-head --dtype bf16 --model-config configs/models/qwen2-0.5b-shape \
    --batch 256 --new-tokens 256 --warmup 1 --steps 2 | tee "$out/generate_greedy_0.5b_b256_bf16_per_head_attn.json"
echo "== decode steps replayed as CUDA graphs (opt-in), bf16, batch 16 / 256"
for b in 16 256; do
    "$arbor" bench gpu --kind generate --sample --graphs --dtype bf16 --model-config configs/models/qwen2-0.5b-shape \
        --batch "$b" --warmup 1 --steps 2 --new-tokens 64 | tee "$out/generate_sampled_0.5b_b${b}_bf16_graphs.json"
done
echo "== the same with bf16 products (decoder weights rounded once per version), batch 16 / 256"
for b in 16 256; do
    "$arbor" bench gpu --kind generate --sample --dtype bf16 --model-config configs/models/qwen2-0.5b-shape --batch "$b" \
        --warmup 1 --steps 2 --new-tokens 64 | tee "$out/generate_sampled_0.5b_b${b}_bf16.json"
done
echo "== one GRPO step on the device (sampled generation, recompute, backward, AdamW), the 0.5B shape"
"$arbor" bench gpu --kind rl-step --model-config configs/models/qwen2-0.5b-shape --prompts 16 --samples 8 \
    --new-tokens 64 --steps 2 --warmup 1 | tee "$out/rl_step_0.5b.json"
"$arbor" bench gpu --kind rl-step --dtype bf16 --model-config configs/models/qwen2-0.5b-shape --prompts 16 --samples 8 \
    --new-tokens 64 --steps 2 --warmup 1 | tee "$out/rl_step_0.5b_bf16.json"
# the same with decode graphs (rows padded to buckets as sequences finish: cuda::graphs)
ARBOR_CUDA_GRAPHS=1 "$arbor" bench gpu --kind rl-step --dtype bf16 --model-config configs/models/qwen2-0.5b-shape --prompts 16 \
    --samples 8 --new-tokens 64 --steps 2 --warmup 1 | tee "$out/rl_step_0.5b_bf16_graphs.json"
if [ "${GPU_CHECK_PEERS:-1}" = "1" ] && python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "== PyTorch / transformers peers on the same GPU and shapes (f32 and bf16)"
    for dt in f32 bf16; do
        python3 scripts/peer/torch_train_step.py --device cuda --dtype "$dt" --model-config configs/models/qwen2-0.5b-shape \
            --batch 4 --seq 1024 --steps 5 --warmup 2 | tee "$out/peer_train_step_$dt.json" || true
        for b in 16 64 256; do
            python3 scripts/peer/hf_generate.py --device cuda --dtype "$dt" --model-config configs/models/qwen2-0.5b-shape \
                --batch "$b" --new-tokens 64 --reps 2 | tee "$out/peer_generate_sampled_0.5b_b${b}_$dt.json" || true
        done
    done
    # the peer of the bf16 greedy figure (issue: arbor >= 10x transformers bf16 at batch 256)
    python3 scripts/peer/hf_generate.py --device cuda --dtype bf16 --greedy --model-config configs/models/qwen2-0.5b-shape \
        --batch 256 --new-tokens 256 --reps 1 | tee "$out/peer_generate_greedy_0.5b_b256_bf16.json" || true
    python3 - "$out" <<'PY' | tee "$out/ratios.txt"
import json, os, sys
d = sys.argv[1]
def load(name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None
def ratio(what, ours, peer):
    a, p = load(ours), load(peer)
    if a and p and a.get("tokens_per_s") and p.get("tokens_per_s"):
        print(f"{what}: arbor {a['tokens_per_s']:,.0f} tok/s, peer {p['tokens_per_s']:,.0f} tok/s "
              f"({p.get('dtype')}), arbor = {a['tokens_per_s'] / p['tokens_per_s']:.2f}x ({p.get('device')})")
for ours in ("tf32", "bf16"):
    ratio(f"train step 0.5B 4x1024, arbor {ours} products vs torch bf16", f"train_step_{ours}.json", "peer_train_step_bf16.json")
ratio("greedy generation 0.5B batch 256 (16 + 256 tokens), arbor bf16 vs transformers bf16",
      "generate_greedy_0.5b_b256_bf16.json", "peer_generate_greedy_0.5b_b256_bf16.json")
ratio("greedy generation 0.5B batch 256 (16 + 256 tokens), arbor bf16 + CUDA graphs vs transformers bf16",
      "generate_greedy_0.5b_b256_bf16_graphs.json", "peer_generate_greedy_0.5b_b256_bf16.json")
for b in (16, 256):
    ratio(f"sampled generation 0.5B batch {b}, arbor bf16 products vs transformers bf16",
          f"generate_sampled_0.5b_b{b}_bf16.json", f"peer_generate_sampled_0.5b_b{b}_bf16.json")
for dt in ("f32", "bf16"):
    ratio(f"train step 0.5B 4x1024 vs torch {dt}", "train_step.json", f"peer_train_step_{dt}.json")
    for b in (16, 64, 256):
        ratio(f"sampled generation 0.5B batch {b} vs transformers {dt}", f"generate_sampled_0.5b_b{b}.json",
              f"peer_generate_sampled_0.5b_b{b}_{dt}.json")
PY
fi
if [ "${GPU_CHECK_COUNTDOWN:-1}" = "1" ]; then
    echo "== Countdown SFT then GRPO on the GPU (configs/countdown-gpu.toml; GPU_CHECK_FULL=1: the whole job, ~10 min)"
    cfg=configs/countdown-gpu.toml
    if [ "${GPU_CHECK_FULL:-0}" != "1" ]; then
        # a short version of the job: same model and settings, fewer steps and eval problems
        sed -e 's/^steps = 3000/steps = 600/' -e 's/^steps = 400/steps = 60/' -e 's/^eval_every = 100/eval_every = 30/' \
            -e 's/^eval_problems = 500/eval_problems = 200/' -e 's/^name = "countdown-gpu"/name = "countdown-gpu-short"/' \
            "$cfg" > "$out/countdown-gpu-short.toml"
        cfg="$out/countdown-gpu-short.toml"
    fi
    t0=$SECONDS
    "$arbor" train --config "$cfg" --out-dir "$out/runs" > "$out/countdown_gpu.txt" 2>&1 || echo "gpu-check: the Countdown job failed" >&2
    echo "wall time: $((SECONDS - t0)) s" | tee -a "$out/countdown_gpu.txt"
    grep -E "held-out|eval|error|wall time" "$out/countdown_gpu.txt" || true
    # keep the metrics, drop the checkpoints (hundreds of MB)
    cp "$out"/runs/*/metrics.jsonl "$out/countdown_gpu_metrics.jsonl" 2>/dev/null || true
    rm -rf "$out/runs"
fi
echo "gpu-check: results in $out/"
python3 scripts/gpu_summary.py "$out" | tee "$out/summary.txt" || true
if [ "$tests_rc" != 0 ]; then
    echo "gpu-check: some GPU tests FAILED (see $out/tests.txt)" >&2
    exit 1
fi
