"""Image transforms in PIL + numpy + torch only (no torchvision).

Conventions: a PIL image is RGB; a uint8 array is [H, W, 3] (or [N, H, W, 3]); a tensor image is float32
[3, H, W] (or [B, 3, H, W]) in [-1, 1]. 0 maps to -1 and 255 maps to 1, so to_uint8(to_tensor(x)) == x.
"""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imagelm.atomic import atomic_file


def center_crop_arr(pil_image, image_size):
    """Resize and center-crop a PIL image to image_size x image_size, the ADM / LlamaGen way.

    In: PIL image of any size (w, h). Out: RGB PIL image (image_size, image_size).
    """
    pil_image = pil_image.convert("RGB")
    # Halve with a box filter first: one big bicubic downscale aliases, repeated 2x box averaging does not.
    while min(pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(s // 2 for s in pil_image.size), resample=Image.BOX)
    scale = image_size / min(pil_image.size)
    pil_image = pil_image.resize(tuple(round(s * scale) for s in pil_image.size), resample=Image.BICUBIC)
    left = (pil_image.width - image_size) // 2
    top = (pil_image.height - image_size) // 2
    return pil_image.crop((left, top, left + image_size, top + image_size))


def random_flip(img, generator=None):
    """Flip an image left-right with probability 1/2, drawn from `generator` (a torch.Generator).

    In: PIL image, or tensor [..., H, W]. Out: the same type and shape, maybe mirrored.
    """
    if torch.rand(1, generator=generator).item() >= 0.5:
        return img
    if isinstance(img, Image.Image):
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.flip(img, dims=[-1])


def ten_crop(pil_image, crop_size):
    """The four corner crops and the center crop, then the mirror image of each.

    In: PIL image (w, h) with w, h >= crop_size. Out: list of 10 PIL images (crop_size, crop_size):
    top-left, top-right, bottom-left, bottom-right, center, then the same five flipped left-right.
    """
    w, h = pil_image.size
    if crop_size > w or crop_size > h:
        raise ValueError(f"ten_crop: crop_size {crop_size} is larger than the image ({w}x{h})")
    c = crop_size
    cx, cy = int(round((w - c) / 2)), int(round((h - c) / 2))
    boxes = [(0, 0), (w - c, 0), (0, h - c), (w - c, h - c), (cx, cy)]
    crops = [pil_image.crop((x, y, x + c, y + c)) for x, y in boxes]
    return crops + [crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for crop in crops]


def to_tensor(pil_or_uint8):
    """Convert a PIL image or a uint8 array to a float32 tensor in [-1, 1].

    In: PIL image (any mode, converted to RGB), or uint8 numpy [H, W] (grey), [H, W, 3] or [N, H, W, 3].
    Out: float32 tensor [3, H, W], or [N, 3, H, W] for a batch.
    """
    if isinstance(pil_or_uint8, Image.Image):
        arr = np.asarray(pil_or_uint8.convert("RGB"))
    else:
        arr = np.asarray(pil_or_uint8)
    if arr.dtype != np.uint8:
        raise TypeError(f"to_tensor expects uint8 pixels, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)  # grey -> RGB
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"to_tensor expects [H, W], [H, W, 3] or [N, H, W, 3], got shape {arr.shape}")
    # The dtype change copies, so the tensor owns writable memory (PIL's buffer is read-only).
    x = torch.from_numpy(arr.astype(np.float32)).div_(127.5).sub_(1.0)
    return x.movedim(-1, -3).contiguous()  # [..., H, W, 3] -> [..., 3, H, W]


def to_uint8(images):
    """Convert tensor images in [-1, 1] to uint8 pixels (values outside are clipped).

    In: tensor [B, 3, H, W] (or [3, H, W]). Out: numpy uint8 [B, H, W, 3] (or [H, W, 3]).
    """
    x = images.detach().to("cpu", torch.float32)
    x = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).numpy()  # [..., 3, H, W] -> [..., H, W, 3]


def make_grid(images, nrow=8, padding=2, pad_value=255):
    """Tile images into one picture, `nrow` images per row, `padding` pixels around and between them.

    In: tensor [B, 3, H, W] in [-1, 1]. Out: numpy uint8 [rows*(H+p)+p, ncol*(W+p)+p, 3] with
    ncol = min(nrow, B), rows = ceil(B / ncol).
    """
    pixels = to_uint8(images)  # [B, H, W, 3]
    if pixels.ndim != 4 or len(pixels) == 0:
        raise ValueError(f"make_grid expects a non-empty batch [B, 3, H, W], got shape {tuple(images.shape)}")
    b, h, w, _ = pixels.shape
    ncol = min(nrow, b)
    rows = math.ceil(b / ncol)
    p = padding
    grid = np.full((rows * (h + p) + p, ncol * (w + p) + p, 3), pad_value, dtype=np.uint8)
    for k in range(b):
        y = p + (k // ncol) * (h + p)
        x = p + (k % ncol) * (w + p)
        grid[y:y + h, x:x + w] = pixels[k]
    return grid


def save_grid(images, path, nrow=8, padding=2):
    """Write images as one PNG grid (see make_grid). Atomic: a temp file in the same folder, then os.replace,
    so a reader never sees a half-written PNG.

    In: tensor [B, 3, H, W] in [-1, 1], a path. Out: the path written (Path).
    """
    path = Path(path)
    grid = make_grid(images, nrow=nrow, padding=padding)
    with atomic_file(path) as f:
        Image.fromarray(grid).save(f, format="PNG")
    return path
