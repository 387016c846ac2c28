"""Prompt accuracy on `shapes`: is the generated image what its caption (attribute record) says?

For each image and its record {"background", "shapes": [{"kind", "color", "size", "position"}]}:
- background: the palette colour nearest to the median of the border pixels;
- colour of shape k: the palette colour nearest to the median of the non-background pixels inside
  the box where that size and position put the shape;
- position of shape k: the centroid of the pixels of its colour (nearest palette colour; when two
  shapes share a colour, each takes the pixels nearer its own expected centre), matched to the
  nearest of the 9 places a shape of that size can sit;
- kind: the built-in classifier's prediction for the image against the first shape's kind (the
  data set's class), when a classifier is given.
Each is the fraction of images (or shapes) measured right.
"""
from __future__ import annotations

import numpy as np

from imagelm.data.shapes import COLORS, POSITIONS, SHAPE_KINDS, shape_box

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in _NAMES], dtype=np.float64)  # [9, 3]
BACKGROUND_DISTANCE = 60.0  # RGB distance beyond which a pixel is not background


def nearest_colors(pixels: np.ndarray) -> np.ndarray:
    """Index into the palette (`COLORS` order) of the nearest colour of each pixel: [..., 3] -> [...]."""
    d = ((pixels[..., None, :].astype(np.float64) - _PALETTE) ** 2).sum(-1)  # [..., 9]
    return d.argmin(-1)


def _nearest_name(rgb: np.ndarray) -> str:
    return _NAMES[int(nearest_colors(rgb[None])[0])]


def measure_image(image: np.ndarray, attrs: dict) -> dict:
    """One uint8 image [H, W, 3] against its attribute record -> {"background": bool, "color": [bool per
    shape], "position": [bool per shape]} (see the module doc for how each is measured)."""
    h, w, _ = image.shape
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float64)  # [2(H+W), 3]
    bg_rgb = np.median(border, axis=0)
    background = _nearest_name(bg_rgb)
    foreground = np.sqrt(((image.astype(np.float64) - bg_rgb) ** 2).sum(-1)) > BACKGROUND_DISTANCE  # [H, W]
    labels = nearest_colors(image)                                                              # [H, W]
    ys, xs = np.mgrid[0:h, 0:w]
    xs, ys = (xs + 0.5) / w, (ys + 0.5) / h  # pixel centres as fractions of the side
    shapes = attrs["shapes"]
    centres = [shape_box(s["size"], s["position"])[:2] for s in shapes]
    colors, positions = [], []
    for k, shape in enumerate(shapes):
        cx, cy, half = shape_box(shape["size"], shape["position"])
        box = (abs(xs - cx) <= half) & (abs(ys - cy) <= half) & foreground
        colors.append(bool(box.any()) and _nearest_name(np.median(image[box].astype(np.float64), 0)) == shape["color"])
        mask = (labels == _NAMES.index(shape["color"])) & foreground
        for j, other in enumerate(shapes):  # a shared colour: keep the pixels nearer this shape's centre
            if j != k and other["color"] == shape["color"]:
                mine = (xs - cx) ** 2 + (ys - cy) ** 2
                theirs = (xs - centres[j][0]) ** 2 + (ys - centres[j][1]) ** 2
                mask &= mine <= theirs
        if not mask.any():
            positions.append(False)
            continue
        px, py = xs[mask].mean(), ys[mask].mean()
        places = {p: shape_box(shape["size"], p)[:2] for p in POSITIONS}
        guess = min(places, key=lambda p: (places[p][0] - px) ** 2 + (places[p][1] - py) ** 2)
        # Sizes that push shapes inwards make some places coincide: any place at the same spot counts.
        positions.append(places[guess] == places[shape["position"]])
    return {"background": background == attrs["background"], "color": colors, "position": positions}


def prompt_accuracy(images, attributes: list[dict], classifier=None) -> dict:
    """Fraction correct per attribute: images uint8 [N, H, W, 3], N attribute records ->
    {"background", "color", "position" (over all shapes), "kind" (when a classifier is given),
    "images": N}."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    if len(attributes) != len(images):
        raise ValueError(f"{len(images)} images but {len(attributes)} attribute records")
    results = [measure_image(img, attrs) for img, attrs in zip(images, attributes)]
    out = {"background": float(np.mean([r["background"] for r in results])),
           "color": float(np.mean([c for r in results for c in r["color"]])),
           "position": float(np.mean([p for r in results for p in r["position"]])),
           "images": len(images)}
    if classifier is not None:
        from imagelm.eval.classifier import predict
        names = classifier.meta.get("class_names", SHAPE_KINDS)
        wanted = np.array([names.index(a["shapes"][0]["kind"]) for a in attributes])
        out["kind"] = float((predict(classifier, images) == wanted).mean())
    return out
