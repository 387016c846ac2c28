"""The bottom layer: where this process runs and in what precision.

Device choice (and joining a torchrun job), the CPU's capabilities, the dtype a sampler or a
training step should use on this machine, and seeded generators. Everything in imagelm may import
this module; it imports nothing of ours, so the layers above (models, sampling, eval, train, serve,
api, cli) can all share one answer to "what does this machine run fastest".
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# What a sampler may be asked to run in; "int8" means dynamically quantised linear weights (CPU).
SAMPLING_DTYPES = ("auto", "float32", "bfloat16", "int8")


@dataclass
class Runtime:
    """Where this process runs: device, and its place in a torchrun job (rank 0 of 1 when alone)."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def print(self, *args, **kwargs) -> None:
        """print() on rank 0 only."""
        if self.is_main:
            print(*args, **kwargs, flush=True)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """"cpu", "cuda", "cuda:1", a torch.device, or None (CUDA when available, else CPU) -> a device;
    a one-line ValueError when CUDA is asked for on a machine without it."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but this machine has no CUDA device")
    return dev


def setup_runtime(device: str | None = None) -> Runtime:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group.

    device: "cpu", "cuda", "cuda:1", or None for CUDA when available, else CPU.
    Backend: nccl on CUDA, gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world_size, local_rank)


def cleanup_runtime(rt: Runtime) -> None:
    """Leave the process group, if this process joined one."""
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(rt: Runtime) -> None:
    """Wait for every rank (a no-op when alone)."""
    if rt.distributed:
        dist.barrier()


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 matrix multiplies natively (AVX-512 BF16 or AMX).

    On AVX2-only machines bf16 is emulated and ~8x slower than fp32, so it must not be the default.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_description() -> str:
    """A short name of this CPU's vector capability for logs and benchmark tables, e.g.
    "AVX512 (native bf16)" or "AVX2"."""
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{capability} (native bf16)" if cpu_has_native_bf16() else capability


def int8_available() -> bool:
    """True when this torch build has a CPU engine for int8 dynamically quantised linears."""
    engines = torch.backends.quantized.supported_engines
    return any(e in engines for e in ("x86", "fbgemm"))


def choose_sampling_dtype(device: torch.device | str, requested: str = "auto",
                          native_bf16: bool | None = None, has_int8: bool | None = None) -> tuple[str, str]:
    """The dtype a sampler runs in, and why: -> (one of float32/bfloat16/int8, a short reason).

    auto: bfloat16 on CUDA with bf16 support and on CPUs with native bf16 (AVX-512 BF16 or AMX);
    on other CPUs (AVX2), where bf16 is emulated and ~8x slower than fp32, int8 weights when this
    torch has an int8 engine, else float32. `native_bf16` / `has_int8` override the detection (tests).
    A one-line ValueError for an unknown dtype or int8 off the CPU.
    """
    device = torch.device(device)
    if requested not in SAMPLING_DTYPES:
        raise ValueError(f"unknown dtype {requested!r}; choose one of {', '.join(SAMPLING_DTYPES)}")
    if requested != "auto":
        if requested == "int8" and device.type != "cpu":
            raise ValueError("int8 weights are a CPU path; use bfloat16 on CUDA")
        return requested, "as asked"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bfloat16", "CUDA with bf16"
        return "float32", "this GPU has no bf16"
    native_bf16 = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    if native_bf16:
        return "bfloat16", "this CPU has native bf16"
    has_int8 = int8_available() if has_int8 is None else has_int8
    if has_int8:
        return "int8", "this CPU has no native bf16; int8 weights stream 4x fewer bytes"
    return "float32", "this CPU has no native bf16 and torch has no int8 engine"


def choose_autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for training/inference on `device`: bf16 or None (= plain fp32).

    precision: "fp32", "bf16", or "auto" (bf16 on CUDA that supports it and on CPUs with native
    bf16; fp32 elsewhere).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def describe_precision(device: torch.device, dtype: torch.dtype | None, precision: str = "auto") -> str:
    """One line saying what precision was chosen and why, for the log."""
    name = "fp32" if dtype is None else "bf16 autocast"
    if precision != "auto":
        why = " (as asked)"
    elif device.type == "cuda":
        why = ""
    else:
        why = " (this CPU has native bf16)" if dtype is not None else " (this CPU has no native bf16)"
    return f"precision: {name} on {device}{why}"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for `dtype`, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed`: the only way randomness enters imagelm."""
    return torch.Generator(torch.device(device)).manual_seed(int(seed))
