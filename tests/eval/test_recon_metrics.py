import numpy as np
import pytest
import torch

from imagelm.eval.recon import evaluate_tokenizer, ssim_uint8


def _ssim_reference(x, y):
    """SSIM of two grey images by the textbook formula with one global window (used on flat patches)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = x.mean(), y.mean()
    vx, vy, cov = x.var(), y.var(), ((x - mx) * (y - my)).mean()
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def test_ssim_identical_is_one_and_noise_lowers_it():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (2, 3, 24, 24), generator=g, dtype=torch.uint8)
    assert torch.allclose(ssim_uint8(a, a), torch.ones(2))
    noisy = (a.float() + torch.randn(a.shape, generator=g) * 40).clamp(0, 255).to(torch.uint8)
    s = ssim_uint8(a, noisy)
    assert (s < 0.9).all() and (s > 0).all()


def test_ssim_of_flat_images_matches_the_formula():
    a = torch.full((1, 3, 11, 11), 100, dtype=torch.uint8)
    b = torch.full((1, 3, 11, 11), 140, dtype=torch.uint8)
    expected = _ssim_reference(np.full((11, 11), 100), np.full((11, 11), 140))
    assert ssim_uint8(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_ssim_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        ssim_uint8(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 3, 8, 9, dtype=torch.uint8))


class _Blur(torch.nn.Module):
    """A 'tokenizer' whose codes are the 2x2-pooled image's levels (0..255): reconstructions lose detail."""
    vocab_size = 256

    def encode(self, x):
        return ((torch.nn.functional.avg_pool2d(x, 2) + 1) * 127.5).round().long()

    def decode(self, codes):
        return torch.nn.functional.interpolate(codes.float() / 127.5 - 1, scale_factor=2, mode="nearest")


class _MeanColour:
    name, dim, has_logits = "toy", 3, False

    def __call__(self, images, progress=False, desc=""):
        return images.reshape(len(images), -1, 3).mean(1), None


def test_evaluate_tokenizer_keeps_its_keys_and_adds_ssim_and_rfid():
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(3, 8, 8, generator=g) * 2 - 1, 0, "") for _ in range(12)]
    m = evaluate_tokenizer(_Blur(), data, progress=False, feature_net=_MeanColour())
    assert {"psnr", "usage", "perplexity", "images", "ssim", "rfid"} <= set(m)
    assert 0 < m["ssim"] < 1 and m["images"] == 12
    assert m["rfid"] == pytest.approx(0, abs=0.05)  # pooling keeps each image's mean colour (up to rounding)
