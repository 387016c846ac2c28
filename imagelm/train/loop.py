"""Pieces shared by every training loop: optimizer, learning-rate schedule, EMA, deterministic
batches, and exact resume (device, torchrun and precision choices live in imagelm.runtime).

Exact resume rests on one rule: everything random in step `s` (batch order, flips, dropout,
condition dropout, masks, Bernoulli bits) is a pure function of (seed, s, rank). The batch order
comes from `batch_indices`; condition dropout and the masked model's training masks draw from
`step_generator(seed, s, rank)`, a torch.Generator the loop hands to them; what cannot take a
generator (nn.Dropout inside the model, a tokenizer's Bernoulli bits) draws from the global torch
RNG, re-seeded by `seed_step` at the start of each step. So a run resumed at step s replays
exactly what an uninterrupted run would have done.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from imagelm.data.sampler import batch_indices  # noqa: F401  (re-exported: the loops' batch order)
from imagelm.runtime import Runtime, seeded_generator


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2) only; biases, norms and gains are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=False)


def lr_at(step: int, base_lr: float, warmup: int, total: int, schedule: str = "constant",
          min_lr_ratio: float = 0.1) -> float:
    """Learning rate at `step`: linear warm-up, then constant or cosine decay to min_lr_ratio*base_lr."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose constant or cosine")


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (buffers are copied).

    Under FSDP both are sharded the same way (DTensors with equal placements), so each rank
    updates only its own shard, in place: the EMA is never gathered.
    """
    for e, p in zip(ema.parameters(), model.parameters()):
        _local(e).lerp_(_local(p).detach().to(e.dtype), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a plain tensor is its own)."""
    return t.to_local() if hasattr(t, "to_local") else t


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP (or compiled) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def seed_step(seed: int, step: int, rank: int = 0) -> None:
    """Seed the global torch RNG (CPU and CUDA) from (seed, step, rank): step randomness is replayable."""
    torch.manual_seed((seed * 1_000_003 + step) * 4099 + rank)


def step_generator(seed: int, step: int, rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The torch.Generator of step `step` on rank `rank` (on `device`): condition dropout and
    training masks draw from it. Its own stream, apart from `seed_step`'s."""
    return seeded_generator(((seed * 1_000_003 + step) * 4099 + rank) * 2 + 1, device)


def optimizer_param_names(model: nn.Module) -> list[str]:
    """Parameter names in the order `build_optimizer` indexes them (its state dict is keyed by position)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, p in named if p.dim() >= 2] + [n for n, p in named if p.dim() < 2]


def resume_checkpoint(resume, out) -> Path | None:
    """The checkpoint that --resume names: False/None -> None; True or "auto" -> the newest complete
    checkpoint under the run directory `out` (None when there is none yet; half-written ones are
    never taken); any other string -> that checkpoint or run directory (it must exist)."""
    from imagelm import checkpoint
    if resume in (None, False, "", "no"):
        return None
    if resume in (True, "auto"):
        found = checkpoint.list_checkpoints(out)
        return found[-1] if found else None
    return checkpoint.resolve(resume)


def resume_weights(ckpt, config, config_from_meta, model: nn.Module, ema: nn.Module, hint: str) -> dict:
    """Load full checkpoint `ckpt` into model and ema; return its train state (optimizer, step).

    config_from_meta(meta) rebuilds the checkpoint's config; a different config than `config` is a
    one-line CheckpointError ending with `hint`.
    """
    from imagelm import checkpoint
    check_config(ckpt, config, config_from_meta, hint)
    checkpoint.load_state_strict(model, checkpoint.load_weights(ckpt, prefer_ema=False), str(ckpt))
    checkpoint.load_state_strict(ema, checkpoint.load_weights(ckpt, prefer_ema=True), str(ckpt))
    return checkpoint.load_train_state(ckpt)


def check_config(ckpt, config, config_from_meta, hint: str) -> None:
    """A one-line CheckpointError unless checkpoint `ckpt` was trained with `config`."""
    from imagelm import checkpoint
    meta = checkpoint.read_meta(ckpt)
    if config_from_meta(meta) != config:
        raise checkpoint.CheckpointError(f"{meta.path} was trained with a different config; {hint}")


def all_reduce_mean(value: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """The mean of a scalar tensor over ranks (itself when not distributed)."""
    if not rt.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / rt.world_size
