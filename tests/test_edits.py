"""Editing pictures (imagelm/edits.py): files and masks read with one-line errors, kept pixels pasted
back, an all-black mask returns the input, an all-white mask is plain sampling, expansion keeps the
original's tokens at the size asked, canvases decode in one pass."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import imagelm
from imagelm.data.transforms import to_uint8
from imagelm.edits import (decode_canvas, encode_canvas, expand, feather_alpha, paste_back, read_image, read_mask,
                          sample_canvas)
from imagelm.edits import edit as edit_image
from imagelm.metadata import CheckpointMeta
from imagelm.models import build_generator, gpt_config
from imagelm.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return load_tokenizer(tiny_tokenizer)          # 16 px -> 4x4 codes of 512


def model_for(kind="ar"):
    model = build_generator(gpt_config("tiny", grid_size=4, vocab_size=512, num_classes=3), kind).eval()
    for head in model.output.heads:
        nn.init.normal_(head.weight, std=0.5)
    model.meta = CheckpointMeta(kind=kind, config=model.config.to_dict(), class_names=("a", "b", "c"))
    return model


def picture(h=16, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_reading_files_gives_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("not a picture\n")
    with pytest.raises(ValueError, match="not a readable image") as e:
        read_image(tmp_path / "notes.png", "mask")
    assert "\n" not in str(e.value) and "mask file" in str(e.value)
    Image.fromarray(np.zeros((8, 12), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="the mask is 12x8 pixels but the image is 16x16"):
        read_mask(tmp_path / "small.png", (16, 16))


def test_masks_are_white_to_regenerate_and_transparent_is_kept(tmp_path):
    grey = np.zeros((4, 4), dtype=np.uint8)
    grey[1, 2] = 255
    grey[3, 3] = 100                                   # below the threshold: kept
    assert read_mask(grey, (4, 4)).nonzero().tolist() == [[1, 2]]
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 255                                # white, but transparent except one pixel
    rgba[2, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "painted.png")
    assert read_mask(tmp_path / "painted.png", (4, 4)).nonzero().tolist() == [[2, 0]]


def test_feathered_paste_back_keeps_far_pixels_exactly():
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[6:10, 6:10] = True
    alpha = feather_alpha(mask, 2)
    assert (alpha[mask] == 1).all() and alpha[0, 0] == 0
    assert 0 < alpha[5, 7] < 1 and alpha[5, 7] > alpha[4, 7] > alpha[3, 7] == 0     # linear over 2 pixels
    assert torch.equal(feather_alpha(mask, 0), mask.float())
    decoded, original = torch.ones(2, 3, 16, 16), -torch.ones(3, 16, 16)
    out = paste_back(decoded, original, alpha)
    assert (out[:, :, mask] == 1).all() and (out[:, :, 0, 0] == -1).all()


def test_canvas_tokens_round_trip_through_one_decode(tok):
    images = torch.rand(2, 3, 16, 32) * 2 - 1          # a canvas twice the trained width
    tokens = encode_canvas(tok, images, 1)
    assert tokens.shape == (2, 4 * 8, 1)
    codes = tok.encode(images)
    assert torch.equal(tokens[..., 0], codes.flatten(1))
    decoded = decode_canvas(tok, tokens, 4, 8)
    assert decoded.shape == (2, 3, 16, 32)
    assert torch.allclose(decoded, tok.decode(codes).float(), atol=1e-6)


@pytest.mark.parametrize("kind", ["ar", "mlm"])
def test_an_all_black_mask_returns_the_input(tok, kind):
    pixels = picture()
    out = edit_image(model_for(kind), pixels, np.zeros((16, 16), dtype=bool), ["b"], n=2, tokenizer=tok)
    expected = encode_canvas(tok, torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1, 1)
    assert torch.equal(out.tokens, expected.expand(2, -1, -1))
    assert not out.regenerated.any()
    assert (to_uint8(out.images[0]) == pixels).all()                 # every pixel pasted back


def test_an_all_white_mask_is_plain_sampling(tok):
    model = model_for()
    out = edit_image(model, picture(), np.ones((16, 16), dtype=bool), [0, "c"], n=2, tokenizer=tok, cfg_scale=2.0,
                     seed=3)
    tokens = imagelm.sample(model, [0, 2], n=2, cfg_scale=2.0, seed=3)
    assert torch.equal(out.tokens, tokens)
    assert torch.allclose(out.images, imagelm.decode_tokens(tokens, tok).float())     # nothing pasted back


@pytest.mark.parametrize("kind", ["ar", "mlm"])
def test_inpainting_changes_only_the_masked_tokens_and_pixels(tok, kind):
    pixels = picture(seed=1)
    mask = np.zeros((16, 16), dtype=bool)
    mask[5:9, 5:7] = True                               # touches tokens (1, 1), (2, 1)
    out = edit_image(model_for(kind), pixels, mask, ["a"], n=3, tokenizer=tok, candidates=2 if kind == "ar" else 1,
                     feather=0, seed=1)
    assert out.regenerated.nonzero().tolist() == [[1, 1], [2, 1]]
    given = encode_canvas(tok, torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1, 1)[0]
    kept = ~out.regenerated.flatten()
    assert all(torch.equal(t[kept], given[kept]) for t in out.tokens)
    assert (to_uint8(out.images)[:, ~mask] == pixels[~mask]).all()


@pytest.mark.parametrize("kind", ["ar", "mlm"])
@pytest.mark.parametrize("sides", [dict(right=16), dict(left=5, down=3), dict(up=8, right=4)])
def test_expansion_keeps_the_original_tokens_at_the_size_asked(tok, kind, sides):
    pixels = picture(seed=2)
    out = expand(model_for(kind), pixels, cond=["a"], n=2, tokenizer=tok, seed=0, **sides)
    W = 16 + sides.get("left", 0) + sides.get("right", 0)
    H = 16 + sides.get("up", 0) + sides.get("down", 0)
    assert out.images.shape == (2, 3, H, W)
    up, left = -(-sides.get("up", 0) // 4), -(-sides.get("left", 0) // 4)
    grid = out.tokens.view(2, *out.grid, 1)
    inner = encode_canvas(tok, torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1, 1)
    assert torch.equal(grid[:, up:up + 4, left:left + 4].reshape(2, 16, 1), inner.expand(2, -1, -1))
    assert not out.regenerated[up:up + 4, left:left + 4].any() and out.regenerated.sum() == out.regenerated.numel() - 16
    y, x = sides.get("up", 0), sides.get("left", 0)                                   # the original, pasted back
    assert (to_uint8(out.images)[:, y + 2:y + 14, x + 2:x + 14] == pixels[2:14, 2:14]).all()


def test_sample_canvas_is_sample_at_the_trained_size_and_wider_otherwise(tok):
    model = model_for()
    same = sample_canvas(model, [1], 16, 16, n=2, tokenizer=tok, cfg_scale=2.0, seed=4)
    assert torch.equal(same.tokens, imagelm.sample(model, [1], n=2, cfg_scale=2.0, seed=4))
    wide = sample_canvas(model, [1], 32, 16, n=2, tokenizer=tok, cfg_scale=2.0, seed=4, engine="plain")
    assert wide.images.shape == (2, 3, 16, 32) and wide.grid == (4, 8)
    tall = sample_canvas(model_for("mlm"), [1], 16, 24, tokenizer=tok, seed=4)
    assert tall.images.shape == (1, 3, 24, 16)


def test_bad_sizes_and_conditions_are_one_line_errors(tok):
    model = model_for()
    with pytest.raises(ValueError, match="edits images of 16x16 pixels or larger, with sides a multiple of 4"):
        edit_image(model, picture(14, 16), np.ones((14, 16), dtype=bool), tokenizer=tok)
    with pytest.raises(ValueError, match="candidate search runs on the trained 4x4 grid"):
        edit_image(model, picture(16, 32), np.ones((16, 32), dtype=bool), tokenizer=tok, candidates=2)
    with pytest.raises(ValueError, match="nothing to expand"):
        expand(model, picture(), tokenizer=tok)
    with pytest.raises(ValueError, match="--right must be a whole number"):
        expand(model, picture(), right=-4, tokenizer=tok)
    with pytest.raises(ValueError, match="smaller than the trained"):
        expand(model, picture(8, 8), right=8, tokenizer=tok)
    with pytest.raises(ValueError, match="--size 18x16"):
        sample_canvas(model, [0], 18, 16, tokenizer=tok)
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        edit_image(model, picture(), np.ones((16, 16), dtype=bool), ["zebra"], tokenizer=tok)
    with pytest.raises(ValueError, match="class-conditional: give classes, not a prompt"):
        edit_image(model, picture(), np.ones((16, 16), dtype=bool), "a red circle", tokenizer=tok)
