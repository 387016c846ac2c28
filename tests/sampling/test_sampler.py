import numpy as np
import pytest
import torch

from imagelm.data.codes import CodesDataset
from imagelm.data.sampler import DistributedStepSampler, batch_indices, code_batch_loader


def test_ranks_split_each_global_batch_without_overlap():
    one = DistributedStepSampler(50, 2, 12, seed=3, start_step=0, stop_step=10)
    for step, whole in enumerate(one):
        shares = [DistributedStepSampler(50, 2, 12, seed=3, rank=r, world_size=4).step_batch(step) for r in range(4)]
        assert all(len(s) == 3 for s in shares)
        merged = [pair for i in range(3) for pair in (s[i] for s in shares)]   # rank r holds r::4
        assert merged == whole                                                   # views too: world-size free


def test_epochs_are_shuffled_permutations_and_resume_mid_stream():
    items = [i for batch in DistributedStepSampler(20, 1, 5, seed=0, stop_step=8) for i, _ in batch]
    epochs = [items[:20], items[20:]]
    assert all(sorted(e) == list(range(20)) for e in epochs) and epochs[0] != epochs[1]
    later = list(DistributedStepSampler(20, 1, 5, seed=0, start_step=5, stop_step=8))
    assert later == list(DistributedStepSampler(20, 1, 5, seed=0, stop_step=8))[5:]
    assert torch.equal(batch_indices(6, 20, 5, 0), torch.tensor([i for i, _ in later[1]]))


def test_indivisible_batch_is_refused():
    with pytest.raises(ValueError, match="not divisible by the 3 ranks"):
        DistributedStepSampler(10, 1, 8, seed=0, world_size=3)


def test_loader_reads_memory_mapped_shards_the_same_with_workers(tiny_codes):
    codes = CodesDataset(tiny_codes)
    assert len(codes.tokens.paths) == 2 and all(isinstance(m, np.memmap) for m in codes.tokens._open())
    plain = list(code_batch_loader(codes, None, 16, seed=1, rank=1, world_size=2, start_step=2, stop_step=5))
    workers = list(code_batch_loader(codes, None, 16, seed=1, rank=1, world_size=2, start_step=2, stop_step=5,
                                     workers=2))
    assert len(plain) == len(workers) == 3
    for (t1, l1, _), (t2, l2, _) in zip(plain, workers):
        assert t1.shape == (8, 16, 1) and torch.equal(t1, t2) and torch.equal(l1, l2)
    # A batch row is the stored row of the item and view the sampler chose.
    pairs = DistributedStepSampler(len(codes), 2, 16, seed=1, rank=1, world_size=2).step_batch(2)
    item, view = pairs[0]
    assert np.array_equal(plain[0][0][0, :, 0].numpy(), codes.tokens[item, view, :, 0])
