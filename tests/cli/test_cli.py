import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imagelm.cli import main


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err     # exactly one line, no traceback
    return err


def test_sample_writes_grid_and_tokens(tiny_generator, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(["sample", "--ckpt", str(tiny_generator), "--classes", "0", "square", "--n", "3", "--cfg", "2",
                 "--top-k", "50", "--out", str(out), "--tokens-out", str(tmp_path / "t.npy"),
                 "--each", str(tmp_path / "each")])
    assert code == 0
    tokens = np.load(tmp_path / "t.npy")
    assert tokens.shape == (6, 16, 1) and tokens.dtype == np.int64
    assert Image.open(out).size[0] > 3 * 16            # 3 images per row
    assert len(list((tmp_path / "each").glob("*.png"))) == 6


def test_sample_is_deterministic_by_seed(tiny_generator, tmp_path):
    for name in ("a", "b"):
        main(["sample", "--ckpt", str(tiny_generator), "--classes", "1", "--n", "2", "--seed", "5",
              "--out", str(tmp_path / f"{name}.png"), "--tokens-out", str(tmp_path / f"{name}.npy")])
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


@pytest.mark.parametrize("extra,message", [
    (["--classes", "dragon"], "unknown class 'dragon'"),
    (["--classes", "99"], "unknown class 99"),
    (["--n", "-1"], "--n must be >= 1"),
    (["--jacobi-groups", "4"], "--jacobi-groups is an acceptance rule of --decode jacobi"),
    (["--decode", "jacobi", "--jacobi-groups", "0"], "--jacobi-groups must be >= 1"),
    (["--decode", "jacobi", "--jacobi-groups", "100000"], "more than the 512 tokens"),
])
def test_sample_bad_input(tiny_generator, tmp_path, capsys, extra, message):
    code = main(["sample", "--ckpt", str(tiny_generator), "--out", str(tmp_path / "x.png")] + extra)
    assert code == 2
    assert message in _error_line(capsys)


def test_sample_with_tokenizer_checkpoint_is_refused(tiny_tokenizer, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(tiny_tokenizer), "--out", str(tmp_path / "x.png")]) == 2
    assert "is a 'vq' checkpoint, but a generator" in _error_line(capsys)


def test_tokenizer_verbs_refuse_generators_and_missing_paths(tiny_generator, tmp_path, capsys):
    assert main(["reconstruct", "--tokenizer", str(tiny_generator), "--out", str(tmp_path)]) == 2
    assert "is a 'ar' checkpoint, but a tokenizer" in _error_line(capsys)
    assert main(["reconstruct", "--tokenizer", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in _error_line(capsys)


def test_reconstruct_prints_metrics(tiny_tokenizer, tmp_path, capsys):
    assert main(["reconstruct", "--tokenizer", str(tiny_tokenizer), "--num", "32", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "codebook usage" in out
    assert (tmp_path / "reconstructions.png").is_file()


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "imagelm.cli", "sample", "--ckpt", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"imagelm sample: error: checkpoint not found: {tmp_path / 'missing'}"
