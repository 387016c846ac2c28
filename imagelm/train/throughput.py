"""Training throughput for the log: tokens/s, an MFU estimate, memory per rank; written to stdout,
`metrics.jsonl` in the run directory, and TensorBoard (`--log tensorboard`, when installed).

MFU (model FLOPs utilisation) = achieved model FLOPs / the device's peak. Model FLOPs per token
follow the PaLM appendix: 6 x (parameters that multiply each token: blocks + output heads;
embedding lookups are free) + 12 x layers x dim x context (attention scores and mixing), for
forward + backward. Activation recompute is not counted (it is overhead, not model work). The peak
is `--peak-tflops`, or the dense bf16 tensor-core peak of a known GPU; on a CPU, or in fp32, MFU
is "n/a" unless a peak is given.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in TFLOPS, matched in
# this order against torch.cuda.get_device_name (so "H100 PCIe" is found before "H100").
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),      # SXM / HBM3
    ("GH200", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def model_flops_per_token(model: nn.Module) -> float:
    """Training FLOPs (forward + backward) per sequence position of a generator: 6 N + 12 l d T."""
    config = model.config
    dense = sum(p.numel() for p in model.trunk.layers.parameters()) + sum(p.numel() for p in model.output.parameters())
    context = config.cls_token_num + config.seq_len
    return 6.0 * dense + 12.0 * config.n_layer * config.dim * context


def peak_flops(device: torch.device, compute_dtype: torch.dtype | None, peak_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device: `peak_tflops` when given, else a known GPU's bf16 peak when
    computing in bf16; None (MFU n/a) otherwise."""
    if peak_tflops is not None:
        if peak_tflops <= 0:
            raise ValueError(f"--peak-tflops must be > 0, got {peak_tflops}")
        return peak_tflops * 1e12
    if device.type != "cuda" or compute_dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def memory_bytes(device: torch.device) -> int:
    """This process's memory: CUDA peak allocated on `device`, else the resident set size (RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def memory_per_rank(device: torch.device, world_size: int) -> list[int]:
    """Every rank's `memory_bytes` (a collective when world_size > 1): [world_size]."""
    mine = torch.tensor([memory_bytes(device)], dtype=torch.float64,
                        device=device if device.type == "cuda" else "cpu")
    if world_size == 1:
        return [int(mine.item())]
    every = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(every, mine)
    return [int(t.item()) for t in every]


class Throughput:
    """Tokens/s and MFU over the steps since the last `read` (the device synchronised at both ends).

    tokens_per_step: global tokens (all ranks) per optimizer step; flops_per_token: model FLOPs per
    token (0 for models without an estimate); peak: one device's FLOP/s or None."""

    def __init__(self, device: torch.device, tokens_per_step: int, flops_per_token: float = 0.0,
                 peak: float | None = None, world_size: int = 1):
        self.device, self.tokens_per_step = device, tokens_per_step
        self.flops_per_token, self.peak, self.world_size = flops_per_token, peak, world_size
        self.steps, self._elapsed = 0, 0.0
        self._t = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step(self) -> None:
        self.steps += 1

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (previews, checkpoints) is not counted as training time."""
        self._elapsed += self._now() - self._t
        try:
            yield
        finally:
            self._t = self._now()

    def read(self) -> dict:
        """{"steps", "seconds", "tokens_per_s" (global), "mfu" (fraction or None)}, then restart."""
        now = self._now()
        seconds = max(1e-9, self._elapsed + now - self._t)
        tokens_per_s = self.steps * self.tokens_per_step / seconds
        mfu = None
        if self.peak and self.flops_per_token:
            mfu = tokens_per_s * self.flops_per_token / (self.peak * self.world_size)
        record = {"steps": self.steps, "seconds": seconds, "tokens_per_s": tokens_per_s, "mfu": mfu}
        self.steps, self._elapsed, self._t = 0, 0.0, now
        return record


def format_record(step: int, total: int, record: dict, unit: str = "tok") -> str:
    """One log line: step, loss, lr, speed, MFU, memory per rank (the largest, and how many ranks)."""
    mem = record.get("mem_per_rank") or [0]
    mfu = "n/a" if record.get("mfu") is None else f"{record['mfu']:.1%}"
    parts = [f"step {step}/{total}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.1e}",
             f"{record['tokens_per_s']:,.0f} {unit}/s", f"MFU {mfu}",
             f"mem {max(mem) / 2 ** 30:.2f} GiB/rank" + (f" (max of {len(mem)})" if len(mem) > 1 else "")]
    return "  ".join(parts)


def require_tensorboard():
    """The SummaryWriter class, or a one-line ValueError saying how to install it."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--log tensorboard needs the tensorboard package: pip install 'imagelm[tensorboard]' "
                         "(or pip install tensorboard)") from None
    return SummaryWriter


class MetricsLog:
    """Where log records go on the main process: `out/metrics.jsonl` (one JSON object a line) and,
    with log == "tensorboard", scalars under `out/tensorboard/`. Other ranks write nothing."""

    def __init__(self, out: str | Path, enabled: bool, log: str = "stdout"):
        if log not in ("stdout", "tensorboard"):
            raise ValueError(f"unknown --log {log!r}; choose stdout or tensorboard")
        writer_cls = require_tensorboard() if log == "tensorboard" else None  # every rank checks: all fail alike
        self.enabled = enabled
        self.path = Path(out) / "metrics.jsonl"
        self.writer = writer_cls(str(Path(out) / "tensorboard")) if (writer_cls and enabled) else None

    def write(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(f"train/{key}", value, step)
            if record.get("mem_per_rank"):
                self.writer.add_scalar("train/mem_gib_max_rank", max(record["mem_per_rank"]) / 2 ** 30, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
