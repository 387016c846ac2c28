import numpy as np
import pytest
import scipy.linalg

from imagelm.eval.fid import (feature_stats, fid, frechet_distance, inception_score, load_images_npz,
                              load_reference, precision_recall, save_images_npz, save_stats)


def _scipy_fid(a, b):
    """The textbook formula with scipy's sqrtm, as pytorch-fid computes it."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(0).normal(size=(500, 64)) * 3 + 1
    assert fid(feats, feats) == pytest.approx(0, abs=1e-6)


def test_fid_matches_closed_form_for_known_gaussians():
    rng = np.random.default_rng(1)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # Commuting (diagonal) covariances: tr((s1 s2)^1/2) = sum sqrt(a_i b_i), so FID has a closed form.
    a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    closed = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-10)
    # A general pair: rotate both by the same orthogonal matrix, which leaves the distance unchanged.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(closed, rel=1e-9)


def test_fid_agrees_with_scipy_sqrtm_on_random_data():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32))
    b = rng.normal(size=(300, 32)) @ rng.normal(size=(32, 32)) + 0.5
    assert fid(a, b) == pytest.approx(_scipy_fid(a, b), rel=1e-6)


def test_feature_stats_in_chunks_match_numpy(monkeypatch):
    import importlib
    F = importlib.import_module("imagelm.eval.fid")  # the module: `imagelm.eval.fid` is the function
    monkeypatch.setattr(F, "CHUNK", 7)  # force many chunks
    x = np.random.default_rng(3).normal(size=(50, 5)).astype(np.float32)
    mu, sigma = feature_stats(x)
    assert np.allclose(mu, x.astype(np.float64).mean(0)) and np.allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))


def test_fid_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="feature dimensions differ: 4 vs 5"):
        fid(np.zeros((10, 4)), np.zeros((10, 5)))


def test_inception_score_limits():
    assert inception_score(np.zeros((100, 10))) == pytest.approx(1.0)
    confident = np.full((1000, 10), -50.0)
    confident[np.arange(1000), np.arange(1000) % 10] = 50.0  # each split holds every class equally often
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    mean, std = inception_score(confident, splits=5, with_std=True)
    assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6


def test_precision_recall():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(200, 8))
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    far = rng.normal(size=(200, 8)) + 100
    assert precision_recall(real, far, k=3) == (0.0, 0.0)
    # Fakes collapsed onto a small part of the real data: precise, but poor recall.
    collapsed = np.repeat(real[:5], 40, axis=0) + rng.normal(size=(200, 8)) * 1e-3
    p, r = precision_recall(real, collapsed, k=3)
    assert p == 1.0 and r < 0.1


def test_npz_round_trips_and_errors(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    save_images_npz(tmp_path / "s.npz", imgs, np.arange(5))
    back, labels = load_images_npz(tmp_path / "s.npz")
    assert np.array_equal(back, imgs) and labels.tolist() == [0, 1, 2, 3, 4]
    save_stats(tmp_path / "r.npz", np.zeros(4), np.eye(4), np.ones((3, 4)), "net-x")
    ref = load_reference(tmp_path / "r.npz")
    assert ref["feature_net"] == "net-x" and ref["sigma"].shape == (4, 4) and ref["feats"].shape == (3, 4)

    truncated = tmp_path / "t.npz"
    truncated.write_bytes((tmp_path / "s.npz").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"t\.npz: not a readable \.npz file"):
        load_images_npz(truncated)
    np.savez(tmp_path / "w.npz", arr_0=np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"w\.npz: arr_0 must be uint8 images \[N, H, W, 3\]"):
        load_images_npz(tmp_path / "w.npz")
    np.savez(tmp_path / "m.npz", mu=np.zeros(4), sigma=np.eye(3))
    with pytest.raises(ValueError, match=r"m\.npz: 'mu' must be \[D\] and 'sigma' \[D, D\]"):
        load_reference(tmp_path / "m.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_reference(tmp_path / "nope.npz")
