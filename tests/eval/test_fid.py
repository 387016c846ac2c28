import numpy as np
import pytest
import scipy.linalg

from imagelm.eval.batches import as_uint8_rgb, load_images_npz, load_reference, save_images_npz, save_reference
from imagelm.eval.fid import feature_stats, fid, frechet_distance, inception_score, precision_recall


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


def _improved_gan_is(probs, split_size):
    """ADM's formula, written out in numpy: consecutive runs of split_size rows, KL to their mean."""
    scores = []
    for i in range(0, len(probs), split_size):
        part = probs[i:i + split_size]
        kl = (part * (np.log(part) - np.log(part.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))


def test_inception_score_uses_adm_5000_image_splits_by_default():
    """12,000 samples: ADM scores 5,000 + 5,000 + 2,000 rows; 10 equal parts give another number."""
    logits = np.random.default_rng(5).normal(size=(12_000, 20)) * 3
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    adm = _improved_gan_is(probs, 5000)
    assert inception_score(logits) == pytest.approx(adm, rel=1e-9)
    assert inception_score(logits, split_size=3000) == pytest.approx(_improved_gan_is(probs, 3000), rel=1e-9)
    ours = inception_score(logits, splits=10)
    assert ours == pytest.approx(_improved_gan_is(probs, 1200), rel=1e-9) and abs(ours - adm) > 1e-3


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


def test_precision_recall_chunks_agree_with_one_block(monkeypatch):
    import importlib
    F = importlib.import_module("imagelm.eval.fid")
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(300, 16)), rng.normal(size=(250, 16)) + 0.3
    whole = precision_recall(real, fake, k=3)
    monkeypatch.setattr(F, "DISTANCE_ENTRIES", 1000)      # 3-4 rows a block
    assert precision_recall(real, fake, k=3) == whole and 0 < whole[0] < 1


def test_npz_round_trips_and_errors(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    save_images_npz(tmp_path / "s.npz", imgs, np.arange(5))
    back, labels = load_images_npz(tmp_path / "s.npz")
    assert np.array_equal(back, imgs) and labels.tolist() == [0, 1, 2, 3, 4]
    save_reference(tmp_path / "r.npz", np.zeros(4), np.eye(4), feats=np.ones((3, 4)), feature_net="net-x")
    ref = load_reference(tmp_path / "r.npz")
    assert ref["feature_net"] == "net-x" and ref["sigma"].shape == (4, 4) and ref["feats"].shape == (3, 4)
    assert not ref["has_images"] and "mu_s" not in ref

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
    np.savez(tmp_path / "h.npz", mu=np.zeros(4), sigma=np.eye(4), mu_s=np.zeros(2))
    with pytest.raises(ValueError, match=r"h\.npz: has only one of 'mu_s' and 'sigma_s'"):
        load_reference(tmp_path / "h.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_reference(tmp_path / "nope.npz")


def test_adm_reference_layout_round_trips(tmp_path):
    """Our writer gives the five arrays ADM's evaluator reads (arr_0, mu, sigma, mu_s, sigma_s), and our
    reader takes an ADM-made file (those five, nothing else) whole."""
    rng = np.random.default_rng(7)
    imgs = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    mu, sigma, mu_s, sigma_s = rng.normal(size=5), np.eye(5) * 2, rng.normal(size=3), np.eye(3) * 3
    save_reference(tmp_path / "ours.npz", mu, sigma, mu_s=mu_s, sigma_s=sigma_s, images=imgs,
                   feats=rng.normal(size=(6, 5)), feature_net="inception-2015-12-05", data="digits", split="train")
    with np.load(tmp_path / "ours.npz") as z:           # what ADM's evaluator does with a reference batch
        assert {"arr_0", "mu", "sigma", "mu_s", "sigma_s"} <= set(z.files)
        assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == (6, 8, 8, 3)
        assert np.array_equal(z["mu_s"], mu_s) and z["sigma"].shape == (5, 5)
    ref = load_reference(tmp_path / "ours.npz")
    assert (ref["data"], ref["split"], ref["feature_net"]) == ("digits", "train", "inception-2015-12-05")
    assert np.array_equal(ref["images"], imgs) and np.array_equal(ref["sigma_s"], sigma_s)
    np.savez(tmp_path / "adm.npz", arr_0=imgs, mu=mu.astype(np.float32), sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    adm = load_reference(tmp_path / "adm.npz", images=False)
    assert adm["has_images"] and "images" not in adm and adm["feature_net"] == "" and adm["split"] == ""
    assert adm["mu"].dtype == np.float64 and np.allclose(adm["mu"], mu) and np.array_equal(adm["mu_s"], mu_s)
    with pytest.raises(ValueError, match="give both mu_s and sigma_s"):
        save_reference(tmp_path / "x.npz", mu, sigma, mu_s=mu_s)


def test_image_arrays_are_converted_with_a_reason_or_refused():
    notes = []
    grey = np.full((2, 4, 4), 7, np.uint8)
    out = as_uint8_rgb(grey, "g.npz", notes)
    assert out.shape == (2, 4, 4, 3) and (out == 7).all() and "grey images" in notes[-1]
    out = as_uint8_rgb(np.full((2, 4, 4, 4), 9, np.uint8), "a.npz", notes)
    assert out.shape == (2, 4, 4, 3) and "alpha dropped" in notes[-1]
    out = as_uint8_rgb(np.full((2, 4, 4, 3), 12.6), "f.npz", notes)
    assert out.dtype == np.uint8 and (out == 13).all() and "float64 pixels, rounded to uint8" in notes[-1]
    assert len(notes) == 3 and all("\n" not in n for n in notes)
    for bad, message in [(np.random.default_rng(0).random((2, 4, 4, 3)), r"a \[0, 1\] or \[-1, 1\] scale"),
                         (np.random.default_rng(1).uniform(-1, 1, (2, 4, 4, 3)), r"a \[0, 1\] or \[-1, 1\] scale"),
                         (np.full((2, 3, 8, 8), 5, np.uint8), "channels first"),
                         (np.full((2, 4, 4, 3), 300, np.int32), "outside 0..255"),
                         (np.full((2, 4, 4, 3), np.nan), "NaN"),
                         (np.zeros((0, 4, 4, 3), np.uint8), r"\[N, H, W, 3\]")]:
        with pytest.raises(ValueError, match=message):
            as_uint8_rgb(bad, "b.npz", [])
