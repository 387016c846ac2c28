"""Canvases larger than the trained grid (sampling/canvas.py): windows stay in the trained range, a
canvas of the trained size is the plain sampler token for token, given tokens are kept."""
import pytest
import torch

from imagelm.sampling.autoregressive import SamplingOptions, generate
from imagelm.sampling.canvas import generate_canvas, generate_masked_canvas, window_origin, window_starts
from test_editing import GUIDED, TEXT, random_model, text_cond


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
def test_every_token_sits_in_its_window_with_a_full_raster_prefix(stride):
    g, H, W = 4, 7, 11
    for r in range(H):
        for c in range(W):
            top, left = window_origin(r, c, H, W, g, stride)
            assert 0 <= top <= H - g and 0 <= left <= W - g              # RoPE positions in the trained range
            assert top <= r < top + g and left <= c < left + g
            if c % stride and c > 0:                                      # a segment keeps its window
                assert window_origin(r, c - 1, H, W, g, stride) == (top, left)
    assert window_origin(0, 0, g, g, g, stride) == (0, 0) and window_origin(3, 3, g, g, g, stride) == (0, 0)
    assert window_starts(10, 4, 2) == [0, 2, 4, 6] and window_starts(11, 4, 4) == [0, 4, 7]


@pytest.mark.parametrize("cond_kind", ["class", "text"])
def test_a_canvas_of_the_trained_size_is_the_plain_sampler(cond_kind):
    model = random_model(**(TEXT if cond_kind == "text" else {}))
    cond = text_cond(2) if cond_kind == "text" else torch.tensor([1, 2])
    for options in (SamplingOptions(), GUIDED):
        plain = generate(model, cond, options, torch.Generator().manual_seed(5))
        canvas = generate_canvas(model, cond, 4, 4, options, torch.Generator().manual_seed(5))
        assert torch.equal(canvas, plain)


@pytest.mark.parametrize("cond_kind", ["class", "text"])
@pytest.mark.parametrize("kind", ["ar", "mlm"])
def test_a_larger_canvas_keeps_its_given_tokens(kind, cond_kind):
    model = random_model(kind, **(TEXT if cond_kind == "text" else {}))
    cond = text_cond(2) if cond_kind == "text" else torch.tensor([1, 2])
    H, W = 5, 9
    g = torch.Generator().manual_seed(0)
    given = torch.randint(0, 64, (2, H * W, 1), generator=g)
    known = torch.zeros(H, W, dtype=torch.bool)
    known[:, :4] = True                                   # an image on the left, outpainted to the right
    known = known.flatten().expand(2, -1).contiguous()
    sampler = generate_canvas if kind == "ar" else generate_masked_canvas
    out = sampler(model, cond, H, W, GUIDED, generator=torch.Generator().manual_seed(1), given=given, known=known)
    assert out.shape == (2, H * W, 1)
    assert torch.equal(out[known], given[known])
    again = sampler(model, cond, H, W, GUIDED, generator=torch.Generator().manual_seed(1), given=given, known=known)
    assert torch.equal(out, again)                        # deterministic by seed
    fresh = sampler(model, cond, H, W, GUIDED, generator=torch.Generator().manual_seed(1))
    assert fresh.shape == (2, H * W, 1) and (fresh >= 0).all() and (fresh < 64).all()


def test_the_stride_changes_windows_not_the_kept_tokens():
    model = random_model()
    cond = torch.tensor([0])
    known = torch.zeros(1, 4 * 10, dtype=torch.bool)
    known[0, ::3] = True
    given = torch.randint(0, 64, (1, 40, 1))
    outs = [generate_canvas(model, cond, 4, 10, GUIDED, torch.Generator().manual_seed(0), given, known, stride=s)
            for s in (1, 2, 4)]
    for out in outs:
        assert torch.equal(out[known], given[known])
    assert not torch.equal(outs[0], outs[2])             # other windows, other context: other tokens


def test_bad_canvases_are_one_line_errors():
    model = random_model()
    cond = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="smaller than the trained 4x4"):
        generate_canvas(model, cond, 3, 8)
    with pytest.raises(ValueError, match="stride must be in 1..4"):
        generate_canvas(model, cond, 4, 8, stride=5)
    known = torch.zeros(2, 32, dtype=torch.bool)
    known[0, 0] = True
    with pytest.raises(ValueError, match="the same for every image"):
        generate_canvas(model, cond, 4, 8, given=torch.zeros(2, 32, 1, dtype=torch.long), known=known)
    with pytest.raises(ValueError, match="given canvas tokens must be"):
        generate_canvas(model, cond, 4, 8, given=torch.zeros(2, 16, 1, dtype=torch.long), known=known[:, :16])
