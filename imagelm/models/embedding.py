"""Token input and output for n sub-tokens per position (see imagelm/vocab.py).

With n = 1 (a VQ index) this is one embedding table and one output head, LlamaGen's layout.
With n > 1 (ELM's split binary codes) each sub-token has its own table, the n embeddings are
concatenated and projected to the model width, and n heads predict from the same hidden state.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SubTokenEmbedding(nn.Module):
    """tokens [B, T, n] int64 -> embeddings [B, T, dim]."""

    def __init__(self, num_subtokens: int, vocab_size: int, dim: int):
        super().__init__()
        self.n = num_subtokens
        if self.n == 1:
            self.table = nn.Embedding(vocab_size, dim)
        else:
            self.tables = nn.ModuleList(nn.Embedding(vocab_size, dim) for _ in range(self.n))
            self.proj = nn.Linear(self.n * dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.n == 1:
            return self.table(tokens[..., 0])
        return self.proj(torch.cat([t(tokens[..., i]) for i, t in enumerate(self.tables)], dim=-1))


class SubTokenHeads(nn.Module):
    """hidden [B, T, dim] -> logits [B, T, n, vocab_size]; zero-initialised (uniform first guesses)."""

    def __init__(self, num_subtokens: int, vocab_size: int, dim: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, vocab_size, bias=False) for _ in range(num_subtokens))

    def reset_parameters(self) -> None:
        for head in self.heads:
            nn.init.zeros_(head.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(h) for head in self.heads], dim=-2)


class TiedMLMHead(nn.Module):
    """ELM's masked-model head: hidden [B, T, dim] -> LayerNorm(GELU(fc(h))) @ table^T + bias -> logits
    [B, T, 1, V], with `table` the (n = 1) token embedding's weights. The table is read, not owned (no
    second copy in the state dict), and detached, as ELM does, so the head trains only fc, norm and bias."""

    def __init__(self, dim: int, embedding: SubTokenEmbedding, eps: float = 1e-5):   # nn.LayerNorm's eps, as ELM
        super().__init__()
        if embedding.n != 1:
            raise ValueError("a tied MLM head needs one token per position")
        self.fc = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(embedding.table.num_embeddings))
        object.__setattr__(self, "_embedding", embedding)   # a reference, not a submodule

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.gelu(self.fc(h)))
        return (x @ self._embedding.table.weight.detach().t() + self.bias).unsqueeze(-2)
