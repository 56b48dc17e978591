#!/usr/bin/env python3
"""Check by hand that transformers loads an HF directory exported by arbor.

    .venv-torch/bin/python scripts/check_export.py EXPORTED_DIR tests/fixtures/qwen2_tiny [--tol 1e-4]

Loads EXPORTED_DIR with AutoModelForCausalLM.from_pretrained (float32, eager attention) and,
if EXPORTED_DIR/tokenizer.json exists, AutoTokenizer.from_pretrained. Runs the fixture's
input_ids (right-padded, attention_mask from `lengths`) and prints max |logits - fixture logits|
over valid positions (and over all positions). Exit status 1 if the valid-position difference
exceeds --tol. Compare against the fixture the export came from (e.g. arbor loaded
tests/fixtures/qwen2_tiny and wrote it back out unchanged).
"""
import argparse
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exported_dir")
    ap.add_argument("fixture_dir")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    model = AutoModelForCausalLM.from_pretrained(
        args.exported_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    cfg = model.config
    print(f"loaded {type(model).__name__}: hidden={cfg.hidden_size} layers={cfg.num_hidden_layers} "
          f"vocab={cfg.vocab_size} tie_word_embeddings={getattr(cfg, 'tie_word_embeddings', None)} "
          f"params={sum(p.numel() for p in model.parameters())}")
    tok_path = os.path.join(args.exported_dir, "tokenizer.json")
    if os.path.exists(tok_path):
        tok = AutoTokenizer.from_pretrained(args.exported_dir)
        ids = tok("hello world").input_ids
        print(f"tokenizer: {type(tok).__name__}, vocab={len(tok)}, 'hello world' -> {ids} -> {tok.decode(ids)!r}")

    ref = load_file(os.path.join(args.fixture_dir, "reference.safetensors"))
    input_ids, lengths, ref_logits = ref["input_ids"], ref["lengths"], ref["logits"]
    B, T = input_ids.shape
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.int64)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
    if logits.shape != ref_logits.shape:
        print(f"FAIL: logits shape {tuple(logits.shape)} != fixture {tuple(ref_logits.shape)}")
        return 1
    diff = (logits - ref_logits).abs()
    valid = diff[mask.bool()].max().item()
    print(f"max |logits - fixture logits| valid positions = {valid:.3e}, all positions = {diff.max().item():.3e} "
          f"(max |fixture logit| = {ref_logits.abs().max().item():.3f})")
    ok = valid <= args.tol
    print("OK" if ok else f"FAIL (tol {args.tol})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
