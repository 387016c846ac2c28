"""The built-in feature net: a small classifier trained on real images of a built-in data set.

FID's Inception knows ImageNet photographs; 32x32 procedural shapes or 8x8 digits barely move its
features. A classifier trained on the data itself gives features that see what matters there, and
its predictions say whether a sample is of the class that was asked for.

    imagelm train-features --data shapes --out runs/features/shapes     # a "classifier" checkpoint
    net = load_classifier("runs/features/shapes")
    feats, logits = net(net.prepare(uint8_images))                      # [B, D], [B, C]
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from imagelm import checkpoint, runtime
from imagelm.train import loop

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
    meta = checkpoint.read_meta(path)
    checkpoint.expect_kind(meta, (KIND,), "classifier (made by imagelm train-features)")
    model = Classifier(ClassifierConfig(**meta["config"]))
    checkpoint.load_state_strict(model, checkpoint.load_weights(meta["path"], prefer_ema=False), meta["path"])
    model.meta = meta
    return model.to(device).eval()


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


@dataclass
class ClassifierTrainArgs:
    """Options of `imagelm train-features`."""
    data: str = "shapes"
    out: str = "runs/features/shapes"
    image_size: int = 32
    data_length: int | None = None
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32
    feature_dim: int = 128
    device: str | None = None
    seed: int = 0
    progress: bool = True


def train_classifier(args: ClassifierTrainArgs) -> Path:
    """Train the built-in feature net on `args.data`'s train split, measure held-out accuracy,
    save a "classifier" checkpoint in args.out; returns its directory."""
    from imagelm.data import build_dataset
    from imagelm.data.batches import InMemoryImages
    if args.steps < 1 or args.batch_size < 1:
        raise ValueError(f"--steps and --batch-size must be >= 1, got {args.steps} and {args.batch_size}")
    rt = runtime.setup_runtime(args.device)
    train_set = build_dataset(args.data, image_size=args.image_size, split="train", seed=args.seed,
                              length=args.data_length)
    test_set = build_dataset(args.data, image_size=args.image_size, seed=args.seed,
                             split="test" if args.data in ("shapes", "shapes-simple", "digits") else "train",
                             length=1000 if args.data_length is None else max(64, args.data_length // 5))
    train = InMemoryImages(train_set, progress=args.progress, desc="rendering train images")
    config = ClassifierConfig(len(train_set.class_names), args.image_size, args.width, args.feature_dim)
    model = Classifier(config).to(rt.device)
    opt = loop.build_optimizer(model, args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    start = time.time()
    bar = tqdm(range(args.steps), desc="train-features", disable=not args.progress)
    for step in bar:
        loop.seed_step(args.seed, step)
        for group in opt.param_groups:
            group["lr"] = loop.lr_at(step, args.lr, min(50, args.steps // 10), args.steps, "cosine")
        x, y = train.batch(loop.batch_indices(step, len(train), args.batch_size, args.seed))
        loss = F.cross_entropy(model(x.to(rt.device))[1], y.to(rt.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    test = InMemoryImages(test_set, progress=False)
    accuracy = class_accuracy(model, test.images.permute(0, 2, 3, 1), test.labels.numpy())
    meta = {"kind": KIND, "config": dataclasses.asdict(config), "class_names": list(train_set.class_names),
            "data": args.data, "heldout_accuracy": accuracy, "heldout_images": len(test),
            "train_seconds": round(time.time() - start, 1)}
    return checkpoint.save(args.out, args.steps, meta, model.state_dict())
