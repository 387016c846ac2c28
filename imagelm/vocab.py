"""The seam between tokenizers and generators: how tokenizer codes become generator tokens.

A generator sees only tokens [B, L, n] of ints in [0, V): L positions in raster order, n
sub-tokens per position. A VQ code is one token per position (n = 1, V = codebook size). The
binary tokenizer's D-bit codes can be split into n sub-tokens of m bits (D = n * m, MSB first)
by the same layout, so the models never need to know which tokenizer made their tokens.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLayout:
    """grid_size x grid_size positions, each num_subtokens ints in [0, vocab_size)."""
    grid_size: int
    vocab_size: int
    num_subtokens: int = 1

    @property
    def seq_len(self) -> int:
        return self.grid_size * self.grid_size

    def to_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Index codes [B, h, w] -> tokens [B, h*w, 1] (raster order)."""
        if codes.dim() != 3 or codes.shape[1:] != (self.grid_size, self.grid_size):
            raise ValueError(f"expected codes [B, {self.grid_size}, {self.grid_size}], got {tuple(codes.shape)}")
        return codes.reshape(codes.shape[0], -1, 1).long()

    def to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L, 1] (or [B, L]) -> index codes [B, h, w]."""
        if tokens.dim() == 3:
            tokens = tokens[..., 0]
        if tokens.shape[1] != self.seq_len:
            raise ValueError(f"expected {self.seq_len} tokens per image, got {tokens.shape[1]}")
        return tokens.reshape(-1, self.grid_size, self.grid_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenLayout":
        return cls(**d)

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "TokenLayout":
        """The layout of a VQ tokenizer's codes."""
        h, w = tokenizer.codes_shape
        if h != w:
            raise ValueError(f"only square code grids are supported, got {h}x{w}")
        return cls(grid_size=h, vocab_size=tokenizer.vocab_size, num_subtokens=1)
