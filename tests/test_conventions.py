"""Sampling imported models as their original code does (sampling/conventions.py, the elm-* schedules in
sampling/logits.py, ELM's re-masking in sampling/masked.py).

The references below are written here from the originals' code, not from ours: ELM's generate_cfg
(llama/ar_model.py, llama/mlm_model.py, with mask_by_random_topk) and LlamaGen's generate()
(autoregressive/models/generate.py), run over reference forwards of imported fixtures.
"""
import math

import numpy as np
import pytest
import torch

import imagelm
from imagelm.cli import main
from imagelm.compat import convert
from imagelm.sampling.conventions import plan_sampling, resolve_conventions, sampling_conventions
from imagelm.sampling.logits import SamplingOptions, cfg_scale_at, guide
from imagelm.sampling.masked import masked_count, still_masked
from test_compat_elm import N_SUB, elm_ar_state, elm_mlm_state, ref_elm_logits, ref_elm_mlm_logits
from test_compat_llamagen import CLASSES, GRID, llamagen_gpt_state, ref_logits

L = GRID * GRID


# ------------------------------------------------------------------ ELM's CFG schedules

def elm_cfg(step: int, num_iter: int, cfg_scale: float, schedule: str, scale_pow: float = 1.0) -> float:
    """The scale ELM's generate_cfg uses at `step` (its AR sampler's schedules, and its masked
    sampler's powercos), in its own arithmetic (numpy float64)."""
    ratio = 1.0 * (step + 1) / num_iter
    if schedule == "linear":
        return 1.0 + (cfg_scale - 1.0) * ratio
    if schedule == "cos":
        return 1.0 + (cfg_scale - 1.0) * np.cos(-np.pi / 2 + ratio * (np.pi / 2))
    if schedule == "log":
        return 1.0 + (cfg_scale - 1.0) * np.log1p(ratio * (np.e - 1.0)) / np.log1p(np.e - 1.0)
    if schedule == "square":
        return 1.0 + (cfg_scale - 1) * ratio ** 2
    if schedule == "square_root":
        return 1.0 + (cfg_scale - 1.0) * ((1.0 * step / num_iter) ** 0.5)
    if schedule == "powercos":
        return (cfg_scale - 1) * ((1 - np.cos((((step + 1) / num_iter) ** scale_pow) * math.pi)) * 1 / 2) + 1
    raise AssertionError(schedule)


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

def elm_mask_len(L: int, step: int, num_iter: int, unknown: int) -> int:
    """ELM's mask_len: floor(L * cos(pi/2 * (step+1)/num_iter)), at most unknown - 1, at least 1."""
    mask_len = np.floor(L * np.cos(math.pi / 2.0 * (1.0 * (step + 1) / num_iter)))
    return int(max(1, min(unknown - 1, mask_len)))


def elm_masking(confidence: torch.Tensor, mask_len: int) -> torch.Tensor:
    """ELM's mask_by_random_topk for one image, noise already added: confidence [L] -> masked [L]."""
    sorted_confidence, _ = torch.sort(confidence[None, :, None], axis=-2)
    cut_off = sorted_confidence[:, mask_len - 1:mask_len, :]
    return (confidence[None, :, None] <= cut_off)[0, :, 0]


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


# ------------------------------------------------------------------ end to end: imported fixtures

def elm_ar_greedy(sd, cond, cfg_scale: float, schedule: str) -> torch.Tensor:
    """ELM's AR generate_cfg with top-k 1 (multinomial over a one-hot = argmax), always guided, over
    the reference forward: [B] -> tokens [B, L, n]."""
    B = len(cond)
    seq = torch.zeros(B, 0, N_SUB, dtype=torch.long)
    for step in range(L):
        cfg = elm_cfg(step, L, cfg_scale, schedule)
        padded = torch.cat([seq, torch.zeros(B, 1, N_SUB, dtype=torch.long)], 1)
        c = ref_elm_logits(sd, padded, cond)[:, -1]
        u = ref_elm_logits(sd, padded, torch.full_like(cond, CLASSES))[:, -1]
        logits = u + (c - u) * cfg
        seq = torch.cat([seq, logits.argmax(-1)[:, None]], 1)
    return seq


@pytest.fixture
def elm_ar_ckpt(tmp_path):
    torch.save(elm_ar_state(), tmp_path / "L-2-3.pth")
    return convert("elm-gpt", tmp_path / "L-2-3.pth", tmp_path / "elm-ar", image_size=64)


@pytest.mark.parametrize("schedule", ["linear", "cos"])
def test_imported_elm_ar_greedy_with_elm_schedules_equals_elm(elm_ar_ckpt, schedule):
    gen = imagelm.load(elm_ar_ckpt)
    assert sampling_conventions(gen.meta) == "elm"
    cond = torch.tensor([2, 6])
    ref = elm_ar_greedy(elm_ar_state(), cond, 4.0, schedule)
    for engine in ("plain", "engine"):
        got = imagelm.sample(gen, cond, cfg_scale=4.0, cfg_schedule=schedule, top_k=1, engine=engine, dtype="float32")
        assert torch.equal(got, ref), engine
    # Asked by ELM's name, the schedule is the same under our conventions too.
    got = imagelm.sample(gen, cond, cfg_scale=4.0, cfg_schedule=f"elm-{schedule}", top_k=1, conventions="imagelm",
                         dtype="float32")
    assert torch.equal(got, ref)


def elm_mlm_greedy(sd, cond, cfg_scale: float, schedule: str, num_iter: int):
    """ELM's masked generate_cfg with its candidates drawn greedily (argmax for Categorical) and
    temperature 0 (no Gumbel noise), over the reference forward -> (tokens [B, L, 1], how many steps
    left more positions masked than mask_len because of ties)."""
    B = len(cond)
    V = sd["tok_embedder.weight"].shape[0] - 1
    null = torch.full_like(cond, CLASSES)
    masked = torch.ones(B, L, dtype=torch.bool)
    tokens = torch.zeros(B, L, dtype=torch.long)
    tie_steps = 0
    for step in range(num_iter):
        ratio = 1.0 * (step + 1) / num_iter
        cfg = 1.0 + (cfg_scale - 1.0) * ratio if schedule == "linear" else cfg_scale
        c, u = ref_elm_mlm_logits(sd, tokens, cond, masked), ref_elm_mlm_logits(sd, tokens, null, masked)
        logits = u + (c - u) * cfg
        sampled = torch.where(masked, logits.argmax(-1), tokens)
        probs = torch.softmax(logits, dim=-1)
        selected = torch.gather(probs, -1, sampled[..., None])[..., 0]
        selected = torch.where(masked, selected.double(), np.inf).float()
        confidence = torch.log(selected)                    # + 0 * gumbel
        mask_len = elm_mask_len(L, step, num_iter, int(masked[0].sum()))
        new = torch.stack([elm_masking(confidence[b], mask_len) for b in range(B)])
        tie_steps += int((new.sum(1) > mask_len).any())
        tokens, masked = sampled, new
    assert V == 2 ** 3
    return tokens[..., None], tie_steps


@pytest.mark.parametrize("sharpen, schedule", [(1.0, "linear"), (30.0, "constant")])
def test_imported_elm_mlm_greedy_maskgit_equals_elm(tmp_path, sharpen, schedule):
    """sharpen scales the head so that softmax saturates: many candidates at probability 1 exactly,
    i.e. tied confidences, which ELM's rule keeps masked together."""
    sd = elm_mlm_state()
    sd["mlm_layer.ln.weight"] = sd["mlm_layer.ln.weight"] * sharpen
    sd["mlm_layer.ln.bias"] = sd["mlm_layer.ln.bias"] * sharpen
    torch.save(sd, tmp_path / "mlmL-1-3.pth")
    gen = imagelm.load(convert("elm-gpt", tmp_path / "mlmL-1-3.pth", tmp_path / "mlm", image_size=64))
    cond = torch.tensor([1, 5, 7])
    ref, tie_steps = elm_mlm_greedy(sd, cond, 3.0, schedule, num_iter=6)
    got = imagelm.sample(gen, cond, cfg_scale=3.0, cfg_schedule=schedule, top_k=1, temperature=0.0, steps=6)
    assert torch.equal(got, ref)
    if sharpen > 1:
        assert tie_steps > 0                          # ties did occur and were kept masked
        ours = imagelm.sample(gen, cond, cfg_scale=3.0, cfg_schedule=schedule, top_k=1, temperature=0.0, steps=6,
                              conventions="imagelm")
        assert not torch.equal(ours, ref)             # our rank rule reveals them: other tokens


def llamagen_greedy(sd, cond, cfg_scale: float, cfg_interval: int) -> torch.Tensor:
    """LlamaGen's generate() with top-k 1: guided only when cfg_scale > 1; the prefill (token 0) is
    always guided, decode step i (token i + 1) only while i <= cfg_interval (or cfg_interval -1), after
    that the conditional logits alone."""
    B = len(cond)
    null = torch.full_like(cond, CLASSES)
    seq = torch.zeros(B, 0, dtype=torch.long)
    cfg_flag = True
    for t in range(L):
        i = t - 1                                     # decode_n_tokens' counter; the prefill is t = 0
        if t > 0 and cfg_interval > -1 and i > cfg_interval:
            cfg_flag = False
        padded = torch.cat([seq, torch.zeros(B, 1, dtype=torch.long)], 1)
        logits = ref_logits(sd, padded, cond)[:, -1]
        if cfg_scale > 1.0 and cfg_flag:
            u = ref_logits(sd, padded, null)[:, -1]
            logits = u + (logits - u) * cfg_scale
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    return seq[..., None]


@pytest.mark.parametrize("cfg_scale, cfg_interval", [(4.0, 0), (4.0, 5), (0.5, -1)])
def test_imported_llamagen_greedy_equals_llamagen(tmp_path, cfg_scale, cfg_interval):
    sd = llamagen_gpt_state()
    torch.save({"model": sd}, tmp_path / "c2i_tiny_64.pt")
    gen = imagelm.load(convert("llamagen-gpt", tmp_path / "c2i_tiny_64.pt", tmp_path / "c2i"))
    assert sampling_conventions(gen.meta) == "llamagen"
    cond = torch.tensor([3, 8])
    ref = llamagen_greedy(sd, cond, cfg_scale, cfg_interval)
    for engine in ("plain", "engine"):
        got = imagelm.sample(gen, cond, cfg_scale=cfg_scale, cfg_interval=cfg_interval, top_k=1, engine=engine,
                             dtype="float32")
        assert torch.equal(got, ref), engine


# ------------------------------------------------------------------ the plan: defaults and meanings

def test_checkpoint_conventions_from_provenance():
    assert sampling_conventions({"provenance": {"source": "elm", "file": "x", "format": "elm-gpt"}}) == "elm"
    assert sampling_conventions({"imported_from": {"format": "llamagen-gpt", "path": "x"}}) == "llamagen"
    assert sampling_conventions({"kind": "ar"}) == sampling_conventions(None) == "imagelm"
    assert sampling_conventions({"provenance": {"source": "imagelm"}}) == "imagelm"
    assert resolve_conventions("auto", {"provenance": {"source": "elm"}}) == "elm"
    assert resolve_conventions("imagelm", {"provenance": {"source": "elm"}}) == "imagelm"
    with pytest.raises(ValueError, match="unknown sampling conventions 'maskgit'"):
        resolve_conventions("maskgit", {})


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


def test_convert_records_provenance_and_cli_samples_with_it(elm_ar_ckpt, tmp_path, capsys):
    meta = imagelm.load(elm_ar_ckpt).meta
    assert meta["provenance"]["source"] == "elm" and meta["provenance"]["format"] == "elm-gpt"
    out = tmp_path / "t.npy"
    assert main(["sample", "--ckpt", str(elm_ar_ckpt), "--classes", "2", "--n", "2", "--seed", "3",
                 "--engine", "plain", "--tokens-out", str(out)]) == 0
    assert "sampling conventions: elm" in capsys.readouterr().out
    gen = imagelm.load(elm_ar_ckpt)
    # ELM's FID-script defaults (CFG 4, elm-linear, top-k 1000) in ELM's meaning.
    want = imagelm.sample(gen, [2], n=2, seed=3, engine="plain", cfg_scale=4.0, cfg_schedule="elm-linear",
                          top_k=1000, conventions="imagelm")
    assert torch.equal(torch.from_numpy(np.load(out)), want)
    assert main(["sample", "--ckpt", str(elm_ar_ckpt), "--classes", "2", "--n", "2", "--seed", "3", "--engine",
                 "plain", "--conventions", "imagelm", "--tokens-out", str(out)]) == 0
    ours = imagelm.sample(gen, [2], n=2, seed=3, engine="plain", cfg_scale=2.0, conventions="imagelm")
    assert torch.equal(torch.from_numpy(np.load(out)), ours)
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt", str(elm_ar_ckpt), "--conventions", "maskgit"])
