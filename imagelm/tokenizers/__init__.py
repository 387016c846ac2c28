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


_CONFIGS = {"vq": VQConfig, "bae": BAEConfig, "bae-elm": ELMBAEConfig}


def config_from_meta(meta: checkpoint.CheckpointMeta):
    """Rebuild a tokenizer config from a checkpoint's CheckpointMeta."""
    if meta.kind not in _CONFIGS:
        raise checkpoint.CheckpointError(f"{meta.path or 'checkpoint'} is a {meta.kind!r} checkpoint, not a tokenizer")
    return meta.config_as(_CONFIGS[meta.kind])


def load_tokenizer(path, device: str | torch.device = "cpu", prefer_ema: bool = True) -> torch.nn.Module:
    """The tokenizer saved at `path` (checkpoint or run directory), in eval mode on `device`, with `.meta`."""
    return checkpoint.load_module(path, TOKENIZER_KINDS, "tokenizer", lambda meta: build_tokenizer(config_from_meta(meta)),
                                  device, prefer_ema)


def load_linked_tokenizer(meta: checkpoint.CheckpointMeta, device: str | torch.device = "cpu",
                          required: bool = True) -> torch.nn.Module | None:
    """The tokenizer a generator's checkpoint links to, found through the relative link (a run moved
    or copied with its tokenizer) or the absolute path recorded when it was written (a run copied
    alone), and checked against the recorded content hash.

    Returns None when no tokenizer can be found and not `required`; otherwise a one-line
    CheckpointError naming the generator's checkpoint and where the tokenizer was looked for. A
    tokenizer whose weights differ from the linked one is always an error (decoding with it would
    give wrong images)."""
    link = meta.tokenizer
    where = meta.path or "this generator"
    if link is None:
        if not required:
            return None
        raise checkpoint.CheckpointError(f"{where} links no tokenizer; pass --tokenizer DIR to decode images, "
                                         f"or --tokens-out FILE to save tokens only")
    found = next((p for p in link.candidates() if _is_checkpoint_path(p)), None)
    if found is None:
        if not required:
            return None
        looked = " or ".join(str(p) for p in link.candidates())
        raise checkpoint.CheckpointError(f"{where} links tokenizer {looked}, which is missing; pass --tokenizer DIR "
                                         f"(or export a bundle: imagelm export bundle RUN OUT)")
    tokenizer = load_tokenizer(found, device)
    if link.sha256 is not None:
        got = checkpoint.weights_sha256(tokenizer.state_dict())
        if got != link.sha256:
            raise checkpoint.CheckpointError(
                f"tokenizer {found} is not the one {where} was trained with (weights sha256 {got[:12]}, "
                f"linked {link.sha256[:12]}); pass --tokenizer DIR to decode with it anyway")
    return tokenizer


def _is_checkpoint_path(path) -> bool:
    try:
        checkpoint.resolve(path)
        return True
    except checkpoint.CheckpointError:
        return False
