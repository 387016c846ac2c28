"""Tokenizer training losses: reconstruction, perceptual (VGG16 from a local file), PatchGAN hinge.

Nothing here downloads: the perceptual loss reads VGG16 weights from a path the user gives
(a torchvision-layout `vgg16` state dict, `features.N.weight`; optionally with LPIPS linear heads
under `lin{i}.model.1.weight`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# VGG16's conv stack: channel counts, "M" = 2x2 max-pool. LPIPS taps the ReLU after these convs.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (1, 3, 6, 9, 12)  # indices of the convs (in order, 0-based) whose ReLU outputs are compared


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, l1_weight: float, l2_weight: float) -> torch.Tensor:
    """Weighted L1 + L2 over pixels; both [B, 3, H, W] -> scalar."""
    recon, target = recon.float(), target.float()
    return l1_weight * (recon - target).abs().mean() + l2_weight * (recon - target).pow(2).mean()


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on VGG16 features: images [B, 3, H, W] in [-1, 1] (x2) -> scalar."""

    def __init__(self, weights_path: str | Path):
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"VGG16 weights not found at {path} (pass a local vgg16 state dict, "
                                    f"or --no-perceptual to train without the perceptual loss)")
        convs, in_ch = [], 3
        for v in _VGG16:
            if v != "M":
                convs.append(nn.Conv2d(in_ch, v, 3, padding=1))
                in_ch = v
        self.convs = nn.ModuleList(convs)
        self.lins = nn.ParameterList([nn.Parameter(torch.ones(c), requires_grad=False)
                                      for c in (64, 128, 256, 512, 512)])
        self._load(path)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def _load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        feature_keys = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
        if len(feature_keys) < len(self.convs):
            raise ValueError(f"{path} does not look like a VGG16 state dict (features.N.weight keys)")
        for conv, idx in zip(self.convs, feature_keys):
            conv.weight.data.copy_(state[f"features.{idx}.weight"])
            conv.bias.data.copy_(state[f"features.{idx}.bias"])
        for i, lin in enumerate(self.lins):  # optional LPIPS calibration heads
            key = f"lin{i}.model.1.weight"
            if key in state:
                lin.data.copy_(state[key].flatten())

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, h, conv_i = [], (x - self.shift) / self.scale, 0
        for v in _VGG16:
            if v == "M":
                h = F.max_pool2d(h, 2)
                continue
            h = F.relu(self.convs[conv_i](h))
            if conv_i in _TAPS:
                feats.append(h)
            conv_i += 1
        return feats

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for fa, fb, lin in zip(self._features(recon), self._features(target), self.lins):
            fa, fb = F.normalize(fa, dim=1), F.normalize(fb, dim=1)
            total = total + ((fa - fb).pow(2) * lin.view(1, -1, 1, 1)).sum(1).mean()
        return total


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix) discriminator: images [B, 3, H, W] -> patch logits [B, 1, h, w]."""

    def __init__(self, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN init, as PatchGAN uses
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss -> scalar."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's (decoder's) adversarial loss -> scalar."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """Scale for the adversarial loss so its gradient at the decoder's last layer matches the
    reconstruction loss's (VQGAN's balancing); returns a detached scalar."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
