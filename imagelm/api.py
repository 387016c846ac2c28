"""The Python face of imagelm: load a generator, sample tokens, turn tokens into images.

    gen = imagelm.load("runs/gpt")
    tokens = imagelm.sample(gen, [0, 1, 2], cfg_scale=4.0, seed=0)    # [3, L, n]
    images = imagelm.decode_tokens(tokens, imagelm.linked_tokenizer(gen.meta))

A text-conditional generator takes prompts instead of classes:
    tokens = imagelm.sample(gen, ["a large red circle at the center on a blue background"], n=4, cfg_scale=3)

Each function is a thin face over the library: imagelm/images.py is the one path from conditions
to pictures, imagelm/checkpoint.py the one loader.
"""
from __future__ import annotations

import torch

from imagelm.images import (Sampler, as_condition, asked_sampler, decode_tokens, encode_prompts,  # noqa: F401
                            resolve_classes, sample_tokens)
from imagelm.models import load_generator
from imagelm.tokenizers import load_linked_tokenizer, load_tokenizer


def load(path, device: str | torch.device = "cpu", prefer_ema: bool = True) -> torch.nn.Module:
    """The generator saved at `path` (a checkpoint, run or bundle directory), in eval mode, with
    `.meta` (its CheckpointMeta).

    Its `forward(tokens [B, L], cond [B]) -> logits [B, L, V]` is teacher-forced.
    """
    return load_generator(path, device, prefer_ema)


def sample(generator, cond, n: int = 1, cfg_scale: float | None = None, cfg_schedule: str | None = None,
           cfg_interval: int | None = None, temperature: float | None = None, top_k: int | None = None,
           top_p: float | None = None, seed: int = 0, steps: int | None = None, progress: bool = False,
           text_encoder=None, engine: str = "engine", dtype: str = "auto", decode: str = "plain",
           window: int = 16, compile: str = "auto", conventions: str = "auto",
           cfg_power: float = 1.0, groups: int = 1) -> torch.Tensor:
    """Sample `n` images per condition: cond = class ids or names (list) or a tensor [B]; for a text
    generator, prompts (a string or list of B strings) or a TextCondition
    -> tokens [B * n, L, n_sub] int64, grouped by condition. Same seed, same tokens (same device,
    same dtype).

    AR generators decode token by token, through the fast engine (`engine="engine"`, in `dtype`:
    auto | float32 | bfloat16 | int8, see sampling/engine.py) or the plain reference sampler
    (`engine="plain"`, in the model's own dtype); in float32 both give the same tokens. With
    `decode="jacobi"` the engine verifies `window` draft tokens per forward pass (speculative Jacobi
    decoding: fewer passes, the same distribution, another random stream; `groups` > 1: lossy
    grouped acceptance, see sampling/jacobi.py). Masked (mlm)
    generators fill the grid in `steps` parallel steps (their CFG schedule runs over the steps).

    conventions: whose meaning the options have (sampling/conventions.py): "auto" (the checkpoint's:
    ELM's or LlamaGen's for a model imported from there, else ours), "imagelm", "elm", "llamagen".
    An option left None takes those conventions' default (ours: no guidance, temperature 1, no
    top-k / top-p, 10 steps; an import's: its original sampling script's). cfg_power: the exponent
    of ELM's masked `elm-powercos` schedule."""
    asked = dict(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, cfg_interval=cfg_interval,
                 temperature=temperature, top_k=top_k, top_p=top_p, steps=steps)
    sampler = asked_sampler({**asked, "cfg_power": cfg_power}, conventions, engine=engine, dtype=dtype,
                            decode=decode, window=window, groups=groups, compile=compile)
    return sample_tokens(generator, as_condition(generator, cond, text_encoder), n, sampler, seed, progress)


def linked_tokenizer(meta, path=None, device: str | torch.device = "cpu", required: bool = True):
    """The tokenizer to decode a generator's tokens with: `path` if given, else the one its
    CheckpointMeta links (found relative to the checkpoint, or at its recorded absolute path, and
    checked against the recorded weights hash).

    Returns None when it cannot be found and not `required`; raises a one-line error otherwise.
    """
    if path is not None:
        return load_tokenizer(path, device)
    return load_linked_tokenizer(meta, device, required)
