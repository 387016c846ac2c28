"""`imagelm study`: ELM's design-space study, small enough for a laptop CPU.

On a built-in data set it trains, with one shared recipe per budget:
- tokenizers: VQ (vq-tiny) vs binary autoencoder (bae-tiny, 12 bits): PSNR, code usage, and the
  unigram KL divergence of their tokens from uniform (for every vocabulary split);
- generators: BAE codes split 1-12 / 2-6 / 3-4 (AR), AR vs MLM (on VQ and on BAE 2-6 codes), and
  two model sizes (tiny, small) on VQ codes;
- sampling: a CFG schedule x scale sweep and a top-k sweep on the VQ AR model;
- analyses: attention locality per layer for both sizes.
Quality is measured with the built-in feature net (a classifier trained on the real images): the
fraction of samples it assigns to the requested class, and FID on its penultimate features.
Everything lands in OUT/report.md, OUT/*.png (plots and sample grids) and OUT/results.json; trained
runs are kept in OUT/runs and reused when the study is run again.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

BUDGETS = {
    # ~2 minutes: for tests; numbers are meaningless.
    "smoke": dict(tok_steps=8, gen_steps=8, clf_steps=8, images=256, per_class=2, eval_images=64,
                  scales=(1.0, 3.0), topks=(0, 16), schedules=("constant", "linear")),
    # ~25 minutes on a 2-core CPU.
    "default": dict(tok_steps=300, gen_steps=400, clf_steps=300, images=4000, per_class=16, eval_images=512,
                    scales=(1.0, 1.5, 2.0, 3.0), topks=(0, 16, 64),
                    schedules=("constant", "linear", "cos", "log", "square", "square_root")),
}

TOKENIZERS = {"VQ": "vq-tiny", "BAE": "bae-tiny"}
# name -> (tokenizer, kind, sub-tokens, preset)
GENERATORS = {
    "VQ AR tiny": ("VQ", "ar", 1, "tiny"),
    "VQ AR small": ("VQ", "ar", 1, "small"),
    "VQ MLM tiny": ("VQ", "mlm", 1, "tiny"),
    "BAE 1-12 AR": ("BAE", "ar", 1, "tiny"),
    "BAE 2-6 AR": ("BAE", "ar", 2, "tiny"),
    "BAE 3-4 AR": ("BAE", "ar", 3, "tiny"),
    "BAE 2-6 MLM": ("BAE", "mlm", 2, "tiny"),
}


def _features(clf, images_uint8: np.ndarray) -> np.ndarray:
    """Penultimate features of the built-in classifier: uint8 [N, H, W, 3] -> [N, F]."""
    with torch.no_grad():
        x = torch.as_tensor(images_uint8)
        return torch.cat([clf(clf.prepare(x[i:i + 256]))[0] for i in range(0, len(x), 256)]).numpy()


class _Quality:
    """Scores generated images against the real held-out set with the built-in classifier."""

    def __init__(self, clf, real_uint8: np.ndarray):
        from imagelm.eval.fid import feature_stats
        self.clf = clf
        self.real_stats = feature_stats(_features(clf, real_uint8))

    def __call__(self, images_uint8: np.ndarray, labels: np.ndarray) -> dict:
        from imagelm.eval.classifier import class_accuracy
        from imagelm.eval.fid import feature_stats, frechet_distance
        mu, sigma = feature_stats(_features(self.clf, images_uint8))
        return {"accuracy": class_accuracy(self.clf, images_uint8, labels),
                "fid": frechet_distance(mu, sigma, *self.real_stats)}


def _sample_images(gen, tokenizer, num_classes: int, per_class: int, seed: int, **options):
    """per_class images of every class -> (images [N, 3, H, W] in [-1, 1], uint8 [N, H, W, 3], labels [N])."""
    from imagelm.data.transforms import to_uint8
    from imagelm.images import Sampler, generate_images
    from imagelm.sampling.autoregressive import SamplingOptions
    made = generate_images(gen, torch.arange(num_classes), tokenizer, per_class, Sampler(SamplingOptions(**options)), seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    return made.images, to_uint8(made.images), labels


def run_study(out: str | Path, data: str = "shapes-simple", budget: str = "default", seed: int = 0,
              precision: str = "auto") -> Path:
    """Run (or resume) the whole study; returns the path of report.md."""
    import imagelm
    from imagelm.data import build_dataset
    from imagelm.data.codes import MANIFEST, CodesDataset, extract_codes
    from imagelm.data.transforms import save_grid, to_uint8
    from imagelm.eval.classifier import load_classifier
    from imagelm.eval.plots import line_plot
    from imagelm.eval.recon import evaluate_tokenizer
    from imagelm.eval.tokens import attention_locality, attention_maps, unigram_kl_from_uniform
    from imagelm.tokenizers import load_tokenizer
    from imagelm.train.classifier import ClassifierTrainArgs, train_classifier
    from imagelm.train.generator import GeneratorTrainArgs, generator_loss, train_generator
    from imagelm.train.loop import step_generator
    from imagelm.train.tokenizer import TokenizerTrainArgs, train_tokenizer
    from imagelm.vocab import convert_tokens

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    out, t_start = Path(out), time.time()
    runs = out / "runs"
    results: dict = {"data": data, "budget": budget, "tokenizers": {}, "token_kl": {}, "generators": {},
                     "sweep": {}, "topk": {}, "locality": {}}

    print("== feature net (built-in classifier) on real images", flush=True)
    clf_dir = runs / "classifier"
    if not (clf_dir / "checkpoints").is_dir():
        train_classifier(ClassifierTrainArgs(data=data, out=str(clf_dir), steps=b["clf_steps"], seed=seed,
                                             data_length=b["images"], progress=True))
    clf = load_classifier(clf_dir)
    held_out = build_dataset(data, image_size=32, split="test", seed=seed, length=b["eval_images"])
    real = to_uint8(torch.stack([held_out[i][0] for i in range(len(held_out))]))
    quality = _Quality(clf, real)
    num_classes = len(held_out.class_names)

    tokenizers = {}
    for name, preset in TOKENIZERS.items():
        print(f"== tokenizer {name} ({preset})", flush=True)
        tok_dir, codes_dir = runs / f"tok-{name}", runs / f"codes-{name}"
        train_tokenizer(TokenizerTrainArgs(out=str(tok_dir), data=data, preset=preset, steps=b["tok_steps"],
                                           data_length=b["images"], seed=seed, precision=precision, resume=True,
                                           ckpt_every=b["tok_steps"], preview_every=b["tok_steps"]))
        tok = tokenizers[name] = load_tokenizer(tok_dir)
        metrics = evaluate_tokenizer(tok, held_out, progress=False)
        results["tokenizers"][name] = {k: metrics[k] for k in ("psnr", "usage", "perplexity")}
        if not (codes_dir / MANIFEST).is_file():
            extract_codes(tok, data, codes_dir, length=b["images"], seed=seed, progress=False)
        codes = CodesDataset(codes_dir)
        tokens, _ = codes.batch(torch.arange(len(codes)))
        splits = [1] if codes.layout.bits is None else [1, 2, 3, 4]
        for n in splits:
            layout = codes.layout.split(n)
            split_name = f"{name} {n}-{layout.bits_per_token}" if layout.bits else f"{name} 1-{layout.vocab_size}"
            results["token_kl"][split_name] = {
                "vocab": layout.vocab_size,
                "kl": unigram_kl_from_uniform(convert_tokens(tokens, codes.layout, layout), layout.vocab_size)}

    for name, (tok_name, kind, n, preset) in GENERATORS.items():
        print(f"== generator {name}", flush=True)
        gen_dir = runs / ("gen-" + name.replace(" ", "-"))
        train_generator(GeneratorTrainArgs(codes=str(runs / f"codes-{tok_name}"), out=str(gen_dir), preset=preset,
                                           kind=kind, subtokens=n, steps=b["gen_steps"], seed=seed,
                                           precision=precision, resume=True, ckpt_every=b["gen_steps"],
                                           preview_every=0))   # the study draws its own sample grids
        gen = imagelm.load(gen_dir)
        codes = CodesDataset(runs / f"codes-{tok_name}")
        layout = gen.meta.layout
        tokens, labels = codes.batch(torch.arange(min(512, len(codes))), layout=layout)
        with torch.no_grad():   # the same masks for every masked model (no condition dropout: eval mode)
            loss = generator_loss(kind, gen, tokens, labels, step_generator(seed, 0)).item()
        images, images_u8, sample_labels = _sample_images(gen, tokenizers[tok_name], num_classes, b["per_class"],
                                                         seed, cfg_scale=2.0)
        save_grid(images, out / f"samples-{name.replace(' ', '-')}.png", nrow=b["per_class"])
        results["generators"][name] = {"kind": kind, "split": f"{n}-{layout.vocab_size}", "preset": preset,
                                       "params": sum(p.numel() for p in gen.parameters()),
                                       "loss": loss, **quality(images_u8, sample_labels)}

    print("== sampling sweeps on VQ AR tiny", flush=True)
    gen = imagelm.load(runs / "gen-VQ-AR-tiny")
    for schedule in b["schedules"]:
        for scale in b["scales"]:
            _, u8, labels = _sample_images(gen, tokenizers["VQ"], num_classes, b["per_class"], seed,
                                           cfg_scale=scale, cfg_schedule=schedule)
            results["sweep"][f"{schedule} {scale}"] = {"schedule": schedule, "scale": scale, **quality(u8, labels)}
    for k in b["topks"]:
        _, u8, labels = _sample_images(gen, tokenizers["VQ"], num_classes, b["per_class"], seed, cfg_scale=2.0, top_k=k)
        results["topk"][str(k)] = quality(u8, labels)

    print("== attention locality", flush=True)
    for size in ("tiny", "small"):
        g = imagelm.load(runs / f"gen-VQ-AR-{size}")
        codes = CodesDataset(runs / "codes-VQ")
        tokens, labels = codes.batch(torch.arange(min(64, len(codes))))
        maps = attention_maps(g, tokens, labels)
        results["locality"][size] = attention_locality(maps, g.prefix_len, g.config.grid_size, window=3)

    sweep = {s: [(r["scale"], r["accuracy"]) for r in results["sweep"].values() if r["schedule"] == s]
             for s in b["schedules"]}
    line_plot(sweep, out / "cfg_sweep_accuracy.png", "class accuracy vs CFG scale (VQ AR tiny)", "CFG scale", "accuracy")
    line_plot({s: [(r["scale"], r["fid"]) for r in results["sweep"].values() if r["schedule"] == s]
               for s in b["schedules"]}, out / "cfg_sweep_fid.png", "FID (built-in features) vs CFG scale",
              "CFG scale", "FID")
    line_plot({size: list(enumerate(v)) for size, v in results["locality"].items()}, out / "attention_locality.png",
              "attention mass within 3x3 of the predicted position", "layer", "mass")
    results["seconds"] = time.time() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    report = out / "report.md"
    report.write_text(render_report(results))
    print(f"study finished in {results['seconds']:.0f}s: {report}")
    return report


def render_report(r: dict) -> str:
    """The study's results as a Markdown report."""
    lines = [f"# imagelm study on `{r['data']}` (budget `{r['budget']}`)", "",
             "Quality: built-in feature net (a classifier trained on real images); accuracy = fraction of samples it",
             "assigns to the requested class; FID on its penultimate features vs held-out real images. CFG 2 unless noted.",
             "", "## Tokenizers", "", "| tokenizer | PSNR (dB) | code usage | perplexity |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['psnr']:.2f} | {v['usage']:.2%} | {v['perplexity']:.0f} |" for k, v in r["tokenizers"].items()]
    lines += ["", "## Token randomness: unigram KL from uniform (nats; 0 = looks like noise)", "",
              "| tokens | vocabulary | KL |", "|---|---|---|"]
    lines += [f"| {k} | {v['vocab']} | {v['kl']:.3f} |" for k, v in r["token_kl"].items()]
    lines += ["", "## Generators", "", "| run | kind | split n-V | preset | params | loss | accuracy | FID |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['kind']} | {v['split']} | {v['preset']} | {v['params'] / 1e6:.2f}M | {v['loss']:.3f} | "
              f"{v['accuracy']:.2%} | {v['fid']:.2f} |" for k, v in r["generators"].items()]
    lines += ["", "## CFG schedule x scale (VQ AR tiny)", "", "| schedule | scale | accuracy | FID |", "|---|---|---|---|"]
    lines += [f"| {v['schedule']} | {v['scale']} | {v['accuracy']:.2%} | {v['fid']:.2f} |" for v in r["sweep"].values()]
    lines += ["", "![accuracy](cfg_sweep_accuracy.png) ![fid](cfg_sweep_fid.png)", "",
              "## top-k (VQ AR tiny, CFG 2)", "", "| top-k | accuracy | FID |", "|---|---|---|"]
    lines += [f"| {k} | {v['accuracy']:.2%} | {v['fid']:.2f} |" for k, v in r["topk"].items()]
    lines += ["", "## Attention locality (mass within 3x3 of the predicted position, per layer)", ""]
    lines += [f"- {size}: " + ", ".join(f"{m:.3f}" for m in v) for size, v in r["locality"].items()]
    lines += ["", "![locality](attention_locality.png)", "", f"Wall time: {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)
