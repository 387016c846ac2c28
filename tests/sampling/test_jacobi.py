"""Speculative Jacobi decoding: the model's distribution is kept (a chi-square test against the exact
distribution, with a broken acceptance rule as the control that must fail), greedy decoding gives
the plain sampler's tokens, and the engine's rows accept different numbers of tokens per pass."""
import itertools

import pytest
import torch
import torch.nn as nn

from imagelm.models import build_generator, gpt_config
from imagelm.sampling import jacobi
from imagelm.sampling.autoregressive import generate
from imagelm.sampling.engine import Engine, EngineError
from imagelm.sampling.logits import RowSampling, SamplingOptions, apply_cfg, filter_logits


def peaked_model(vocab=5, subtokens=1, seed=0):
    """A tiny AR generator over a 2x2 grid (4 tokens) with strong heads: distributions far from
    uniform and from one-hot, so a wrong acceptance rule shows."""
    torch.manual_seed(seed)
    model = build_generator(gpt_config("tiny", grid_size=2, vocab_size=vocab, num_subtokens=subtokens,
                                       num_classes=3)).eval()
    for head in model.output.heads:
        nn.init.normal_(head.weight, std=0.25)
    return model


@torch.no_grad()
def exact_distribution(model, label: int, options: SamplingOptions) -> dict:
    """P(sequence) for every sequence of the 2x2 grid, from teacher forcing and the plain sampler's
    maths (guidance, temperature, top-k, top-p) -> {tuple of per-position token tuples: prob}."""
    V, n, L = model.config.vocab_size, model.config.num_subtokens, model.config.seq_len
    position_values = list(itertools.product(range(V), repeat=n))                   # one position's tokens
    sequences = list(itertools.product(position_values, repeat=L))
    tokens = torch.tensor(sequences)                                                 # [S, L, n]
    cond = torch.full((len(sequences),), label)
    logits = model(tokens, cond)                                                     # [S, L, n, V]
    if options.guided:
        logits = apply_cfg(torch.cat([logits, model(tokens, model.null_cond(cond))]), options.cfg_scale)
    rows = RowSampling.of([options] * (len(sequences) * L), V)
    probs = filter_logits(logits.reshape(-1, n, V), rows).softmax(-1).view(len(sequences), L, n, V)
    p = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).prod(-1).prod(-1)         # [S]
    return {seq: float(v) for seq, v in zip(sequences, p)}


def jacobi_samples(model, label, options, count, window=3, seed=0, store=None) -> torch.Tensor:
    engine = Engine(model, rows=64, dtype="float32", decode="jacobi", window=window, draft_store=store)
    requests = [engine.submit(torch.full((32,), label), options, seed=seed + i) for i in range(count // 32)]
    engine.run()
    return torch.cat([r.tokens for r in requests])                                   # [count, L, n]


def chi_square(samples: torch.Tensor, exact: dict, positions: tuple) -> float:
    """Pearson's statistic of the empirical joint of `positions` against the exact marginal (cells of
    expected count < 5 pooled)."""
    marginal, seen = {}, {}
    for seq, p in exact.items():
        key = tuple(seq[i] for i in positions)
        marginal[key] = marginal.get(key, 0.0) + p
    for row in samples.tolist():
        key = tuple(tuple(row[i]) for i in positions)
        seen[key] = seen.get(key, 0) + 1
    N = len(samples)
    stat, pooled_e, pooled_o = 0.0, 0.0, 0
    for key, p in marginal.items():
        e, o = p * N, seen.get(key, 0)
        if e < 5:
            pooled_e, pooled_o = pooled_e + e, pooled_o + o
        else:
            stat += (o - e) ** 2 / e
    if pooled_e > 0:
        stat += (pooled_o - pooled_e) ** 2 / pooled_e
    return stat


# With 25 cells and 3,840 samples, the statistic of a correct sampler exceeds 60 with probability
# ~1e-4 (chi-square, 24 degrees of freedom: mean 24, sd 7); the broken rule below scores in the hundreds.
BOUND = 60.0


@pytest.mark.parametrize("options", [SamplingOptions(), SamplingOptions(cfg_scale=2.0, temperature=0.9, top_k=4)],
                         ids=["plain", "cfg-temp-topk"])
def test_jacobi_keeps_the_model_distribution(options):
    model = peaked_model()
    exact = exact_distribution(model, 1, options)
    assert abs(sum(exact.values()) - 1) < 1e-4
    samples = jacobi_samples(model, 1, options, 3840)
    for positions in [(0, 1), (2, 3), (1, 3)]:
        assert chi_square(samples, exact, positions) < BOUND, positions


def test_a_broken_acceptance_rule_fails_the_same_check(monkeypatch):
    model = peaked_model()
    options = SamplingOptions()
    exact = exact_distribution(model, 1, options)
    real = jacobi.verify

    def always_accept(p, q, drafts, valid, u_accept, u_residual, u_fresh, known=None, groups=None):
        return real(p, q, drafts, valid, torch.zeros_like(u_accept), u_residual, u_fresh, known, groups)

    monkeypatch.setattr(jacobi, "verify", always_accept)
    samples = jacobi_samples(model, 1, options, 3840)
    assert max(chi_square(samples, exact, positions) for positions in [(0, 1), (2, 3), (1, 3)]) > 3 * BOUND


def test_jacobi_with_subtokens_keeps_the_joint_distribution():
    model = peaked_model(vocab=3, subtokens=2, seed=1)
    options = SamplingOptions(cfg_scale=1.5)
    exact = exact_distribution(model, 2, options)
    samples = jacobi_samples(model, 2, options, 3840)
    for positions in [(0,), (1,), (3,)]:   # 9 values of a position's two sub-tokens
        assert chi_square(samples, exact, positions) < 35.0, positions   # 8 dof: P(> 35) ~ 3e-5


def greedy_test_model():
    """A tiny AR generator over a 4x4 grid with strong heads, for the greedy tests."""
    torch.manual_seed(0)
    model = build_generator(gpt_config("tiny", grid_size=4)).eval()
    for head in model.output.heads:
        nn.init.normal_(head.weight, std=0.5)
    return model


def test_greedy_jacobi_gives_the_plain_tokens_with_requests_admitted_at_different_steps():
    model = greedy_test_model()
    options = SamplingOptions(cfg_scale=2.0, top_k=1)
    engine = Engine(model, rows=12, dtype="float32", decode="jacobi", window=5)
    conds = [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 4, 5])]
    requests = []
    for seed, cond in enumerate(conds):
        requests.append((engine.submit(cond, options, seed=seed), cond))
        engine.step()
    engine.run()
    for request, cond in requests:
        assert torch.equal(request.tokens, generate(model, cond, options))


def test_rows_accept_different_numbers_and_finished_rows_are_reused():
    model = peaked_model()
    engine = Engine(model, rows=4, dtype="float32", decode="jacobi", window=4)
    first = engine.submit(torch.tensor([0, 1, 2, 0]), SamplingOptions(), seed=3)
    second = engine.submit(torch.tensor([1]), SamplingOptions(), seed=4)     # waits for free rows
    seen_progress = []
    while not first.finished:
        engine.step()
        seen_progress.append(list(first.jacobi.progress))
        assert not second.rows or first.finished
    assert any(len(set(p)) > 1 for p in seen_progress), "every image accepted the same number each pass"
    engine.run()
    assert second.finished and set(second.rows) <= set(range(4))
    assert torch.equal(second.tokens, Engine(model, rows=4, dtype="float32", decode="jacobi", window=4)
                       .generate(torch.tensor([1]), SamplingOptions(), seed=4))     # same seed, same tokens
    assert engine._jacobi.passes < 4 * 4 + 4                                        # fewer passes than tokens


def test_each_image_counts_the_passes_it_ran_until_it_finished():
    model = peaked_model()
    L = model.config.seq_len
    cond = torch.tensor([0, 1, 2])
    one = Engine(model, rows=6, dtype="float32", decode="jacobi", window=1)
    request = one.submit(cond, SamplingOptions(), seed=0)
    one.run()
    assert request.jacobi.passes == [L - 1] * 3                # one token a pass after the prefill's
    wide = Engine(model, rows=6, dtype="float32", decode="jacobi", window=4)
    request = wide.submit(cond, SamplingOptions(), seed=0)
    wide.run()
    passes = request.jacobi.passes
    assert max(passes) == wide._jacobi.passes                   # the slowest image ran every pass
    assert all(4 * k >= L - 1 for k in passes) and min(passes) < L - 1


def test_finished_images_leave_the_verify_pass_with_the_same_tokens(monkeypatch):
    model = peaked_model()
    cond = torch.tensor([0, 1, 2, 0, 1])

    def run():
        engine = Engine(model, rows=10, dtype="float32", decode="jacobi", window=4)
        seen = []
        forward = engine.model.logits

        def spy(h, *args, **kwargs):
            seen.append(len(h))
            return forward(h, *args, **kwargs)
        engine.model.logits = spy
        request = engine.submit(cond, SamplingOptions(cfg_scale=2.0), seed=7)
        engine.run()
        return request.tokens, seen[1:]                                   # after the prefill

    tokens, rows = run()
    assert rows[0] == 10 and min(rows) < 10 and min(rows) % 2 == 0        # cond + null rows of the live ones
    monkeypatch.setattr(jacobi, "running_rows", lambda *args: None)       # every row, every pass
    everything, all_rows = run()
    assert set(all_rows) == {10} and torch.equal(tokens, everything)


def test_residual_draw_is_the_normalised_residual():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    q = torch.tensor([[0.2, 0.5, 0.3]])
    u = torch.rand(60_000, 1, generator=torch.Generator().manual_seed(0))
    draws = jacobi.residual_draw(p.expand(60_000, 3)[:, None], q.expand(60_000, 3)[:, None], u)
    counts = torch.bincount(draws[:, 0], minlength=3).float() / 60_000
    assert torch.allclose(counts, torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)          # only where p > q
    p2, q2 = torch.tensor([[0.5, 0.4, 0.1]]), torch.tensor([[0.2, 0.2, 0.6]])
    draws = jacobi.residual_draw(p2.expand(60_000, 3)[:, None], q2.expand(60_000, 3)[:, None], u)
    counts = torch.bincount(draws[:, 0], minlength=3).float() / 60_000
    assert torch.allclose(counts, torch.tensor([0.6, 0.4, 0.0]), atol=0.01)


def test_bad_settings_are_refused():
    model = peaked_model()
    with pytest.raises(EngineError, match="window must be >= 1"):
        Engine(model, decode="jacobi", window=0)
    with pytest.raises(EngineError, match="unknown decode"):
        Engine(model, decode="beam")
    with pytest.raises(EngineError, match="runs eager"):
        Engine(model, decode="jacobi", compile="on")


# ---------------------------------------------------------------- grouped (lossy) acceptance
def test_nearest_groups_put_each_token_first_then_its_neighbours():
    vectors = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [1.1, 0.0]])
    groups = jacobi.nearest_groups(vectors, 2)
    assert groups.tolist() == [[0, 1], [1, 3], [2, 0], [3, 1]]
    assert jacobi.nearest_groups(vectors, 1).tolist() == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="1..4 tokens"):
        jacobi.nearest_groups(vectors, 5)


def test_group_mass_is_the_product_over_subtokens_of_each_groups_probability():
    probs = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]])                    # [1, n=2, V=3]
    groups = torch.tensor([[0, 1], [1, 0], [2, 1]])
    tokens = torch.tensor([[0, 2]])
    assert torch.allclose(jacobi.group_mass(probs, tokens, groups), torch.tensor([(0.5 + 0.3) * (0.8 + 0.1)]))


def test_grouped_acceptance_accepts_a_draft_whose_group_p_favours():
    # Slot 0's draft is token 1; p puts its mass on token 0, q on token 1: exact acceptance rejects it
    # (p(1) = 0), grouped acceptance with {0, 1} one group accepts it (p(G) = q(G) = 1).
    p = torch.tensor([[[[1.0, 0.0, 0.0]]]])                                          # [I=1, W=1, n=1, V=3]
    q = torch.tensor([[[[0.0, 1.0, 0.0]]]])
    drafts = torch.tensor([[[1]]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    u = torch.full((1, 1), 0.5), torch.zeros(1, 1, 1), torch.zeros(1, 1, 1)
    exact = jacobi.verify(p, q, drafts, valid, *u)
    assert exact.count.item() == 1 and exact.tokens[0, 0, 0].item() == 0          # the residual draw: token 0
    groups = torch.tensor([[0, 1], [1, 0], [2, 1]])
    grouped = jacobi.verify(p, q, drafts, valid, *u, groups=groups)
    assert grouped.count.item() == 1 and grouped.tokens[0, 0, 0].item() == 1      # the draft, accepted


def test_groups_of_one_are_exact_acceptance_and_grouped_decoding_keeps_given_tokens():
    model = peaked_model(vocab=5)
    options = SamplingOptions(cfg_scale=2.0)
    cond = torch.tensor([0, 1, 2, 0])

    def run(groups, **extra):
        engine = Engine(model, rows=8, dtype="float32", decode="jacobi", window=3, groups=groups)
        request = engine.submit(cond, options, seed=3, **extra)
        engine.run()
        return request.tokens, engine._jacobi.passes

    exact, _ = run(None)
    ones, _ = run(torch.arange(5)[:, None])
    assert torch.equal(exact, ones)
    groups = jacobi.nearest_groups(torch.randn(5, 2, generator=torch.Generator().manual_seed(0)), 3)
    given = torch.randint(0, 5, (4, 4, 1), generator=torch.Generator().manual_seed(1))
    known = torch.tensor([[True, False, True, False]] * 4)
    tokens, _ = run(groups, given=given, known=known)
    assert torch.equal(tokens[known], given[known])
    assert tokens.min() >= 0 and tokens.max() < 5


def test_grouped_acceptance_settings_are_checked():
    model = peaked_model(vocab=5)
    with pytest.raises(EngineError, match="part of Jacobi decoding"):
        Engine(model, decode="plain", groups=torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(EngineError, match=r"\[5, size\] table"):
        Engine(model, decode="jacobi", groups=torch.zeros(4, 2, dtype=torch.long))


# ---------------------------------------------------------------- drafts from stored codes
def test_drafts_from_stored_codes_keep_the_model_distribution():
    # A store whose sequences share prefixes with many samples (every 2-token start of a 5-token
    # vocabulary), so stored drafts are taken often and a wrong proposal would show.
    model = peaked_model()
    options = SamplingOptions(cfg_scale=2.0)
    exact = exact_distribution(model, 1, options)
    g = torch.Generator().manual_seed(0)
    stored = torch.randint(0, 5, (25, 4, 1), generator=g)
    stored[:, 0, 0], stored[:, 1, 0] = torch.arange(25) // 5, torch.arange(25) % 5
    store = jacobi.DraftStore(stored, torch.ones(25, dtype=torch.long), min_match=1)
    samples = jacobi_samples(model, 1, options, 3840, store=store)
    for positions in [(0, 1), (2, 3), (1, 3)]:
        assert chi_square(samples, exact, positions) < BOUND, positions


def test_stored_continuations_match_the_longest_run_and_prefer_the_same_class():
    tokens = torch.tensor([[1, 2, 3, 4], [9, 2, 3, 5], [1, 2, 3, 6]])[..., None]
    store = jacobi.DraftStore(tokens, torch.tensor([0, 0, 1]), min_match=2)
    assert store.continuation(torch.tensor([1, 2, 3])[:, None], 4, label=0)[:, 0].tolist() == [4]
    assert store.continuation(torch.tensor([1, 2, 3])[:, None], 4, label=1)[:, 0].tolist() == [6]
    assert store.continuation(torch.tensor([7, 2, 3])[:, None], 4, label=1)[:, 0].tolist() == [6]   # 2 tokens
    assert store.continuation(torch.tensor([7, 7, 3])[:, None], 4) is None                         # 1 < 2
    with pytest.raises(ValueError, match="1..16 tokens"):
        jacobi.DraftStore(tokens, min_match=0)


def test_greedy_with_the_greedy_images_stored_takes_whole_windows():
    model = greedy_test_model()
    options = SamplingOptions(cfg_scale=2.0, top_k=1)
    cond = torch.tensor([1, 2, 3])
    plain = generate(model, cond, options)                                          # [3, 16, 1]

    def run(store):
        engine = Engine(model, rows=6, dtype="float32", decode="jacobi", window=8, draft_store=store)
        request = engine.submit(cond, options, seed=0)
        engine.run()
        return request.tokens, engine._jacobi.passes

    tokens, passes = run(jacobi.DraftStore(plain, cond, min_match=1))
    assert torch.equal(tokens, plain)
    _, without = run(None)
    assert passes <= 2 < without          # 15 tokens after the prefill's: two windows of 8
    with pytest.raises(EngineError, match="do not fit"):
        Engine(model, decode="jacobi", draft_store=jacobi.DraftStore(plain[:, :8]))
    with pytest.raises(EngineError, match="part of Jacobi decoding"):
        Engine(model, decode="plain", draft_store=jacobi.DraftStore(plain))
