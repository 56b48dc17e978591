#!/usr/bin/env python3
"""A plain PyTorch GRPO reference on arbor's Countdown task (issue "RL that learns as much as a
plain GRPO reference"; results in docs/efficacy.md).

Written from the task's description (ALGORITHMS.md §9), not from arbor's code: its own problem
generator, checker, sampler and loss, on HF transformers' Qwen2 implementation. It starts from
the same warm start as arbor's default job (an HF directory) and saves HF directories that
`arbor eval` scores with arbor's own held-out evaluation, so both trainers are measured on the
same problems with the same sampling streams.

The recipe (each knob a flag, so arbor's differences can be ablated here too):
  32 prompts x 8 samples at T = 1, max 32 new tokens, reward 1 for a correct last line else 0,
  advantage (r - mean) / (std + 1e-6) over the group, loss = -sum(A * log pi) / tokens over every
  response token of the step (token-mean, zero-advantage samples included), one AdamW update
  per step (torch defaults: betas 0.9/0.999, weight decay 0.01), lr 1e-4, no gradient clipping.

  pip install torch transformers safetensors
  python3 scripts/peer/grpo_reference.py --warm configs/warmstart/countdown-sft \
      --steps 250 --out runs/peer-grpo --save-every 125
  ./target/release/arbor eval --model runs/peer-grpo/step-250 --step 900
"""

import argparse
import json
import math
import random
import shutil
import time
from fractions import Fraction
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM

PAD, BOS, EOS = 0, 1, 2
MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------- the task
def mix64(z):
    """SplitMix64's finaliser (the held-out split is a hash of the sorted number pool)."""
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def is_heldout(pool, fraction=0.1):
    """Same split as arbor: 10 % of number multisets are never trained on."""
    h = 0xC0DE
    for x in sorted(pool):
        h = mix64(h ^ x)
    return (h % 10_000) / 10_000 < fraction


def reachable(pool, max_target):
    """Targets in 1..max reachable with every number used once, positive-integer intermediates."""
    out = set()

    def go(vals):
        if len(vals) == 1:
            if 1 <= vals[0] <= max_target:
                out.add(vals[0])
            return
        for i, a in enumerate(vals):
            for j, b in enumerate(vals):
                if i == j:
                    continue
                rest = [v for k, v in enumerate(vals) if k not in (i, j)]
                for v in (a + b, a - b, a * b, a // b if b and a % b == 0 else 0):
                    if v > 0:
                        go(rest + [v])

    go(list(pool))
    return sorted(out)


def training_problem(rng, numbers=3, max_number=20, max_target=100):
    while True:
        pool = [rng.randint(1, max_number) for _ in range(numbers)]
        if is_heldout(pool):
            continue
        targets = reachable(pool, max_target)
        if targets:
            return pool, rng.choice(targets)


class Expr:
    """Recursive-descent evaluation of + - * / and parentheses over non-negative integers."""

    def __init__(self, text):
        self.s, self.i, self.used = text.replace(" ", ""), 0, []

    def peek(self):
        return self.s[self.i] if self.i < len(self.s) else None

    def atom(self):
        c = self.peek()
        if c == "(":
            self.i += 1
            v = self.sum()
            if self.peek() != ")":
                raise ValueError("unclosed")
            self.i += 1
            return v
        j = self.i
        while self.peek() is not None and self.peek().isdigit():
            self.i += 1
        if j == self.i:
            raise ValueError("number expected")
        n = int(self.s[j : self.i])
        self.used.append(n)
        return Fraction(n)

    def product(self):
        v = self.atom()
        while self.peek() in ("*", "/"):
            op = self.s[self.i]
            self.i += 1
            w = self.atom()
            if op == "/" and w == 0:
                raise ZeroDivisionError
            v = v * w if op == "*" else v / w
        return v

    def sum(self):
        v = self.product()
        while self.peek() in ("+", "-"):
            op = self.s[self.i]
            self.i += 1
            w = self.product()
            v = v + w if op == "+" else v - w
        return v


def reward(pool, target, response):
    """1 if the last non-empty line uses every number exactly once and equals the target."""
    lines = [l for l in response.split("\n") if l.strip()]
    if not lines:
        return 0.0
    try:
        e = Expr(lines[-1])
        v = e.sum()
        if e.i != len(e.s):
            return 0.0
    except (ValueError, ZeroDivisionError):
        return 0.0
    return 1.0 if sorted(e.used) == sorted(pool) and v == target else 0.0


# ---------------------------------------------------------------------------- tokenizer
class CharTok:
    def __init__(self, warm):
        vocab = json.loads((Path(warm) / "tokenizer.json").read_text())["model"]["vocab"]
        self.id = {k: v for k, v in vocab.items() if len(k) == 1}
        self.ch = {v: k for k, v in self.id.items()}

    def encode(self, text):
        return [self.id[c] for c in text]

    def decode(self, ids):
        return "".join(self.ch.get(i, "") for i in ids)


# ---------------------------------------------------------------------------- GRPO
def sample(model, prompts, temperature, max_new):
    """Left-padded batch sampling with a KV cache; returns the response token lists (EOS kept)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = (ids != PAD).long()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
    responses = []
    for row in out[:, width:].tolist():
        r = []
        for t in row:
            r.append(t)
            if t == EOS:
                break
        responses.append([t for t in r if t != PAD])
    return responses


def response_logprobs(model, prompts, responses):
    """log pi(token) of every response token (right-padded batch), and the mask of real tokens."""
    seqs = [p + r for p, r in zip(prompts, responses)]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    resp = torch.zeros_like(logp)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        resp[b, len(p) - 1 : len(p) - 1 + len(r)] = 1.0
    return logp, resp


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm", default="configs/warmstart/countdown-sft")
    ap.add_argument("--out", default="runs/peer-grpo")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--minutes", type=float, default=0.0, help="stop after this wall time (0 = steps only)")
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--grad-clip", type=float, default=0.0, help="global-norm clip (0 = off)")
    ap.add_argument("--filter-zero-std", action="store_true", help="drop zero-advantage groups (loss over kept tokens)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    tok = CharTok(args.warm)
    model = Qwen2ForCausalLM.from_pretrained(args.warm, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, args.beta2), weight_decay=args.weight_decay)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = open(out / "metrics.jsonl", "w")

    def save(step):
        d = out / f"step-{step}"
        model.save_pretrained(d, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(args.warm) / f).exists():
                shutil.copy(Path(args.warm) / f, d / f)

    t0 = time.time()
    step = 0
    while step < args.steps and not (args.minutes and time.time() - t0 > 60 * args.minutes):
        problems = [training_problem(rng) for _ in range(args.prompts)]
        prompts, owners = [], []
        for k, (pool, target) in enumerate(problems):
            ids = [BOS] + tok.encode(" ".join(map(str, pool)) + f"->{target}:")
            for _ in range(args.samples):
                prompts.append(ids)
                owners.append(k)
        model.eval()
        responses = sample(model, prompts, 1.0, args.max_new)
        rewards = torch.tensor(
            [reward(*problems[o], tok.decode([t for t in r if t != EOS])) for o, r in zip(owners, responses)]
        )
        groups = rewards.view(args.prompts, args.samples)
        adv = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-6)).view(-1)
        keep = torch.ones_like(adv, dtype=torch.bool)
        if args.filter_zero_std:
            keep = (groups.std(1) > 0).repeat_interleave(args.samples)
        model.train()
        idx = keep.nonzero().view(-1).tolist()
        loss_value, norm = 0.0, 0.0
        if idx:
            logp, resp = response_logprobs(model, [prompts[i] for i in idx], [responses[i] for i in idx])
            a = adv[idx][:, None]
            loss = -(a * logp * resp).sum() / resp.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or math.inf))
            opt.step()
            loss_value = float(loss)
        step += 1
        zero = float((groups.std(1) == 0).float().mean())
        line = {
            "step": step,
            "reward": float(rewards.mean()),
            "len": sum(map(len, responses)) / len(responses),
            "zero_std_groups": zero,
            "loss": loss_value,
            "grad_norm": norm,
            "elapsed_s": time.time() - t0,
        }
        metrics.write(json.dumps(line) + "\n")
        metrics.flush()
        if step % 25 == 0 or step == 1:
            print(
                f"step {step:4d}  reward {line['reward']:.3f}  len {line['len']:.1f}  zero-std {zero:.2f}"
                f"  grad_norm {norm:.2f}  {line['elapsed_s']:.0f}s",
                flush=True,
            )
        if args.save_every and step % args.save_every == 0:
            save(step)
    save(step)
    print(f"done: {step} steps in {time.time() - t0:.0f}s -> {out}/step-{step}")


if __name__ == "__main__":
    main()
