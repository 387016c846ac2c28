"""`imagelm convert` / `imagelm export` end to end: released-layout fixtures -> our checkpoints -> sample."""
import torch
from PIL import Image

import imagelm
from imagelm.cli import main
from test_compat_elm import IMG, elm_ar_state, elm_bae_file_state, elm_mlm_state
from test_compat_llamagen import llamagen_gpt_state, llamagen_vq_state


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_llamagen_convert_sample_export(tmp_path, capsys):
    torch.save({"model": llamagen_vq_state()}, tmp_path / "vq16.pt")
    torch.save({"model": llamagen_vq_state(codes=64)}, tmp_path / "vq.pt")
    torch.save({"model": llamagen_gpt_state()}, tmp_path / "c2i_tiny_64.pt")
    assert main(["convert", "llamagen-vq", str(tmp_path / "vq16.pt"), str(tmp_path / "vq16")]) == 0
    assert main(["convert", "llamagen-gpt", str(tmp_path / "c2i_tiny_64.pt"), str(tmp_path / "gpt"),
                 "--tokenizer", str(tmp_path / "vq16")]) == 2        # 16 codes for a 64-token vocabulary
    assert "gives 16 values per token, the generator expects 64" in _error_line(capsys)
    assert main(["convert", "llamagen-vq", str(tmp_path / "vq.pt"), str(tmp_path / "vq"), "--image-size", "8"]) == 0
    assert main(["convert", "llamagen-gpt", str(tmp_path / "c2i_tiny_64.pt"), str(tmp_path / "gpt"),
                 "--tokenizer", str(tmp_path / "vq")]) == 0
    assert main(["sample", "--ckpt", str(tmp_path / "gpt"), "--classes", "1", "2", "--n", "1", "--top-k", "1",
                 "--cfg", "4", "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size[1] >= 2 * 8      # one row per class
    assert main(["export", "llamagen-gpt", str(tmp_path / "gpt"), str(tmp_path / "back.pt")]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)["model"]
    assert torch.equal(back["output.weight"], llamagen_gpt_state()["output.weight"])


def test_elm_convert_and_sample(tmp_path):
    sd, _, _ = elm_bae_file_state()
    torch.save(sd, tmp_path / "binaryae_ema.th")
    torch.save(elm_ar_state(n=2, m=4), tmp_path / "L-2-4.pth")           # 2 x 4 bits = the BAE's 8
    assert main(["convert", "elm-bae", str(tmp_path / "binaryae_ema.th"), str(tmp_path / "bae"),
                 "--image-size", str(IMG)]) == 0
    assert main(["convert", "elm-gpt", str(tmp_path / "L-2-4.pth"), str(tmp_path / "gpt"), "--image-size", "64",
                 "--tokenizer", str(tmp_path / "bae")]) == 0
    gen = imagelm.load(tmp_path / "gpt")
    tokens = imagelm.sample(gen, [3], cfg_scale=2.0, top_k=1)
    images = imagelm.decode_tokens(tokens, imagelm.linked_tokenizer(gen.meta))
    assert tokens.shape == (1, 16, 2) and images.shape == (1, 3, IMG, IMG)
    assert images.min() >= -1 and images.max() <= 1


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["convert", "llamagen-gpt", str(tmp_path / "nope.pt"), str(tmp_path / "out")]) == 2
    assert "checkpoint not found" in _error_line(capsys)
    torch.save({"model": llamagen_gpt_state()}, tmp_path / "c2i_tiny_64.pt")
    assert main(["convert", "llamagen-gpt", str(tmp_path / "c2i_tiny_64.pt"), str(tmp_path / "out"),
                 "--preset", "GPT-B"]) == 2
    assert "does not fit preset GPT-B" in _error_line(capsys)
    assert not (tmp_path / "out").exists()                     # nothing half-written
    torch.save(elm_ar_state(), tmp_path / "ar.pth")
    assert main(["convert", "elm-gpt", str(tmp_path / "ar.pth"), str(tmp_path / "elm"), "--image-size", "64"]) == 0
    assert main(["convert", "elm-gpt", str(tmp_path / "ar.pth"), str(tmp_path / "elm"), "--image-size", "64"]) == 2
    assert "already holds a checkpoint" in _error_line(capsys)               # never mixed into a run
    assert main(["export", "llamagen-gpt", str(tmp_path / "elm"), str(tmp_path / "x.pt")]) == 2
    assert "sub-tokens" in _error_line(capsys)
    assert not (tmp_path / "x.pt").exists()


def test_elm_mlm_converts_and_samples(tmp_path):
    torch.save(elm_mlm_state(), tmp_path / "mlmL-1-3.pth")
    assert main(["convert", "elm-gpt", str(tmp_path / "mlmL-1-3.pth"), str(tmp_path / "mlm"), "--image-size", "64"]) == 0
    gen = imagelm.load(tmp_path / "mlm")
    assert gen.kind == "mlm" and gen.config.head == "tied-mlm"
    tokens = imagelm.sample(gen, [1, 2], cfg_scale=2.0, steps=4, seed=0)
    assert tokens.shape == (2, 16, 1) and tokens.max() < 8


def test_convert_any_size_with_n_head(tmp_path, capsys):
    """A LlamaGen file of no preset's size converts; a width that is no multiple of 64 asks for --n-head."""
    torch.save({"model": llamagen_gpt_state(dim=96, n_layer=2, hidden=256)}, tmp_path / "c2i_odd_64.pt")
    assert main(["convert", "llamagen-gpt", str(tmp_path / "c2i_odd_64.pt"), str(tmp_path / "a")]) == 2
    assert "pass --n-head N" in _error_line(capsys)
    assert main(["convert", "llamagen-gpt", str(tmp_path / "c2i_odd_64.pt"), str(tmp_path / "b"), "--n-head", "3"]) == 0
    gen = imagelm.load(tmp_path / "b")
    assert (gen.config.dim, gen.config.n_layer, gen.config.n_head) == (96, 2, 3) and gen.meta["preset"] is None
    assert main(["convert", "llamagen-vq", str(tmp_path / "c2i_odd_64.pt"), str(tmp_path / "c"), "--n-head", "3"]) == 2
    assert "--n-head is for generators" in _error_line(capsys)
