"""Sampling speed of the AR generator: KV-cache decoding vs re-running the whole prefix per token.

Both paths are timed in the same run, on the same randomly initialised model (speed does not depend
on the weights' values), and the report gives images/s, tokens/s and the cache's speed-up ratio.

    python benchmarks/sample_speed.py --preset GPT-B --batch 8 --device cuda --dtype bf16
    python benchmarks/sample_speed.py --preset tiny --grid 8 --batch 16          # CPU
"""
from __future__ import annotations

import argparse
import time

import torch

from imagelm.models import build_generator, gpt_config
from imagelm.sampling.autoregressive import SamplingOptions, generate
from imagelm.sampling.logits import apply_cfg, sample_tokens


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def generate_without_cache(model, cond, options, generator):
    """The naive baseline: for each new token, run the full teacher-forced forward on everything so far."""
    B, L, n = cond.shape[0], model.config.seq_len, model.config.num_subtokens
    inputs = torch.cat([cond, model.null_cond(cond)]) if options.guided else cond
    tokens = torch.zeros(B, L, n, dtype=torch.long, device=cond.device)
    for i in range(L):
        seq = torch.cat([tokens, tokens]) if options.guided else tokens
        logits = model(seq[:, : i + 1], inputs)[:, i]          # position i predicts token i
        if options.guided:
            logits = apply_cfg(logits, options.cfg_scale)
        tokens[:, i] = sample_tokens(logits, options.temperature, options.top_k, options.top_p, generator)
    return tokens


def timed(fn, device, repeats):
    fn()  # warm-up, excluded
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--grid", type=int, default=None, help="tokens per side (default: the preset's)")
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-naive", action="store_true", help="time only the KV-cache path")
    a = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    device = torch.device(a.device)
    overrides = {k: v for k, v in (("grid_size", a.grid), ("vocab_size", a.vocab)) if v}
    config = gpt_config(a.preset, **overrides)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = build_generator(config).to(device=device, dtype=dtype).eval()
    for head in model.output.heads:
        torch.nn.init.normal_(head.weight, std=0.02)
    cond = torch.arange(a.batch, device=device) % config.num_classes
    options = SamplingOptions(cfg_scale=a.cfg, top_k=0)
    gen = torch.Generator(device).manual_seed(0)
    params = sum(p.numel() for p in model.parameters())
    print(f"{a.preset}: {params / 1e6:.1f}M params, {config.seq_len} tokens/image, batch {a.batch}, CFG {a.cfg}, "
          f"{a.dtype} on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'})")
    t_cache = timed(lambda: generate(model, cond, options, gen), device, a.repeats)
    tok_s = a.batch * config.seq_len / t_cache
    print(f"kv-cache : {t_cache:8.3f} s/batch  {a.batch / t_cache:8.2f} images/s  {tok_s:10.0f} tokens/s")
    if not a.skip_naive:
        t_naive = timed(lambda: generate_without_cache(model, cond, options, gen), device, 1)
        print(f"no cache : {t_naive:8.3f} s/batch  {a.batch / t_naive:8.2f} images/s  "
              f"{a.batch * config.seq_len / t_naive:10.0f} tokens/s")
        print(f"speed-up of the KV cache: {t_naive / t_cache:.1f}x")


if __name__ == "__main__":
    main()
