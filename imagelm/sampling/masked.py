"""MaskGIT-style parallel decoding for the masked generator (ELM's MLM sampler).

Start from an all-masked grid (or one with some tokens given). At each of `steps` steps: predict
every masked position, sample a candidate for each, score the candidates by their log-probability
plus Gumbel noise whose temperature anneals to 0, keep the most confident, and re-mask the rest so
that a cosine schedule of positions stays masked (none after the last step). Guidance doubles the
batch and mixes the halves with a per-step CFG scale.
"""
from __future__ import annotations

import math

import torch
from tqdm import tqdm

from imagelm.models.conditioning import cat_conditions
from imagelm.sampling.autoregressive import evaluating
from imagelm.sampling.logits import SamplingOptions, RowSampling, apply_cfg, filter_logits, sample_rows, uniforms


def _gumbel(shape, generator, device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-20, 1.0)
    return -torch.log((-torch.log(u)).clamp_min(1e-20))


@torch.no_grad()
def generate_masked(model, cond: torch.Tensor, options: SamplingOptions = SamplingOptions(), steps: int = 10,
                    generator: torch.Generator | None = None, tokens: torch.Tensor | None = None,
                    known: torch.Tensor | None = None, choice_temperature: float = 4.5,
                    progress: bool = False) -> torch.Tensor:
    """Sample tokens [B, L, n] for cond (class ids [B] or a TextCondition) in `steps` parallel steps.

    tokens/known: optional given tokens [B, L, n] and which positions [B, L] (bool) are given; given
    positions are never changed. choice_temperature: initial scale of the Gumbel noise on confidences
    (annealed linearly to 0 at the last step). The CFG schedule runs over the steps, and
    options.cfg_interval guides only the first that many steps (scale 1 after).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    B, L, n, V = len(cond), model.config.seq_len, model.config.num_subtokens, model.config.vocab_size
    device = cond.device
    tokens = torch.zeros(B, L, n, dtype=torch.long, device=device) if tokens is None else tokens.clone()
    known = torch.zeros(B, L, dtype=torch.bool, device=device) if known is None else known.clone()
    to_fill = (~known).sum(1)                                                        # [B]
    inputs = cat_conditions([cond, model.null_cond(cond)]) if options.guided else cond
    scales = torch.tensor(options.cfg_scales(steps), device=device)                  # [steps]
    rows = RowSampling.of([options] * (B * L), V, device)                            # one row per position
    with evaluating(model):
        for t in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
            masked = ~known
            if not masked.any():
                break
            if options.guided:
                logits = model(torch.cat([tokens, tokens]), inputs, torch.cat([masked, masked]))
                logits = apply_cfg(logits, scales[t])
            else:
                logits = model(tokens, inputs, masked)                               # [B, L, n, V]
            x = logits.reshape(B * L, n, V)
            u = None if rows.all_greedy else uniforms((B * L, n), generator, device)
            candidates = sample_rows(x, rows, u)                                     # [B*L, n]
            logp = filter_logits(x, rows).log_softmax(-1)
            confidence = logp.gather(-1, candidates.unsqueeze(-1)).view(B, L, n).sum(-1)   # [B, L]
            candidates = candidates.view(B, L, n)
            anneal = choice_temperature * (1.0 - (t + 1) / steps)
            confidence = confidence + anneal * _gumbel(confidence.shape, generator, device)
            confidence = confidence.masked_fill(~masked, float("inf"))              # given tokens stay
            tokens = torch.where(masked.unsqueeze(-1), candidates, tokens)
            # How many stay masked after this step: a cosine share of what had to be filled, and at
            # least one fewer than are masked now, so every step reveals something.
            keep = torch.floor(to_fill * math.cos(math.pi / 2 * (t + 1) / steps)).long()
            keep = torch.minimum(keep, (masked.sum(1) - 1).clamp_min(0))
            ranks = confidence.argsort(dim=1).argsort(dim=1)                        # 0 = least confident
            known = ~(ranks < keep.unsqueeze(1))
    return tokens
