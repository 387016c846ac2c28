"""LlamaGen-style VQ image tokenizer: conv encoder -> low-dim l2-normalised codebook -> conv decoder.

LlamaGen (arXiv 2406.06525) showed that a small code dimension (8) with l2-normalised codes lets a
large codebook (16384) be almost fully used. An image [B, 3, H, W] becomes codes [B, H/f, W/f] of
ints in [0, codebook_size).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from imagelm.tokenizers.blocks import AutoencoderConfig, Decoder, Encoder


@dataclass(frozen=True)
class VQConfig(AutoencoderConfig):
    """A VQ tokenizer: the shared autoencoder shape and losses, plus its quantiser."""
    codebook_size: int = 16384
    code_dim: int = 8
    l2_norm: bool = True
    commit_beta: float = 0.25
    entropy_weight: float = 0.0       # LlamaGen's optional entropy loss (0 = off)
    entropy_temperature: float = 0.01

    kind = "vq"


VQ_PRESETS: dict[str, dict] = {
    # LlamaGen's ImageNet tokenizers (downsample 16 and 8).
    "VQ-16": dict(ch_mult=(1, 1, 2, 2, 4)),
    "VQ-8": dict(ch_mult=(1, 2, 2, 4)),
    # A few hundred thousand parameters: 32x32 images -> 8x8 codes, trains on a laptop CPU in minutes.
    "vq-tiny": dict(image_size=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=64, attn=False,
                    codebook_size=512, perceptual_weight=0.0, disc_weight=0.0, disc_start=0),
}


def vq_config(preset: str, **overrides) -> VQConfig:
    """The named preset's config, with `overrides` applied (e.g. image_size=64)."""
    if preset not in VQ_PRESETS:
        raise ValueError(f"unknown VQ preset {preset!r}; choose one of {', '.join(VQ_PRESETS)}")
    return VQConfig(**{**VQ_PRESETS[preset], **overrides})


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantiser with a straight-through gradient.

    z [B, D, h, w] -> (z_q [B, D, h, w], indices [B, h, w], losses dict of scalars).
    """

    def __init__(self, codebook_size: int, code_dim: int, l2_norm: bool = True, commit_beta: float = 0.25,
                 entropy_weight: float = 0.0, entropy_temperature: float = 0.01):
        super().__init__()
        self.l2_norm, self.commit_beta = l2_norm, commit_beta
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.embedding = nn.Embedding(codebook_size, code_dim)
        self.embedding.weight.data.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)

    def codebook(self) -> torch.Tensor:
        """The codebook as used: [K, D], l2-normalised when configured."""
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [B, h, w] -> code vectors [B, D, h, w]."""
        return F.embedding(indices, self.codebook()).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        z = z.permute(0, 2, 3, 1).float()  # [B, h, w, D]; distances in fp32 even under autocast
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        codebook = self.codebook().float()
        flat = z.reshape(-1, z.shape[-1])
        # |z - e|^2 = |z|^2 + |e|^2 - 2 z.e
        dist = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        indices = dist.argmin(dim=1)
        # index_select, not codebook[indices]: its backward on the CPU adds each code's gradients in a
        # fixed order, so the same seed trains the same codebook run after run (indexing's does not).
        z_q = codebook.index_select(0, indices).view_as(z)
        losses = {}
        if self.training:
            losses["codebook"] = F.mse_loss(z_q, z.detach())
            losses["commit"] = self.commit_beta * F.mse_loss(z, z_q.detach())
            if self.entropy_weight > 0:
                losses["entropy"] = self.entropy_weight * entropy_loss(-dist, self.entropy_temperature)
        z_q = z + (z_q - z).detach()  # straight-through: the decoder's gradient flows to the encoder
        return z_q.permute(0, 3, 1, 2).contiguous(), indices.view(z.shape[:-1]), losses


def entropy_loss(affinity: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample entropy minus entropy of the batch-mean assignment: confident codes, all of them used.

    affinity [N, K] (higher = closer) -> scalar.
    """
    probs = F.softmax(affinity / temperature, dim=-1)
    log_probs = F.log_softmax(affinity / temperature, dim=-1)
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    avg_probs = probs.mean(0)
    avg_entropy = -(avg_probs * torch.log(avg_probs + 1e-5)).sum()
    return sample_entropy - avg_entropy


class VQModel(nn.Module):
    """The VQ autoencoder. images [B, 3, H, W] in [-1, 1] <-> codes [B, H/f, W/f] int64."""

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder(c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.attn, c.dropout)
        self.decoder = Decoder(c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.attn, c.dropout)
        self.quant_conv = nn.Conv2d(c.z_channels, c.code_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.code_dim, c.z_channels, 1)
        self.quantize = VectorQuantizer(c.codebook_size, c.code_dim, c.l2_norm, c.commit_beta,
                                        c.entropy_weight, c.entropy_temperature)

    @property
    def codes_shape(self) -> tuple[int, int]:
        """(h, w) of the code grid for the configured image size."""
        return (self.config.grid_size, self.config.grid_size)

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Training pass: images [B, 3, H, W] -> (reconstruction [B, 3, H, W], codes [B, h, w], losses)."""
        z_q, codes, losses = self.quantize(self.quant_conv(self.encoder(images)))
        return self.decoder(self.post_quant_conv(z_q.to(images.dtype))), codes, losses

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> codes [B, H/f, W/f] int64."""
        return self.quantize(self.quant_conv(self.encoder(images)))[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] int64 -> images [B, 3, h*f, w*f], clamped to [-1, 1]."""
        z_q = self.quantize.lookup(codes).to(self.post_quant_conv.weight.dtype)
        # channels-last activations: oneDNN's convolutions run ~1.15x faster on them (LlamaGen's
        # VQ-16 decoder at 256 px, 2-core AVX-512 CPU); the outputs equal to ~1e-5.
        z_q = z_q.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.post_quant_conv(z_q)).clamp(-1, 1).contiguous()
