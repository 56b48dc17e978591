#!/usr/bin/env python3
"""The short table gpu-check.sh prints last: test results, every benchmark's headline figure and
the ratios against the PyTorch peers, read from the files the run wrote to its output folder.

Usage: python3 scripts/gpu_summary.py OUT_DIR             # the summary
       python3 scripts/gpu_summary.py --ratios OUT_DIR    # every ratio whose two figures exist
       python3 scripts/gpu_summary.py --markdown OUT_DIR  # the row of docs/benchmarks.md's results table
"""
import json
import os
import re
import sys


def load(d, name):
    """The last line of OUT_DIR/name as a JSON object, or None."""
    p = os.path.join(d, name)
    try:
        with open(p) as f:
            j = json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
    return j if isinstance(j, dict) else None


def test_line(text, rc):
    """The tests' line: passed and failed counts summed over the binaries' result lines, the names
    of the failed tests (from the `failures:` lists: under --nocapture a test's FAILED does not
    follow its name), and a warning when no result line was printed (a crash, or a cut-off run)."""
    results = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
    passed = sum(int(p) for _, p, _ in results)
    nfail = sum(int(f) for _, _, f in results)
    failed = []
    for block in re.findall(r"^failures:\n((?:    \S+\n)+)", text, re.M):
        failed.extend(name.strip() for name in block.splitlines())
    line = f"tests: {passed} passed, {nfail} failed" + (f" ({', '.join(dict.fromkeys(failed))})" if failed else "")
    if not results:
        line = "tests: NO RESULT LINE (the test binary crashed or was cut off; see tests.txt)"
    if rc not in (None, "0"):
        line += f"; exit status {rc}"
    return line


def main():
    d = sys.argv[1]
    lines = ["== gpu-check summary"]
    dev = os.path.join(d, "device.txt")
    if os.path.exists(dev):
        lines.append("device: " + (open(dev).read().strip() or "-"))
    commit = os.path.join(d, "commit.txt")
    if os.path.exists(commit):
        lines.append("arbor commit: " + (open(commit).read().strip() or "-"))
    tests = os.path.join(d, "tests.txt")
    if os.path.exists(tests):
        rc_file = os.path.join(d, "tests_rc.txt")
        rc = open(rc_file).read().strip() if os.path.exists(rc_file) else None
        lines.append(test_line(open(tests, errors="replace").read(), rc))
    rows = []
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        j = load(d, name)
        if not j:
            err = os.path.join(d, name[:-5] + ".err")
            last = open(err, errors="replace").read().strip().splitlines()[-1:] if os.path.exists(err) else []
            rows.append(f"  {name[:-5]:<44} NO RESULT" + (f": {last[0][:160]}" if last else ""))
            continue
        fig = []
        for key, fmt in (("tokens_per_s", "{:,.0f} tok/s"), ("gen_tokens_per_s", "gen {:,.0f} tok/s"),
                         ("step_ms", "{:.1f} ms"), ("step_s", "step {:.2f} s"), ("fwd_bwd_ms", "fwd+bwd {:.3f} ms"),
                         ("forward_ms", "fwd {:.1f}"), ("backward_ms", "bwd {:.1f}"), ("optimizer_ms", "opt {:.1f} ms"),
                         ("tflops", "{:.1f} TFLOP/s"), ("mfu", "MFU {:.1%}"), ("copy_gb_per_s", "copy {:,.0f} GB/s"),
                         ("graphs", "{} graphs")):
            if isinstance(j.get(key), (int, float)):
                fig.append(fmt.format(j[key]))
        if isinstance(j.get("graphs_refused"), str):
            fig.append(f"graphs refused: {j['graphs_refused'][:120]}")
        if isinstance(j.get("gemm_tflops"), dict):
            fig.append("GEMM " + ", ".join(f"{k} {v:.0f}" for k, v in j["gemm_tflops"].items()) + " TFLOP/s")
        rows.append(f"  {name[:-5]:<44} {j.get('impl', '?'):<14} {str(j.get('dtype', '')).split(' ')[0]:<6} {', '.join(fig)}")
    if rows:
        lines.append("benchmarks (file, impl, dtype, figures):")
        lines.extend(rows)
    found = ratios(d)
    if found:
        lines.append("ratios:")
        lines.extend("  " + r for r in found)
    tm = os.path.join(d, "timings.txt")
    if os.path.exists(tm) and open(tm).read().strip():
        lines.append("wall time per part: " + ", ".join(open(tm).read().strip().splitlines()))
    for file, title in (("failed.txt", "FAILED (exit status not 0; the command's output in the file named):"),
                        ("skipped.txt", "not run:")):
        path = os.path.join(d, file)
        if os.path.exists(path) and open(path).read().strip():
            lines.append(title)
            lines.extend("  " + l for l in open(path).read().strip().splitlines())
    cd = os.path.join(d, "countdown_gpu.txt")
    if os.path.exists(cd):
        keep = [l for l in open(cd).read().splitlines() if re.search(r"held-out|solve rate|wall time|error", l)]
        lines.append("countdown-gpu:")
        lines.extend("  " + l for l in keep[-6:])
    for name in sorted(os.listdir(d)):
        j = load(d, name) if name.endswith(".json") else None
        prof = j.get("profile") if isinstance(j, dict) else None
        if not isinstance(prof, dict) or not prof.get("top"):
            continue
        span, busy = prof.get("span_ms") or 0.0, prof.get("busy_ms") or 0.0
        share = f" ({busy / span:.0%} of the span: the rest is the GPU waiting for work)" if span else ""
        lines.append(f"profile of {name[:-5]}: one step spans {span:.1f} ms, kernels and products {busy:.1f} ms{share}")
        for r in prof["top"][:10]:
            lines.append(f"  {r['ms']:9.2f} ms  {r['calls']:6d} x  {r['name']}")
    aj = os.path.join(d, "async_gpu.txt")
    if os.path.exists(aj):
        keep = [l for l in open(aj, errors="replace").read().splitlines()
                if re.search(r"rollout rank|solve rate|exit status|error|aborting|stopped", l)]
        lines.append("async job on the GPU (arbor launch, 1 trainer + 1 rollout rank):")
        lines.extend("  " + l[:200] for l in keep[-6:])
    print("\n".join(lines))


def ratios(d):
    """Every ratio of an arbor figure to its peer measured in the same run, whose two figures exist."""
    out = []
    for ours, peer in (("attention_bf16.json", "sdpa_bf16.json"), ("attention_bf16_d128.json", "sdpa_bf16_d128.json"),
                       ("attention_bf16_r64.json", "sdpa_bf16.json"),
                       ("attention_bf16_d128_r64.json", "sdpa_bf16_d128.json"),
                       ("attention_bf16_wgmma.json", "sdpa_bf16.json"),
                       ("attention_bf16_d128_wgmma.json", "sdpa_bf16_d128.json"),
                       ("attention_bf16_wgmma_r64.json", "sdpa_bf16.json"),
                       ("attention_bf16_grouped.json", "sdpa_bf16.json"), ("attention.json", "sdpa.json"),
                       ("attention_grouped.json", "sdpa.json")):
        a, p = load(d, ours), load(d, peer)
        if a and p and a.get("fwd_bwd_ms") and p.get("fwd_bwd_ms"):
            out.append(f"attention fwd+bwd ({a.get('dtype')}, {a.get('attn_mma', 'mma')}, "
                       f"{a.get('attn_rows', '64')}-row blocks, dK/dV {a.get('dkdv', '-')}, d {a.get('head_dim')}): arbor "
                       f"{a['fwd_ms']:.3f} + {a['bwd_ms']:.3f} ms, torch SDPA {p.get('dtype')} {p['fwd_bwd_ms']:.3f} ms, "
                       f"arbor speed = {p['fwd_bwd_ms'] / a['fwd_bwd_ms']:.2f}x SDPA ({a.get('device')})")

    def ratio(what, ours, peer):
        a, p = load(d, ours), load(d, peer)
        if a and p and a.get("tokens_per_s") and p.get("tokens_per_s"):
            out.append(f"{what}: arbor {a['tokens_per_s']:,.0f} tok/s, peer {p['tokens_per_s']:,.0f} tok/s "
                       f"({p.get('dtype')}), arbor = {a['tokens_per_s'] / p['tokens_per_s']:.2f}x ({p.get('device')})")

    ratio("train step 0.5B 4x1024, arbor bf16 products vs torch bf16 autocast", "train_step_bf16.json",
          "peer_train_step_bf16.json")
    ratio("train step 0.5B 4x1024, arbor bf16 products with the wgmma attention vs torch bf16 autocast",
          "train_step_bf16_wgmma.json", "peer_train_step_bf16.json")
    ratio("train step 0.5B 4x1024, arbor bf16 products with 64-row attention blocks vs torch bf16 autocast",
          "train_step_bf16_r64.json", "peer_train_step_bf16.json")
    for g in ("", "_graphs"):
        ratio(f"greedy generation 0.5B batch 256 (16 + 256 tokens), arbor bf16{' + CUDA graphs' if g else ''} vs "
              "transformers bf16", f"generate_greedy_0.5b_b256_bf16{g}.json", "peer_generate_greedy_0.5b_b256_bf16.json")
    for b in (16, 64, 256):
        for g in ("", "_graphs"):
            ratio(f"sampled generation 0.5B batch {b}, arbor bf16{' + CUDA graphs' if g else ''} vs transformers bf16",
                  f"generate_sampled_0.5b_b{b}_bf16{g}.json", f"peer_generate_sampled_0.5b_b{b}_bf16.json")
    ratio("train step 0.5B 4x1024, f32 vs torch f32", "train_step.json", "peer_train_step_f32.json")
    for b in (16, 64, 256):
        ratio(f"sampled generation 0.5B batch {b}, f32 vs transformers f32", f"generate_sampled_0.5b_b{b}.json",
              f"peer_generate_sampled_0.5b_b{b}_f32.json")
    a = load(d, "generate_sampled_0.5b_b16_2k_bf16_split0.json")
    b = load(d, "generate_sampled_0.5b_b16_2k_bf16_split1000000.json")
    if a and b and a.get("tokens_per_s") and b.get("tokens_per_s"):
        out.append(f"sampled generation bf16, batch 16, 16 + 2048 tokens: rows split over blocks "
                   f"{a['tokens_per_s']:,.0f} tok/s, unsplit {b['tokens_per_s']:,.0f} tok/s, split = "
                   f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x unsplit")
    for ours, peer in (("train_step_bf16.json", "peer_train_step_bf16.json"), ("train_step.json", "peer_train_step_f32.json")):
        a, p = load(d, ours), load(d, peer)
        if a and p and a.get("device_peak_mib") and p.get("device_peak_mib"):
            out.append(f"train step 0.5B 4x1024 peak device memory ({a.get('dtype')}): arbor {a['device_peak_mib']:,.0f} MiB, "
                       f"torch {p['device_peak_mib']:,.0f} MiB ({p.get('dtype')}), arbor = "
                       f"{a['device_peak_mib'] / p['device_peak_mib']:.2f}x torch")
    ratio("train step 0.5B 4x1024 with gradient checkpointing, arbor bf16 vs torch bf16 (checkpointing too)",
          "train_step_bf16_ckpt.json", "peer_train_step_bf16_ckpt.json")
    # what checkpointing costs in speed and saves in memory, each side against its own plain step
    for impl, plain, ckpt in (("arbor", "train_step_bf16.json", "train_step_bf16_ckpt.json"),
                              ("torch", "peer_train_step_bf16.json", "peer_train_step_bf16_ckpt.json"),
                              ("arbor 4x4096", "train_step_bf16_16k.json", "train_step_bf16_16k_ckpt.json")):
        a, c = load(d, plain), load(d, ckpt)
        if a and c and a.get("tokens_per_s") and c.get("tokens_per_s") and a.get("device_peak_mib") \
                and c.get("device_peak_mib"):
            out.append(f"gradient checkpointing, {impl} bf16 train step 0.5B{'' if '4096' in impl else ' 4x1024'}: "
                       f"{c['tokens_per_s'] / a['tokens_per_s']:.2f}x the plain step's tokens/s, peak device memory "
                       f"{c['device_peak_mib']:,.0f} MiB vs {a['device_peak_mib']:,.0f} MiB "
                       f"({c['device_peak_mib'] / a['device_peak_mib']:.2f}x)")
    for kept, what in (("train_step_bf16", "bf16 train step 0.5B 4x1024"),
                       ("generate_sampled_0.5b_b16_bf16", "bf16 sampled generation 0.5B batch 16")):
        a, b = load(d, f"{kept}.json"), load(d, f"{kept}_pool_release.json")
        if a and b and a.get("tokens_per_s") and b.get("tokens_per_s"):
            out.append(f"{what}: memory pool kept {a['tokens_per_s']:,.0f} tok/s, released at every sync "
                       f"{b['tokens_per_s']:,.0f} tok/s, kept = {a['tokens_per_s'] / b['tokens_per_s']:.2f}x released")
    # issue 16: tokens/s must grow with the batch (batch 256 >= 4x batch 16)
    for suffix in ("_bf16", "_bf16_graphs", ""):
        lo = load(d, f"generate_sampled_0.5b_b16{suffix}.json")
        hi = load(d, f"generate_sampled_0.5b_b256{suffix}.json")
        if lo and hi and lo.get("tokens_per_s") and hi.get("tokens_per_s"):
            out.append(f"sampled generation{suffix.replace('_', ' ') or ' f32'}: batch 256 = "
                       f"{hi['tokens_per_s'] / lo['tokens_per_s']:.2f}x batch 16")
    return out


def markdown(d):
    """docs/benchmarks.md's results row: device and commit | greedy generation 0.5B batch 256
    (f32, bf16, bf16 + graphs; bf16 over transformers bf16) | sampled generation batch 16 / 64 /
    256 (f32; bf16; bf16 + graphs; batch 256 over batch 16) | train step f32 / tf32 / bf16 tok/s
    (MFU; bf16 over torch bf16) | attention fwd+bwd bf16 vs SDPA bf16 | rl-step generate /
    recompute / train s with its shape | countdown-gpu before -> after, wall time. A missing
    figure is "-"."""
    def num(j, key):
        return j.get(key) if j and isinstance(j.get(key), (int, float)) and j.get(key) else None

    def tok(name):
        v = num(load(d, name), "tokens_per_s")
        return f"{v:,.0f}" if v else "-"

    def over(ours, peer, what):
        a, p = num(load(d, ours), "tokens_per_s"), num(load(d, peer), "tokens_per_s")
        return f"{a / p:.2f}x {what}" if a and p else None

    def text(name):
        p = os.path.join(d, name)
        return open(p).read().strip() if os.path.exists(p) else ""

    dev = text("device.txt") or "-"
    commit = text("commit.txt").split("\n")[0][:12]
    if commit:
        dev += f" (arbor {commit})"
    greedy = " / ".join(tok(f"generate_greedy_0.5b_b256{sfx}.json") for sfx in ("", "_bf16", "_bf16_graphs"))
    greedy += " (f32 / bf16 / bf16 + graphs)"
    r = [x for x in (over("generate_greedy_0.5b_b256_bf16.json", "peer_generate_greedy_0.5b_b256_bf16.json",
                          "transformers bf16"),
                     over("generate_greedy_0.5b_b256_bf16_graphs.json", "peer_generate_greedy_0.5b_b256_bf16.json",
                          "with graphs")) if x]
    if r:
        greedy += "; " + ", ".join(r)
    gen = "; ".join(" / ".join(tok(f"generate_sampled_0.5b_b{b}{sfx}.json") for b in (16, 64, 256)) + f" ({dt})"
                    for sfx, dt in (("", "f32"), ("_bf16", "bf16"), ("_bf16_graphs", "bf16 + graphs")))
    growth = []
    for sfx, dt in (("", "f32"), ("_bf16", "bf16"), ("_bf16_graphs", "bf16 + graphs")):
        lo = num(load(d, f"generate_sampled_0.5b_b16{sfx}.json"), "tokens_per_s")
        hi = num(load(d, f"generate_sampled_0.5b_b256{sfx}.json"), "tokens_per_s")
        if lo and hi:
            growth.append(f"{dt} {hi / lo:.1f}x")
    if growth:
        gen += "; batch 256 over 16: " + ", ".join(growth)
    steps = []
    for name in ("train_step.json", "train_step_tf32.json", "train_step_bf16.json"):
        j = load(d, name)
        steps.append(f"{j['tokens_per_s']:,.0f} ({j['mfu']:.0%})" if j and "mfu" in j and "tokens_per_s" in j else "-")
    step = " / ".join(steps)
    vs = over("train_step_bf16.json", "peer_train_step_bf16.json", "torch bf16")
    if vs:
        step += f"; bf16 {vs}"
    att = []
    for ours, peer, what in (("attention_bf16.json", "sdpa_bf16.json", "d 64"),
                             ("attention_bf16_d128.json", "sdpa_bf16_d128.json", "d 128")):
        a, p = load(d, ours), load(d, peer)
        if a and p and a.get("fwd_bwd_ms") and p.get("fwd_bwd_ms"):
            att.append(f"{what}: {a['fwd_bwd_ms']:.2f} vs {p['fwd_bwd_ms']:.2f} ms ({p['fwd_bwd_ms'] / a['fwd_bwd_ms']:.2f}x)")
    rl = []
    for name, what in (("rl_step_0.5b.json", "f32"), ("rl_step_0.5b_bf16.json", "bf16"),
                       ("rl_step_0.5b_bf16_64x8x256.json", "bf16")):
        j = load(d, name)
        if j and all(k in j for k in ("generate_s", "recompute_s", "train_s")):
            mem = f", {j['device_mem_mib'] / 1024:.1f} GiB" if j.get("device_mem_mib") else ""
            shape = f"{j.get('prompts', '?')} x {j.get('samples', '?')} x {j.get('new_tokens', '?')}"
            rl.append(f"{what} {shape}: {j['generate_s']:.2f} / {j['recompute_s']:.2f} / {j['train_s']:.2f} s{mem}")
    cd = "-"
    p = os.path.join(d, "countdown_gpu.txt")
    if os.path.exists(p):
        body = open(p).read()
        rate = re.findall(r"held-out solve rate[^\n]*", body)
        wall = re.findall(r"wall time: (\d+) s", body)
        short = " (short job)" if "countdown-gpu-short" in body else ""
        if not rate:
            # a job stopped before its end: its evaluations so far (before RL, the last step's)
            evals = re.findall(r"rl eval (before|step \d+): solve rate greedy ([\d.]+)%, sampled ([\d.]+)%", body)
            if evals:
                rate = [" -> ".join(f"{w}: sampled {s_}%, greedy {g}%" for w, g, s_ in (evals[0], evals[-1])[:len(evals)])
                        + " (stopped before the end)"]
        cd = (rate[-1] if rate else "no solve rate printed") + short + (f", {wall[-1]} s" if wall else "")
    cells = [dev, greedy, gen, step, "; ".join(att) or "-", "; ".join(rl) or "-", cd]
    print("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--markdown":
        markdown(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--ratios":
        print("\n".join(ratios(sys.argv[2])))
    else:
        main()
