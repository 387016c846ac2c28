"""The Llama trunk shared by every generator: RMSNorm, SwiGLU, attention with 2D RoPE and a KV cache.

One `Transformer.forward(h, input_pos, mask)` serves training, prefill and decode alike: without
caches it attends within `h`; with caches (after `setup_caches`) it writes k/v at `input_pos` and
attends over the cache, the mask rows picked by `input_pos`. There are no hidden modes.

`mask` [B, T] says which of the T inputs are real tokens (False: padding, e.g. of a caption). The
trunk combines it with causal order into the attention mask (`attention_mask`); with caches it is
written into the cache beside k/v, so later decode steps keep ignoring those positions.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from imagelm.models.presets import GPTConfig


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and cast back (stable under bf16)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is x * rsqrt(mean(x^2) + eps) in one kernel (fewer launches per decode step).
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); [..., dim] -> [..., dim]."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_hidden, bias=False)
        self.w3 = nn.Linear(config.dim, config.ffn_hidden, bias=False)
        self.w2 = nn.Linear(config.ffn_hidden, config.dim, bias=False)
        self.dropout = nn.Dropout(config.ffn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KVCache(nn.Module):
    """Preallocated keys/values [B, kv_heads, max_seq, head_dim], written in place at positions."""

    def __init__(self, batch: int, kv_heads: int, max_seq: int, head_dim: int, dtype: torch.dtype, device=None):
        super().__init__()
        shape = (batch, kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v [B, kv_heads, T, head_dim] at positions input_pos [T] (B <= the cache's batch);
        return the first B rows of the whole cache, [B, kv_heads, max_seq, head_dim] each."""
        B = k.shape[0]
        self.k[:B, :, input_pos] = k.to(self.k.dtype)
        self.v[:B, :, input_pos] = v.to(self.v.dtype)
        return self.k[:B], self.v[:B]


def rope_2d_table(config: GPTConfig) -> torch.Tensor:
    """cos/sin of 2D RoPE for every sequence position: [prefix + grid*grid, head_dim/2, 2].

    Rotary pairs are adjacent channels (2i, 2i+1). The first half of the pairs rotate with the
    token's row, the second half with its column, pair j at frequency base^(-2j / (head_dim/2)).
    Prefix (condition) positions get the identity (cos 1, sin 0), or all zeros in LlamaGen's mode.
    """
    quarter = config.head_dim // 4
    freqs = 1.0 / (config.rope_base ** (torch.arange(quarter, dtype=torch.float64) * 2 / (config.head_dim // 2)))
    idx = torch.arange(config.grid_size, dtype=torch.float64)
    rows = torch.outer(idx, freqs)[:, None, :].expand(-1, config.grid_size, -1)   # [g, g, quarter]
    cols = torch.outer(idx, freqs)[None, :, :].expand(config.grid_size, -1, -1)   # [g, g, quarter]
    angles = torch.cat([rows, cols], dim=-1).reshape(config.seq_len, 2 * quarter)  # [L, head_dim/2]
    grid = torch.stack([angles.cos(), angles.sin()], dim=-1)                       # [L, head_dim/2, 2]
    prefix = torch.zeros(config.cls_token_num, 2 * quarter, 2, dtype=torch.float64)
    if config.prefix_rope == "identity":
        prefix[..., 0] = 1.0
    return torch.cat([prefix, grid]).float()


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, heads, head_dim] by table [T, head_dim/2, 2] (cos, sin), or by a table per row
    [B, T, head_dim/2, 2] (rows at different positions, as in the sampling engine); same shape out."""
    # A rotation of each pair (x0, x1) by (cos, sin) is one complex product: three kernels in all.
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))        # [B, T, H, head_dim/2]
    tc = torch.view_as_complex(table.float().contiguous())                     # [(B,) T, head_dim/2]
    tc = tc.unsqueeze(-2) if table.dim() == 4 else tc.view(1, xc.size(1), 1, xc.size(3))
    return torch.view_as_real(xc * tc).flatten(3).type_as(x)


def attention_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, causal: bool,
                   key_valid: torch.Tensor | None) -> torch.Tensor | None:
    """Who may attend to whom: bool, True = attend, [T, S] or [B, 1, T, S] with key_valid; None when
    nothing is masked (plain bidirectional attention).

    query_pos [T] and key_pos [S] are sequence positions; key_valid [B, S] marks real keys. Padded keys
    are never attended, except that every query sees itself, so a padding query (whose output nobody
    reads) never has an empty row.
    """
    allowed = query_pos[:, None] >= key_pos[None, :] if causal else None                # [T, S]
    if key_valid is None:
        return allowed
    valid = key_valid[:, None, None, :]                                                 # [B, 1, 1, S]
    allowed = valid if allowed is None else allowed & valid                             # [B, 1, T, S]
    return allowed | (query_pos[:, None] == key_pos[None, :])


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of one query per row (a decode step): q [B, H, 1, hd], k/v [B, H, S, hd], mask bool
    (True = attend) or additive float, broadcastable to [B, H, 1, S], or None -> [B, H, 1, hd] in
    q's dtype. Computed in the cache's dtype (the engine keeps float32 caches under bf16 weights).

    On CPU two plain float32 matmuls beat the fused kernel here: it pays its blocking set-up for a
    single query. bf16 matmuls would copy the (non-contiguous) cache slice, so a bf16 cache takes a
    broadcast product instead (benchmarks/bench_sampling.py measures the step). Softmax in float32.
    """
    out_dtype = q.dtype
    q = q.to(k.dtype) * q.shape[-1] ** -0.5
    if k.dtype == torch.float32:
        scores = q @ k.transpose(-1, -2)                                                 # [B, H, 1, S]
    else:
        scores = (k * q).sum(-1).float().unsqueeze(-2)                                   # [B, H, 1, S]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = scores.softmax(-1).to(v.dtype)
    if v.dtype == torch.float32:
        return (probs @ v).to(out_dtype)                                                 # [B, H, 1, hd]
    return (probs.transpose(-1, -2) * v).sum(-2, keepdim=True).to(out_dtype)


class Attention(nn.Module):
    """Multi-head (optionally grouped-query) attention with fused qkv and 2D RoPE."""

    def __init__(self, config: GPTConfig, causal: bool):
        super().__init__()
        self.n_head, self.kv_heads, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.causal = causal
        self.wqkv = nn.Linear(config.dim, (config.n_head + 2 * config.kv_heads) * config.head_dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.attn_dropout = config.attn_dropout
        self.resid_dropout = nn.Dropout(config.resid_dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, rope: torch.Tensor, input_pos: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, dim], rope [T, head_dim/2, 2], input_pos [T], mask (bool, True = attend)
        broadcastable to [B, 1, T, S] or None -> [B, T, dim]."""
        B, T, _ = x.shape
        H, KV = self.n_head, self.kv_heads
        qkv = self.wqkv(x).view(B, T, H + 2 * KV, self.head_dim)                        # heads: q, k, v
        qk = apply_rope(qkv[:, :, :H + KV], rope)                                        # q and k at once
        q = qk[:, :, :H].transpose(1, 2)                                                 # [B, H, T, hd]
        k = qk[:, :, H:].transpose(1, 2)                                                 # [B, KV, T, hd]
        v = qkv[:, :, H + KV:].transpose(1, 2)                                           # [B, KV, T, hd]
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v)                                 # [B, KV, S, hd]
        single_query = T == 1 and not self.training and q.device.type == "cpu"
        if not single_query:
            k, v = k.to(q.dtype), v.to(q.dtype)
        if self.kv_heads != self.n_head:
            k = k.repeat_interleave(self.n_head // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.n_head // self.kv_heads, dim=1)
        if single_query:
            y = single_query_attention(q, k, v, mask)                                    # [B, H, 1, hd]
        else:
            is_causal = self.causal and mask is None and self.kv_cache is None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                               dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, -1)                                          # [B, T, dim]
        return self.resid_dropout(self.wo(y))


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability p (training only)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: GPTConfig, causal: bool, drop_path: float):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, causal)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, rope, input_pos, mask):
        x = x + self.drop_path(self.attention(self.attention_norm(x), rope, input_pos, mask))
        return x + self.drop_path(self.feed_forward(self.ffn_norm(x)))


class Transformer(nn.Module):
    """The block stack and final norm, over embeddings: h [B, T, dim] -> [B, T, dim].

    causal=True for the autoregressive generator, False for the masked one.
    """

    def __init__(self, config: GPTConfig, causal: bool = True):
        super().__init__()
        self.config, self.causal = config, causal
        # Deeper blocks drop more (linear in depth), as in LlamaGen.
        rates = [config.drop_path * i / max(1, config.n_layer - 1) for i in range(config.n_layer)]
        self.layers = nn.ModuleList(Block(config, causal, r) for r in rates)
        self.norm = RMSNorm(config.dim, config.norm_eps)
        with torch.device("cpu"):  # a table of numbers, also when the model is built on the meta device
            table = rope_2d_table(config)
        self.register_buffer("rope", table, persistent=False)
        self.cache_valid: torch.Tensor | None = None   # [max_batch, max_seq] bool beside the KV caches
        self.max_batch = 0

    def setup_caches(self, max_batch: int, dtype: torch.dtype | None = None) -> None:
        """Allocate KV caches for `max_batch` sequences of prefix + grid tokens (idempotent)."""
        dtype = dtype or self.norm.weight.dtype
        max_seq = self.config.cls_token_num + self.config.seq_len
        first = self.layers[0].attention.kv_cache
        if first is not None and self.max_batch >= max_batch and first.k.dtype == dtype:
            return
        device = self.norm.weight.device
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(max_batch, self.config.kv_heads, max_seq, self.config.head_dim,
                                               dtype, device)
        self.cache_valid = torch.ones(max_batch, max_seq, dtype=torch.bool, device=device)  # real cached keys
        self.max_batch = max_batch

    def clear_caches(self) -> None:
        """Free the KV caches (back to plain full-sequence attention)."""
        for layer in self.layers:
            layer.attention.kv_cache = None
        self.cache_valid = None
        self.max_batch = 0

    @property
    def has_caches(self) -> bool:
        return self.layers[0].attention.kv_cache is not None

    def forward(self, h: torch.Tensor, input_pos: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """h [B, T, dim] at sequence positions input_pos [T] -> normed hidden states [B, T, dim].

        mask: [B, T] bool, True = a real token, False = padding that no other position may attend;
        None = all real. Without caches, attention is within h (causal if the trunk is). With caches,
        the mask is stored beside k/v at input_pos and attention covers every cached position so far.
        """
        if self.has_caches:
            B, S = h.shape[0], self.cache_valid.shape[1]
            self.cache_valid[:B, input_pos] = True if mask is None else mask
            key_pos, key_valid = torch.arange(S, device=h.device), self.cache_valid[:B]   # [S], [B, S]
        else:
            key_pos, key_valid = input_pos, mask
            if mask is None and self.causal:    # the common case: leave it to SDPA's fused causal path
                key_pos = None
        attn_mask = None if key_pos is None else attention_mask(input_pos, key_pos, self.causal, key_valid)
        rope = self.rope[input_pos]
        for layer in self.layers:
            h = layer(h, rope, input_pos, attn_mask)
        return self.norm(h)
