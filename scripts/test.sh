#!/usr/bin/env bash
# Runs every test of the workspace (release build: the numerics tests are compute-bound) and ends
# with one summary line "tests: N passed, N failed" over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# NVRTC from scripts/setup.sh (the CUDA kernels' compile check in tests/cuda/)
nvrtc_lib="$(ls -d "$PWD"/.venv-nvrtc/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib 2>/dev/null | head -1 || true)"
if [ -n "$nvrtc_lib" ]; then
    export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
t0=$SECONDS
cargo test --release --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
phases="workspace $((SECONDS - t0)) s"
# The GPU test bodies once more, on the SIMT host emulator (simt/, docs/cuda.md): the real kernels
# of cuda/ compiled for the CPU behind a fake driver, so that a machine without a GPU runs them too.
# ARBOR_REQUIRE_GPU=1: a test that finds no device fails instead of skipping.
t0=$SECONDS
# (NVRTC is loaded from the loader's path: setup's venv, LD_LIBRARY_PATH (a `module load cuda`), or
# the system's cache)
have_nvrtc() {
    [ -n "$nvrtc_lib" ] && return 0
    local d
    for d in ${LD_LIBRARY_PATH//:/ }; do
        compgen -G "$d/libnvrtc.so*" >/dev/null && return 0
    done
    { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null || true; } | grep -c libnvrtc >/dev/null
}
if ! have_nvrtc; then
    # the kernels are compiled by NVRTC on the emulator too: without it every GPU test body fails
    echo "test.sh: FAILED: no NVRTC library (scripts/setup.sh installs it into .venv-nvrtc from PyPI:" \
        "pip install nvidia-cuda-nvrtc-cu12); the GPU test bodies on the emulator cannot run" | tee -a "$log" >&2
    status=1
elif python3 scripts/simt_build.py target/simt 2>&1 | tee -a "$log"; then
    target/simt/simt_selftest 2>/dev/null | tee -a "$log" || status=1  # (its stderr: the misuses it provokes)
    on_simt=(env LD_LIBRARY_PATH="$PWD/target/simt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ARBOR_REQUIRE_GPU=1 ARBOR_SIMT=1)
    cuda_tests=(cargo test --release --test cuda --no-fail-fast --)
    # The emulator runs one launch at a time in a process: two processes (lanes) share the cores,
    # each writing to its own file, shown when both are done. Lane 1: the RL jobs (tests/cuda/rl.rs)
    # and the rehearsal of scripts/gpu-check.sh (tests/cuda/rehearsal.rs); lane 2: every other body, then the kernel-level bodies once more with blocks and threads in
    # seeded random orders (at the start and after every barrier): a result that depends on the
    # order (a race: threads that touch the same memory without a barrier between) fails one of the
    # two runs (the long jobs, and the decode graphs' replays of the decode kernels, are left out:
    # they repeat the same kernels).
    lane1="$(mktemp)" lane2="$(mktemp)"
    trap 'rm -f "$log" "$lane1" "$lane2"' EXIT
    ("${on_simt[@]}" ARBOR_SIMT_DEVICES=4 "${cuda_tests[@]}" rl:: gpu_check_rehearsal) >"$lane1" 2>&1 &
    lane1_pid=$!
    (
        s=0
        "${on_simt[@]}" ARBOR_SIMT_DEVICES=4 "${cuda_tests[@]}" --skip every_kernel_compiles --skip rl:: \
            --skip gpu_check_rehearsal || s=$?
        "${on_simt[@]}" ARBOR_SIMT_ORDER=shuffle ARBOR_SIMT_SEED=1 "${cuda_tests[@]}" --skip every_kernel_compiles \
            --skip rl_job --skip env_job --skip critics_trees --skip device_sampling --skip bf16_supervised \
            --skip gpus_equals_one_gpu --skip decode_graphs --skip gpu_check_rehearsal || s=$?
        exit "$s"
    ) >"$lane2" 2>&1 &
    lane2_pid=$!
    wait "$lane1_pid" || status=$?
    wait "$lane2_pid" || status=$?
    cat "$lane1" "$lane2" | tee -a "$log"
else
    status=1
fi
phases="$phases, emulator $((SECONDS - t0)) s"
echo "test.sh: wall time: $phases"
# (a binary that did not build, or crashed, prints no result line: the exit status says so)
awk -v status="$status" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed%s\n", p, f, (status != 0 ? " (FAILED: exit status " status ")" : "") }' "$log"
exit "$status"
