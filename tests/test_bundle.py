"""Model directories that travel: a run directory copied elsewhere (the original deleted) samples and
serves; an exported bundle loads in a fresh process with nothing else on disk; a missing or changed
tokenizer is one line naming both paths."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import imagelm
import imagelm.bundle
from imagelm import checkpoint
from imagelm.checkpoint import CheckpointError
from imagelm.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh pipeline in PROJECT/runs/{vq,codes,gpt} (tiny: the point is the paths, not the images)."""
    from conftest import TINY_TOKENIZER

    from imagelm.data.codes import extract_codes
    from imagelm.tokenizers import load_tokenizer
    from imagelm.train.generator import GeneratorTrainArgs, train_generator
    from imagelm.train.tokenizer import TokenizerTrainArgs, train_tokenizer
    runs = tmp_path_factory.mktemp("project") / "runs"
    train_tokenizer(TokenizerTrainArgs(out=str(runs / "vq"), **{**TINY_TOKENIZER, "steps": 2, "data_length": 64,
                                                               "preview_every": 2, "ckpt_every": 2}))
    extract_codes(load_tokenizer(runs / "vq"), "shapes", runs / "codes", length=32, batch_size=32, progress=False)
    train_generator(GeneratorTrainArgs(codes=str(runs / "codes"), out=str(runs / "gpt"), steps=2, batch_size=8,
                                       log_every=2, preview_every=0, ckpt_every=2, precision="fp32", device="cpu",
                                       progress=False))
    return runs


def _sample_tokens(ckpt, out_dir, *extra):
    assert main(["sample", "--ckpt", str(ckpt), "--classes", "0", "1", "--n", "2", "--seed", "3", "--dtype", "float32",
                 "--out", str(out_dir / "grid.png"), "--tokens-out", str(out_dir / "t.npy"), *extra]) == 0
    return np.load(out_dir / "t.npy")


def test_a_copied_run_directory_samples_and_serves_with_the_original_gone(project, tmp_path):
    before = _sample_tokens(project / "gpt", tmp_path)
    first = tmp_path / "first" / "runs"
    shutil.copytree(project, first)
    moved = tmp_path / "elsewhere" / "runs"
    shutil.copytree(first, moved)        # copied twice: the recorded absolute paths (in `first`) are gone too
    shutil.rmtree(first)
    gen = imagelm.load(moved / "gpt")
    tok = imagelm.linked_tokenizer(gen.meta)
    assert tok.meta.path.is_relative_to(moved / "vq")                     # found through the relative link
    assert np.array_equal(_sample_tokens(moved / "gpt", tmp_path), before)
    assert _width(tmp_path / "grid.png") > 2 * 16

    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from imagelm.serve import create_app
    with TestClient(create_app(gen, tok, dtype="float32", rows=4, max_n=2)) as client:
        r = client.post("/v1/images", json={"class": 0, "n": 1, "seed": 1})
        assert r.status_code == 200 and len(r.json()["images"]) == 1


def _width(path) -> int:
    from PIL import Image
    return Image.open(path).size[0]


def test_a_run_copied_alone_finds_its_tokenizer_where_it_was(project, tmp_path):
    alone = tmp_path / "gpt"
    shutil.copytree(project / "gpt", alone)       # the relative link now points nowhere; the recorded path holds
    tok = imagelm.linked_tokenizer(imagelm.load(alone).meta)
    assert tok.meta.path == checkpoint.resolve(project / "vq")


def test_missing_and_changed_tokenizers_are_one_line_naming_both_paths(project, tmp_path, capsys):
    copy = tmp_path / "runs"
    shutil.copytree(project, copy)
    gen_ckpt = checkpoint.resolve(copy / "gpt")
    raw = json.loads((gen_ckpt / "config.json").read_text())
    raw["tokenizer"]["absolute"] = str(tmp_path / "gone")     # as if the run came from another machine

    # Changed: same place, other weights (retrained in place).
    (gen_ckpt / "config.json").write_text(json.dumps(raw))
    tok_ckpt = checkpoint.resolve(copy / "vq")
    from safetensors.torch import load_file, save_file
    for name in ("model.safetensors", "ema.safetensors"):
        state = load_file(tok_ckpt / name)
        key = next(iter(state))
        state[key] = state[key] + 1
        save_file(state, tok_ckpt / name)
    assert main(["sample", "--ckpt", str(copy / "gpt"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tok_ckpt) in err and str(gen_ckpt) in err and "sha256" in err

    # Missing: neither the relative link nor the recorded path exists.
    shutil.rmtree(copy / "vq")
    assert main(["sample", "--ckpt", str(copy / "gpt"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "which is missing" in err
    assert str(gen_ckpt) in err and str(tok_ckpt) in err and str(tmp_path / "gone") in err
    # With --tokens-out the tokens are still saved; --tokenizer decodes with any tokenizer given.
    assert main(["sample", "--ckpt", str(copy / "gpt"), "--tokens-out", str(tmp_path / "t.npy"),
                 "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "t.npy").is_file() and not (tmp_path / "x.png").exists()


def test_an_exported_bundle_loads_in_a_fresh_process_with_nothing_else(project, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copytree(project, work)
    expected = _sample_tokens(work / "gpt", tmp_path)
    assert main(["export", "bundle", str(work / "gpt"), str(tmp_path / "bundle")]) == 0
    assert "bundle" in capsys.readouterr().out
    shutil.rmtree(work)                                    # no run, no codes, no tokenizer left
    shipped = tmp_path / "shipped"
    shutil.move(tmp_path / "bundle", shipped)              # and the bundle itself moved
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    script = (f"import imagelm, numpy as np, torch\n"
              f"gen = imagelm.load({str(shipped)!r})\n"
              f"tok = imagelm.linked_tokenizer(gen.meta)\n"
              f"t = imagelm.sample(gen, [0, 1], n=2, seed=3, cfg_scale=2.0, dtype='float32')\n"
              f"np.save({str(tmp_path / 'fresh.npy')!r}, t.numpy())\n"
              f"print(tuple(imagelm.decode_tokens(t, tok).shape), gen.meta.provenance.source)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["(4,", "3,", "16,", "16)", "imagelm"]
    assert np.array_equal(np.load(tmp_path / "fresh.npy"), expected)
    # The CLI takes it as it is, too.
    assert np.array_equal(_sample_tokens(shipped, tmp_path), expected)
    with pytest.raises(CheckpointError, match="already exists"):
        imagelm.bundle.export_bundle(shipped, shipped)


def test_bundle_refuses_tokenizers_that_do_not_fit(tiny_generator, tiny_bae_codes, tmp_path):
    from imagelm.bundle import export_bundle
    from imagelm.data.codes import CodesDataset
    bae = CodesDataset(tiny_bae_codes).tokenizer_link.path                # 12-bit codes; the generator's are VQ
    with pytest.raises(ValueError, match="do not fit this tokenizer's codes"):
        export_bundle(tiny_generator, tmp_path / "b", tokenizer=bae)
    assert not (tmp_path / "b").exists()
    torch.manual_seed(0)
