"""Speculative Jacobi decoding vs one token per step, on trained generators, in one run.

For each trained class-conditional generator (`--ckpt`, with its data's built-in classifier from
`imagelm train-features`), plain (one token per step) and Jacobi decoding through the same engine:
- forward passes per image and mean tokens accepted per pass;
- wall ms per image at 1 / 4 / 16 images (all admitted at once; a warm-up run first, not counted;
  the medians of `--reps` runs, the decodes interleaved run by run);
- with `--codes DIR` (the generator's training codes), also Jacobi decoding drafting from them;
- with `--groups G ...`, also Jacobi decoding with the lossy grouped acceptance over G codes;
- quality of `--per-class` samples of every class: the classifier's accuracy and FID on its
  features against held-out real images, for plain sampling with two seeds (the run-to-run spread)
  and Jacobi decoding.
And for GPT-B with random weights (`--gpt-b`), the cost of one pass: a 1-token decode step vs a
W-token verify step, ms per pass at 1 / 4 / 16 images.

    python benchmarks/bench_jacobi.py --ckpt runs/demo/gpt --classifier runs/features/shapes-simple \\
        --data shapes-simple --ckpt runs/digits/gpt --classifier runs/features/digits --data digits --gpt-b
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

import imagelm
from imagelm.data import build_dataset
from imagelm.data.transforms import to_uint8
from imagelm.eval.classifier import class_accuracy, load_classifier
from imagelm.eval.fid import feature_stats, frechet_distance
from imagelm.images import acceptance_groups, draft_store
from imagelm.runtime import cpu_description
from imagelm.sampling.engine import Engine
from imagelm.sampling.logits import SamplingOptions


def features(clf, images_uint8: np.ndarray) -> np.ndarray:
    """The classifier's penultimate features: uint8 [N, H, W, 3] -> [N, F]."""
    with torch.no_grad():
        x = torch.as_tensor(images_uint8)
        return torch.cat([clf(clf.prepare(x[i:i + 256]))[0] for i in range(0, len(x), 256)]).numpy()


def run_engine(gen, cond, options, seed, decode, window, dtype, groups=None, store=None):
    """(tokens, seconds, forward passes, each image's passes) of one batch, all images admitted at
    once (an image's passes: until it finished; a batch runs as long as its slowest); decode "plain",
    "jacobi", "groupedG" (Jacobi decoding with the lossy grouped acceptance over groups[decode]) or
    "jac+codes" (Jacobi decoding with drafts from the stored codes `store` too: exact)."""
    engine = Engine(gen, rows=len(cond) * (2 if options.guided else 1), dtype=dtype,
                    decode="plain" if decode == "plain" else "jacobi", window=window,
                    groups=(groups or {}).get(decode), draft_store=store if decode == "jac+codes" else None)
    start = time.perf_counter()
    request = engine.submit(cond, options, seed=seed)
    steps = 0
    while not request.finished:
        engine.step()
        steps += 1
    seconds = time.perf_counter() - start
    passes = engine._jacobi.passes if engine._jacobi is not None else steps - 1    # the prefill step decodes nothing
    each = request.jacobi.passes if request.jacobi is not None else [passes] * len(cond)
    return request.tokens, seconds, passes, each


def trained(ckpt, clf_dir, data, a, options, codes=None):
    gen = imagelm.load(ckpt)
    tok = imagelm.linked_tokenizer(gen.meta)
    clf = load_classifier(clf_dir)
    L = gen.config.seq_len
    groups = {f"grouped{g}": acceptance_groups(gen, g) for g in a.groups if g > 1}
    store = draft_store(gen, codes, a.draft_match) if codes else None
    decodes = ("plain", "jacobi", *(("jac+codes",) if store else ()), *groups)
    print(f"\n## {ckpt} ({data}): {L} tokens per image, {gen.config.num_classes} classes, window {a.window}, "
          f"dtype {a.dtype}" + ("; groupedG = Jacobi decoding with grouped acceptance over G codes (lossy)"
                                if groups else "") +
          (f"; jac+codes = Jacobi decoding drafting from {codes} ({len(store.tokens)} images, matches of "
           f"{a.draft_match}+ tokens)" if store else ""))
    print(f"{'images':>6} {'decode':<9} {'passes/img':>10} {'tok/pass':>8} {'ms/img':>8} {'speed-up':>8}")
    for batch in a.batches:
        cond = torch.arange(batch) % gen.config.num_classes
        times = {decode: [] for decode in decodes}
        passes = {decode: [] for decode in decodes}
        for decode in decodes:
            run_engine(gen, cond, options, 99, decode, a.window, a.dtype, groups, store)  # warm-up
        for rep in range(a.reps):        # interleaved, so a drift of the machine's speed hits every decode alike
            for decode in decodes:
                _, seconds, p, _ = run_engine(gen, cond, options, rep, decode, a.window, a.dtype, groups, store)
                times[decode].append(seconds)
                passes[decode].append(p)
        plain_ms = np.median(times["plain"]) / batch * 1e3
        for decode in decodes:
            ms = np.median(times[decode]) / batch * 1e3
            per_image = np.mean(passes[decode])          # every image of the batch runs in every pass
            print(f"{batch:>6} {decode:<9} {per_image:>10.1f} {L / per_image:>8.2f} {ms:>8.1f} "
                  f"{plain_ms / ms:>7.2f}x", flush=True)
    # Quality: the same number of samples per class.
    size = getattr(getattr(tok, "config", None), "image_size", 32)
    real = build_dataset(data, image_size=size, split="test", length=1000)
    mu_r, sigma_r = feature_stats(features(clf, to_uint8(torch.stack([real[i][0] for i in range(len(real))]))))
    labels = torch.arange(gen.config.num_classes).repeat_interleave(a.per_class)
    print(f"quality: {len(labels)} samples, classifier accuracy and FID on its features vs {len(real)} real; "
          f"passes/img: the mean over those samples of the passes each ran until it finished")
    runs = [("plain seed 0", "plain", 0), ("plain seed 1", "plain", 1), ("jacobi seed 0", "jacobi", 0)]
    runs += [("jac+codes seed 0", "jac+codes", 0)] if store else []
    runs += [(f"{name} seed 0", name, 0) for name in groups]
    for name, decode, seed in runs:
        runs_of_64 = [run_engine(gen, labels[i:i + 64], options, seed + i, decode, a.window, a.dtype, groups, store)
                      for i in range(0, len(labels), 64)]
        tokens = torch.cat([run[0] for run in runs_of_64])
        passes = np.mean([k for run in runs_of_64 for k in run[3]])
        images = to_uint8(imagelm.decode_tokens(tokens, tok).float())
        acc = class_accuracy(clf, images, labels.numpy())
        mu, sigma = feature_stats(features(clf, images))
        print(f"  {name:<16} accuracy {acc:.3f}  FID {frechet_distance(mu, sigma, mu_r, sigma_r):.2f}  "
              f"passes/img {passes:.1f} ({L / passes:.2f} tokens a pass)", flush=True)


def pass_cost(a):
    """ms of one 1-token decode pass vs one W-token verify pass for GPT-B (random weights)."""
    from imagelm.models import build_generator, gpt_config
    model = build_generator(gpt_config("GPT-B")).eval()
    for head in model.output.heads:
        torch.nn.init.normal_(head.weight, std=0.02)
    options = SamplingOptions(cfg_scale=2.0)
    print(f"\n## GPT-B, random weights: one pass, ms (CFG: 2 rows per image), window {a.window}, dtype {a.dtype}")
    print(f"{'images':>6} {'decode 1 tok':>12} {'verify W tok':>12} {'ratio':>6}")
    for batch in a.batches:
        cond = torch.arange(batch) % 1000
        row = {}
        for decode in ("plain", "jacobi"):
            engine = Engine(model, rows=2 * batch, dtype=a.dtype, decode=decode, window=a.window)
            request = engine.submit(cond, options, seed=0)
            for _ in range(6):                                                             # warm-up
                engine.step()
            start = time.perf_counter()
            for _ in range(a.passes):
                engine.step()
            row[decode] = (time.perf_counter() - start) / a.passes * 1e3
            request.cancel()
            engine.step()
        print(f"{batch:>6} {row['plain']:>12.1f} {row['jacobi']:>12.1f} {row['jacobi'] / row['plain']:>5.2f}x", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", default=[], help="a trained generator (repeatable)")
    p.add_argument("--classifier", action="append", default=[], help="its data's built-in classifier")
    p.add_argument("--data", action="append", default=[], help="its data set")
    p.add_argument("--codes", action="append", default=[],
                   help="its training codes, to also measure Jacobi decoding drafting from them (repeatable, "
                        "in --ckpt order; 'none' to skip one)")
    p.add_argument("--draft-match", type=int, default=4)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--per-class", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--groups", type=int, nargs="+", default=[],
                   help="also measure Jacobi decoding with grouped (lossy) acceptance over G codes, each G")
    p.add_argument("--gpt-b", action="store_true", help="also time one pass of GPT-B (random weights)")
    p.add_argument("--passes", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(2)
    print(f"# CPU: {platform.processor() or 'x86_64'} ({cpu_description()}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; CFG {a.cfg}, top-k {a.top_k}")
    options = SamplingOptions(cfg_scale=a.cfg, top_k=a.top_k)
    codes = [None if c == "none" else c for c in a.codes] + [None] * (len(a.ckpt) - len(a.codes))
    for ckpt, clf, data, code in zip(a.ckpt, a.classifier, a.data, codes):
        trained(ckpt, clf, data, a, options, code)
    if a.gpt_b:
        pass_cost(a)


if __name__ == "__main__":
    main()
