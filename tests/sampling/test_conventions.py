"""Sampling conventions (sampling/conventions.py), ELM's CFG schedules (the elm-* of
sampling/logits.py) and ELM's re-masking rule (sampling/masked.py), each checked against an
independent formula written here from ELM's own code (Pepper-lll/LMforImageGeneration:
llama/ar_model.py and llama/mlm_model.py generate_cfg, mask_by_random_topk), not from ours.

The end-to-end checks (imported ELM / LlamaGen fixtures sampled greedily against reference
samplers written from the originals) are in tests/compat/test_sample_as_originals.py.
"""
import dataclasses
import math

import pytest
import torch

from imagelm.images import OPTION_NAMES, Sampler, asked_sampler, resolve_sampler
from imagelm.metadata import CheckpointMeta, Provenance
from imagelm.sampling.conventions import plan_sampling, resolve_conventions, sampling_conventions
from imagelm.sampling.logits import SamplingOptions, cfg_scale_at, guide
from imagelm.sampling.masked import masked_count, still_masked
from elm_reference import elm_cfg, elm_mask_len, elm_masking


# ------------------------------------------------------------------ ELM's CFG schedules

@pytest.mark.parametrize("schedule", ["linear", "cos", "log", "square", "square_root", "powercos"])
@pytest.mark.parametrize("total", [1, 7, 10, 256])
@pytest.mark.parametrize("scale", [1.5, 4.0, 10.0])
def test_elm_schedules_match_elm_formulas(schedule, total, scale):
    for power in ((1.0, 2.0) if schedule == "powercos" else (1.0,)):
        options = SamplingOptions(cfg_scale=scale, cfg_schedule=f"elm-{schedule}", cfg_power=power)
        ref = [float(elm_cfg(i, total, scale, schedule, power)) for i in range(total)]
        assert options.cfg_scales(total) == pytest.approx(ref, rel=1e-13, abs=1e-13)
        assert cfg_scale_at(total - 1, total, scale, f"elm-{schedule}", power) == pytest.approx(ref[-1], rel=1e-13)


def test_our_schedules_keep_their_own_formulas():
    """Ours start at exactly 1 and end at the scale; ELM's linear is offset by one step."""
    assert cfg_scale_at(0, 16, 4.0, "linear") == 1.0 and cfg_scale_at(15, 16, 4.0, "linear") == 4.0
    assert cfg_scale_at(0, 16, 4.0, "elm-linear") == 1.0 + 3.0 / 16
    assert cfg_scale_at(8, 17, 4.0, "cos") == pytest.approx(2.5)                         # (1 - cos(pi/2)) / 2
    assert cfg_scale_at(8, 17, 4.0, "elm-cos") == pytest.approx(1 + 3 * math.sin(math.pi / 2 * 9 / 17))
    with pytest.raises(ValueError, match="cfg power"):
        SamplingOptions(cfg_schedule="elm-powercos", cfg_power=0)


def test_guide_at_scale_one_is_the_conditional_logits_exactly():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(3, 2, 50, generator=g), torch.randn(3, 2, 50, generator=g) * 7
    assert torch.equal(guide(cond, uncond, 1.0), cond)
    scale = torch.tensor([1.0, 3.0, 1.0])[:, None, None]
    out = guide(cond, uncond, scale)
    assert torch.equal(out[0], cond[0]) and torch.equal(out[2], cond[2])
    assert torch.equal(out[1], uncond[1] + 3.0 * (cond[1] - uncond[1]))


# ------------------------------------------------------------------ ELM's re-masking rule

@pytest.mark.parametrize("length", [5, 16, 64, 256])
def test_elm_mask_count_matches_elm(length):
    for steps in (1, 4, 10, 64):
        for step in range(steps):
            for unknown in sorted({1, 2, length // 2, length - 1, length}):
                got = masked_count(step, steps, torch.tensor([length]), torch.tensor([unknown]), "elm")
                assert got.item() == elm_mask_len(length, step, steps, unknown), (steps, step, unknown)
    # With nothing masked (everything given) nothing stays masked.
    assert masked_count(0, 4, torch.tensor([length]), torch.tensor([0]), "elm").item() == 0


@pytest.mark.parametrize("length", [5, 16, 64])
def test_elm_remask_keeps_ties_masked(length):
    g = torch.Generator().manual_seed(length)
    B = 6
    confidence = torch.randint(-4, 1, (B, length), generator=g).float()     # few values: many ties
    confidence[0] = torch.randn(length, generator=g)                         # no ties
    known = torch.rand(B, length, generator=g) < 0.3
    known[:, :2] = False                                                     # at least two unknown
    confidence = confidence.masked_fill(known, float("inf"))
    unknown = (~known).sum(1)
    tied_more = 0
    for keep_of in (lambda u: 1, lambda u: u // 2, lambda u: u - 1):
        keep = torch.stack([torch.tensor(max(1, keep_of(int(u)))) for u in unknown])
        got = still_masked(confidence, keep, "elm")
        for b in range(B):
            assert torch.equal(got[b], elm_masking(confidence[b], int(keep[b]))), b
        assert not (got & known).any()
        assert (got.sum(1) >= keep).all()
        tied_more += int((got.sum(1) > keep).sum())
        assert torch.equal(still_masked(confidence, keep, "rank").sum(1), keep)   # ours: exactly keep
    assert tied_more > 0                              # the fixture did exercise ties


# ------------------------------------------------------------------ the plan: defaults and meanings

def meta_from(source: str | None, fmt: str | None = None) -> CheckpointMeta:
    provenance = Provenance() if source is None else Provenance(source, "/x/file.pth", fmt)
    return CheckpointMeta(kind="ar", config={}, provenance=provenance)


def test_checkpoint_conventions_from_provenance():
    assert sampling_conventions(meta_from("elm", "elm-gpt")) == "elm"
    assert sampling_conventions(meta_from("llamagen", "llamagen-gpt")) == "llamagen"
    assert sampling_conventions(meta_from(None)) == sampling_conventions(None) == "imagelm"
    # A format-1 checkpoint's `imported_from` is its provenance (metadata.py reads it).
    old = CheckpointMeta.from_dict({"kind": "ar", "config": {}, "imported_from": {"format": "llamagen-gpt",
                                                                                   "path": "/x/c2i.pt"}})
    assert sampling_conventions(old) == "llamagen"
    assert resolve_conventions("auto", meta_from("elm")) == "elm"
    assert resolve_conventions("imagelm", meta_from("elm")) == "imagelm"
    with pytest.raises(ValueError, match="unknown sampling conventions 'maskgit'"):
        resolve_conventions("maskgit", None)


class _Gen:
    """What resolve_sampler reads of a generator: kind, config.cond, meta."""
    def __init__(self, kind="ar", cond="class", source=None):
        self.kind, self.meta = kind, meta_from(source)
        self.config = type("C", (), {"cond": cond})()


def test_sampler_resolution_fills_only_what_the_caller_left_unset():
    # The CLI: nothing given -> ours are its defaults (CFG 2), an ELM import's are sample_fid.sh's.
    cli = asked_sampler({k: None for k in OPTION_NAMES}, "auto", {"cfg_scale": 2.0})
    assert cli.defaulted == frozenset(OPTION_NAMES)
    assert resolve_sampler(_Gen(), cli).options == SamplingOptions(cfg_scale=2.0)
    elm = resolve_sampler(_Gen(source="elm"), cli)
    assert (elm.options.cfg_scale, elm.options.cfg_schedule, elm.options.top_k) == (4.0, "elm-linear", 1000)
    assert elm.conventions == "imagelm" and not elm.defaulted
    # Given options keep their value, in the conventions' meaning.
    given = asked_sampler({"cfg_scale": 3.0, "cfg_schedule": "cos"}, "auto", {"cfg_scale": 2.0})
    got = resolve_sampler(_Gen(source="elm"), given).options
    assert (got.cfg_scale, got.cfg_schedule, got.top_k) == (3.0, "elm-cos", 1000)
    assert resolve_sampler(_Gen(source="elm"), dataclasses.replace(given, conventions="imagelm")).options == \
        SamplingOptions(cfg_scale=3.0, cfg_schedule="cos")
    # A masked ELM import: ELM's re-masking, its temperature as the choice temperature.
    mlm = resolve_sampler(_Gen("mlm", source="elm"), asked_sampler({"temperature": 2.0}, "auto"))
    assert (mlm.remask, mlm.choice_temperature, mlm.options.temperature, mlm.steps) == ("elm", 2.0, 1.0, 10)
    # A LlamaGen text import: sample_t2i.py's defaults.
    t2i = resolve_sampler(_Gen(cond="text", source="llamagen"), cli).options
    assert (t2i.cfg_scale, t2i.top_k) == (7.5, 1000)
    # The library's plain Sampler on our model is untouched.
    assert resolve_sampler(_Gen(), Sampler()) == Sampler()
    with pytest.raises(ValueError, match="unknown sampling conventions"):
        Sampler(conventions="maskgit")
    with pytest.raises(ValueError, match="re-masking rule"):
        Sampler(remask="random")


def test_plans_take_the_original_scripts_defaults():
    ours = plan_sampling("imagelm", "ar")
    assert ours.options == SamplingOptions() and (ours.steps, ours.choice_temperature, ours.remask) == (10, 4.5, "rank")
    c2i = plan_sampling("llamagen", "ar", "class").options          # sample_c2i.py
    assert (c2i.cfg_scale, c2i.top_k, c2i.top_p, c2i.temperature, c2i.cfg_interval) == (4.0, 2000, 1.0, 1.0, -1)
    t2i = plan_sampling("llamagen", "ar", "text").options           # sample_t2i.py
    assert (t2i.cfg_scale, t2i.top_k) == (7.5, 1000)
    ar = plan_sampling("elm", "ar").options                         # sample_fid.sh
    assert (ar.cfg_scale, ar.cfg_schedule, ar.top_k, ar.temperature) == (4.0, "elm-linear", 1000, 1.0)
    mlm = plan_sampling("elm", "mlm")                                # sample.py
    assert (mlm.options.cfg_scale, mlm.options.cfg_schedule, mlm.steps, mlm.remask) == (4.0, "constant", 10, "elm")
    assert mlm.choice_temperature == 1.0 and mlm.options.temperature == 1.0


def test_plans_translate_each_projects_meaning():
    mlm = plan_sampling("elm", "mlm", temperature=2.5, top_k=1, cfg_schedule="linear")
    assert (mlm.choice_temperature, mlm.options.temperature, mlm.options.cfg_schedule) == (2.5, 1.0, "elm-linear")
    assert mlm.options.greedy
    assert plan_sampling("elm", "ar", cfg_schedule="square_root").options.cfg_schedule == "elm-square_root"
    assert plan_sampling("elm", "ar", cfg_schedule="elm-powercos").options.cfg_schedule == "elm-powercos"
    lg = plan_sampling("llamagen", "ar", cfg_scale=0.5, cfg_interval=3).options
    assert (lg.cfg_scale, lg.guided, lg.cfg_interval) == (1.0, False, 5)
    assert plan_sampling("llamagen", "ar", cfg_interval=0).options.cfg_scales(4) == [4.0, 4.0, 1.0, 1.0]
    ours = plan_sampling("imagelm", "ar", cfg_scale=0.5, cfg_interval=3, cfg_schedule="linear").options
    assert (ours.cfg_scale, ours.cfg_interval, ours.cfg_schedule) == (0.5, 3, "linear")
    with pytest.raises(ValueError, match="top-k must be >= 0"):
        plan_sampling("elm", "ar", top_k=-1)
