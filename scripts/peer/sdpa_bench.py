#!/usr/bin/env python3
"""Peer of `arbor bench gpu --kind attention`: PyTorch scaled_dot_product_attention (causal)
forward + backward on the same shape, in the same dtype, one JSON line. GQA: in bf16 the flash
kernel reads the shared key/value heads itself (`enable_gqa`, as transformers does); in f32 the
memory-efficient kernel needs them expanded to full heads (`enable_gqa` would fall back to the
math kernel), and the expansion is timed with it. Median of --steps timed calls.

Usage: python3 scripts/peer/sdpa_bench.py --batch 8 --seq 1024 --heads 14 --kv-heads 2 --head-dim 64 [--dtype f32|bf16]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    dt = torch.float32 if a.dtype == "f32" else torch.bfloat16
    dev = torch.device("cuda")
    g = a.heads // a.kv_heads
    q = torch.randn(a.batch, a.heads, a.seq, a.head_dim, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(a.batch, a.kv_heads, a.seq, a.head_dim, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(a.batch, a.kv_heads, a.seq, a.head_dim, device=dev, dtype=dt, requires_grad=True)
    dout = torch.randn(a.batch, a.heads, a.seq, a.head_dim, device=dev, dtype=dt)
    native = a.dtype == "bf16"

    def attend():
        if native:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=True)

    fwd, bwd = [], []
    for i in range(a.warmup + a.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        o = attend()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        o.backward(dout)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        q.grad = k.grad = v.grad = None
        if i >= a.warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    f, b = sorted(fwd)[len(fwd) // 2], sorted(bwd)[len(bwd) // 2]
    print(json.dumps({"impl": "torch-sdpa", "device": torch.cuda.get_device_name(), "dtype": a.dtype,
                      "batch": a.batch, "seq": a.seq, "heads": a.heads, "kv_heads": a.kv_heads,
                      "head_dim": a.head_dim, "gqa": "native" if native else "expanded", "fwd_ms": f * 1e3, "bwd_ms": b * 1e3, "fwd_bwd_ms": (f + b) * 1e3}))


if __name__ == "__main__":
    main()
