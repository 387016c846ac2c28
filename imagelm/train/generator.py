"""Generator training on extracted codes: next-token cross-entropy with condition dropout.

Run with `imagelm train`, or under `torchrun` for DDP or FSDP (`--strategy`, see
imagelm/train/parallel.py). The loop reads only the codes directory; the tokenizer is used for
nothing but the periodic preview grid, when its checkpoint is present.

One flat loop: set up, build plain, parallelize, maybe resume, then step: this rank's share of the
global batch -> micro-batches (forward, backward; gradients synchronised on the last) -> clip ->
step -> EMA -> log / preview / checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from imagelm import checkpoint, runtime
from imagelm.data.codes import CodesDataset
from imagelm.data.sampler import code_batch_loader
from imagelm.models import GPTConfig, build_generator, gpt_config
from imagelm.models.mlm import random_training_mask
from imagelm.models.lora import LoRAConfig, apply_lora
from imagelm.train import dcp, freeze, init, loop, parallel
from imagelm.train.throughput import MetricsLog, Throughput, format_record, memory_per_rank, model_flops_per_token, peak_flops
from imagelm.vocab import TokenLayout


@dataclass
class GeneratorTrainArgs:
    """Options of `imagelm train`; defaults suit the tiny preset on a CPU."""
    codes: str
    out: str
    preset: str | None = None           # default "tiny"; with --init, only a check of the source's trunk
    kind: str | None = None             # "ar" (autoregressive) or "mlm" (masked); default: --init's, else "ar"
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
    preview_every: int = 500              # 0: no previews
    preview_cfg: float = 2.0
    ckpt_every: int = 500
    keep: int = 2
    resume: bool | str = False          # True/"auto": the newest complete checkpoint in out; or a path
    progress: bool = True
    # Scale (imagelm/train/parallel.py): None = single alone, ddp under torchrun.
    strategy: str | None = None         # "single", "ddp" or "fsdp"
    grad_accum: int = 1                 # micro-batches per optimizer step (per rank)
    activation_checkpointing: bool = False
    compile: bool = False
    workers: int = 0                    # DataLoader worker processes reading the code shards
    peak_tflops: float | None = None    # one device's peak, for MFU (default: a known GPU's bf16 peak)
    log: str = "stdout"                 # "stdout" or "tensorboard" (also stdout)
    # Fine-tuning (imagelm/train/init.py, freeze.py, models/lora.py).
    init: str | None = None             # start from this generator checkpoint's weights (fresh optimizer)
    class_map: str | None = None        # "old:new,...": class-table rows to carry over (ids or names)
    freeze: str | None = None           # parts to freeze: embeddings, cond, blocks[:N], norm, trunk, heads, ...
    lora_rank: int | None = None        # LoRA adapters of this rank on the trunk's linears (trunk frozen)
    lora_alpha: float | None = None     # adapter scale alpha / rank (default alpha = rank)


def default_subtokens(layout: TokenLayout) -> int:
    """Binary codes: the fewest sub-tokens with at most 10 bits each (D=16 -> 2-8, D=20 -> 2-10, D=32 -> 4-8)."""
    if layout.bits is None:
        return 1
    return next(n for n in range(1, layout.bits + 1) if layout.bits % n == 0 and layout.bits // n <= 10)


def train_layout(args: GeneratorTrainArgs, codes: CodesDataset) -> TokenLayout:
    """The token layout the generator is trained on: the codes' own, or binary codes re-split into n-m."""
    return codes.layout.split(args.subtokens or default_subtokens(codes.layout))


def model_config(args: GeneratorTrainArgs, codes: CodesDataset, source: GPTConfig | None = None):
    """The generator config: the preset's shape (or, with --init, the source's whole architecture), the
    codes' layout, grid and classes, the args' overrides."""
    layout = train_layout(args, codes)
    overrides = dict(vocab_size=layout.vocab_size, num_subtokens=layout.num_subtokens,
                     grid_size=layout.grid_size, num_classes=codes.num_classes)
    if args.class_dropout is not None:
        overrides["class_dropout"] = args.class_dropout
    if args.dropout is not None:
        overrides.update(token_dropout=args.dropout, resid_dropout=args.dropout, ffn_dropout=args.dropout)
    if args.drop_path is not None:
        overrides["drop_path"] = args.drop_path
    cond = args.cond or (source.cond if source is not None else gpt_config(args.preset or "tiny").cond)
    if cond not in ("class", "text"):
        raise ValueError(f"--cond must be 'class' or 'text', not {cond!r}")
    if cond == "text":  # the prefix is the stored caption features: T tokens of C channels
        if not codes.text:
            raise ValueError(f"{codes.root} has no caption features for --cond text; "
                             f"extract the codes with --captions")
        overrides.update(cond="text", cls_token_num=codes.text["max_len"], caption_dim=codes.text["dim"])
    else:
        overrides.update(cond="class", cls_token_num=1)
    if source is None:
        return gpt_config(args.preset or "tiny", **overrides)
    if args.preset is not None:
        p = gpt_config(args.preset)
        if (p.dim, p.n_layer, p.n_head) != (source.dim, source.n_layer, source.n_head):
            raise ValueError(f"--preset {args.preset} (dim {p.dim}, {p.n_layer} layers, {p.n_head} heads) is not the "
                             f"--init checkpoint's shape (dim {source.dim}, {source.n_layer} layers, {source.n_head} "
                             f"heads); leave --preset out to keep the checkpoint's")
    return init.replace_config(source, **overrides)


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
    rt = runtime.setup_runtime(args.device)
    try:
        return _train(args, rt)
    finally:
        runtime.cleanup_runtime(rt)


def _train(args: GeneratorTrainArgs, rt: runtime.Runtime) -> Path:
    out = Path(args.out)
    strategy = parallel.resolve_strategy(args.strategy, rt.world_size)
    if strategy == "fsdp" and (args.freeze or args.lora_rank):
        raise ValueError("--freeze and --lora-rank train with --strategy single or ddp, not fsdp")
    source_meta = checkpoint.read_meta(args.init) if args.init else None
    if source_meta is not None:
        checkpoint.expect_kind(source_meta, ("ar", "mlm"), "generator for --init")
    args = dataclasses.replace(args, kind=args.kind or (source_meta or {}).get("kind", "ar"),
                               # binary codes split as the source's sub-tokens, so its tables fit
                               subtokens=args.subtokens or (source_meta["config"].get("num_subtokens")
                                                            if source_meta else None))
    metrics = MetricsLog(out, rt.is_main, args.log)  # fails early when tensorboard is missing
    codes = CodesDataset(args.codes)
    layout = train_layout(args, codes)
    config = model_config(args, codes, GPTConfig(**source_meta["config"]) if source_meta else None)
    if args.preset is None:   # the name the checkpoint records: the source's preset (None: a custom size)
        args = dataclasses.replace(args, preset=source_meta.get("preset") if source_meta else "tiny")
    if args.batch_size % rt.world_size:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the {rt.world_size} ranks")
    micro = parallel.split_micro(args.batch_size // rt.world_size, args.grad_accum)
    dtype = runtime.choose_autocast_dtype(rt.device, args.precision)
    rt.print(runtime.describe_precision(rt.device, dtype, args.precision))

    torch.manual_seed(args.seed)
    model = build_generator(config, args.kind)
    lora = _adapt(args, out, model, codes, rt)
    model = model.to(rt.device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer_params = loop.optimizer_param_names(model)
    flops_per_token = model_flops_per_token(model)
    # Built plain above; now checkpointing, compile and DDP/FSDP, in parallelize's fixed order.
    train_model = parallel.parallelize(model, strategy, rt.device, compute_dtype=dtype,
                                       activation_checkpointing=args.activation_checkpointing, compile=args.compile)
    ema = parallel.shard_like(ema, strategy)
    autocast_dtype = None if strategy == "fsdp" else dtype  # FSDP2's policy casts the parameters instead
    opt = loop.build_optimizer(model, args.lr, args.weight_decay, args.betas)  # after sharding: DTensor params
    start_step = _resume(args, out, config, model, ema, opt, strategy, optimizer_params, rt)
    meta = {"kind": args.kind, "config": config.to_dict(), "preset": args.preset,
            "tokenizer": codes.manifest["tokenizer"], "layout": layout.to_dict(),
            "class_names": codes.class_names, "codes": str(Path(args.codes).resolve()),
            "text_encoder": codes.text if config.cond == "text" else None,
            "train_args": dataclasses.asdict(args)}
    if lora is not None:
        meta["lora"] = lora.to_dict()           # adapters saved beside the base weights, merged on load
    if source_meta is not None:
        meta["init"] = {"path": source_meta["path"], "step": source_meta.get("step")}

    n_params = sum(p.numel() for p in ema.parameters()) if strategy != "fsdp" else config_params(config, args.kind)
    rt.print(f"generator {args.preset or 'of a custom size'} ({args.kind}): {n_params / 1e6:.2f}M params, {len(codes)} images x "
             f"{config.seq_len} tokens, vocab {config.vocab_size}, {config.num_classes} classes")
    rt.print(f"strategy {strategy} on {rt.world_size} process(es): batch {args.batch_size} = {rt.world_size} x "
             f"{len(micro)} x {args.batch_size // rt.world_size // len(micro)}"
             + (", activation checkpointing" if args.activation_checkpointing else "")
             + (", compiled" if args.compile else ""))
    if strategy == "fsdp":
        rt.print("FSDP: checkpoints are sharded (torch.distributed.checkpoint); previews are off (the EMA is sharded)")
    batches = iter(code_batch_loader(codes, layout, args.batch_size, args.seed, rt.rank, rt.world_size, start_step,
                                     args.steps, text=config.cond == "text", workers=args.workers,
                                     pin_memory=rt.device.type == "cuda"))
    # Tokens are sequence positions: an image is L of them (its n sub-tokens are one position).
    meter = Throughput(rt.device, args.batch_size * config.seq_len, flops_per_token,
                       peak_flops(rt.device, dtype, args.peak_tflops), rt.world_size)
    bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, desc="train",
               disable=not (args.progress and rt.is_main), dynamic_ncols=True)
    t0, final = time.time(), None
    for step in bar:
        loop.seed_step(args.seed, step, rt.rank)
        tokens, labels, text = next(batches)                      # this rank's share: [B/W, L, n], [B/W]
        conds = labels if config.cond == "class" else text        # class ids or captions
        lr = loop.lr_at(step, args.lr, args.warmup, args.steps, args.lr_schedule)
        for group in opt.param_groups:
            group["lr"] = lr

        train_model.train()
        opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=rt.device)
        for i, part in enumerate(micro):
            tok = tokens[part].to(rt.device, non_blocking=True)  # [B/W/accum, L, n]
            cond = conds[part].to(rt.device)
            # Gradients are all-reduced (DDP) / reduce-scattered (FSDP) only on the last micro-batch.
            with parallel.grad_sync(train_model, strategy, sync=i == len(micro) - 1):
                with runtime.autocast(rt.device, autocast_dtype):
                    loss = generator_loss(args.kind, train_model, tok, cond) / len(micro)
                loss.backward()
            loss_sum += loss.detach()
        parallel.clip_grad_norm(model, args.grad_clip)
        opt.step()
        loop.ema_update(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))
        meter.step()

        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            shown = loop.all_reduce_mean(loss_sum.float(), rt).item()
            record = {"loss": shown, "lr": lr, **meter.read(),
                      "mem_per_rank": memory_per_rank(rt.device, rt.world_size)}
            metrics.write(step + 1, record)
            if rt.is_main:
                bar.write(format_record(step + 1, args.steps, record))
            bar.set_postfix(loss=f"{shown:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}", lr=f"{lr:.1e}")
        with meter.paused():  # previews and checkpoints are not training throughput
            if (rt.is_main and strategy != "fsdp" and args.preview_every > 0
                    and ((step + 1) % args.preview_every == 0 or step + 1 == args.steps)):
                _write_preview(ema, meta, out / "previews" / f"step-{step + 1:07d}.png", args, rt.device)
            if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
                if strategy == "fsdp":
                    final = dcp.save_sharded(out, step + 1, meta, model, ema, opt, rt.rank, rt.world_size, args.keep)
                else:
                    if rt.is_main:
                        final = checkpoint.save(out, step + 1, meta, model.state_dict(), ema.state_dict(),
                                                {"step": step + 1, "optimizer": opt.state_dict()}, keep=args.keep)
                    runtime.barrier(rt)
    bar.close()
    metrics.close()
    if args.steps <= start_step:
        rt.print(f"already trained to step {start_step} (of {args.steps}); nothing to do")
    rt.print(f"trained {args.steps - start_step} steps in {time.time() - t0:.0f}s -> {out}")
    return final or checkpoint.resolve(out)


def _adapt(args: GeneratorTrainArgs, out: Path, model, codes: CodesDataset, rt: runtime.Runtime) -> LoRAConfig | None:
    """--init (weights mapped from the source, its table printed once), --lora-rank (adapters; the
    trunk's own weights frozen), --freeze (named parts), on the plain model before it is distributed.
    A resumed run takes its weights from its own checkpoint, so --init maps nothing then."""
    if args.init and loop.resume_checkpoint(args.resume, out) is None:
        source, source_meta = init.load_generator_source(args.init)
        mapping = init.parse_class_map(args.class_map, source_meta.get("class_names", []), codes.class_names,
                                       source.config.num_classes, model.config.num_classes)
        state, rows = init.map_state(source.state_dict(), model.state_dict(), args.init, mapping)
        rope = init.rope_row(source.config, model.config)
        model.load_state_dict(state, strict=True)
        rt.print(init.format_table(rows + ([rope] if rope else []), init.describe_source(source_meta)))
    elif args.class_map and not args.init:
        raise ValueError("--class-map says how to carry class rows over from --init; give --init CKPT")
    lora = None
    if args.lora_rank:
        lora = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha)
        apply_lora(model, lora, torch.Generator().manual_seed(args.seed))
        freeze.freeze_parts(model, "trunk")       # the trunk learns through its adapters only
    freeze.freeze_parts(model, args.freeze)
    if args.lora_rank or args.freeze:
        rt.print(f"partial training: {freeze.trainable_summary(model)}"
                 + (f", LoRA rank {lora.rank} on {', '.join(lora.targets)}" if lora else ""))
    return lora


def config_params(config: GPTConfig, kind: str) -> int:
    """Parameter count of a generator with `config`, built on the meta device (no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_generator(config, kind).parameters())


def _resume(args: GeneratorTrainArgs, out: Path, config, model, ema, opt, strategy: str,
            optimizer_params: list[str], rt: runtime.Runtime) -> int:
    """Load the checkpoint --resume names into model, ema and opt (however they are distributed);
    return the step to continue from (0: start fresh)."""
    ckpt = loop.resume_checkpoint(args.resume, out)
    if ckpt is None:
        if args.resume:
            rt.print(f"--resume: no checkpoint in {out} yet, starting fresh")
        return 0
    hint = "use a new --out or the same preset, codes and options"
    if checkpoint.is_sharded(ckpt):      # saved by FSDP on any number of ranks
        loop.check_config(ckpt, config, lambda meta: GPTConfig(**meta["config"]), hint)
        step = dcp.load_sharded(ckpt, model, ema, opt)
    elif strategy == "fsdp":             # a full checkpoint, sharded as it loads
        loop.check_config(ckpt, config, lambda meta: GPTConfig(**meta["config"]), hint)
        step = dcp.load_full_into_sharded(ckpt, model, ema, opt, optimizer_params)
    else:
        state = loop.resume_weights(ckpt, config, lambda meta: GPTConfig(**meta["config"]), model, ema, hint)
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    rt.print(f"resumed from {ckpt} at step {step}")
    return step


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
