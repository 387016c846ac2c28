"""Inpainting over given tokens, for both generators: the token grid of a pixel mask, the masked
generator's fill, and the AR generator's candidate search.

A masked (MaskGIT) generator sees every kept token at once, so inpainting is its sampler started
from the kept tokens (`sampling/masked.py` never changes a given position).

A raster AR generator sees only the past: teacher forcing (draw the hole's tokens, take the kept
ones) ignores the kept tokens after the hole, which is where seams come from. The candidate search
draws K candidates for the hole (one engine request of B * K images) and keeps, per image, the one
under which the model gives the kept tokens after the hole the highest likelihood: one
teacher-forced pass per candidate (`choose_candidates`). Under the model this picks the
candidate p(hole | before) proposes that best explains what follows; K is the cost knob (K decodes
and K scoring passes per image; a pass is one teacher-forced forward, but in float32 through the
model rather than the engine, so on CPU K passes measured about as long as the K bf16 decodes in
bench_edit). K = 1 is teacher forcing.

The plain scores ("kept", "joint") are likelihoods under p(x | c) alone; the kept tokens belong to
the original image, so with a class-changing request they pull toward the original class. The guided
scores ("guided-kept", "guided-joint") score under the distribution classifier-free guidance samples
from instead: per scored token s log p(x | c) - (s - 1) log p(x | null), s the request's guidance
scale at that position. Summed over a sequence this is log p(x | c) + (s - 1) log p(x | c) / p(x | null)
= log p(x | c) + (s - 1) [log p(c | x) - log p(c)] by Bayes: the likelihood times the model's own
implicit classifier's belief in c raised to s - 1, the density (up to a constant) that guidance
targets. It costs a second (unconditional) scoring pass per candidate; at s = 1 it is the plain score.
"class" keeps only the second term (the limit of a large scale): the candidate the model's own
implicit classifier most surely reads as the requested class, among draws that are already the
sampler's plausible fills; it needs a model trained with condition dropout, as guidance does.

Two knobs separate what the draw and the score use, both free of extra passes: `score_guidance` S
scores the guided ones at a constant scale S instead of the request's (guided-joint at S is joint +
(S - 1) class, both from the same two scoring passes; S = 1 is the plain score, S -> infinity ranks
as "class"), and `hole_cfg` G draws the candidates at guidance scale G instead of the request's
(the kept tokens are given, so this guides only the hole), while the guided scores keep the
request's scale unless `score_guidance` says otherwise.

    known = token_grid(pixel_mask, factor=4).flatten(1).logical_not()     # True = kept
    tokens = inpaint(model, cond, given, known, SamplingOptions(cfg_scale=2.0), seed=0, candidates=8,
                     score="guided-joint", score_guidance=4.0)
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from imagelm.runtime import seeded_generator
from imagelm.sampling.autoregressive import SamplingOptions, check_given, evaluating, generate
from imagelm.sampling.engine import Engine
from imagelm.sampling.masked import generate_masked

SCORES = ("kept", "joint", "guided-kept", "guided-joint", "class")


def token_grid(pixel_mask: torch.Tensor, factor: int, dilate: int = 0) -> torch.Tensor:
    """The tokens a pixel mask touches: pixel_mask [..., H, W] bool (True = regenerate) -> [..., H/f,
    W/f] bool, True where any of the token's f x f pixels is masked, then grown by `dilate` tokens in
    each direction (a square neighbourhood). H and W must be multiples of f."""
    if factor < 1 or dilate < 0:
        raise ValueError(f"factor must be >= 1 and dilate >= 0, got {factor} and {dilate}")
    *lead, H, W = pixel_mask.shape
    if H % factor or W % factor:
        raise ValueError(f"a {W}x{H} mask does not split into {factor}x{factor}-pixel tokens")
    x = pixel_mask.reshape(-1, 1, H, W).float()
    grid = F.max_pool2d(x, factor)                                                  # [N, 1, H/f, W/f]
    if dilate:
        grid = F.max_pool2d(grid, 2 * dilate + 1, stride=1, padding=dilate)
    return grid.reshape(*lead, H // factor, W // factor) > 0


def first_unknown(known: torch.Tensor) -> torch.Tensor:
    """known [B, L] bool -> [B] int64: the index of each row's first unknown position (L if none)."""
    L = known.shape[1]
    index = torch.arange(L, device=known.device).expand_as(known)
    return torch.where(known, L, index).min(1).values


@torch.no_grad()
def token_log_probs(model, cond, tokens: torch.Tensor, batch_size: int = 256, null: bool = False):
    """The AR model's log p(token_i | condition, tokens < i) at every position: cond (class ids [B] or
    a TextCondition), tokens [B, L, n] -> [B, L] float32 (sub-tokens summed), and with null=True also
    the same under the null condition (`model.null_cond`) -> a pair. One teacher-forced forward per
    row and condition (`model(tokens, cond)`), `batch_size` rows at a time."""
    def one(toks, c):                                                                   # -> [b, L]
        logp = model(toks, c).log_softmax(-1)                                           # [b, L, n, V]
        return logp.gather(-1, toks.unsqueeze(-1))[..., 0].sum(-1)

    conditional, unconditional = [], []
    with evaluating(model):
        for s in range(0, len(tokens), batch_size):
            part = slice(s, s + batch_size)
            conditional.append(one(tokens[part], cond[part]))
            if null:
                unconditional.append(one(tokens[part], model.null_cond(cond[part])))
    if null:
        return torch.cat(conditional), torch.cat(unconditional)
    return torch.cat(conditional)


def scored_positions(known: torch.Tensor, score: str = "kept") -> torch.Tensor:
    """Which positions a candidate is scored on: known [B, L] bool -> [B, L] bool.

    "kept": the kept tokens after each row's first unknown position (those before it are the same for
    every candidate, so they would add a constant). "joint": every position from the first unknown
    one on, the hole's own tokens too: the whole image's log-likelihood up to that constant. The
    guided scores ("guided-kept", "guided-joint") score the same positions as their plain names,
    "class" the joint ones.
    """
    check_score(score)
    after = torch.arange(known.shape[1], device=known.device) >= first_unknown(known)[:, None]   # [B, L]
    return after & known if score.endswith("kept") else after


def check_score(score: str) -> None:
    """A one-line ValueError unless `score` is one of SCORES."""
    if score not in SCORES:
        raise ValueError(f"unknown candidate score {score!r}; choose one of {', '.join(SCORES)}")


def check_scale(value, name: str) -> None:
    """A one-line ValueError unless `value` (score_guidance, hole_cfg) is None or a finite number >= 1
    (below 1 a guided score would reward the null condition's likelihood)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        raise ValueError(f"{name} must be a finite number >= 1, got {value!r}")


def check_score_guidance(score_guidance, score: str) -> None:
    """A one-line ValueError unless score_guidance is None, or a valid scale for a guided score."""
    check_scale(score_guidance, "score_guidance")
    if score_guidance is not None and not score.startswith("guided"):
        raise ValueError(f"score_guidance sets the guided scores' scale; score {score!r} is not guided "
                         "(use guided-kept or guided-joint)")


def drawing_options(options: SamplingOptions, hole_cfg: float | None) -> SamplingOptions:
    """The options the hole's candidates are drawn with: `options` at guidance scale hole_cfg (its
    schedule and interval kept), or `options` itself when hole_cfg is None."""
    check_scale(hole_cfg, "hole_cfg")
    return options if hole_cfg is None else dataclasses.replace(options, cfg_scale=float(hole_cfg))


def candidate_scores(conditional: torch.Tensor, null: torch.Tensor | None, known: torch.Tensor, score: str = "kept",
                     scales: torch.Tensor | None = None) -> torch.Tensor:
    """Every candidate score from per-position log-probabilities (token_log_probs): conditional [R, L]
    log p(x_i | c, x<i), null [R, L] the same under the null condition (needed by "class" and by the
    guided scores when scales has an entry != 1), known [R, L] bool (True = kept) -> [R] float32.
    scales [L] or [R, L]: the guided scores' scale per position (None: no guidance, the plain score).
    The one place the scores' arithmetic lives: choose_candidates runs the passes and calls this, and a
    benchmark holding the log-probabilities can score every variant without another pass."""
    check_score(score)
    where = scored_positions(known, score)                                               # [R, L]
    if score == "class":
        return ((conditional - null) * where).sum(1)
    if score.startswith("guided") and scales is not None and bool((scales != 1).any()):
        scales = scales.to(conditional)
        return ((scales * conditional - (scales - 1) * null) * where).sum(1)
    return (conditional * where).sum(1)


def choose_candidates(model, cond, candidates: torch.Tensor, known: torch.Tensor, score: str = "kept",
                      options: SamplingOptions | None = None, batch_size: int = 256,
                      score_guidance: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The best of K candidates per image: cond [B] (or a TextCondition of batch B), candidates
    [B, K, L, n], known [B, L] bool -> (tokens [B, L, n], scores [B, K] float32). The score is the
    log-likelihood of `scored_positions(known, score)`, for the guided scores under `options`'
    guidance scales (its schedule and interval; None or cfg_scale 1: no guidance, the plain score) or,
    with `score_guidance` S, at the constant scale S (guided-joint at S = joint + (S - 1) class);
    "class" is log p(x | c) - log p(x | null) over the joint positions (the model's own belief that
    the image is class c). Ties go to the lowest candidate index."""
    B, K, L, n = candidates.shape
    check_score(score)
    check_score_guidance(score_guidance, score)
    check_given(candidates[:, 0], known, len(cond), model.config.seq_len, model.config.num_subtokens)
    flat = candidates.reshape(B * K, L, n)
    scales = None
    if score_guidance is not None:
        scales = torch.full((L,), float(score_guidance), device=flat.device)                 # [L]
    elif score.startswith("guided") and options is not None and options.guided:
        scales = torch.tensor(options.cfg_scales(L), device=flat.device)                     # [L]
    cond_k = cond.repeat_interleave(K)
    null_needed = score == "class" or (scales is not None and bool((scales != 1).any()))
    if null_needed:
        conditional, null = token_log_probs(model, cond_k, flat, batch_size, null=True)     # [B*K, L] each
    else:
        conditional, null = token_log_probs(model, cond_k, flat, batch_size), None
    scores = candidate_scores(conditional, null, known.repeat_interleave(K, 0), score, scales).view(B, K)
    best = scores.argmax(1)                                                                  # [B]
    return candidates[torch.arange(B, device=best.device), best], scores


def inpaint(model, cond, given: torch.Tensor, known: torch.Tensor, options: SamplingOptions = SamplingOptions(),
            seed: int = 0, candidates: int = 1, score: str = "kept", steps: int = 10, sampler: str = "engine",
            dtype: str = "auto", engine: Engine | None = None, progress: bool = False,
            score_guidance: float | None = None, hole_cfg: float | None = None) -> torch.Tensor:
    """Fill the unknown positions of given [B, L, n] (known [B, L] bool: True = keep) for cond [B]
    (class ids) or a TextCondition of batch B -> tokens [B, L, n] int64, equal to `given` wherever
    known. Deterministic in `seed`.

    Masked generators: their sampler in `steps` steps from the kept tokens (candidates must be 1).
    AR generators: `candidates` draws per image in one request through the engine (`sampler="engine"`
    in `dtype`, or the caller's `engine`) or the plain sampler (`sampler="plain"`), then the best by
    `score` (see choose_candidates; the guided scores use `options`' guidance, or the constant
    `score_guidance`). hole_cfg: the guidance scale the hole is drawn with (default: options'
    cfg_scale; its schedule and interval are kept), the candidates still scored under `options`. With
    candidates=1 this is teacher forcing (at hole_cfg when given), and with nothing known it is
    exactly `imagelm.sample`'s draw for the same seed (and options).
    """
    config = model.config
    B = len(cond)
    check_given(given, known, B, config.seq_len, config.num_subtokens)
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    check_score(score)
    drawing = drawing_options(options, hole_cfg)
    check_score_guidance(score_guidance, score)
    if bool(known.all()):
        return given.clone()
    device = given.device
    if getattr(model, "kind", "ar") == "mlm":
        if candidates != 1:
            raise ValueError("candidate search is for AR generators; a masked generator sees every kept "
                             "token already (use candidates=1)")
        return generate_masked(model, cond, drawing, steps, seeded_generator(seed, device), tokens=given, known=known,
                               progress=progress)
    K = candidates
    cond_k, given_k, known_k = cond.repeat_interleave(K), given.repeat_interleave(K, 0), known.repeat_interleave(K, 0)
    if sampler == "plain":
        drawn = generate(model, cond_k, drawing, seeded_generator(seed, device), progress=progress,
                         given=given_k, known=known_k)
    elif sampler == "engine":
        if engine is None:
            engine = Engine(model, rows=B * K * (2 if drawing.guided else 1), dtype=dtype)
        request = engine.submit(cond_k, drawing, seed, given=given_k, known=known_k)
        engine.run(progress)
        if request.error:
            raise ValueError(request.error)
        drawn = request.tokens
    else:
        raise ValueError(f"unknown sampler {sampler!r}; choose engine or plain")
    if K == 1:
        return drawn
    return choose_candidates(model, cond, drawn.view(B, K, *drawn.shape[1:]), known, score, options,
                             score_guidance=score_guidance)[0]
