"""How visible an edit's border is: the seam score.

An inpainted or outpainted picture with a seam changes abruptly where the regenerated pixels meet the
kept ones. The score compares the mean absolute difference of neighbouring pixels across the mask
border with the mean over all other neighbouring pairs of the same pictures: 1 means the border is
no sharper than the rest of the picture, above 1 a seam. Real pictures under the same mask give the
score a natural value to compare with (their objects' edges cross the border too).
"""
from __future__ import annotations

import numpy as np


def neighbour_differences(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, H, W, 3] -> (|x[:, :, j+1] - x[:, :, j]| [N, H, W-1], |x[:, i+1] - x[:, i]|
    [N, H-1, W]), each the mean over the colour channels, in 0..255."""
    x = np.asarray(images, dtype=np.float32)
    return np.abs(np.diff(x, axis=2)).mean(-1), np.abs(np.diff(x, axis=1)).mean(-1)


def seam_score(images: np.ndarray, mask: np.ndarray) -> float:
    """images uint8 [N, H, W, 3], mask [H, W] bool (True = regenerated) -> mean |difference| of the
    neighbouring pairs with one pixel on each side of the mask border, over the mean |difference| of
    every other neighbouring pair (both pictures' pairs pooled, so flat pictures weigh nothing)."""
    mask = np.asarray(mask, dtype=bool)
    if images.ndim != 4 or images.shape[1:3] != mask.shape:
        raise ValueError(f"images {images.shape} and mask {mask.shape} differ in size")
    across_x = mask[:, 1:] != mask[:, :-1]                                           # [H, W-1]
    across_y = mask[1:] != mask[:-1]                                                 # [H-1, W]
    if not (across_x.any() or across_y.any()):
        raise ValueError("the mask has no border")
    dx, dy = neighbour_differences(images)
    border = np.concatenate([dx[:, across_x].ravel(), dy[:, across_y].ravel()])
    rest = np.concatenate([dx[:, ~across_x].ravel(), dy[:, ~across_y].ravel()])
    return float(border.mean() / max(rest.mean(), 1e-6))
