"""MaskGIT-style parallel decoding for the masked generator (ELM's MLM sampler).

Start from an all-masked grid (or one with some tokens given). At each of `steps` steps: predict
every masked position, sample a candidate for each, score the candidates by their log-probability
plus Gumbel noise whose temperature anneals to 0, keep the most confident, and re-mask the rest so
that a cosine schedule of positions stays masked (none after the last step). Guidance doubles the
batch and mixes the halves with a per-step CFG scale.

Two re-masking rules (`remask`): "rank" (ours) re-masks exactly the scheduled number of least
confident positions; "elm" is ELM's (llama/mlm_model.py, generate_cfg and mask_by_random_topk): the
confidence is the mean over sub-tokens of log p + noise (one Gumbel draw per sub-token, p from the
guided logits before any temperature or top-k), every position at or below the cut-off value (the
scheduled count's smallest confidence) stays masked, ties included, and at least one stays masked
until the last step, whose candidates fill every position.
"""
from __future__ import annotations

import math

import torch
from tqdm import tqdm

from imagelm.models.conditioning import cat_conditions
from imagelm.sampling.autoregressive import evaluating
from imagelm.sampling.logits import SamplingOptions, RowSampling, apply_cfg, filter_logits, sample_rows, uniforms


REMASK_RULES = ("rank", "elm")


def _gumbel(shape, generator, device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-20, 1.0)
    return -torch.log((-torch.log(u)).clamp_min(1e-20))


def masked_count(t: int, steps: int, to_fill: torch.Tensor, masked_now: torch.Tensor, rule: str = "rank") -> torch.Tensor:
    """How many positions stay masked after step t of `steps`, per row: to_fill [B] (positions not
    given), masked_now [B] (masked before the step) -> [B] int64.

    A cosine share of to_fill, floor(to_fill * cos(pi/2 * (t+1)/steps)), at most one fewer than are
    masked now (every step reveals something). "elm" also keeps at least one masked while any is
    (ELM's max(1, ...): that one is still filled by the last step's candidates).
    """
    share = torch.floor(to_fill.double() * math.cos(math.pi / 2 * (t + 1) / steps)).long()
    keep = torch.minimum(share, masked_now - 1)
    if rule == "elm":
        return torch.where(masked_now > 0, keep.clamp_min(1), torch.zeros_like(keep))
    return keep.clamp_min(0)


def still_masked(confidence: torch.Tensor, keep: torch.Tensor, rule: str = "rank") -> torch.Tensor:
    """Which positions stay masked: confidence [B, L] (+inf where already known), keep [B] (from
    masked_count) -> [B, L] bool. "rank": exactly the keep least confident (ties broken by the
    sort). "elm": every position whose confidence is <= the keep-th smallest, so tied
    positions all stay masked (more than keep)."""
    if rule == "elm":
        cut = confidence.sort(dim=1).values.gather(1, (keep - 1).clamp_min(0)[:, None])   # [B, 1]
        return (confidence <= cut) & (keep > 0)[:, None]
    ranks = confidence.argsort(dim=1).argsort(dim=1)                                 # 0 = least confident
    return ranks < keep[:, None]


@torch.no_grad()
def generate_masked(model, cond: torch.Tensor, options: SamplingOptions = SamplingOptions(), steps: int = 10,
                    generator: torch.Generator | None = None, tokens: torch.Tensor | None = None,
                    known: torch.Tensor | None = None, choice_temperature: float = 4.5,
                    progress: bool = False, remask: str = "rank") -> torch.Tensor:
    """Sample tokens [B, L, n] for cond (class ids [B] or a TextCondition) in `steps` parallel steps.

    tokens/known: optional given tokens [B, L, n] and which positions [B, L] (bool) are given; given
    positions are never changed. choice_temperature: initial scale of the Gumbel noise on confidences
    (annealed linearly to 0 at the last step). The CFG schedule runs over the steps, and
    options.cfg_interval guides only the first that many steps (scale 1 after). remask: "rank" (ours)
    or "elm" (ELM's cut-off rule, see the module docstring).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if remask not in REMASK_RULES:
        raise ValueError(f"unknown re-masking rule {remask!r}; choose one of {', '.join(REMASK_RULES)}")
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
            anneal = choice_temperature * (1.0 - (t + 1) / steps)
            if remask == "elm":   # log of the softmax, noise per sub-token, mean: ELM's arithmetic
                chosen = x.softmax(-1).gather(-1, candidates.unsqueeze(-1)).view(B, L, n)
                confidence = (torch.log(chosen) + anneal * _gumbel(chosen.shape, generator, device)).mean(-1)
            else:
                logp = filter_logits(x, rows).log_softmax(-1)
                confidence = logp.gather(-1, candidates.unsqueeze(-1)).view(B, L, n).sum(-1)   # [B, L]
                confidence = confidence + anneal * _gumbel(confidence.shape, generator, device)
            confidence = confidence.masked_fill(~masked, float("inf"))              # given tokens stay
            tokens = torch.where(masked.unsqueeze(-1), candidates.view(B, L, n), tokens)
            keep = masked_count(t, steps, to_fill, masked.sum(1), remask)
            known = ~still_masked(confidence, keep, remask)
    return tokens
