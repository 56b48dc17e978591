#!/usr/bin/env python3
"""The short table gpu-check.sh prints last: test results, every benchmark's headline figure and
the ratios against the PyTorch peers, read from the files the run wrote to its output folder.

Usage: python3 scripts/gpu_summary.py OUT_DIR
"""
import json
import os
import re
import sys


def load(d, name):
    p = os.path.join(d, name)
    try:
        with open(p) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def main():
    d = sys.argv[1]
    lines = ["== gpu-check summary"]
    dev = os.path.join(d, "device.txt")
    if os.path.exists(dev):
        lines.append("device: " + open(dev).read().strip())
    tests = os.path.join(d, "tests.txt")
    if os.path.exists(tests):
        text = open(tests).read()
        results = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
        failed = re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)
        passed = sum(int(p) for _, p, _ in results)
        nfail = sum(int(f) for _, _, f in results)
        lines.append(f"tests: {passed} passed, {nfail} failed" + (f" ({', '.join(failed)})" if failed else ""))
    rows = []
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        j = load(d, name)
        if not j:
            continue
        fig = []
        for key, fmt in (("tokens_per_s", "{:,.0f} tok/s"), ("gen_tokens_per_s", "gen {:,.0f} tok/s"),
                         ("step_ms", "{:.1f} ms"), ("step_s", "step {:.2f} s"), ("fwd_bwd_ms", "fwd+bwd {:.3f} ms"),
                         ("forward_ms", "fwd {:.1f}"), ("backward_ms", "bwd {:.1f}"), ("optimizer_ms", "opt {:.1f} ms"),
                         ("tflops", "{:.1f} TFLOP/s"), ("mfu", "MFU {:.1%}"), ("copy_gb_per_s", "copy {:,.0f} GB/s"),
                         ("graphs", "{} graphs")):
            if isinstance(j.get(key), (int, float)):
                fig.append(fmt.format(j[key]))
        if isinstance(j.get("gemm_tflops"), dict):
            fig.append("GEMM " + ", ".join(f"{k} {v:.0f}" for k, v in j["gemm_tflops"].items()) + " TFLOP/s")
        rows.append(f"  {name[:-5]:<44} {j.get('impl', '?'):<14} {str(j.get('dtype', '')):<10.10} {', '.join(fig)}")
    if rows:
        lines.append("benchmarks (file, impl, dtype, figures):")
        lines.extend(rows)
    ratios = os.path.join(d, "ratios.txt")
    if os.path.exists(ratios):
        lines.append("ratios:")
        lines.extend("  " + r for r in open(ratios).read().strip().splitlines())
    sk = os.path.join(d, "skipped.txt")
    if os.path.exists(sk) and open(sk).read().strip():
        lines.append("not run:")
        lines.extend("  " + l for l in open(sk).read().strip().splitlines())
    cd = os.path.join(d, "countdown_gpu.txt")
    if os.path.exists(cd):
        keep = [l for l in open(cd).read().splitlines() if re.search(r"held-out|solve rate|wall time|error", l)]
        lines.append("countdown-gpu:")
        lines.extend("  " + l for l in keep[-6:])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
