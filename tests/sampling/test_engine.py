"""The sampling engine: the plain sampler's tokens in float32 whatever the batching, slot reuse,
dtype choice, and bounded logits drift in bfloat16 / int8."""
import pytest
import torch
import torch.nn as nn

from imagelm.models import build_generator, gpt_config
from imagelm.models.conditioning import TextCondition
from imagelm.sampling.autoregressive import SamplingOptions, generate
from imagelm.sampling.engine import Engine, EngineError, choose_engine_dtype, int8_available


def random_model(**overrides):
    """A tiny AR generator with non-zero heads (zero heads would make every draw uniform)."""
    model = build_generator(gpt_config("tiny", grid_size=4, **overrides)).eval()
    for head in model.output.heads:
        nn.init.normal_(head.weight, std=0.5)
    return model


def plain(model, cond, options, seed):
    return generate(model, cond, options, torch.Generator().manual_seed(seed))


OPTIONS = [
    SamplingOptions(),
    SamplingOptions(cfg_scale=2.0),
    SamplingOptions(cfg_scale=3.0, cfg_schedule="linear", top_k=20),
    SamplingOptions(cfg_scale=2.0, temperature=0.9, top_p=0.8),
    SamplingOptions(cfg_scale=1.5, top_k=50, top_p=0.9, cfg_interval=5),
    SamplingOptions(cfg_scale=2.0, top_k=1),
    SamplingOptions(temperature=0.0),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"cfg{o.cfg_scale}-k{o.top_k}-p{o.top_p}-t{o.temperature}")
def test_engine_equals_plain_sampler_whenever_admitted(options):
    model = random_model()
    engine = Engine(model, rows=16, dtype="float32")
    conds = [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 4, 5])]
    requests = []
    for seed, cond in enumerate(conds):
        requests.append((engine.submit(cond, options, seed=seed), cond, seed))
        engine.step()            # the next request joins a batch already decoding
        engine.step()
    engine.run()
    for request, cond, seed in requests:
        assert request.finished and request.error is None
        assert torch.equal(request.tokens, plain(model, cond, options, seed))


def test_mixed_options_in_one_batch_and_rows_reused():
    model = random_model()
    # 6 rows: the first two guided requests fill them, the others wait for freed rows.
    engine = Engine(model, rows=6, dtype="float32")
    jobs = [(torch.tensor([0, 1]), OPTIONS[1], 11), (torch.tensor([2]), OPTIONS[3], 12),
            (torch.tensor([3, 3, 3]), OPTIONS[0], 13), (torch.tensor([6, 7]), OPTIONS[4], 14),
            (torch.tensor([9]), OPTIONS[6], 15)]
    requests = [engine.submit(c, o, seed=s) for c, o, s in jobs]
    engine.step()
    assert engine.rows_in_use == 6 and not requests[2].rows          # the third one waits
    seen_rows = set()
    while not engine.idle:
        engine.step()
        for r in requests:
            seen_rows.update(r.rows)
    assert seen_rows == set(range(6))
    reused = set(requests[0].rows) & (set(requests[2].rows) | set(requests[3].rows) | set(requests[4].rows))
    assert reused, "a finished request's rows were not given to a waiting one"
    for request, (cond, options, seed) in zip(requests, jobs):
        assert torch.equal(request.tokens, plain(model, cond, options, seed))


def test_cancelled_request_frees_its_rows():
    model = random_model()
    engine = Engine(model, rows=4, dtype="float32")
    first = engine.submit(torch.tensor([1, 2]), OPTIONS[1], seed=0)
    second = engine.submit(torch.tensor([3]), OPTIONS[1], seed=1)
    engine.step()
    engine.step()
    assert first.rows and not second.rows
    first.cancel()
    finished = engine.step()
    assert first in finished and first.error == "cancelled"
    assert second.rows                                                # admitted into the freed rows
    engine.run()
    assert torch.equal(second.tokens, plain(model, torch.tensor([3]), OPTIONS[1], 1))


def test_text_conditions_with_padding_and_subtokens():
    model = random_model(cond="text", cls_token_num=6, caption_dim=16, num_classes=0, num_subtokens=2)
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[False, False, True, True, True, True], [True] * 6, [False] * 5 + [True]])
    cond = TextCondition(torch.randn(3, 6, 16, generator=g), mask)
    engine = Engine(model, rows=12, dtype="float32")
    a = engine.submit(cond[[0, 1]], OPTIONS[2], seed=3)
    engine.step()
    b = engine.submit(cond[[2]], OPTIONS[3], seed=4)
    engine.run()
    assert a.tokens.shape == (2, 16, 2)
    assert torch.equal(a.tokens, plain(model, cond[[0, 1]], OPTIONS[2], 3))
    assert torch.equal(b.tokens, plain(model, cond[[2]], OPTIONS[3], 4))


def test_auto_never_picks_bf16_without_native_bf16():
    assert choose_engine_dtype("cpu", "auto", native_bf16=False, has_int8=True)[0] == "int8"
    assert choose_engine_dtype("cpu", "auto", native_bf16=False, has_int8=False)[0] == "float32"
    assert choose_engine_dtype("cpu", "auto", native_bf16=True)[0] == "bfloat16"
    assert choose_engine_dtype("cpu", "float32", native_bf16=True)[0] == "float32"
    with pytest.raises(EngineError, match="unknown dtype"):
        choose_engine_dtype("cpu", "fp16")


def _first_logits(model, dtype, cond, tokens):
    """Logits of every position of `tokens` decoded one token a step through the engine's model and
    KV cache (its dtype's weights and cache), [B, L, n, V]."""
    engine = Engine(model, rows=len(cond), dtype=dtype)
    m, cache, P = engine.model, engine.cache, model.config.cls_token_num
    with torch.no_grad():
        prefix, mask = m.embed_condition(cond)
        seen = [m.logits(prefix, torch.arange(P), cache, mask, key_length=P, last=1)]
        for i in range(tokens.shape[1] - 1):
            h = m.embed_tokens(tokens[:, i:i + 1])
            seen.append(m.logits(h, torch.tensor([P + i]), cache, key_length=P + i + 1))
    return torch.cat(seen, dim=1)


@pytest.mark.parametrize("dtype,tolerance", [("bfloat16", 0.05), ("int8", 0.05)])
def test_low_precision_logits_stay_close(dtype, tolerance):
    if dtype == "int8" and not int8_available():
        pytest.skip("no int8 engine in this torch build")
    torch.manual_seed(0)
    model = build_generator(gpt_config("tiny", grid_size=4)).eval()   # the usual N(0, 0.02) init
    for head in model.output.heads:
        nn.init.normal_(head.weight, std=0.02)
    cond = torch.tensor([1, 5])
    tokens = torch.randint(0, model.config.vocab_size, (2, 16, 1))
    reference = model(tokens, cond)[..., 0, :]                         # [2, 16, V] teacher-forced fp32
    fp32 = _first_logits(model, "float32", cond, tokens)[..., 0, :]
    assert (fp32 - reference).abs().max() < 1e-4                       # the engine's caches are exact
    low = _first_logits(model, dtype, cond, tokens)[..., 0, :]
    scale = reference.abs().max()
    assert (low - reference).abs().max() < tolerance * scale
    assert (low.argmax(-1) == reference.argmax(-1)).float().mean() > 0.8


def test_bad_requests_are_refused():
    model = random_model()
    engine = Engine(model, rows=4, dtype="float32")
    with pytest.raises(EngineError, match="needs 6 cache rows; this engine has 4"):
        engine.submit(torch.tensor([1, 2, 3]), SamplingOptions(cfg_scale=2.0))
    with pytest.raises(EngineError, match="class id 11 outside"):
        engine.submit(torch.tensor([11]))
    with pytest.raises(EngineError, match="class-conditional"):
        engine.submit(TextCondition(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool)))
    mlm = build_generator(gpt_config("tiny", grid_size=4), kind="mlm")
    with pytest.raises(EngineError, match="autoregressive"):
        Engine(mlm)


def test_api_sample_switches_dtypes_on_one_generator():
    import imagelm
    model = random_model()
    fp32 = imagelm.sample(model, [1, 2], n=2, cfg_scale=2.0, seed=3, dtype="float32")
    bf16 = imagelm.sample(model, [1, 2], n=2, cfg_scale=2.0, seed=3, dtype="bfloat16")
    assert fp32.shape == bf16.shape == (4, 16, 1)
    assert next(model.parameters()).dtype == torch.float32         # the caller's model is untouched
    plain = imagelm.sample(model, [1, 2], n=2, cfg_scale=2.0, seed=3, engine="plain")
    assert torch.equal(fp32, plain)


def test_given_tokens_are_kept_and_the_rest_matches_the_plain_sampler():
    model = random_model()
    L = model.config.seq_len
    g = torch.Generator().manual_seed(5)
    given = torch.randint(0, model.config.vocab_size, (2, L, 1), generator=g)
    known = torch.rand(2, L, generator=g) < 0.5
    options = OPTIONS[3]
    cond = torch.tensor([1, 2])
    reference = generate(model, cond, options, torch.Generator().manual_seed(9), given=given, known=known)
    assert torch.equal(reference[known], given[known])
    engine = Engine(model, rows=8, dtype="float32")
    other = engine.submit(torch.tensor([3]), options, seed=1)          # shares the batch, knows nothing
    engine.step()
    edited = engine.submit(cond, options, seed=9, given=given, known=known)
    engine.run()
    assert torch.equal(edited.tokens, reference)
    assert torch.equal(other.tokens, plain(model, torch.tensor([3]), options, 1))
    nothing = generate(model, cond, options, torch.Generator().manual_seed(9), given=given,
                       known=torch.zeros_like(known))
    assert torch.equal(nothing, plain(model, cond, options, 9))        # nothing known: plain sampling
    with pytest.raises(EngineError, match="pass both or neither"):
        engine.submit(cond, options, given=given)


def test_compiled_engine_gives_the_plain_tokens_for_every_option_set():
    """One compiled engine (a graph per row bucket and filter set) serves every option set above."""
    model = random_model()
    engine = Engine(model, rows=16, dtype="float32", compile="on")
    assert engine.compiled
    for options in OPTIONS:
        conds = [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 4, 5])]
        requests = []
        for seed, cond in enumerate(conds):
            requests.append((engine.submit(cond, options, seed=seed), cond, seed))
            engine.step()
            engine.step()
        engine.run()
        for request, cond, seed in requests:
            assert torch.equal(request.tokens, plain(model, cond, options, seed)), options


def _snapshot(model):
    """Everything a sampler could change on a model: state (names and values) and every module's
    attributes (names and the objects they hold)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attributes = [(name, sorted(vars(m)), {k: id(v) for k, v in vars(m).items() if k != "training"})
                  for name, m in model.named_modules()]
    return state, attributes, model.training


@pytest.mark.parametrize("training", [False, True])
def test_no_sampler_mutates_the_model(training):
    from imagelm.sampling.masked import generate_masked
    model = random_model().train(training)
    before = _snapshot(model)
    cond = torch.tensor([1, 2])
    generate(model, cond, OPTIONS[2], torch.Generator().manual_seed(0))
    for dtype in ("float32", "bfloat16"):
        Engine(model, rows=4, dtype=dtype).generate(cond, OPTIONS[2], seed=0)
    Engine(model, rows=4, dtype="float32", decode="jacobi", window=4).generate(cond, OPTIONS[2], seed=0)
    after = _snapshot(model)
    assert before[1] == after[1] and before[2] == after[2]
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    mlm = build_generator(gpt_config("tiny", grid_size=4), kind="mlm").train(training)
    before = _snapshot(mlm)
    generate_masked(mlm, cond, OPTIONS[1], steps=3, generator=torch.Generator().manual_seed(0))
    assert _snapshot(mlm)[1:] == before[1:]


def test_the_masked_model_runs_the_same_forward():
    """The masked generator's logits are GeneratorBase.logits over [prefix | tokens], no cache."""
    mlm = build_generator(gpt_config("tiny", grid_size=4), kind="mlm").eval()
    for head in mlm.output.heads:
        nn.init.normal_(head.weight, std=0.5)
    tokens = torch.randint(0, mlm.config.vocab_size, (2, 16, 1))
    hidden = torch.rand(2, 16) < 0.5
    cond = torch.tensor([0, 3])
    x = torch.where(hidden[..., None], mlm.mask_embedding, mlm.embed_tokens(tokens))
    prefix, _ = mlm.embed_condition(cond)
    h = torch.cat([prefix, x], 1)
    direct = mlm.logits(h, torch.arange(h.shape[1]), last=16)
    assert torch.equal(mlm(tokens, cond, hidden), direct)


def test_compile_auto_compiles_only_when_the_work_pays_for_it():
    from imagelm.sampling.engine import choose_compile
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_compile(cpu, "auto", workload=64)[0] is False          # one `imagelm sample` batch
    assert choose_compile(cpu, "auto", workload=None)[0] is False        # a CPU server: no stall
    assert choose_compile(cpu, "auto", workload=50_000)[0] is True       # a long sample-many
    assert choose_compile(cuda, "auto", workload=None)[0] is True        # launch-bound eager step
    assert choose_compile(cpu, "on", workload=1) == (True, "as asked")
    assert choose_compile(cpu, False)[0] is False
    with pytest.raises(Exception, match="unknown compile choice"):
        choose_compile(cpu, "sometimes")
