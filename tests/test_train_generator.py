import shutil

import torch
from safetensors.torch import load_file

from imagelm import checkpoint
from imagelm.data.codes import CodesDataset
from imagelm.models import load_generator
from imagelm.train.generator import GeneratorTrainArgs, token_loss, train_generator

ARGS = dict(steps=4, batch_size=8, log_every=2, preview_every=4, ckpt_every=2, precision="fp32", device="cpu",
            progress=False)


def test_resume_is_exact(tiny_codes, tiny_generator, tmp_path):
    shutil.copytree(tiny_generator / "checkpoints" / "step-0000002", tmp_path / "checkpoints" / "step-0000002")
    train_generator(GeneratorTrainArgs(codes=str(tiny_codes), out=str(tmp_path), resume=True, **ARGS))
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tiny_generator / "checkpoints" / "step-0000004" / name)
        b = load_file(tmp_path / "checkpoints" / "step-0000004" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state = checkpoint.load_train_state(tmp_path)
    assert state["step"] == 4


def test_generator_checkpoint_links_tokenizer_and_preview(tiny_tokenizer, tiny_generator):
    meta = checkpoint.read_meta(tiny_generator)
    assert meta["kind"] == "ar" and meta["tokenizer"]["path"].startswith(str(tiny_tokenizer))
    assert meta["class_names"][:2] == ["circle", "square"]
    assert (tiny_generator / "previews" / "step-0000004.png").is_file()


def test_training_lowers_the_loss(tiny_codes, tmp_path):
    train_generator(GeneratorTrainArgs(codes=str(tiny_codes), out=str(tmp_path), lr=3e-3, warmup=0,
                                       **{**ARGS, "steps": 30, "ckpt_every": 1, "keep": 100, "preview_every": 1000}))
    codes = CodesDataset(tiny_codes)
    tokens, labels = codes.batch(torch.arange(32))

    def loss_at(step):
        model = load_generator(tmp_path / "checkpoints" / f"step-{step:07d}", prefer_ema=False)
        with torch.no_grad():
            return token_loss(model(tokens, labels), tokens).item()

    assert loss_at(30) < loss_at(1) - 1.0
