#!/usr/bin/env bash
# Installs what arbor needs on a fresh Debian machine with a Rust toolchain. Idempotent.
# Today the default build is pure Rust (gemm, rayon, safetensors, tokenizers with fancy-regex),
# so only the toolchain is checked; the MPI/HDF5/CUDA issues add their packages here.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found. Install Rust (https://rustup.rs) and re-run." >&2
    exit 1
fi
need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}"
fi
echo "setup: $(cargo --version), $(cc --version | head -1)"
