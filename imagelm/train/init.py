"""Starting a run from another checkpoint's weights (`imagelm train --init CKPT`, `train-tokenizer --init`).

The source is any checkpoint of ours: trained here (single or sharded, a LoRA run merged), or written
by `imagelm convert` from a LlamaGen / ELM file. The new run keeps the source's architecture and takes
from its own data what the data decides: the grid (resolution), the class count, the caption width.
`map_state` then fills the new model key by key:

    kept     same key, same shape: copied bit for bit
    resized  the class table: old rows kept by id (or as `--class-map old:new,...` says), new rows the
             mean of the old class rows, the null (CFG) row carried over; a text model's null caption
             of another length: its first rows kept
    new      freshly initialised: the caption projection (and null caption) for a new caption width,
             an MLM's mask embedding when starting from an AR model
    dropped  in the source, not needed: an MLM's mask embedding when starting an AR model
    rebuilt  (buffers, not weights) the 2D RoPE table: computed from the new config, so a new grid
             just works (the table is never saved)

Anything else that differs (another vocabulary, width, depth...) stops with one line naming the key.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch

KEPT, RESIZED, NEW, DROPPED, REBUILT = "kept", "resized", "new", "dropped", "rebuilt"

CLASS_TABLE = "cond_embedder.embedding_table.weight"
CAPTION_PROJ = "cond_embedder.mlp.0.weight"
NULL_CAPTION = "cond_embedder.null_caption"
MASK = "mask_embedding"


class InitError(ValueError):
    """A source checkpoint whose weights cannot be mapped onto the new model; one line, naming the key."""


@dataclass(frozen=True)
class InitRow:
    """One line of the init table: key, what happened, its shape in the source and in the new model."""
    key: str
    status: str
    source: tuple | None
    target: tuple | None
    how: str = ""


def _shape(t) -> tuple | None:
    return None if t is None else tuple(t.shape)


def parse_class_map(spec: str | None, source_names: list[str], target_names: list[str],
                    source_classes: int, target_classes: int) -> dict[int, int]:
    """'--class-map old:new,...' (ids, or class names of each side) -> {new id: old id}; a one-line
    InitError for an unknown class or a malformed pair."""
    mapping: dict[int, int] = {}
    for pair in [p.strip() for p in (spec or "").split(",") if p.strip()]:
        if pair.count(":") != 1:
            raise InitError(f"--class-map takes old:new pairs separated by commas, not {pair!r}")
        old, new = (s.strip() for s in pair.split(":"))
        o = _class_id(old, source_names, source_classes, "the --init checkpoint")
        n = _class_id(new, target_names, target_classes, "the new data")
        mapping[n] = o
    return mapping


def _class_id(text: str, names: list[str], count: int, where: str) -> int:
    if re.fullmatch(r"\d+", text):
        i = int(text)
        if i >= count:
            raise InitError(f"--class-map: class {i} is not in {where} (classes 0..{count - 1})")
        return i
    if text in names:
        return names.index(text)
    raise InitError(f"--class-map: no class {text!r} in {where} (known: {', '.join(names) or 'ids only'})")


def resize_class_table(old: torch.Tensor, num_classes: int, mapping: dict[int, int] | None = None) -> torch.Tensor:
    """A class table [C_old + 1, dim] (the last row is the null class) -> [num_classes + 1, dim].

    Row i < min(C_old, num_classes) is old row i; other rows start at the mean of the old class rows
    (the null row excluded); `mapping` {new: old} overrides both; the null row is carried over."""
    old_classes = old.shape[0] - 1
    table = old[:old_classes].mean(0, keepdim=True).expand(num_classes + 1, -1).clone()
    keep = min(old_classes, num_classes)
    table[:keep] = old[:keep]
    for new, src in (mapping or {}).items():
        table[new] = old[src]
    table[num_classes] = old[old_classes]
    return table


def map_state(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], src: str,
              class_map: dict[int, int] | None = None, generator_rules: bool = True
              ) -> tuple[dict[str, torch.Tensor], list[InitRow]]:
    """Fill the new model's state dict `target` (its fresh init) from `source` -> (state dict, table).

    generator_rules: apply the generator rules above (class table, caption projection, mask
    embedding); a tokenizer takes only same-shape keys. Anything unresolved: InitError naming the key."""
    out, rows = {}, []
    for key, fresh in target.items():
        old = source.get(key)
        if old is not None and old.shape == fresh.shape and (key != CLASS_TABLE or not class_map):
            out[key] = old.to(fresh.dtype).clone()
            rows.append(InitRow(key, KEPT, _shape(old), _shape(fresh)))
        elif generator_rules and key == CLASS_TABLE and old is not None and old.shape[1:] == fresh.shape[1:]:
            out[key] = resize_class_table(old, fresh.shape[0] - 1, class_map).to(fresh.dtype)
            how = f"{old.shape[0] - 1} -> {fresh.shape[0] - 1} classes + null row"
            how += f"; mapped {', '.join(f'{o}->{n}' for n, o in sorted(class_map.items()))}" if class_map else ""
            rows.append(InitRow(key, RESIZED, _shape(old), _shape(fresh), how + "; new rows: mean of the old"))
        elif generator_rules and key == CAPTION_PROJ and old is not None and old.shape[0] == fresh.shape[0]:
            out[key] = fresh.clone()
            rows.append(InitRow(key, NEW, _shape(old), _shape(fresh), "a new caption width: a new projection"))
        elif generator_rules and key == NULL_CAPTION and old is not None:
            if old.shape[1] != fresh.shape[1]:
                out[key] = fresh.clone()
                rows.append(InitRow(key, NEW, _shape(old), _shape(fresh), "a new caption width"))
            else:
                keep = min(old.shape[0], fresh.shape[0])
                out[key] = torch.cat([old[:keep].to(fresh.dtype), fresh[keep:]])
                rows.append(InitRow(key, RESIZED, _shape(old), _shape(fresh),
                                    f"caption length {old.shape[0]} -> {fresh.shape[0]}: first {keep} rows kept"))
        elif generator_rules and key == MASK and old is None:
            out[key] = fresh.clone()
            rows.append(InitRow(key, NEW, None, _shape(fresh), "a masked model from an autoregressive one"))
        elif old is None:
            raise InitError(f"--init {src}: no weights for {key} {_shape(fresh)} there ({_why(key)}); it "
                            f"cannot be carried over")
        else:
            raise InitError(f"--init {src}: {key} is {_shape(old)} there but {_shape(fresh)} here "
                            f"({_why(key)}); it cannot be carried over")
    for key, old in source.items():
        if key in target:
            continue
        if generator_rules and key == MASK:
            rows.append(InitRow(key, DROPPED, _shape(old), None, "an autoregressive model needs no mask token"))
        else:
            raise InitError(f"--init {src}: {key} {_shape(old)} has no place in the new model ({_why(key)})")
    return out, rows


def _why(key: str) -> str:
    if key.startswith(("tok_embeddings.", "output.")):
        return "another vocabulary or sub-token split: the tokenizer's codes differ"
    if key.startswith("cond_embedder."):
        return "another kind of condition: classes or captions"
    return "another width, depth or kind of model"


def rope_row(source_config, target_config) -> InitRow | None:
    """The RoPE table's line in the init table when the grid or prefix changed (a buffer computed
    from the config, rebuilt with the new model), else None."""
    def shape(c):
        return (c.cls_token_num + c.seq_len, c.head_dim // 2, 2)
    if shape(source_config) == shape(target_config):
        return None
    g0, g1 = source_config.grid_size, target_config.grid_size
    return InitRow("trunk.rope (buffer)", REBUILT, shape(source_config), shape(target_config),
                   f"grid {g0}x{g0} -> {g1}x{g1}" if g0 != g1 else "prefix length changed")


def format_table(rows: list[InitRow], src: str) -> str:
    """The init table, printed once: every key not kept on its own line, the kept ones counted."""
    kept = [r for r in rows if r.status == KEPT]
    lines = [f"init from {src}:",
             f"  {'status':<8} {'key':<44} {'source':<18} {'new':<18} how"]
    for r in rows:
        if r.status != KEPT:
            lines.append(f"  {r.status:<8} {r.key:<44} {str(r.source or '-'):<18} {str(r.target or '-'):<18} {r.how}")
    lines.append(f"  {KEPT:<8} {len(kept)} tensors, every other key, bit for bit")
    return "\n".join(lines)


def load_generator_source(path):
    """The generator at `path` (ours or converted; a LoRA run merged) -> (plain model in eval mode,
    its meta). A one-line error for a missing checkpoint, a tokenizer, or a released file not yet
    converted."""
    from pathlib import Path

    from imagelm.models import load_generator
    if Path(path).is_file():
        raise InitError(f"--init takes an imagelm checkpoint directory; convert {path} first "
                        f"(imagelm convert llamagen-gpt|elm-gpt {path} OUT_DIR)")
    model = load_generator(path, prefer_ema=True)
    return model, model.meta


def load_tokenizer_source(path):
    """The tokenizer at `path` (ours, or a converted LlamaGen VQ / ELM BAE) -> (model, meta)."""
    from pathlib import Path

    from imagelm.tokenizers import load_tokenizer
    if Path(path).is_file():
        raise InitError(f"--init takes an imagelm checkpoint directory; convert {path} first "
                        f"(imagelm convert llamagen-vq|elm-bae {path} OUT_DIR)")
    model = load_tokenizer(path, prefer_ema=True)
    return model, model.meta


def replace_config(source, **fields):
    """The new run's config: the source's architecture (a generator's width, depth, heads, RoPE and head
    modes; a tokenizer's whole shape) with `fields` (what the data and options decide: grid, classes,
    caption spec, dropouts; a tokenizer's image size) replaced."""
    try:
        return dataclasses.replace(source, **fields)
    except ValueError as e:
        raise InitError(f"--init: {e}") from None


def describe_source(meta: dict) -> str:
    """'PATH (ar, 6 classes, 8x8 tokens)' for log lines."""
    c = meta["config"]
    cond = f"{c['num_classes']} classes" if c.get("cond", "class") == "class" else f"captions {c['caption_dim']}-d"
    origin = meta.get("imported_from", {}) or {}
    where = f", imported from {origin['format']}" if origin.get("format") else ""
    return f"{meta['path']} ({meta['kind']}, {cond}, {c['grid_size']}x{c['grid_size']} tokens{where})"

