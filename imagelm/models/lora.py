"""LoRA adapters on the trunk's linears: y = W x + (alpha / r) * B (A x), with W frozen.

`apply_lora(model, LoRAConfig(rank=8))` replaces each targeted `nn.Linear` (attention `wqkv`, `wo`;
SwiGLU `w1`, `w2`, `w3`) by a `LoRALinear` that holds the original module as `.base` (its weight keeps
its name under it: `...wqkv.base.weight`) beside `lora_a` [r, in] and `lora_b` [out, r]. B starts at
zero, so an adapted model computes exactly what its base does until B moves. The attention and MLP
code is untouched: the wrapper is called where the Linear was, so every forward (training, the
reference sampler, the engine) runs an unmerged model too. `merge_lora` folds B A into W and puts
plain Linears back: what `load_generator` does before sampling, and `imagelm export merge-lora` saves.

Our own small module rather than a library: HF peft would bring transformers and accelerate for a
hundred lines, and its adapter files are keyed for HF models, not for our checkpoints.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

LORA_TARGETS = ("attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


@dataclass(frozen=True)
class LoRAConfig:
    """Rank r of the adapters, their scale alpha / r (alpha default: r, scale 1) and which linears get
    one (module-name suffixes, default LORA_TARGETS). Saved in a LoRA checkpoint's config.json."""
    rank: int
    alpha: float | None = None
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"unknown LoRA target {unknown[0] if unknown else '(none)'!r}; choose from "
                             f"{', '.join(LORA_TARGETS)}")

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class LoRALinear(nn.Module):
    """x [..., in] -> base(x) + scale * (x A^T) B^T, [..., out]. base is frozen; A is Kaiming-uniform
    (as nn.Linear initialises its weight), B zero."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base, self.scale = base, scale
        base.requires_grad_(False)
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        if w.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5), generator=generator)

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight [out, in] (the adapter is not in it until merged)."""
        return self.base.weight

    def delta(self) -> torch.Tensor:
        """The adapter as a weight update: scale * B A, [out, in], float32."""
        return self.scale * (self.lora_b.float() @ self.lora_a.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype) * self.scale

    def merged(self) -> nn.Linear:
        """A plain Linear computing W + scale * B A (summed in float32, cast to W's dtype)."""
        w = self.base.weight
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_((w.float() + self.delta()).to(w.dtype))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _targets(model: nn.Module, targets: tuple[str, ...], kind: type) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, kind) and any(name == t or name.endswith("." + t) for t in targets)]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def apply_lora(model: nn.Module, config: LoRAConfig, generator: torch.Generator | None = None) -> list[str]:
    """Wrap every targeted Linear of `model` in a LoRALinear, in place -> the wrapped module names.

    The base weights are frozen; A is drawn from `generator` (seeded), B is zero, so the model's
    outputs are unchanged. A ValueError when nothing matches (or the model is adapted already)."""
    if is_lora(model):
        raise ValueError("this model has LoRA adapters already")
    names = _targets(model, config.targets, nn.Linear)
    if not names:
        raise ValueError(f"no linear layer named {', '.join(config.targets)} in this model")
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), config.rank, config.scale, generator))
    return names


def is_lora(model: nn.Module) -> bool:
    """Whether `model` holds LoRA adapters (not merged yet)."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain Linears back, in place -> model. The
    state dict then has the plain model's keys; outputs equal the unmerged model's up to rounding."""
    for name in _targets(model, LORA_TARGETS, LoRALinear):
        _replace(model, name, model.get_submodule(name).merged())
    return model
