"""Generator training on extracted codes: next-token cross-entropy with condition dropout.

Run with `imagelm train` (or under `torchrun` for DDP). The loop reads only the codes directory;
the tokenizer is used for nothing but the periodic preview grid, when its checkpoint is present.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from imagelm import checkpoint
from imagelm.data.codes import CodesDataset
from imagelm.models import GPTConfig, build_generator, gpt_config
from imagelm.models.mlm import random_training_mask
from imagelm.train import loop
from imagelm.vocab import TokenLayout


@dataclass
class GeneratorTrainArgs:
    """Options of `imagelm train`; defaults suit the tiny preset on a CPU."""
    codes: str
    out: str
    preset: str = "tiny"
    kind: str = "ar"                    # "ar" (autoregressive) or "mlm" (masked, MaskGIT-style)
    subtokens: int | None = None        # binary codes: split D bits into this many sub-tokens (ELM's n)
    cond: str | None = None             # "class" or "text" (caption features in the codes); default: the preset's
    steps: int = 1000
    batch_size: int = 64                # global, over all ranks
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: int = 50
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    class_dropout: float | None = None  # default: the preset's (0.1)
    dropout: float | None = None        # token/residual/FFN dropout (default: the preset's)
    drop_path: float | None = None
    precision: str = "auto"
    device: str | None = None
    seed: int = 0
    log_every: int = 20
    preview_every: int = 500
    preview_cfg: float = 2.0
    ckpt_every: int = 500
    keep: int = 2
    resume: bool = False
    progress: bool = True


def default_subtokens(layout: TokenLayout) -> int:
    """Binary codes: the fewest sub-tokens with at most 10 bits each (D=16 -> 2-8, D=20 -> 2-10, D=32 -> 4-8)."""
    if layout.bits is None:
        return 1
    return next(n for n in range(1, layout.bits + 1) if layout.bits % n == 0 and layout.bits // n <= 10)


def train_layout(args: GeneratorTrainArgs, codes: CodesDataset) -> TokenLayout:
    """The token layout the generator is trained on: the codes' own, or binary codes re-split into n-m."""
    return codes.layout.split(args.subtokens or default_subtokens(codes.layout))


def model_config(args: GeneratorTrainArgs, codes: CodesDataset):
    """The generator config: the preset's shape, the codes' layout and classes, the args' overrides."""
    layout = train_layout(args, codes)
    overrides = dict(vocab_size=layout.vocab_size, num_subtokens=layout.num_subtokens,
                     grid_size=layout.grid_size, num_classes=codes.num_classes)
    if args.class_dropout is not None:
        overrides["class_dropout"] = args.class_dropout
    if args.dropout is not None:
        overrides.update(token_dropout=args.dropout, resid_dropout=args.dropout, ffn_dropout=args.dropout)
    if args.drop_path is not None:
        overrides["drop_path"] = args.drop_path
    cond = args.cond or gpt_config(args.preset).cond
    if cond not in ("class", "text"):
        raise ValueError(f"--cond must be 'class' or 'text', not {cond!r}")
    if cond == "text":  # the prefix is the stored caption features: T tokens of C channels
        if not codes.text:
            raise ValueError(f"{codes.root} has no caption features for --cond text; "
                             f"extract the codes with --captions")
        overrides.update(cond="text", cls_token_num=codes.text["max_len"], caption_dim=codes.text["dim"])
    else:
        overrides.update(cond="class", cls_token_num=1)
    return gpt_config(args.preset, **overrides)


def token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over positions and sub-tokens: logits [..., V], tokens [...] -> scalar."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))


def generator_loss(kind: str, model, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The training loss of a generator (called through its DDP wrapper, if any).

    ar: next-token cross-entropy at every position. mlm: cross-entropy at the positions hidden by a
    MaskGIT cosine-ratio mask, drawn from the global RNG (seeded per step).
    """
    if kind == "ar":
        return token_loss(model(tokens, cond), tokens)
    mask = random_training_mask(tokens.shape[0], tokens.shape[1], tokens.device)  # [B, L]
    return token_loss(model(tokens, cond, mask)[mask], tokens[mask])


def train_generator(args: GeneratorTrainArgs) -> Path:
    """Train a generator as `args` says; returns the final checkpoint directory."""
    rt = loop.setup_runtime(args.device)
    try:
        return _train(args, rt)
    finally:
        loop.cleanup_runtime(rt)


def _train(args: GeneratorTrainArgs, rt: loop.Runtime) -> Path:
    out = Path(args.out)
    codes = CodesDataset(args.codes)
    layout = train_layout(args, codes)
    config = model_config(args, codes)
    if args.batch_size % rt.world_size:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the {rt.world_size} ranks")
    dtype = loop.choose_autocast_dtype(rt.device, args.precision)
    rt.print(loop.describe_precision(rt.device, dtype, args.precision))

    torch.manual_seed(args.seed)
    model = build_generator(config, args.kind).to(rt.device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = loop.build_optimizer(model, args.lr, args.weight_decay, args.betas)
    start_step = 0
    if args.resume and checkpoint.list_checkpoints(out):
        start_step = _resume(out, config, model, ema, opt)
        rt.print(f"resumed from {checkpoint.resolve(out)} at step {start_step}")
    elif args.resume:
        rt.print(f"--resume: no checkpoint in {out} yet, starting fresh")
    ddp_model = DDP(model) if rt.distributed else model
    meta = {"kind": args.kind, "config": config.to_dict(), "preset": args.preset,
            "tokenizer": codes.manifest["tokenizer"], "layout": layout.to_dict(),
            "class_names": codes.class_names, "codes": str(Path(args.codes).resolve()),
            "text_encoder": codes.text if config.cond == "text" else None,
            "train_args": dataclasses.asdict(args)}

    n_params = sum(p.numel() for p in model.parameters())
    rt.print(f"generator {args.preset} ({args.kind}): {n_params / 1e6:.2f}M params, {len(codes)} images x "
             f"{config.seq_len} tokens, vocab {config.vocab_size}, {config.num_classes} classes")
    tokens_per_step = args.batch_size * config.seq_len * config.num_subtokens
    bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, desc="train",
               disable=not (args.progress and rt.is_main), dynamic_ncols=True)
    t0, t_log, final = time.time(), time.time(), None
    for step in bar:
        loop.seed_step(args.seed, step, rt.rank)
        idx = loop.batch_indices(step, len(codes), args.batch_size, args.seed, rt.rank, rt.world_size)
        tokens, labels = codes.batch(idx, torch.Generator().manual_seed(args.seed * 31 + step * 7 + rt.rank), layout)
        tokens, labels = tokens.to(rt.device, non_blocking=True), labels.to(rt.device, non_blocking=True)
        cond = labels if config.cond == "class" else codes.text_batch(idx).to(rt.device)   # ids or captions
        lr = loop.lr_at(step, args.lr, args.warmup, args.steps, args.lr_schedule)
        for group in opt.param_groups:
            group["lr"] = lr

        model.train()
        with loop.autocast(rt.device, dtype):
            loss = generator_loss(args.kind, ddp_model, tokens, cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        loop.ema_update(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))

        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            shown = loop.all_reduce_mean(loss.detach().float(), rt).item()
            now = time.time()
            steps_done = min(args.log_every, step + 1 - start_step)
            speed = steps_done * tokens_per_step / max(1e-9, now - t_log)
            t_log = now
            bar.set_postfix(loss=f"{shown:.4f}", tok_s=f"{speed:,.0f}", lr=f"{lr:.1e}")
        if rt.is_main and ((step + 1) % args.preview_every == 0 or step + 1 == args.steps):
            _write_preview(ema, meta, out / "previews" / f"step-{step + 1:07d}.png", args, rt.device)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            if rt.is_main:
                final = checkpoint.save(out, step + 1, meta, model.state_dict(), ema.state_dict(),
                                        {"step": step + 1, "optimizer": opt.state_dict()}, keep=args.keep)
            loop.barrier(rt)
    bar.close()
    if args.steps <= start_step:
        rt.print(f"already trained to step {start_step} (of {args.steps}); nothing to do")
    rt.print(f"trained {args.steps - start_step} steps in {time.time() - t0:.0f}s -> {out}")
    return final or checkpoint.resolve(out)


def _resume(out: Path, config, model, ema, opt) -> int:
    state = loop.resume_weights(out, config, lambda meta: GPTConfig(**meta["config"]), model, ema,
                                "use a new --out or the same preset, codes and options")
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])


def _write_preview(model, meta: dict, path: Path, args: GeneratorTrainArgs, device) -> None:
    """A grid with a row per class (up to 10), or per caption (the first 8 of the codes) for a text
    model, decoded by the linked tokenizer when it can be found."""
    from imagelm.api import decode_tokens, linked_tokenizer, sample
    from imagelm.data.transforms import save_grid

    tokenizer = linked_tokenizer(meta, device=device, required=False)
    if tokenizer is None:
        return
    per_class = 8
    if model.config.cond == "text":
        codes = CodesDataset(meta["codes"])
        cond = codes.text_batch(torch.arange(min(8, len(codes)))).to(device).repeat_interleave(per_class)
    else:
        cond = torch.arange(min(10, model.config.num_classes), device=device).repeat_interleave(per_class)
    tokens = sample(model, cond, cfg_scale=args.preview_cfg, seed=args.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(decode_tokens(tokens, tokenizer).float().cpu(), path, nrow=per_class)
