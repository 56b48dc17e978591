#!/usr/bin/env python3
"""Build the SIMT host emulator: the real cuda/*.cu kernels compiled for the host, with a fake CUDA
driver, cublasGemmEx and NCCL (between processes, through shared memory) around them (simt/), as one
library answering to libcuda.so, libcublas.so and libnccl.so.

    python3 scripts/simt_build.py [OUTDIR]        (default: target/simt)

Then `LD_LIBRARY_PATH=OUTDIR:<nvrtc lib dir> cargo test --features cuda --test cuda` runs every GPU
test body on the host (scripts/test.sh does). Each kernel module is composed exactly as the loader
composes it for NVRTC (src/cuda/nvrtc.rs: common.cuh, the prelude the file's first line names, the
file), then rewritten for the host in two ways only: dynamic shared memory (`extern __shared__ T
x[];`) becomes the emulator's per-block buffer, and every `extern "C"` entry is registered under its
name. Nothing is rebuilt when no input changed.
"""
import hashlib
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = os.path.join(ROOT, "cuda")
SIMT = os.path.join(ROOT, "simt")
CXX = os.environ.get("CXX", "g++")
FLAGS = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing", "-ffp-contract=off",
         "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable", "-Werror"]


def read(p):
    with open(p) as f:
        return f.read()


def module_source(name):
    """common.cuh, the named preludes in order, the file: as src/cuda/nvrtc.rs `source` composes it."""
    body = read(os.path.join(CUDA, name + ".cu"))
    first = body.split("\n", 1)[0].strip()
    prelude = ""
    if first.startswith("// prelude:"):
        for h in first[len("// prelude:"):].split():
            prelude += '#line 1 "%s"\n%s\n' % (h, read(os.path.join(CUDA, h)))
    return '%s\n%s#line 1 "%s.cu"\n%s' % (read(os.path.join(CUDA, "common.cuh")), prelude, name, body)


ENTRY = re.compile(r'extern "C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?([A-Za-z_][A-Za-z0-9_]*)')
DYN = re.compile(r'^([ \t]*)extern __shared__\s+(?:__align__\(\d+\)\s+)?([A-Za-z_][A-Za-z0-9_ ]*?)\s+([A-Za-z_]\w*)\[\];',
                 re.M)


def host_source(name):
    return host_text(module_source(name), name)


def host_text(src, name):

    def dyn(m):
        indent, ty, var = m.groups()
        if indent:  # inside a function: a local pointer
            return "%s%s* const %s = (%s*)simt::dynamic_smem();" % (indent, ty, var, ty)
        return "#define %s ((%s*)simt::dynamic_smem())" % (var, ty)

    src = DYN.sub(dyn, src)
    entries = ENTRY.findall(src)
    if not entries:
        sys.exit("simt_build: %s.cu declares no extern \"C\" __global__ entry" % name)
    reg = "\n".join('static simt::Registrar simt_entry_%s("%s", &%s);' % (e, e, e) for e in entries)
    return src + "\n\n// registered with the emulator\n" + reg + "\n", entries


def contraction_flags():
    """Multiply-adds fused as NVRTC fuses them by default (--fmad=true), where the host has FMA: a
    kernel whose result must not depend on fusing (the `__f*_rn` intrinsics) is then tested as a GPU
    runs it. Without FMA on the host, products and sums stay separate."""
    try:
        with open("/proc/cpuinfo") as f:
            has_fma = any(line.startswith("flags") and " fma " in line + " " for line in f)
    except OSError:
        has_fma = False
    if os.uname().machine == "x86_64" and has_fma:
        return ["-mfma", "-ffp-contract=fast"]
    if os.uname().machine == "aarch64":
        return ["-ffp-contract=fast"]
    return []


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(" ".join(cmd) + "\n" + r.stdout + r.stderr)
        raise SystemExit("simt_build: compile failed")


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "simt"))
    gen = os.path.join(out, "gen")
    os.makedirs(gen, exist_ok=True)
    names = sorted(f[:-3] for f in os.listdir(CUDA) if f.endswith(".cu"))
    units, seen = [], {}
    for n in names:
        text, entries = host_source(n)
        for e in entries:
            if e in seen:
                sys.exit("simt_build: entry %s is declared in both %s.cu and %s.cu" % (e, seen[e], n))
            seen[e] = n
        path = os.path.join(gen, n + ".cpp")
        if not os.path.exists(path) or read(path) != text:
            with open(path, "w") as f:
                f.write(text)
        units.append(path)
    common = [os.path.join(SIMT, f) for f in ("simt.h", "runtime.h", "internal.h", "driver.h")] + \
        [os.path.join(CUDA, "common.cuh")]
    sources = units + [os.path.join(SIMT, f) for f in ("runtime.cpp", "warp.cpp", "wgmma.cpp", "driver.cpp",
                                                      "module.cpp", "blas.cpp", "nccl.cpp")]
    for src in sources[len(units):]:
        if os.path.basename(src)[:-4] in names:
            sys.exit("simt_build: cuda/%s.cu and simt/%s would share an object file" %
                     (os.path.basename(src)[:-4], os.path.basename(src)))
    selftest = [os.path.join(SIMT, f) for f in ("selftest.cu", "selftest.cpp")]
    stamp_material = "\0".join([CXX] + FLAGS + contraction_flags() + [read(p) for p in sources + common + selftest])
    stamp = hashlib.sha256(stamp_material.encode()).hexdigest()
    lib = os.path.join(out, "libarbor_simt.so")
    stamp_file = os.path.join(out, "stamp")
    if os.path.exists(lib) and os.path.exists(stamp_file) and read(stamp_file) == stamp:
        print("simt: up to date (%s)" % lib)
        return
    flags = FLAGS + ["-I", SIMT, "-DARBOR_SIMT"]

    def compile_one(src):
        obj = os.path.join(gen, os.path.basename(src)[:-4] + ".o")
        extra = ["-include", os.path.join(SIMT, "simt.h")] + contraction_flags() if src.startswith(gen) else []
        if src.endswith("selftest.cpp"):
            extra = []
        run([CXX] + flags + extra + ["-c", src, "-o", obj])
        return obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        objs = list(pool.map(compile_one, sources))
    # libstdc++ inside, its symbols hidden: a shared libstdc++ in the process breaks NVRTC's own copy
    # and only the driver and cuBLAS entry points exported
    script = os.path.join(gen, "exports.map")
    with open(script, "w") as f:
        f.write("{ global: cu*; cublas*; nccl*; arbor_simt_*; local: *; };\n")
    # the emulator's own test (simt/selftest.cpp) over its own kernels (simt/selftest.cu)
    st_text, _ = host_text(read(os.path.join(SIMT, "selftest.cu")), "selftest")
    st_src = os.path.join(gen, "selftest_kernels.cpp")
    with open(st_src, "w") as f:
        f.write('#line 1 "selftest.cu"\n' + st_text)
    st_objs = [compile_one(st_src), compile_one(os.path.join(SIMT, "selftest.cpp"))]
    run([CXX, "-o", os.path.join(out, "simt_selftest")] + st_objs + objs[len(units):] +
        ["-static-libstdc++", "-static-libgcc", "-lpthread", "-lrt"])
    run([CXX, "-shared", "-o", lib] + objs +
        ["-static-libstdc++", "-static-libgcc", "-Wl,--exclude-libs,ALL", "-Wl,--version-script=" + script, "-lpthread", "-lrt"])
    # not libcuda.so.1: NVRTC opens that name for the real driver's private tables
    for alias in ("libcuda.so", "libcublas.so", "libnccl.so"):
        link = os.path.join(out, alias)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink("libarbor_simt.so", link)
    with open(stamp_file, "w") as f:
        f.write(stamp)
    print("simt: built %s (%d kernel modules, %d entries)" % (lib, len(names), len(seen)))


if __name__ == "__main__":
    main()
