"""Checkpoint directories: written atomically, self-describing, loaded strictly.

A run directory holds its checkpoints under `checkpoints/step-NNNNNNN/`, each with
`config.json` (kind + config + metadata), `model.safetensors`, optionally `ema.safetensors` and
`train_state.pt` (optimizer, step, RNG: what exact resume needs). Each checkpoint is written to a
temporary directory and renamed into place, so a crash never leaves a half-written checkpoint
where a reader would take it for a complete one. Any path that is a checkpoint directory, or a run
directory containing some, can be handed to `resolve`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing, incomplete, or of the wrong kind; the message is one line."""


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `run_dir/checkpoints`, oldest first (half-written ones are skipped)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith("step-") and p.is_dir() and _is_checkpoint(p)]
    return sorted(found, key=lambda p: p.name)


def resolve(path: str | Path) -> Path:
    """The checkpoint directory for `path`: itself if it is one, else the newest one of its run."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _is_checkpoint(path):
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path} is not a checkpoint (no config.json + model.safetensors, "
                              f"and no complete checkpoints/step-* inside)")
    return found[-1]


def read_meta(path: str | Path) -> dict:
    """The parsed config.json of the checkpoint at (or newest under) `path`."""
    ckpt = resolve(path)
    try:
        meta = json.loads((ckpt / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {ckpt / 'config.json'}: {e}") from None
    if not isinstance(meta, dict) or "kind" not in meta or "config" not in meta:
        raise CheckpointError(f"{ckpt / 'config.json'} is not an imagelm config (no 'kind'/'config')")
    meta["path"] = str(ckpt)
    return meta


def expect_kind(meta: dict, kinds: tuple[str, ...], role: str) -> None:
    """Raise a one-line CheckpointError unless the checkpoint's kind is one of `kinds`."""
    if meta["kind"] not in kinds:
        raise CheckpointError(f"{meta['path']} is a {meta['kind']!r} checkpoint, but a {role} "
                              f"({' or '.join(kinds)}) is needed here")


def save(run_dir: str | Path, step: int, meta: dict, model: dict[str, torch.Tensor],
         ema: dict[str, torch.Tensor] | None = None, train_state: dict | None = None, keep: int = 2) -> Path:
    """Atomically write checkpoint `run_dir/checkpoints/step-{step}` and prune all but the newest `keep`.

    meta must hold "kind" and "config"; model/ema are state dicts of tensors.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:07d}-", dir=root))
    try:
        (tmp / "config.json").write_text(json.dumps({**meta, "step": step, "format": FORMAT_VERSION}, indent=2))
        save_file(_contiguous(model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_contiguous(ema), str(tmp / "ema.safetensors"))
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_weights(path: str | Path, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of the checkpoint at `path` (EMA weights when present and preferred)."""
    ckpt = resolve(path)
    name = "ema.safetensors" if prefer_ema and (ckpt / "ema.safetensors").is_file() else "model.safetensors"
    try:
        return load_file(str(ckpt / name))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"cannot read {ckpt / name}: {e}") from None


def load_train_state(path: str | Path) -> dict:
    """The resume state (optimizer, step, RNG) saved beside the weights."""
    ckpt = resolve(path)
    file = ckpt / "train_state.pt"
    if not file.is_file():
        raise CheckpointError(f"{ckpt} has no train_state.pt, so training cannot resume from it")
    return torch.load(file, map_location="cpu", weights_only=True)


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict) that names the mismatching keys and shapes in one line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[0]})")
        raise CheckpointError(f"{source} does not match the model its config describes: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _fsync_dir(path: Path) -> None:
    # Make the directory entries durable before the rename publishes them.
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
