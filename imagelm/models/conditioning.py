"""Condition embedders: each turns a condition into the prefix the transformer continues, and owns
the condition dropout that classifier-free guidance is trained with.

Both offer the interface a generator uses: `drop(cond)` (training-time dropout to null),
`null_like(cond)` (the null condition, for CFG), `prefix_mask(cond)` ([B, P] bool of real prefix
positions, or None when there is no padding) and `forward(cond) -> prefix [B, P, dim]`.
A class condition is a tensor of ids [B]; a text condition is a `TextCondition` (features + mask).
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

    def drop(self, labels: torch.Tensor) -> torch.Tensor:
        """Replace each label by the null class with probability dropout_prob (global torch RNG)."""
        if self.dropout_prob <= 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
        return torch.where(drop, self.null_like(labels), labels)

    def prefix_mask(self, labels: torch.Tensor) -> None:
        """A class prefix has no padding."""
        return None

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels).unsqueeze(1)  # [B, 1, dim]


@dataclass(frozen=True)
class TextCondition:
    """A batch of captions as a text encoder saw them (see imagelm/text): features [B, T, C] float,
    mask [B, T] bool (True = a real token). Left-padded: real tokens occupy the last positions."""
    features: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.features.dim() != 3 or self.mask.shape != self.features.shape[:2]:
            raise ValueError(f"a text condition needs features [B, T, C] and mask [B, T], got "
                             f"{tuple(self.features.shape)} and {tuple(self.mask.shape)}")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def device(self) -> torch.device:
        return self.features.device

    def to(self, device) -> TextCondition:
        return TextCondition(self.features.to(device), self.mask.to(device))

    def __getitem__(self, index) -> TextCondition:
        """Rows by int tensor, slice or list: [B, ...] -> [B', ...]."""
        return TextCondition(self.features[index], self.mask[index])

    def repeat_interleave(self, n: int) -> TextCondition:
        return TextCondition(self.features.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0))


def cat_conditions(conds: list) -> torch.Tensor | TextCondition:
    """Concatenate conditions along the batch: class ids [B_i] or TextConditions."""
    if isinstance(conds[0], TextCondition):
        return TextCondition(torch.cat([c.features for c in conds]), torch.cat([c.mask for c in conds]))
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

    def drop(self, cond: TextCondition) -> TextCondition:
        """Replace each caption by the null caption with probability dropout_prob (global torch RNG)."""
        if self.dropout_prob <= 0:
            return cond
        drop = torch.rand(len(cond), device=cond.device) < self.dropout_prob          # [B]
        null = self.null_like(cond)
        return TextCondition(torch.where(drop[:, None, None], null.features, cond.features),
                             torch.where(drop[:, None], null.mask, cond.mask))

    def prefix_mask(self, cond: TextCondition) -> torch.Tensor:
        """Which prefix positions hold real tokens: [B, T] bool."""
        return cond.mask

    def forward(self, cond: TextCondition) -> torch.Tensor:
        if cond.features.shape[1:] != self.null_caption.shape:
            raise ValueError(f"caption features of shape {tuple(cond.features.shape[1:])} given to a model "
                             f"trained on [T, C] = {list(self.null_caption.shape)}")
        return self.mlp(cond.features.to(self.null_caption.dtype))                     # [B, T, dim]
