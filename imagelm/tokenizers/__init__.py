"""Image tokenizers behind one interface: `encode(images) -> codes`, `decode(codes) -> images`.

Kinds: "vq" (LlamaGen-style vector quantiser), "bae" (ELM-style binary autoencoder) and "bae-elm"
(ELM's own BAE architecture, for weights imported by imagelm.compat). Each kind has a frozen config
dataclass (vq and bae with named presets); `load_tokenizer` rebuilds one from a checkpoint directory alone.
"""
from __future__ import annotations

import torch

from imagelm import checkpoint
from imagelm.tokenizers.bae import BAE_PRESETS, BAEConfig, BAEModel, bae_config
from imagelm.tokenizers.bae_elm import ELMBAEConfig, ELMBAEModel
from imagelm.tokenizers.vq import VQ_PRESETS, VQConfig, VQModel, vq_config

TOKENIZER_KINDS = ("vq", "bae", "bae-elm")   # bae-elm: ELM's own architecture, for imported weights


def tokenizer_presets() -> dict[str, str]:
    """Preset name -> tokenizer kind, for every known preset."""
    return {**{name: "vq" for name in VQ_PRESETS}, **{name: "bae" for name in BAE_PRESETS}}


def tokenizer_config(preset: str, **overrides):
    """The config of a named tokenizer preset (e.g. "VQ-16", "vq-tiny"), with overrides applied."""
    kind = tokenizer_presets().get(preset)
    if kind is None:
        raise ValueError(f"unknown tokenizer preset {preset!r}; choose one of {', '.join(tokenizer_presets())}")
    return vq_config(preset, **overrides) if kind == "vq" else bae_config(preset, **overrides)


def build_tokenizer(config) -> torch.nn.Module:
    """A freshly initialised tokenizer for `config`."""
    if isinstance(config, VQConfig):
        return VQModel(config)
    if isinstance(config, BAEConfig):
        return BAEModel(config)
    if isinstance(config, ELMBAEConfig):
        return ELMBAEModel(config)
    raise TypeError(f"not a tokenizer config: {type(config).__name__}")


def config_from_meta(meta: dict):
    """Rebuild a tokenizer config from a checkpoint's config.json contents."""
    if meta["kind"] == "vq":
        return VQConfig(**meta["config"])
    if meta["kind"] == "bae":
        return BAEConfig(**meta["config"])
    if meta["kind"] == "bae-elm":
        return ELMBAEConfig(**meta["config"])
    raise checkpoint.CheckpointError(f"{meta.get('path', 'checkpoint')} is a {meta['kind']!r} checkpoint, not a tokenizer")


def load_tokenizer(path, device: str | torch.device = "cpu", prefer_ema: bool = True) -> torch.nn.Module:
    """The tokenizer saved at `path` (checkpoint or run directory), in eval mode on `device`."""
    meta = checkpoint.read_meta(path)
    checkpoint.expect_kind(meta, TOKENIZER_KINDS, "tokenizer")
    model = build_tokenizer(config_from_meta(meta))
    checkpoint.load_state_strict(model, checkpoint.load_weights(meta["path"], prefer_ema), meta["path"])
    model.meta = meta
    return model.to(device).eval()
