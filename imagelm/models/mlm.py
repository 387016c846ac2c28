"""The masked generator (MaskGIT-style, ELM's MLM variant): the condition prefix plus all image
positions, some replaced by a learned mask embedding, through a bidirectional trunk; each masked
position predicts its token. Sampling fills the grid in a few parallel steps (sampling/masked.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from imagelm.models.base import GeneratorBase
from imagelm.models.presets import GPTConfig


class MaskedGenerator(GeneratorBase):
    """[prefix | tokens with some masked] -> bidirectional trunk -> logits at every position."""

    kind = "mlm"
    causal = False

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.mask_embedding = nn.Parameter(torch.zeros(config.dim))
        self.reset_parameters()
        nn.init.normal_(self.mask_embedding, std=0.02)

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens [B, L, n] (or [B, L]) int64, cond [B] class ids or a TextCondition, mask [B, L] bool
        (True = hidden) -> logits [B, L, n, V] (or [B, L, V]). Hidden positions' token values are
        ignored; padded caption positions are never attended."""
        squeeze = tokens.dim() == 2
        if squeeze:
            tokens = tokens.unsqueeze(-1)
        x = self.embed_tokens(tokens)                                                    # [B, L, dim]
        x = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(x.dtype), x)
        prefix, prefix_mask = self.prefix_with_mask(cond)                                # [B, P, dim]
        h = self.token_dropout(torch.cat([prefix, x], dim=1))                            # [B, P+L, dim]
        T = h.shape[1]
        logits = self.logits(h, torch.arange(T, device=h.device), mask=self.sequence_mask(prefix_mask, T),
                             last=x.shape[1])                                            # [B, L, n, V]
        return logits.squeeze(-2) if squeeze else logits


def cosine_mask_ratio(progress: torch.Tensor) -> torch.Tensor:
    """MaskGIT's schedule: the fraction of positions still masked at progress in [0, 1] (1 -> 0)."""
    return torch.cos(progress * math.pi / 2)


def random_training_mask(batch: int, length: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """A training mask [B, L] bool: per sample, a ratio cos(pi/2 * u), u ~ U(0, 1), of positions
    (at least one) is hidden, chosen uniformly; drawn from `generator` (the training loop's, seeded
    per step; on `device`)."""
    ratio = cosine_mask_ratio(torch.rand(batch, device=device, generator=generator))
    count = (ratio * length).ceil().clamp(1, length)                                     # [B]
    ranks = torch.rand(batch, length, device=device, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < count.unsqueeze(1)                                                    # random permutation ranks
