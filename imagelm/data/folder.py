"""Image files on disk: an ImageFolder tree (root/class_name/*.png) or a JSONL file of image paths and captions.

Real folders hold broken files. A file that cannot be decoded (corrupt, truncated, missing) is skipped: one
warning names it, the next readable item is returned in its place, and `skipped` counts it, so an epoch never
dies halfway and the training loop can print `report()` at the end. (With DataLoader workers each worker keeps
its own count; the warnings still name every file.)
"""

import json
import os
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from .transforms import center_crop_arr, random_flip, to_tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _read_jsonl(path):
    """Parse a JSONL file of {"image": ..., "caption": ...} records. Out: list of (image str, caption str)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records.append((str(record["image"]), str(record["caption"])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with 'image' and 'caption' "
                                 f"({type(e).__name__}: {e})") from e
    return records


class _ImageFiles(Dataset):
    """A list of image files with a class id and a caption each; loads, crops, flips, skips bad files.

    Item: (image float32 [3, image_size, image_size] in [-1, 1], class_id int, caption str).
    transform: optional callable PIL image (RGB, original size) -> PIL image (image_size, image_size); the
    default is center_crop_arr. random_flip mirrors half the images, drawn from a torch.Generator seeded by seed.
    """

    def __init__(self, paths, class_ids, captions, class_names, image_size, transform, random_flip, seed):
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        self.paths = [str(p) for p in paths]
        self.class_ids = list(class_ids)
        self.captions = list(captions)
        self.class_names = list(class_names)
        self.image_size = image_size
        self.transform = transform
        self.random_flip = random_flip
        # Workers copy this generator, so flips repeat across workers; harmless for augmentation.
        self.generator = torch.Generator().manual_seed(seed)
        self.skipped = 0
        self.bad_files = []  # paths of the files skipped, in the order met
        self._bad = set()  # their indices, to skip them again without another warning

    def __len__(self):
        return len(self.paths)

    def _open(self, k):
        """Decode file k fully, or return None (and warn once) when it cannot be read."""
        if k in self._bad:
            return None
        try:
            with Image.open(self.paths[k]) as im:
                im.load()  # decode every byte now, so a truncated file fails here and not mid-transform
                return im.convert("RGB")
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... depending on the format
            self._bad.add(k)
            self.bad_files.append(self.paths[k])
            self.skipped += 1
            warnings.warn(f"skipping unreadable image {self.paths[k]} ({type(e).__name__}: {e})", stacklevel=3)
            return None

    def __getitem__(self, i):
        n = len(self.paths)
        i = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a data set of {n} images")
        # A bad file is replaced by the next readable one, so a training epoch never stops on it.
        for step in range(n):
            k = (i + step) % n
            pil = self._open(k)
            if pil is not None:
                break
        else:
            raise RuntimeError(f"none of the {n} image files could be read, e.g. {self.paths[0]}")
        pil = self.transform(pil) if self.transform is not None else center_crop_arr(pil, self.image_size)
        if self.random_flip:
            pil = random_flip(pil, self.generator)
        image = to_tensor(pil)  # [3, H, W] in [-1, 1]
        if image.shape != (3, self.image_size, self.image_size):
            raise ValueError(f"transform gave an image of shape {tuple(image.shape)}, expected "
                             f"(3, {self.image_size}, {self.image_size})")
        return image, self.class_ids[k], self.captions[k]

    def report(self):
        """One line for the end of a run: "skipped N unreadable files" (and which, if any)."""
        line = f"skipped {self.skipped} unreadable files"
        if self.bad_files:
            shown = ", ".join(self.bad_files[:5]) + (", ..." if len(self.bad_files) > 5 else "")
            line += f": {shown}"
        return line


class ImageFolderDataset(_ImageFiles):
    """Every image under root/<class_name>/ (searched recursively); class ids follow the sorted folder names.

    Item: (image float32 [3, image_size, image_size] in [-1, 1], class_id int, caption str).
    The caption is "a photo of a {class name}" (underscores read as spaces), unless `captions` gives one:
    a dict {path relative to root: caption}, or the path of a JSONL file of {"image", "caption"} records
    whose image paths are relative to root.
    """

    def __init__(self, root, image_size, transform=None, captions=None, random_flip=False, seed=0):
        root = Path(root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"image folder not found: {root}")
        if not root.is_dir():
            raise ValueError(f"expected a folder of class subfolders, got a file: {root}")
        class_names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_names:
            raise ValueError(f"no class folders in {root}: put images in {root}/<class_name>/")
        if captions is not None and not isinstance(captions, dict):
            captions = dict(_read_jsonl(captions))
        captions = {Path(k).as_posix(): v for k, v in (captions or {}).items()}

        paths, class_ids, texts = [], [], []
        for class_id, name in enumerate(class_names):
            for dirpath, dirnames, filenames in os.walk(root / name):
                dirnames.sort()  # walk in a fixed order, so indices are the same on every machine
                for filename in sorted(filter(_is_image, filenames)):
                    path = Path(dirpath) / filename
                    relative = path.relative_to(root).as_posix()
                    paths.append(path)
                    class_ids.append(class_id)
                    texts.append(captions.get(relative, f"a photo of a {name.replace('_', ' ')}"))
        if not paths:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under the class folders of {root}")
        self.root = root
        super().__init__(paths, class_ids, texts, class_names, image_size, transform, random_flip, seed)


class CaptionsDataset(_ImageFiles):
    """Images with captions listed in a JSONL file: one {"image": path, "caption": text} per line.

    Item: (image float32 [3, image_size, image_size] in [-1, 1], 0, caption str).
    Relative image paths are resolved against `root`, or the JSONL file's folder when root is None.
    """

    def __init__(self, jsonl_path, image_size, root=None, transform=None, random_flip=False, seed=0):
        jsonl_path = Path(jsonl_path).expanduser()
        if not jsonl_path.is_file():
            raise FileNotFoundError(f"captions file not found: {jsonl_path}")
        records = _read_jsonl(jsonl_path)
        if not records:
            raise ValueError(f"no records in captions file {jsonl_path}")
        base = Path(root).expanduser() if root is not None else jsonl_path.parent
        paths = [base / image for image, _ in records]  # an absolute image path ignores base
        self.jsonl_path = jsonl_path
        super().__init__(paths, [0] * len(records), [caption for _, caption in records], ["image"], image_size,
                         transform, random_flip, seed)
