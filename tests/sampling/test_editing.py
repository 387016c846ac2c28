"""Inpainting over given tokens (sampling/editing.py): the token grid of a pixel mask, kept tokens
never changed (AR and masked, class and text), nothing known = plain sampling, the candidate search
picks the best-scoring candidate, the guided scores are the CFG-tilted log-likelihood, "class" the
model's implicit-classifier evidence."""
import pytest
import torch
import torch.nn as nn

from imagelm.api import sample
from imagelm.models import build_generator, gpt_config
from imagelm.models.conditioning import TextCondition
from imagelm.sampling.autoregressive import SamplingOptions, generate
from imagelm.sampling.editing import (candidate_scores, choose_candidates, first_unknown, inpaint, scored_positions,
                                      token_grid, token_log_probs)
from imagelm.sampling.masked import generate_masked


def random_model(kind="ar", **overrides):
    """A tiny generator on a 4x4 grid with non-zero heads (zero heads would make every draw uniform)."""
    model = build_generator(gpt_config("tiny", grid_size=4, vocab_size=64, **overrides), kind).eval()
    for head in model.output.heads:
        nn.init.normal_(head.weight, std=0.5)
    return model


def text_cond(B, T=6, C=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :2] = False                               # a left-padded caption
    return TextCondition(torch.randn(B, T, C, generator=g), mask)


TEXT = dict(cond="text", cls_token_num=6, caption_dim=8)
GUIDED = SamplingOptions(cfg_scale=2.0, top_k=20)


def given_known(B, L=16, n=1, V=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    known = torch.rand(B, L, generator=g) < 0.5
    known[:, 5] = False                                # at least one hole per image
    return torch.randint(0, V, (B, L, n), generator=g), known


def test_token_grid_marks_any_touched_token_and_dilates():
    mask = torch.zeros(8, 12, dtype=torch.bool)
    mask[5, 6] = True                                  # one pixel of token (1, 1) at factor 4
    grid = token_grid(mask, 4)
    assert grid.shape == (2, 3) and grid.sum() == 1 and grid[1, 1]
    grown = token_grid(mask, 4, dilate=1)
    assert grown.all()                                 # the 3x3 neighbourhood covers the whole 2x3 grid
    batch = token_grid(torch.stack([mask, ~mask]), 4)
    assert batch.shape == (2, 2, 3) and batch[1].all()
    with pytest.raises(ValueError, match="does not split"):
        token_grid(torch.zeros(7, 8, dtype=torch.bool), 4)


@pytest.mark.parametrize("kind", ["ar", "mlm"])
@pytest.mark.parametrize("cond_kind", ["class", "text"])
def test_kept_tokens_are_never_changed(kind, cond_kind):
    model = random_model(kind, **(TEXT if cond_kind == "text" else {}))
    B = 3
    cond = text_cond(B) if cond_kind == "text" else torch.tensor([0, 1, 2])
    given, known = given_known(B)
    for candidates in ([1, 3] if kind == "ar" else [1]):
        out = inpaint(model, cond, given, known, GUIDED, seed=4, candidates=candidates, dtype="float32")
        assert out.shape == given.shape
        assert torch.equal(out[known], given[known])
        assert not torch.equal(out[~known], given[~known])    # the hole was drawn (64-way: never all equal)


def test_everything_known_returns_the_input_and_nothing_known_is_plain_sampling():
    model = random_model()
    cond = torch.tensor([3, 4])
    given, _ = given_known(2)
    everything = torch.ones(2, 16, dtype=torch.bool)
    assert torch.equal(inpaint(model, cond, given, everything, GUIDED, seed=1), given)
    nothing = torch.zeros(2, 16, dtype=torch.bool)
    engine = inpaint(model, cond, given, nothing, GUIDED, seed=7, dtype="float32")
    assert torch.equal(engine, sample(model, cond, cfg_scale=2.0, top_k=20, seed=7, dtype="float32"))
    plain = inpaint(model, cond, given, nothing, GUIDED, seed=7, sampler="plain")
    assert torch.equal(plain, generate(model, cond, GUIDED, torch.Generator().manual_seed(7)))
    masked = random_model("mlm")
    out = inpaint(masked, cond, given, nothing, GUIDED, seed=7, steps=4)
    assert torch.equal(out, generate_masked(masked, cond, GUIDED, 4, torch.Generator().manual_seed(7)))


def test_log_likelihood_is_the_teacher_forced_sum_over_the_chosen_positions():
    model = random_model()
    cond = torch.tensor([1, 2])
    tokens, known = given_known(2)
    where = scored_positions(known, "kept")
    logp = model(tokens, cond).log_softmax(-1).gather(-1, tokens.unsqueeze(-1))[..., 0, 0]     # [B, L]
    expected = (logp * where).sum(1)
    scored = candidate_scores(token_log_probs(model, cond, tokens, batch_size=1), None, known, "kept")
    assert torch.allclose(scored, expected, atol=1e-5)
    start = first_unknown(known)
    for b in range(2):   # kept: known and after the first hole; joint: everything from the first hole on
        assert not where[b, :start[b] + 1].any() and torch.equal(where[b, start[b]:], known[b, start[b]:])
        assert scored_positions(known, "joint")[b].tolist() == [i >= start[b] for i in range(16)]


def draw_candidates(model, cond, given, known, K, seed):
    """K teacher-forced fills per image, as inpaint draws them: -> [B, K, 16, 1]."""
    drawn = inpaint(model, cond.repeat_interleave(K), given.repeat_interleave(K, 0),
                    known.repeat_interleave(K, 0), GUIDED, seed=seed, dtype="float32")
    return drawn.view(len(cond), K, 16, 1)


def candidate_draws(cond, K, seed):
    """A random model, two images' given tokens and mask, and K drawn candidates each
    -> (model, given [2, 16, 1], known [2, 16], drawn [2, K, 16, 1])."""
    model = random_model()
    given, known = given_known(len(cond))
    return model, given, known, draw_candidates(model, cond, given, known, K, seed)


def per_token_log_probs(model, cond, flat):
    """By hand: log p(x_i | c, x<i) and log p(x_i | null, x<i) of flat [R, 16, 1] -> two [R, 16]."""
    def one(c):
        return model(flat, c).log_softmax(-1).gather(-1, flat.unsqueeze(-1))[..., 0, 0]
    return one(cond), one(model.null_cond(cond))


def test_candidate_search_keeps_the_best_scoring_candidate():
    cond, K = torch.tensor([1, 5]), 4
    model, given, known, drawn = candidate_draws(cond, K, seed=2)                     # the K candidates
    best, scores = choose_candidates(model, cond, drawn, known)
    assert torch.equal(best, drawn[torch.arange(2), scores.argmax(1)])
    assert torch.equal(inpaint(model, cond, given, known, GUIDED, seed=2, candidates=K, dtype="float32"), best)
    assert scores.max(1).values.ge(scores[:, 0]).all()                 # at least as likely as teacher forcing


@pytest.mark.parametrize("cond_kind", ["class", "text"])
def test_guided_score_is_the_cfg_tilted_log_likelihood(cond_kind):
    model = random_model(**(TEXT if cond_kind == "text" else {}))
    B = 2
    cond = text_cond(B) if cond_kind == "text" else torch.tensor([1, 2])
    tokens, known = given_known(B)
    where = scored_positions(known, "guided-joint")
    assert torch.equal(where, scored_positions(known, "joint"))
    assert torch.equal(scored_positions(known, "guided-kept"), scored_positions(known, "kept"))

    conditional, null = per_token_log_probs(model, cond, tokens)                            # [B, L] each
    scales = torch.linspace(1.0, 3.0, 16)                                     # a schedule: 1 at the first token
    expected = ((scales * conditional - (scales - 1) * null) * where).sum(1)
    passes = token_log_probs(model, cond, tokens, batch_size=1, null=True)               # [B, L] each
    assert torch.allclose(candidate_scores(*passes, known, "guided-joint", scales), expected, atol=1e-4)
    plain = candidate_scores(passes[0], None, known, "joint")
    assert torch.allclose(candidate_scores(passes[0], None, known, "guided-joint", torch.ones(16)), plain)
    assert not torch.allclose(expected, plain)                                 # the null pass does count
    evidence = ((conditional - null) * where).sum(1)                           # log p(c|x) - log p(c|x<hole)
    assert torch.allclose(candidate_scores(*passes, known, "class"), evidence, atol=1e-4)


def test_guided_candidate_search_scores_under_the_request_guidance():
    cond, K = torch.tensor([1, 5]), 4
    model, given, known, drawn = candidate_draws(cond, K, seed=3)                     # the K candidates
    best, scores = choose_candidates(model, cond, drawn, known, "guided-joint", GUIDED)
    flat, where = drawn.reshape(2 * K, 16, 1), scored_positions(known, "joint").repeat_interleave(K, 0)
    conditional, null = per_token_log_probs(model, cond.repeat_interleave(K), flat)          # [8, 16] each
    expected = ((2.0 * conditional - (2.0 - 1) * null) * where).sum(1)                       # the request's s = 2
    assert torch.allclose(scores, expected.view(2, K), atol=1e-5)
    assert torch.equal(best, drawn[torch.arange(2), scores.argmax(1)])
    out = inpaint(model, cond, given, known, GUIDED, seed=3, candidates=K, score="guided-joint", dtype="float32")
    assert torch.equal(out, best) and torch.equal(out[known], given[known])
    _, evidence = choose_candidates(model, cond, drawn, known, "class", GUIDED)
    assert torch.allclose(evidence, ((conditional - null) * where).sum(1).view(2, K))
    # Unguided options (or none): the guided score is the plain one.
    _, unguided = choose_candidates(model, cond, drawn, known, "guided-kept", SamplingOptions(cfg_scale=1.0))
    assert torch.equal(unguided, choose_candidates(model, cond, drawn, known, "kept")[1])


def test_score_guidance_is_joint_plus_scaled_class_evidence():
    cond, K = torch.tensor([1, 5]), 4
    model, given, known, drawn = candidate_draws(cond, K, seed=4)                     # the K candidates
    flat, cond_k = drawn.reshape(2 * K, 16, 1), cond.repeat_interleave(K)
    conditional, null = per_token_log_probs(model, cond_k, flat)                          # [8, 16] each
    joint_at = scored_positions(known, "joint").repeat_interleave(K, 0)
    kept_at = scored_positions(known, "kept").repeat_interleave(K, 0)
    joint = (conditional * joint_at).sum(1).view(2, K)
    evidence = ((conditional - null) * joint_at).sum(1).view(2, K)
    kept = (conditional * kept_at).sum(1).view(2, K)
    kept_evidence = ((conditional - null) * kept_at).sum(1).view(2, K)
    for s in (1.0, 2.5, 6.0):
        best, scores = choose_candidates(model, cond, drawn, known, "guided-joint", GUIDED, score_guidance=s)
        assert torch.allclose(scores, joint + (s - 1) * evidence, atol=1e-4)
        assert torch.equal(best, drawn[torch.arange(2), scores.argmax(1)])
        _, scores = choose_candidates(model, cond, drawn, known, "guided-kept", None, score_guidance=s)
        assert torch.allclose(scores, kept + (s - 1) * kept_evidence, atol=1e-4)
    # S = 1 is the plain joint score; S = the request's constant scale is the request's guided score.
    _, at_one = choose_candidates(model, cond, drawn, known, "guided-joint", GUIDED, score_guidance=1.0)
    assert torch.equal(at_one, choose_candidates(model, cond, drawn, known, "joint")[1])
    _, at_two = choose_candidates(model, cond, drawn, known, "guided-joint", None, score_guidance=2.0)
    assert torch.allclose(at_two, choose_candidates(model, cond, drawn, known, "guided-joint", GUIDED)[1], atol=1e-5)
    # A large S ranks as class evidence alone would.
    _, huge = choose_candidates(model, cond, drawn, known, "guided-joint", GUIDED, score_guidance=1e4)
    assert torch.equal(huge.argmax(1), evidence.argmax(1))
    out = inpaint(model, cond, given, known, GUIDED, seed=4, candidates=K, score="guided-joint", dtype="float32",
                  score_guidance=3.0)
    assert torch.equal(out, drawn[torch.arange(2), (joint + 2 * evidence).argmax(1)])


def test_candidate_scores_from_stored_log_probs_match_the_scoring_passes():
    cond, K = torch.tensor([2, 3]), 3
    model, given, known, drawn = candidate_draws(cond, K, seed=5)                     # the K candidates
    conditional, null = token_log_probs(model, cond.repeat_interleave(K), drawn.reshape(2 * K, 16, 1), null=True)
    known_k = known.repeat_interleave(K, 0)
    for score, options, scales in [("kept", None, None), ("joint", None, None), ("class", None, None),
                                   ("guided-kept", GUIDED, torch.full((16,), 2.0)),
                                   ("guided-joint", GUIDED, torch.full((16,), 2.0))]:
        _, direct = choose_candidates(model, cond, drawn, known, score, options)
        stored = candidate_scores(conditional, null, known_k, score, scales).view(2, K)
        assert torch.allclose(direct, stored, atol=1e-5), score
    # Guided scores without a scale (or at scale 1 everywhere) need no null pass and are the plain ones.
    assert torch.equal(candidate_scores(conditional, None, known_k, "guided-joint", torch.ones(16)),
                       candidate_scores(conditional, None, known_k, "joint"))


def test_hole_cfg_draws_the_hole_at_its_scale_and_scores_under_the_request():
    model = random_model()
    cond = torch.tensor([1, 6])
    given, known = given_known(2)
    strong = SamplingOptions(cfg_scale=4.0, top_k=20)
    # Teacher forcing at hole_cfg G is teacher forcing at cfg_scale G: the kept tokens are given.
    tf = inpaint(model, cond, given, known, GUIDED, seed=6, dtype="float32", hole_cfg=4.0)
    assert torch.equal(tf, inpaint(model, cond, given, known, strong, seed=6, dtype="float32"))
    assert torch.equal(tf[known], given[known])
    assert not torch.equal(tf, inpaint(model, cond, given, known, GUIDED, seed=6, dtype="float32"))
    K = 4
    drawn = inpaint(model, cond.repeat_interleave(K), given.repeat_interleave(K, 0), known.repeat_interleave(K, 0),
                    strong, seed=6, dtype="float32").view(2, K, 16, 1)
    best = choose_candidates(model, cond, drawn, known, "guided-joint", GUIDED)[0]    # scored at the request's 2
    out = inpaint(model, cond, given, known, GUIDED, seed=6, candidates=K, score="guided-joint", dtype="float32",
                  hole_cfg=4.0)
    assert torch.equal(out, best)
    plain = inpaint(model, cond, given, known, GUIDED, seed=6, candidates=K, score="guided-joint", sampler="plain",
                    hole_cfg=4.0)
    assert torch.equal(plain[known], given[known])


@pytest.mark.parametrize("value", [0.5, 0, float("nan"), float("inf"), "3", True])
def test_bad_score_guidance_and_hole_cfg_are_one_line_errors(value):
    model = random_model()
    cond = torch.tensor([1])
    given, known = given_known(1)
    with pytest.raises(ValueError, match="score_guidance must be a finite number >= 1") as e:
        inpaint(model, cond, given, known, candidates=2, score="guided-joint", score_guidance=value)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="hole_cfg must be a finite number >= 1"):
        inpaint(model, cond, given, known, hole_cfg=value)
    with pytest.raises(ValueError, match="score_guidance must be a finite number >= 1"):
        choose_candidates(model, cond, given[:, None], known, "guided-kept", score_guidance=value)


def test_score_guidance_needs_a_guided_score():
    model = random_model()
    cond = torch.tensor([1])
    given, known = given_known(1)
    for score in ("kept", "joint", "class"):
        with pytest.raises(ValueError, match="is not guided"):
            inpaint(model, cond, given, known, candidates=2, score=score, score_guidance=3.0)
        with pytest.raises(ValueError, match="is not guided"):
            choose_candidates(model, cond, given[:, None], known, score, score_guidance=3.0)


def test_bad_arguments_are_one_line_errors():
    model = random_model()
    cond = torch.tensor([1])
    given, known = given_known(1)
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        inpaint(model, cond, given, known, candidates=0)
    with pytest.raises(ValueError, match="unknown candidate score"):
        inpaint(model, cond, given, known, score="best")
    with pytest.raises(ValueError, match="unknown candidate score"):
        choose_candidates(model, cond, given[:, None], known, score="guided")
    with pytest.raises(ValueError, match="given tokens must be"):
        inpaint(model, cond, given[:, :8], known[:, :8])
    with pytest.raises(ValueError, match="candidate search is for AR"):
        inpaint(random_model("mlm"), cond, given, known, candidates=2)
