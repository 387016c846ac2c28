"""`make demo-t2i`: text-to-image on the built-in `shapes`, and how often samples follow the prompt's colour.

shapes (32x32) -> vq-tiny (8x8 codes) -> codes + caption features (all-MiniLM-L6-v2, offline, 32
tokens) -> the `tiny-t2i` generator -> samples for prompts of every colour, in demo-t2i/samples.png.
Each stage is reused when a previous run finished it. Run as `python -m imagelm.demo_t2i`.

Colour following is measured by pixel statistics: a sample's background is the palette colour
(`imagelm.data.shapes.COLORS`) nearest to the median border pixel, and its shape colour is the most
frequent nearest-palette colour among the other pixels (far from the background). A prompt names one
shape colour of the 8 that differ from its background, so a generator that ignores the shape colour
scores 1/8 = 12.5%; the same statistic on null-caption (unconditional) samples is the measured chance.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from imagelm.data.shapes import COLORS, POSITIONS, SHAPE_KINDS, caption_from_attributes

TOKENIZER_STEPS = 400
CODES_IMAGES = 12_000
GENERATOR_STEPS = 600
PROMPTS_PER_COLOR = 4
SAMPLES_PER_PROMPT = 4
CFG = 3.0
_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in _NAMES], dtype=np.float64)          # [9, 3]


def prompt_records(per_color: int = PROMPTS_PER_COLOR, seed: int = 0) -> list[dict]:
    """Attribute records of single-shape prompts, `per_color` for each of the 9 colours (random kind,
    size, position and a different background)."""
    rng = np.random.default_rng(seed)
    records = []
    for color in _NAMES:
        for _ in range(per_color):
            background = rng.choice([c for c in _NAMES if c != color])
            records.append({"background": str(background), "shapes": [{
                "kind": str(rng.choice(SHAPE_KINDS)), "color": color,
                "size": str(rng.choice(["medium", "large"])), "position": str(rng.choice(list(POSITIONS)))}]})
    return records


def image_colors(images: np.ndarray) -> tuple[list[str], list[str | None]]:
    """uint8 images [N, H, W, 3] -> (background colour names, dominant shape colour names or None)."""
    backgrounds, shapes = [], []
    for img in images.astype(np.float64):
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        bg = np.median(border, axis=0)
        bg_name = _NAMES[int(((_PALETTE - bg) ** 2).sum(-1).argmin())]
        far = np.sqrt(((img - bg) ** 2).sum(-1)) > 60                           # [H, W] not background
        labels = ((img[far][:, None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)   # [K] nearest palette colour
        labels = labels[labels != _NAMES.index(bg_name)]
        backgrounds.append(bg_name)
        shapes.append(_NAMES[int(np.bincount(labels, minlength=9).argmax())] if len(labels) else None)
    return backgrounds, shapes


def color_accuracy(images: np.ndarray, records: list[dict]) -> dict:
    """Fraction of samples whose dominant shape colour / background is the one their prompt names."""
    bgs, shapes = image_colors(images)
    return {"shape_color": float(np.mean([s == r["shapes"][0]["color"] for s, r in zip(shapes, records)])),
            "background": float(np.mean([b == r["background"] for b, r in zip(bgs, records)])),
            "images": len(records)}


def _stage(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def evaluate(gen_dir: Path, tokenizer, out: Path, seed: int = 0, cfg: float = CFG) -> dict:
    """Sample every prompt (CFG `cfg`) and the null caption; write the grid; return the accuracies."""
    from imagelm.api import load
    from imagelm.data.transforms import to_uint8
    from imagelm.images import Sampler, conditions, generate_images, save_images
    from imagelm.sampling.autoregressive import SamplingOptions

    gen = load(gen_dir)
    records = prompt_records(seed=seed)
    prompts = conditions(gen, prompts=[caption_from_attributes(r) for r in records])
    rows = [r for r in records for _ in range(SAMPLES_PER_PROMPT)]
    # The plain sampler in float32: the figures in the README were measured with it.
    plain = Sampler(SamplingOptions(cfg_scale=cfg), engine="plain")
    images = generate_images(gen, prompts.cond, tokenizer, SAMPLES_PER_PROMPT, plain, seed, progress=True).images
    save_images(images, out / "samples.png", nrow=2 * SAMPLES_PER_PROMPT)
    (out / "prompts.txt").write_text("".join(p + "\n" for p in prompts.names))
    result = {"cfg": cfg, "prompted": color_accuracy(to_uint8(images), rows)}
    null = gen.null_cond(prompts.cond.repeat_interleave(SAMPLES_PER_PROMPT))
    unguided = Sampler(SamplingOptions(), engine="plain")
    result["null_caption"] = color_accuracy(to_uint8(generate_images(gen, null, tokenizer, 1, unguided, seed + 1).images),
                                            rows)
    result["chance_shape_color"] = 1 / 8
    try:  # the evaluation module's prompt accuracy (colour inside the prompted box, position), when present
        from imagelm.eval.prompt import prompt_accuracy
        result["prompt_accuracy"] = prompt_accuracy(to_uint8(images), rows)
    except ImportError:
        pass
    return result


def run(out: Path, runs: Path, seed: int = 0, precision: str = "auto") -> dict:
    """Run (or reuse) every stage; returns the colour-following figures (also in out/metrics.json)."""
    from imagelm.data.codes import MANIFEST, extract_codes
    from imagelm.tokenizers import load_tokenizer
    from imagelm.train.generator import GeneratorTrainArgs, train_generator
    from imagelm.train.tokenizer import TokenizerTrainArgs, train_tokenizer

    t_all = time.time()
    out.mkdir(parents=True, exist_ok=True)
    vq_dir, codes_dir, gpt_dir = runs / "vq", runs / "codes", runs / "gpt"
    t = _stage("1/4 tokenizer: vq-tiny on shapes (32x32 -> 8x8 codes)")
    train_tokenizer(TokenizerTrainArgs(out=str(vq_dir), data="shapes", preset="vq-tiny", steps=TOKENIZER_STEPS,
                                       data_length=8000, ckpt_every=200, preview_every=200, seed=seed,
                                       precision=precision, resume=True))
    tokenizer = load_tokenizer(vq_dir)
    print(f"({time.time() - t:.0f}s)")
    t = _stage(f"2/4 codes + caption features (all-MiniLM-L6-v2, 32 tokens) of {CODES_IMAGES} images")
    if (codes_dir / MANIFEST).is_file():
        print(f"reusing {codes_dir}")
    else:
        extract_codes(tokenizer, "shapes", codes_dir, length=CODES_IMAGES, seed=seed, captions=True)
    print(f"({time.time() - t:.0f}s)")
    t = _stage("3/4 generator: tiny-t2i (4 layers, d=128) after a 32-token caption prefix")
    train_generator(GeneratorTrainArgs(codes=str(codes_dir), out=str(gpt_dir), preset="tiny-t2i",
                                       steps=GENERATOR_STEPS, batch_size=48, lr=2e-3, warmup=30, ckpt_every=150,
                                       preview_every=GENERATOR_STEPS, seed=seed, precision=precision, resume=True))
    print(f"({time.time() - t:.0f}s)")
    t = _stage(f"4/4 sampling: {PROMPTS_PER_COLOR} prompts per colour x {SAMPLES_PER_PROMPT} samples, CFG {CFG}")
    result = evaluate(gpt_dir, tokenizer, out, seed)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(f"shape colour follows the prompt: {result['prompted']['shape_color']:.1%} of "
          f"{result['prompted']['images']} samples (chance 12.5%; null-caption samples "
          f"{result['null_caption']['shape_color']:.1%}); background {result['prompted']['background']:.1%}")
    print(f"\ndemo finished in {time.time() - t_all:.0f}s")
    print(f"samples (two prompts a row, {SAMPLES_PER_PROMPT} each, prompts in order): {out / 'samples.png'}")
    print(f"prompts: {out / 'prompts.txt'}; figures: {out / 'metrics.json'}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imagelm.demo_t2i", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo-t2i", help="where the pictures and figures go")
    p.add_argument("--runs", default="runs/demo-t2i", help="where the checkpoints and codes go")
    p.add_argument("--eval-only", default=None, metavar="GEN_DIR",
                   help="only measure this text generator (its linked tokenizer decodes)")
    p.add_argument("--cfg", type=float, default=CFG)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    a = p.parse_args(argv)
    if a.eval_only:
        from imagelm.api import linked_tokenizer
        from imagelm.checkpoint import read_meta
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        result = evaluate(Path(a.eval_only), linked_tokenizer(read_meta(a.eval_only)), out, a.seed, a.cfg)
        print(json.dumps(result, indent=2))
        return 0
    run(Path(a.out), Path(a.runs), a.seed, a.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
