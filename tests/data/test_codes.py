import json
import os

import numpy as np
import torch

from imagelm import checkpoint
from imagelm.data import build_dataset
from imagelm.data.codes import CodesDataset, augmented_views
from imagelm.tokenizers import load_tokenizer


def test_codes_directory_matches_direct_encoding(tiny_tokenizer, tiny_codes):
    manifest = json.loads((tiny_codes / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "vq"
    rel = os.path.relpath(tiny_tokenizer / "checkpoints" / "step-0000006", tiny_codes)
    assert manifest["tokenizer"]["path"] == rel and rel.startswith("..")      # relative: moves with both
    assert manifest["tokenizer"]["absolute"] == str(tiny_tokenizer / "checkpoints" / "step-0000006")
    assert manifest["layout"] == {"grid_size": 4, "vocab_size": 512, "num_subtokens": 1, "bits": None}
    assert manifest["num_items"] == 64 and len(manifest["shards"]) == 2  # shard_size 40 -> 2 shards
    codes = CodesDataset(tiny_codes)
    assert codes.tokens.shape == (64, 2, 16, 1)                          # [N, views (flip), L, n]
    tok = load_tokenizer(tiny_tokenizer)
    assert codes.tokenizer_link.path == manifest["tokenizer"]["absolute"]
    assert codes.tokenizer_link.sha256 == checkpoint.weights_sha256(tok.state_dict())

    data = build_dataset("shapes", image_size=16, length=64)
    x = torch.stack([data[i][0] for i in (0, 50)])
    direct = tok.encode(x).flatten(1)
    assert np.array_equal(codes.tokens[[0, 50], 0, :, 0], direct.numpy())
    assert np.array_equal(codes.tokens[[0, 50], 1, :, 0], tok.encode(x.flip(-1)).flatten(1).numpy())
    assert codes.labels[50] == data[50][1]
    captions = [json.loads(line)["caption"] for line in (tiny_codes / "captions.jsonl").read_text().splitlines()]
    assert captions[50] == data[50][2]


def test_codes_batch_picks_views_deterministically(tiny_codes):
    codes = CodesDataset(tiny_codes)
    idx = torch.tensor([3, 1, 4])
    a, la = codes.batch(idx, torch.Generator().manual_seed(0))
    b, lb = codes.batch(idx, torch.Generator().manual_seed(0))
    assert a.shape == (3, 16, 1) and a.dtype == torch.int64
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_augmented_views_shapes():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert augmented_views(x, "none").shape == (2, 1, 3, 16, 16)
    flip = augmented_views(x, "flip")
    assert torch.equal(flip[:, 1], x.flip(-1))
    assert augmented_views(x, "tencrop").shape == (2, 10, 3, 16, 16)


def test_missing_codes_directory_message(tmp_path):
    import pytest
    with pytest.raises(FileNotFoundError, match="extract-codes"):
        CodesDataset(tmp_path)


def test_binary_codes_are_stored_one_bit_per_subtoken(tiny_bae_codes):
    codes = CodesDataset(tiny_bae_codes)
    assert codes.layout.bits == 12 and codes.layout.num_subtokens == 12 and codes.layout.vocab_size == 2
    assert codes.tokens.dtype == np.uint8 and set(np.unique(codes.tokens)) <= {0, 1}
    tokens, _ = codes.batch(torch.arange(4), layout=codes.layout.split(2))     # regrouped into 2-6
    assert tokens.shape == (4, 16, 2) and tokens.max() < 64
