"""Flag groups shared by several verbs, each defined once so names, defaults and help agree, and the
functions that turn parsed flags into the library's arguments.

A verb adds the groups it takes (`flags.sampling(parser)`) and reads them back
(`flags.sampler(args)`); a new group is a pair of such functions here.

Under torchrun, pass our flags after `--` (`torchrun ... -m imagelm.cli -- sample-many --n 8`):
torchrun takes abbreviations of its own options, and `--n` or `--log` read as those.
"""
from __future__ import annotations

import argparse

PRECISIONS = ("auto", "fp32", "bf16")
SAMPLING_DTYPES = ("auto", "float32", "bfloat16", "int8")   # imagelm.runtime.SAMPLING_DTYPES, without torch


def runtime(sp: argparse.ArgumentParser, seed: bool = True) -> None:
    """--device (and --seed): where to run, and the seed of everything random."""
    sp.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    if seed:
        sp.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")


def data(sp: argparse.ArgumentParser, default: str | None = "shapes", image_size: int | None = None,
         length: bool = True) -> None:
    """--data (a built-in data set, a folder, or a captions .jsonl), --image-size, --data-length."""
    sp.add_argument("--data", default=default, required=default is None,
                    help="shapes, shapes-simple, digits, a folder of class folders, or a captions .jsonl")
    sp.add_argument("--image-size", type=int, default=image_size,
                    help=f"image side in pixels (default: {image_size or 'the model or data set default'})")
    if length:
        sp.add_argument("--data-length", type=int, default=None, help="items of a procedural data set")


def workers(sp: argparse.ArgumentParser) -> None:
    """--num-workers: the DataLoader's worker processes."""
    sp.add_argument("--num-workers", "--workers", type=int, default=None,
                    help="DataLoader worker processes (default: 2 streaming image files, none for code shards "
                         "and images held in memory)")


def optimization(sp: argparse.ArgumentParser, steps: int, batch_size: int, lr: float) -> None:
    """--steps, --batch-size (global, over all ranks), --lr."""
    sp.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    sp.add_argument("--batch-size", type=int, default=batch_size,
                    help=f"images a step, over all processes (default {batch_size})")
    sp.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")


def training(sp: argparse.ArgumentParser, preview_every: int, ckpt_every: int) -> None:
    """What both training verbs share: EMA, precision, previews, checkpoints, workers, resume and
    the options of training at scale (imagelm/train/parallel.py)."""
    sp.add_argument("--ema-decay", type=float, default=0.999)
    sp.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="auto: bf16 on CUDA and on CPUs with native bf16, else fp32 (printed)")
    sp.add_argument("--preview-every", type=int, default=preview_every, help="steps between preview grids (0: none)")
    sp.add_argument("--ckpt-every", type=int, default=ckpt_every, help="steps between checkpoints")
    workers(sp)
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
    runtime(sp)


def training_kwargs(a: argparse.Namespace) -> dict:
    """The fields of TokenizerTrainArgs / GeneratorTrainArgs that `optimization` and `training` set."""
    names = ("out", "preset", "steps", "batch_size", "lr", "ema_decay", "precision", "preview_every", "ckpt_every",
             "num_workers", "resume", "strategy", "grad_accum", "activation_checkpointing", "compile", "log_every",
             "log", "device", "seed")
    return {name: getattr(a, name) for name in names}


def conditions(sp: argparse.ArgumentParser) -> None:
    """--classes (class generators) or --prompt / --prompts (text generators)."""
    sp.add_argument("--classes", nargs="*", default=None, help="class ids or names (default: all classes)")
    sp.add_argument("--prompt", action="append", default=None, help="a caption (text generators; repeatable)")
    sp.add_argument("--prompts", default=None, help="a text file of captions, one per line")


def prompts(a: argparse.Namespace) -> list[str]:
    """The prompts of --prompt and --prompts, in that order."""
    from imagelm.images import read_prompts
    return list(a.prompt or []) + (read_prompts(a.prompts) if a.prompts else [])


def dtype(sp: argparse.ArgumentParser) -> None:
    """--dtype: what the sampling engine computes in."""
    sp.add_argument("--dtype", default="auto", choices=SAMPLING_DTYPES,
                    help="the engine's dtype; auto = bf16 on CUDA / native-bf16 CPUs, int8 weights on AVX2-only "
                         "CPUs (printed)")


def decoding(sp: argparse.ArgumentParser) -> None:
    """How the engine decodes an AR generator: one token a step or speculative Jacobi decoding, and
    whether its step is compiled."""
    sp.add_argument("--decode", default="plain", choices=["plain", "jacobi"],
                    help="AR decoding: one token per step (default), or speculative Jacobi decoding: several "
                         "tokens per forward pass, the same distribution (another random stream)")
    sp.add_argument("--window", type=int, default=16, help="Jacobi decoding: draft tokens verified per pass")
    sp.add_argument("--jacobi-groups", type=int, default=1, metavar="G",
                    help="Jacobi decoding: accept a draft by the mass of its G nearest codes (lossy, faster; "
                         "default 1: exact acceptance, the model's distribution)")
    sp.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                    help="compile the engine's decode step (auto: only when the work pays the compile back)")


# Our defaults of the sampling flags; a flag left unset takes these under our conventions, and the
# original sampling script's defaults for a model sampled with ELM's or LlamaGen's (--conventions).
SAMPLING_DEFAULTS = dict(cfg_scale=2.0, cfg_schedule="constant", cfg_interval=-1, temperature=1.0, top_k=0,
                         top_p=1.0, steps=10)


def sampling(sp: argparse.ArgumentParser) -> None:
    """How tokens are drawn: whose conventions, guidance, temperature, top-k/top-p, the masked
    sampler's steps, the engine."""
    from imagelm.sampling.logits import CFG_SCHEDULES
    d = SAMPLING_DEFAULTS
    sp.add_argument("--conventions", default="auto", choices=["auto", "imagelm", "elm", "llamagen"],
                    help="whose meaning the sampling flags have, and whose defaults unset ones take (default "
                         "auto: the checkpoint's: ELM's or LlamaGen's for a model imported from there, else ours)")
    sp.add_argument("--cfg", type=float, default=None,
                    help=f"classifier-free guidance scale (1 = off; default {d['cfg_scale']:g})")
    sp.add_argument("--cfg-schedule", default=None, choices=list(CFG_SCHEDULES),
                    help="constant (default), or rising from 1 to --cfg along linear, cos, log, square, "
                         "square_root; elm-*: ELM's formulas (README, Sampling conventions)")
    sp.add_argument("--cfg-power", type=float, default=1.0, help="the exponent of elm-powercos (ELM's scale_pow)")
    sp.add_argument("--cfg-interval", type=int, default=None,
                    help="guide only the first N tokens (default -1: all; AR only)")
    sp.add_argument("--temperature", type=float, default=None, help=f"(default {d['temperature']:g})")
    sp.add_argument("--top-k", type=int, default=None, help="keep the k likeliest tokens (default 0: all)")
    sp.add_argument("--top-p", type=float, default=None, help="keep the likeliest tokens of mass p (default 1: all)")
    sp.add_argument("--steps", type=int, default=None,
                    help=f"parallel decoding steps of a masked (mlm) generator (default {d['steps']})")
    sp.add_argument("--engine", default="engine", choices=["engine", "plain"],
                    help="AR decoding: the fast engine (default) or the plain reference sampler")
    dtype(sp)
    decoding(sp)


def sampler(a: argparse.Namespace):
    """The imagelm.images.Sampler the `sampling` flags describe (unset options left to the
    conventions: ours are SAMPLING_DEFAULTS)."""
    from imagelm.images import asked_sampler
    asked = dict(cfg_scale=a.cfg, cfg_schedule=a.cfg_schedule, cfg_interval=a.cfg_interval, temperature=a.temperature,
                 top_k=a.top_k, top_p=a.top_p, steps=a.steps, cfg_power=a.cfg_power)
    return asked_sampler(asked, a.conventions, SAMPLING_DEFAULTS, engine=a.engine, dtype=a.dtype, decode=a.decode,
                         window=a.window, groups=a.jacobi_groups, compile=a.compile)


def tokenizer(sp: argparse.ArgumentParser, required: bool = False) -> None:
    """--tokenizer: a tokenizer checkpoint (or the one the generator links, when not required)."""
    sp.add_argument("--tokenizer", required=required, default=None,
                    help="tokenizer checkpoint or run directory" + ("" if required else " (default: the one linked)"))


def features(sp: argparse.ArgumentParser) -> None:
    """The feature net FID / IS / precision / recall are computed with."""
    sp.add_argument("--features", default="inception", choices=["inception", "builtin"],
                    help="FID's Inception (default, offline) or the built-in classifier")
    sp.add_argument("--inception", default=None, help="NVIDIA .pt or pytorch-fid .pth Inception weights")
    sp.add_argument("--classifier", default=None, help="feature net made by train-features (--features builtin)")
    sp.add_argument("--batch-size", type=int, default=None)
