"""Do bf16 and int8 engines sample as well as float32? Same seeds, every dtype, scored in one run.

For a trained class-conditional generator and a built-in classifier (`imagelm train-features`) of
its data, samples `--per-class` images of every class with the plain sampler (float32) and the
engine in float32, bfloat16 and int8, then reports for each: class accuracy of the samples (the
classifier's), FID on the classifier's features against held-out real images, and the fraction of
tokens identical to the float32 plain sampler's (float32 engine: 1.0 by construction).

    python benchmarks/engine_quality.py --ckpt runs/demo/gpt --classifier runs/features/shapes-simple \\
        --data shapes-simple --per-class 32
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import imagelm
from imagelm.data import build_dataset
from imagelm.data.transforms import to_uint8
from imagelm.eval.classifier import class_accuracy, load_classifier
from imagelm.eval.fid import feature_stats, frechet_distance


def features(clf, images_uint8: np.ndarray) -> np.ndarray:
    """The classifier's penultimate features: uint8 [N, H, W, 3] -> [N, F]."""
    with torch.no_grad():
        x = torch.as_tensor(images_uint8)
        return torch.cat([clf(clf.prepare(x[i:i + 256]))[0] for i in range(0, len(x), 256)]).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--data", default="shapes-simple")
    p.add_argument("--per-class", type=int, default=32)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "int8"])
    a = p.parse_args()
    gen = imagelm.load(a.ckpt)
    tokenizer = imagelm.linked_tokenizer(gen.meta)
    clf = load_classifier(a.classifier)
    size = getattr(getattr(tokenizer, "config", None), "image_size", 32)
    real = build_dataset(a.data, image_size=size, split="test", seed=a.seed, length=1000)
    real_u8 = to_uint8(torch.stack([real[i][0] for i in range(len(real))]))
    real_stats = feature_stats(features(clf, real_u8))
    classes = list(range(gen.config.num_classes))
    labels = np.repeat(np.arange(len(classes)), a.per_class)
    runs = [("plain", "float32")] + [("engine", d) for d in a.dtypes]
    reference = None
    print(f"{'sampler':<8} {'dtype':<9} {'accuracy':>8} {'FID':>8} {'same tokens':>11} {'seconds':>8}")
    for engine, dtype in runs:
        start = time.perf_counter()
        tokens = imagelm.sample(gen, classes, n=a.per_class, cfg_scale=a.cfg, seed=a.seed, engine=engine,
                                dtype=dtype)
        seconds = time.perf_counter() - start
        reference = tokens if reference is None else reference
        images = to_uint8(imagelm.decode_tokens(tokens, tokenizer).float())
        mu, sigma = feature_stats(features(clf, images))
        fid = frechet_distance(mu, sigma, *real_stats)
        same = (tokens == reference).float().mean().item()
        print(f"{engine:<8} {dtype:<9} {class_accuracy(clf, images, labels):>8.3f} {fid:>8.2f} {same:>11.3f} "
              f"{seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
