import json

import pytest

from imagelm.study import GENERATORS, run_study


@pytest.mark.slow
def test_study_smoke_runs_end_to_end(tmp_path):
    report = run_study(tmp_path / "study", budget="smoke", precision="fp32")
    text = report.read_text()
    for section in ("## Tokenizers", "## Token randomness", "## Generators", "## CFG schedule", "## top-k",
                    "## Attention locality"):
        assert section in text
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    assert set(results["generators"]) == set(GENERATORS)
    assert set(results["tokenizers"]) == {"VQ", "BAE"}
    assert {"BAE 1-12", "BAE 2-6", "BAE 3-4", "VQ 1-512"} <= set(results["token_kl"])
    assert len(results["locality"]["tiny"]) == 4 and len(results["locality"]["small"]) == 6
    for run in results["generators"].values():
        assert 0.0 <= run["accuracy"] <= 1.0 and run["fid"] >= 0.0
    for name in ("cfg_sweep_accuracy.png", "attention_locality.png", "samples-VQ-AR-tiny.png"):
        assert (tmp_path / "study" / name).is_file()
