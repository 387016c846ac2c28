import json

import pytest
import torch

from imagelm.cli import main
from imagelm.models import build_generator, gpt_config
from imagelm.train import throughput
from imagelm.train.throughput import MetricsLog, Throughput


def test_model_flops_per_token_follows_6n_plus_attention():
    config = gpt_config("GPT-B", vocab_size=16384, grid_size=16, num_classes=1000)
    with torch.device("meta"):
        model = build_generator(config, "ar")
    blocks = sum(p.numel() for p in model.trunk.layers.parameters())
    head = 768 * 16384
    assert throughput.model_flops_per_token(model) == 6 * (blocks + head) + 12 * 12 * 768 * 257
    assert 0.6e9 < throughput.model_flops_per_token(model) < 0.7e9    # ~6 x 98M (+ attention)


def test_peak_and_mfu():
    cpu = torch.device("cpu")
    assert throughput.peak_flops(cpu, torch.bfloat16) is None           # a CPU: n/a unless told
    assert throughput.peak_flops(cpu, None, peak_tflops=2.0) == 2e12
    with pytest.raises(ValueError, match="--peak-tflops"):
        throughput.peak_flops(cpu, None, peak_tflops=0)
    meter = Throughput(cpu, tokens_per_step=1000, flops_per_token=1e6, peak=1e9, world_size=2)
    for _ in range(3):
        meter.step()
    record = meter.read()
    assert record["steps"] == 3
    assert record["tokens_per_s"] == pytest.approx(3000 / record["seconds"])
    assert record["mfu"] == pytest.approx(record["tokens_per_s"] * 1e6 / 2e9)
    assert Throughput(cpu, 10).read()["mfu"] is None


def test_paused_time_is_not_counted(monkeypatch):
    clock = [100.0]                      # a clock the test moves: no wall-clock timing in unit tests
    monkeypatch.setattr(Throughput, "_now", lambda self: clock[0])
    meter = Throughput(torch.device("cpu"), tokens_per_step=10)
    clock[0] += 1.0
    meter.step()
    with meter.paused():                 # a preview or checkpoint
        clock[0] += 5.0
    clock[0] += 0.5
    record = meter.read()
    assert record["seconds"] == pytest.approx(1.5) and record["tokens_per_s"] == pytest.approx(10 / 1.5)
    clock[0] += 2.0                      # read() restarts the count
    assert meter.read()["seconds"] == pytest.approx(2.0)


def test_memory_is_reported_per_rank():
    mem = throughput.memory_per_rank(torch.device("cpu"), 1)
    assert len(mem) == 1 and mem[0] > 10 * 2 ** 20
    line = throughput.format_record(5, 10, {"loss": 1.0, "lr": 1e-3, "tokens_per_s": 1234.5, "mfu": None,
                                            "mem_per_rank": [2 ** 30, 2 ** 31]})
    assert "1,234 tok/s" in line and "MFU n/a" in line and "2.00 GiB/rank (max of 2)" in line


def test_metrics_jsonl_and_tensorboard(tmp_path, tiny_codes, capsys):
    log = MetricsLog(tmp_path, enabled=True)
    log.write(3, {"loss": 2.0, "mfu": None})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 3, "loss": 2.0, "mfu": None}
    argv = ["train", "--codes", str(tiny_codes), "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "4",
            "--precision", "fp32", "--device", "cpu", "--preview-every", "0", "--log", "tensorboard"]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "needs the tensorboard package" in err
    else:
        assert main(argv) == 0
        assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
