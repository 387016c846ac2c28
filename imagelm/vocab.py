"""The seam between tokenizers and generators: how tokenizer codes become generator tokens.

A generator sees only tokens [B, L, n] of ints in [0, V): L positions in raster order, n
sub-tokens per position. A VQ code is one token per position (n = 1, V = codebook size). A
binary tokenizer's D-bit code is split into n sub-tokens of m bits each (D = n * m, ELM's "n-m"
vocabularies, e.g. 2-8 for D = 16), each sub-token an integer read MSB first, so V = 2^m. The
models never need to know which tokenizer made their tokens.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLayout:
    """grid_size x grid_size positions, each num_subtokens ints in [0, vocab_size).

    bits: D for binary codes (then vocab_size = 2 ** (D / num_subtokens)), None for index codes.
    """
    grid_size: int
    vocab_size: int
    num_subtokens: int = 1
    bits: int | None = None

    def __post_init__(self):
        if self.bits is not None:
            if self.bits % self.num_subtokens:
                raise ValueError(f"{self.bits} bits cannot be split into {self.num_subtokens} equal sub-tokens")
            if self.vocab_size != 2 ** self.bits_per_token:
                raise ValueError(f"a {self.num_subtokens}-{self.bits_per_token} split has vocab 2^"
                                 f"{self.bits_per_token}, not {self.vocab_size}")

    @property
    def seq_len(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def bits_per_token(self) -> int:
        """m: bits per sub-token (binary layouts only)."""
        return self.bits // self.num_subtokens

    @classmethod
    def binary(cls, grid_size: int, bits: int, num_subtokens: int = 1) -> "TokenLayout":
        """The n-m split of D-bit codes: n = num_subtokens, m = bits / n, vocab 2^m."""
        if num_subtokens < 1 or bits % num_subtokens:
            raise ValueError(f"{bits} bits cannot be split into {num_subtokens} equal sub-tokens")
        return cls(grid_size, 2 ** (bits // num_subtokens), num_subtokens, bits)

    def split(self, num_subtokens: int) -> "TokenLayout":
        """The same binary codes split into `num_subtokens` sub-tokens instead."""
        if self.bits is None:
            if num_subtokens != 1:
                raise ValueError("only binary codes can be split into sub-tokens; VQ indices are one token")
            return self
        return TokenLayout.binary(self.grid_size, self.bits, num_subtokens)

    def to_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes -> tokens [B, L, n] (raster order).

        Index codes: [B, h, w] ints. Binary codes: [B, h, w, D] of 0/1.
        """
        g = self.grid_size
        if self.bits is None:
            if codes.dim() != 3 or codes.shape[1:] != (g, g):
                raise ValueError(f"expected codes [B, {g}, {g}], got {tuple(codes.shape)}")
            return codes.reshape(codes.shape[0], -1, 1).long()
        if codes.dim() != 4 or codes.shape[1:] != (g, g, self.bits):
            raise ValueError(f"expected binary codes [B, {g}, {g}, {self.bits}], got {tuple(codes.shape)}")
        m = self.bits_per_token
        groups = codes.long().reshape(codes.shape[0], g * g, self.num_subtokens, m)
        weights = 2 ** torch.arange(m - 1, -1, -1, device=codes.device)  # MSB first
        return (groups * weights).sum(-1)

    def to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L, n] (or [B, L] when n = 1) -> codes [B, h, w] or binary [B, h, w, D]."""
        if tokens.dim() == 2:
            tokens = tokens.unsqueeze(-1)
        if tokens.shape[1] != self.seq_len or tokens.shape[2] != self.num_subtokens:
            raise ValueError(f"expected tokens [B, {self.seq_len}, {self.num_subtokens}], got {tuple(tokens.shape)}")
        g = self.grid_size
        if self.bits is None:
            return tokens[..., 0].reshape(-1, g, g)
        m = self.bits_per_token
        shifts = torch.arange(m - 1, -1, -1, device=tokens.device)
        bits = (tokens.long().unsqueeze(-1) >> shifts) & 1                # [B, L, n, m]
        return bits.reshape(-1, g, g, self.bits)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenLayout":
        return cls(**d)

    @classmethod
    def for_tokenizer(cls, tokenizer, num_subtokens: int = 1, grid_size: int | None = None) -> "TokenLayout":
        """The layout of a tokenizer's codes: one index per position (VQ) or an n-m split of its bits,
        on its own code grid or on `grid_size` (the tokenizers are convolutional: any size works)."""
        h, w = tokenizer.codes_shape
        if h != w:
            raise ValueError(f"only square code grids are supported, got {h}x{w}")
        grid = grid_size or h
        bits = getattr(tokenizer, "code_bits", None)
        if bits is None:
            return cls(grid_size=grid, vocab_size=tokenizer.vocab_size).split(num_subtokens)
        return cls.binary(grid, bits, num_subtokens)


def convert_tokens(tokens: torch.Tensor, source: TokenLayout, target: TokenLayout) -> torch.Tensor:
    """Re-split tokens [B, L, n_source] of binary codes into target's sub-tokens [B, L, n_target]."""
    if source == target:
        return tokens
    return target.to_tokens(source.to_codes(tokens))
