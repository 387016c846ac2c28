"""Procedural shapes: a solid background with one or two coloured shapes, each image with an exact caption.

Item i is a pure function of (seed, i): its attributes are drawn from numpy.random.default_rng([seed, i])
and rendered with PIL at 4x, then box-downsampled (anti-aliasing for free). So an index gives the same
pixels in any access order, in any DataLoader worker, in any run. The attributes stay a plain dict, and
the caption is generated from them, so every caption is exactly true of its image.

    ds = ShapesDataset(image_size=32)
    image, class_id, caption = ds[0]   # [3, 32, 32] in [-1, 1], kind of the first shape, "a small red ..."
"""

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from .transforms import to_tensor

# The class ids of the full data set, in this fixed order.
SHAPE_KINDS = ["circle", "square", "triangle", "star", "diamond", "cross", "hexagon", "heart"]

# Clearly distinct colours (RGB). The background is always a different colour from every shape.
COLORS = {
    "red": (220, 38, 38),
    "green": (34, 170, 68),
    "blue": (37, 78, 225),
    "yellow": (245, 215, 30),
    "orange": (245, 135, 25),
    "purple": (140, 55, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}

# Side of a shape's bounding box, as a fraction of the image side.
SIZES = {"small": 0.3, "medium": 0.45, "large": 0.65}

# Cell centres (x, y) of a 3x3 grid, as fractions of the side, and how a caption says each.
POSITIONS = {
    "top left": (1 / 6, 1 / 6), "top": (1 / 2, 1 / 6), "top right": (5 / 6, 1 / 6),
    "left": (1 / 6, 1 / 2), "center": (1 / 2, 1 / 2), "right": (5 / 6, 1 / 2),
    "bottom left": (1 / 6, 5 / 6), "bottom": (1 / 2, 5 / 6), "bottom right": (5 / 6, 5 / 6),
}
POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "at the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}

SUPERSAMPLE = 4  # draw at 4x, then average 4x4 blocks
MARGIN = 0.02  # shapes keep this far (fraction of the side) from the image border...
GAP = 0.02  # ...and their bounding boxes keep this far from each other


def _fit_unit_box(points):
    """Centre points [K, 2] and scale them so the longer side of their bounding box spans [-1, 1]."""
    pts = np.asarray(points, dtype=np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (pts - (lo + hi) / 2) * (2 / (hi - lo).max())


def _unit_polygons():
    """Every kind but the circle as a polygon [K, 2] inside [-1, 1]^2, y pointing down (image rows)."""
    t10 = np.arange(10) * (2 * np.pi / 10) - np.pi / 2  # start at the top
    r10 = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)  # alternate outer and inner star points
    t6 = np.arange(6) * (2 * np.pi / 6)
    a = 0.32  # half-width of a cross arm
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    heart_x = 16 * np.sin(t) ** 3
    heart_y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # minus: y down
    polygons = {
        "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        "triangle": [(0, -1), (1, 1), (-1, 1)],
        "star": np.stack([r10 * np.cos(t10), r10 * np.sin(t10)], axis=1),
        "diamond": [(0, -1), (0.72, 0), (0, 1), (-0.72, 0)],
        "cross": [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
                  (-1, -a), (-a, -a)],
        "hexagon": np.stack([np.cos(t6), np.sin(t6)], axis=1),
        "heart": np.stack([heart_x, heart_y], axis=1),
    }
    return {kind: _fit_unit_box(points) for kind, points in polygons.items()}


_UNIT_POLYGONS = _unit_polygons()


def shape_box(size, position):
    """Where a shape lands: (cx, cy, half) as fractions of the side. A shape too big for its grid cell is
    pushed inwards so it stays whole inside the image."""
    half = SIZES[size] / 2
    lo, hi = half + MARGIN, 1 - half - MARGIN
    x, y = POSITIONS[position]
    return min(max(x, lo), hi), min(max(y, lo), hi), half


def _boxes_overlap(a, b):
    """Whether two placements (size, position) come closer than GAP."""
    ax, ay, ah = shape_box(*a)
    bx, by, bh = shape_box(*b)
    reach = ah + bh + GAP
    return abs(ax - bx) < reach and abs(ay - by) < reach


def caption_from_attributes(attrs):
    """The exact caption of an attribute record.

    In: {"background": "blue", "shapes": [{"kind", "color", "size", "position"}, ...]}.
    Out: "a small red triangle at the top left on a blue background"; two shapes are joined with " and ".
    """
    parts = [f"a {s['size']} {s['color']} {s['kind']} {POSITION_PHRASES[s['position']]}" for s in attrs["shapes"]]
    return f"{' and '.join(parts)} on a {attrs['background']} background"


def render_attributes(attrs, image_size):
    """Draw an attribute record (see caption_from_attributes).

    In: attrs dict, image_size int. Out: numpy uint8 [image_size, image_size, 3].
    """
    big = image_size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), COLORS[attrs["background"]])
    draw = ImageDraw.Draw(img)
    for shape in attrs["shapes"]:
        cx, cy, half = shape_box(shape["size"], shape["position"])
        cx, cy, half = cx * big, cy * big, half * big  # fractions -> pixels at 4x
        color = COLORS[shape["color"]]
        if shape["kind"] == "circle":
            draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=color)
        else:
            points = _UNIT_POLYGONS[shape["kind"]] * half + (cx, cy)  # [K, 2] in pixels
            draw.polygon(points.ravel().tolist(), fill=color)
    return np.asarray(img.reduce(SUPERSAMPLE))  # box filter: each output pixel is the mean of a 4x4 block


def _check_names(what, names, valid):
    """Validate an option restricting choices: None means all of `valid`; else a non-empty list of known names."""
    if names is None:
        return list(valid)
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what} must be a list of names, e.g. {list(valid)[:2]}, got {names!r}")
    names = list(names)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid {what}: {', '.join(valid)}")
    if not names:
        raise ValueError(f"{what} must not be empty; valid {what}: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} has duplicates: {names}")
    return names


class ShapesDataset(Dataset):
    """Procedural shapes with class = kind of the first shape and an exact caption.

    Item: (image float32 [3, image_size, image_size] in [-1, 1], class_id int, caption str).
    kinds, sizes, positions, colors, background_colors restrict the choices (lists of names; None = all).
    class_names is `kinds` (the full SHAPE_KINDS when None), and class ids index into it.
    With two shapes, their placement is drawn uniformly from the (size, position) pairs whose boxes do not
    touch, so neither hides the other; large shapes therefore appear mostly alone or with a small one.
    """

    def __init__(self, image_size=32, length=10000, seed=0, max_shapes=2, kinds=None, sizes=None,
                 positions=None, colors=None, background_colors=None):
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an int >= 1, got {length!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if max_shapes not in (1, 2):
            raise ValueError(f"max_shapes must be 1 or 2, got {max_shapes!r}")
        self.image_size = image_size
        self.length = length
        self.seed = seed
        self.max_shapes = max_shapes
        self.kinds = _check_names("kinds", kinds, SHAPE_KINDS)
        self.sizes = _check_names("sizes", sizes, SIZES)
        self.positions = _check_names("positions", positions, POSITIONS)
        self.colors = _check_names("colors", colors, COLORS)
        self.background_colors = _check_names(
            "background_colors", self.colors if background_colors is None else background_colors, COLORS)
        self.class_names = list(self.kinds)
        self._class_ids = {kind: k for k, kind in enumerate(self.kinds)}

        # For each background, the shape colours allowed on it (never the background itself).
        self._shape_colors = {bg: [c for c in self.colors if c != bg] for bg in self.background_colors}
        lonely = [bg for bg, cs in self._shape_colors.items() if not cs]
        if lonely:
            raise ValueError(f"background {lonely} leaves no shape colour: colors={self.colors} must hold "
                             f"a colour other than each background")

        # All ordered two-shape placements ((size, position), (size, position)) that keep the shapes apart.
        places = [(s, p) for s in self.sizes for p in self.positions]
        self._pairs = [(a, b) for a in places for b in places if a[1] != b[1] and not _boxes_overlap(a, b)]
        if max_shapes == 2 and not self._pairs:
            raise ValueError(f"two shapes cannot be placed apart with sizes={self.sizes} and "
                             f"positions={self.positions}; pass max_shapes=1 or allow more sizes/positions")

    def __len__(self):
        return self.length

    def _check_index(self, i):
        i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for ShapesDataset of length {self.length}")
        return i

    def attributes(self, i):
        """The attribute record of item i: a plain, JSON-serialisable dict
        {"background": str, "shapes": [{"kind": str, "color": str, "size": str, "position": str}, ...]}."""
        i = self._check_index(i)
        rng = np.random.default_rng([self.seed, i])
        # One draw of uniforms, each with a fixed role: cheaper than one rng call per choice.
        # u[0] count, u[1] background, u[2:4] placement, u[4 + 2k] kind and u[5 + 2k] colour of shape k.
        u = rng.random(8)

        def pick(options, k):
            return options[int(u[k] * len(options))]

        n_shapes = 1 + int(u[0] * self.max_shapes)
        background = pick(self.background_colors, 1)
        if n_shapes == 1:
            placements = [(pick(self.sizes, 2), pick(self.positions, 3))]
        else:
            placements = list(pick(self._pairs, 2))
        shape_colors = self._shape_colors[background]
        shapes = [{"kind": pick(self.kinds, 4 + 2 * k), "color": pick(shape_colors, 5 + 2 * k),
                   "size": size, "position": position} for k, (size, position) in enumerate(placements)]
        return {"background": background, "shapes": shapes}

    def caption(self, i):
        """The caption of item i (str)."""
        return caption_from_attributes(self.attributes(i))

    def class_id(self, i):
        """The class of item i: index in class_names of the first shape's kind (int)."""
        return self._class_ids[self.attributes(i)["shapes"][0]["kind"]]

    def images_uint8(self, i):
        """Pixels of item i: numpy uint8 [image_size, image_size, 3]."""
        return render_attributes(self.attributes(i), self.image_size)

    def render_batch(self, indices):
        """Pixels of many items at once, e.g. to cache a data set: numpy uint8 [N, image_size, image_size, 3]."""
        indices = list(indices)
        out = np.empty((len(indices), self.image_size, self.image_size, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            out[k] = self.images_uint8(i)
        return out

    def __getitem__(self, i):
        attrs = self.attributes(i)
        image = to_tensor(render_attributes(attrs, self.image_size))  # [3, H, W] in [-1, 1]
        return image, self._class_ids[attrs["shapes"][0]["kind"]], caption_from_attributes(attrs)
