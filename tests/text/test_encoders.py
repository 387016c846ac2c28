"""Caption encoders (offline MiniLM, local T5), caption features beside the codes, text-conditional
training, and prompting through the Python API and the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import imagelm
import imagelm.images
from imagelm.cli import main
from imagelm.text import load_text_encoder
from imagelm.text.encoders import left_align, minilm_path

PROMPT = "a small red circle at the top left on a blue background"


def test_left_align_moves_real_tokens_to_the_end():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).bool()
    feats = torch.arange(12.0).view(3, 4, 1) + 1
    f, m = left_align(feats, mask)
    assert m.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    assert f[..., 0].tolist() == [[0, 0, 1, 2], [5, 6, 7, 8], [0, 0, 0, 9]]


def test_offline_encoder_loads_without_network_and_tells_captions_apart():
    # A fresh interpreter with the Hub switched off: the weights must come from the installed package.
    code = ("from imagelm.text import load_text_encoder; e = load_text_encoder('minilm', max_len=16);"
            "c = e.encode(['a red circle', 'a blue square']); print(tuple(c.features.shape), e.dim)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["(2,", "16,", "384)", "384"]

    enc = load_text_encoder("minilm", max_len=16)
    assert enc.spec == {"name": "minilm", "path": None, "max_len": 16, "dim": 384}
    long = " and ".join([PROMPT] * 4)
    c = enc.encode([PROMPT, "a large green star at the center on a white background", PROMPT, long, "x"])
    assert c.features.shape == (5, 16, 384) and c.features.dtype == torch.float32
    assert c.mask[:, -1].all()                       # left-padded: the last position is always real
    assert c.mask[3].all()                           # truncated to T
    assert torch.all(c.features[~c.mask] == 0)
    assert not torch.allclose(c.features[0], c.features[1], atol=1e-2)
    assert torch.allclose(c.features[0], c.features[2], atol=1e-5)
    alone = enc.encode(["x"])                        # padding-invariant: the same alone as in a batch
    assert torch.allclose(alone.features, c.features[4:], atol=1e-4) and torch.equal(alone.mask, c.mask[4:])


def test_t5_encoder_from_a_local_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.T5Config(vocab_size=30522, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    transformers.T5EncoderModel(cfg).save_pretrained(tmp_path)
    transformers.AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(tmp_path)
    enc = load_text_encoder("t5", tmp_path)
    c = enc.encode([PROMPT, "a cat"])
    assert c.features.shape == (2, 120, 16) and enc.max_len == 120   # LlamaGen's T by default
    assert c.mask.sum(1).tolist()[1] < c.mask.sum(1).tolist()[0]
    with pytest.raises(ValueError, match="needs --text-encoder-path"):
        load_text_encoder("t5")
    with pytest.raises(ValueError, match="no model at"):
        load_text_encoder("t5", tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown text encoder"):
        load_text_encoder("clip")


@pytest.fixture(scope="module")
def text_run(tiny_tokenizer, tmp_path_factory):
    """16x16 shapes -> 4x4 codes + 12-token caption features -> a text generator trained 4 steps."""
    from imagelm.data.codes import extract_codes
    from imagelm.tokenizers import load_tokenizer
    from imagelm.train.generator import GeneratorTrainArgs, train_generator
    codes = tmp_path_factory.mktemp("text_codes")
    extract_codes(load_tokenizer(tiny_tokenizer), "shapes", codes, length=40, batch_size=16, shard_size=24,
                  captions=True, max_caption_len=12, progress=False)
    gpt = tmp_path_factory.mktemp("text_gpt")
    train_generator(GeneratorTrainArgs(codes=str(codes), out=str(gpt), preset="tiny", cond="text", steps=4,
                                       batch_size=8, log_every=2, preview_every=4, ckpt_every=4,
                                       precision="fp32", device="cpu", progress=False))
    return codes, gpt


def test_caption_features_are_stored_beside_the_codes(text_run):
    from imagelm.data.codes import CodesDataset
    codes_dir, _ = text_run
    manifest = json.loads((codes_dir / "manifest.json").read_text())
    assert manifest["text"] == {"name": "minilm", "path": None, "max_len": 12, "dim": 384}
    assert [s["count"] for s in manifest["shards"]] == [24, 16]
    feats = np.load(codes_dir / manifest["shards"][0]["text_features"])
    assert feats.dtype == np.float16 and feats.shape == (24, 12, 384)
    codes = CodesDataset(codes_dir)
    cond = codes.text_batch(torch.tensor([0, 30]))
    assert cond.features.shape == (2, 12, 384) and cond.features.dtype == torch.float32
    captions = [json.loads(line)["caption"] for line in (codes_dir / "captions.jsonl").read_text().splitlines()]
    again = load_text_encoder("minilm", max_len=12).encode([captions[0], captions[30]])
    assert torch.allclose(cond.features, again.features, atol=2e-2) and torch.equal(cond.mask, again.mask)


def test_text_generator_checkpoint_names_its_encoder_and_samples_prompts(text_run):
    _, gpt = text_run
    gen = imagelm.load(gpt)
    assert gen.config.cond == "text" and gen.config.cls_token_num == 12 and gen.config.caption_dim == 384
    assert gen.meta.text_encoder.name == "minilm" and gen.meta.text_encoder.max_len == 12
    a = imagelm.sample(gen, [PROMPT, "a large green star at the center on a white background"], n=2,
                       cfg_scale=3.0, seed=4)
    assert a.shape == (4, 16, 1)
    assert torch.equal(a, imagelm.sample(gen, [PROMPT, "a large green star at the center on a white background"],
                                         n=2, cfg_scale=3.0, seed=4))
    assert imagelm.sample(gen, PROMPT, n=1).shape == (1, 16, 1)
    with pytest.raises(ValueError, match="text-conditional: give --prompt"):
        imagelm.sample(gen, [])
    with pytest.raises(ValueError, match="text-conditional: give --prompt TEXT or --prompts FILE, not --classes"):
        imagelm.images.conditions(gen, classes=[0])


def test_cli_text_to_image(text_run, tiny_generator, tmp_path, capsys):
    codes, gpt = text_run
    out = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(gpt), "--prompt", PROMPT, "--n", "2", "--out", str(out),
                 "--tokens-out", str(tmp_path / "t.npy")]) == 0
    assert np.load(tmp_path / "t.npy").shape == (2, 16, 1) and out.is_file()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n\na large green star at the center on a white background\n")
    assert main(["sample", "--ckpt", str(gpt), "--prompts", str(prompts), "--n", "1", "--out", str(out)]) == 0
    assert "2 images (2 prompts x 1" in capsys.readouterr().out

    def error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err
    assert "give --prompt TEXT" in error(["sample", "--ckpt", str(gpt), "--out", str(out)])
    assert "class-conditional" in error(["sample", "--ckpt", str(tiny_generator), "--prompt", "x", "--out", str(out)])
    assert "prompts file not found" in error(["sample", "--ckpt", str(gpt), "--prompts", str(tmp_path / "no.txt")])
    from imagelm.train.generator import GeneratorTrainArgs, model_config
    from imagelm.data.codes import CodesDataset
    plain = CodesDataset(codes)
    plain.text = None
    with pytest.raises(ValueError, match="extract the codes with --captions"):
        model_config(GeneratorTrainArgs(codes=str(codes), out="x", cond="text"), plain)
