"""`imagelm edit`, `imagelm expand`, `imagelm sample --size`: pictures of the size asked, and one-line
errors for wrong-size, empty and non-image files."""
import numpy as np
import pytest
from PIL import Image

from imagelm.cli import main


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err     # exactly one line, no traceback
    return err


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(mask[:12]).save(tmp_path / "small_mask.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("hello\n")
    return tmp_path


def _sizes(folder):
    return {Image.open(p).size for p in folder.glob("*.png")}


def test_edit_writes_the_edited_images(tiny_generator, files, capsys):
    code = main(["edit", "--ckpt", str(tiny_generator), "--image", str(files / "in.png"), "--mask",
                 str(files / "mask.png"), "--classes", "0", "square", "--n", "2", "--candidates", "3",
                 "--score", "guided-joint", "--cfg", "2", "--out", str(files / "out.png"), "--each", str(files / "each")])
    assert code == 0
    assert "4 edited images" in capsys.readouterr().out
    assert len(list((files / "each").glob("*.png"))) == 4 and _sizes(files / "each") == {(16, 16)}
    kept = np.asarray(Image.open(files / "each" / "00000.png"))[:2]       # far from the mask: the input's pixels
    assert (kept == np.asarray(Image.open(files / "in.png"))[:2]).all()


@pytest.mark.parametrize("mask,message", [
    ("small_mask.png", "the mask is 16x12 pixels but the image is 16x16"),
    ("empty.png", "is empty"),
    ("notes.png", "is not a readable image"),
    ("missing.png", "mask file not found"),
])
def test_edit_bad_masks_are_one_line_errors(tiny_generator, files, capsys, mask, message):
    code = main(["edit", "--ckpt", str(tiny_generator), "--image", str(files / "in.png"), "--mask", str(files / mask),
                 "--out", str(files / "out.png")])
    assert code == 2
    assert message in _error_line(capsys)


def test_edit_offers_every_candidate_score():
    import argparse

    from imagelm.cli import editing
    from imagelm.sampling.editing import SCORES
    sub = argparse.ArgumentParser().add_subparsers()
    editing.register(sub)
    score = next(a for a in sub.choices["edit"]._actions if a.dest == "score")
    assert tuple(score.choices) == SCORES


def test_edit_bad_image_and_arguments(tiny_generator, files, capsys):
    base = ["edit", "--ckpt", str(tiny_generator), "--mask", str(files / "mask.png"), "--out", str(files / "o.png")]
    assert main(base + ["--image", str(files / "notes.png")]) == 2
    assert "image file" in _error_line(capsys)
    assert main(base + ["--image", str(files / "in.png"), "--classes", "dragon"]) == 2
    assert "unknown class 'dragon'" in _error_line(capsys)
    assert main(base + ["--image", str(files / "in.png"), "--candidates", "0"]) == 2
    assert "candidates must be >= 1" in _error_line(capsys)


def test_edit_score_guidance_and_hole_cfg(tiny_generator, files, capsys):
    base = ["edit", "--ckpt", str(tiny_generator), "--image", str(files / "in.png"), "--mask", str(files / "mask.png"),
            "--classes", "1", "--n", "2", "--candidates", "2", "--cfg", "2", "--out", str(files / "o.png"),
            "--each", str(files / "each")]
    assert main(base + ["--score", "guided-joint", "--score-guidance", "3", "--hole-cfg", "4"]) == 0
    assert "2 edited images" in capsys.readouterr().out and _sizes(files / "each") == {(16, 16)}
    kept = np.asarray(Image.open(files / "each" / "00000.png"))[:2]
    assert (kept == np.asarray(Image.open(files / "in.png"))[:2]).all()
    assert main(base + ["--score", "guided-joint", "--score-guidance", "0.5"]) == 2
    assert "score_guidance must be a finite number >= 1, got 0.5" in _error_line(capsys)
    assert main(base + ["--score", "kept", "--score-guidance", "3"]) == 2
    assert "score 'kept' is not guided" in _error_line(capsys)
    assert main(base + ["--hole-cfg", "0"]) == 2
    assert "hole_cfg must be a finite number >= 1, got 0.0" in _error_line(capsys)


def test_expand_and_sample_size_give_the_size_asked(tiny_generator, files, capsys):
    code = main(["expand", "--ckpt", str(tiny_generator), "--image", str(files / "in.png"), "--right", "8",
                 "--up", "3", "--classes", "1", "--n", "2", "--out", str(files / "wide.png"),
                 "--each", str(files / "wide")])
    assert code == 0
    assert "2 expanded images of 24x19 pixels" in capsys.readouterr().out
    assert _sizes(files / "wide") == {(24, 19)}
    code = main(["sample", "--ckpt", str(tiny_generator), "--classes", "1", "--n", "2", "--size", "32x16",
                 "--out", str(files / "big.png"), "--each", str(files / "big")])
    assert code == 0 and _sizes(files / "big") == {(32, 16)}
    capsys.readouterr()
    assert main(["expand", "--ckpt", str(tiny_generator), "--image", str(files / "in.png"),
                 "--out", str(files / "x.png")]) == 2
    assert "nothing to expand" in _error_line(capsys)
    assert main(["sample", "--ckpt", str(tiny_generator), "--size", "big", "--out", str(files / "x.png")]) == 2
    assert "expected WIDTHxHEIGHT" in _error_line(capsys)
