"""Real handwritten digits: the 1,797 8x8 images that ship with scikit-learn (`load_digits`), upscaled.

Small, real, offline: a sanity check on real handwriting for a tokenizer or generator that works on shapes.
The digits are white ink on black, as in MNIST.
"""

import functools

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .transforms import to_tensor

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEST_FRACTION = 0.2


@functools.lru_cache(maxsize=1)
def load_digit_pixels():
    """All of scikit-learn's digits, loaded once per process.

    Out: (pixels uint8 numpy [1797, 8, 8] in 0..255, labels int64 numpy [1797]).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the digits data set ships with scikit-learn: pip install scikit-learn") from e
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # ink levels 0..16 -> 0..255
    return pixels, digits.target.astype(np.int64)


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits, bicubic-upscaled to image_size and repeated over RGB.

    Item: (image float32 [3, image_size, image_size] in [-1, 1], digit int, "a handwritten digit seven").
    split: "train" (80%), "test" (the other 20%) or "all"; the split is a permutation drawn from `seed`,
    so train and test must be built with the same seed to stay disjoint.
    """

    def __init__(self, image_size=32, split="train", seed=0):
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        pixels, labels = load_digit_pixels()
        n = len(labels)
        if split == "all":
            indices = np.arange(n)
        else:
            perm = np.random.default_rng(seed).permutation(n)
            n_test = round(TEST_FRACTION * n)
            indices = perm[n - n_test:] if split == "test" else perm[:n - n_test]
        self.image_size = image_size
        self.split = split
        self.class_names = list(DIGIT_NAMES)
        self._pixels = pixels[indices]  # [N, 8, 8] uint8
        self.labels = labels[indices]  # [N] int64

    def __len__(self):
        return len(self.labels)

    def images_uint8(self, i):
        """Pixels of item i, upscaled: numpy uint8 [image_size, image_size] (grey)."""
        small = Image.fromarray(self._pixels[i])  # 2D uint8 -> mode "L"
        return np.asarray(small.resize((self.image_size, self.image_size), resample=Image.BICUBIC))

    def __getitem__(self, i):
        label = int(self.labels[i])
        image = to_tensor(self.images_uint8(i))  # grey [H, W] -> [3, H, W] in [-1, 1]
        return image, label, f"a handwritten digit {DIGIT_NAMES[label]}"
