"""The autoregressive generator: a condition prefix, then image tokens in raster order, each
predicted from the ones before it (LlamaGen; ELM's AR variant when tokens have n sub-tokens).

Entry points, one per use:
- `forward(tokens, cond)`: teacher-forced logits for training and scoring (no cache).
- `prefill(cond)` / `decode(tokens, index)`: sampling on the KV cache (`setup_caches` first).
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
        P = self.prefix_len
        prefix, prefix_mask = self.prefix_with_mask(cond)                                      # [B, P, dim]
        h = torch.cat([prefix, self.tok_embeddings(tokens[:, :-1])], dim=1)                    # [B, P+L-1, dim]
        h = self.token_dropout(h)
        h = self.trunk(h, torch.arange(h.shape[1], device=h.device), self.sequence_mask(prefix_mask, h.shape[1]))
        logits = self.output(h[:, P - 1:]).float()                                             # [B, L, n, V]
        return logits.squeeze(-2) if squeeze else logits

    def setup_caches(self, max_batch: int, dtype: torch.dtype | None = None) -> None:
        """Allocate KV caches for sampling `max_batch` sequences at once."""
        self.trunk.setup_caches(max_batch, dtype)

    def clear_caches(self) -> None:
        self.trunk.clear_caches()

    def prefill(self, cond: torch.Tensor) -> torch.Tensor:
        """Run the prefix through the cache: cond (class ids [B] or a TextCondition) -> logits for
        token 0, [B, n, V]. The prefix mask is kept in the cache for the decode steps."""
        h = self.cond_embedder(cond)                                                           # [B, P, dim]
        h = self.trunk(h, torch.arange(self.prefix_len, device=h.device), self.cond_embedder.prefix_mask(cond))
        return self.output(h[:, -1]).float()

    def decode(self, tokens: torch.Tensor, index: int | torch.Tensor) -> torch.Tensor:
        """Feed token `index` (tokens [B, n]) through the cache -> logits for token index+1, [B, n, V]."""
        h = self.tok_embeddings(tokens[:, None])                                               # [B, 1, dim]
        pos = torch.as_tensor(index, device=h.device).view(1) + self.prefix_len
        h = self.trunk(h, pos)
        return self.output(h[:, -1]).float()
