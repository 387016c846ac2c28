"""Batches of extracted codes for training at any scale: a distributed step sampler and a DataLoader.

Every training step draws one *global* batch; rank r of W takes the strided slice r::W of it.
The global batch of step s is a pure function of (seed, s): items walk through epoch-shuffled
permutations (epoch e seeded by (seed, e)), and the augmented view of each item (e.g. mirrored or
not) is drawn for the whole global batch before it is split. So the samples a run sees do not
depend on the number of ranks, on dataloader workers, or on where the run was resumed; only who
computes them does. The code shards stay memory-mapped (`CodesDataset`), so workers read only the
rows they are asked for.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def batch_indices(step: int, num_items: int, global_batch: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """Dataset indices of this rank's share of global batch `step`: [global_batch // world_size].

    Epoch e is a permutation seeded by (seed, e); batches walk through the concatenation of epochs,
    wrapping across epoch boundaries, so the stream depends only on (seed, step) — not on when
    training was interrupted. Ranks take disjoint strided slices of each global batch.
    """
    if num_items <= 0:
        raise ValueError("the dataset is empty")
    start = step * global_batch
    out = []
    while len(out) < global_batch:
        epoch, offset = divmod(start + len(out), num_items)
        perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.extend(perm[offset: offset + global_batch - len(out)].tolist())
    return torch.tensor(out[rank::world_size], dtype=torch.long)


class DistributedStepSampler(Sampler):
    """Yields, for steps start_step, start_step + 1, ... (up to stop_step, or forever), this rank's
    share of the global batch as a list of (item, view) pairs, global_batch // world_size long."""

    def __init__(self, num_items: int, num_views: int, global_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1, start_step: int = 0, stop_step: int | None = None):
        if global_batch % world_size:
            raise ValueError(f"the global batch {global_batch} is not divisible by the {world_size} ranks")
        self.num_items, self.num_views, self.global_batch = num_items, num_views, global_batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start_step, self.stop_step = start_step, stop_step

    def step_batch(self, step: int) -> list[tuple[int, int]]:
        """This rank's (item, view) pairs of global batch `step`."""
        items = batch_indices(step, self.num_items, self.global_batch, self.seed)                  # [B]
        if self.num_views > 1:
            views = torch.randint(self.num_views, (self.global_batch,),
                                  generator=torch.Generator().manual_seed(self.seed * 31 + step * 7))
        else:
            views = torch.zeros(self.global_batch, dtype=torch.long)
        share = slice(self.rank, None, self.world_size)
        return list(zip(items[share].tolist(), views[share].tolist()))

    def __iter__(self):
        step = self.start_step
        while self.stop_step is None or step < self.stop_step:
            yield self.step_batch(step)
            step += 1

    def __len__(self) -> int:
        if self.stop_step is None:
            raise TypeError("an endless sampler has no length")
        return max(0, self.stop_step - self.start_step)


class CodeBatches(Dataset):
    """A codes directory as a map-style data set whose `__getitems__` builds a whole batch at once
    (vectorised reads from the memory-mapped shards) from a list of (item, view) pairs."""

    def __init__(self, codes, layout=None, text: bool = False):
        self.codes, self.layout, self.text = codes, layout, text

    def __len__(self) -> int:
        return len(self.codes)

    def __getitems__(self, pairs: list[tuple[int, int]]):
        """pairs -> (tokens int64 [b, L, n], labels int64 [b], TextCondition [b] or None)."""
        items = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        views = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        tokens, labels = self.codes.batch(items, layout=self.layout, views=views)
        return tokens, labels, (self.codes.text_batch(items) if self.text else None)

    def __getitem__(self, pair: tuple[int, int]):
        return self.__getitems__([pair])


def _as_is(batch):
    return batch


def code_batch_loader(codes, layout, global_batch: int, seed: int, rank: int = 0, world_size: int = 1,
                      start_step: int = 0, stop_step: int | None = None, text: bool = False,
                      workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader of this rank's share of each step's global batch, from `start_step` on.

    workers > 0 reads the shards in background processes (each with its own memory maps).
    Items: (tokens [B/W, L, n], labels [B/W], TextCondition or None).
    """
    sampler = DistributedStepSampler(len(codes), codes.tokens.shape[1], global_batch, seed, rank, world_size,
                                     start_step, stop_step)
    return DataLoader(CodeBatches(codes, layout, text), batch_sampler=sampler, collate_fn=_as_is,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory)
