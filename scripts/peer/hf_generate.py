#!/usr/bin/env python3
"""transformers peer for `arbor bench generate` / `arbor bench gpu --kind generate`: batched
generation with `generate`, on the CPU or a GPU.

    .venv-torch/bin/python scripts/peer/hf_generate.py \\
        --model-config configs/models/bench-tiny --batch 64 --prompt-len 16 --new-tokens 112 --threads 2
    python3 scripts/peer/hf_generate.py --device cuda --dtype bf16 --greedy \\
        --model-config configs/models/qwen2-0.5b-shape --batch 256 --new-tokens 64

Random weights (from_config, sdpa), random prompts of equal length (no padding), do_sample=True at
temperature 1 (or greedy with --greedy), no EOS (every sequence produces exactly new-tokens
tokens), KV cache on, weights and cache in --dtype. Median wall time of `reps` calls after one
warm-up (on a GPU: synchronised). Prints one JSON line.
"""
import argparse
import json
import os
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-config", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=112)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--greedy", action="store_true", help="argmax instead of sampling at T = 1")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    path = args.model_config
    if os.path.isfile(path):
        path = os.path.dirname(os.path.abspath(path))
    cfg = AutoConfig.from_pretrained(path)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    dev = torch.device(args.device)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype).to(dev).eval()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt_len), device=dev)
    mask = torch.ones_like(ids)
    sampling = {} if args.greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run():
        with torch.no_grad():
            return model.generate(
                input_ids=ids, attention_mask=mask, do_sample=not args.greedy, **sampling,
                max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0,
                eos_token_id=None, use_cache=True,
            )

    run()
    times = []
    for _ in range(args.reps):
        sync()
        t = time.perf_counter()
        out = run()
        sync()
        times.append(time.perf_counter() - t)
    produced = (out.shape[1] - args.prompt_len) * args.batch
    secs = statistics.median(times)
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(json.dumps({"impl": "transformers", "torch": torch.__version__, "device": device, "dtype": args.dtype,
                      "mode": "greedy" if args.greedy else "sampled", "threads": args.threads, "batch": args.batch,
                      "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "generated_tokens": produced,
                      "seconds": secs, "tokens_per_s": produced / secs}))


if __name__ == "__main__":
    main()
