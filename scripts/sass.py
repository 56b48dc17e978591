#!/usr/bin/env python3
"""The machine code of a kernel file, read without a GPU: its instruction mix per entry.

Compiles cuda/FILE.cu to machine code for a real architecture with NVRTC (the source built as
the Rust loader and scripts/nvrtc_check.py build it: common.cuh, the prelude headers, the file),
disassembles it with nvdisasm, and prints for each entry its instruction count and the counts of
the opcodes that decide a kernel's speed: tensor-core products (HMMA, HGMMA), special functions
(MUFU), f32 arithmetic, compares and selects, shared-memory and asynchronous loads, shuffles,
barriers, branches and local memory (LDL/STL: a spill). Static counts: an instruction inside a
loop counts once. Compare two versions of a kernel with it before a GPU times them (docs/cuda.md).

Usage: python3 scripts/sass.py [--arch sm_90a] [--all] [--loops] [--dump FILE] cuda/FILE.cu [ENTRY-SUBSTRING]
  --arch   the real architecture (default sm_90a; sm_80, sm_89, sm_90 ...)
  --all    every opcode of each entry, most frequent first
  --loops  also each loop of each entry (a branch back to an earlier address): its address range,
           instruction count and opcode counts, nested loops indented. A loop's count holds every
           path through its body (both sides of a branch inside it).
  --dump   write the whole disassembly to FILE

nvdisasm is taken from $NVDISASM, else PATH, else .venv-nvrtc (install it there with
`.venv-nvrtc/bin/pip install nvidia-cuda-nvdisasm`); libnvrtc as scripts/nvrtc_check.py finds it.
"""
import collections
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nvrtc_check  # noqa: E402

KEY_OPS = ["HMMA", "HGMMA", "MUFU", "FFMA", "FMUL", "FADD", "FMNMX", "FSETP", "FSEL", "F2FP", "LDSM", "LDS",
           "LDGSTS", "SHFL", "BAR", "BRA", "LDL", "STL"]


def find_nvdisasm():
    env = os.environ.get("NVDISASM")
    if env:
        return env
    hit = shutil.which("nvdisasm")
    if hit:
        return hit
    hits = sorted(glob.glob(os.path.join(nvrtc_check.ROOT, ".venv-nvrtc", "**", "bin", "nvdisasm"), recursive=True))
    return hits[0] if hits else None


def cubin(lib, src, name, arch):
    """Machine code for `arch` (an sm_ target) of the module text `src`."""
    vp = ctypes.c_void_p
    lib.nvrtcGetCUBINSize.argtypes = [vp, ctypes.POINTER(ctypes.c_size_t)]
    lib.nvrtcGetCUBIN.argtypes = [vp, ctypes.c_char_p]
    prog = vp()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None) != 0:
        raise RuntimeError("nvrtcCreateProgram failed for %s" % name)
    try:
        opts = ["--gpu-architecture=" + arch] + nvrtc_check.OPTIONS
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        if rc != 0:
            n = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
            buf = ctypes.create_string_buffer(n.value)
            lib.nvrtcGetProgramLog(prog, buf)
            raise RuntimeError("%s for %s: %s\n%s" % (name, arch, lib.nvrtcGetErrorString(rc).decode(),
                                                      buf.value.decode(errors="replace")))
        n = ctypes.c_size_t()
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetCUBIN(prog, buf)
        return buf.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


# an instruction: its address, its predicate (@P0, @!UP1; "@!PT": never runs, the assembler's
# padding, not counted) and opcode; a label line; a branch's target label
ADDR_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")
LABEL_RE = re.compile(r"^(\.L_\w+):", re.M)
TARGET_RE = re.compile(r"BRA\s+`\((\.L_\w+)\)")


def entries(sass):
    """(entry name, Counter of opcodes, loops) for each function of an nvdisasm listing; a loop is
    (first address, last address, Counter of its opcodes)."""
    out = []
    for block in re.split(r"\n\s*\.text\.", sass)[1:]:
        name = block.split(":", 1)[0].strip()
        insns, labels, pending = [], {}, []
        for line in block.split("\n"):
            lab = LABEL_RE.match(line.strip())
            if lab:
                pending.append(lab.group(1))
                continue
            m = ADDR_RE.search(line)
            if not m:
                continue
            addr = int(m.group(1), 16)
            for lab in pending:
                labels[lab] = addr
            pending = []
            if (m.group(2) or "").strip() == "@!PT":
                continue
            t = TARGET_RE.search(line)
            insns.append((addr, m.group(3), t.group(1) if t else None))
        ops = collections.Counter(op for _, op, _ in insns)
        loops = []
        for addr, op, target in insns:
            if op == "BRA" and target in labels and labels[target] <= addr:
                lo = labels[target]
                body = collections.Counter(o for a, o, _ in insns if lo <= a <= addr)
                loops.append((lo, addr, body))
        out.append((name, ops, sorted(loops, key=lambda x: (x[0], -x[1]))))
    return out


def op_counts(ops):
    return " ".join("%s=%d" % (k, ops[k]) for k in KEY_OPS if ops[k])


def main(argv):
    args = argv[1:]
    arch, dump, show_all, show_loops = "sm_90a", None, False, False
    rest = []
    i = 0
    while i < len(args):
        if args[i] == "--arch" and i + 1 < len(args):
            arch, i = args[i + 1], i + 2
        elif args[i] == "--dump" and i + 1 < len(args):
            dump, i = args[i + 1], i + 2
        elif args[i] == "--all":
            show_all, i = True, i + 1
        elif args[i] == "--loops":
            show_loops, i = True, i + 1
        else:
            rest.append(args[i])
            i += 1
    if not rest or not arch.startswith("sm_"):
        print(__doc__.strip())
        return 2
    fpath, want = rest[0], (rest[1] if len(rest) > 1 else "")
    nvdisasm = find_nvdisasm()
    if not nvdisasm:
        print("error: nvdisasm not found ($NVDISASM, PATH, .venv-nvrtc); install it with "
              "`.venv-nvrtc/bin/pip install nvidia-cuda-nvdisasm`")
        return 2
    lib, _ = nvrtc_check.load_nvrtc()
    with open(os.path.join(nvrtc_check.CUDA_DIR, "common.cuh")) as f:
        common = f.read()
    with open(fpath) as f:
        body = f.read()
    src = nvrtc_check.module_source(common, fpath, body)
    try:
        code = cubin(lib, src, os.path.basename(fpath), arch)
    except RuntimeError as e:
        print("error: %s" % e)
        return 1
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(code)
        f.flush()
        run = subprocess.run([nvdisasm, f.name], capture_output=True, text=True)
    if run.returncode != 0:
        print("error: nvdisasm: %s" % run.stderr.strip())
        return 1
    if dump:
        with open(dump, "w") as f:
            f.write(run.stdout)
    print("%s for %s (static counts: an instruction in a loop counts once)" % (os.path.relpath(fpath), arch))
    for name, ops, loops in sorted(entries(run.stdout)):
        if want not in name:
            continue
        total = sum(ops.values())
        if show_all:
            print("%s: %d instructions" % (name, total))
            print("  " + " ".join("%s=%d" % kv for kv in ops.most_common()))
        else:
            print("%-28s %5d  %s" % (name, total, op_counts(ops)))
        if show_loops:
            for lo, hi, body in loops:
                depth = sum(1 for l2, h2, _ in loops if l2 <= lo and hi <= h2) - 1
                print("  %sloop %04x-%04x %5d  %s" % ("  " * depth, lo, hi, sum(body.values()), op_counts(body)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
