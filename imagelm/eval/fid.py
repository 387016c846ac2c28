"""Sample-quality metrics from feature arrays, and the .npz files they travel in.

    fid(feats_a, feats_b)                    # Fréchet distance of two feature sets, [N, D] and [M, D]
    inception_score(logits)                  # exp(E KL(p(y|x) || p(y))), 10 splits, logits [N, C]
    precision_recall(real, fake, k=3)        # improved precision and recall (k-NN manifolds)

Statistics are accumulated in float64 over row chunks, so 50,000 x 2048 features never need a
second full-size copy. Files use the keys the common tools use: reference statistics hold `mu`
[D] and `sigma` [D, D] (pytorch-fid, the ADM evaluator); image batches hold `arr_0`, uint8
[N, H, W, 3] (the ADM evaluator's batches, LlamaGen's and ELM's sample files), with optional
class labels `arr_1` [N].
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from imagelm.atomic import atomic_file

CHUNK = 4096  # rows per chunk when accumulating statistics or distances


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, float64) of features [N, D] -> (mu [D], sigma [D, D])."""
    feats = _as_features(feats, "features")
    n, d = feats.shape
    if n < 2:
        raise ValueError(f"statistics need at least 2 feature rows, got {n}")
    mu = np.zeros(d, dtype=np.float64)
    for start in range(0, n, CHUNK):
        mu += feats[start:start + CHUNK].astype(np.float64).sum(0)
    mu /= n
    sigma = np.zeros((d, d), dtype=np.float64)
    for start in range(0, n, CHUNK):
        x = feats[start:start + CHUNK].astype(np.float64) - mu  # centred chunk [c, D]
        sigma += x.T @ x
    return mu, sigma / (n - 1)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix [D, D] via its eigendecomposition."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2): mu [D], sigma [D, D] -> float.

    |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^1/2). The trace term is computed as the sum of
    square roots of the eigenvalues of s1^1/2 s2 s1^1/2, a symmetric PSD matrix with the same
    spectrum as s1 s2: no complex parts to discard and no iteration to converge, unlike `sqrtm`.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be vectors of the same length, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be [{d}, {d}], got {sigma1.shape} and {sigma2.shape}")
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(value, 0.0))


def fid(feats_a, feats_b) -> float:
    """FID of two feature sets: [N, D] and [M, D] (numpy or torch) -> float."""
    feats_a, feats_b = _as_features(feats_a, "first features"), _as_features(feats_b, "second features")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature dimensions differ: {feats_a.shape[1]} vs {feats_b.shape[1]}")
    return frechet_distance(*feature_stats(feats_a), *feature_stats(feats_b))


def inception_score(logits, splits: int = 10, with_std: bool = False):
    """Inception Score of class logits [N, C]: mean over `splits` parts of exp(E_x KL(p(y|x) || p(y))).

    Returns the mean (float), or (mean, std) with with_std. Uniform logits give 1; confident
    predictions spread evenly over C classes give C. For the standard IS, pass the Inception's
    1008-way logits without the output bias (that is what `InceptionFeatures` returns).
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
    if not 1 <= splits <= len(logits):
        raise ValueError(f"splits must be in 1..{len(logits)} (the number of samples), got {splits}")
    log_p = torch.log_softmax(logits, dim=1)  # [N, C]
    scores = []
    for part in torch.tensor_split(log_p, splits):
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))  # log p(y) [C]
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(float(kl.exp()))
    mean = float(np.mean(scores))
    return (mean, float(np.std(scores))) if with_std else mean


def _kth_radius(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of [N, D] to its k-th nearest other row -> [N]."""
    radii = []
    for start in range(0, len(feats), CHUNK):
        d = torch.cdist(feats[start:start + CHUNK], feats)  # [c, N]
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # index 0 is the row itself
    return torch.cat(radii)


def _inside_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each row of points [M, D]: inside some ball (centres [N, D], radii [N])? -> bool [M]."""
    inside = []
    for start in range(0, len(points), CHUNK):
        d = torch.cdist(points[start:start + CHUNK], centres)  # [c, N]
        inside.append((d <= radii[None, :] * (1 + 1e-6)).any(dim=1))
    return torch.cat(inside)


def precision_recall(real_feats, fake_feats, k: int = 3, device: str | torch.device = "cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): real [N, D], fake [M, D] -> (P, R).

    Each set's manifold is the union of balls around its points, of radius the distance to the
    k-th nearest neighbour. Precision: fraction of fake points inside the real manifold; recall:
    fraction of real points inside the fake manifold. Cost O(N M D); distances go in row chunks.
    """
    real = torch.as_tensor(_as_features(real_feats, "real features"), dtype=torch.float32, device=device)
    fake = torch.as_tensor(_as_features(fake_feats, "fake features"), dtype=torch.float32, device=device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, "
                         f"got {len(real)} real and {len(fake)} fake")
    precision = _inside_manifold(fake, real, _kth_radius(real, k)).double().mean().item()
    recall = _inside_manifold(real, fake, _kth_radius(fake, k)).double().mean().item()
    return precision, recall


def _as_features(feats, what: str) -> np.ndarray:
    if torch.is_tensor(feats):
        feats = feats.detach().cpu().numpy()
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty array [N, D], got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return feats


# ---- files -------------------------------------------------------------------------------------

def write_npz_atomic(path, **arrays) -> Path:
    """np.savez to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    with atomic_file(path) as f:
        np.savez(f, **arrays)
    return path


def open_npz(path) -> dict:
    """All arrays of an .npz file as a dict; a one-line error naming the file when it is missing,
    truncated or not an .npz."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: not a readable .npz file (truncated or damaged?): {reason}") from None


def check_images(images: np.ndarray, path) -> np.ndarray:
    """Validate an image batch: uint8 [N, H, W, 3] with N >= 1; a one-line error naming `path`."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"{path}: arr_0 must be uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    return images


def load_images_npz(path) -> tuple[np.ndarray, np.ndarray | None]:
    """An ADM-style batch file -> (images uint8 [N, H, W, 3], labels int64 [N] or None)."""
    data = open_npz(path)
    if "arr_0" not in data:
        raise ValueError(f"{path}: no 'arr_0' array (expected an image batch uint8 [N, H, W, 3]); "
                         f"it holds {', '.join(data) or 'nothing'}")
    images = check_images(data["arr_0"], path)
    labels = data.get("arr_1")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images)):
        labels = None  # not per-image class labels (ADM batches may hold other things there)
    return images, None if labels is None else labels.astype(np.int64)


def save_images_npz(path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write an ADM-style batch: images uint8 [N, H, W, 3] as `arr_0` (labels [N] as `arr_1`), atomically."""
    check_images(np.asarray(images), path)
    arrays = {"arr_0": np.asarray(images)}
    if labels is not None:
        arrays["arr_1"] = np.asarray(labels, dtype=np.int64)
    return write_npz_atomic(path, **arrays)


def save_stats(path, mu, sigma, feats=None, feature_net: str = "") -> Path:
    """Reference statistics: `mu` [D], `sigma` [D, D], optional raw `feats` [N, D] (float32, for
    precision/recall) and `feature_net` (which network made them), atomically."""
    arrays = {"mu": np.asarray(mu), "sigma": np.asarray(sigma), "feature_net": np.array(feature_net)}
    if feats is not None:
        arrays["feats"] = np.asarray(feats, dtype=np.float32)
    return write_npz_atomic(path, **arrays)


def load_reference(path) -> dict:
    """Read a reference .npz: our stats, pytorch-fid's / ADM's `mu`+`sigma`, or an ADM image batch.

    Returns a dict with any of: "mu" [D], "sigma" [D, D], "feats" [N, D], "images" uint8 [N, H, W, 3],
    "feature_net" (str, "" when unknown). A one-line error names the file and what is wrong.
    """
    data = open_npz(path)
    ref = {"feature_net": str(data["feature_net"]) if "feature_net" in data else ""}
    if "mu" in data or "sigma" in data:
        if "mu" not in data or "sigma" not in data:
            raise ValueError(f"{path}: has only one of 'mu' and 'sigma'")
        mu, sigma = data["mu"], data["sigma"]
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{path}: 'mu' must be [D] and 'sigma' [D, D], got {mu.shape} and {sigma.shape}")
        ref.update(mu=mu.astype(np.float64), sigma=sigma.astype(np.float64))
    if "feats" in data:
        if data["feats"].ndim != 2:
            raise ValueError(f"{path}: 'feats' must be [N, D], got {data['feats'].shape}")
        ref["feats"] = data["feats"]
    if "arr_0" in data:
        ref["images"] = check_images(data["arr_0"], path)
    if not any(key in ref for key in ("mu", "feats", "images")):
        raise ValueError(f"{path}: neither statistics ('mu', 'sigma') nor images ('arr_0'); "
                         f"it holds {', '.join(data) or 'nothing'}")
    return ref
