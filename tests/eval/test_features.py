import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imagelm.eval.features import (InceptionFeatures, default_inception_path, evaluate_samples, inception_input,
                                   resize_bilinear_tf)
from imagelm.eval.fid import save_images_npz, save_stats
from imagelm.eval.inception import _BRANCHES, _TENSORS, _TORCHVISION_BLOCKS, load_inception


@pytest.fixture(scope="module")
def inception_file():
    return default_inception_path()


@pytest.fixture(scope="module")
def inception(inception_file):
    return InceptionFeatures(inception_file, batch_size=8)


def _grid_sample_resize(x, size):
    """NVIDIA's metrics resize: an affine grid shifted so output pixel j samples input j * in / out."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype)
    theta[0, 2] += 1 / w - 1 / size
    theta[1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta.expand(b, 2, 3), [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_resize_matches_tf_legacy_bilinear():
    x = torch.rand(2, 3, 13, 32) * 255
    assert torch.allclose(resize_bilinear_tf(x, 299), _grid_sample_resize(x, 299), atol=1e-3)
    # Upscaling 2x: even outputs hit input pixels exactly, odd ones are midpoints (no half-pixel shift).
    y = resize_bilinear_tf(torch.tensor([[[[0.0, 10.0]]]]), 4)
    assert y[0, 0, 0].tolist() == [0.0, 5.0, 10.0, 10.0]


def test_inception_input_range():
    x = inception_input(np.array([[[[0, 128, 255]]]], dtype=np.uint8))
    assert x.shape == (1, 3, 299, 299)
    assert x[0, :, 0, 0].tolist() == [-1.0, 0.0, 127 / 128]


def test_real_inception_matches_torchscript_and_tells_digits_from_noise(inception, inception_file):
    """Our InceptionV3 with the default file's weights gives the file's own TorchScript features, and
    those features put handwritten digits nearer each other than to noise."""
    from imagelm.eval.features import dataset_images
    images = np.concatenate([dataset_images("digits", 32, "all", length=4),
                             np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)])
    feats, logits = inception(images)
    assert logits is None and not inception.has_logits
    assert feats.shape == (6, 2048) and feats.min() >= 0
    scripted = torch.jit.load(str(inception_file), map_location="cpu").eval()
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        expected = scripted(inception_input(images)).numpy()
    assert np.allclose(feats, expected, atol=1e-4)
    digits, noise = feats[:4], feats[4:]
    within = np.linalg.norm(digits[:2] - digits[2:], axis=1).mean()
    across = np.linalg.norm(digits[:2] - noise, axis=1).mean()
    assert within < 0.7 * across


def _torchvision_state(ours: dict) -> dict:
    """Our weights under pytorch-fid's (torchvision) names, built from the rename tables."""
    from imagelm.eval.inception import _rename_torchvision
    out = {}
    for block in _TORCHVISION_BLOCKS:
        branches = [None] + [b for table in _BRANCHES.values() for b in table]
        for branch in branches:
            for tensor in _TENSORS:
                key = f"{block}.{tensor}" if branch is None else f"{block}.{branch}.{tensor}"
                new = _rename_torchvision(key)
                if new is not None and new in ours:
                    out[key] = ours[new].clone()
    return out


def test_loads_pytorch_fid_and_plain_state_dicts(inception, tmp_path):
    ours = inception.net.state_dict()
    fc = torch.randn(1008, 2048) * 0.01
    tv = _torchvision_state(ours)
    assert len(tv) == len(ours)  # every tensor has a torchvision name
    tv.update({"fc.weight": fc, "fc.bias": torch.ones(1008), "AuxLogits.fc.weight": torch.zeros(1)})
    torch.save(tv, tmp_path / "pt_inception-2015-12-05-test.pth")
    net = load_inception(tmp_path / "pt_inception-2015-12-05-test.pth")
    assert net.has_logits and net.source.startswith("pytorch-fid")
    x = torch.rand(1, 3, 96, 96) * 2 - 1  # any side >= 75 runs the trunk; small is fast
    with torch.inference_mode():
        feats, logits = net(x)
        ref, _ = inception.net(x)
    assert torch.allclose(feats, ref, atol=1e-5)
    assert torch.allclose(logits, feats @ fc.T, atol=1e-4)  # logits without the output bias


def test_unknown_inception_files_give_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match=r"junk\.pt: unknown kind of Inception file"):
        load_inception(junk)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth: unknown kind of Inception file"):
        load_inception(tmp_path / "other.pth")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "script.pt")
    with pytest.raises(ValueError, match=r"script\.pt: a TorchScript file, but not an FID Inception"):
        load_inception(tmp_path / "script.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_inception(tmp_path / "missing.pt")


class _ToyNet:
    """A stand-in feature net: the mean colour of each image as 3-d features."""
    name, dim, has_logits = "toy", 3, False

    def __call__(self, images, progress=False, desc=""):
        return images.reshape(len(images), -1, 3).mean(1).astype(np.float32), None


def test_evaluate_samples_checks_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    save_images_npz(tmp_path / "s.npz", imgs)
    feats = _ToyNet()(imgs)[0]
    save_stats(tmp_path / "r.npz", feats.mean(0), np.cov(feats, rowvar=False), feats, "toy")
    r = evaluate_samples(tmp_path / "s.npz", tmp_path / "r.npz", _ToyNet(), progress=False)
    assert r["fid"] == pytest.approx(0, abs=1e-6) and (r["precision"], r["recall"]) == (1.0, 1.0)
    assert r["is"] is None and "default_1.pt" in r["notes"][0]
    save_stats(tmp_path / "other.npz", np.zeros(3), np.eye(3), None, "inception-2015-12-05")
    with pytest.raises(ValueError, match=r"other\.npz: statistics made with feature net"):
        evaluate_samples(tmp_path / "s.npz", tmp_path / "other.npz", _ToyNet(), progress=False)
    np.savez(tmp_path / "dim.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match=r"dim\.npz: features of dimension 2048, but toy gives 3"):
        evaluate_samples(tmp_path / "s.npz", tmp_path / "dim.npz", _ToyNet(), progress=False)
