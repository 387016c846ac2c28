import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_TOKENIZER
from imagelm import checkpoint
from imagelm.data import build_dataset
from imagelm.tokenizers import build_tokenizer, load_tokenizer, tokenizer_config
from imagelm.train.tokenizer import TokenizerTrainArgs, train_tokenizer


def _recon_error(tok, images):
    tok.eval()
    return (tok.decode(tok.encode(images)) - images).pow(2).mean().item()


def test_training_lowers_reconstruction_error(tmp_path):
    args = dict(TINY_TOKENIZER, steps=100, batch_size=32, ckpt_every=100, lr=1e-3, warmup=10, lr_schedule="constant")
    train_tokenizer(TokenizerTrainArgs(out=str(tmp_path), **args))
    images = torch.stack([build_dataset("shapes", 16, split="test")[i][0] for i in range(64)])
    torch.manual_seed(0)  # the loop seeds with args.seed before building: this is its step-0 model
    first = _recon_error(build_tokenizer(tokenizer_config("vq-tiny", image_size=16)), images)
    last = _recon_error(load_tokenizer(tmp_path, prefer_ema=False), images)
    assert last < 0.6 * first, (first, last)


def test_resume_is_exact(tiny_tokenizer, tmp_path):
    # The session fixture trained 6 steps with checkpoints at 3 and 6. Restart from step 3 elsewhere.
    shutil.copytree(tiny_tokenizer / "checkpoints" / "step-0000003", tmp_path / "checkpoints" / "step-0000003")
    train_tokenizer(TokenizerTrainArgs(out=str(tmp_path), resume=True, **TINY_TOKENIZER))
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tiny_tokenizer / "checkpoints" / "step-0000006" / name)
        b = load_file(tmp_path / "checkpoints" / "step-0000006" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_checkpoint_describes_itself(tiny_tokenizer):
    meta = checkpoint.read_meta(tiny_tokenizer)
    assert meta.kind == "vq" and meta.step == 6 and meta.preset == "vq-tiny"
    assert meta.config["image_size"] == 16
    assert (tiny_tokenizer / "previews" / "step-0000006.png").is_file()
    assert (checkpoint.resolve(tiny_tokenizer) / "train_state.pt").is_file()


def test_perceptual_preset_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--no-perceptual"):
        train_tokenizer(TokenizerTrainArgs(out=str(tmp_path), preset="VQ-16", steps=1, device="cpu"))


def test_ddp_with_grad_accumulation_on_two_gloo_ranks(tmp_path):
    import json

    from distributed import launch
    out = tmp_path / "ddp"
    results = launch(["train-tokenizer", "--data", "shapes", "--preset", "vq-tiny", "--image-size", "16",
                      "--data-length", "64", "--steps", "2", "--batch-size", "8", "--grad-accum", "2",
                      "--log-every", "1", "--precision", "fp32", "--device", "cpu", "--out", str(out)], world_size=2)
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-2000:]
    assert "img/s" in results[0].stdout and "max of 2" in results[0].stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] > 0 for r in records)
    assert checkpoint.read_meta(out).extra["train_args"]["grad_accum"] == 2
