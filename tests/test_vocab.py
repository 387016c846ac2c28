import pytest
import torch

from imagelm.vocab import TokenLayout


def test_vq_layout_round_trip_in_raster_order():
    layout = TokenLayout(grid_size=3, vocab_size=100)
    codes = torch.arange(18).view(2, 3, 3)
    tokens = layout.to_tokens(codes)
    assert tokens.shape == (2, 9, 1)
    assert tokens[0, :, 0].tolist() == list(range(9))  # row by row
    assert torch.equal(layout.to_codes(tokens), codes)
    assert TokenLayout.from_dict(layout.to_dict()) == layout


def test_layout_rejects_wrong_shapes():
    layout = TokenLayout(grid_size=4, vocab_size=10)
    with pytest.raises(ValueError, match=r"expected codes \[B, 4, 4\]"):
        layout.to_tokens(torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="expected 16 tokens"):
        layout.to_codes(torch.zeros(1, 9, 1, dtype=torch.long))
