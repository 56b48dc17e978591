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
#   tests     the GPU tests (GPU vs CPU); the short Countdown job runs beside them
#   headline  the figures the open issues ask for, first, each with its peer: bf16 attention at head
#             dims 64 and 128 vs SDPA, the bf16 train step vs torch, bf16 greedy (batch 256) and
#             sampled (16, 256) generation vs transformers, the bf16 rl-step, the same generation
#             with f32 products; then decode graphs, the profiles, 64-row blocks and wgmma
#   countdown configs/countdown-gpu.toml, short (GPU_CHECK_FULL=1: whole, ~10 min), unless it ran
#             beside the tests
#   variants  the memory pool released at every sync (the driver's default) against kept, f32 and
#             tf32, the other kernel plans (grouped dK/dV, the bf16 train step with 64-row
#             blocks and with the wgmma attention, per-head decode attention), batch 64 and long
#             contexts, f32 peers, the rl-step in f32, with graphs and at issue 16's 64 x 8 x 256,
#             a Qwen3 shape's bf16 train step and generation with their peers
#   async     an [async] GRPO job, 1 trainer + 1 rollout rank, started by arbor launch
# GPU_CHECK_PARTS=tests,headline (comma-separated) runs only those parts; GPU_CHECK_BUDGET_S=N
# starts no command after N seconds, nor one that needs more time than is left (a device session
# of a few minutes brings back the most important figures first), and stops any command still
# running GPU_CHECK_GRACE_S (default 60) seconds after that: with a hard limit of L seconds on the
# whole run, pass N <= L - GRACE - 30. After every part the summary, the ratios and the markdown
# row so far are written, so a run cut short still leaves them. GPU_CHECK_PEERS=0 skips the
# PyTorch peers, GPU_CHECK_COUNTDOWN=0 the Countdown job. Each command's stderr goes to NAME.err.
# With both tests and countdown selected, the short Countdown job runs beside the tests (neither is
# timed) and is stopped GPU_CHECK_COUNTDOWN_WAIT_S (default 60) seconds after they end.
# GPU_CHECK_PACK=1 (a device lease that brings back only a few files): the ~100 files are written
# to a scratch folder and $OUT receives gpu-check.tgz (all of them) beside summary.txt, ratios.txt,
# benchmarks_row.md, tests.txt, skipped.txt and failed.txt, refreshed after every part.
# GPU_CHECK_REHEARSE=1: a rehearsal on the SIMT host emulator (docs/cuda.md; LD_LIBRARY_PATH
# names target/simt): every command of the run, with a tiny model, shapes and jobs, so that a
# flag, a path or a summary line that would fail on the GPU fails here first (tests/cuda/
# rehearsal.rs runs it in make test). Any command that fails is listed in failed.txt and makes the
# exit status 1. Needs libcuda,
# libnvrtc, libcublas on the loader path (PyTorch's wheels carry the last two: this script adds
# their directories) and, for the peer, python3 with torch.
set -euo pipefail
cd "$(dirname "$0")/.."
# the runs choose the attention's products by their flags (a wgmma baseline would compare with itself)
unset ARBOR_ATTN_MMA
dest="${OUT:-gpu-check-out}"
out="$dest"
if [ "${GPU_CHECK_PACK:-0}" = "1" ] && [ "${1:-}" != "--build" ]; then
    out="${TMPDIR:-/tmp}/gpu-check-work"
    rm -rf "$out"
fi
mkdir -p "$out" "$dest"

if [ "${1:-}" = "--build" ]; then
    dest="${2:-gpu-bin}"
    mkdir -p "$dest"
    # a target folder of its own: the default build's binaries are left as they are
    export CARGO_TARGET_DIR="${GPU_BUILD_TARGET:-target/gpu-bin}"
    cargo build --release --no-default-features --features cuda
    cp "$CARGO_TARGET_DIR/release/arbor" "$dest/arbor"
    # the test binary's path, from cargo's own report of what it built
    test_bin="$(cargo test --release --no-default-features --features cuda --test cuda --no-run \
        --message-format=json 2>/dev/null | python3 -c '
import json, sys
exe = [m.get("executable") for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact"
       and m.get("target", {}).get("name") == "cuda" and m.get("executable")]
print(exe[-1] if exe else "")')"
    if [ -z "$test_bin" ]; then
        echo "gpu-check --build: cargo reported no test binary for tests/cuda (run the cargo test command above to see why)" >&2
        exit 1
    fi
    cp "$test_bin" "$dest/cuda-tests"
    # without debug info both fit the device tool's 64 MiB carry limit
    strip "$dest/arbor" "$dest/cuda-tests" 2>/dev/null || true
    git rev-parse HEAD > "$dest/COMMIT" 2>/dev/null || true
    if ! git diff --quiet HEAD 2>/dev/null; then echo "(uncommitted changes)" >> "$dest/COMMIT"; fi
    echo "gpu-check: binaries in $dest/ (arbor, cuda-tests) of $(head -1 "$dest/COMMIT"): $(du -sh "$dest" | cut -f1)"
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
# NCCL ships libnccl.so.2 only; cudarc looks for libnccl.so (the link lives outside $OUT)
ncclso="$(ls ${pylibs//:/\/libnccl.so.2 }/libnccl.so.2 2>/dev/null | head -1 || true)"
if [ -n "$ncclso" ]; then
    libdir="${TMPDIR:-/tmp}/gpu-check-lib"
    mkdir -p "$libdir" && ln -sf "$ncclso" "$libdir/libnccl.so"
    export LD_LIBRARY_PATH="$libdir:$LD_LIBRARY_PATH"
fi
# compiled kernels shared by every arbor process of the run, wherever $HOME is
export ARBOR_PTX_CACHE="${ARBOR_PTX_CACHE:-${TMPDIR:-/tmp}/arbor-ptx}"

rehearse="${GPU_CHECK_REHEARSE:-0}"
if [ "$rehearse" = 1 ]; then
    echo "arbor SIMT host emulator (rehearsal: tiny shapes, no figure is a GPU's)" | tee "$out/device.txt"
else
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt" || true
fi
# Hopper (compute capability 9.0) runs the wgmma attention; elsewhere its runs are skipped (the
# emulator is an sm_90 unless ARBOR_SIMT_CC says otherwise)
hopper=0
if [ "$rehearse" = 1 ]; then
    [ "${ARBOR_SIMT_CC:-90}" != 90 ] || hopper=1
elif [ "$(nvidia-smi -i "${ARBOR_CUDA_DEVICE:-0}" --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 |
    tr -d ' ')" = "9.0" ]; then
    hopper=1
fi

if [ -n "${1:-}" ]; then
    arbor="$1/arbor"
    tests="$1/cuda-tests"
    chmod +x "$arbor" "$tests" 2>/dev/null || true
    cp "$1/COMMIT" "$out/commit.txt" 2>/dev/null || true
else
    cargo build --release --no-default-features --features cuda
    arbor=target/release/arbor
    tests="cargo test --release --no-default-features --features cuda --test cuda --"
fi

# a binary that cannot start (built for another machine, not carried) fails every arbor command:
# say so once, up front
: > "$out/skipped.txt"
: > "$out/failed.txt"
"$arbor" --version > /dev/null 2> "$out/arbor_start.err" \
    || echo "gpu-check: $arbor does not start: $(head -c 300 "$out/arbor_start.err")" | tee -a "$out/skipped.txt" >&2

# from here on a failing step does not stop the rest (one GPU session should bring back
# everything it can); the exit status says at the end whether anything failed
set +e
tests_rc=0
t_start=$SECONDS
budget="${GPU_CHECK_BUDGET_S:-0}"
grace="${GPU_CHECK_GRACE_S:-60}"
parts=",${GPU_CHECK_PARTS:-tests,headline,countdown,variants,async},"
[ "${GPU_CHECK_COUNTDOWN:-1}" = "1" ] || parts="${parts//,countdown,/,}"
# part NAME: whether part NAME is selected
part() { case "$parts" in *",$1,"*) return 0 ;; *) echo "== part $1: not selected" | tee -a "$out/skipped.txt"; return 1 ;; esac; }
# in_budget WHAT [NEED_S]: whether the time budget (if any) leaves NEED_S seconds (default 20)
# to start WHAT
in_budget() {
    local need="${2:-20}"
    if [ "$budget" != 0 ] && [ $((SECONDS - t_start + need)) -gt "$budget" ]; then
        echo "skipped (time budget of $budget s: $((SECONDS - t_start)) s spent, $1 needs about $need s): $1" \
            | tee -a "$out/skipped.txt"
        return 1
    fi
}
# bounded CMD...: CMD, stopped GPU_CHECK_GRACE_S seconds after the budget ends (none without one)
bounded() {
    if [ "$budget" = 0 ]; then "$@"; return; fi
    local left=$((t_start + budget + grace - SECONDS))
    [ "$left" -gt 5 ] || left=5
    timeout -k 10 "$left" "$@"
}
# failed NAME RC [FILE]: NAME ended with exit status RC (not a time limit's; its output: FILE,
# default NAME.err): listed in failed.txt, and the run's exit status will be 1
failed() { echo "failed (exit $2): $1 (see ${3:-$1.err})" | tee -a "$out/failed.txt" >&2; }
# shrink CMD...: the command as it runs (the array `cmd`): in a rehearsal, with a tiny model and
# shapes, one timed step after one warm-up (sizes capped, flags and their combinations kept)
shrink() {
    cmd=()
    local bench=0 steps=0 warmup=0 prev=""
    while [ $# -gt 0 ]; do
        local flag="$1"
        cmd+=("$1")
        shift
        [ "$prev $flag" != "bench gpu" ] || bench=1
        prev="$flag"
        [ "$rehearse" = 1 ] && [ $# -gt 0 ] || continue
        case "$flag" in
        --model-config) cmd+=(configs/models/rehearsal-tiny) ;;
        --batch | --prompts | --samples) cmd+=($(($1 < 2 ? $1 : 2))) ;;
        --seq) cmd+=($(($1 < 64 ? $1 : 64))) ;;
        --new-tokens) cmd+=($(($1 < 6 ? $1 : 6))) ;;
        --steps | --warmup | --reps) cmd+=(1); [ "$flag" != --steps ] || steps=1; [ "$flag" != --warmup ] || warmup=1 ;;
        --heads) cmd+=(4) ;;
        --kv-heads) cmd+=(2) ;;
        *) continue ;;
        esac
        shift
    done
    if [ "$rehearse" = 1 ] && [ "$bench" = 1 ]; then
        [ "$steps" = 1 ] || cmd+=(--steps 1)
        [ "$warmup" = 1 ] || cmd+=(--warmup 1)
    fi
}
# run NAME [--need S] [--cap S] CMD...: CMD's output (a JSON line) to $out/NAME.json, its stderr
# to $out/NAME.err (and the terminal), within the budget; --cap stops CMD after S seconds (a slow
# run must not eat the figures after it)
run() {
    local name="$1" need=20 cap=(); shift
    if [ "${1:-}" = "--need" ]; then need="$2"; shift 2; fi
    if [ "${1:-}" = "--cap" ]; then cap=(timeout -k 5 "$2"); shift 2; fi
    in_budget "$name" "$need" || return 0
    shrink "$@"
    bounded ${cap[@]+"${cap[@]}"} "${cmd[@]}" 2> >(tee "$out/$name.err" >&2) | tee "$out/$name.json"
    local rc=${PIPESTATUS[0]}
    # 124: a time limit ended it (137: killed after the limit's grace); the cap, or the budget's end
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        local why="the budget's end"
        [ ${#cap[@]} = 0 ] || why="its cap of ${cap[3]} s or the budget's end"
        echo "stopped by $why (exit $rc): $name" | tee -a "$out/skipped.txt" >&2
    elif [ "$rc" != 0 ]; then
        failed "$name" "$rc"
    fi
}
# the PyTorch peers: SDPA needs torch on the GPU, the model peers transformers too; why they are
# off goes to skipped.txt
torch_ok=0 hf_ok=0
if [ "${GPU_CHECK_PEERS:-1}" != "1" ]; then
    echo "peers off: GPU_CHECK_PEERS=${GPU_CHECK_PEERS}" >> "$out/skipped.txt"
elif python3 -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" 2>"$out/peers.txt"; then
    torch_ok=1
    if python3 -c "import transformers" 2>>"$out/peers.txt"; then hf_ok=1; fi
fi
[ "$torch_ok" = 1 ] || [ "${GPU_CHECK_PEERS:-1}" != "1" ] \
    || echo "torch peers off: $(tail -1 "$out/peers.txt" 2>/dev/null)" >> "$out/skipped.txt"
[ "$torch_ok" = 0 ] || [ "$hf_ok" = 1 ] || echo "transformers peers off: $(tail -1 "$out/peers.txt")" >> "$out/skipped.txt"
# wgmma_run NAME CMD...: a run of the wgmma attention, on Hopper only
wgmma_run() {
    if [ "$hopper" = 1 ]; then run "$@"; else echo "$1: not a Hopper GPU (no wgmma)" >> "$out/skipped.txt"; fi
}
# sdpa_peer NAME CMD... / peer NAME CMD...: a torch-only peer / a transformers peer
sdpa_peer() { [ "$torch_ok" = 1 ] && run "$@"; }
peer() { [ "$hf_ok" = 1 ] && run "$@"; }
# done_part NAME: the part's wall time to timings.txt, and a summary so far (a run stopped by a
# time limit still leaves one)
t_part=$SECONDS
done_part() {
    echo "$1: $((SECONDS - t_part)) s" >> "$out/timings.txt"
    t_part=$SECONDS
    python3 scripts/gpu_summary.py --ratios "$out" > "$out/ratios.txt" 2>>"$out/summary.err" || true
    python3 scripts/gpu_summary.py "$out" > "$out/summary.txt" 2>>"$out/summary.err" || true
    python3 scripts/gpu_summary.py --markdown "$out" > "$out/benchmarks_row.md" 2>>"$out/summary.err" || true
    if [ "$out" != "$dest" ]; then
        tar czf "$dest/gpu-check.tgz.tmp" -C "$out" . && mv "$dest/gpu-check.tgz.tmp" "$dest/gpu-check.tgz"
        for f in summary.txt ratios.txt benchmarks_row.md tests.txt skipped.txt failed.txt; do
            if [ -f "$out/$f" ]; then cp "$out/$f" "$dest/$f"; fi
        done
    fi
}
: > "$out/timings.txt"
q05=(--model-config configs/models/qwen2-0.5b-shape)
att64=(--batch 8 --seq 1024 --heads 14 --kv-heads 2 --head-dim 64)
att128=(--batch 4 --seq 1024 --heads 16 --kv-heads 4 --head-dim 128)
# a rehearsal's jobs (sed expressions on their configs): the same sections and keys, a tiny model
# (the Countdown job's; the async job's is the CPU default's warm start), a few small steps
tiny_model=(-e '') tiny_run=(-e '')
if [ "$rehearse" = 1 ]; then
    tiny_model=(-e 's/^hidden_size = .*/hidden_size = 64/' -e 's/^intermediate_size = .*/intermediate_size = 128/'
        -e 's/^num_layers = .*/num_layers = 2/' -e 's/^num_heads = .*/num_heads = 4/'
        -e 's/^num_kv_heads = .*/num_kv_heads = 2/')
    tiny_run=(-e 's/^batch_size = .*/batch_size = 8/' -e 's/^eval_problems = .*/eval_problems = 4/'
        -e 's/^eval_every = .*/eval_every = 2/' -e 's/^prompts_per_step = .*/prompts_per_step = 2/'
        -e 's/^samples_per_prompt = .*/samples_per_prompt = 2/' -e 's/^max_new_tokens = .*/max_new_tokens = 8/'
        -e 's/^max_batch = .*/max_batch = 8/' -e 's/^warmup_steps = .*/warmup_steps = 1/'
        -e 's/^checkpoint_every = .*/checkpoint_every = 2/')
fi

# the Countdown job (configs/countdown-gpu.toml; GPU_CHECK_FULL=0: a short version of it, same model
# and settings, fewer steps and evaluation problems), in the background: start_countdown, then
# finish_countdown WAIT_S waits at most WAIT_S seconds (0: until it ends or the budget's grace) and
# stops it if it still runs (SIGTERM: it checkpoints and stops, as on a preemption)
cd_pid=""
start_countdown() {
    local cfg=configs/countdown-gpu.toml
    if [ "$rehearse" = 1 ]; then
        sed "${tiny_model[@]}" "${tiny_run[@]}" -e 's/^steps = .*/steps = 2/' \
            -e 's/^name = "countdown-gpu"/name = "countdown-gpu-rehearsal"/' "$cfg" > "$out/countdown-gpu-rehearsal.toml"
        cfg="$out/countdown-gpu-rehearsal.toml"
    elif [ "${GPU_CHECK_FULL:-0}" != "1" ]; then
        sed -e 's/^steps = 3000/steps = 600/' -e 's/^steps = 400/steps = 60/' -e 's/^eval_every = 100/eval_every = 30/' \
            -e 's/^eval_problems = 500/eval_problems = 200/' -e 's/^eval_problems = 512/eval_problems = 200/' \
            -e 's/^name = "countdown-gpu"/name = "countdown-gpu-short"/' "$cfg" > "$out/countdown-gpu-short.toml"
        cfg="$out/countdown-gpu-short.toml"
    fi
    # the checkpoints (hundreds of MB) stay out of $OUT: only the metrics come back
    cd_runs="${TMPDIR:-/tmp}/gpu-check-runs"
    rm -rf "$cd_runs"
    cd_t0=$SECONDS
    local left=$((t_start + budget + grace - SECONDS))
    [ "$budget" != 0 ] || left=100000
    [ "$left" -gt 5 ] || left=5
    echo "config: $cfg" > "$out/countdown_gpu.txt"
    # it may share the GPU with the tests: its freed memory goes back to the device at each host
    # wait (the driver's default) rather than staying in its pool, out of the tests' reach
    ARBOR_CUDA_POOL=release timeout -k 20 "$left" "$arbor" train --config "$cfg" --out-dir "$cd_runs" \
        >> "$out/countdown_gpu.txt" 2>&1 &
    cd_pid=$!
}
finish_countdown() {
    [ -n "$cd_pid" ] || return 0
    local deadline=$((SECONDS + $1)) stopped=0
    while kill -0 "$cd_pid" 2>/dev/null && { [ "$1" = 0 ] || [ "$SECONDS" -lt "$deadline" ]; }; do sleep 1; done
    if kill -0 "$cd_pid" 2>/dev/null; then
        echo "gpu-check: the Countdown job was stopped $1 s after the tests ended (GPU_CHECK_COUNTDOWN_WAIT_S)" \
            | tee -a "$out/countdown_gpu.txt" "$out/skipped.txt" >&2
        kill -TERM "$cd_pid" 2>/dev/null
        stopped=1
        # (it checkpoints at the end of its step, as on a preemption; a step that does not end
        # within 30 s is killed)
        local until=$((SECONDS + 30))
        while kill -0 "$cd_pid" 2>/dev/null && [ "$SECONDS" -lt "$until" ]; do sleep 1; done
        pkill -KILL -P "$cd_pid" 2>/dev/null
        kill -KILL "$cd_pid" 2>/dev/null
    fi
    wait "$cd_pid"
    local rc=$?
    if [ "$rc" != 0 ]; then
        echo "gpu-check: the Countdown job failed or was stopped (exit $rc)" | tee -a "$out/countdown_gpu.txt" >&2
        # (124, 137: the budget's end)
        [ "$stopped" = 1 ] || [ "$rc" = 124 ] || [ "$rc" = 137 ] || failed countdown_gpu "$rc" countdown_gpu.txt
    fi
    echo "wall time: $((SECONDS - cd_t0)) s" | tee -a "$out/countdown_gpu.txt"
    grep -E "held-out|eval|error|wall time" "$out/countdown_gpu.txt" || true
    cp "$cd_runs"/*/metrics.jsonl "$out/countdown_gpu_metrics.jsonl" 2>/dev/null || true
    rm -rf "$cd_runs"
    cd_pid=""
}

if part tests; then
    if [ "${GPU_CHECK_FULL:-0}" != "1" ] && case "$parts" in *,countdown,*) true ;; *) false ;; esac; then
        echo "== Countdown SFT then GRPO on the GPU, short (configs/countdown-gpu.toml), beside the tests"
        start_countdown
    fi
    echo "== kernel and train-step tests (GPU vs CPU; a missing device or NVRTC fails them)"
    # with a budget the tests get at most GPU_CHECK_TESTS_S of it (default 200 s), so a hang
    # leaves time for the figures; what was cut short shows as failed in tests.txt
    tests_cap=()
    if [ "$budget" != 0 ]; then tests_cap=(timeout -k 10 "${GPU_CHECK_TESTS_S:-200}"); fi
    # (GPU_CHECK_TESTS_FILTER: only the tests whose names hold it, the wgmma test not apart; the
    # rehearsal of this script, a test itself, never runs inside it)
    filter=(${GPU_CHECK_TESTS_FILTER:+"$GPU_CHECK_TESTS_FILTER"})
    bounded ${tests_cap[@]+"${tests_cap[@]}"} env ARBOR_REQUIRE_GPU=1 $tests ${filter[@]+"${filter[@]}"} --nocapture \
        --test-threads 1 --skip wgmma:: --skip gpu_check_rehearsal 2>&1 | tee "$out/tests.txt"
    tests_rc=${PIPESTATUS[0]}
    # the wgmma attention in a process of its own: a kernel the GPU rejects leaves the CUDA context
    # unusable, and would fail every test after it
    if [ ${#filter[@]} = 0 ]; then
        wg_cap=()
        if [ "$budget" != 0 ]; then wg_cap=(timeout -k 10 60); fi
        bounded ${wg_cap[@]+"${wg_cap[@]}"} env ARBOR_REQUIRE_GPU=1 $tests --nocapture --test-threads 1 wgmma:: 2>&1 |
            tee -a "$out/tests.txt"
        wg_rc=${PIPESTATUS[0]}
        [ "$tests_rc" != 0 ] || tests_rc=$wg_rc
    fi
    echo "$tests_rc" > "$out/tests_rc.txt"
    finish_countdown "${GPU_CHECK_COUNTDOWN_WAIT_S:-60}"
    if grep -q "skipped: no CUDA device" "$out/tests.txt"; then
        echo "gpu-check: the tests found no CUDA device" >&2
        done_part tests
        exit 1
    fi
fi
done_part tests

if part headline; then
    # the figures the open issues' Done-when lists ask for first, each beside its peer, slow runs
    # capped; the other kernel plans and the profiles after them
    echo "== the device's ceilings: copy bandwidth, product rate of each dtype at a 0.5B training shape"
    run ceilings --cap 60 "$arbor" bench gpu --kind ceilings --batch 4 --seq 1024
    echo "== bf16 attention fwd+bwd vs PyTorch SDPA bf16, head dims 64 and 128"
    run attention_bf16 --cap 60 "$arbor" bench gpu --kind attention --dtype bf16 "${att64[@]}"
    sdpa_peer sdpa_bf16 --cap 60 python3 scripts/peer/sdpa_bench.py "${att64[@]}" --dtype bf16
    run attention_bf16_d128 --cap 60 "$arbor" bench gpu --kind attention --dtype bf16 "${att128[@]}"
    sdpa_peer sdpa_bf16_d128 --cap 60 python3 scripts/peer/sdpa_bench.py "${att128[@]}" --dtype bf16
    echo "== bf16 train step, Qwen2-0.5B shape (random weights), 4 x 1024 tokens, vs torch bf16"
    run train_step_bf16 --need 30 --cap 90 "$arbor" bench gpu --kind train-step --dtype bf16 "${q05[@]}" --batch 4 --seq 1024
    peer peer_train_step_bf16 --need 45 --cap 90 python3 scripts/peer/torch_train_step.py --threads 16 --device cuda \
        --dtype bf16 "${q05[@]}" --batch 4 --seq 1024 --steps 5 --warmup 2
    echo "== bf16 greedy generation, 0.5B shape, batch 256, 16 + 256 tokens, vs transformers bf16"
    # (2 x 256 x 256 tokens a run: about 7 s at the issue's target, minutes at the first run's rate)
    run generate_greedy_0.5b_b256_bf16 --need 60 --cap 120 "$arbor" bench gpu --kind generate --dtype bf16 "${q05[@]}" \
        --batch 256 --new-tokens 256 --warmup 1 --steps 1
    peer peer_generate_greedy_0.5b_b256_bf16 --need 40 --cap 120 python3 scripts/peer/hf_generate.py --threads 16 \
        --device cuda --dtype bf16 --greedy "${q05[@]}" --batch 256 --new-tokens 256 --reps 1
    echo "== bf16 sampled generation (tokens drawn on the device), 0.5B shape, batch 16 / 256, vs transformers bf16"
    for b in 16 256; do
        run "generate_sampled_0.5b_b${b}_bf16" --cap 90 "$arbor" bench gpu --kind generate --sample --dtype bf16 \
            "${q05[@]}" --batch "$b" --warmup 1 --steps 2 --new-tokens 64
        peer "peer_generate_sampled_0.5b_b${b}_bf16" --cap 90 python3 scripts/peer/hf_generate.py --threads 16 \
            --device cuda --dtype bf16 "${q05[@]}" --batch "$b" --new-tokens 64 --reps 2
    done
    echo "== one GRPO step on the device (sampled generation, recompute, backward, AdamW), bf16, the 0.5B shape"
    run rl_step_0.5b_bf16 --cap 120 "$arbor" bench gpu --kind rl-step --dtype bf16 "${q05[@]}" --prompts 16 --samples 8 \
        --new-tokens 64 --steps 2 --warmup 1
    echo "== the same generation with f32 products (issue 16's engine; its first figures were f32)"
    run generate_greedy_0.5b_b256 --need 60 --cap 120 "$arbor" bench gpu --kind generate "${q05[@]}" --batch 256 \
        --new-tokens 256 --warmup 1 --steps 1
    for b in 16 256; do
        run "generate_sampled_0.5b_b$b" --cap 90 "$arbor" bench gpu --kind generate --sample "${q05[@]}" --batch "$b" \
            --warmup 1 --steps 2 --new-tokens 64
    done
    echo "== bf16 decode steps replayed as CUDA graphs (opt-in): greedy batch 256, sampled batch 16 / 256"
    run generate_greedy_0.5b_b256_bf16_graphs --need 60 --cap 120 "$arbor" bench gpu --kind generate --graphs --dtype bf16 \
        "${q05[@]}" --batch 256 --new-tokens 256 --warmup 1 --steps 1
    for b in 16 256; do
        run "generate_sampled_0.5b_b${b}_bf16_graphs" --cap 90 "$arbor" bench gpu --kind generate --sample --graphs \
            --dtype bf16 "${q05[@]}" --batch "$b" --warmup 1 --steps 2 --new-tokens 64
    done
    echo "== where the time goes: a bf16 train step, sampled generation at batch 256 and the rl-step, each"
    echo "   kernel and product timed by CUDA events in one extra step (--profile; the summary lists the largest)"
    run train_step_bf16_profile --cap 90 "$arbor" bench gpu --kind train-step --dtype bf16 "${q05[@]}" --batch 4 --seq 1024 \
        --steps 1 --warmup 1 --profile
    run generate_sampled_0.5b_b256_bf16_profile --cap 90 "$arbor" bench gpu --kind generate --sample --dtype bf16 \
        "${q05[@]}" --batch 256 --warmup 1 --steps 1 --new-tokens 64 --profile
    run rl_step_0.5b_bf16_profile --cap 120 "$arbor" bench gpu --kind rl-step --dtype bf16 "${q05[@]}" --prompts 16 \
        --samples 8 --new-tokens 64 --steps 1 --warmup 1 --profile
    echo "== the attention's other plans: blocks of 64 rows (one warpgroup; the default 128 has two sharing each"
    echo "   streamed tile), and Hopper's warpgroup products (wgmma, opt-in: cuda/wgmma.cuh WgmmaOps)"
    run attention_bf16_r64 --cap 60 "$arbor" bench gpu --kind attention --dtype bf16 --attn-rows 64 "${att64[@]}"
    run attention_bf16_d128_r64 --cap 60 "$arbor" bench gpu --kind attention --dtype bf16 --attn-rows 64 "${att128[@]}"
    wgmma_run attention_bf16_wgmma --cap 60 "$arbor" bench gpu --kind attention --dtype bf16 --attn-mma wgmma "${att64[@]}"
    wgmma_run attention_bf16_d128_wgmma --cap 60 "$arbor" bench gpu --kind attention --dtype bf16 --attn-mma wgmma \
        "${att128[@]}"
    wgmma_run attention_bf16_wgmma_r64 --cap 60 "$arbor" bench gpu --kind attention --dtype bf16 --attn-mma wgmma \
        --attn-rows 64 "${att64[@]}"
fi
done_part headline

if [ -z "$cd_pid" ] && [ ! -f "$out/countdown_gpu.txt" ] && part countdown && in_budget countdown 200; then
    echo "== Countdown SFT then GRPO on the GPU (configs/countdown-gpu.toml; GPU_CHECK_FULL=1: the whole job, ~10 min)"
    start_countdown
    finish_countdown 0
fi
done_part countdown


if part variants; then
    echo "== what the memory pool's keeping buys (src/cuda/pool.rs): the bf16 train step and sampled generation at"
    echo "   batch 16 with freed memory handed back to the device at every host wait (the driver's default)"
    run train_step_bf16_pool_release env ARBOR_CUDA_POOL=release "$arbor" bench gpu --kind train-step --dtype bf16 \
        "${q05[@]}" --batch 4 --seq 1024
    run generate_sampled_0.5b_b16_bf16_pool_release env ARBOR_CUDA_POOL=release "$arbor" bench gpu --kind generate \
        --sample --dtype bf16 "${q05[@]}" --batch 16 --warmup 1 --steps 2 --new-tokens 64
    echo "== attention: f32, and the backward's other dK/dV plan (one block loops over a GQA group's heads)"
    run attention "$arbor" bench gpu --kind attention "${att64[@]}"
    sdpa_peer sdpa python3 scripts/peer/sdpa_bench.py "${att64[@]}" --dtype f32
    run attention_grouped "$arbor" bench gpu --kind attention --dkdv grouped "${att64[@]}"
    run attention_bf16_grouped "$arbor" bench gpu --kind attention --dtype bf16 --dkdv grouped "${att64[@]}"
    echo "== gradient checkpointing ([train] gradient_checkpointing): the bf16 train step recomputing every layer's"
    echo "   activations in the backward, its cost and the device memory it saves, vs torch's (transformers') own"
    run train_step_bf16_ckpt "$arbor" bench gpu --kind train-step --dtype bf16 --checkpointing "${q05[@]}" --batch 4 --seq 1024
    peer peer_train_step_bf16_ckpt python3 scripts/peer/torch_train_step.py --threads 16 --device cuda --dtype bf16 \
        --checkpointing "${q05[@]}" --batch 4 --seq 1024 --steps 5 --warmup 2
    echo "== a reasoning-length micro-batch, 4 x 4096 tokens: the bf16 train step with and without checkpointing"
    run train_step_bf16_16k --cap 90 "$arbor" bench gpu --kind train-step --dtype bf16 "${q05[@]}" --batch 4 --seq 4096 \
        --steps 2 --warmup 1
    run train_step_bf16_16k_ckpt --cap 90 "$arbor" bench gpu --kind train-step --dtype bf16 --checkpointing "${q05[@]}" \
        --batch 4 --seq 4096 --steps 2 --warmup 1
    echo "== bf16 train step with the attention in blocks of 64 rows (one warpgroup; the default has two)"
    run train_step_bf16_r64 "$arbor" bench gpu --kind train-step --dtype bf16 --attn-rows 64 "${q05[@]}" --batch 4 --seq 1024
    echo "== bf16 train step with the wgmma attention (Hopper only)"
    wgmma_run train_step_bf16_wgmma "$arbor" bench gpu --kind train-step --dtype bf16 --attn-mma wgmma "${q05[@]}" --batch 4 --seq 1024
    echo "== train step with f32 and tf32 products, vs torch f32"
    run train_step "$arbor" bench gpu --kind train-step "${q05[@]}" --batch 4 --seq 1024
    run train_step_tf32 "$arbor" bench gpu --kind train-step --dtype tf32 "${q05[@]}" --batch 4 --seq 1024
    peer peer_train_step_f32 python3 scripts/peer/torch_train_step.py --threads 16 --device cuda --dtype f32 "${q05[@]}" \
        --batch 4 --seq 1024 --steps 5 --warmup 2
    echo "== generation with f32 products: bench-tiny, the 0.5B shape greedy and sampled (batch 16 / 64 / 256)"
    run generate_tiny "$arbor" bench gpu --kind generate --model-config configs/models/bench-tiny --batch 64
    run generate_0.5b --cap 90 "$arbor" bench gpu --kind generate "${q05[@]}" --batch 64 --new-tokens 256 --warmup 1 \
        --steps 2
    run generate_sampled_0.5b_b64 --cap 90 "$arbor" bench gpu --kind generate --sample "${q05[@]}" --batch 64 --warmup 1 \
        --steps 2 --new-tokens 64
    for b in 16 64 256; do
        peer "peer_generate_sampled_0.5b_b${b}_f32" --cap 90 python3 scripts/peer/hf_generate.py --threads 16 --device cuda \
            --dtype f32 "${q05[@]}" --batch "$b" --new-tokens 64 --reps 2
    done
    echo "== bf16 sampled generation at batch 64 (eager and graphs) vs transformers bf16"
    run generate_sampled_0.5b_b64_bf16 "$arbor" bench gpu --kind generate --sample --dtype bf16 "${q05[@]}" \
        --batch 64 --warmup 1 --steps 2 --new-tokens 64
    run generate_sampled_0.5b_b64_bf16_graphs "$arbor" bench gpu --kind generate --sample --graphs --dtype bf16 \
        "${q05[@]}" --batch 64 --warmup 1 --steps 2 --new-tokens 64
    peer peer_generate_sampled_0.5b_b64_bf16 python3 scripts/peer/hf_generate.py --threads 16 --device cuda --dtype bf16 "${q05[@]}" \
        --batch 64 --new-tokens 64 --reps 2
    echo "== the decode attention's other kernel (one block per query head, each reading the group's cache), bf16"
    run generate_greedy_0.5b_b256_bf16_per_head_attn --need 60 --cap 120 "$arbor" bench gpu --kind generate \
        --decode-attn per-head --dtype bf16 "${q05[@]}" --batch 256 --new-tokens 256 --warmup 1 --steps 1
    echo "== long contexts: bf16 sampled generation, batch 16, 16 + 2048 tokens, each row's positions split over"
    echo "   blocks to fill the GPU (the default) and not split (one split longer than the context)"
    for split in 0 1000000; do
        run "generate_sampled_0.5b_b16_2k_bf16_split$split" "$arbor" bench gpu --kind generate --sample --dtype bf16 \
            "${q05[@]}" --batch 16 --warmup 1 --steps 1 --new-tokens 2048 --decode-split "$split"
    done
    echo "== the GRPO step with f32 products, and bf16 with decode graphs (rows padded to buckets as sequences finish)"
    run rl_step_0.5b "$arbor" bench gpu --kind rl-step "${q05[@]}" --prompts 16 --samples 8 --new-tokens 64 --steps 2 \
        --warmup 1
    run rl_step_0.5b_bf16_graphs env ARBOR_CUDA_GRAPHS=1 "$arbor" bench gpu --kind rl-step --dtype bf16 "${q05[@]}" \
        --prompts 16 --samples 8 --new-tokens 64 --steps 2 --warmup 1
    echo "== the GRPO step at issue 16's own shape: 64 prompts x 8 samples x 256 new tokens, bf16"
    run rl_step_0.5b_bf16_64x8x256 --need 60 --cap 180 "$arbor" bench gpu --kind rl-step --dtype bf16 "${q05[@]}" \
        --prompts 64 --samples 8 --new-tokens 256 --steps 1 --warmup 1
    echo "== a Qwen3 shape (0.6B: its query and key head norms, 16 and 8 heads of 128), bf16: the train step vs"
    echo "   torch and sampled generation at batch 64 vs transformers"
    q3=(--model-config configs/models/qwen3-0.6b-shape)
    run train_step_bf16_qwen3_0.6b "$arbor" bench gpu --kind train-step --dtype bf16 "${q3[@]}" --batch 4 --seq 1024
    peer peer_train_step_bf16_qwen3_0.6b python3 scripts/peer/torch_train_step.py --threads 16 --device cuda --dtype bf16 \
        "${q3[@]}" --batch 4 --seq 1024 --steps 5 --warmup 2
    run generate_sampled_qwen3_0.6b_b64_bf16 --cap 90 "$arbor" bench gpu --kind generate --sample --dtype bf16 "${q3[@]}" \
        --batch 64 --warmup 1 --steps 2 --new-tokens 64
    peer peer_generate_sampled_qwen3_0.6b_b64_bf16 --cap 90 python3 scripts/peer/hf_generate.py --threads 16 --device cuda \
        --dtype bf16 "${q3[@]}" --batch 64 --new-tokens 64 --reps 2
fi
done_part variants

if part async && in_budget async 45; then
    echo "== an [async] GRPO job on the GPU: 1 trainer + 1 rollout rank (each its own process on the one GPU),"
    echo "   started by arbor launch (the ranks talk over TCP through the launcher: no MPI here)"
    cfg="$out/async-gpu.toml"
    sed -e 's/^steps = 1500/steps = 4/' -e 's/^prompts_per_step = 32/prompts_per_step = 8/' \
        -e 's/^eval_problems = 500/eval_problems = 64/' -e 's/^eval_every = 500/eval_every = 4/' \
        -e 's/^log_every = 25/log_every = 1/' -e 's/^name = "default"/name = "async-gpu"/' \
        -e 's/^\[train\]$/[train]\ndevice = "cuda"/' "${tiny_run[@]}" -e "s/^steps = 4\$/steps = $((rehearse ? 2 : 4))/" \
        configs/default.toml > "$cfg"
    printf '\n[async]\nrollout_ranks = 1\nalpha = 1\n' >> "$cfg"
    runs="${TMPDIR:-/tmp}/gpu-check-async"
    rm -rf "$runs"
    bounded "$arbor" launch --nproc 2 -- --threads 4 train --config "$cfg" --out-dir "$runs" > "$out/async_gpu.txt" 2>&1
    rc=$?
    echo "exit status: $rc" | tee -a "$out/async_gpu.txt"
    [ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$rc" = 137 ] || failed async_gpu "$rc" async_gpu.txt
    cp "$runs"/*/metrics.jsonl "$out/async_gpu_metrics.jsonl" 2>/dev/null || true
    rm -rf "$runs"
fi
done_part async

echo "gpu-check: results in $dest/ ($((SECONDS - t_start)) s)"
# (summary.txt, ratios.txt and benchmarks_row.md, the row of docs/benchmarks.md's results
# table, were written by the last done_part)
cat "$out/summary.txt" "$out/benchmarks_row.md" 2>/dev/null || true
status=0
if [ "$tests_rc" != 0 ]; then
    echo "gpu-check: some GPU tests FAILED (see $out/tests.txt)" >&2
    status=1
fi
if [ -s "$out/failed.txt" ]; then
    echo "gpu-check: $(wc -l < "$out/failed.txt") command(s) FAILED (failed.txt):" >&2
    cat "$out/failed.txt" >&2
    status=1
fi
exit "$status"
