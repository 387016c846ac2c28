import math

import torch

from imagelm.eval.tokens import attention_locality, attention_maps, unigram_kl_from_uniform
from imagelm.models import build_generator, gpt_config


def test_unigram_kl_extremes():
    assert abs(unigram_kl_from_uniform(torch.arange(64) % 8, 8)) < 1e-9      # perfectly uniform
    assert abs(unigram_kl_from_uniform(torch.zeros(100), 8) - math.log(8)) < 1e-9  # one token only


def test_attention_maps_match_the_model_and_locality_bounds():
    torch.manual_seed(0)
    model = build_generator(gpt_config("tiny", vocab_size=20, grid_size=4, num_classes=3)).eval()
    tokens = torch.randint(0, 20, (2, 16, 1))
    maps = attention_maps(model, tokens, torch.tensor([0, 1]))
    assert len(maps) == 4 and maps[0].shape == (2, 4, 16, 16)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 4, 16), atol=1e-5)       # rows are distributions
    assert torch.all(maps[0].triu(1) == 0)                                         # causal
    loc = attention_locality(maps, prefix_len=1, grid_size=4, window=3)
    assert all(0.0 <= v <= 1.0 for v in loc)
    full = attention_locality(maps, prefix_len=1, grid_size=4, window=9)           # window covers the grid
    prefix_mass = torch.stack([m[:, :, :, 0].mean() for m in maps])
    assert torch.allclose(torch.tensor(full), 1 - prefix_mass, atol=1e-5)
