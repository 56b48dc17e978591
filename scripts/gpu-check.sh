#!/usr/bin/env bash
# Every GPU test and benchmark of the CUDA backend in one command, on a machine with an NVIDIA GPU.
#
#   bash scripts/gpu-check.sh              # builds with cargo (feature cuda only: no MPI/HDF5 needed)
#   bash scripts/gpu-check.sh gpu-bin      # uses prebuilt binaries (a GPU machine without cargo/registry):
#                                          # make them on a build machine with `bash scripts/gpu-check.sh --build gpu-bin`
#
# Prints each kernel's largest error against the CPU backend (tests/cuda/), then the benchmarks,
# each beside its PyTorch peer on the same GPU and shape, and writes them to $OUT (default
# gpu-check-out/) for docs/benchmarks.md. Parts, in this order:
#   tests     the GPU tests (GPU vs CPU)
#   headline  the figures the open issues ask for, with their peers: bf16 attention (head dims 64
#             and 128) vs SDPA, the bf16 train step vs torch, bf16 greedy and sampled generation
#             vs transformers, the bf16 rl-step
#   countdown configs/countdown-gpu.toml, short (GPU_CHECK_FULL=1: whole, ~10 min)
#   variants  f32 and tf32, the other kernel plans (grouped dK/dV, per-head decode attention),
#             decode graphs elsewhere, f32 generation and their peers
# GPU_CHECK_PARTS=tests,headline (comma-separated) runs only those parts; GPU_CHECK_BUDGET_S=N
# starts no benchmark after N seconds (a device session of a few minutes brings back the most
# important figures first); GPU_CHECK_PEERS=0 skips the PyTorch peers, GPU_CHECK_COUNTDOWN=0 the
# Countdown job. Needs libcuda, libnvrtc, libcublas on the loader path (PyTorch's wheels
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
t_start=$SECONDS
budget="${GPU_CHECK_BUDGET_S:-0}"
parts=",${GPU_CHECK_PARTS:-tests,headline,countdown,variants},"
[ "${GPU_CHECK_COUNTDOWN:-1}" = "1" ] || parts="${parts//,countdown,/,}"
: > "$out/skipped.txt"
# part NAME: whether part NAME is selected
part() { case "$parts" in *",$1,"*) return 0 ;; *) echo "== part $1: not selected" | tee -a "$out/skipped.txt"; return 1 ;; esac; }
# in_budget WHAT: whether the time budget (if any) leaves room to start WHAT
in_budget() {
    if [ "$budget" != 0 ] && [ $((SECONDS - t_start)) -ge "$budget" ]; then
        echo "skipped (time budget of $budget s spent): $1" | tee -a "$out/skipped.txt"
        return 1
    fi
}
# run NAME CMD...: CMD's output (a JSON line) to $out/NAME.json, within the budget
run() {
    local name="$1"; shift
    in_budget "$name" || return 0
    "$@" | tee "$out/$name.json"
}
peers=0
if [ "${GPU_CHECK_PEERS:-1}" = "1" ] && python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
    peers=1
fi
# peer NAME CMD...: a PyTorch peer, when torch and transformers are there
peer() { [ "$peers" = 1 ] && run "$@"; }
# done_part NAME: the part's wall time to timings.txt, and a summary so far (a run stopped by a
# time limit still leaves one)
t_part=$SECONDS
done_part() {
    echo "$1: $((SECONDS - t_part)) s" >> "$out/timings.txt"
    t_part=$SECONDS
    python3 scripts/gpu_summary.py "$out" > "$out/summary.txt" 2>/dev/null || true
}
: > "$out/timings.txt"
q05=(--model-config configs/models/qwen2-0.5b-shape)
att64=(--batch 8 --seq 1024 --heads 14 --kv-heads 2 --head-dim 64)
att128=(--batch 4 --seq 1024 --heads 16 --kv-heads 4 --head-dim 128)

if part tests; then
    echo "== kernel and train-step tests (GPU vs CPU; a missing device or NVRTC fails them)"
    ARBOR_REQUIRE_GPU=1 $tests --nocapture --test-threads 1 2>&1 | tee "$out/tests.txt" || tests_rc=1
    if grep -q "skipped: no CUDA device" "$out/tests.txt"; then
        echo "gpu-check: the tests found no CUDA device" >&2
        exit 1
    fi
fi
done_part tests

if part headline; then
    echo "== the device's ceilings: copy bandwidth, product rate of each dtype at a 0.5B training shape"
    run ceilings "$arbor" bench gpu --kind ceilings --batch 4 --seq 1024
    echo "== bf16 attention fwd+bwd vs PyTorch SDPA bf16, head dims 64 and 128"
    run attention_bf16 "$arbor" bench gpu --kind attention --dtype bf16 "${att64[@]}"
    peer sdpa_bf16 python3 scripts/peer/sdpa_bench.py "${att64[@]}" --dtype bf16
    run attention_bf16_d128 "$arbor" bench gpu --kind attention --dtype bf16 "${att128[@]}"
    peer sdpa_bf16_d128 python3 scripts/peer/sdpa_bench.py "${att128[@]}" --dtype bf16
    echo "== bf16 train step, Qwen2-0.5B shape (random weights), 4 x 1024 tokens, vs torch bf16"
    run train_step_bf16 "$arbor" bench gpu --kind train-step --dtype bf16 "${q05[@]}" --batch 4 --seq 1024
    peer peer_train_step_bf16 python3 scripts/peer/torch_train_step.py --device cuda --dtype bf16 "${q05[@]}" \
        --batch 4 --seq 1024 --steps 5 --warmup 2
    echo "== bf16 greedy generation, 0.5B shape, batch 256, 16 + 256 tokens (eager, CUDA graphs) vs transformers bf16"
    run generate_greedy_0.5b_b256_bf16 "$arbor" bench gpu --kind generate --dtype bf16 "${q05[@]}" --batch 256 \
        --new-tokens 256 --warmup 1 --steps 2
    run generate_greedy_0.5b_b256_bf16_graphs "$arbor" bench gpu --kind generate --graphs --dtype bf16 "${q05[@]}" \
        --batch 256 --new-tokens 256 --warmup 1 --steps 2
    peer peer_generate_greedy_0.5b_b256_bf16 python3 scripts/peer/hf_generate.py --device cuda --dtype bf16 --greedy \
        "${q05[@]}" --batch 256 --new-tokens 256 --reps 1
    echo "== bf16 sampled generation (tokens drawn on the device), 0.5B shape, batch 16 / 256, eager and graphs"
    for b in 16 256; do
        run "generate_sampled_0.5b_b${b}_bf16" "$arbor" bench gpu --kind generate --sample --dtype bf16 "${q05[@]}" \
            --batch "$b" --warmup 1 --steps 2 --new-tokens 64
        run "generate_sampled_0.5b_b${b}_bf16_graphs" "$arbor" bench gpu --kind generate --sample --graphs --dtype bf16 \
            "${q05[@]}" --batch "$b" --warmup 1 --steps 2 --new-tokens 64
        peer "peer_generate_sampled_0.5b_b${b}_bf16" python3 scripts/peer/hf_generate.py --device cuda --dtype bf16 \
            "${q05[@]}" --batch "$b" --new-tokens 64 --reps 2
    done
    echo "== one GRPO step on the device (sampled generation, recompute, backward, AdamW), bf16, the 0.5B shape"
    run rl_step_0.5b_bf16 "$arbor" bench gpu --kind rl-step --dtype bf16 "${q05[@]}" --prompts 16 --samples 8 \
        --new-tokens 64 --steps 2 --warmup 1
fi
done_part headline

if part countdown && in_budget countdown; then
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
done_part countdown

if part variants; then
    echo "== attention: f32, and the backward's other dK/dV plan (one block loops over a GQA group's heads)"
    run attention "$arbor" bench gpu --kind attention "${att64[@]}"
    peer sdpa python3 scripts/peer/sdpa_bench.py "${att64[@]}" --dtype f32
    run attention_grouped "$arbor" bench gpu --kind attention --dkdv grouped "${att64[@]}"
    run attention_bf16_grouped "$arbor" bench gpu --kind attention --dtype bf16 --dkdv grouped "${att64[@]}"
    echo "== train step with f32 and tf32 products, vs torch f32"
    run train_step "$arbor" bench gpu --kind train-step "${q05[@]}" --batch 4 --seq 1024
    run train_step_tf32 "$arbor" bench gpu --kind train-step --dtype tf32 "${q05[@]}" --batch 4 --seq 1024
    peer peer_train_step_f32 python3 scripts/peer/torch_train_step.py --device cuda --dtype f32 "${q05[@]}" \
        --batch 4 --seq 1024 --steps 5 --warmup 2
    echo "== generation with f32 products: bench-tiny, the 0.5B shape greedy and sampled (batch 16 / 64 / 256)"
    run generate_tiny "$arbor" bench gpu --kind generate --model-config configs/models/bench-tiny --batch 64
    run generate_0.5b "$arbor" bench gpu --kind generate "${q05[@]}" --batch 64 --new-tokens 256
    for b in 16 64 256; do
        run "generate_sampled_0.5b_b$b" "$arbor" bench gpu --kind generate --sample "${q05[@]}" --batch "$b" --warmup 1 \
            --steps 2 --new-tokens 64
        peer "peer_generate_sampled_0.5b_b${b}_f32" python3 scripts/peer/hf_generate.py --device cuda --dtype f32 \
            "${q05[@]}" --batch "$b" --new-tokens 64 --reps 2
    done
    peer peer_generate_sampled_0.5b_b64_bf16 python3 scripts/peer/hf_generate.py --device cuda --dtype bf16 "${q05[@]}" \
        --batch 64 --new-tokens 64 --reps 2
    echo "== the decode attention's other kernel (one block per query head, each reading the group's cache), bf16"
    run generate_greedy_0.5b_b256_bf16_per_head_attn "$arbor" bench gpu --kind generate --decode-attn per-head \
        --dtype bf16 "${q05[@]}" --batch 256 --new-tokens 256 --warmup 1 --steps 2
    echo "== long contexts: bf16 sampled generation, batch 16, 16 + 2048 tokens, each row's positions split over"
    echo "   blocks to fill the GPU (the default) and not split (one split longer than the context)"
    for split in 0 1000000; do
        run "generate_sampled_0.5b_b16_2k_bf16_split$split" "$arbor" bench gpu --kind generate --sample --dtype bf16 \
            "${q05[@]}" --batch 16 --warmup 1 --steps 1 --new-tokens 2048 --decode-split "$split"
    done
    echo "== the GRPO step with f32 products, and bf16 with decode graphs (rows padded to buckets as sequences finish)"
    run rl_step_0.5b "$arbor" bench gpu --kind rl-step "${q05[@]}" --prompts 16 --samples 8 --new-tokens 64 --steps 2 \
        --warmup 1
    in_budget rl_step_0.5b_bf16_graphs && ARBOR_CUDA_GRAPHS=1 "$arbor" bench gpu --kind rl-step --dtype bf16 "${q05[@]}" \
        --prompts 16 --samples 8 --new-tokens 64 --steps 2 --warmup 1 | tee "$out/rl_step_0.5b_bf16_graphs.json"
fi
done_part variants

# every ratio whose two figures exist
python3 - "$out" <<'PY' | tee "$out/ratios.txt"
import json, os, sys
d = sys.argv[1]
def load(name):
    p = os.path.join(d, name)
    try:
        return json.loads(open(p).read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
for ours, peer in (("attention_bf16.json", "sdpa_bf16.json"), ("attention_bf16_d128.json", "sdpa_bf16_d128.json"),
                   ("attention_bf16_grouped.json", "sdpa_bf16.json"), ("attention.json", "sdpa.json"),
                   ("attention_grouped.json", "sdpa.json")):
    a, p = load(ours), load(peer)
    if a and p and a.get("fwd_bwd_ms") and p.get("fwd_bwd_ms"):
        print(f"attention fwd+bwd ({a['dtype']}, dK/dV {a.get('dkdv', '-')}, d {a['head_dim']}): arbor {a['fwd_ms']:.2f} + "
              f"{a['bwd_ms']:.2f} ms, torch SDPA {p.get('dtype')} {p['fwd_bwd_ms']:.2f} ms, arbor speed = "
              f"{p['fwd_bwd_ms'] / a['fwd_bwd_ms']:.2f}x SDPA ({a['device']})")
def ratio(what, ours, peer):
    a, p = load(ours), load(peer)
    if a and p and a.get("tokens_per_s") and p.get("tokens_per_s"):
        print(f"{what}: arbor {a['tokens_per_s']:,.0f} tok/s, peer {p['tokens_per_s']:,.0f} tok/s "
              f"({p.get('dtype')}), arbor = {a['tokens_per_s'] / p['tokens_per_s']:.2f}x ({p.get('device')})")
for ours in ("bf16", "tf32"):
    ratio(f"train step 0.5B 4x1024, arbor {ours} products vs torch bf16", f"train_step_{ours}.json", "peer_train_step_bf16.json")
for g in ("", "_graphs"):
    ratio(f"greedy generation 0.5B batch 256 (16 + 256 tokens), arbor bf16{' + CUDA graphs' if g else ''} vs transformers bf16",
          f"generate_greedy_0.5b_b256_bf16{g}.json", "peer_generate_greedy_0.5b_b256_bf16.json")
for b in (16, 256):
    for g in ("", "_graphs"):
        ratio(f"sampled generation 0.5B batch {b}, arbor bf16{' + CUDA graphs' if g else ''} vs transformers bf16",
              f"generate_sampled_0.5b_b{b}_bf16{g}.json", f"peer_generate_sampled_0.5b_b{b}_bf16.json")
ratio("train step 0.5B 4x1024, f32 vs torch f32", "train_step.json", "peer_train_step_f32.json")
for b in (16, 64, 256):
    ratio(f"sampled generation 0.5B batch {b}, f32 vs transformers f32", f"generate_sampled_0.5b_b{b}.json",
          f"peer_generate_sampled_0.5b_b{b}_f32.json")
a, b = load("generate_sampled_0.5b_b16_2k_bf16_split0.json"), load("generate_sampled_0.5b_b16_2k_bf16_split1000000.json")
if a and b and a.get("tokens_per_s") and b.get("tokens_per_s"):
    print(f"sampled generation bf16, batch 16, 16 + 2048 tokens: rows split over blocks {a['tokens_per_s']:,.0f} tok/s, "
          f"unsplit {b['tokens_per_s']:,.0f} tok/s, split = {a['tokens_per_s'] / b['tokens_per_s']:.2f}x unsplit")
# issue 16: tokens/s must grow with the batch (batch 256 >= 4x batch 16)
for suffix in ("_bf16", "_bf16_graphs", ""):
    lo, hi = load(f"generate_sampled_0.5b_b16{suffix}.json"), load(f"generate_sampled_0.5b_b256{suffix}.json")
    if lo and hi and lo.get("tokens_per_s") and hi.get("tokens_per_s"):
        print(f"sampled generation{suffix or ' f32'}: batch 256 = {hi['tokens_per_s'] / lo['tokens_per_s']:.2f}x batch 16")
PY
echo "gpu-check: results in $out/ ($((SECONDS - t_start)) s)"
python3 scripts/gpu_summary.py "$out" | tee "$out/summary.txt" || true
# the row of docs/benchmarks.md's results table
python3 scripts/gpu_summary.py --markdown "$out" | tee "$out/benchmarks_row.md" || true
if [ "$tests_rc" != 0 ]; then
    echo "gpu-check: some GPU tests FAILED (see $out/tests.txt)" >&2
    exit 1
fi
