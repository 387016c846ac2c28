"""The autoregressive generator: a condition prefix, then image tokens in raster order, each
predicted from the ones before it (LlamaGen; ELM's AR variant when tokens have n sub-tokens).

`forward(tokens, cond)` gives teacher-forced logits for training and scoring. Samplers drive the same
forward themselves (`GeneratorBase.logits` with a KVCache they own): prefill the condition prefix at
positions 0..P-1, then feed image token i at position P + i (sampling/autoregressive.py).
"""
from __future__ import annotations

import torch

from imagelm.models.base import GeneratorBase
from imagelm.models.presets import GPTConfig


class ARGenerator(GeneratorBase):
    """Condition -> [prefix | t_0 ... t_{L-2}] -> causal trunk -> logits for t_0 ... t_{L-1}."""

    kind = "ar"
    causal = True

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.reset_parameters()

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: position i predicts token i from the condition and tokens < i.

        tokens [B, L, n] int64 (or [B, L] when n == 1), cond [B] class ids (the null id allowed) or a
        TextCondition (features [B, T, C], mask [B, T]; padded caption positions are never attended)
        -> logits [B, L, n, V] (or [B, L, V] for [B, L] input). In training mode, conditions are
        dropped to null at the configured rate.
        """
        squeeze = tokens.dim() == 2
        if squeeze:
            tokens = tokens.unsqueeze(-1)
        prefix, prefix_mask = self.prefix_with_mask(cond)                                      # [B, P, dim]
        h = torch.cat([prefix, self.embed_tokens(tokens[:, :-1])], dim=1)                     # [B, P+L-1, dim]
        h = self.token_dropout(h)
        T, L = h.shape[1], tokens.shape[1]
        logits = self.logits(h, torch.arange(T, device=h.device), mask=self.sequence_mask(prefix_mask, T),
                             last=L)                                                           # [B, L, n, V]
        return logits.squeeze(-2) if squeeze else logits
