"""Condition embedders: each turns a condition into the prefix the transformer continues, and owns
the condition dropout that classifier-free guidance is trained with."""
from __future__ import annotations

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

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels).unsqueeze(1)  # [B, 1, dim]
