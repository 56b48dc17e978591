#!/usr/bin/env python3
"""Compile every cuda/*.cu kernel source with NVRTC (ctypes only, no pip packages).

For each file the text of cuda/common.cuh is textually prepended, then the headers
its first line names (`// prelude: mma.cuh wgmma.cuh`, in order), exactly as the Rust loader does (.cu
files must not #include them); then the result is compiled
for compute_80 and compute_90 with `--std=c++17`. The check fails (exit 1) on:
  * a compile error,
  * a non-empty compile log (warnings count as failures),
  * an `extern "C" __global__ void NAME(` in the source with no `.entry NAME` in the PTX,
  * an entry whose PTX uses local memory (a per-thread array not kept in registers),
  * any #include directive in a .cu file or in common.cuh.

The library is taken from $NVRTC_LIB, else searched under .venv-nvrtc, else the
system loader path (libnvrtc.so.12 / libnvrtc.so).

With --resources, each file is instead compiled to machine code for sm_80, sm_89 and sm_90
(ptxas run by NVRTC, `--ptxas-options=-v`) and each entry's registers per thread and spilled
bytes are printed: the static resources a kernel change costs, known without a GPU (a kernel
of 128 threads that uses more than 128 registers runs fewer blocks per multiprocessor; a spill
goes to local memory). It reports; it does not fail on a spill.

Usage: python3 scripts/nvrtc_check.py [--resources] [cuda/file.cu ...]
"""
import ctypes
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "cuda")
ARCHS = ["compute_80", "compute_90", "compute_90a"]
OPTIONS = ["--std=c++17"]


def find_lib():
    env = os.environ.get("NVRTC_LIB")
    if env:
        return env
    pats = [
        os.path.join(ROOT, ".venv-nvrtc", "lib", "python3*", "site-packages", "nvidia",
                     "cuda_nvrtc", "lib", "libnvrtc.so.1*"),
        os.path.join(ROOT, ".venv-nvrtc", "**", "libnvrtc.so*"),
    ]
    for pat in pats:
        hits = sorted(h for h in glob.glob(pat, recursive=True) if ".alt." not in h)
        if hits:
            return hits[0]
    return "libnvrtc.so.12"


def load_nvrtc():
    path = find_lib()
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        try:
            lib = ctypes.CDLL("libnvrtc.so")
        except OSError as e:
            print("error: cannot load libnvrtc (%s): %s" % (path, e))
            sys.exit(2)
    vp = ctypes.c_void_p
    lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(vp), ctypes.c_char_p, ctypes.c_char_p,
                                       ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                                       ctypes.POINTER(ctypes.c_char_p)]
    lib.nvrtcCompileProgram.argtypes = [vp, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.nvrtcGetProgramLogSize.argtypes = [vp, ctypes.POINTER(ctypes.c_size_t)]
    lib.nvrtcGetProgramLog.argtypes = [vp, ctypes.c_char_p]
    lib.nvrtcGetPTXSize.argtypes = [vp, ctypes.POINTER(ctypes.c_size_t)]
    lib.nvrtcGetPTX.argtypes = [vp, ctypes.c_char_p]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(vp)]
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    return lib, path


def compile_src(lib, src, name, arch, extra=()):
    """Returns (ok, log, ptx) (ptx empty for an sm_ target, which makes machine code)."""
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None)
    if rc != 0:
        return False, "nvrtcCreateProgram: %s" % lib.nvrtcGetErrorString(rc).decode(), ""
    opts = ["--gpu-architecture=" + arch] + OPTIONS + list(extra)
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, buf)
    log = buf.value.decode(errors="replace").strip()
    ptx = ""
    if rc == 0 and arch.startswith("compute_"):
        lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
        pbuf = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetPTX(prog, pbuf)
        ptx = pbuf.value.decode(errors="replace")
    else:
        log = "%s\n%s" % (lib.nvrtcGetErrorString(rc).decode(), log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc == 0, log, ptx


ENTRY_RE = re.compile(r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+'
                      r'(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
INCLUDE_RE = re.compile(r'^\s*#\s*include\b', re.M)


def strip_comments(s):
    s = re.sub(r"/\*.*?\*/", "", s, flags=re.S)
    return re.sub(r"//[^\n]*", "", s)


RES_ENTRY_RE = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
RES_SPILL_RE = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
RES_REGS_RE = re.compile(r"Used (\d+) registers")


def module_source(common, fpath, body):
    """The text NVRTC compiles for kernel file `fpath` (its text `body`): common.cuh, then the
    headers its first line names (`// prelude: a.cuh b.cuh`), then the file, as the Rust loader
    builds it. The #line directives only make diagnostics point into each file."""
    first = body.split("\n", 1)[0].strip()
    prelude = ""
    if first.startswith("// prelude:"):
        for hname in first[len("// prelude:"):].split():
            with open(os.path.join(CUDA_DIR, hname)) as f:
                prelude += "#line 1 \"%s\"\n" % hname + f.read() + "\n"
    return common + "\n" + prelude + "#line 1 \"%s\"\n" % os.path.basename(fpath) + body


def resources(lib, src, name):
    """(entry, arch, registers, spill stores, spill loads) of every entry, per sm_ target."""
    rows = []
    for arch in ["sm_80", "sm_89", "sm_90", "sm_90a"]:
        ok, log, _ = compile_src(lib, src, name, arch, ["--ptxas-options=-v"])
        if not ok:
            raise RuntimeError("%s %s: compile error\n%s" % (name, arch, log))
        entry = None
        for line in log.splitlines():
            if re.search(r"warning|Performance Loss|serializ", line):
                raise RuntimeError("%s %s: ptxas says: %s" % (name, arch, line.strip()))
            m = RES_ENTRY_RE.search(line)
            if m:
                entry = [m.group(1), m.group(2), 0, 0, 0]
                rows.append(entry)
            elif entry is not None and RES_SPILL_RE.search(line):
                m = RES_SPILL_RE.search(line)
                entry[3], entry[4] = int(m.group(1)), int(m.group(2))
            elif entry is not None and RES_REGS_RE.search(line):
                entry[2] = int(RES_REGS_RE.search(line).group(1))
    return rows


def main(argv):
    args = argv[1:]
    want_resources = "--resources" in args
    args = [a for a in args if a != "--resources"]
    lib, path = load_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print("nvrtc %d.%d (%s)" % (major.value, minor.value, path))
    common_path = os.path.join(CUDA_DIR, "common.cuh")
    with open(common_path) as f:
        common = f.read()
    failed = False
    if INCLUDE_RE.search(strip_comments(common)):
        print("FAIL cuda/common.cuh: contains #include")
        failed = True
    files = args or sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
    if not files:
        print("FAIL: no cuda/*.cu files")
        return 1
    for fpath in files:
        rel = os.path.relpath(os.path.abspath(fpath), ROOT)
        with open(fpath) as f:
            body = f.read()
        code = strip_comments(body)
        if INCLUDE_RE.search(code):
            print("FAIL %s: contains #include (common.cuh is prepended by the loader)" % rel)
            failed = True
            continue
        entries = ENTRY_RE.findall(code)
        src = module_source(common, fpath, body)
        if want_resources:
            try:
                rows = resources(lib, src, os.path.basename(fpath))
            except RuntimeError as e:
                print("FAIL %s" % e)
                failed = True
                continue
            for entry, arch, regs, st, ld in sorted(rows):
                spill = " spills %d B stored, %d B loaded" % (st, ld) if st or ld else ""
                print("%-30s %-6s %3d registers%s" % (entry, arch, regs, spill))
            continue
        for arch in ARCHS:
            ok, log, ptx = compile_src(lib, src, os.path.basename(fpath), arch)
            if not ok:
                print("FAIL %s %s: compile error\n%s" % (rel, arch, log))
                failed = True
                continue
            if log:
                print("FAIL %s %s: non-empty log (warnings)\n%s" % (rel, arch, log))
                failed = True
                continue
            depot = [b.split("(")[0].strip() for b in re.split(r"\.entry\s+", ptx)[1:] if "__local_depot" in b]
            if depot:
                print("FAIL %s %s: local memory in %s" % (rel, arch, ", ".join(depot)))
                failed = True
                continue
            ptx_entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
            missing = [e for e in entries if e not in ptx_entries]
            if missing:
                print("FAIL %s %s: entries missing from PTX: %s" % (rel, arch, ", ".join(missing)))
                failed = True
                continue
            if not entries:
                print("FAIL %s %s: no extern \"C\" __global__ entries" % (rel, arch))
                failed = True
                continue
            print("ok  %s %s (%d entries)" % (rel, arch, len(entries)))
    if failed:
        print("FAILED")
        return 1
    print("all ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
