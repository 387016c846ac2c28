import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imagelm.eval.batches import load_reference, save_images_npz, save_reference
from imagelm.eval.features import (Activations, InceptionFeatures, default_inception_path, evaluate_samples,
                                   inception_input, reference_stats, resize_bilinear_tf)
from imagelm.eval.inception import _BRANCHES, _TENSORS, _TORCHVISION_BLOCKS, SPATIAL_DIM, load_inception


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
        feats, logits, spatial = net(x)
        ref, _, ref_spatial = inception.net(x)
    assert torch.allclose(feats, ref, atol=1e-5) and torch.allclose(spatial, ref_spatial, atol=1e-5)
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
    """A stand-in feature net: the mean colour of each image as 3-d features, the mean colours of a
    4x4 grid of blocks as 48-d spatial ones."""
    name, dim, has_logits, has_spatial = "toy", 3, False, True

    def activations(self, images, progress=False, desc=""):
        n, h, w, _ = images.shape
        blocks = images.astype(np.float32).reshape(n, 4, h // 4, 4, w // 4, 3).mean((2, 4))   # [n, 4, 4, 3]
        return Activations(blocks.mean((1, 2)), None, blocks.reshape(n, -1) / 255)


def _frechet_low_rank(a, b):
    """The Fréchet distance of two small feature sets [n, D], [m, D] (n, m << D) by another route:
    with centred A, B, tr((S_a S_b)^1/2) is the sum of singular values of A B^T / sqrt((n-1)(m-1))."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    ca, cb = a - a.mean(0), b - b.mean(0)
    trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    diff = a.mean(0) - b.mean(0)
    return diff @ diff + (ca ** 2).sum() / (len(a) - 1) + (cb ** 2).sum() / (len(b) - 1) - 2 * trace_sqrt


def _scripted_spatial(inception_file, images):
    """mixed_6/conv's first 7 channels in NHWC order, run through the weights file's own TorchScript
    modules (not our InceptionV3): [N, 17 * 17 * 7]."""
    layers = torch.jit.load(str(inception_file), map_location="cpu").eval().net.layers
    x = inception_input(images)
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        for name in ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2",
                     "mixed_3", "mixed_4", "mixed_5"]:
            x = getattr(layers, name)(x)
        x = layers.mixed_6.conv(x)                                  # [N, 192, 17, 17]
    return x[:, :7].permute(0, 2, 3, 1).reshape(len(images), -1).numpy()


def test_sfid_equals_numpy_on_the_files_own_mixed_6_conv_features(inception, inception_file, tmp_path):
    """sFID of 3 samples against 4 reference images (an image batch, so its spatial statistics are made
    here too) = the Fréchet distance computed in numpy by another route on spatial features taken from
    the TorchScript file's own mixed_6/conv."""
    from imagelm.eval.features import dataset_images
    digits = dataset_images("digits", 32, "all", length=5)
    noise = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    samples, ref = np.concatenate([digits[:1], noise]), digits[1:]
    save_images_npz(tmp_path / "s.npz", samples)
    save_images_npz(tmp_path / "r.npz", ref)
    theirs_s, theirs_r = _scripted_spatial(inception_file, samples), _scripted_spatial(inception_file, ref)
    acts = inception.activations(samples)
    assert acts.spatial.shape == theirs_s.shape == (3, SPATIAL_DIM) == (3, 2023) and acts.feats.shape == (3, 2048)
    assert np.allclose(acts.spatial, theirs_s, atol=1e-4)
    r = evaluate_samples(tmp_path / "s.npz", tmp_path / "r.npz", inception, progress=False)
    assert r["sfid"] == pytest.approx(_frechet_low_rank(theirs_s, theirs_r), rel=1e-4)
    assert r["sfid"] > 0 and r["fid"] > 0 and r["is"] is None


def test_evaluate_samples_checks_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    save_images_npz(tmp_path / "s.npz", imgs)
    feats = _ToyNet().activations(imgs).feats
    save_reference(tmp_path / "r.npz", feats.mean(0), np.cov(feats, rowvar=False), feats=feats, feature_net="toy")
    r = evaluate_samples(tmp_path / "s.npz", tmp_path / "r.npz", _ToyNet(), progress=False)
    assert r["fid"] == pytest.approx(0, abs=1e-6) and (r["precision"], r["recall"]) == (1.0, 1.0)
    assert r["is"] is None and "default_1.pt" in r["notes"][1] and r["sfid"] is None and "mu_s" in r["notes"][0]
    save_reference(tmp_path / "other.npz", np.zeros(3), np.eye(3), feature_net="inception-2015-12-05")
    with pytest.raises(ValueError, match=r"other\.npz: statistics made with feature net"):
        evaluate_samples(tmp_path / "s.npz", tmp_path / "other.npz", _ToyNet(), progress=False)
    np.savez(tmp_path / "dim.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match=r"dim\.npz: features of dimension 2048, but toy gives 3"):
        evaluate_samples(tmp_path / "s.npz", tmp_path / "dim.npz", _ToyNet(), progress=False)


def test_stored_statistics_are_used_and_the_rest_comes_from_the_images(tmp_path):
    """An ADM-layout reference: stored mu/sigma/mu_s/sigma_s are used as they are (not recomputed from
    arr_0); precision/recall, which need features, come from its images."""
    rng = np.random.default_rng(2)
    imgs, ref_imgs = (rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8) for _ in range(2))
    save_images_npz(tmp_path / "s.npz", imgs)
    net = _ToyNet()
    acts, ref_acts = net.activations(imgs), net.activations(ref_imgs)
    mu, sigma = np.full(3, 200.0), np.eye(3)             # not the statistics of ref_imgs
    mu_s, sigma_s = np.zeros(48), np.eye(48)
    np.savez(tmp_path / "adm.npz", arr_0=ref_imgs, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    r = evaluate_samples(tmp_path / "s.npz", tmp_path / "adm.npz", net, progress=False)
    from imagelm.eval.fid import feature_stats, frechet_distance, precision_recall
    assert r["fid"] == pytest.approx(frechet_distance(*feature_stats(acts.feats), mu, sigma))
    assert r["sfid"] == pytest.approx(frechet_distance(*feature_stats(acts.spatial), mu_s, sigma_s))
    assert (r["precision"], r["recall"]) == precision_recall(ref_acts.feats, acts.feats, 3)
    assert r["pr_sizes"] == [30, 30]
    # the same file without statistics: all of them from arr_0
    np.savez(tmp_path / "bare.npz", arr_0=ref_imgs)
    r = evaluate_samples(tmp_path / "s.npz", tmp_path / "bare.npz", net, progress=False)
    assert r["fid"] == pytest.approx(frechet_distance(*feature_stats(acts.feats), *feature_stats(ref_acts.feats)))
    assert r["sfid"] == pytest.approx(frechet_distance(*feature_stats(acts.spatial), *feature_stats(ref_acts.spatial)))


def test_reference_stats_writes_what_evaluate_reads(tmp_path):
    imgs = np.random.default_rng(3).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    info = reference_stats(imgs, _ToyNet(), tmp_path / "ref.npz", data="shapes", split="train", progress=False)
    assert info == {"images": 20, "dim": 3, "path": str(tmp_path / "ref.npz"), "adm": False}   # not the Inception
    ref = load_reference(tmp_path / "ref.npz")
    assert np.array_equal(ref["images"], imgs) and ref["mu_s"].shape == (48,) and ref["split"] == "train"
    save_images_npz(tmp_path / "s.npz", imgs)
    r = evaluate_samples(tmp_path / "s.npz", tmp_path / "ref.npz", _ToyNet(), progress=False)
    assert r["fid"] == pytest.approx(0, abs=1e-6) and r["sfid"] == pytest.approx(0, abs=1e-6)


class _StandardNamedToy(_ToyNet):
    name = "inception-2015-12-05"        # so the ImageNet-specific checks apply


@pytest.mark.parametrize("case", ["few", "size", "float", "val-split", "val-name", "none"])
def test_warnings_say_why_a_number_may_not_compare(tmp_path, case, monkeypatch):
    import imagelm.eval.features as features
    if case == "none":
        monkeypatch.setattr(features, "FULL_N", 10)        # 256x256 uint8, "enough" samples, a training split
    size = 256 if case in ("few", "float", "val-split", "val-name", "none") else 16
    imgs = np.random.default_rng(4).integers(0, 256, (12, size, size, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=imgs.astype(np.float32) if case == "float" else imgs)
    ref = tmp_path / ("imagenet_val.npz" if case == "val-name" else "ref.npz")
    split = {"val-split": "test", "val-name": ""}.get(case, "train")      # a recorded split outranks the name
    reference_stats(imgs, _StandardNamedToy(), ref, split=split, progress=False)
    r = evaluate_samples(tmp_path / "s.npz", ref, _StandardNamedToy(), progress=False)
    warnings = r["warnings"]
    expected = {"few": "12 samples, fewer than 50,000: FID and sFID are biased upward",
                "size": "16x16 images, not 256x256", "float": "float32 pixels, rounded to uint8",
                "val-split": "validation/test-set reference (split 'test')",
                "val-name": "imagenet_val.npz: a validation/test-set reference (by its name)"}
    if case == "none":
        assert warnings == []
    else:
        assert any(expected[case] in w for w in warnings), warnings
        assert all("\n" not in w for w in warnings)
    assert r["fid"] == pytest.approx(0, abs=1e-6)        # the images themselves, whatever was said


def test_cli_ref_stats_writes_an_adm_reference_and_eval_prints_sfid_and_warnings(tmp_path, capsys):
    from imagelm.cli import main
    from imagelm.eval.features import dataset_images
    assert main(["ref-stats", "--data", "digits", "--num", "5", "--image-size", "32", "--split", "test",
                 "--out", str(tmp_path / "ref.npz"), "--batch-size", "8", "--device", "cpu"]) == 0
    assert "ADM layout: arr_0, mu, sigma, mu_s, sigma_s" in capsys.readouterr().out
    with np.load(tmp_path / "ref.npz") as z:
        assert z["mu"].shape == (2048,) and z["sigma_s"].shape == (2023, 2023) and z["arr_0"].shape == (5, 32, 32, 3)
    save_images_npz(tmp_path / "s.npz", dataset_images("digits", 32, "train", length=4))
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "ref.npz"),
                 "--batch-size", "8", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "sFID" in captured.out and "FID" in captured.out
    warnings = [line for line in captured.err.splitlines() if "warning" in line]     # (tqdm writes there too)
    assert len(warnings) == 3 and all(w.startswith("imagelm eval: warning: ") for w in warnings)
    assert "4 samples, fewer than 50,000" in warnings[0] and "32x32 images, not 256x256" in warnings[1]
    assert "split 'test'" in warnings[2]
    import json
    metrics = json.loads((tmp_path / "s.eval.json").read_text())
    assert metrics["sfid"] > 0 and metrics["fid"] > 0 and metrics["pr_sizes"] == [5, 4] and len(metrics["warnings"]) == 3
