#!/usr/bin/env bash
# Installs what arbor needs on a fresh Debian machine with a Rust toolchain. Idempotent; run as root (CI) or
# with sudo rights for apt-get.
# - feature `mpi` (default): Open MPI headers + launcher, libclang for the bindings; tests/mpi.rs runs mpirun.
# - feature `hdf5` (default, trajectory dumps): libhdf5-dev + pkg-config; hdf5-tools gives h5dump.
#   `cargo build --no-default-features` needs none of them.
# - tests/trajectories_h5.rs reads the dumps back with Python's h5py.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found. Install Rust (https://rustup.rs) and re-run." >&2
    exit 1
fi

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "${apt_updated:-}" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    echo "setup: apt-get install $*"
    local out
    if ! out=$(apt-get install -y -qq "$@" 2>&1); then
        echo "$out" >&2
        exit 1
    fi
}

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# MPI (feature `mpi`, on by default): Open MPI headers + launcher, libclang for the bindings
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin)
[ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] || [ -e /usr/include/mpi.h ] || need_apt+=(libopenmpi-dev)
# (libclang-cpp.so alone, which other packages bring, is not what bindgen loads)
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
# Open MPI 4's launcher refuses to start, even on one node, without an rsh/ssh agent
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v h5dump >/dev/null 2>&1 || need_apt+=(hdf5-tools)
if ! pkg-config --exists hdf5 2>/dev/null && [ ! -e /usr/include/hdf5/serial/hdf5.h ]; then
    need_apt+=(libhdf5-dev)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    apt_install "${need_apt[@]}"
fi

# h5py for whichever python3 is first on PATH. Debian's own python3 (prefix /usr) is "externally managed"
# (PEP 668), so it gets Debian's python3-h5py; any other (pyenv, venv, conda) gets the pip wheel.
if ! python3 -c 'import h5py' >/dev/null 2>&1; then
    if [ "$(python3 -c 'import sys; print(sys.prefix)')" = /usr ]; then
        apt_install python3-h5py
    else
        echo "setup: python3 -m pip install h5py"
        export PIP_ROOT_USER_ACTION=ignore
        python3 -m pip install -q --disable-pip-version-check h5py 2>/dev/null ||
            python3 -m pip install -q --disable-pip-version-check --break-system-packages h5py
    fi
fi

if ! python3 -c 'import h5py' >/dev/null 2>&1; then
    echo "setup: $(command -v python3) still cannot import h5py; install it for that interpreter" >&2
    exit 1
fi
# NVRTC for the CUDA kernels' compile check (tests/cuda/) on machines without a CUDA toolkit: the
# pip wheel in a git-ignored venv; scripts/test.sh puts its lib directory on LD_LIBRARY_PATH.
# Best effort: without it the compile check prints why it skipped.
nvrtc_lib() { ls -d .venv-nvrtc/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib 2>/dev/null | head -1; }
install_nvrtc() {
    rm -rf .venv-nvrtc
    python3 -m venv .venv-nvrtc >/dev/null 2>&1 &&
        .venv-nvrtc/bin/pip install -q --disable-pip-version-check nvidia-cuda-nvrtc-cu12
}
if [ -z "$(nvrtc_lib)" ]; then
    echo "setup: pip install nvidia-cuda-nvrtc-cu12 (into .venv-nvrtc)"
    if ! install_nvrtc; then
        # Debian's python3 needs python3-venv for `python3 -m venv`
        if [ "$(python3 -c 'import sys; print(sys.prefix)')" = /usr ] && [ "$(id -u)" = 0 ]; then
            apt_install python3-venv
        fi
        install_nvrtc || echo "setup: warning: could not install NVRTC; the CUDA compile check will be skipped" >&2
    fi
fi
echo "setup: $(cargo --version), $(cc --version | head -1), HDF5 $(pkg-config --modversion hdf5 2>/dev/null || echo '?')," \
    "h5py $(python3 -c 'import h5py; print(h5py.__version__)')", NVRTC "$(nvrtc_lib || true)"
