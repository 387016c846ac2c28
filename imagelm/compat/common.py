"""What every adapter shares: reading a foreign checkpoint safely, checking a renamed state dict against
the module it must fill (naming the first mismatch in the source's own key names), building on the
meta device and loading by assignment, and writing our checkpoint directory.

No source's key names live here; each adapter (llamagen.py, elm.py) owns its own.
"""
from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch

from imagelm import checkpoint


class CompatError(ValueError):
    """A foreign checkpoint that cannot be imported (missing, unreadable, unknown layout, wrong
    preset); the message is one line. A ValueError, so the CLI prints it and exits 2."""


def read_file(path) -> dict:
    """torch.load a released checkpoint with weights_only=True (mmap when the format allows) -> its dict.

    Only plain tensors/containers are unpickled; argparse.Namespace (LlamaGen's training scripts save
    their `args` beside the weights) is the one class allowed in addition.
    """
    path = Path(path)
    if not path.exists():
        raise CompatError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CompatError(f"{path} is not a file (a released .pt/.pth/.th checkpoint is expected)")
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            obj = _load(path, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):                  # legacy (pre-zip) format: load it without mmap
                raise CompatError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
            obj = _load(path, mmap=False)
    if not isinstance(obj, dict):
        raise CompatError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def _load(path: Path, mmap: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:   # a real pickle that names a Python class: refuse rather than run arbitrary code
            raise CompatError(f"{path} needs weights_only=False to load (it pickles the Python object "
                              f"{found.group(1)}); imagelm only reads plain tensors: re-save its state dict "
                              f"with torch.save") from None
        raise CompatError(f"cannot read {path}: not a PyTorch checkpoint (unpickling failed)") from None
    except RuntimeError as e:
        if mmap and "mmap" in str(e):
            raise
        raise CompatError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    except (EOFError, OSError, ValueError) as e:
        raise CompatError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


# Where training scripts keep the weights in a checkpoint dict, in the order LlamaGen's samplers try them.
_WRAPPERS = ("model", "module", "state_dict", "ema")


def unwrap(obj: dict, src: str, marker: str, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint dict: under model / module / state_dict / ema (ema first when
    use_ema), or the dict itself when it is a bare state dict holding the key `marker`. Else refused."""
    for name in (("ema",) if use_ema else ()) + _WRAPPERS:
        inner = obj.get(name)
        if isinstance(inner, dict) and tensors_only(inner):
            return inner
    if use_ema:
        raise CompatError(f"{src} has no 'ema' weights")
    if isinstance(obj.get(marker), torch.Tensor):
        if not tensors_only(obj):
            odd = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
            raise CompatError(f"{src}: unknown layout, {odd!r} is not a tensor in what looks like a state dict")
        return obj
    raise CompatError(f"{src}: unknown layout (no weights under {', '.join(_WRAPPERS)}, and not a bare state "
                      f"dict with {marker}); top-level keys: {', '.join(map(str, list(obj)[:6]))}")


def tensors_only(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def block_indices(state: dict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (a regex with one group) over the keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := rx.match(k))})


def float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as float32 (our weights at rest); integer buffers untouched."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def check_shapes(model: torch.nn.Module, state: dict[str, torch.Tensor], source_name: dict[str, str],
                 src: str, what: str) -> None:
    """Refuse, in one line, a renamed state dict that does not fill `model` exactly.

    state: our key -> tensor; source_name: our key -> the key in the source file (for the message).
    Checks in the model's own key order, so the first mismatch named is the first in the network.
    """
    own = model.state_dict()
    for key, expected in own.items():
        if key not in state:
            raise CompatError(f"{src}: no weights for {what}'s {key} in the file (unknown or truncated layout)")
        got = state[key]
        if tuple(got.shape) != tuple(expected.shape):
            raise CompatError(f"{src} does not fit {what}: {source_name.get(key, key)} is {tuple(got.shape)} in "
                              f"the file but {tuple(expected.shape)} in {what}")
    extra = [k for k in state if k not in own]
    if extra:
        raise CompatError(f"{src}: unknown layout, {source_name.get(extra[0], extra[0])} has no place in {what}")


def build_and_load(factory, state: dict[str, torch.Tensor], source_name: dict[str, str], src: str,
                   what: str) -> torch.nn.Module:
    """factory() built on the meta device, shapes checked, weights assigned (no copy) -> eval-mode module."""
    with torch.device("meta"):
        model = factory()
    check_shapes(model, state, source_name, src, what)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def imported(fmt: str, path) -> dict:
    """The meta entries every import records: where the weights came from (`provenance`: the source
    project, the file, the compat format), read by sampling.conventions to sample the model as its
    source does, and the older `imported_from` (format, path)."""
    file = str(Path(path).resolve())
    return {"imported_from": {"format": fmt, "path": file},
            "provenance": {"source": fmt.split("-")[0], "file": file, "format": fmt}}


def save_checkpoint(out_dir, meta: dict, model: torch.nn.Module) -> Path:
    """Write `model` as our checkpoint under out_dir (atomically, step 0) -> the checkpoint directory.

    `imagelm.load(out_dir)` / `load_tokenizer(out_dir)` read it back.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CompatError(f"{out} exists and is not a directory")
    if checkpoint.list_checkpoints(out) or (out / "config.json").exists():
        # Saving step 0 beside a run's newer checkpoints would hide it (or prune it): never mix them.
        raise CompatError(f"{out} already holds a checkpoint; convert into a new directory")
    return checkpoint.save(out, 0, meta, model.state_dict(), keep=1)


# The Llama trunk's names, the same in LlamaGen's and ELM's GPTs.
LLAMA_TRUNK_RENAMES = {
    "norm.weight": "trunk.norm.weight",
    "output.weight": "output.heads.0.weight",
    "cls_embedding.embedding_table.weight": "cond_embedder.embedding_table.weight",
}


def rename_gpt_keys(state: dict, exact: dict[str, str], patterns: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """Source GPT key -> our ARGenerator key, for every key of `state`: blocks (`layers.*`) move under
    `trunk.`, then the `exact` names, then the first (regex, template) of `patterns` that matches; a key
    none of them knows maps to itself, so check_shapes names it as having no place in the model."""
    out = {}
    for k in state:
        if k.startswith("layers."):
            out[k] = "trunk." + k
        elif k in exact:
            out[k] = exact[k]
        else:
            out[k] = next((m.expand(template) for pattern, template in patterns
                           if (m := re.fullmatch(pattern, k))), k)
    return out
