import pytest
import torch

from imagelm import checkpoint
from imagelm.tokenizers import build_tokenizer, load_tokenizer, tokenizer_config
from imagelm.tokenizers.bae import BinaryQuantizer, code_ids


@pytest.mark.parametrize("preset,bits", [("BAE-16", 16), ("BAE-20", 20)])
def test_imagenet_presets_build_with_the_right_shapes(preset, bits):
    cfg = tokenizer_config(preset)
    assert cfg.bits == bits and cfg.downsample == 16 and cfg.grid_size == 16
    with torch.device("meta"):
        model = build_tokenizer(cfg)
    assert model.quantize.proj.weight.shape == (bits, cfg.z_channels, 1, 1)
    assert model.quantize.embed.weight.shape == (bits, cfg.z_channels)
    assert model.vocab_size == 2 ** bits and model.code_bits == bits


def test_encode_decode_shapes_and_bits():
    model = build_tokenizer(tokenizer_config("bae-tiny")).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = model.encode(x)
    assert codes.shape == (2, 8, 8, 12) and codes.dtype == torch.uint8
    assert set(codes.unique().tolist()) <= {0, 1}
    assert model.decode(codes).shape == (2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    a = model.encode(x, stochastic=True, generator=g)
    b = model.encode(x, stochastic=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)  # Bernoulli codes are reproducible by seed


def test_straight_through_gradient_reaches_the_probabilities():
    q = BinaryQuantizer(channels=4, bits=6).train()
    features = torch.randn(2, 4, 3, 3, requires_grad=True)
    z, bits, losses = q(features, stochastic=True)
    assert z.shape == (2, 4, 3, 3) and bits.shape == (2, 3, 3, 6)
    z.sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    # the forward value is exactly the embedding sum of the hard bits
    expected = torch.einsum("bhwd,dc->bchw", bits.float(), q.embed.weight)
    assert torch.allclose(z, expected, atol=1e-5)
    assert 0 <= losses["code"].item() <= 0.25


def test_code_ids_msb_first():
    bits = torch.tensor([[[[1, 0, 1]]]], dtype=torch.uint8)
    assert code_ids(bits).tolist() == [5]
    assert code_ids(torch.tensor([[[3, 4]]])).tolist() == [3, 4]


def test_save_load_round_trip(tmp_path):
    cfg = tokenizer_config("bae-tiny", image_size=16)
    model = build_tokenizer(cfg).eval()
    checkpoint.save(tmp_path, 1, checkpoint.CheckpointMeta(kind="bae", config=cfg.to_dict()), model.state_dict())
    loaded = load_tokenizer(tmp_path)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(model.encode(x), loaded.encode(x))


def test_evaluate_tokenizer_counts_binary_codes():
    from imagelm.eval.recon import evaluate_tokenizer
    model = build_tokenizer(tokenizer_config("bae-tiny", image_size=16)).eval()
    data = [(torch.rand(3, 16, 16) * 2 - 1, 0, "") for _ in range(8)]
    m = evaluate_tokenizer(model, data, progress=False)
    codes = model.encode(torch.stack([d[0] for d in data]))
    assert m["usage"] == torch.unique(code_ids(codes)).numel() / 2 ** 12
    assert len(m["bit_balance"]) == 12
    assert m["bit_balance"] == pytest.approx(codes.float().mean((0, 1, 2)).tolist(), abs=1e-6)
