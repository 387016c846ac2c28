"""Imported models sampled as their original code samples them: greedy tokens of ELM-layout AR and
masked fixtures and of a LlamaGen-layout fixture, converted with `imagelm convert` and sampled with
the checkpoint's conventions, equal reference samplers written here from ELM's generate_cfg
(llama/ar_model.py, llama/mlm_model.py with mask_by_random_topk) and LlamaGen's generate()
(autoregressive/models/generate.py), run over the reference forwards of test_elm / test_llamagen.
"""
import numpy as np
import pytest
import torch

import imagelm
from imagelm.cli import main
from imagelm.compat import convert
from imagelm.sampling.conventions import sampling_conventions
from elm_reference import elm_cfg, elm_mask_len, elm_masking
from test_elm import N_SUB, elm_ar_state, elm_mlm_state, ref_elm_logits, ref_elm_mlm_logits
from test_llamagen import CLASSES, GRID, llamagen_gpt_state, ref_logits

L = GRID * GRID


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




def test_convert_records_provenance_and_cli_samples_with_it(elm_ar_ckpt, tmp_path, capsys):
    meta = imagelm.load(elm_ar_ckpt).meta
    assert (meta.provenance.source, meta.provenance.format) == ("elm", "elm-gpt")
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
