"""The weights a sampler runs: the model in float32, bfloat16, or with int8 linear weights, with its
linears' weights laid out for the CPU's fastest small-batch matmul.

Which dtype a machine runs fastest is `imagelm.runtime.choose_sampling_dtype`'s choice; this module
makes a model of that dtype (a converted copy, so the caller's model is never changed).

On CPU, a decode step multiplies a few rows by every weight matrix, and MKL's GEMM behind F.linear
is slow at that shape: oneDNN with the weight reordered once into its blocked layout ran GPT-B's
step matrix multiplies 2.8 / 3.1 / 2.2x faster in float32 and 1.2 / 1.7 / 1.4x in bfloat16 at 2 / 8
/ 32 rows (docs/FACTS.md). `PackedLinear` is that linear; every sampler uses the same prepared model,
so their arithmetic is the same.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.float32}


PACK_HINT_ROWS = 16          # oneDNN's layout hint; one value everywhere so every sampler packs alike
PACK_LIMIT_BYTES = 4 << 30   # above this, packing would hold a second full copy of the weights


def packing_available() -> bool:
    """True when this torch has oneDNN's prepacked linear (x86 CPU builds)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8), PACK_HINT_ROWS)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(1, 8), w, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return True


@torch.library.custom_op("imagelm::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, packed_weight: torch.Tensor, out_features: int) -> torch.Tensor:
    """oneDNN's linear on a prepacked weight: x [M, in] -> [M, out_features]. An opaque op to
    torch.compile (inductor would otherwise insist on folding the weight as a constant)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, None, "none", [], "")


@packed_linear.register_fake
def _(x, packed_weight, out_features):
    return x.new_empty(x.shape[0], out_features)


class PackedLinear(nn.Module):
    """An inference-only nn.Linear whose weight oneDNN reordered once for fast small-batch CPU
    matmuls: x [..., in_features] -> [..., out_features], in the weight's dtype (float32 / bf16)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_HINT_ROWS)
        self.register_buffer("packed_weight", packed, persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone(), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """The packed weight (opaque layout: for dtype/device/size only)."""
        return self.packed_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if torch.compiler.is_compiling():
            y = packed_linear(x2, self.packed_weight, self.out_features)
        else:   # the same op, without the custom-op dispatch (a few microseconds, 61 times a GPT-B step)
            y = torch.ops.mkldnn._linear_pointwise(x2, self.packed_weight, None, "none", [], "")
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module) -> None:
    """Swap every nn.Linear of the trunk and output heads for a PackedLinear, in place."""
    for part in (model.trunk, model.output):
        for module in list(part.modules()):
            for name, child in list(module.named_children()):
                if type(child) is nn.Linear:
                    setattr(module, name, PackedLinear(child))


def is_packed(model: nn.Module) -> bool:
    return any(isinstance(m, PackedLinear) for m in model.modules())


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def dtype_name(model: nn.Module) -> str:
    """The sampling dtype `model`'s weights are in: int8, bfloat16, float32 (or torch's name of another)."""
    if is_int8(model):
        return "int8"
    dtype = next(model.parameters()).dtype
    return {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(dtype, str(dtype).replace("torch.", ""))


def is_int8(model: nn.Module) -> bool:
    """True when some of `model`'s linears hold dynamically quantised int8 weights."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def prepare_model(model: nn.Module, dtype: str, pack: bool | None = None) -> nn.Module:
    """`model` ready for sampling in `dtype`: float32 / bfloat16 weights, or int8 weights (dynamically
    quantised linears of the trunk and the output heads; activations stay float32), on CPU with
    packed linears (pack None: where oneDNN has them and the weights are under PACK_LIMIT_BYTES).

    The model itself, untouched, when nothing needs to change (its weights stay shared with the
    caller, so a sampler sees later updates); otherwise a converted copy in eval mode. A one-line
    ValueError for a dtype it cannot reach (int8 back to float).
    """
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(WEIGHT_DTYPES)}")
    if is_int8(model) or is_packed(model):   # prepared already: only as it is
        if dtype_name(model) != dtype:
            raise ValueError(f"this model's weights are prepared for sampling in {dtype_name(model)}; "
                             f"it cannot run in {dtype}")
        return model
    p = next(model.parameters())
    if pack is None:
        pack = (p.device.type == "cpu" and dtype != "int8" and weight_bytes(model) <= PACK_LIMIT_BYTES
                and packing_available())
    if p.dtype == WEIGHT_DTYPES[dtype] and dtype != "int8" and not pack:
        return model
    model = copy.deepcopy(model).to(WEIGHT_DTYPES[dtype]).eval()
    if dtype == "int8":
        with warnings.catch_warnings():   # the API works; it only points at torchao for the future
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic
            for name in ("trunk", "output"):
                quantize_dynamic(getattr(model, name), {nn.Linear}, dtype=torch.qint8, inplace=True)
    elif pack:
        pack_linears(model)
    return model
