"""Convolutional building blocks shared by the image tokenizers (VQ and BAE).

The layout follows the taming-transformers / LlamaGen family of autoencoders: a conv stem,
a stack of resolution levels (ResNet blocks, optional self-attention, then a 2x down- or
up-sampling), a middle section at the lowest resolution, and a GroupNorm + SiLU + conv head.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class GridGeometry:
    """For a config with `image_size` and `ch_mult`: the downsample factor, the code grid, a size check
    and the JSON dict. Shared by our autoencoder configs and imported ones (ELM's BAE)."""

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.downsample

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check_image_size(self) -> None:
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the downsample factor "
                             f"{self.downsample}")


@dataclass(frozen=True)
class AutoencoderConfig(GridGeometry):
    """What every conv autoencoder tokenizer shares: its shape and its training-loss weights.

    VQConfig and BAEConfig add their quantiser's fields (and may change these defaults).
    """
    image_size: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    attn: bool = True                 # self-attention at the lowest resolution
    dropout: float = 0.0
    # Training-loss weights (used by train/tokenizer.py, saved here so a run is described whole).
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    perceptual_weight: float = 1.0
    disc_weight: float = 0.5
    disc_start: int = 20000

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        self.check_image_size()


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or fewer when a tiny model has fewer channels than that."""
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Two 3x3 convs with GroupNorm + SiLU and a residual; [B, C_in, H, W] -> [B, C_out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # A 1x1 projection only where the width changes, so the residual always matches.
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions; [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))  # [B, HW, C]
        h = F.scaled_dot_product_attention(q, k, v)  # [B, HW, C]
        h = h.transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv; [B, C, H, W] -> [B, C, H/2, W/2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pad right/bottom only, as the taming/LlamaGen encoders do, so weights port across.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 conv; [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ResNet blocks (each optionally followed by attention), then resampling."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, attn: bool, resample: nn.Module | None,
                 dropout: float):
        super().__init__()
        self.res = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, dropout) for i in range(num_blocks))
        self.attn = nn.ModuleList(AttnBlock(out_ch) for _ in range(num_blocks)) if attn else nn.ModuleList()
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return self.resample(x) if self.resample is not None else x


def middle(channels: int, attn: bool, dropout: float) -> nn.ModuleList:
    """ResNet -> (attention) -> ResNet at the lowest resolution."""
    mods = [ResnetBlock(channels, channels, dropout)]
    if attn:
        mods.append(AttnBlock(channels))
    mods.append(ResnetBlock(channels, channels, dropout))
    return nn.ModuleList(mods)


class Encoder(nn.Module):
    """Image [B, 3, H, W] -> features [B, z_channels, H/f, W/f] with f = 2 ** (len(ch_mult) - 1)."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 attn_lowest: bool = True, dropout: float = 0.0, in_channels: int = 3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels, in_ch = [], ch
        for i, mult in enumerate(ch_mult):
            out_ch = ch * mult
            last = i == len(ch_mult) - 1
            levels.append(Level(in_ch, out_ch, num_res_blocks, attn=attn_lowest and last,
                                resample=None if last else Downsample(out_ch), dropout=dropout))
            in_ch = out_ch
        self.conv_blocks = nn.ModuleList(levels)
        self.mid = middle(in_ch, attn_lowest, dropout)
        self.norm_out = group_norm(in_ch)
        self.conv_out = nn.Conv2d(in_ch, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Features [B, z_channels, h, w] -> image [B, 3, h*f, w*f]; mirrors `Encoder` (one extra block per level)."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 attn_lowest: bool = True, dropout: float = 0.0, out_channels: int = 3):
        super().__init__()
        in_ch = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, in_ch, 3, padding=1)
        self.mid = middle(in_ch, attn_lowest, dropout)
        levels = []
        for i, mult in enumerate(reversed(ch_mult)):
            out_ch = ch * mult
            last = i == len(ch_mult) - 1
            levels.append(Level(in_ch, out_ch, num_res_blocks + 1, attn=attn_lowest and i == 0,
                                resample=None if last else Upsample(out_ch), dropout=dropout))
            in_ch = out_ch
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = group_norm(in_ch)
        self.conv_out = nn.Conv2d(in_ch, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """The final conv weight: the adversarial loss balances gradients measured here."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
