import pytest
import torch

from imagelm.tokenizers.losses import (PatchDiscriminator, PerceptualLoss, adaptive_weight, generator_adv_loss,
                                       hinge_d_loss, reconstruction_loss)


def _fake_vgg16(path):
    # A state dict in torchvision's vgg16 layout, random weights: enough to test loading and behaviour.
    state, idx, in_ch = {}, 0, 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            idx += 1
            continue
        state[f"features.{idx}.weight"] = torch.randn(v, in_ch, 3, 3) * 0.05
        state[f"features.{idx}.bias"] = torch.zeros(v)
        in_ch, idx = v, idx + 2  # conv + relu
    torch.save(state, path)


def test_perceptual_loss_from_local_file(tmp_path):
    _fake_vgg16(tmp_path / "vgg16.pth")
    loss = PerceptualLoss(tmp_path / "vgg16.pth")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, torch.rand(2, 3, 32, 32) * 2 - 1).item() > 0


def test_perceptual_loss_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="--no-perceptual"):
        PerceptualLoss(tmp_path / "nope.pth")


def test_reconstruction_loss_weights():
    a, b = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    assert reconstruction_loss(a, b, 1.0, 0.0).item() == pytest.approx(0.5)
    assert reconstruction_loss(a, b, 0.0, 1.0).item() == pytest.approx(0.25)


def test_discriminator_and_hinge_losses():
    d = PatchDiscriminator(ndf=8, n_layers=3)
    logits = d(torch.randn(2, 3, 64, 64))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # a grid of patch logits
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0  # confident and right
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)
    assert generator_adv_loss(torch.full((4,), 3.0)).item() == -3.0


def test_adaptive_weight_balances_gradients():
    last = torch.nn.Parameter(torch.ones(3))
    rec = (last * 2).sum()
    adv = (last * 8).sum()
    assert adaptive_weight(rec, adv, last).item() == pytest.approx(0.25, rel=1e-3)
