#!/usr/bin/env python3
"""PyTorch peer benchmark: one full training step of a causal LM, on the CPU or a GPU.

    .venv-torch/bin/python scripts/peer/torch_train_step.py \\
        --model-config configs/models/bench-tiny --batch 8 --seq 128 --threads 2 --steps 20 --warmup 3
    python3 scripts/peer/torch_train_step.py --device cuda --dtype bf16 \\
        --model-config configs/models/qwen2-0.5b-shape --batch 4 --seq 1024 --steps 5 --warmup 2

Random weights (AutoModelForCausalLM.from_config, float32 master weights, sdpa attention), random
token ids; --dtype bf16 runs forward and backward under torch.autocast(bfloat16) (f32 weights and
AdamW state, the mixed-precision recipe arbor's bf16 path follows). On a GPU each step is
synchronised before its clock stops.
Each step: forward with labels=input_ids (mean next-token CE), backward, clip_grad_norm_(1.0),
AdamW(lr=1e-4, weight_decay=0.1).step(), zero_grad(set_to_none=True).
--checkpointing turns on transformers' gradient checkpointing (each decoder layer's activations
recomputed in the backward; non-reentrant torch.utils.checkpoint), arbor's `--checkpointing` peer.
`warmup` untimed steps, then `steps` steps each timed with time.perf_counter.
Prints exactly one JSON line on stdout (everything else goes to stderr).
"""
import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-config", required=True, help="directory holding config.json, or the config.json itself")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing of every decoder layer")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(args.seed)

    cfg_path = args.model_config
    if os.path.isfile(cfg_path):
        cfg_path = os.path.dirname(os.path.abspath(cfg_path))
    cfg = AutoConfig.from_pretrained(cfg_path)
    if args.device != "cpu" and args.dtype == "f32":
        # Without a mask transformers hands grouped kv heads to SDPA (enable_gqa), which in f32
        # only its unfused kernel takes: repeat the kv heads instead (as scripts/peer/sdpa_bench.py
        # does), so a fused f32 kernel runs and the peer is not slowed by the grouping.
        try:
            import transformers.integrations.sdpa_attention as hf_sdpa

            hf_sdpa.use_gqa_in_sdpa = lambda *a, **k: False
        except (ImportError, AttributeError) as e:
            print(f"torch_train_step: kv heads left grouped ({e})", file=sys.stderr)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    dev = torch.device(args.device)
    model.to(dev, torch.float32).train()
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

    B, T = args.batch, args.seq
    V = cfg.vocab_size
    gen = torch.Generator().manual_seed(args.seed + 1)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step():
        ids = torch.randint(0, V, (B, T), generator=gen).to(dev)
        with autocast:
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()  # .item() synchronises a GPU

    for _ in range(args.warmup):
        step()
    times = []
    loss = float("nan")
    c0 = time.process_time()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    # Process CPU seconds (all threads) per timed step: a diagnostic for a shared, noisy
    # machine. cpu_ms / threads ~ the wall time the step would take with the cores to itself.
    cpu_per_step = (time.process_time() - c0) / args.steps

    # ---- FLOP count (per step) ---------------------------------------------------------
    # Dense matmuls: 6 FLOPs per matmul parameter per token (2 forward + 4 backward).
    #   matmul_params = non-embedding params (all params except model.embed_tokens, which is a
    #   gather, not a matmul) + lm_head params when the head is tied to the embedding (then it
    #   is not counted among the non-embedding params but is still a [V, hidden] matmul).
    #   (Biases and RMSNorm weights are included in "non-embedding"; they are negligible.)
    # Attention score/value matmuls (not parameters): per layer, per sequence, per head,
    #   QK^T and PV are each 2·T²·D FLOPs forward for all T² pairs; causal keeps half of the
    #   pairs → 2·(T²·D) forward for the two matmuls, ×3 for forward+backward
    #   → 6·T²·D per head → 6·L·B·T²·H·D per step (H = query heads, D = head_dim).
    n_params = sum(p.numel() for p in model.parameters())  # unique (tied weights counted once)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == emb.data_ptr()
    matmul_params = n_params - emb.numel() + (head.numel() if tied else 0)
    L = cfg.num_hidden_layers
    H = cfg.num_attention_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    tokens = B * T
    flops = 6 * matmul_params * tokens + 6 * L * B * T * T * H * D

    med = statistics.median(times)
    mean = statistics.fmean(times)
    res = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "checkpointing": args.checkpointing,
        "threads": args.threads,
        "batch": B,
        "seq": T,
        "params": n_params,
        "matmul_params": matmul_params,
        "steps": args.steps,
        "step_ms": round(med * 1e3, 3),  # median over the timed steps
        "step_ms_mean": round(mean * 1e3, 3),
        "step_ms_min": round(min(times) * 1e3, 3),
        "cpu_ms_per_step": round(cpu_per_step * 1e3, 3),
        "tokens_per_s": round(tokens / med, 1),
        "gflops": round(flops / med / 1e9, 3),
        "flops_per_step": flops,
        "final_loss": round(loss, 5),
    }
    if dev.type == "cuda":
        # the caching allocator's peak of live tensors over the run (arbor's device_peak_mib)
        res["device_peak_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
