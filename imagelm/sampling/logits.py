"""From logits to tokens: temperature, top-k, top-p, classifier-free guidance and its schedules."""
from __future__ import annotations

import torch

import math

CFG_SCHEDULES = ("constant", "linear", "cos", "log", "square", "square_root")


def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top_k largest and outside the smallest set whose
    probability reaches top_p; logits [..., V] -> same shape. top_k=0 / top_p=1 disable each."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p (the best one always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row: logits [..., V] -> tokens [...] int64.

    temperature 0 (or top_k 1) is greedy. Randomness comes only from `generator`.
    """
    if temperature <= 0 or top_k == 1:
        return logits.argmax(-1)
    logits = filter_top_k_top_p(logits.float() / temperature, top_k, top_p)
    probs = logits.softmax(-1)
    return draw_rows(probs.reshape(-1, probs.shape[-1]), generator).view(probs.shape[:-1])


def draw_rows(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of probs [N, V] (non-negative, rows need not sum to 1) -> [N] int64.

    Inverse CDF with one uniform draw per row: torch.multinomial draws an exponential per vocabulary
    entry instead, 16,384 random numbers per token for a VQ codebook (5.6 of a 70 ms GPT-B step at
    16 images). The scaled draw stays strictly below the row's total, so a zero-probability entry at
    the end of the vocabulary can never be picked.
    """
    cdf = probs.float().cumsum(-1)                                                      # [N, V]
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    target = u * cdf[:, -1:] * (1 - 2 ** -20)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


_RISE = {  # progress p in [0, 1] -> fraction of the way from 1 to the full scale (0 at p=0, 1 at p=1)
    "linear": lambda p: p,
    "cos": lambda p: (1 - math.cos(math.pi * p)) / 2,      # slow, fast, slow
    "log": lambda p: math.log1p((math.e - 1) * p),         # fast early, then flattening
    "square": lambda p: p * p,                              # slow early
    "square_root": lambda p: math.sqrt(p),                  # fast early
}


def cfg_scale_at(index: int, total: int, scale: float, schedule: str = "constant") -> float:
    """Guidance scale at step `index` of `total` (tokens for AR, steps for MLM).

    constant: `scale` throughout. The others rise from 1 at the first step to `scale` at the last,
    along linear, cos, log, square or square_root curves of progress index / (total - 1).
    """
    if schedule == "constant":
        return scale
    if schedule not in _RISE:
        raise ValueError(f"unknown cfg schedule {schedule!r}; choose one of {', '.join(CFG_SCHEDULES)}")
    progress = index / max(1, total - 1)
    return 1.0 + (scale - 1.0) * _RISE[schedule](progress)


def apply_cfg(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on a doubled batch: logits [2B, ...] (conditional rows first, then
    unconditional) -> uncond + scale * (cond - uncond), [B, ...]."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)
