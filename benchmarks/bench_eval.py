"""What an ADM-style evaluation costs on this machine, part by part.

    python benchmarks/bench_eval.py                        # the ADM sizes: 10,000 reference, 50,000 samples
    python benchmarks/bench_eval.py --ref 2000 --samples 5000 --images 32

Times, each after a warm-up: the Inception's features (pool and spatial) per image for
256x256 uint8 inputs; one Fréchet distance at FID's 2048 and sFID's 2023 dimensions (statistics
given); and precision/recall (k = 3) over random features of the reference and sample sizes, with
and without `--pr-max`-style caps. Prints a table and writes OUT/bench_eval.json. Random features
stand in for real ones: the cost depends on the sizes only.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, repeat: int = 1) -> float:
    """Seconds of one call of fn (the best of `repeat`, after one untimed warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", type=int, default=10_000, help="reference features (ADM's batches hold 10,000)")
    p.add_argument("--samples", type=int, default=50_000, help="sample features (ADM's batches hold 50,000)")
    p.add_argument("--images", type=int, default=32, help="256x256 images for the Inception timing")
    p.add_argument("--cap", type=int, default=10_000, help="the --pr-max cap timed beside the full sets")
    p.add_argument("--out", default="bench_eval_out")
    args = p.parse_args()
    from imagelm.eval.features import InceptionFeatures
    from imagelm.eval.fid import frechet_distance, precision_recall

    rng = np.random.default_rng(0)
    cpu = f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
    result = {"cpu": cpu, "args": vars(args)}

    net = InceptionFeatures(batch_size=16)
    images = rng.integers(0, 256, (args.images, 256, 256, 3), dtype=np.uint8)
    seconds = timed(lambda: net.activations(images))
    result["inception_s_per_image"] = seconds / args.images

    for name, d in (("fid", 2048), ("sfid", 2023)):
        a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        s1, s2 = a @ a.T / d, b @ b.T / d
        result[f"frechet_{name}_{d}d_s"] = timed(lambda: frechet_distance(np.zeros(d), s1, np.ones(d), s2))

    real = rng.normal(size=(args.ref, 2048)).astype(np.float32)
    fake = rng.normal(size=(args.samples, 2048)).astype(np.float32)
    small = min(args.cap, args.ref), min(args.cap, args.samples)
    result["pr_capped_sizes"] = list(small)
    result["pr_capped_s"] = timed(lambda: precision_recall(real[:small[0]], fake[:small[1]], 3))
    t0 = time.perf_counter()
    precision_recall(real, fake, 3)          # the full sets once: minutes, no warm-up needed at this size
    result["pr_full_s"] = time.perf_counter() - t0

    print(f"CPU: {cpu}")
    print(f"Inception (pool + spatial), 256x256 inputs: {result['inception_s_per_image'] * 1000:.0f} ms an image "
          f"-> {result['inception_s_per_image'] * (args.ref + args.samples) / 60:.1f} min for {args.ref:,} + "
          f"{args.samples:,} images")
    print(f"Fréchet distance: {result['frechet_fid_2048d_s']:.2f} s at 2048-d (FID), "
          f"{result['frechet_sfid_2023d_s']:.2f} s at 2023-d (sFID)")
    print(f"precision/recall k=3: {result['pr_full_s']:.1f} s for {args.ref:,} + {args.samples:,} (ADM's default), "
          f"{result['pr_capped_s']:.1f} s capped at {small[0]:,} + {small[1]:,}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_eval.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
