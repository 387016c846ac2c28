import json

import numpy as np
import pytest
import torch

from imagelm.checkpoint import CheckpointError
from imagelm.eval.classifier import class_accuracy, load_classifier
from imagelm.eval.features import ClassifierFeatures, dataset_images
from imagelm.train.classifier import ClassifierTrainArgs, train_classifier


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    train_classifier(ClassifierTrainArgs(data="shapes-simple", out=str(out), image_size=16, data_length=192, steps=40,
                                         batch_size=32, width=16, feature_dim=32, device="cpu", progress=False))
    return out


def test_classifier_checkpoint_is_self_describing_and_learns(classifier_dir):
    ckpt = sorted((classifier_dir / "checkpoints").iterdir())[-1]
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["kind"] == "classifier" and meta["config"]["num_classes"] == 8
    assert meta["class_names"][0] == "circle" and meta["extra"]["data"] == "shapes-simple"
    net = load_classifier(classifier_dir)
    assert net.meta.provenance.source == "imagelm" and net.meta.step == 40
    images = dataset_images("shapes-simple", 16, "test", length=64)
    labels = [net.meta.class_names.index(k) for k in _kinds("shapes-simple", 16, 64)]
    accuracy = class_accuracy(net, images, labels)
    assert accuracy == pytest.approx(net.meta.extra["heldout_accuracy"])
    assert accuracy > 0.5  # 8 classes: chance is 1/8


def _kinds(name, size, n):
    from imagelm.data import build_dataset
    ds = build_dataset(name, image_size=size, split="test", length=n)
    return [ds.attributes(i)["shapes"][0]["kind"] for i in range(n)]


def test_classifier_features_resize_any_input(classifier_dir):
    net = ClassifierFeatures(classifier_dir)
    feats, logits = net(np.zeros((3, 40, 40, 3), dtype=np.uint8))
    assert feats.shape == (3, 32) and logits.shape == (3, 8) and net.dim == 32
    assert net.name == "builtin-classifier:shapes-simple:16px"


def test_load_classifier_refuses_other_checkpoints(tiny_tokenizer):
    with pytest.raises(CheckpointError, match="is a 'vq' checkpoint, but a classifier"):
        load_classifier(tiny_tokenizer)


def test_builtin_fid_ranks_real_above_noise(classifier_dir):
    from imagelm.eval.fid import fid
    net = ClassifierFeatures(classifier_dir)
    train = net(dataset_images("shapes-simple", 16, "train", length=96))[0]
    test = net(dataset_images("shapes-simple", 16, "test", length=96))[0]
    noise = net(np.random.default_rng(0).integers(0, 256, (96, 16, 16, 3), dtype=np.uint8))[0]
    assert fid(train, test) < 0.2 * fid(train, noise)
    torch.manual_seed(0)


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_train_features_ref_stats_and_eval(classifier_dir, tmp_path, capsys):
    from imagelm.cli import main
    from imagelm.data import build_dataset
    from imagelm.eval.fid import save_images_npz
    assert main(["train-features", "--data", "shapes-simple", "--image-size", "16", "--data-length", "64",
                 "--steps", "3", "--batch-size", "16", "--out", str(tmp_path / "f"), "--device", "cpu"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out

    builtin = ["--features", "builtin", "--classifier", str(classifier_dir)]
    assert main(["ref-stats", "--data", "shapes-simple", "--image-size", "16", "--num", "64",
                 "--out", str(tmp_path / "ref.npz")] + builtin) == 0
    ds = build_dataset("shapes-simple", image_size=16, split="test", length=40)
    save_images_npz(tmp_path / "s.npz", ds.render_batch(range(40)), [ds.class_id(i) for i in range(40)])
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "ref.npz"),
                 "--splits", "4"] + builtin) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "class accuracy" in out and "precision" in out
    metrics = json.loads((tmp_path / "s.eval.json").read_text())
    assert metrics["class_accuracy"] > 0.5 and metrics["fid"] >= 0 and 1 <= metrics["is"] <= 8
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1

    # Bad input: one line naming the file and the problem, exit code 2.
    (tmp_path / "cut.npz").write_bytes((tmp_path / "s.npz").read_bytes()[:200])
    assert main(["eval", "--samples", str(tmp_path / "cut.npz"), "--ref", str(tmp_path / "ref.npz")] + builtin) == 2
    assert "cut.npz: not a readable .npz file" in _error_line(capsys)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "ref.npz"),
                 "--inception", str(tmp_path / "junk.pt")]) == 2
    assert "junk.pt: unknown kind of Inception file" in _error_line(capsys)
    assert main(["ref-stats", "--data", "shapes", "--out", str(tmp_path / "r.npz"), "--features", "builtin"]) == 2
    assert "--features builtin needs --classifier" in _error_line(capsys)
