"""The .npz files evaluation reads and writes: image batches and reference batches, in the ADM layout.

    images, labels = load_images_npz("samples.npz", warnings)   # arr_0 uint8 [N, H, W, 3], arr_1 [N]
    save_reference("ref.npz", mu, sigma, mu_s=mu_s, sigma_s=sigma_s, images=images, feats=feats)
    ref = load_reference("VIRTUAL_imagenet256_labeled.npz")      # ADM's own reference batch, whole

Layout (the ADM evaluator's, which LlamaGen, ELM and VAR report with): an image batch holds `arr_0`,
uint8 [N, H, W, 3] (optional class labels `arr_1` [N]); a reference batch adds the statistics `mu`
[2048], `sigma` [2048, 2048] of Inception's pool features and `mu_s` [2023], `sigma_s` [2023, 2023]
of its spatial features (sFID). ADM's evaluator always reads `arr_0` of the reference (precision and
recall need its features) and uses `mu`..`sigma_s` when `mu` is there, so a reference file needs all
five to work in it. Our files add `feats` (the pool features, float32 [N, 2048], so precision/recall
need no second pass over the images), `feature_net`, `data` and `split`; ADM ignores those keys.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from imagelm.atomic import atomic_file

ADM_SIZE = 256          # ADM's, LlamaGen's and VAR's ImageNet numbers are of 256x256 images
STAT_PAIRS = (("mu", "sigma"), ("mu_s", "sigma_s"))
META_KEYS = ("feature_net", "data", "split")


def write_npz_atomic(path, **arrays) -> Path:
    """np.savez to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    with atomic_file(path) as f:
        np.savez(f, **arrays)
    return path


def _npz(path):
    """The lazily read np.load handle of an .npz file; a one-line error naming a missing or broken file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npz file (truncated or damaged?): {_first_line(e)}") from None


def _read(z, key: str, path) -> np.ndarray:
    try:
        return z[key]
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{path}: array {key!r} cannot be read (truncated or damaged?): {_first_line(e)}") from None


def open_npz(path, keys=None) -> dict:
    """Arrays of an .npz file as a dict (all, or those of `keys` that it holds); a one-line error
    naming the file when it is missing, truncated or not an .npz."""
    with _npz(path) as z:
        return {key: _read(z, key, path) for key in z.files if keys is None or key in keys}


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


# ---- image batches ------------------------------------------------------------------------------

def check_images(images: np.ndarray, path) -> np.ndarray:
    """Validate an image batch: uint8 [N, H, W, 3] with N >= 1; a one-line error naming `path`."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"{path}: arr_0 must be uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    return images


def as_uint8_rgb(images: np.ndarray, path, warnings: list[str]) -> np.ndarray:
    """An image array as uint8 RGB [N, H, W, 3], saying in `warnings` (one line each) what was changed
    and why it matters: grey [N, H, W] / [N, H, W, 1] is repeated to 3 channels, RGBA loses alpha,
    integers or floats in 0..255 are rounded. Refuses (ValueError naming `path`) what cannot be
    converted without guessing: channels-first [N, 3, H, W], floats in [0, 1] or [-1, 1], values
    outside 0..255, NaN, an empty batch."""
    a = np.asarray(images)
    got = f"{a.dtype} {a.shape}"
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or len(a) == 0:
        raise ValueError(f"{path}: arr_0 must be images [N, H, W, 3], got {got}")
    if a.shape[-1] not in (1, 3, 4):
        hint = " (channels first? transpose to [N, H, W, 3])" if a.shape[1] in (1, 3, 4) else ""
        raise ValueError(f"{path}: arr_0 must be images [N, H, W, 3], got {got}{hint}")
    if a.shape[-1] == 1:
        warnings.append(f"{path}: grey images ({got}), repeated to 3 channels: the Inception sees RGB")
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        warnings.append(f"{path}: RGBA images ({got}), alpha dropped: the Inception sees RGB")
        a = a[..., :3]
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{path}: arr_0 must hold pixel values 0..255, got {got}")
    lo, hi = float(a.min()), float(a.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{path}: arr_0 holds NaN or infinite values")
    if np.issubdtype(a.dtype, np.floating) and hi <= 1:
        raise ValueError(f"{path}: arr_0 is {a.dtype} with values in [{lo:g}, {hi:g}], a [0, 1] or [-1, 1] scale: "
                         "convert to uint8 0..255 first")
    if lo < 0 or hi > 255:
        raise ValueError(f"{path}: arr_0 values run from {lo:g} to {hi:g}, outside 0..255")
    warnings.append(f"{path}: {a.dtype} pixels, rounded to uint8: saved PNGs and ADM batches are uint8, "
                    "and FID moves when the rounding does")
    return np.rint(a).astype(np.uint8)


def size_warning(images: np.ndarray, path) -> str | None:
    """A one-line warning when images [N, H, W, 3] are not 256x256 (ADM's ImageNet size), else None."""
    h, w = images.shape[1:3]
    if (h, w) == (ADM_SIZE, ADM_SIZE):
        return None
    return (f"{path}: {h}x{w} images, not {ADM_SIZE}x{ADM_SIZE}: the Inception resizes every image to 299x299, "
            f"so numbers at this size are not comparable with ADM's, LlamaGen's or VAR's ImageNet-256 tables")


def load_images_npz(path, warnings: list[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """An ADM-style batch file -> (images uint8 [N, H, W, 3], labels int64 [N] or None).

    With a `warnings` list, other image arrays are converted where that is unambiguous (see
    as_uint8_rgb) and each change is appended there; without one, anything but uint8 [N, H, W, 3] is
    an error."""
    with _npz(path) as z:
        if "arr_0" not in z.files:
            raise ValueError(f"{path}: no 'arr_0' array (expected an image batch uint8 [N, H, W, 3]); "
                             f"it holds {', '.join(z.files) or 'nothing'}")
        images = _read(z, "arr_0", path)
        labels = _read(z, "arr_1", path) if "arr_1" in z.files else None
    images = check_images(images, path) if warnings is None else as_uint8_rgb(images, path, warnings)
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


# ---- reference batches --------------------------------------------------------------------------

def save_reference(path, mu, sigma, *, mu_s=None, sigma_s=None, images=None, feats=None, feature_net: str = "",
                   data: str = "", split: str = "") -> Path:
    """A reference batch in ADM's layout, atomically: `mu` [D], `sigma` [D, D]; with the Inception also
    `mu_s` [S], `sigma_s` [S, S] (spatial, sFID); `arr_0` uint8 [N, H, W, 3] (the images, which ADM's
    evaluator needs); our `feats` float32 [N, D] (for precision/recall) and the names of the feature
    net, data set and split it was made from."""
    arrays = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    if (mu_s is None) != (sigma_s is None):
        raise ValueError("give both mu_s and sigma_s, or neither")
    if mu_s is not None:
        arrays.update(mu_s=np.asarray(mu_s, np.float64), sigma_s=np.asarray(sigma_s, np.float64))
    if images is not None:
        arrays["arr_0"] = check_images(np.asarray(images), path)
    if feats is not None:
        arrays["feats"] = np.asarray(feats, dtype=np.float32)
    for key, value in zip(META_KEYS, (feature_net, data, split)):
        arrays[key] = np.array(str(value))
    return write_npz_atomic(path, **arrays)


def load_reference(path, images: bool = True, warnings: list[str] | None = None) -> dict:
    """Read a reference .npz whole: an ADM reference batch (arr_0, mu, sigma, mu_s, sigma_s), ours
    (the same plus feats), pytorch-fid's mu + sigma, or a bare image batch (arr_0).

    Returns a dict with any of "mu" [D], "sigma" [D, D], "mu_s" [S], "sigma_s" [S, S], "feats" [N, D],
    "images" uint8 [N, H, W, 3] (read only when `images`; "has_images" says whether the file has
    them), and the strings "feature_net", "data", "split" ("" when unknown). Statistics are float64.
    A one-line error names the file and what is wrong.
    """
    with _npz(path) as z:
        keys = set(z.files)
        ref = {key: (str(_read(z, key, path)) if key in keys else "") for key in META_KEYS}
        for m, s in STAT_PAIRS:
            if (m in keys) != (s in keys):
                raise ValueError(f"{path}: has only one of {m!r} and {s!r}")
            if m in keys:
                mu, sigma = _read(z, m, path), _read(z, s, path)
                if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
                    raise ValueError(f"{path}: {m!r} must be [D] and {s!r} [D, D], got {mu.shape} and {sigma.shape}")
                ref[m], ref[s] = mu.astype(np.float64), sigma.astype(np.float64)
        if "feats" in keys:
            feats = _read(z, "feats", path)
            if feats.ndim != 2 or ("mu" in ref and feats.shape[1] != ref["mu"].shape[0]):
                raise ValueError(f"{path}: 'feats' must be [N, D] with D the length of 'mu', got {feats.shape}")
            ref["feats"] = feats
        ref["has_images"] = "arr_0" in keys
        if images and ref["has_images"]:
            raw = _read(z, "arr_0", path)
            ref["images"] = check_images(raw, path) if warnings is None else as_uint8_rgb(raw, path, warnings)
    if not any(key in ref for key in ("mu", "feats")) and not ref["has_images"]:
        raise ValueError(f"{path}: neither statistics ('mu', 'sigma') nor images ('arr_0'); "
                         f"it holds {', '.join(sorted(keys)) or 'nothing'}")
    return ref


def load_reference_images(path, warnings: list[str] | None = None) -> np.ndarray:
    """Only the images (arr_0) of a reference batch, uint8 [N, H, W, 3] (see load_images_npz)."""
    return load_images_npz(path, warnings)[0]
