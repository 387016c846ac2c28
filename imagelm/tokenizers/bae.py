"""ELM-style binary autoencoder (BAE): every position of the latent grid is a D-bit code.

The encoder's features are projected to D logits, squashed by a sigmoid into bit probabilities,
and turned into bits: Bernoulli samples while training (and optionally when extracting codes),
a 0.5 threshold otherwise. The straight-through estimator passes the decoder's gradient to the
probabilities. Each bit that is on adds its learned embedding vector; the sum is the decoder input.
images [B, 3, H, W] <-> codes [B, H/f, W/f, D] of 0/1 (uint8).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from imagelm.tokenizers.blocks import AutoencoderConfig, Decoder, Encoder


@dataclass(frozen=True)
class BAEConfig(AutoencoderConfig):
    """A binary autoencoder: the shared autoencoder shape and losses, plus D bits a position.
    (z_channels is also the width of each bit's embedding.)"""
    bits: int = 16                    # D
    code_weight: float = 0.0          # weight of mean p(1-p): pushes bit probabilities to 0 or 1
    l2_weight: float = 0.0            # ELM trains with L1 (+ perceptual + adversarial) only

    kind = "bae"

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.bits <= 62:
            raise ValueError(f"bits must be in 1..62, got {self.bits}")


BAE_PRESETS: dict[str, dict] = {
    # ELM's ImageNet binary tokenizers: f = 16, D bits per position.
    "BAE-16": dict(bits=16),
    "BAE-20": dict(bits=20),
    "BAE-24": dict(bits=24),
    "BAE-32": dict(bits=32),
    # The CPU-sized twin of vq-tiny: 32x32 images -> 8x8 positions of 12 bits.
    "bae-tiny": dict(image_size=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=64, attn=False,
                     bits=12, code_weight=0.1, l2_weight=1.0, perceptual_weight=0.0, disc_weight=0.0, disc_start=0),
}


def bae_config(preset: str, **overrides) -> BAEConfig:
    """The named preset's config, with `overrides` applied."""
    if preset not in BAE_PRESETS:
        raise ValueError(f"unknown BAE preset {preset!r}; choose one of {', '.join(BAE_PRESETS)}")
    return BAEConfig(**{**BAE_PRESETS[preset], **overrides})


class BinaryQuantizer(nn.Module):
    """features [B, C, h, w] -> (decoder input [B, C, h, w], bits [B, h, w, D] uint8, losses)."""

    def __init__(self, channels: int, bits: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, bits, 1)
        self.embed = nn.Embedding(bits, channels)  # row d: what bit d adds when it is on

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, C, h, w] -> bit probabilities [B, D, h, w] (fp32)."""
        return torch.sigmoid(self.proj(features).float())

    def embed_bits(self, bits: torch.Tensor) -> torch.Tensor:
        """bits [B, D, h, w] (0/1, possibly carrying straight-through gradients) -> [B, C, h, w]."""
        return torch.einsum("bdhw,dc->bchw", bits, self.embed.weight.to(bits.dtype))

    def forward(self, features: torch.Tensor, stochastic: bool, generator: torch.Generator | None = None):
        p = self.probabilities(features)
        hard = torch.bernoulli(p, generator=generator) if stochastic else (p > 0.5).float()
        bits = p + (hard - p).detach()  # straight-through: forward uses the bits, backward the probabilities
        losses = {"code": (p * (1 - p)).mean()} if self.training else {}
        return self.embed_bits(bits), hard.to(torch.uint8).permute(0, 2, 3, 1).contiguous(), losses


class BinaryCodes(nn.Module):
    """What a binary autoencoder with `config` (grid_size, bits) and `quantize` (BinaryQuantizer) exposes
    about its codes, shared by ours (BAEModel) and ELM's (tokenizers/bae_elm.py)."""

    @property
    def codes_shape(self) -> tuple[int, int]:
        return (self.config.grid_size, self.config.grid_size)

    @property
    def code_bits(self) -> int:
        return self.config.bits

    @property
    def vocab_size(self) -> int:
        """Number of distinct codes a position can take: 2^D."""
        return 2 ** self.config.bits

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """bits [B, h, w, D] -> the decoder's input [B, z_channels, h, w] (summed bit embeddings)."""
        return self.quantize.embed_bits(codes.permute(0, 3, 1, 2).to(self.quantize.embed.weight.dtype))


class BAEModel(BinaryCodes):
    """The binary autoencoder. images [B, 3, H, W] in [-1, 1] <-> codes [B, H/f, W/f, D] uint8 bits."""

    def __init__(self, config: BAEConfig):
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.attn, c.dropout)
        self.decoder = Decoder(c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.attn, c.dropout)
        self.quantize = BinaryQuantizer(c.z_channels, c.bits)


    def forward(self, images: torch.Tensor):
        """Training pass (Bernoulli bits): images -> (reconstruction, codes [B, h, w, D], losses)."""
        z, codes, losses = self.quantize(self.encoder(images), stochastic=True)
        if "code" in losses:
            losses["code"] = self.config.code_weight * losses["code"]
        return self.decoder(z.to(images.dtype)), codes, losses

    @torch.no_grad()
    def encode(self, images: torch.Tensor, stochastic: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """images [B, 3, H, W] -> bits [B, H/f, W/f, D] uint8; thresholded at 0.5 unless stochastic."""
        return self.quantize(self.encoder(images), stochastic, generator)[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """bits [B, h, w, D] -> images [B, 3, h*f, w*f], clamped to [-1, 1]."""
        return self.decoder(self.embed_codes(codes)).clamp(-1, 1)


def code_ids(codes: torch.Tensor) -> torch.Tensor:
    """One int64 per position for any tokenizer's codes: VQ [B, h, w] -> [B*h*w]; bits [B, h, w, D] -> the
    D-bit integers (MSB first), [B*h*w]."""
    if codes.dim() == 3:
        return codes.reshape(-1).long()
    D = codes.shape[-1]
    weights = 2 ** torch.arange(D - 1, -1, -1, device=codes.device, dtype=torch.long)
    return (codes.reshape(-1, D).long() * weights).sum(-1)
