"""Check the model's equivalences on an accelerator (or any device): KV-cache decoding vs the full
causal forward in fp32 and bf16, same-seed determinism of sampling, and training-step speed
(fp32 vs bf16 autocast) of a preset, all measured in one run.

    python benchmarks/device_check.py --device cuda --preset GPT-B
"""
from __future__ import annotations

import argparse
import time

import torch

from imagelm.models import build_generator, gpt_config
from imagelm.models.transformer import KVCache
from imagelm.sampling.autoregressive import SamplingOptions, generate
from imagelm.train.generator import token_loss


def kv_vs_full(model, cond, dtype):
    """Max |logits| difference between teacher forcing and prefill + one-token decode steps."""
    model = model.to(dtype)
    L = model.config.seq_len
    tokens = torch.randint(0, model.config.vocab_size, (cond.shape[0], L, 1), device=cond.device)
    P = model.config.cls_token_num
    with torch.no_grad():
        full = model(tokens, cond)
        cache = KVCache(model.config, cond.shape[0], dtype, cond.device)
        prefix, mask = model.embed_condition(cond)
        steps = [model.logits(prefix, torch.arange(P, device=cond.device), cache, mask, last=1)[:, 0]]
        for i in range(L - 1):
            h = model.embed_tokens(tokens[:, i:i + 1])
            steps.append(model.logits(h, torch.tensor([P + i], device=cond.device), cache)[:, 0])
    return (full - torch.stack(steps, 1)).abs().max().item(), full.abs().max().item()


def train_speed(model, device, dtype, batch, steps=10):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    L = model.config.seq_len
    tokens = torch.randint(0, model.config.vocab_size, (batch, L, 1), device=device)
    cond = torch.randint(0, model.config.num_classes, (batch,), device=device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast(device.type, enabled=False)

    def step():
        with ctx:
            loss = token_loss(model(tokens, cond), tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return dt, batch * L / dt


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="GPT-B")
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    cfg = gpt_config(a.preset)
    model = build_generator(cfg).to(device).eval()
    for head in model.output.heads:
        torch.nn.init.normal_(head.weight, std=0.02)
    cond = torch.arange(4, device=device)
    for dtype in (torch.float32, torch.bfloat16):
        diff, scale = kv_vs_full(model, cond, dtype)
        print(f"{a.preset} {str(dtype):15s} kv-cache vs full forward: max |diff| {diff:.2e} (logits up to {scale:.2f})")
    model = model.float()
    opts = SamplingOptions(cfg_scale=2.0, top_k=100)
    t1 = generate(model, cond, opts, torch.Generator(device).manual_seed(3))
    t2 = generate(model, cond, opts, torch.Generator(device).manual_seed(3))
    t3 = generate(model, cond, opts, torch.Generator(device).manual_seed(4))
    print(f"same seed -> same tokens: {torch.equal(t1, t2)}; other seed differs: {not torch.equal(t1, t3)}")
    model.train()
    results = {d: train_speed(model, device, d, a.batch) for d in ("fp32", "bf16")}
    for d, (dt, tok_s) in results.items():
        print(f"train step {a.preset} batch {a.batch} x {cfg.seq_len} tokens, {d}: {dt * 1000:.0f} ms, {tok_s:,.0f} tokens/s")
    print(f"bf16 autocast speed-up: {results['fp32'][0] / results['bf16'][0]:.2f}x")


if __name__ == "__main__":
    main()
