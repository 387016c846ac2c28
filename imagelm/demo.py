"""`make demo`: the whole mission on a laptop CPU, in minutes.

images -> tokens (train a tiny VQ) -> codes (encode the data once) -> a tiny Llama generator
-> new images, one row per class, in demo/samples.png. Each stage is reused when a previous run
finished it, so re-running is cheap. Run as `python -m imagelm.demo [--out demo] [--runs runs/demo]`.

The recipe is sized for a 2-core CPU without native bf16 (the slow case): the `shapes-simple`
data (one large shape at the centre: the shape is the class) at 32x32, 8x8 = 64 tokens per image.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

DATA = "shapes-simple"
TOKENIZER_STEPS = 300
CODES_IMAGES = 4000
GENERATOR_STEPS = 600
SAMPLES_PER_CLASS = 8
CFG = 2.0
TOP_K = 0


def _stage(title: str):
    print(f"\n== {title}", flush=True)
    return time.time()


def run(out: Path, runs: Path, seed: int = 0, precision: str = "auto") -> Path:
    """Run (or reuse) every stage; returns the path of the samples grid."""
    from imagelm.api import load
    from imagelm.data import build_dataset
    from imagelm.data.codes import MANIFEST, extract_codes
    from imagelm.eval.recon import evaluate_tokenizer, save_reconstructions
    from imagelm.images import Sampler, conditions, generate_images, save_images
    from imagelm.sampling.autoregressive import SamplingOptions
    from imagelm.tokenizers import load_tokenizer
    from imagelm.train.generator import GeneratorTrainArgs, train_generator
    from imagelm.train.tokenizer import TokenizerTrainArgs, train_tokenizer

    t_all = time.time()
    out.mkdir(parents=True, exist_ok=True)
    vq_dir, codes_dir, gpt_dir = runs / "vq", runs / "codes", runs / "gpt"

    t = _stage(f"1/4 tokenizer: vq-tiny on {DATA} (32x32 -> 8x8 codes)")
    train_tokenizer(TokenizerTrainArgs(out=str(vq_dir), data=DATA, preset="vq-tiny", steps=TOKENIZER_STEPS,
                                       data_length=CODES_IMAGES, ckpt_every=100, preview_every=100, seed=seed,
                                       precision=precision, resume=True))
    tokenizer = load_tokenizer(vq_dir)
    held_out = build_dataset(DATA, image_size=32, split="test", seed=seed, length=500)
    metrics = evaluate_tokenizer(tokenizer, held_out)
    save_reconstructions(tokenizer, torch.stack([held_out[i][0] for i in range(16)]), out / "reconstructions.png")
    print(f"held-out PSNR {metrics['psnr']:.1f} dB, codebook usage {metrics['usage']:.0%} ({time.time() - t:.0f}s)")

    t = _stage(f"2/4 codes: encode {CODES_IMAGES} images once")
    if (codes_dir / MANIFEST).is_file():
        print(f"reusing {codes_dir}")
    else:
        extract_codes(tokenizer, DATA, codes_dir, length=CODES_IMAGES, seed=seed)
    print(f"({time.time() - t:.0f}s)")

    t = _stage("3/4 generator: a tiny Llama (4 layers, d=128) predicting the 64 tokens")
    train_generator(GeneratorTrainArgs(codes=str(codes_dir), out=str(gpt_dir), preset="tiny", steps=GENERATOR_STEPS,
                                       ckpt_every=200, preview_every=200, seed=seed, precision=precision,
                                       resume=True))
    print(f"({time.time() - t:.0f}s)")

    t = _stage(f"4/4 sampling: {SAMPLES_PER_CLASS} images per class, CFG {CFG}")
    generator = load(gpt_dir)
    classes = conditions(generator)                                   # every class, a row each
    made = generate_images(generator, classes.cond, tokenizer, SAMPLES_PER_CLASS,
                           Sampler(SamplingOptions(cfg_scale=CFG, top_k=TOP_K)), seed=seed, progress=True)
    grid = out / "samples.png"
    save_images(made.images, grid, nrow=SAMPLES_PER_CLASS)
    print(f"rows (top to bottom): {', '.join(classes.names)} ({time.time() - t:.0f}s)")
    print(f"\ndemo finished in {time.time() - t_all:.0f}s")
    print(f"samples (a row per class): {grid}")
    print(f"tokenizer reconstructions (original above reconstruction): {out / 'reconstructions.png'}")
    return grid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imagelm.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo", help="where the pictures go")
    p.add_argument("--runs", default="runs/demo", help="where the checkpoints and codes go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 where the CPU runs it natively, else fp32")
    a = p.parse_args(argv)
    run(Path(a.out), Path(a.runs), a.seed, a.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
