import pytest
import torch

from imagelm.sampling.logits import apply_cfg, cfg_scale_at, filter_top_k_top_p, sample_tokens


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    out = filter_top_k_top_p(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_top_k_top_p(probs.log(), top_p=0.7)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = filter_top_k_top_p(probs.log(), top_p=0.1)  # the best token always survives
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_top_k_1_and_temperature_0_are_greedy():
    logits = torch.randn(5, 3, 20)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_tokens(logits, top_k=1, generator=g), logits.argmax(-1))
    assert torch.equal(sample_tokens(logits, temperature=0.0, generator=g), logits.argmax(-1))


def test_sampling_follows_the_distribution():
    logits = torch.tensor([0.0, 1.0, 2.0]).log_softmax(-1).expand(60_000, 3)
    g = torch.Generator().manual_seed(1)
    counts = torch.bincount(sample_tokens(logits, generator=g), minlength=3).float() / 60_000
    assert torch.allclose(counts, logits[0].softmax(-1), atol=0.01)


def test_cfg_combine_and_schedules():
    cond, uncond = torch.randn(2, 5), torch.randn(2, 5)
    both = torch.cat([cond, uncond])
    assert torch.allclose(apply_cfg(both, 1.0), cond)
    assert torch.allclose(apply_cfg(both, 3.0), uncond + 3.0 * (cond - uncond))
    assert cfg_scale_at(7, 10, 4.0, "constant") == 4.0
    assert cfg_scale_at(0, 10, 4.0, "linear") == 1.0
    assert cfg_scale_at(9, 10, 4.0, "linear") == pytest.approx(4.0)
    with pytest.raises(ValueError, match="unknown cfg schedule"):
        cfg_scale_at(0, 10, 4.0, "cubic")


@pytest.mark.parametrize("schedule", ["linear", "cos", "log", "square", "square_root"])
def test_rising_schedules_go_from_1_to_the_scale(schedule):
    assert cfg_scale_at(0, 10, 4.0, schedule) == pytest.approx(1.0)
    assert cfg_scale_at(9, 10, 4.0, schedule) == pytest.approx(4.0)
    mid = cfg_scale_at(5, 11, 4.0, schedule)   # progress 0.5
    expected = {"linear": 2.5, "cos": 2.5, "log": 1 + 3 * 0.6201145, "square": 1.75, "square_root": 1 + 3 * 0.70710678}
    assert mid == pytest.approx(expected[schedule], rel=1e-5)


def test_draw_rows_follows_the_probabilities_and_never_picks_zero():
    from imagelm.sampling.logits import draw_rows
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0]]).repeat(100_000, 1)
    counts = torch.bincount(draw_rows(probs, g), minlength=5).float() / len(probs)
    assert counts[1] == 0 and counts[4] == 0                       # zero mass, even at the end
    assert torch.allclose(counts, probs[0], atol=0.01)
    one_hot = torch.zeros(3, 7)
    one_hot[:, 6] = 2.0                                            # unnormalised rows are fine
    assert torch.equal(draw_rows(one_hot, g), torch.tensor([6, 6, 6]))
