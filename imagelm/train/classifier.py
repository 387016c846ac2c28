"""Training the built-in feature net (imagelm/eval/classifier.py) on a data set's real images.

    imagelm train-features --data shapes --out runs/features/shapes
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from tqdm import tqdm

from imagelm import checkpoint, runtime
from imagelm.eval.classifier import KIND, Classifier, ClassifierConfig, class_accuracy
from imagelm.train import loop


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
    meta = checkpoint.CheckpointMeta(
        kind=KIND, config=dataclasses.asdict(config), class_names=tuple(train_set.class_names),
        extra={"data": args.data, "heldout_accuracy": accuracy, "heldout_images": len(test),
               "train_seconds": round(time.time() - start, 1)})
    return checkpoint.save(args.out, args.steps, meta, model.state_dict())
