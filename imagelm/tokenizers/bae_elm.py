"""ELM's binary autoencoder, architecture for architecture, so its released weights compute exactly here.

It differs from our BAE (bae.py) in ways no key renaming can hide:
- no SiLU between the final GroupNorm and the output conv, in the encoder and in the decoder;
- the decoder has `res_blocks * gen_mul` ResNet blocks per level (ours: one more than the encoder);
- an optional GroupNorm on the decoder's input (`norm_first`);
- attention after each ResNet block at the listed resolutions (`attn_resolutions`);
- its images live in [0, 1]. This module keeps our interface (images in [-1, 1]) and converts at the
  boundary: encode sees (x + 1) / 2, decode returns 2 y - 1.
Its quantiser is ours (`BinaryQuantizer`: sigmoid bit probabilities, 0.5 threshold, summed bit embeddings).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from imagelm.tokenizers.bae import BinaryCodes, BinaryQuantizer
from imagelm.tokenizers.blocks import Downsample, GridGeometry, Level, Upsample, group_norm, middle


@dataclass(frozen=True)
class ELMBAEConfig(GridGeometry):
    """The shape of an ELM binary autoencoder (its hparams: nf, ch_mult, res_blocks, emb_dim, codebook_size
    = bits, attn_resolutions, gen_mul, norm_first), and the loss weights it is adapted with when
    `imagelm train-tokenizer --init` fine-tunes imported weights (ours, bae-tiny's CPU defaults: no
    perceptual or adversarial term; ELM's own training recipe is not reproduced)."""
    image_size: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    decoder_res_blocks: int = 2       # int(res_blocks * gen_mul)
    z_channels: int = 256             # emb_dim: encoder output width and each bit's embedding width
    bits: int = 16                    # D (ELM's `codebook_size`)
    attn_resolutions: tuple[int, ...] = (16,)
    norm_first: bool = False
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    perceptual_weight: float = 0.0
    disc_weight: float = 0.0
    disc_start: int = 0
    code_weight: float = 0.1

    kind = "bae-elm"

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        self.check_image_size()


class ELMEncoder(nn.Module):
    """Image [B, 3, H, W] in [0, 1] -> features [B, z_channels, H/f, W/f] (GroupNorm then conv, no SiLU)."""

    def __init__(self, c: ELMBAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(3, c.ch, 3, padding=1)
        levels, in_ch, res = [], c.ch, c.image_size
        for i, mult in enumerate(c.ch_mult):
            last = i == len(c.ch_mult) - 1
            out_ch = c.ch * mult
            levels.append(Level(in_ch, out_ch, c.num_res_blocks, attn=res in c.attn_resolutions,
                                resample=None if last else Downsample(out_ch), dropout=0.0))
            in_ch, res = out_ch, res // 2
        self.conv_blocks = nn.ModuleList(levels)
        self.mid = middle(in_ch, True, 0.0)
        self.norm_out = group_norm(in_ch)
        self.conv_out = nn.Conv2d(in_ch, c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(self.norm_out(h))


class ELMDecoder(nn.Module):
    """Bit embeddings [B, z_channels, h, w] -> image [B, 3, h*f, w*f] in [0, 1] (ELM's `generator`)."""

    def __init__(self, c: ELMBAEConfig):
        super().__init__()
        in_ch = c.ch * c.ch_mult[-1]
        self.norm_in = group_norm(c.z_channels) if c.norm_first else None
        self.conv_in = nn.Conv2d(c.z_channels, in_ch, 3, padding=1)
        self.mid = middle(in_ch, True, 0.0)
        levels, res = [], c.grid_size
        for i, mult in enumerate(reversed(c.ch_mult)):
            last = i == len(c.ch_mult) - 1
            out_ch = c.ch * mult
            levels.append(Level(in_ch, out_ch, c.decoder_res_blocks, attn=res in c.attn_resolutions,
                                resample=None if last else Upsample(out_ch), dropout=0.0))
            in_ch, res = out_ch, res * 2
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = group_norm(in_ch)
        self.conv_out = nn.Conv2d(in_ch, 3, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """The final conv weight (where the adversarial loss's adaptive weight is measured)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.norm_in(z) if self.norm_in is not None else z)
        for m in self.mid:
            h = m(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(self.norm_out(h))


class ELMBAEModel(BinaryCodes):
    """ELM's binary autoencoder. images [B, 3, H, W] in [-1, 1] <-> codes [B, H/f, W/f, D] uint8 bits."""

    def __init__(self, config: ELMBAEConfig):
        super().__init__()
        self.config = config
        self.encoder = ELMEncoder(config)
        self.decoder = ELMDecoder(config)
        self.quantize = BinaryQuantizer(config.z_channels, config.bits)

    def forward(self, images: torch.Tensor):
        """Training pass (Bernoulli bits, straight-through), for fine-tuning imported weights: images
        [B, 3, H, W] in [-1, 1] -> (reconstruction in [-1, 1], unclamped; bits [B, h, w, D]; losses)."""
        z, codes, losses = self.quantize(self.encoder((images + 1) / 2), stochastic=True)
        if "code" in losses:
            losses["code"] = self.config.code_weight * losses["code"]
        return self.decoder(z.to(images.dtype)) * 2 - 1, codes, losses

    @torch.no_grad()
    def encode(self, images: torch.Tensor, stochastic: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> bits [B, H/f, W/f, D] uint8; thresholded at 0.5 unless stochastic."""
        return self.quantize(self.encoder((images + 1) / 2), stochastic, generator)[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """bits [B, h, w, D] -> images [B, 3, h*f, w*f] in [-1, 1] (ELM's [0, 1] output, clamped, rescaled)."""
        return (self.decoder(self.embed_codes(codes)) * 2 - 1).clamp(-1, 1)

