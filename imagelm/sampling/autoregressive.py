"""The plain autoregressive sampler, the reference every faster path is tested against: prefill the
condition into a KV cache, then decode one token per step through the model's one forward.

Guidance doubles the batch (conditional rows, then null-condition rows) and runs one pass per step;
both halves are fed the same sampled token so they stay one sequence apart only in their condition.
"""
from __future__ import annotations

import contextlib

import torch
from tqdm import tqdm

from imagelm.models.conditioning import cat_conditions
from imagelm.models.transformer import KVCache
from imagelm.sampling.logits import SamplingOptions, RowSampling, guide, sample_rows, uniforms
from imagelm.sampling.precision import dtype_name, prepare_model

__all__ = ["SamplingOptions", "generate", "evaluating", "cache_dtype", "check_given"]


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """Run `model` in eval mode (no dropout) and give it back in the mode it had: the only thing a
    sampler changes on a model, and only while it samples."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def cache_dtype(model: torch.nn.Module, compiled: bool = False) -> torch.dtype:
    """The KV cache dtype for `model`'s weights: theirs on CUDA; on CPU float32, where float32 matmuls
    read a slice of the cache in place while bf16 ones copy it first (a bf16 cache made an eager
    GPT-B step at 16 images slower), except in a compiled step, whose fused attention reads a bf16
    cache in place: half the bytes (benchmarks/RESULTS.md)."""
    p = next(model.parameters())
    if p.device.type == "cuda" or compiled:
        return p.dtype if p.is_floating_point() else torch.float32
    return torch.float32


def check_given(given: torch.Tensor | None, known: torch.Tensor | None, B: int, L: int, n: int) -> None:
    """A one-line ValueError unless given [B, L, n] int64 and known [B, L] bool come together (or neither)."""
    if (given is None) != (known is None):
        raise ValueError("given tokens and the known mask go together: pass both or neither")
    if given is not None and (tuple(given.shape) != (B, L, n) or tuple(known.shape) != (B, L)
                              or known.dtype != torch.bool):
        raise ValueError(f"given tokens must be [{B}, {L}, {n}] and known [{B}, {L}] bool, got "
                         f"{list(given.shape)} and {list(known.shape)} {known.dtype}")


@torch.no_grad()
def generate(model, cond, options: SamplingOptions = SamplingOptions(),
             generator: torch.Generator | None = None, progress: bool = False,
             given: torch.Tensor | None = None, known: torch.Tensor | None = None) -> torch.Tensor:
    """Sample images' tokens: cond [B] (class ids) or a TextCondition (batch B) -> tokens [B, L, n] int64.

    given [B, L, n] / known [B, L] bool: tokens fixed in advance (editing): at a known position the
    given token is taken instead of the draw (the draw still runs, so the random stream is the same
    whatever is known) and fed to the next step like any other.

    The same model, cond, options and generator seed give the same tokens on the same device. It
    samples the model as `precision.prepare_model` prepares it for its own dtype (on CPU: packed
    linears, a copy), as the engine does, so both run the same arithmetic.
    """
    config = model.config
    B, L, n, P = len(cond), config.seq_len, config.num_subtokens, config.cls_token_num
    device = cond.device
    check_given(given, known, B, L, n)
    inputs = cat_conditions([cond, model.null_cond(cond)]) if options.guided else cond
    rows = RowSampling.of([options] * B, config.vocab_size, device)
    scales = torch.tensor(options.cfg_scales(L), device=device)                        # [L]
    positions = torch.arange(P + L, device=device)
    tokens = torch.empty(B, L, n, dtype=torch.long, device=device)
    model = prepare_model(model, dtype_name(model))
    with evaluating(model):
        cache = KVCache(config, len(inputs), cache_dtype(model), device)
        prefix, prefix_mask = model.embed_condition(inputs)                             # [R, P, dim]
        logits = model.logits(prefix, positions[:P], cache, prefix_mask, key_length=P, last=1)[:, 0]
        for i in tqdm(range(L), desc="sampling", disable=not progress, leave=False):
            if i > 0:
                prev = tokens[:, i - 1]
                x = model.embed_tokens((torch.cat([prev, prev]) if options.guided else prev)[:, None])
                logits = model.logits(x, positions[P + i - 1:P + i], cache, key_length=P + i)[:, 0]   # [R, n, V]
            if options.guided:
                logits = guide(logits[:B], logits[B:], scales[i])
            u = None if rows.all_greedy else uniforms((B, n), generator, device)
            tokens[:, i] = sample_rows(logits, rows, u)
            if known is not None:
                tokens[:, i] = torch.where(known[:, i, None], given[:, i], tokens[:, i])
    return tokens
