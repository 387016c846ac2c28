"""The Python face of imagelm: load a generator, sample tokens, turn tokens into images.

    gen = imagelm.load("runs/gpt")
    tokens = imagelm.sample(gen, [0, 1, 2], cfg_scale=4.0, seed=0)    # [3, L, n]
    images = imagelm.decode_tokens(tokens, imagelm.linked_tokenizer(gen.meta))

A text-conditional generator takes prompts instead of classes:
    tokens = imagelm.sample(gen, ["a large red circle at the center on a blue background"], n=4, cfg_scale=3)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from imagelm import checkpoint
from imagelm.models import load_generator
from imagelm.models.conditioning import TextCondition
from imagelm.sampling.autoregressive import generate
from imagelm.sampling.conventions import plan_sampling, resolve_conventions
from imagelm.sampling.engine import Engine
from imagelm.sampling.masked import generate_masked
from imagelm.tokenizers import load_tokenizer
from imagelm.vocab import TokenLayout


def load(path, device: str | torch.device = "cpu", prefer_ema: bool = True) -> torch.nn.Module:
    """The generator saved at `path` (a checkpoint or run directory), in eval mode.

    Its `forward(tokens [B, L], cond [B]) -> logits [B, L, V]` is teacher-forced.
    """
    return load_generator(path, device, prefer_ema)


def resolve_classes(classes, class_names: list[str], num_classes: int) -> list[int]:
    """Class ids from ids or names (e.g. [0, "circle"]); a one-line ValueError for unknown ones."""
    ids = []
    for c in classes:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in class_names:
                known = ", ".join(class_names) if class_names else "none (the model has only numeric ids)"
                raise ValueError(f"unknown class {c!r}; known class names: {known}")
            ids.append(class_names.index(c))
            continue
        i = int(c)
        if not 0 <= i < num_classes:
            raise ValueError(f"unknown class {i}: the model has classes 0..{num_classes - 1}")
        ids.append(i)
    return ids


def encode_prompts(generator, prompts: list[str], text_encoder=None) -> TextCondition:
    """Prompts (B strings) -> TextCondition [B, T, C] from the text encoder the generator was trained
    with (named in its checkpoint), or from `text_encoder` (an imagelm.text.TextEncoder) if given."""
    from imagelm.text import text_encoder_from_spec
    if not prompts:
        raise ValueError("no prompts given")
    device = next(generator.parameters()).device
    if text_encoder is None:
        spec = getattr(generator, "meta", {}).get("text_encoder")
        if not spec:
            raise ValueError("this text-conditional generator does not name its text encoder; pass text_encoder=")
        text_encoder = text_encoder_from_spec(spec, device)
    want = (generator.config.cls_token_num, generator.config.caption_dim)
    if (text_encoder.max_len, text_encoder.dim) != want:
        raise ValueError(f"text encoder gives [T, C] = [{text_encoder.max_len}, {text_encoder.dim}] but the "
                         f"generator expects [{want[0]}, {want[1]}]")
    return text_encoder.encode(list(prompts)).to(device)


def sample(generator, cond, n: int = 1, cfg_scale: float | None = None, cfg_schedule: str | None = None,
           cfg_interval: int | None = None, temperature: float | None = None, top_k: int | None = None,
           top_p: float | None = None, seed: int = 0, steps: int | None = None, progress: bool = False,
           text_encoder=None, engine: str = "engine", dtype: str = "auto", conventions: str = "auto") -> torch.Tensor:
    """Sample `n` images per condition: cond = class ids or names (list) or a tensor [B]; for a text
    generator, prompts (a string or list of B strings) or a TextCondition
    -> tokens [B * n, L, n_sub] int64, grouped by condition. Same seed, same tokens (same device,
    same dtype).

    AR generators decode token by token, through the fast engine (`engine="engine"`, in `dtype`:
    auto | float32 | bfloat16 | int8, see sampling/engine.py) or the plain reference sampler
    (`engine="plain"`, in the model's own dtype); in float32 both give the same tokens. Masked (mlm)
    generators fill the grid in `steps` parallel steps (their CFG schedule runs over the steps).

    conventions: whose meaning the options have (sampling/conventions.py): "auto" (the checkpoint's:
    ELM's or LlamaGen's for a model imported from there, else ours), "imagelm", "elm", "llamagen".
    An option left None takes those conventions' default (ours: no guidance, temperature 1, no
    top-k / top-p, 10 steps)."""
    if n < 1:
        raise ValueError(f"the number of images per condition must be >= 1, got {n}")
    device = next(generator.parameters()).device
    meta = getattr(generator, "meta", {})
    kind = getattr(generator, "kind", "ar")
    plan = plan_sampling(resolve_conventions(conventions, meta), kind, generator.config.cond,
                         cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, cfg_interval=cfg_interval,
                         temperature=temperature, top_k=top_k, top_p=top_p, steps=steps)
    if generator.config.cond == "text":
        if not isinstance(cond, TextCondition):
            cond = encode_prompts(generator, [cond] if isinstance(cond, str) else list(cond), text_encoder)
    elif not torch.is_tensor(cond):
        cond = torch.tensor(resolve_classes(list(cond), meta.get("class_names", []),
                                            generator.config.num_classes))
    cond = cond.to(device).repeat_interleave(n)
    options = plan.options
    rng = torch.Generator(device).manual_seed(seed)
    if kind == "mlm":
        return generate_masked(generator, cond, options, plan.steps, rng, choice_temperature=plan.choice_temperature,
                               progress=progress, remask=plan.remask)
    if engine == "plain":
        return generate(generator, cond, options, rng, progress=progress)
    if engine != "engine":
        raise ValueError(f"unknown sampler {engine!r}; choose engine or plain")
    # A fresh engine per call: nothing is kept on (or for) the generator, so a call always samples
    # its current weights. Reuse an Engine of your own to amortise a dtype conversion over calls.
    rows = len(cond) * (2 if options.guided else 1)
    return Engine(generator, rows=rows, dtype=dtype).generate(cond, options, seed, progress=progress)


def linked_tokenizer(meta: dict, path=None, device: str | torch.device = "cpu", required: bool = True):
    """The tokenizer a generator's codes came from: `path` if given, else the one its config names.

    Returns None when it cannot be found and not `required`; raises a one-line error otherwise.
    """
    link = path or (meta.get("tokenizer") or {}).get("path")
    if link is None or not Path(link).exists():
        if not required:
            return None
        where = f" ({link} no longer exists)" if link else ""
        raise checkpoint.CheckpointError(f"no tokenizer linked to this generator{where}; pass --tokenizer DIR "
                                         f"to decode images, or --tokens-out FILE to save tokens only")
    return load_tokenizer(link, device)


@torch.no_grad()
def decode_tokens(tokens: torch.Tensor, tokenizer) -> torch.Tensor:
    """tokens [B, L, n] -> images [B, 3, H, W] in [-1, 1], through the tokenizer's layout
    (binary codes: n sub-tokens of D/n bits each)."""
    layout = TokenLayout.for_tokenizer(tokenizer, num_subtokens=tokens.shape[-1] if tokens.dim() == 3 else 1)
    grid = int(round(tokens.shape[1] ** 0.5))
    if grid != layout.grid_size:
        layout = dataclasses.replace(layout, grid_size=grid)
    device = next(tokenizer.parameters()).device
    return tokenizer.decode(layout.to_codes(tokens.to(device)))
