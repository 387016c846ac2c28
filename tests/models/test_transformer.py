import torch

from imagelm.models.presets import GPTConfig
from imagelm.models.transformer import KVCache, RMSNorm, Transformer, apply_rope, rope_2d_table


def _cfg(**kw):
    base = dict(dim=64, n_layer=2, n_head=4, multiple_of=32, grid_size=4, vocab_size=50, num_classes=3,
                token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)
    return GPTConfig(**{**base, **kw})


def test_ffn_hidden_is_llamagen_rounding():
    assert GPTConfig(dim=768).ffn_hidden == 2048
    assert GPTConfig(dim=1024, n_head=16).ffn_hidden == 2816
    assert GPTConfig(dim=1280, n_head=20).ffn_hidden == 3584


def test_rope_is_a_rotation_and_prefix_is_untouched():
    cfg = _cfg()
    table = rope_2d_table(cfg)
    assert table.shape == (1 + 16, cfg.head_dim // 2, 2)
    x = torch.randn(2, table.shape[0], cfg.n_head, cfg.head_dim)
    y = apply_rope(x, table)
    assert torch.allclose(x.norm(dim=-1), y.norm(dim=-1), atol=1e-5)   # norm-preserving
    assert torch.equal(y[:, 0], x[:, 0])                               # identity at the class prefix
    zero = rope_2d_table(_cfg(prefix_rope="zero"))
    assert torch.equal(apply_rope(x, zero)[:, 0], torch.zeros_like(x[:, 0]))  # LlamaGen's import mode


def test_rope_is_relative_in_both_axes():
    cfg = _cfg(grid_size=6)
    table = rope_2d_table(cfg)[1:].view(6, 6, cfg.head_dim // 2, 2)
    q, k = torch.randn(cfg.head_dim), torch.randn(cfg.head_dim)

    def score(a, b):  # <R(a) q, R(b) k> for grid positions a, b = (row, col)
        rq = apply_rope(q.view(1, 1, 1, -1), table[a].unsqueeze(0))
        rk = apply_rope(k.view(1, 1, 1, -1), table[b].unsqueeze(0))
        return (rq * rk).sum()

    # The same offset (1 row, 2 cols) gives the same score wherever it is placed.
    assert torch.allclose(score((0, 0), (1, 2)), score((3, 2), (4, 4)), atol=1e-5)
    # Rows and columns are different axes: swapping the offset changes the score.
    assert not torch.allclose(score((0, 0), (1, 2)), score((0, 0), (2, 1)), atol=1e-3)


def test_rmsnorm_in_float32_under_bf16():
    norm = RMSNorm(8).bfloat16()
    x = (torch.randn(4, 8) * 1000).bfloat16()
    y = norm(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float().pow(2).mean(-1), torch.ones(4), atol=0.05)


def _kv_matches_full(cfg):
    trunk = Transformer(cfg, causal=True).eval()
    T = 1 + cfg.seq_len
    h = torch.randn(2, T, cfg.dim)
    full = trunk(h, torch.arange(T))
    cache = KVCache(cfg, 2)
    prefill = trunk(h[:, :5], torch.arange(5), cache, key_length=5)
    steps = [trunk(h[:, i:i + 1], torch.tensor([i]), cache, key_length=i + 1) for i in range(5, T)]
    cached = torch.cat([prefill] + steps, dim=1)
    return (full - cached).abs().max().item()


def test_kv_cache_decode_equals_full_causal_forward():
    assert _kv_matches_full(_cfg()) < 1e-5


def test_grouped_query_attention_kv_cache():
    cfg = _cfg(n_kv_head=2)
    assert _kv_matches_full(cfg) < 1e-5
    trunk = Transformer(cfg)
    assert trunk.layers[0].attention.wqkv.weight.shape == ((4 + 2 * 2) * 16, 64)


def test_causal_outputs_do_not_see_the_future():
    trunk = Transformer(_cfg(), causal=True).eval()
    h = torch.randn(1, 10, 64)
    a = trunk(h, torch.arange(10))
    h2 = h.clone()
    h2[:, 6:] = torch.randn(1, 4, 64)
    b = trunk(h2, torch.arange(10))
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:])
