"""The trunk's architecture read off a LlamaGen- or ELM-layout GPT state dict, so a model of any size
imports, not only the named presets.

Both projects save the same Llama trunk (`layers.{i}.attention.wqkv`, `.wo`, `.feed_forward.w1/w2/w3`,
RMSNorms), so one reader serves both adapters. What the weights fix: the width (given by the caller,
from the token table), the depth (how many `layers.{i}`), the SwiGLU width (w1's rows) and, once the
head count is known, the key/value heads (wqkv's rows). What they cannot fix is how the width is split
into heads: a preset of the same width and depth says so, or `n_head`, or else the head size of every
released model but two (64 channels; LlamaGen's GPT-3B has 100, GPT-7B 128: both are presets).
"""
from __future__ import annotations

from imagelm.compat.common import CompatError, block_indices
from imagelm.models.presets import GPT_PRESETS, GPTConfig

HEAD_SIZE = 64
_DEFAULT_MULTIPLE = 256     # LlamaGen's and ELM's ModelArgs.multiple_of


def class_preset_for(dim: int, n_layer: int) -> str | None:
    """The class-conditional preset of this width and depth, or None."""
    return next((name for name, f in GPT_PRESETS.items()
                 if f["dim"] == dim and f["n_layer"] == n_layer and f.get("cond", "class") == "class"), None)


def infer_trunk(state: dict, dim: int, src: str, preset: str | None = None,
                n_head: int | None = None) -> tuple[dict, str | None]:
    """GPTConfig trunk fields for the `layers.*` of `state` -> (fields, preset name or None).

    With `preset`, its depth, heads and width are taken as given (the caller's shape check then names
    the first key that does not fit it). Without, every field is read from the weights:
    n_layer, n_head (`n_head`, else a preset of this width and depth, else width / 64), n_kv_head
    (from wqkv's rows), and the SwiGLU width (LlamaGen's rounding to 256 when it reproduces w1's rows,
    else `ffn_hidden_dim` exactly). The returned name is the preset whose shape the weights have, if any.
    """
    if preset is not None:
        if preset not in GPT_PRESETS:
            raise CompatError(f"unknown generator preset {preset!r}; choose one of {', '.join(GPT_PRESETS)}")
        p = GPT_PRESETS[preset]
        depth = len(block_indices(state, r"layers\.(\d+)\."))
        # A wrong width is named by the caller's shape check at its first key; a wrong depth is said here
        # (the shape check would only find a layer missing, or one too many).
        if depth != p["n_layer"] and dim == p["dim"]:
            raise CompatError(f"{src} does not fit preset {preset}: the file has {depth} layers, the preset "
                              f"{p['n_layer']}")
        return dict(n_layer=p["n_layer"], n_head=n_head or p["n_head"], dim=p["dim"]), preset
    layers = block_indices(state, r"layers\.(\d+)\.")
    if not layers:
        raise CompatError(f"{src}: no transformer layers (layers.0.*) in the file")
    if layers != list(range(len(layers))):
        raise CompatError(f"{src}: unknown layout, layers.* are not numbered 0..{len(layers) - 1}")
    n_layer = len(layers)
    name = class_preset_for(dim, n_layer)
    if n_head is None:
        if name is not None:
            n_head = GPT_PRESETS[name]["n_head"]
        elif dim % HEAD_SIZE == 0:
            n_head = dim // HEAD_SIZE
        else:
            raise CompatError(f"{src}: width {dim} is not a multiple of the usual head size {HEAD_SIZE} and no "
                              f"preset has dim {dim} and {n_layer} layers; pass --n-head N")
    if n_head < 1 or dim % n_head:
        raise CompatError(f"{src}: width {dim} does not split into {n_head} heads")
    head_dim = dim // n_head
    fields = dict(n_layer=n_layer, n_head=n_head, dim=dim)
    wqkv = state.get("layers.0.attention.wqkv.weight")
    w1 = state.get("layers.0.feed_forward.w1.weight")
    if wqkv is None or w1 is None:
        raise CompatError(f"{src}: unknown layout, layers.0 has no attention.wqkv / feed_forward.w1")
    rows = wqkv.shape[0]
    kv, rest = divmod(rows // head_dim - n_head, 2) if rows % head_dim == 0 else (0, 1)
    if rest or kv < 1 or n_head % kv:
        raise CompatError(f"{src}: layers.0.attention.wqkv.weight has {rows} rows, which no key/value head "
                          f"count fits with {n_head} heads of {head_dim}; pass --n-head N")
    if kv != n_head:
        fields["n_kv_head"] = kv
    hidden = w1.shape[0]
    if GPTConfig(dim=dim, n_head=n_head, multiple_of=_DEFAULT_MULTIPLE).ffn_hidden != hidden:
        fields["ffn_hidden_dim"] = hidden
    if name is not None and GPT_PRESETS[name]["n_head"] != n_head:
        name = None        # a preset's width and depth, split otherwise: not that preset
    return fields, name


def describe(fields: dict, name: str | None) -> str:
    """How a shape check's message names the model it compares with: 'preset X' or the inferred shape."""
    if name is not None:
        return f"preset {name}"
    return f"the inferred shape (dim {fields['dim']}, {fields['n_layer']} layers, {fields['n_head']} heads)"
