"""Freezing named parts of a generator for partial fine-tuning (`imagelm train --freeze PARTS`).

PARTS is a comma-separated list of:
    embeddings     the token embeddings (and an MLM's mask embedding)
    cond           the condition embedder (class table, or caption MLP and null caption)
    blocks         every transformer block;  blocks:N  the first N blocks
    norm           the trunk's final norm
    trunk          blocks + final norm
    heads          the output heads
    all-but-heads  everything except the output heads
A frozen parameter gets requires_grad=False, so the optimizer never holds it (imagelm/train/loop.py
builds AdamW over trainable parameters only) and its weights stay bit-exact through training.
LoRA adapters (`lora_a`, `lora_b`: imagelm/models/lora.py) always train: a part names their base only.
"""
from __future__ import annotations

import re

import torch.nn as nn

_PARTS = {
    "embeddings": lambda n: n.startswith("tok_embeddings.") or n == "mask_embedding",
    "cond": lambda n: n.startswith("cond_embedder."),
    "blocks": lambda n: n.startswith("trunk.layers."),
    "norm": lambda n: n.startswith("trunk.norm."),
    "trunk": lambda n: n.startswith("trunk."),
    "heads": lambda n: n.startswith("output."),
    "all-but-heads": lambda n: not n.startswith("output."),
}
PART_NAMES = tuple(_PARTS) + ("blocks:N",)


def _first_blocks(count: int):
    return lambda n: (m := re.match(r"trunk\.layers\.(\d+)\.", n)) is not None and int(m.group(1)) < count


def parse_parts(spec: str | None) -> list:
    """'embeddings,blocks:2' -> one predicate on parameter names per part; a one-line ValueError for
    an unknown part."""
    preds = []
    for part in [p.strip() for p in (spec or "").split(",") if p.strip()]:
        if part in _PARTS:
            preds.append(_PARTS[part])
        elif (m := re.fullmatch(r"blocks:(\d+)", part)) and int(m.group(1)) > 0:
            preds.append(_first_blocks(int(m.group(1))))
        else:
            raise ValueError(f"unknown part {part!r} for --freeze; choose from {', '.join(PART_NAMES)}")
    return preds


def freeze_parts(model: nn.Module, spec: str | None) -> list[str]:
    """Set requires_grad=False on the parameters of the named parts of `model` -> their names.

    A ValueError when a part names nothing in this model (e.g. blocks:9 of a 4-block model), or when
    nothing would be left to train."""
    preds = parse_parts(spec)
    if not preds:
        return []
    named = dict(model.named_parameters())
    if "blocks:" in (spec or ""):
        depth = len({n.split(".")[2] for n in named if n.startswith("trunk.layers.")})
        for count in map(int, re.findall(r"blocks:(\d+)", spec)):
            if count > depth:
                raise ValueError(f"--freeze blocks:{count}, but the model has {depth} blocks")
    frozen = [n for n in named if any(p(n) for p in preds) and not _is_adapter(n)]
    if not any(p.requires_grad for n, p in named.items() if n not in set(frozen)):
        raise ValueError(f"--freeze {spec} leaves nothing to train")
    for n in frozen:
        named[n].requires_grad_(False)
    return frozen


def _is_adapter(name: str) -> bool:
    return name.endswith((".lora_a", ".lora_b"))


def trainable_summary(model: nn.Module) -> str:
    """'T of N parameters train (P%)' for the log line."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{train:,} of {total:,} parameters train ({100 * train / max(1, total):.1f}%)"
