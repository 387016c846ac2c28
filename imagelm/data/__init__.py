"""Data sets: every item is (image float32 [3, H, W] in [-1, 1], class_id int, caption str), and every data
set has `class_names` (index = class id) and `image_size`.

    ds = build_dataset("shapes", image_size=32)            # procedural, 8 classes, exact captions
    ds = build_dataset("shapes-simple", image_size=32)     # one large centred shape: an easy CPU demo
    ds = build_dataset("digits", image_size=32)            # scikit-learn's real handwritten digits
    ds = build_dataset("path/to/folder", image_size=256)   # root/class_name/*.jpg
    ds = build_dataset("captions.jsonl", image_size=256)   # {"image": path, "caption": text} per line
"""

from pathlib import Path

from torch.utils.data import Dataset

from .digits import DigitsDataset
from .folder import CaptionsDataset, ImageFolderDataset
from .shapes import (COLORS, POSITIONS, SHAPE_KINDS, SIZES, ShapesDataset, caption_from_attributes,
                     render_attributes)
from .transforms import center_crop_arr, make_grid, random_flip, save_grid, ten_crop, to_tensor, to_uint8

DATASET_NAMES = ("shapes", "shapes-simple", "digits")

# The easy variant: one large shape at the center, 4 shape colours on 3 background colours (96 looks in all).
SHAPES_SIMPLE = dict(max_shapes=1, sizes=["large"], positions=["center"],
                     colors=["red", "green", "blue", "yellow"], background_colors=["black", "white", "gray"])

# Added to the seed of a test split, so held-out shapes are other images than the training ones.
TEST_SEED_OFFSET = 1_000_003


class _Head(Dataset):
    """The first `length` items of a data set, keeping its class_names and image_size."""

    def __init__(self, dataset, length):
        self.dataset = dataset
        self.length = min(length, len(dataset))
        self.class_names = dataset.class_names
        self.image_size = dataset.image_size

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for a data set of {self.length} items")
        return self.dataset[i % self.length]


def build_dataset(name, image_size=32, split="train", seed=0, length=None, root=None, flip=False):
    """A data set from its name: "shapes", "shapes-simple", "digits", a folder (ImageFolderDataset) or a
    .jsonl captions file (CaptionsDataset, relative paths resolved against `root` or the file's folder).

    split: "train" or "test" ("all" too for digits). For shapes, test draws from another seed, and length
    defaults to 10000 (train) / 1000 (test). For the other sources, length (if given) keeps the first items,
    and files are randomly flipped when flip=True
    (training loops flip batches themselves, from their own seeded generator, and leave this off). Out: a Dataset of (image [3, H, W], class_id, caption).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if length is not None and (not isinstance(length, int) or length < 1):
        raise ValueError(f"length must be an int >= 1 or None, got {length!r}")

    if name in ("shapes", "shapes-simple"):
        if split == "all":
            raise ValueError(f"{name} has splits 'train' and 'test', not 'all'")
        options = SHAPES_SIMPLE if name == "shapes-simple" else {}
        if length is None:
            length = 10000 if split == "train" else 1000
        shape_seed = seed if split == "train" else seed + TEST_SEED_OFFSET
        return ShapesDataset(image_size=image_size, length=length, seed=shape_seed, **options)

    if name == "digits":
        dataset = DigitsDataset(image_size=image_size, split=split, seed=seed)
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            dataset = ImageFolderDataset(path, image_size, random_flip=flip, seed=seed)
        elif path.is_file() and path.suffix == ".jsonl":
            dataset = CaptionsDataset(path, image_size, root=root, random_flip=flip, seed=seed)
        else:
            raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASET_NAMES)}, "
                             f"an existing folder of class subfolders, or an existing .jsonl captions file")
    return _Head(dataset, length) if length is not None else dataset


__all__ = [
    "DATASET_NAMES", "SHAPES_SIMPLE", "build_dataset",
    "ShapesDataset", "DigitsDataset", "ImageFolderDataset", "CaptionsDataset",
    "SHAPE_KINDS", "COLORS", "SIZES", "POSITIONS", "caption_from_attributes", "render_attributes",
    "center_crop_arr", "random_flip", "ten_crop", "to_tensor", "to_uint8", "make_grid", "save_grid",
]
