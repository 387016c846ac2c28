"""Tokenizer training: reconstruction + codebook/commitment (+ perceptual, + PatchGAN) losses.

Run with `imagelm train-tokenizer` (or under `torchrun` for DDP). One flat loop, top to bottom:
set up, build, maybe resume, then step: batch -> micro-batches (forward -> losses -> backward)
-> clip -> step -> EMA -> (discriminator step, micro-batched alike) -> log / preview / checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from imagelm import checkpoint, runtime
from imagelm.data import build_dataset
from imagelm.data.batches import InMemoryImages, fits_in_memory, random_hflip, streaming_batches
from imagelm.data.transforms import save_grid
from imagelm.tokenizers import build_tokenizer, config_from_meta, tokenizer_config
from imagelm.tokenizers.bae import code_ids
from imagelm.tokenizers.losses import (PatchDiscriminator, PerceptualLoss, adaptive_weight,
                                       generator_adv_loss, hinge_d_loss, reconstruction_loss)
from imagelm.train import init, loop, parallel
from imagelm.train.throughput import MetricsLog, Throughput, format_record, memory_per_rank


@dataclass
class TokenizerTrainArgs:
    """Options of `imagelm train-tokenizer`; defaults suit the tiny CPU preset."""
    out: str
    data: str = "shapes"
    preset: str | None = None           # default "vq-tiny"; with --init, only a check of the source's
    image_size: int | None = None       # default: the preset's
    data_length: int | None = None      # items of a procedural data set (default: its own)
    steps: int = 600
    batch_size: int = 64                # global, over all ranks
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 20
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    flip: bool = True
    perceptual_weights: str | None = None
    no_perceptual: bool = False
    disc_start: int | None = None       # default: the preset's
    disc_lr: float | None = None        # default: lr
    precision: str = "auto"
    device: str | None = None
    seed: int = 0
    num_workers: int = 2
    log_every: int = 20
    preview_every: int = 200
    ckpt_every: int = 200
    keep: int = 2
    resume: bool | str = False          # True/"auto": the newest complete checkpoint in out; or a path
    progress: bool = True
    strategy: str | None = None         # "single" or "ddp" (default: ddp under torchrun)
    grad_accum: int = 1                 # micro-batches per optimizer step (per rank)
    activation_checkpointing: bool = False  # generators only (transformer blocks); an error here
    compile: bool = False
    log: str = "stdout"                 # "stdout" or "tensorboard"
    init: str | None = None             # start from this tokenizer checkpoint (ours, or a converted VQ / BAE)


def train_tokenizer(args: TokenizerTrainArgs) -> Path:
    """Train a tokenizer as `args` says; returns the final checkpoint directory."""
    rt = runtime.setup_runtime(args.device)
    try:
        return _train(args, rt)
    finally:
        runtime.cleanup_runtime(rt)


def _train(args: TokenizerTrainArgs, rt: runtime.Runtime) -> Path:
    out = Path(args.out)
    overrides = {"image_size": args.image_size} if args.image_size else {}
    if args.disc_start is not None:
        overrides["disc_start"] = args.disc_start
    source = _init_source(args)
    if source is None:
        args = dataclasses.replace(args, preset=args.preset or "vq-tiny")
        config = tokenizer_config(args.preset, **overrides)
    else:   # the source's architecture (and loss weights), at the size and disc start asked for
        args = dataclasses.replace(args, preset=source.meta.get("preset"))
        config = init.replace_config(source.config, **overrides)
    if args.no_perceptual:
        config = dataclasses.replace(config, perceptual_weight=0.0)
    if args.batch_size % rt.world_size:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the {rt.world_size} ranks")
    strategy = parallel.resolve_strategy(args.strategy, rt.world_size)
    if strategy == "fsdp":
        raise ValueError("--strategy fsdp shards transformer blocks: use it for `imagelm train`; "
                         "tokenizers train with ddp")
    if args.activation_checkpointing:
        raise ValueError("--activation-checkpointing recomputes transformer blocks: it is for `imagelm train`")
    micro = parallel.split_micro(args.batch_size // rt.world_size, args.grad_accum)
    metrics = MetricsLog(out, rt.is_main, args.log)
    if config.perceptual_weight > 0 and not args.perceptual_weights:
        raise ValueError(f"preset {args.preset} uses a perceptual loss: pass --perceptual-weights VGG16_FILE "
                         f"(a local vgg16 state dict), or --no-perceptual to train without it")

    dataset = build_dataset(args.data, image_size=config.image_size, split="train", seed=args.seed,
                            length=args.data_length)
    preview_set = build_dataset(args.data, image_size=config.image_size, split="test", seed=args.seed)
    dtype = runtime.choose_autocast_dtype(rt.device, args.precision)
    rt.print(runtime.describe_precision(rt.device, dtype, args.precision))

    torch.manual_seed(args.seed)
    model = build_tokenizer(config)
    if source is not None and loop.resume_checkpoint(args.resume, out) is None:
        state, rows = init.map_state(source.state_dict(), model.state_dict(), args.init, generator_rules=False)
        model.load_state_dict(state, strict=True)
        rt.print(init.format_table(rows, f"{source.meta['path']} ({source.meta['kind']})"))
    model = model.to(rt.device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = loop.build_optimizer(model, args.lr, args.weight_decay)
    perceptual = PerceptualLoss(args.perceptual_weights).to(rt.device) if config.perceptual_weight > 0 else None
    use_disc = config.disc_weight > 0
    disc = PatchDiscriminator().to(rt.device) if use_disc else None
    disc_opt = loop.build_optimizer(disc, args.disc_lr or args.lr, args.weight_decay) if use_disc else None

    ddp_model = parallel.parallelize(model, strategy, rt.device, compile=args.compile)
    ddp_disc = parallel.parallelize(disc, strategy, rt.device) if use_disc else None
    start_step = _resume(args, out, config, model, ema, opt, disc, disc_opt, rt)

    meta = {"kind": config.kind, "config": config.to_dict(), "preset": args.preset,
            "data": {"name": args.data, "image_size": config.image_size},
            "class_names": list(getattr(dataset, "class_names", [])),
            "train_args": dataclasses.asdict(args)}
    if source is not None:
        meta["init"] = {"path": source.meta["path"], "step": source.meta.get("step")}

    if fits_in_memory(dataset):
        source = InMemoryImages(dataset, progress=args.progress and rt.is_main, desc=f"rendering {args.data}")
        next_batch = lambda step: source.batch(_indices(step, len(source), args, rt))[0]
    else:
        stream = streaming_batches(dataset, lambda s: _indices(s, len(dataset), args, rt), start_step, args.num_workers)
        next_batch = lambda step: next(stream)[0]
    preview = torch.stack([preview_set[i][0] for i in range(min(8, len(preview_set)))]).to(rt.device)

    codes_desc = f"codebook {config.codebook_size}" if config.kind == "vq" else f"{config.bits} bits each"
    rt.print(f"tokenizer {args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
             f"{config.image_size}px -> {config.grid_size}x{config.grid_size} codes, {codes_desc}")
    seen = []  # code ids of the batches since the last log line, for the usage figure
    bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, desc="train-tokenizer",
               disable=not (args.progress and rt.is_main), dynamic_ncols=True)
    meter = Throughput(rt.device, args.batch_size)   # images/s (no FLOPs estimate for conv nets: MFU n/a)
    t0, final = time.time(), None
    for step in bar:
        loop.seed_step(args.seed, step, rt.rank)
        x = next_batch(step)
        if args.flip:
            x = random_hflip(x, torch.Generator().manual_seed(args.seed * 31 + step * 7 + rt.rank))
        x = x.to(rt.device, non_blocking=True)                                   # [B/W, 3, H, W]
        lr = loop.lr_at(step, args.lr, args.warmup, args.steps, args.lr_schedule)
        for group in opt.param_groups:
            group["lr"] = lr

        model.train()
        adv_on = use_disc and step >= config.disc_start
        opt.zero_grad(set_to_none=True)
        loss_sum, recons = torch.zeros((), device=rt.device), []
        for i, part in enumerate(micro):
            xb, last = x[part], i == len(micro) - 1
            # Gradients (the tokenizer's, and the discriminator's through the adversarial term) are
            # all-reduced only on the last micro-batch.
            with parallel.grad_sync(ddp_model, strategy, last), parallel.grad_sync(ddp_disc, strategy if use_disc else "single", last):
                with runtime.autocast(rt.device, dtype):
                    recon, codes, vq_losses = ddp_model(xb)
                    rec = reconstruction_loss(recon, xb, config.l1_weight, config.l2_weight)
                    if perceptual is not None:
                        rec = rec + config.perceptual_weight * perceptual(recon.float(), xb)
                    loss = rec + sum(vq_losses.values())
                    if adv_on:
                        g_adv = generator_adv_loss(ddp_disc(recon))
                        weight = adaptive_weight(rec, g_adv, model.decoder.last_layer) * config.disc_weight
                        loss = loss + weight * g_adv
                (loss / len(micro)).backward()
            loss_sum += loss.detach() / len(micro)
            recons.append(recon.detach())
            seen.append(code_ids(codes))
        parallel.clip_grad_norm(model, args.grad_clip)
        opt.step()
        loop.ema_update(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))

        d_loss = None
        if adv_on:
            disc_opt.zero_grad(set_to_none=True)
            d_loss = torch.zeros((), device=rt.device)
            for i, (part, recon) in enumerate(zip(micro, recons)):
                with parallel.grad_sync(ddp_disc, strategy, i == len(micro) - 1):
                    with runtime.autocast(rt.device, dtype):
                        d_part = hinge_d_loss(ddp_disc(x[part]), ddp_disc(recon)) / len(micro)
                    d_part.backward()
                d_loss += d_part.detach()
            parallel.clip_grad_norm(disc, args.grad_clip)
            disc_opt.step()
        meter.step()

        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            shown = loop.all_reduce_mean(loss_sum.float(), rt).item()
            usage = torch.unique(torch.cat(seen)).numel() / model.vocab_size
            record = {"loss": shown, "lr": lr, "usage": usage, **meter.read(),
                      "mem_per_rank": memory_per_rank(rt.device, rt.world_size)}
            stats = {"loss": f"{shown:.4f}", "usage": f"{usage:.0%}", "lr": f"{lr:.1e}"}
            if d_loss is not None:
                record["d_loss"] = d_loss.item()
                stats["d_loss"] = f"{d_loss.item():.3f}"
            metrics.write(step + 1, record)
            if rt.is_main:
                bar.write(format_record(step + 1, args.steps, record, unit="img"))
            bar.set_postfix(stats)
            seen.clear()
        with meter.paused():  # previews and checkpoints are not training throughput
            if rt.is_main and ((step + 1) % args.preview_every == 0 or step + 1 == args.steps):
                _write_preview(ema, preview, out / "previews" / f"step-{step + 1:07d}.png")
            if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
                if rt.is_main:
                    final = checkpoint.save(out, step + 1, meta, model.state_dict(), ema.state_dict(),
                                            _train_state(step + 1, opt, disc, disc_opt), keep=args.keep)
                runtime.barrier(rt)
    bar.close()
    metrics.close()
    if args.steps <= start_step:
        rt.print(f"already trained to step {start_step} (of {args.steps}); nothing to do")
    rt.print(f"trained {args.steps - start_step} steps in {time.time() - t0:.0f}s -> {out}")
    if hasattr(dataset, "report") and getattr(dataset, "skipped", 0):
        rt.print(dataset.report())
    return final or checkpoint.resolve(out)


def _init_source(args: TokenizerTrainArgs):
    """The --init tokenizer (with .meta), or None; --preset given beside it must name the same preset."""
    if not args.init:
        return None
    source, meta = init.load_tokenizer_source(args.init)
    if args.preset is not None and args.preset != meta.get("preset"):
        raise ValueError(f"--init {args.init} is a {meta.get('preset') or meta['kind']} tokenizer, not --preset "
                         f"{args.preset}; leave --preset out to keep its architecture")
    return source


def _indices(step: int, n: int, args: TokenizerTrainArgs, rt: runtime.Runtime) -> torch.Tensor:
    return loop.batch_indices(step, n, args.batch_size, args.seed, rt.rank, rt.world_size)


def _train_state(step: int, opt, disc, disc_opt) -> dict:
    state = {"step": step, "optimizer": opt.state_dict()}
    if disc is not None:
        state["discriminator"] = disc.state_dict()
        state["disc_optimizer"] = disc_opt.state_dict()
    return state


def _resume(args: TokenizerTrainArgs, out: Path, config, model, ema, opt, disc, disc_opt, rt: runtime.Runtime) -> int:
    """Load the checkpoint --resume names; return the step to continue from (0: start fresh)."""
    ckpt = loop.resume_checkpoint(args.resume, out)
    if ckpt is None:
        if args.resume:
            rt.print(f"--resume: no checkpoint in {out} yet, starting fresh")
        return 0
    state = loop.resume_weights(ckpt, config, config_from_meta, model, ema,
                                "use a new --out or the same preset and options")
    opt.load_state_dict(state["optimizer"])
    if disc is not None and "discriminator" in state:
        disc.load_state_dict(state["discriminator"])
        disc_opt.load_state_dict(state["disc_optimizer"])
    rt.print(f"resumed from {ckpt} at step {state['step']}")
    return int(state["step"])


@torch.no_grad()
def _write_preview(model, images: torch.Tensor, path: Path) -> None:
    recon = model.decode(model.encode(images))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(torch.cat([images, recon]).float().cpu(), path, nrow=len(images))
