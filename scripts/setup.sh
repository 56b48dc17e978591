#!/usr/bin/env bash
# Installs what arbor needs on a fresh Debian machine with a Rust toolchain. Idempotent.
# Besides the Rust toolchain: Open MPI + libclang (feature `mpi`), python3 for the tests.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found. Install Rust (https://rustup.rs) and re-run." >&2
    exit 1
fi
need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# MPI (feature `mpi`, on by default): Open MPI headers + launcher, libclang for the bindings
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin)
[ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] || [ -e /usr/include/mpi.h ] || need_apt+=(libopenmpi-dev)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}"
fi
echo "setup: $(cargo --version), $(cc --version | head -1)"
