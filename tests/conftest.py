import sys
from pathlib import Path

import pytest
import torch

# The writers of foreign (LlamaGen / ELM) checkpoint files live in tests/compat; the fine-tuning tests
# (tests/train) import them too.
sys.path.insert(0, str(Path(__file__).parent / "compat"))

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# A tiny end-to-end pipeline, built once per test session and shared by the tests that need trained
# artefacts (CLI, codes, sampling): 16x16 shapes -> 4x4 VQ codes -> a 2-layer generator.
TINY_TOKENIZER = dict(data="shapes", preset="vq-tiny", image_size=16, data_length=256, steps=6, batch_size=16,
                      log_every=2, preview_every=6, ckpt_every=3, precision="fp32", device="cpu", progress=False)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from imagelm.train.tokenizer import TokenizerTrainArgs, train_tokenizer
    out = tmp_path_factory.mktemp("vq")
    train_tokenizer(TokenizerTrainArgs(out=str(out), **TINY_TOKENIZER))
    return out


@pytest.fixture(scope="session")
def tiny_codes(tiny_tokenizer, tmp_path_factory):
    from imagelm.data.codes import extract_codes
    from imagelm.tokenizers import load_tokenizer
    out = tmp_path_factory.mktemp("codes")
    extract_codes(load_tokenizer(tiny_tokenizer), "shapes", out, augment="flip", length=64, batch_size=32,
                  shard_size=40, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_generator(tiny_codes, tmp_path_factory):
    from imagelm.train.generator import GeneratorTrainArgs, train_generator
    out = tmp_path_factory.mktemp("gpt")
    # Previews at steps 2 and 4 through the bf16 engine (tests/train/test_generator.py checks they follow the weights).
    train_generator(GeneratorTrainArgs(codes=str(tiny_codes), out=str(out), steps=4, batch_size=8, log_every=2,
                                       preview_every=2, preview_dtype="bfloat16", ckpt_every=2, precision="fp32",
                                       device="cpu", progress=False))
    return out


@pytest.fixture(scope="session")
def tiny_bae_codes(tmp_path_factory):
    """bae-tiny (12 bits a position) trained 4 steps on 16x16 shapes, and 64 images' codes."""
    from imagelm.data.codes import extract_codes
    from imagelm.tokenizers import load_tokenizer
    from imagelm.train.tokenizer import TokenizerTrainArgs, train_tokenizer
    vq = tmp_path_factory.mktemp("bae")
    train_tokenizer(TokenizerTrainArgs(out=str(vq), **{**TINY_TOKENIZER, "preset": "bae-tiny", "steps": 4}))
    out = tmp_path_factory.mktemp("bae_codes")
    extract_codes(load_tokenizer(vq), "shapes", out, length=64, batch_size=32, progress=False)
    return out
