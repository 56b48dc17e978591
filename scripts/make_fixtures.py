#!/usr/bin/env python3
"""Generate golden fixtures for arbor's numerical core (run by hand, never in CI).

    python3 -m venv .venv-torch
    .venv-torch/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-torch/bin/python scripts/make_fixtures.py

Writes, under tests/fixtures/:
  qwen2_tiny/  llama_tiny/  qwen3_tiny/  llama3_rope_tiny/  mistral_tiny/  qwen2_yarn_tiny/ : HF save_pretrained output +
                            reference.safetensors
  adamw/                    : reference.safetensors + hparams.json
and configs/models/bench-tiny/config.json (benchmark config, no weights).
Everything is float32 (ids int64) and deterministic (fixed seeds, CPU only).
See tests/fixtures/README.md for the exact contents.
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

B, T = 3, 17
LENGTHS = [17, 11, 5]


def reinit_(model, seed):
    """Re-initialise every parameter so nothing is trivially zero/one.

    Weights and biases ~ N(0, 0.2); RMSNorm weights ~ 1 + 0.1 N(0, 1).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # input_layernorm, post_attention_layernorm, model.norm
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def make_inputs(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(LENGTHS, dtype=torch.int64)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.int64)  # [B, T]
    # ids in 1..vocab-1 on valid positions, 0 (pad) beyond each row's length
    input_ids = torch.randint(1, vocab, (B, T), generator=g) * mask
    target_ids = torch.randint(0, vocab, (B, T), generator=g) * mask
    weights = (torch.rand((B, T), generator=g) * 2.0 - 1.0) * mask.float()
    return input_ids, target_ids, weights, lengths, mask


def patch_config_json(path):
    """transformers >= 5 writes RoPE as {"rope_parameters": {"rope_theta": ..}} and "dtype".

    Hub checkpoints (and arbor's parser) use the legacy top-level "rope_theta" /
    "torch_dtype"; write both spellings so either kind of reader sees the same values.
    """
    with open(path) as f:
        c = json.load(f)
    rp = c.get("rope_parameters") or {}
    if "rope_theta" not in c and "rope_theta" in rp:
        c["rope_theta"] = rp["rope_theta"]
    if rp.get("rope_type", "default") != "default" and "rope_scaling" not in c:
        c["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    if "torch_dtype" not in c and "dtype" in c:
        c["torch_dtype"] = c["dtype"]
    with open(path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")


def build_model_fixture(name, cfg, model_cls, seed):
    out = os.path.join(FIX, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)

    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).to(torch.float32)
    reinit_(model, seed + 1)
    model.eval()  # no dropout (all dropouts are 0 anyway)

    input_ids, target_ids, weights, lengths, mask = make_inputs(cfg.vocab_size, seed + 2)

    model.zero_grad(set_to_none=True)
    logits = model(input_ids=input_ids, attention_mask=mask).logits  # [B, T, V], default position_ids 0..T-1
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    maskf = mask.to(torch.float32)
    logprobs = logp_all.gather(-1, target_ids[..., None])[..., 0] * maskf
    entropy = -(logp_all.exp() * logp_all).sum(-1) * maskf
    loss = -(weights * logprobs).sum()
    loss.backward()

    tensors = {
        "input_ids": input_ids.contiguous(),
        "lengths": lengths.contiguous(),
        "target_ids": target_ids.contiguous(),
        "weights": weights.float().contiguous(),
        "logits": logits.detach().float().contiguous(),
        "logprobs": logprobs.detach().float().contiguous(),
        "entropy": entropy.detach().float().contiguous(),
        "loss": loss.detach().float().reshape(()).contiguous(),
    }
    print(f"== {name}: vocab={cfg.vocab_size} loss={loss.item():.6f}")
    print(f"   max|logit| = {logits.detach().abs().max().item():.4f}")
    print(f"   max|logprob| (valid) = {logprobs.detach().abs().max().item():.4f}, "
          f"entropy range (valid) = [{entropy[mask.bool()].min().item():.4f}, {entropy[mask.bool()].max().item():.4f}]")
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        tensors[f"grad.{pname}"] = p.grad.detach().float().contiguous().clone()
        print(f"   grad.{pname:<50s} {str(list(p.shape)):<12s} max|g| = {p.grad.abs().max().item():.6e}")

    model.save_pretrained(out, safe_serialization=True)
    patch_config_json(os.path.join(out, "config.json"))
    save_file(tensors, os.path.join(out, "reference.safetensors"))

    # Round trip: the saved directory must reproduce the reference logits exactly.
    re_model = model_cls.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    assert re_model.config.rope_parameters["rope_theta"] == cfg.rope_parameters["rope_theta"]
    with torch.no_grad():
        re_logits = re_model(input_ids=input_ids, attention_mask=mask).logits
    diff = (re_logits - logits.detach()).abs().max().item()
    print(f"   reload check: max|logits(reloaded) - logits| = {diff:.3e}")
    assert diff == 0.0, diff
    return out


def tiny(**dims):
    """The dimensions every tiny model shares (64 wide, 2 layers, float32), with `dims`."""
    return dict(hidden_size=64, num_hidden_layers=2, torch_dtype="float32", **dims)


def qwen2_tiny():
    cfg = Qwen2Config(
        **tiny(
            intermediate_size=160,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=128,
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        )
    )
    return build_model_fixture("qwen2_tiny", cfg, Qwen2ForCausalLM, seed=1234)


def llama_tiny():
    cfg = LlamaConfig(
        **tiny(
            intermediate_size=176,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=96,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
        )
    )
    return build_model_fixture("llama_tiny", cfg, LlamaForCausalLM, seed=4321)


def qwen3_tiny():
    # Qwen3: q_norm / k_norm on every head, no biases, tied embeddings, and a head_dim (32) that
    # is not hidden_size / heads (16), as in the released models
    cfg = Qwen3Config(
        **tiny(
            intermediate_size=160,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            vocab_size=112,
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            attention_bias=False,
        )
    )
    return build_model_fixture("qwen3_tiny", cfg, Qwen3ForCausalLM, seed=2468)


def llama3_rope_tiny():
    # Llama 3.1's RoPE scaling ("llama3"): with original_max_position_embeddings 64 and head_dim 16
    # at theta 500000 the rotated pairs fall in all three bands (wavelength < 16 kept, > 64 divided
    # by the factor, between interpolated)
    cfg = LlamaConfig(
        **tiny(
            intermediate_size=176,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=96,
            max_position_embeddings=512,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
        )
    )
    return build_model_fixture("llama3_rope_tiny", cfg, LlamaForCausalLM, seed=1357)


def qwen2_yarn_tiny():
    # YaRN (Qwen's long-context setting): at head_dim 16, theta 1e4 and an original context of 512 the
    # correction range is pairs 0..4, so pairs 1-3 are mixed, pair 0 extrapolated, 4-7 interpolated;
    # cos and sin carry the attention factor 0.1 ln 4 + 1
    cfg = Qwen2Config(
        **tiny(
            intermediate_size=160,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=128,
            max_position_embeddings=2048,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 512},
            tie_word_embeddings=False,
        )
    )
    return build_model_fixture("qwen2_yarn_tiny", cfg, Qwen2ForCausalLM, seed=8642)


def mistral_tiny():
    # Mistral 7B v0.3's layout: Llama's layers under Mistral's names, no sliding window, untied
    cfg = MistralConfig(
        **tiny(
            intermediate_size=192,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=104,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            rope_theta=1000000.0,
            sliding_window=None,
            tie_word_embeddings=False,
        )
    )
    return build_model_fixture("mistral_tiny", cfg, MistralForCausalLM, seed=97531)


def adamw():
    out = os.path.join(FIX, "adamw")
    os.makedirs(out, exist_ok=True)
    hp = dict(lr=1e-2, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1, max_norm=0.5, steps=5,
              grad_scale=3.0, optimizer="torch.optim.AdamW (decoupled weight decay, bias-corrected)",
              clip="torch.nn.utils.clip_grad_norm_([a, b], max_norm) -- global L2 norm over a and b")
    torch.manual_seed(7)
    a = torch.nn.Parameter(torch.randn(7, 5))
    b = torch.nn.Parameter(torch.randn(13))
    t = {"a.init": a.detach().clone(), "b.init": b.detach().clone()}
    opt = torch.optim.AdamW([a, b], lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"],
                            weight_decay=hp["weight_decay"])
    g = torch.Generator().manual_seed(8)
    print("== adamw")
    for k in range(hp["steps"]):
        ga = torch.randn(a.shape, generator=g) * hp["grad_scale"]
        gb = torch.randn(b.shape, generator=g) * hp["grad_scale"]
        t[f"a.grad.{k}"] = ga.clone()
        t[f"b.grad.{k}"] = gb.clone()
        a.grad = ga
        b.grad = gb
        norm = torch.nn.utils.clip_grad_norm_([a, b], max_norm=hp["max_norm"])
        assert norm.item() > hp["max_norm"]
        t[f"norm.{k}"] = norm.detach().float().reshape(()).clone()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t[f"a.step.{k}"] = a.detach().clone()
        t[f"b.step.{k}"] = b.detach().clone()
        print(f"   step {k}: pre-clip norm = {norm.item():.6f}, max|a| = {a.abs().max().item():.6f}, "
              f"max|b| = {b.abs().max().item():.6f}")
    save_file({k: v.float().contiguous() for k, v in t.items()}, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "hparams.json"), "w") as f:
        json.dump(hp, f, indent=2)
        f.write("\n")


def bench_tiny_config():
    out = os.path.join(ROOT, "configs", "models", "bench-tiny")
    os.makedirs(out, exist_ok=True)
    cfg = Qwen2Config(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        torch_dtype="float32",
    )
    cfg.architectures = ["Qwen2ForCausalLM"]
    cfg.save_pretrained(out)
    patch_config_json(os.path.join(out, "config.json"))
    print(f"== wrote {out}/config.json")


def main():
    makers = {"qwen2_tiny": qwen2_tiny, "llama_tiny": llama_tiny, "qwen3_tiny": qwen3_tiny,
              "llama3_rope_tiny": llama3_rope_tiny, "mistral_tiny": mistral_tiny, "qwen2_yarn_tiny": qwen2_yarn_tiny,
              "adamw": adamw,
              "bench_tiny": bench_tiny_config}
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(makers), help="make only these fixtures")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # single-threaded CPU reductions: reproducible bit-for-bit on one machine
    for name, make in makers.items():
        if args.only is None or name in args.only:
            make()


if __name__ == "__main__":
    main()
