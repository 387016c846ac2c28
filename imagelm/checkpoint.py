"""Checkpoint directories: written atomically, self-describing, loaded strictly.

A run directory holds its checkpoints under `checkpoints/step-NNNNNNN/`, each with
`config.json` (a `CheckpointMeta`, imagelm/metadata.py), `model.safetensors`, optionally
`ema.safetensors` and `train_state.pt` (optimizer, step, RNG: what exact resume needs). A
stand-alone checkpoint directory (an import, a consolidated or exported copy) holds the same files
directly. Each checkpoint is written to a
temporary directory and renamed into place, so a crash never leaves a half-written checkpoint
where a reader would take it for a complete one. Any path that is a checkpoint directory, or a run
directory containing some, can be handed to `resolve`.

FSDP runs write *sharded* checkpoints instead (imagelm/train/dcp.py): `config.json` beside a
`dcp/` folder of torch.distributed.checkpoint files (each rank's shards + `.metadata`), published by
the same temp-dir-and-rename. `load_weights` consolidates them on the fly, so every reader (sample,
export, resume on any number of ranks) takes either kind.

`load_module` is the one loader of every kind (generators, tokenizers, the classifier): read and
check the meta, build the module on the meta device, check the weights against it (naming the
mismatch), assign them without a copy, then move to the device.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from imagelm.metadata import (FORMAT_VERSION, CheckpointMeta, MetaError, Provenance, TextSpec,  # noqa: F401
                              TokenizerLink, weights_sha256)

DCP_DIR = "dcp"            # sharded checkpoints: the torch.distributed.checkpoint folder
TMP_PREFIX = ".tmp-step-"  # checkpoints being written; never taken for complete ones


class CheckpointError(Exception):
    """A checkpoint that is missing, incomplete, or of the wrong kind; the message is one line."""


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and ((path / "model.safetensors").is_file() or is_sharded(path))


def is_sharded(path: Path) -> bool:
    """Whether checkpoint directory `path` holds sharded (DCP) weights rather than safetensors files.

    DCP writes `.metadata` last, after every rank's shard files, so its presence means complete."""
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def crash_point(step: int) -> None:
    """Test hook: with IMAGELM_TEST_KILL_AT_SAVE=N, the process kills itself (SIGKILL: no cleanup,
    no `finally`) while checkpoint N is half-written, to test that a resume ignores it."""
    if os.environ.get("IMAGELM_TEST_KILL_AT_SAVE") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def sweep_temps(run_dir: str | Path) -> None:
    """Remove temp directories that a killed run left under run_dir/checkpoints (main process only,
    before it writes a new checkpoint)."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for old in root.glob(TMP_PREFIX + "*"):
            shutil.rmtree(old, ignore_errors=True)


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


def read_meta(path: str | Path) -> CheckpointMeta:
    """The CheckpointMeta of the checkpoint at (or newest under) `path`; a one-line CheckpointError
    naming the file and the field when it is unreadable or wrong."""
    ckpt = resolve(path)
    file = ckpt / "config.json"
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from None
    try:
        return CheckpointMeta.from_dict(raw, ckpt)
    except MetaError as e:
        raise CheckpointError(f"{file}: {e}") from None


def write_meta(directory: Path, meta: CheckpointMeta, final: Path | None = None) -> None:
    """Write meta as `directory/config.json`, its tokenizer link relative to `final` (the directory
    it will be renamed to; default: `directory` itself)."""
    if not isinstance(meta, CheckpointMeta):
        raise TypeError(f"checkpoint metadata must be a CheckpointMeta, not {type(meta).__name__}")
    record = meta.to_dict(relative_to=Path(final or directory))
    (Path(directory) / "config.json").write_text(json.dumps(record, indent=2))


def expect_kind(meta: CheckpointMeta, kinds: tuple[str, ...], role: str) -> None:
    """Raise a one-line CheckpointError unless the checkpoint's kind is one of `kinds`."""
    if meta.kind not in kinds:
        raise CheckpointError(f"{meta.path} is a {meta.kind!r} checkpoint, but a {role} "
                              f"({' or '.join(kinds)}) is needed here")


def load_module(path, kinds: tuple[str, ...], role: str, build, device: str | torch.device = "cpu",
                prefer_ema: bool = True) -> torch.nn.Module:
    """The one loader: the module saved at `path` (a checkpoint or run directory) whose kind is one of
    `kinds`, built by `build(meta)` on the meta device, its weights checked (mismatches named in one
    line) and assigned without a copy, in eval mode on `device`, with `.meta` (its CheckpointMeta)."""
    meta = read_meta(path)
    expect_kind(meta, kinds, role)
    try:
        with torch.device("meta"):
            model = build(meta)
    except MetaError as e:
        raise CheckpointError(f"{meta.path / 'config.json'}: {e}") from None
    state = load_weights(meta.path, prefer_ema)
    check_state(model, state, str(meta.path))
    model.load_state_dict(state, strict=True, assign=True)
    model.meta = meta
    return model.to(device).eval()


def save(run_dir: str | Path, step: int, meta: CheckpointMeta, model: dict[str, torch.Tensor],
         ema: dict[str, torch.Tensor] | None = None, train_state: dict | None = None, keep: int = 2) -> Path:
    """Atomically write checkpoint `run_dir/checkpoints/step-{step}` and prune all but the newest `keep`.

    meta: what config.json records (its step is set to `step`); model/ema: state dicts of tensors.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    sweep_temps(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{step:07d}-", dir=root))
    try:
        write_meta(tmp, meta.replace(step=step), final)
        save_file(_contiguous(model), str(tmp / "model.safetensors"))
        crash_point(step)
        if ema is not None:
            save_file(_contiguous(ema), str(tmp / "ema.safetensors"))
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
        publish(tmp, final)  # re-saving the same step (e.g. after a resume) replaces it whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(run_dir, keep)
    return final


def save_dir(out: str | Path, meta: CheckpointMeta, model: dict[str, torch.Tensor],
             ema: dict[str, torch.Tensor] | None = None) -> Path:
    """Atomically write a stand-alone checkpoint directory `out` (config.json, model.safetensors,
    optionally ema.safetensors): an import, a consolidated or an exported copy. `out` must not exist."""
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out} already exists; choose a new output directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_meta(tmp, meta, out)
        save_file(_contiguous(model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_contiguous(ema), str(tmp / "ema.safetensors"))
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def prune(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (keep <= 0: delete none)."""
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def publish(tmp: Path, final: Path) -> None:
    """Make the finished temp directory `tmp` the checkpoint `final` in one rename (replacing an
    older `final` of the same step whole)."""
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def load_weights(path: str | Path, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of the checkpoint at `path` (EMA weights when present and preferred)."""
    ckpt = resolve(path)
    if is_sharded(ckpt):
        return load_sharded_weights(ckpt, prefer_ema)
    name = "ema.safetensors" if prefer_ema and (ckpt / "ema.safetensors").is_file() else "model.safetensors"
    try:
        return load_file(str(ckpt / name))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"cannot read {ckpt / name}: {e}") from None


def has_ema(path: str | Path) -> bool:
    """Whether the checkpoint at (or newest under) `path` holds EMA weights."""
    ckpt = resolve(path)
    if is_sharded(ckpt):
        import torch.distributed.checkpoint as dcp
        stored = dcp.FileSystemReader(str(ckpt / DCP_DIR)).read_metadata().state_dict_metadata
        return any(k.startswith("ema.") for k in stored)
    return (ckpt / "ema.safetensors").is_file()


def load_sharded_weights(ckpt: Path, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The full (consolidated) model or EMA state dict of a sharded checkpoint, read in this process
    alone from every rank's shard files (never a collective, so it works on any number of ranks,
    inside or outside torchrun)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    folder = ckpt / DCP_DIR
    try:
        stored = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    except Exception as e:
        raise CheckpointError(f"cannot read {folder}: {e}") from None
    group = "ema" if prefer_ema and any(k.startswith("ema.") for k in stored) else "model"
    # DCP stores the nested {"model": {...}, "ema": {...}, ...} state flattened as "model.<name>".
    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in stored.items()
             if k.startswith(group + ".") and isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process": it is
        dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    return {k[len(group) + 1:]: v for k, v in state.items()}


def load_train_state(path: str | Path) -> dict:
    """The resume state (optimizer, step, RNG) saved beside the weights."""
    ckpt = resolve(path)
    if is_sharded(ckpt):
        raise CheckpointError(f"{ckpt} is a sharded (FSDP) checkpoint: its train state is resumed through "
                              f"imagelm.train.dcp.load_sharded")
    file = ckpt / "train_state.pt"
    if not file.is_file():
        raise CheckpointError(f"{ckpt} has no train_state.pt, so training cannot resume from it")
    return torch.load(file, map_location="cpu", weights_only=True)


def check_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """A one-line CheckpointError naming the missing, unexpected and wrongly shaped keys of `state`
    against `module` (which may live on the meta device)."""
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


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict) into an existing module (resume), naming mismatches in one line."""
    check_state(module, state, source)
    module.load_state_dict(state, strict=True)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def fsync_dir(path: Path) -> None:
    # Make the directory entries durable before the rename publishes them.
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
