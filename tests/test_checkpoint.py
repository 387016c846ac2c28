import json

import pytest
import torch

from imagelm import checkpoint
from imagelm.checkpoint import CheckpointError


def _save(run, step, **kw):
    meta = checkpoint.CheckpointMeta(kind="vq", config={"a": 1})
    return checkpoint.save(run, step, meta, {"w": torch.full((2,), float(step))}, **kw)


def test_save_is_complete_and_resolves_to_newest(tmp_path):
    run = tmp_path / "run"
    _save(run, 1)
    newest = _save(run, 2)
    assert checkpoint.resolve(run) == newest
    assert checkpoint.resolve(newest) == newest
    meta = checkpoint.read_meta(run)
    assert meta.step == 2 and meta.kind == "vq" and meta.path == newest
    assert torch.equal(checkpoint.load_weights(run)["w"], torch.full((2,), 2.0))


def test_keep_prunes_old_checkpoints(tmp_path):
    run = tmp_path / "run"
    for s in range(1, 5):
        _save(run, s, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step-0000003", "step-0000004"]


def test_half_written_checkpoint_is_ignored(tmp_path):
    run = tmp_path / "run"
    good = _save(run, 1)
    # A crash mid-write leaves a temp dir, or a step dir without weights: neither is taken.
    (run / "checkpoints" / ".tmp-step-0000002-x").mkdir()
    (run / "checkpoints" / ".tmp-step-0000002-x" / "config.json").write_text("{}")
    partial = run / "checkpoints" / "step-0000003"
    partial.mkdir()
    (partial / "config.json").write_text(json.dumps({"kind": "vq", "config": {}}))
    assert checkpoint.resolve(run) == good


def test_errors_are_one_line_and_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.resolve(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        checkpoint.resolve(tmp_path / "empty")
    _save(tmp_path / "run", 1)
    with pytest.raises(CheckpointError, match="'vq' checkpoint, but a generator"):
        checkpoint.expect_kind(checkpoint.read_meta(tmp_path / "run"), ("ar",), "generator")


def test_strict_load_names_mismatches():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match=r"missing 1 keys \(e.g. bias\)"):
        checkpoint.load_state_strict(model, {"weight": torch.zeros(2, 3)}, "x")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(e.g. weight \(2, 4\) vs \(2, 3\)\)"):
        checkpoint.load_state_strict(model, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "x")
