"""Condition embedders: each turns a condition into the prefix the transformer continues, and owns
the condition dropout that classifier-free guidance is trained with.

Both offer the interface a generator uses: `drop(cond, generator)` (training-time dropout to null),
`null_like(cond)` (the null condition, for CFG), `prefix_mask(cond)` ([B, P] bool of real prefix
positions, or None when there is no padding) and `forward(cond) -> prefix [B, P, dim]`.
A class condition is a tensor of ids [B]; a text condition is a `TextCondition` (features + mask).

Condition dropout draws only from the `torch.Generator` it is given (the training loop's, seeded
per step), never from the global RNG: called without one, `drop` leaves the condition as it is.
The training loop drops conditions before the forward pass; the drop itself needs no parameter
(a null class id, or a flag per caption that the embedder's forward turns into its learned null
caption), so it works on sharded (FSDP) models too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


class ClassEmbedder(nn.Module):
    """Class ids [B] -> prefix [B, 1, dim]. Row `num_classes` of the table is the null class."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_id(self) -> int:
        return self.num_classes

    def null_like(self, labels: torch.Tensor) -> torch.Tensor:
        """The null class for every element of labels [B] -> [B]."""
        return torch.full_like(labels, self.null_id)

    def drop(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """labels [B] -> [B], each replaced by the null class with probability dropout_prob, drawn
        from `generator` (None: no dropout)."""
        if self.dropout_prob <= 0 or generator is None:
            return labels
        drop = torch.rand(labels.shape, device=labels.device, generator=generator) < self.dropout_prob
        return torch.where(drop, self.null_like(labels), labels)

    def prefix_mask(self, labels: torch.Tensor) -> None:
        """A class prefix has no padding."""
        return None

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels).unsqueeze(1)  # [B, 1, dim]


@dataclass(frozen=True)
class TextCondition:
    """A batch of captions as a text encoder saw them (see imagelm/text): features [B, T, C] float,
    mask [B, T] bool (True = a real token). Left-padded: real tokens occupy the last positions.
    null: [B] bool or None, captions dropped to the null caption (condition dropout in training);
    the embedder's forward puts its learned null caption in their place."""
    features: torch.Tensor
    mask: torch.Tensor
    null: torch.Tensor | None = None

    def __post_init__(self):
        if self.features.dim() != 3 or self.mask.shape != self.features.shape[:2]:
            raise ValueError(f"a text condition needs features [B, T, C] and mask [B, T], got "
                             f"{tuple(self.features.shape)} and {tuple(self.mask.shape)}")
        if self.null is not None and self.null.shape != self.features.shape[:1]:
            raise ValueError(f"a text condition's null flags must be [B], got {tuple(self.null.shape)}")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def device(self) -> torch.device:
        return self.features.device

    def _map(self, fn) -> TextCondition:
        return TextCondition(fn(self.features), fn(self.mask), None if self.null is None else fn(self.null))

    def to(self, device) -> TextCondition:
        return self._map(lambda t: t.to(device))

    def __getitem__(self, index) -> TextCondition:
        """Rows by int tensor, slice or list: [B, ...] -> [B', ...]."""
        return self._map(lambda t: t[index])

    def repeat_interleave(self, n: int) -> TextCondition:
        return self._map(lambda t: t.repeat_interleave(n, 0))


def cat_conditions(conds: list) -> torch.Tensor | TextCondition:
    """Concatenate conditions along the batch: class ids [B_i] or TextConditions."""
    if isinstance(conds[0], TextCondition):
        null = None
        if any(c.null is not None for c in conds):
            null = torch.cat([c.null if c.null is not None else c.mask.new_zeros(len(c)) for c in conds])
        return TextCondition(torch.cat([c.features for c in conds]), torch.cat([c.mask for c in conds]), null)
    return torch.cat(conds)


class CaptionEmbedder(nn.Module):
    """Caption features -> prefix [B, T, dim] through an MLP (C -> dim, GELU, dim -> dim), LlamaGen's.

    The null caption is a learned [T, C] feature table with every position valid; condition dropout
    swaps a whole caption (features and mask) for it, so the unconditional rows of CFG never depend on
    the caption they replace.
    """

    def __init__(self, caption_dim: int, dim: int, token_num: int, dropout_prob: float, null_mask: str = "all"):
        super().__init__()
        self.token_num, self.dropout_prob = token_num, dropout_prob
        self.null_mask = null_mask   # "all", or "same": keep the caption's own mask (LlamaGen's sampler)
        self.null_caption = nn.Parameter(torch.randn(token_num, caption_dim) / caption_dim ** 0.5)
        self.mlp = nn.Sequential(nn.Linear(caption_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))

    def null_like(self, cond: TextCondition) -> TextCondition:
        """The null caption for every element of cond -> TextCondition [B, T, C], mask all True."""
        B = len(cond)
        features = self.null_caption.to(cond.features.dtype).expand(B, -1, -1)
        if self.null_mask == "same":
            return TextCondition(features, cond.mask.clone())
        return TextCondition(features, torch.ones(B, self.token_num, dtype=torch.bool, device=cond.device))

    def drop(self, cond: TextCondition, generator: torch.Generator | None = None) -> TextCondition:
        """Flag each caption for the null caption with probability dropout_prob, drawn from
        `generator` (None: no dropout); its mask becomes the null caption's. The features are swapped
        in `forward`, where the parameters live (also when sharded)."""
        if self.dropout_prob <= 0 or generator is None:
            return cond
        drop = torch.rand(len(cond), device=cond.device, generator=generator) < self.dropout_prob   # [B]
        mask = cond.mask if self.null_mask == "same" else cond.mask | drop[:, None]
        return TextCondition(cond.features, mask, drop if cond.null is None else cond.null | drop)

    def prefix_mask(self, cond: TextCondition) -> torch.Tensor:
        """Which prefix positions hold real tokens: [B, T] bool."""
        return cond.mask

    def forward(self, cond: TextCondition) -> torch.Tensor:
        if cond.features.shape[1:] != self.null_caption.shape:
            raise ValueError(f"caption features of shape {tuple(cond.features.shape[1:])} given to a model "
                             f"trained on [T, C] = {list(self.null_caption.shape)}")
        features = cond.features.to(self.null_caption.dtype)                           # [B, T, C]
        if cond.null is not None:
            features = torch.where(cond.null[:, None, None], self.null_caption, features)
        return self.mlp(features)                                                      # [B, T, dim]
