"""Feeding training loops: a data set held in memory as uint8, or streamed through a DataLoader.

Built-in data sets are small and procedural: rendering each image once and keeping the uint8
pixels in memory makes every later epoch free, which matters on a 2-core CPU. Image folders
stream through DataLoader workers instead. Both hand out batches by explicit index lists, so
the order is the loop's deterministic `batch_indices` stream.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

# Materialise a data set when its pixels take at most this much memory.
IN_MEMORY_LIMIT_BYTES = 2 * 1024 ** 3


class InMemoryImages:
    """A data set rendered once: images uint8 [N, 3, H, W], labels int64 [N], captions list[str]."""

    def __init__(self, dataset: Dataset, progress: bool = True, desc: str = "loading images"):
        n = len(dataset)
        loader = DataLoader(dataset, batch_size=256, shuffle=False, num_workers=0, collate_fn=_collate)
        images, labels, captions = [], [], []
        for imgs, labs, caps in tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
            images.append(to_uint8_chw(imgs))
            labels.append(labs)
            captions.extend(caps)
        self.images = torch.cat(images) if images else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        self.labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
        self.captions = captions
        assert len(self.images) == n

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: torch.Tensor):
        """(images float [B, 3, H, W] in [-1, 1], labels [B]) for the given indices."""
        return self.images[indices].float().div_(127.5).sub_(1.0), self.labels[indices]


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of [B, C, H, W] left-right with probability 1/2 (drawn from `generator`)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = images.clone()
    images[flip] = images[flip].flip(-1)
    return images


def to_uint8_chw(images: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, 3, H, W] (round to nearest)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def fits_in_memory(dataset: Dataset) -> bool:
    """Whether `dataset`'s pixels (as uint8) fit the in-memory budget."""
    size = getattr(dataset, "image_size", 256)
    return len(dataset) * 3 * size * size <= IN_MEMORY_LIMIT_BYTES


class _IndexBatches(torch.utils.data.Sampler):
    """Yields the index lists a loop asks for, step after step (an infinite batch sampler)."""

    def __init__(self, make_indices, start_step: int):
        self.make_indices, self.step = make_indices, start_step

    def __iter__(self):
        while True:
            yield self.make_indices(self.step).tolist()
            self.step += 1


def streaming_batches(dataset: Dataset, make_indices, start_step: int, num_workers: int = 2):
    """An iterator of (images [B, 3, H, W], labels [B], captions) for steps start_step, start_step+1, ...

    make_indices(step) -> index tensor; workers decode files in the background.
    """
    loader = DataLoader(dataset, batch_sampler=_IndexBatches(make_indices, start_step), num_workers=num_workers,
                        collate_fn=_collate, persistent_workers=num_workers > 0)
    return iter(loader)


def _collate(items):
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([int(it[1]) for it in items], dtype=torch.long)
    return images, labels, [it[2] for it in items]
