"""The built-in feature net: a small classifier trained on real images of a built-in data set.

FID's Inception knows ImageNet photographs; 32x32 procedural shapes or 8x8 digits barely move its
features. A classifier trained on the data itself gives features that see what matters there, and
its predictions say whether a sample is of the class that was asked for.

    imagelm train-features --data shapes --out runs/features/shapes     # a "classifier" checkpoint
    net = load_classifier("runs/features/shapes")                       # (trained by imagelm/train/classifier.py)
    feats, logits = net(net.prepare(uint8_images))                      # [B, D], [B, C]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from imagelm import checkpoint

KIND = "classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    """What shapes the classifier: classes, input side, channel width, feature dimension."""
    num_classes: int
    image_size: int = 32
    width: int = 32
    feature_dim: int = 128


def _block(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class Classifier(nn.Module):
    """x [B, 3, S, S] in [-1, 1] -> (features [B, feature_dim], logits [B, num_classes])."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.trunk = nn.Sequential(_block(3, w, 1), _block(w, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
                                   _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1))
        self.project = nn.Linear(4 * w, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def forward(self, x):
        h = self.trunk(x).mean(dim=(2, 3))           # [B, 4w, S/4, S/4] -> [B, 4w]
        feats = F.silu(self.project(h))              # [B, feature_dim]: the penultimate features
        return feats, self.head(feats)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [B, H, W, 3] -> input [B, 3, S, S] in [-1, 1] (bilinear, antialiased resize)."""
        x = images.permute(0, 3, 1, 2).float().div(127.5).sub(1)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x


def load_classifier(path, device: str | torch.device = "cpu") -> Classifier:
    """The classifier saved at `path` (checkpoint or run directory), in eval mode, with `.meta`."""
    return checkpoint.load_module(path, (KIND,), "classifier (made by imagelm train-features)",
                                  lambda meta: Classifier(meta.config_as(ClassifierConfig)), device, prefer_ema=False)


@torch.no_grad()
def predict(net: Classifier, images, batch_size: int = 256) -> np.ndarray:
    """Predicted class ids of uint8 images [N, H, W, 3] -> int64 [N]."""
    images = torch.as_tensor(np.asarray(images))
    device = next(net.parameters()).device
    out = [net(net.prepare(images[s:s + batch_size]).to(device))[1].argmax(1).cpu()
           for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def class_accuracy(net: Classifier, images, labels) -> float:
    """Fraction of uint8 images [N, H, W, 3] that the classifier assigns to their labels [N]."""
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return float((predict(net, images) == labels).mean())
