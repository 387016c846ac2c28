"""Training strategies: one process (`single`), data parallel (`ddp`), or fully sharded (`fsdp`).

The model is always built plain, on one device, exactly as for single-process training; then
`parallelize` applies, in one fixed order (the order matters, see its comments):

1. activation checkpointing per transformer block (recompute the block in backward),
2. `torch.compile` per block (every block runs the same code, so one graph serves them all),
3. DDP around the whole model, or FSDP2: `fully_shard` per block, the final norm and output
   heads as one unit, then the root (embeddings, condition embedder, what is left).

Nothing else in the loops knows the strategy, except three small seams kept here:
`grad_sync` (skip the gradient all-reduce on accumulation micro-steps), `mixed_precision`
(FSDP2 casts parameters itself, so the loop's autocast is off) and `shard_like` (the EMA copy
is sharded like the model, so each rank keeps only its shard of it).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint

STRATEGIES = ("single", "ddp", "fsdp")


def resolve_strategy(name: str | None, world_size: int) -> str:
    """The strategy to run: `name`, or the default (single alone, ddp under torchrun with W > 1).

    Raises a one-line ValueError for an unknown name or one that does not fit the launch."""
    if name in (None, "auto"):
        return "ddp" if world_size > 1 else "single"
    if name not in STRATEGIES:
        raise ValueError(f"unknown --strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "single" and world_size > 1:
        raise ValueError(f"--strategy single runs one process, but torchrun started {world_size}; "
                         f"use --strategy ddp or fsdp")
    if name != "single" and world_size == 1:
        raise ValueError(f"--strategy {name} needs several processes: launch with "
                         f"`torchrun --nproc-per-node N -m imagelm.cli ...` (WORLD_SIZE is 1 here)")
    return name


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a generator (its trunk's layers); [] for models without a trunk."""
    trunk = getattr(model, "trunk", None)
    return list(trunk.layers) if trunk is not None else []


def mixed_precision(dtype: torch.dtype | None):
    """FSDP2's policy for compute dtype `dtype` (None = fp32): parameters are cast to it for
    forward/backward, gradients are reduced in fp32 (bf16 sums lose low bits across many ranks),
    and the sharded master weights and optimizer state stay fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    if dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def apply_activation_checkpointing(block: nn.Module) -> None:
    """Recompute `block`'s forward in backward instead of keeping its activations.

    The block's own `forward` is wrapped in place (not the module replaced by a wrapper), so
    parameter names and state-dict keys are those of the plain model. Non-reentrant
    checkpointing restores the RNG state, so dropout masks are the same when recomputed."""
    inner = block.forward

    def forward(*args, **kwargs):
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    block.forward = forward


def parallelize(model: nn.Module, strategy: str, device: torch.device, *, compute_dtype: torch.dtype | None = None,
                activation_checkpointing: bool = False, compile: bool = False) -> nn.Module:
    """Make the plain `model` ready for `strategy`; returns the module to call in training.

    single/ddp: the model (or its DDP wrapper). fsdp: the model itself, sharded in place (its
    parameters become DTensors; the optimizer must be built afterwards). compute_dtype: FSDP2's
    parameter dtype (the loop's autocast dtype; ignored by single/ddp, which autocast instead).
    """
    blocks = transformer_blocks(model)
    if activation_checkpointing:
        if not blocks:
            raise ValueError("--activation-checkpointing recomputes transformer blocks; this model has none")
        # 1. Checkpointing first, so compile (2.) traces the recompute too and FSDP (3.) sees
        #    the same modules it would without it.
        for block in blocks:
            apply_activation_checkpointing(block)
    if compile:
        # 2. Compile each block, not the whole model: every block reuses one graph (fast compile)
        #    and graph breaks elsewhere (condition embedders, heads) cost nothing. Before FSDP, as
        #    torchtitan orders it. Models without blocks (tokenizers) are compiled whole.
        #    nn.Module.compile keeps parameter names (no `_orig_mod.` prefix in checkpoints).
        for block in blocks or [model]:
            block.compile()
    if strategy == "single":
        return model
    if strategy == "ddp":
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy != "fsdp":
        raise ValueError(f"unknown strategy {strategy!r}")
    if not blocks:
        raise ValueError("--strategy fsdp shards transformer blocks: use it for `imagelm train`; "
                         "tokenizers train with ddp")
    from torch.distributed.fsdp import fully_shard
    policy = mixed_precision(compute_dtype)
    # 3. One FSDP unit per block: its parameters are all-gathered just before it runs and
    #    freed after, so peak memory holds about one block's full weights. The final norm and
    #    the output heads run back to back, so they form one unit; the root (fully_shard(model))
    #    takes the rest (embeddings, condition embedder) and drives the units' prefetching.
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard([model.trunk.norm, model.output], mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def shard_like(ema: nn.Module, strategy: str) -> nn.Module:
    """Under FSDP, shard the EMA copy exactly like the model (per block, norm + heads, root), so
    `ema_update` works shard by shard and the EMA costs 1/W of its size per rank. It never runs
    forward during training; its full weights exist only when a checkpoint is consolidated."""
    if strategy != "fsdp":
        return ema
    from torch.distributed.fsdp import fully_shard
    for block in transformer_blocks(ema):
        fully_shard(block)
    fully_shard([ema.trunk.norm, ema.output])
    fully_shard(ema)
    return ema


@contextlib.contextmanager
def grad_sync(model: nn.Module, strategy: str, sync: bool):
    """Run forward + backward with (sync=True) or without the gradient all-reduce / reduce-scatter.

    Gradient accumulation skips it on all micro-steps but the last, so gradients are summed
    locally and communicated once per optimizer step."""
    if strategy == "ddp" and not sync:
        with model.no_sync():
            yield
    elif strategy == "fsdp":
        model.set_requires_gradient_sync(sync)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip gradients to total norm `max_norm` over all ranks' shards; returns the norm (a plain
    tensor: under FSDP the norm is a replicated DTensor, read back as its local value)."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def split_micro(batch_size: int, accum: int) -> list[slice]:
    """The micro-batches of a rank's batch of `batch_size` rows for `accum` accumulation steps."""
    if accum < 1:
        raise ValueError(f"--grad-accum must be >= 1, got {accum}")
    if batch_size % accum:
        raise ValueError(f"the per-rank batch {batch_size} is not divisible by --grad-accum {accum}")
    size = batch_size // accum
    return [slice(i * size, (i + 1) * size) for i in range(accum)]
