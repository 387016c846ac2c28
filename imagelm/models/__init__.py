"""Generators over one shared transformer trunk, and their presets."""
from __future__ import annotations

import torch

from imagelm import checkpoint
from imagelm.models.ar import ARGenerator
from imagelm.models.lora import LoRAConfig, apply_lora, merge_lora
from imagelm.models.mlm import MaskedGenerator
from imagelm.models.presets import GPT_PRESETS, GPTConfig, gpt_config

GENERATOR_KINDS = ("ar", "mlm")
_CLASSES = {"ar": ARGenerator, "mlm": MaskedGenerator}


def build_generator(config: GPTConfig, kind: str = "ar") -> torch.nn.Module:
    """A freshly initialised generator of `kind` ("ar" or "mlm") for `config`."""
    if kind not in _CLASSES:
        raise ValueError(f"unknown generator kind {kind!r}; choose one of {', '.join(_CLASSES)}")
    return _CLASSES[kind](config)


def count_params(config: GPTConfig, kind: str = "ar") -> int:
    """Parameter count of a generator, computed on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = build_generator(config, kind)
    return sum(p.numel() for p in model.parameters())


def load_generator(path, device: str | torch.device = "cpu", prefer_ema: bool = True) -> torch.nn.Module:
    """The generator saved at `path` (checkpoint or run directory), in eval mode on `device`.

    The returned module carries `.meta` (its config.json, with the tokenizer link and class names).
    A LoRA run's checkpoint (adapters saved beside the base weights) is loaded with its adapters and
    merged, so the returned model is a plain generator.
    """
    meta = checkpoint.read_meta(path)
    checkpoint.expect_kind(meta, GENERATOR_KINDS, "generator")
    model = build_generator(GPTConfig(**meta["config"]), meta["kind"])
    if meta.get("lora"):
        apply_lora(model, LoRAConfig(**meta["lora"]))
    checkpoint.load_state_strict(model, checkpoint.load_weights(meta["path"], prefer_ema), meta["path"])
    merge_lora(model)
    model.meta = meta
    return model.to(device).eval()
