import pytest
import torch

from imagelm.tokenizers import build_tokenizer, load_tokenizer, tokenizer_config
from imagelm.tokenizers.vq import VectorQuantizer, VQConfig, entropy_loss
from imagelm import checkpoint


def test_quantizer_l2_normalises_and_picks_nearest_code():
    q = VectorQuantizer(codebook_size=16, code_dim=8, l2_norm=True).eval()
    z = torch.randn(2, 8, 3, 3) * 5
    z_q, idx, _ = q(z)
    assert idx.shape == (2, 3, 3)
    assert torch.allclose(z_q.norm(dim=1), torch.ones(2, 3, 3), atol=1e-5)  # codes on the unit sphere
    zn = torch.nn.functional.normalize(z.permute(0, 2, 3, 1), dim=-1)
    expected = (zn @ q.codebook().t()).argmax(-1)  # nearest on the sphere == highest cosine
    assert torch.equal(idx, expected)
    assert torch.allclose(q.lookup(idx), z_q, atol=1e-6)


def test_quantizer_straight_through_passes_gradient_unchanged():
    q = VectorQuantizer(codebook_size=16, code_dim=4, l2_norm=False).train()
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    z_q, _, losses = q(z)
    assert set(losses) == {"codebook", "commit"}
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward()
    assert torch.allclose(z.grad, upstream)  # identity gradient through the quantiser


def test_the_codebook_gradient_is_the_same_run_after_run():
    # Many vectors share few codes, so a codebook row sums thousands of gradients: their order must
    # not depend on threads (codebook[indices]'s backward on the CPU did, index_select's does not).
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=8, code_dim=4).train()
    z = torch.randn(64, 4, 16, 16)

    def codebook_grad():
        q.zero_grad()
        _, _, losses = q(z)
        (losses["codebook"] * 1e3).backward()
        return q.embedding.weight.grad.clone()

    first = codebook_grad()
    assert first.abs().sum() > 0
    assert all(torch.equal(first, codebook_grad()) for _ in range(5))


def test_quantizer_losses_and_beta():
    q = VectorQuantizer(codebook_size=8, code_dim=4, l2_norm=False, commit_beta=0.25).train()
    _, _, losses = q(torch.randn(2, 4, 2, 2))
    assert torch.allclose(losses["commit"], 0.25 * losses["codebook"], rtol=1e-5)


def test_entropy_loss_prefers_confident_diverse_assignments():
    confident_diverse = torch.eye(4) * 10
    collapsed = torch.zeros(4, 4)
    collapsed[:, 0] = 10
    assert entropy_loss(confident_diverse, 1.0) < entropy_loss(collapsed, 1.0)


@pytest.mark.parametrize("ch_mult,f", [((1, 2, 2, 4), 8), ((1, 1, 2, 2, 4), 16)])
def test_encoder_decoder_shapes(ch_mult, f):
    cfg = VQConfig(image_size=64, ch=32, ch_mult=ch_mult, num_res_blocks=1, z_channels=32, codebook_size=64)
    model = build_tokenizer(cfg).eval()
    assert cfg.downsample == f
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    codes = model.encode(x)
    assert codes.shape == (2, 64 // f, 64 // f) and codes.dtype == torch.int64
    assert model.codes_shape == (64 // f, 64 // f)
    assert model.decode(codes).shape == (2, 3, 64, 64)


def test_presets_match_llamagen_sizes():
    for name, millions in [("VQ-16", 72), ("VQ-8", 70)]:
        with torch.device("meta"):
            m = build_tokenizer(tokenizer_config(name))
        n = sum(p.numel() for p in m.parameters()) / 1e6
        assert abs(n - millions) / millions < 0.02, (name, n)
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        tokenizer_config("VQ-99")


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    cfg = tokenizer_config("vq-tiny", image_size=16)
    model = build_tokenizer(cfg).eval()
    meta = checkpoint.CheckpointMeta(kind="vq", config=cfg.to_dict())
    checkpoint.save(tmp_path / "run", 1, meta, model.state_dict())
    loaded = load_tokenizer(tmp_path / "run")
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.equal(model.encode(x), loaded.encode(x))
    assert torch.equal(model.decode(model.encode(x)), loaded.decode(loaded.encode(x)))
