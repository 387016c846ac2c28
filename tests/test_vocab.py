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
    with pytest.raises(ValueError, match=r"expected tokens \[B, 16, 1\]"):
        layout.to_codes(torch.zeros(1, 9, 1, dtype=torch.long))


@pytest.mark.parametrize("bits,n", [(16, 1), (16, 2), (20, 2), (24, 3), (32, 4), (16, 4), (12, 3), (16, 16)])
def test_bits_to_subtokens_round_trip_for_every_split(bits, n):
    layout = TokenLayout.binary(grid_size=2, bits=bits, num_subtokens=n)
    assert layout.vocab_size == 2 ** (bits // n) and layout.bits_per_token == bits // n
    codes = torch.randint(0, 2, (3, 2, 2, bits), dtype=torch.uint8)
    tokens = layout.to_tokens(codes)
    assert tokens.shape == (3, 4, n) and tokens.max() < layout.vocab_size
    assert torch.equal(layout.to_codes(tokens), codes.long())


def test_subtokens_are_msb_first_groups():
    layout = TokenLayout.binary(grid_size=1, bits=8, num_subtokens=2)
    codes = torch.tensor([1, 0, 0, 1, 0, 1, 1, 1]).view(1, 1, 1, 8)  # 1001 | 0111
    assert layout.to_tokens(codes).tolist() == [[[9, 7]]]


def test_resplitting_preserves_the_bits():
    from imagelm.vocab import convert_tokens
    fine = TokenLayout.binary(2, 16, 16)
    coarse = fine.split(2)
    bits = torch.randint(0, 2, (2, 4, 16))
    tokens = convert_tokens(bits, fine, coarse)
    assert tokens.shape == (2, 4, 2)
    assert torch.equal(convert_tokens(tokens, coarse, fine), bits)
    with pytest.raises(ValueError, match="cannot be split"):
        fine.split(3)
