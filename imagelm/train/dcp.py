"""Sharded checkpoints for FSDP runs (torch.distributed.checkpoint), resume on any number of ranks,
and consolidation back to our single-file format.

A sharded checkpoint is `checkpoints/step-NNNNNNN/` holding `config.json` (as every checkpoint)
and `dcp/`: each rank writes only the shards it owns of the model, the EMA and the optimizer
state (no rank ever gathers the full model), and DCP's coordinator adds `.metadata` last. It is
written like every other checkpoint: into a temp directory, a barrier, then rank 0 renames it into
place, so a run killed mid-write leaves only a temp directory that readers skip.

DCP records where every shard lives in the full tensors, so the same files load into a model
sharded over any number of ranks, or into a plain one (one process, `no_dist`); `load_sharded`
does both through the `torch.distributed.checkpoint.state_dict` helpers, which speak plain, DDP
and FSDP2 modules alike.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from imagelm import checkpoint


def _state(model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The resumable state as DCP state dicts: parameter-name keyed, sharded where the modules are."""
    return {"model": get_model_state_dict(model), "ema": get_model_state_dict(ema),
            "optimizer": get_optimizer_state_dict(model, opt)}


def save_sharded(run_dir: str | Path, step: int, meta: checkpoint.CheckpointMeta, model: nn.Module, ema: nn.Module,
                 opt: torch.optim.Optimizer, rank: int = 0, world_size: int = 1, keep: int = 2) -> Path:
    """Collectively write sharded checkpoint `run_dir/checkpoints/step-{step}`; every rank calls this.

    Returns the final directory. Prunes all but the newest `keep` checkpoints (rank 0)."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    # One temp name every rank knows without a broadcast; a leftover from a killed run is swept first.
    tmp = root / f"{checkpoint.TMP_PREFIX}{step:07d}-sharded"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        checkpoint.sweep_temps(run_dir)
        tmp.mkdir()
    _barrier(world_size)
    dcp.save(_state(model, ema, opt), checkpoint_id=str(tmp / checkpoint.DCP_DIR))
    checkpoint.crash_point(step)
    _barrier(world_size)  # every rank's shards are on disk before rank 0 publishes them
    if rank == 0:
        record = meta.replace(step=step, extra={**meta.extra, "sharded_over": world_size})
        checkpoint.write_meta(tmp, record, final)
        checkpoint.publish(tmp, final)
        checkpoint.prune(run_dir, keep)
    _barrier(world_size)
    return final


def load_sharded(ckpt: str | Path, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Load sharded checkpoint `ckpt` into model, ema and opt, however they are distributed now
    (plain, DDP or FSDP2, on any number of ranks; collective when a process group exists).
    Returns the step it was saved at."""
    ckpt = Path(ckpt)
    state = _state(model, ema, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one process: "assuming the intent is to load in a single process"
        try:
            dcp.load(state, checkpoint_id=str(ckpt / checkpoint.DCP_DIR))
        except Exception as e:  # DCP names missing keys or size mismatches in a long message
            raise checkpoint.CheckpointError(f"{ckpt} does not fit this model and optimizer: "
                                             f"{str(e).splitlines()[0]}") from None
    set_model_state_dict(model, state["model"])
    set_model_state_dict(ema, state["ema"])
    set_optimizer_state_dict(model, opt, state["optimizer"])
    return int(checkpoint.read_meta(ckpt).step)


def load_full_into_sharded(ckpt: str | Path, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                           optimizer_params: list[str]) -> int:
    """Resume an FSDP run from a full (single/DDP) checkpoint: every rank reads the files and keeps
    its own shards. optimizer_params: the parameter names in the order the plain optimizer indexed
    them (its saved state is keyed by position). Returns the step."""
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, checkpoint.load_weights(ckpt, prefer_ema=False), options=full)
    set_model_state_dict(ema, checkpoint.load_weights(ckpt, prefer_ema=True), options=full)
    state = checkpoint.load_train_state(ckpt)
    saved = state["optimizer"]
    by_name = {"state": {optimizer_params[i]: s for i, s in saved["state"].items()},
               "param_groups": [{**g, "params": [optimizer_params[i] for i in g["params"]]}
                                for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, opt, by_name, options=full)
    return int(state["step"])


def consolidate(src: str | Path, out_dir: str | Path) -> Path:
    """Write the checkpoint at (or newest under) `src` as one plain checkpoint directory `out_dir`:
    config.json, model.safetensors and ema.safetensors (no train state: it is for sampling,
    evaluation and sharing). Works for sharded and full checkpoints alike; atomic."""
    ckpt = checkpoint.resolve(src)
    meta = checkpoint.read_meta(ckpt)
    extra = {k: v for k, v in meta.extra.items() if k != "sharded_over"}
    record = meta.replace(extra={**extra, "consolidated_from": str(ckpt.resolve())})
    ema = checkpoint.load_weights(ckpt, prefer_ema=True) if checkpoint.has_ema(ckpt) else None
    return checkpoint.save_dir(out_dir, record, checkpoint.load_weights(ckpt, prefer_ema=False), ema)


def _barrier(world_size: int) -> None:
    if world_size > 1 and dist.is_initialized():
        dist.barrier()
