"""Training at scale on this CPU: 2 gloo processes (DDP, FSDP2) against one, sharded checkpoints,
crash-safe saving, and the strategy seams of imagelm/train/parallel.py."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distributed import launch
from imagelm import checkpoint
from imagelm.cli import main
from imagelm.models import build_generator, gpt_config, load_generator
from imagelm.train import parallel
from imagelm.train.generator import generator_loss

# 6 steps of the tiny generator on the session's 16x16 shapes codes (2 views each: flip), global
# batch 8, checkpoints at 3 and 6. No condition dropout: its draws are per rank, so it is the one
# random thing that differs between 1 and 2 processes (see imagelm/data/sampler.py for the rest).
ARGS = ["--steps", "6", "--batch-size", "8", "--log-every", "1", "--ckpt-every", "3", "--preview-every", "0",
        "--precision", "fp32", "--device", "cpu", "--class-dropout", "0", "--lr", "3e-3", "--warmup", "0"]


def _train_argv(codes, out, *extra):
    return ["train", "--codes", str(codes), "--out", str(out), *ARGS, *extra]


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _ckpt(run, step):
    return run / "checkpoints" / f"step-{step:07d}"


def _check(results):
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def single_run(tiny_codes, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert main(_train_argv(tiny_codes, out)) == 0
    return out


@pytest.fixture(scope="module")
def ddp_run(tiny_codes, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _check(launch(_train_argv(tiny_codes, out, "--strategy", "ddp", "--grad-accum", "2"), world_size=2))
    return out


@pytest.fixture(scope="module")
def fsdp_run(tiny_codes, tmp_path_factory):
    """FSDP over 2 ranks with activation checkpointing, killed (SIGKILL, both ranks) while writing
    the step-6 checkpoint: every step is logged, step 3's sharded checkpoint is complete."""
    out = tmp_path_factory.mktemp("fsdp")
    results = launch(_train_argv(tiny_codes, out, "--strategy", "fsdp", "--activation-checkpointing"), world_size=2,
                     env={"IMAGELM_TEST_KILL_AT_SAVE": "6"})
    assert [r.returncode for r in results] == [-9, -9], results[0].stderr[-3000:]
    return out


def test_ddp_with_grad_accumulation_matches_single_process(single_run, ddp_run):
    single, ddp = _losses(single_run), _losses(ddp_run)
    assert len(single) == len(ddp) == 6
    assert single[-1] < single[0] - 0.1  # it learns, so the curves compare something
    np.testing.assert_allclose(ddp, single, rtol=1e-5, atol=1e-5)
    a, b = load_file(_ckpt(single_run, 6) / "model.safetensors"), load_file(_ckpt(ddp_run, 6) / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)  # Adam magnifies float noise where grads are ~0


def test_fsdp_matches_single_process(single_run, fsdp_run):
    np.testing.assert_allclose(_losses(fsdp_run), _losses(single_run), rtol=1e-5, atol=1e-5)


def test_sharded_checkpoint_killed_mid_write_resumes_on_one_rank(single_run, fsdp_run, tiny_codes, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fsdp_run, run)
    root = run / "checkpoints"
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step-0000003"]
    assert checkpoint.is_sharded(_ckpt(run, 3)) and not (_ckpt(run, 3) / "model.safetensors").exists()
    assert (root / ".tmp-step-0000006-sharded").is_dir()          # the half-written one, never taken
    # The sharded step-3 state (model, EMA, optimizer: 2 ranks' shards) continues in one process.
    assert main(_train_argv(tiny_codes, run, "--resume", "auto")) == 0
    resumed = _losses(run)[6:]
    np.testing.assert_allclose(resumed, _losses(single_run)[3:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(resumed, _losses(fsdp_run)[3:], rtol=1e-5, atol=1e-5)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(_ckpt(single_run, 6) / name), load_file(_ckpt(run, 6) / name)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a), name
    assert not list(root.glob(".tmp-*"))                             # swept by the next save


def test_fsdp_resumes_from_a_full_checkpoint(single_run, tiny_codes, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(_ckpt(single_run, 3), _ckpt(run, 3))   # model, EMA, position-keyed optimizer state
    _check(launch(_train_argv(tiny_codes, run, "--strategy", "fsdp", "--resume"), world_size=2))
    np.testing.assert_allclose(_losses(run), _losses(single_run)[3:], rtol=1e-5, atol=1e-5)
    assert checkpoint.is_sharded(_ckpt(run, 6))


def test_export_consolidates_a_sharded_checkpoint(fsdp_run, tmp_path, capsys):
    sharded = _ckpt(fsdp_run, 3)
    assert main(["export", "consolidate", str(sharded), str(tmp_path / "plain")]) == 0
    plain = tmp_path / "plain"
    model = load_file(plain / "model.safetensors")
    gen = load_generator(plain, prefer_ema=False)                  # strict load: every key, every shape
    assert model.keys() == gen.state_dict().keys()
    direct = checkpoint.load_weights(sharded, prefer_ema=False)    # read from the shards on the fly
    assert all(torch.equal(model[k], direct[k]) for k in model)
    ema = load_file(plain / "ema.safetensors")
    assert any(not torch.equal(ema[k], model[k]) for k in model)
    assert checkpoint.read_meta(plain)["step"] == 3
    assert main(["export", "consolidate", str(sharded), str(plain)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_single_process_killed_mid_write_resumes_exactly(single_run, tiny_codes, tmp_path):
    run = tmp_path / "run"
    results = launch(_train_argv(tiny_codes, run), world_size=1,
                     env={"IMAGELM_TEST_KILL_AT_SAVE": "6", "OMP_NUM_THREADS": "2"})
    assert results[0].returncode == -9
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step-0000003"]
    temps = list((run / "checkpoints").glob(".tmp-step-0000006-*"))
    assert len(temps) == 1 and (temps[0] / "model.safetensors").is_file()   # killed after the weights
    assert main(_train_argv(tiny_codes, run, "--resume")) == 0
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(_ckpt(single_run, 6) / name), load_file(_ckpt(run, 6) / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name      # bit for bit
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_bad_strategy_flags_are_one_line_errors(tiny_codes, tmp_path, capsys):
    cases = [(["--strategy", "fsdp"], "needs several processes"),
             (["--strategy", "ddp"], "needs several processes"),
             (["--grad-accum", "3"], "not divisible by --grad-accum 3")]
    for extra, message in cases:
        assert main(_train_argv(tiny_codes, tmp_path / "x", *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    with pytest.raises(SystemExit):
        main(_train_argv(tiny_codes, tmp_path / "x", "--strategy", "zero3"))
    assert main(["train-tokenizer", "--out", str(tmp_path / "t"), "--activation-checkpointing"]) == 2
    assert "is for `imagelm train`" in capsys.readouterr().err


def test_resolve_strategy():
    assert parallel.resolve_strategy(None, 1) == "single"
    assert parallel.resolve_strategy(None, 4) == "ddp"
    assert parallel.resolve_strategy("fsdp", 4) == "fsdp"
    with pytest.raises(ValueError, match="torchrun started 2"):
        parallel.resolve_strategy("single", 2)
    with pytest.raises(ValueError, match="unknown --strategy"):
        parallel.resolve_strategy("tp", 2)


def test_split_micro():
    assert parallel.split_micro(8, 2) == [slice(0, 4), slice(4, 8)]
    with pytest.raises(ValueError, match=">= 1"):
        parallel.split_micro(8, 0)


def test_activation_checkpointing_gives_the_same_gradients_and_keys():
    config = gpt_config("tiny", grid_size=4, vocab_size=32, num_classes=4, class_dropout=0.0, resid_dropout=0.1)
    torch.manual_seed(0)
    plain = build_generator(config, "ar").train()
    checked = build_generator(config, "ar").train()
    checked.load_state_dict(plain.state_dict())
    parallel.parallelize(checked, "single", torch.device("cpu"), activation_checkpointing=True)
    tokens, labels = torch.randint(32, (3, 16)), torch.tensor([0, 1, 2])
    grads = []
    for model in (plain, checked):
        torch.manual_seed(1)  # the same dropout masks (checkpointing replays them in the recompute)
        generator_loss("ar", model, tokens, labels).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert checked.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


@pytest.mark.slow
def test_compiled_training_matches_eager(single_run, tiny_codes, tmp_path):
    out = tmp_path / "compiled"
    assert main(_train_argv(tiny_codes, out, "--compile")) == 0
    np.testing.assert_allclose(_losses(out), _losses(single_run), rtol=1e-4, atol=1e-4)
