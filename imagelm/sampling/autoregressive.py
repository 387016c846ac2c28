"""Autoregressive sampling on the KV cache: prefill the condition, then decode one token per step.

Guidance doubles the batch (conditional rows, then null-condition rows) and runs one pass per
step; both halves are fed the same sampled token so they stay one sequence apart only in their
condition.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from imagelm.models.conditioning import cat_conditions
from imagelm.sampling.logits import CFG_SCHEDULES, apply_cfg, cfg_scale_at, sample_tokens


@dataclass(frozen=True)
class SamplingOptions:
    """How to turn logits into tokens. cfg_scale 1 = no guidance; top_k 0 / top_p 1 = off."""
    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    cfg_interval: int = -1          # guide only the first cfg_interval tokens (-1: all of them)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"unknown cfg schedule {self.cfg_schedule!r}; choose one of {', '.join(CFG_SCHEDULES)}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg scale must be >= 0, got {self.cfg_scale}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0


@torch.no_grad()
def generate(model, cond: torch.Tensor, options: SamplingOptions = SamplingOptions(),
             generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Sample images' tokens: cond [B] (class ids) or a TextCondition (batch B) -> tokens [B, L, n] int64.

    The same model, cond, options and generator seed give the same tokens on the same device.
    """
    was_training = model.training
    model.eval()
    B, L = len(cond), model.config.seq_len
    inputs = cat_conditions([cond, model.null_cond(cond)]) if options.guided else cond
    model.setup_caches(len(inputs))
    try:
        tokens = torch.empty(B, L, model.config.num_subtokens, dtype=torch.long, device=cond.device)
        logits = model.prefill(inputs)                                        # [B or 2B, n, V]
        for i in tqdm(range(L), desc="sampling", disable=not progress, leave=False):
            if i > 0:
                prev = tokens[:, i - 1]
                logits = model.decode(torch.cat([prev, prev]) if options.guided else prev, i - 1)
            if options.guided:
                guide = options.cfg_interval < 0 or i < options.cfg_interval
                scale = cfg_scale_at(i, L, options.cfg_scale, options.cfg_schedule) if guide else 1.0
                logits = apply_cfg(logits, scale)
            tokens[:, i] = sample_tokens(logits, options.temperature, options.top_k, options.top_p, generator)
    finally:
        model.clear_caches()
        model.train(was_training)
    return tokens
