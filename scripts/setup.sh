#!/usr/bin/env bash
# Installs what arbor needs on a fresh Debian machine with a Rust toolchain (rustup stable, Rust
# >= 1.89). Idempotent; run as root (CI) or as a user with sudo rights for apt-get (`sudo -n`: no
# password prompt). What is already there (an MPI or HDF5 from `module load`, found by mpicc /
# h5cc / pkg-config) is not installed again; with nothing to install, apt is not needed at all.
#   bash scripts/setup.sh          everything (make test)
#   bash scripts/setup.sh --run    what building and running needs (make run): no h5py, no NVRTC
# - feature `mpi` (default): Open MPI headers + launcher, libclang for the bindings; tests/mpi/ runs mpirun.
# - feature `hdf5` (default, trajectory dumps): libhdf5-dev + pkg-config; hdf5-tools gives h5dump.
#   `cargo build --no-default-features` needs none of them.
# - tests/trajectories_h5/ reads the dumps back with Python's h5py.
set -euo pipefail
cd "$(dirname "$0")/.."
for_run=0
[ "${1:-}" != "--run" ] || for_run=1
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found. Install Rust (https://rustup.rs) and re-run." >&2
    exit 1
fi
# Cargo.toml's rust-version: distribution packages are often older (Debian 12: 1.63)
rust_min=1.89
rust_have="$(rustc --version 2>/dev/null | awk '{print $2}')"
if [ "$(printf '%s\n%s\n' "$rust_min" "${rust_have%%-*}" | sort -V | head -1)" != "$rust_min" ]; then
    echo "setup: rustc ${rust_have:-?} is older than the $rust_min arbor needs; \`rustup update stable\` (https://rustup.rs)" >&2
    exit 1
fi

# apt as root, else through sudo without a password prompt
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    as_root=(none)
fi
apt_install() {
    if [ "${as_root[0]:-}" = none ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: arbor needs the Debian packages: $*" >&2
        echo "setup: run this script as root or with sudo rights, or install their equivalents (a module" \
            "system's MPI/HDF5 work: mpicc, h5cc and libclang are looked for first), or build without" \
            "MPI and HDF5: cargo build --release --no-default-features" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "${apt_updated:-}" ]; then
        ${as_root[@]+"${as_root[@]}"} apt-get update -qq
        apt_updated=1
    fi
    echo "setup: apt-get install $*"
    local out
    if ! out=$(${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" 2>&1); then
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
# (an MPI of a module system brings its mpicc; Debian's headers live under the architecture's lib dir)
command -v mpicc >/dev/null 2>&1 || compgen -G '/usr/lib/*/openmpi/include/mpi.h' >/dev/null ||
    [ -e /usr/include/mpi.h ] || need_apt+=(libopenmpi-dev)
# (libclang-cpp.so alone, which other packages bring, is not what bindgen loads; LIBCLANG_PATH names another)
[ -n "${LIBCLANG_PATH:-}" ] || ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 ||
    need_apt+=(libclang-dev)
# Open MPI 4's launcher refuses to start, even on one node, without an rsh/ssh agent
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
[ "$for_run" = 1 ] || command -v h5dump >/dev/null 2>&1 || need_apt+=(hdf5-tools)
if ! pkg-config --exists hdf5 2>/dev/null && [ ! -e /usr/include/hdf5/serial/hdf5.h ] && [ -z "${HDF5_DIR:-}" ] &&
    ! command -v h5cc >/dev/null 2>&1; then
    need_apt+=(libhdf5-dev)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    apt_install "${need_apt[@]}"
fi
if [ "$for_run" = 1 ]; then
    echo "setup: $(cargo --version), $(cc --version | head -1), HDF5 $(pkg-config --modversion hdf5 2>/dev/null || echo '?')"
    exit 0
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
        if [ "$(python3 -c 'import sys; print(sys.prefix)')" = /usr ] && [ "${as_root[0]:-}" != none ]; then
            apt_install python3-venv
        fi
        install_nvrtc || echo "setup: warning: could not install NVRTC; the CUDA compile check will be skipped" >&2
    fi
fi
echo "setup: $(cargo --version), $(cc --version | head -1), HDF5 $(pkg-config --modversion hdf5 2>/dev/null || echo '?')," \
    "h5py $(python3 -c 'import h5py; print(h5py.__version__)')", NVRTC "$(nvrtc_lib || true)"
