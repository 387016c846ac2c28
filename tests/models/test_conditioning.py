"""The text condition in the generator: caption embedder, padding masks in the trunk (with and
without KV caches), batch independence, CFG against the null caption, presets."""
import pytest
import torch
import torch.nn.functional as F

from imagelm.models import build_generator, count_params, gpt_config, transformer
from imagelm.models.conditioning import CaptionEmbedder, TextCondition, cat_conditions
from imagelm.sampling.autoregressive import SamplingOptions, generate
from imagelm.train.generator import token_loss

T, C = 6, 8
LENGTHS = [3, 6, 1]   # real caption tokens per sample: short, full, a single token


def _cond(lengths=LENGTHS, seed=0) -> TextCondition:
    """Left-padded random captions: [B, T, C], zero at padding."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.stack([torch.arange(T) >= T - n for n in lengths])             # [B, T]
    return TextCondition(torch.randn(len(lengths), T, C, generator=g) * mask[..., None], mask)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_generator(gpt_config("tiny-t2i", vocab_size=40, grid_size=4, cls_token_num=T, caption_dim=C)).eval()
    for head in m.output.heads:  # give the zero-initialised head something to say
        torch.nn.init.normal_(head.weight, std=0.2)
    return m


def _gen(model, cond, seed=0, **opts):
    return generate(model, cond, SamplingOptions(**opts), torch.Generator().manual_seed(seed))


def test_caption_embedder_dropout_swaps_whole_captions_for_the_null_caption():
    emb = CaptionEmbedder(caption_dim=C, dim=16, token_num=T, dropout_prob=0.1)
    cond = _cond([2] * 20_000)
    dropped = emb.drop(cond, torch.Generator().manual_seed(1))
    is_null = dropped.null                                                        # [B]
    assert abs(is_null.float().mean().item() - 0.1) < 0.01
    assert dropped.mask[is_null].all()                                            # null caption: all valid
    assert torch.equal(dropped.mask[~is_null], cond.mask[~is_null])
    with torch.no_grad():   # the forward puts the learned null caption where the flags say
        null_rows = emb(emb.null_like(cond[:1]))[0]
        prefix = emb(dropped[:200])
        assert torch.allclose(prefix[is_null[:200]], null_rows.expand(int(is_null[:200].sum()), -1, -1))
        assert torch.equal(prefix[~is_null[:200]], emb(cond[:200])[~is_null[:200]])
    assert emb(cond[:3]).shape == (3, T, 16)
    with pytest.raises(ValueError, match="caption features of shape"):
        emb(TextCondition(torch.zeros(1, T + 1, C), torch.ones(1, T + 1, dtype=torch.bool)))


def test_condition_dropout_draws_only_from_the_generator_it_is_given():
    from imagelm.models.conditioning import ClassEmbedder
    emb = ClassEmbedder(num_classes=5, dim=8, dropout_prob=0.5)
    labels = torch.arange(5).repeat(200)
    state = torch.get_rng_state()
    a = emb.drop(labels, torch.Generator().manual_seed(3))
    b = emb.drop(labels, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and 0.4 < (a == 5).float().mean() < 0.6     # same seed, same drops, ~half null
    assert torch.equal(emb.drop(labels), labels)                          # no generator: no dropout
    assert torch.equal(torch.get_rng_state(), state)                      # the global RNG never moved
    text = CaptionEmbedder(caption_dim=C, dim=16, token_num=T, dropout_prob=0.5)
    cond = _cond()
    assert text.drop(cond, None) is cond


def _recording_sdpa(records):
    """scaled_dot_product_attention that also records its softmax weights [B, H, T, S]."""
    real = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, is_causal=False, **kw):
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        if is_causal:
            attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        records.append(scores.softmax(-1))
        return real(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)
    return sdpa


def test_padding_positions_get_zero_attention_weight(model, monkeypatch):
    cond = _cond()
    pads = ~cond.mask                                                             # [B, T]
    records = []
    # Cached attention on CPU takes the matmul path; record its weights the same way.
    recording = _recording_sdpa(records)
    monkeypatch.setattr(F, "scaled_dot_product_attention", _recording_sdpa(records))
    monkeypatch.setattr(transformer, "cached_attention",
                        lambda q, k, v, mask: recording(q, k, v, attn_mask=mask))
    # Teacher forcing (no cache): every query but a padding position itself gives padding keys weight 0.
    model(torch.randint(0, 40, (3, 16)), cond)
    assert len(records) == model.config.n_layer
    for w in records:                                                             # [B, H, S, S]
        S = w.shape[-1]
        off_diag = ~torch.eye(S, dtype=torch.bool)
        key_pad = torch.cat([pads, torch.zeros(3, S - T, dtype=torch.bool)], 1)   # [B, S]
        hit = key_pad[:, None, None, :] & off_diag                                # [B, 1, S, S]
        assert torch.all(w.masked_select(hit) == 0)
        assert torch.all(w[:, :, T - 1:, :T].masked_select(cond.mask[:, None, None, :]) > 0)  # real tokens are seen
    # Sampling on the KV cache: the prefill and every decode step ignore the padding too.
    records.clear()
    _gen(model, cond, top_k=5)
    assert len(records) == model.config.n_layer * 16                              # prefill + 15 decode steps
    for w in records:                                                             # [B, H, T_q, keys read]
        key_pad = torch.cat([pads, torch.zeros(3, w.shape[-1] - T, dtype=torch.bool)], 1)
        hit = key_pad[:, None, None, :].expand(w.shape).clone()
        if w.shape[-2] == T:                                                      # prefill: a pad sees itself
            hit[:, :, torch.arange(T), torch.arange(T)] = False
        assert torch.all(w.masked_select(hit) == 0)


def test_padded_feature_values_never_matter(model):
    cond = _cond()
    junk = TextCondition(cond.features + 100 * torch.randn_like(cond.features) * ~cond.mask[..., None], cond.mask)
    tokens = torch.randint(0, 40, (3, 16))
    assert torch.equal(model(tokens, cond), model(tokens, junk))
    assert torch.equal(_gen(model, cond, seed=1), _gen(model, junk, seed=1))


def test_each_caption_length_gives_the_same_result_in_a_batch_as_alone(model):
    cond = _cond()
    tokens = torch.randint(0, 40, (3, 16))
    batched = model(tokens, cond)                                                 # [3, 16, V]
    greedy = _gen(model, cond, top_k=1)                                           # [3, 16, 1]
    for i in range(3):
        alone = model(tokens[i:i + 1], cond[i:i + 1])
        assert torch.allclose(batched[i:i + 1], alone, atol=1e-5)
        assert torch.equal(greedy[i:i + 1], _gen(model, cond[i:i + 1], top_k=1))
        assert torch.equal(model(greedy[i:i + 1], cond[i:i + 1]).argmax(-1), greedy[i:i + 1])


def test_cfg_scale_1_equals_conditional_sampling_and_guidance_changes_tokens(model):
    cond = _cond()
    plain = _gen(model, cond, seed=3)
    assert torch.equal(plain, _gen(model, cond, seed=3, cfg_scale=1.0 + 1e-9))   # doubled batch, scale 1
    guided = _gen(model, cond, seed=3, cfg_scale=4.0)
    assert guided.shape == plain.shape and not torch.equal(guided, plain)
    both = cat_conditions([cond, model.null_cond(cond)])
    assert len(both) == 6 and both.mask[3:].all()


def test_tiny_text_model_loss_falls():
    torch.manual_seed(0)
    m = build_generator(gpt_config("tiny-t2i", vocab_size=32, grid_size=4, cls_token_num=T, caption_dim=C,
                                   class_dropout=0.0))
    cond = _cond([2, 5, 6, 1])
    tokens = torch.randint(0, 32, (4, 16))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = token_loss(m(tokens, cond), tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.0 and losses[-1] < 0.5 * losses[0]


def test_text_presets():
    assert abs(count_params(gpt_config("GPT-7B")) - 6.6e9) / 6.6e9 < 0.02    # LlamaGen's GPT-7B: 32 x 4096
    for name in ("GPT-XL-t2i", "GPT-1B-t2i", "GPT-3B-t2i", "GPT-7B-t2i"):
        cfg = gpt_config(name)
        assert (cfg.cond, cfg.cls_token_num, cfg.caption_dim) == ("text", 120, 2048)
    assert gpt_config("GPT-XL-t2i").dim == 1280 and gpt_config("GPT-XL-t2i").n_layer == 36
    tiny = gpt_config("tiny-t2i")
    assert (tiny.cond, tiny.cls_token_num, tiny.caption_dim) == ("text", 32, 384)
    with pytest.raises(ValueError, match="exactly 1 token"):
        build_generator(gpt_config("tiny", cls_token_num=4))
