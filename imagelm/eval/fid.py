"""Sample-quality metrics from feature arrays (the .npz files they travel in: imagelm.eval.batches).

    fid(feats_a, feats_b)                    # Fréchet distance of two feature sets, [N, D] and [M, D]
    inception_score(logits)                  # exp(E KL(p(y|x) || p(y))) over 5,000-image splits (ADM)
    precision_recall(real, fake, k=3)        # improved precision and recall (k-NN manifolds)

FID and sFID are the same Fréchet distance, of pool features [N, 2048] and of spatial features
[N, 2023] (imagelm.eval.inception). Statistics are accumulated in float64 over row chunks, so
50,000 x 2048 features never need a second full-size copy.
"""
from __future__ import annotations

import numpy as np
import torch

# re-exported: older callers (sampling/many) import the file helpers from here
from imagelm.eval.batches import (load_images_npz, load_reference, open_npz, save_images_npz,  # noqa: F401
                                  save_reference, write_npz_atomic)

CHUNK = 4096  # rows per chunk when accumulating statistics or distances
DISTANCE_ENTRIES = 2 ** 25  # at most this many pairwise distances held at once (128 MiB of float32)
ADM_SPLIT_SIZE = 5000  # the ADM evaluator's Inception Score split


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


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix [D, D] via its eigendecomposition."""
    vals, vecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2): mu [D], sigma [D, D] -> float.

    |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^1/2). The trace term is computed as the sum of
    square roots of the eigenvalues of s1^1/2 s2 s1^1/2, a symmetric PSD matrix with the same
    spectrum as s1 s2: no complex parts to discard and no iteration to converge, unlike `sqrtm`.
    In float64 with torch.linalg, which decomposed 2048-d matrices about twice as fast as numpy on
    our 2-core CPU; these two decompositions dominate an evaluation once the features exist.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be vectors of the same length, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be [{d}, {d}], got {sigma1.shape} and {sigma2.shape}")
    s1, s2 = torch.from_numpy(sigma1), torch.from_numpy(sigma2)
    root1 = _sqrt_psd(s1)
    inner = root1 @ s2 @ root1
    eig = torch.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(eig.clamp(min=0).sqrt().sum())
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(value, 0.0))


def fid(feats_a, feats_b) -> float:
    """FID of two feature sets: [N, D] and [M, D] (numpy or torch) -> float."""
    feats_a, feats_b = _as_features(feats_a, "first features"), _as_features(feats_b, "second features")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature dimensions differ: {feats_a.shape[1]} vs {feats_b.shape[1]}")
    return frechet_distance(*feature_stats(feats_a), *feature_stats(feats_b))


def inception_score(logits, splits: int | None = None, with_std: bool = False, split_size: int = ADM_SPLIT_SIZE):
    """Inception Score of class logits [N, C]: mean over splits of exp(E_x KL(p(y|x) || p(y))).

    The splits are ADM's by default: consecutive runs of `split_size` (5,000) images, the last one
    shorter when N is not a multiple (50,000 samples: 10 splits of 5,000). `splits=K` instead cuts
    the N images into K near-equal parts (our former default, K = 10). Returns the mean (float), or
    (mean, std) with with_std. Uniform logits give 1; confident predictions spread evenly over C
    classes give C. For the standard IS, pass the Inception's 1008-way logits without the output
    bias (what `InceptionFeatures` returns, and what ADM's softmax graph computes).
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be [N, C] with N >= 1, got shape {tuple(logits.shape)}")
    log_p = torch.log_softmax(logits, dim=1)  # [N, C]
    if splits is not None:
        if not 1 <= splits <= len(logits):
            raise ValueError(f"splits must be in 1..{len(logits)} (the number of samples), got {splits}")
        parts = torch.tensor_split(log_p, splits)
    else:
        if split_size < 1:
            raise ValueError(f"split_size must be >= 1, got {split_size}")
        parts = torch.split(log_p, split_size)
    scores = []
    for part in parts:
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))  # log p(y) [C]
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(float(kl.exp()))
    mean = float(np.mean(scores))
    return (mean, float(np.std(scores))) if with_std else mean


def _rows_per_chunk(columns: int) -> int:
    """Rows of a [rows, columns] distance block that keep it within DISTANCE_ENTRIES."""
    return max(1, min(CHUNK, DISTANCE_ENTRIES // max(columns, 1)))


def _kth_radius(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of [N, D] to its k-th nearest other row -> [N]."""
    radii, chunk = [], _rows_per_chunk(len(feats))
    for start in range(0, len(feats), chunk):
        d = torch.cdist(feats[start:start + chunk], feats)  # [c, N]
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # index 0 is the row itself
    return torch.cat(radii)


def _inside_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each row of points [M, D]: inside some ball (centres [N, D], radii [N])? -> bool [M]."""
    inside, chunk = [], _rows_per_chunk(len(centres))
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start:start + chunk], centres)  # [c, N]
        inside.append((d <= radii[None, :] * (1 + 1e-6)).any(dim=1))
    return torch.cat(inside)


def precision_recall(real_feats, fake_feats, k: int = 3, device: str | torch.device = "cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): real [N, D], fake [M, D] -> (P, R).

    Each set's manifold is the union of balls around its points, of radius the distance to the
    k-th nearest neighbour (k = 3 in the ADM evaluator). Precision: fraction of fake points inside
    the real manifold; recall: fraction of real points inside the fake manifold. Cost O((N + M)^2 D);
    exact, with distances in float32 row chunks of bounded memory (ADM's 10,000-row batches only
    chunk the same sums; it computes them in float16, falling back to float32 on overflow).
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
