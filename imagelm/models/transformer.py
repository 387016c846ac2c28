"""The Llama trunk shared by every generator: RMSNorm, SwiGLU, attention with 2D RoPE, and the KV
cache a sampler passes in.

One `Transformer.forward(h, positions, cache=None, mask=None)` serves every use (gpt-fast's
`forward(idx, input_pos)`): without a cache it attends among its inputs (training, teacher
forcing, the masked generator); with a `KVCache` it writes the inputs' keys/values at their
positions, per row, and attends over the cache causally by position, so a prefill, a one-token
decode step and a k-token verify step are the same call with other shapes. The model never holds a
cache and has no modes: the mask and RoPE rows are picked by `positions`.

`mask` [B, T] says which of the T inputs are real tokens (False: padding, e.g. of a caption). The
trunk combines it with causal order into the attention mask (`attention_mask`); with a cache it is
written beside k/v, so later steps keep ignoring those positions.
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


class KVCache:
    """Keys and values of `rows` sequences for every layer of a trunk: the cache a sampler owns and
    passes to `Transformer.forward` (the model never holds one).

    k[i], v[i]: layer i's [rows, kv_heads, max_seq, head_dim] in `dtype`, written in place at the rows
    and positions of each forward; valid [rows, max_seq] bool: False at positions no query may attend
    (caption padding), written from the forward's `mask`. A row's stale keys from an earlier sequence
    need no clearing: a query never sees a position beyond its own.
    """

    def __init__(self, config: GPTConfig, rows: int, dtype: torch.dtype = torch.float32, device=None):
        self.rows, self.max_seq = rows, config.cls_token_num + config.seq_len
        shape = (rows, config.kv_heads, self.max_seq, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.valid = torch.ones(rows, self.max_seq, dtype=torch.bool, device=device)
        self.row_ids = torch.arange(rows, device=device)

    @property
    def dtype(self) -> torch.dtype:
        return self.k[0].dtype

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def mark_static(self) -> None:
        """Tell torch.compile that the buffers never move, so a CUDA graph may write them in place."""
        for t in self.k + self.v + [self.valid]:
            torch._dynamo.mark_static_address(t)


class LayerKV:
    """One layer's part of a cached forward: its buffers, where the inputs go, what the rows read."""
    __slots__ = ("k", "v", "rows", "positions", "key_length", "leading")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
                 key_length: int, leading: bool):
        self.k, self.v, self.rows, self.positions = k, v, rows, positions
        self.key_length, self.leading = key_length, leading

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, kv_heads, T, head_dim] at (rows [B], positions [B, T]) -> the keys and values
        those rows attend, [B, kv_heads, key_length, head_dim] each: a view when the rows are the
        cache's first B (`leading`), a gathered copy otherwise."""
        index = (self.rows[:, None], slice(None), self.positions)
        self.k[index] = k.transpose(1, 2).to(self.k.dtype)                             # [B, T, KV, hd]
        self.v[index] = v.transpose(1, 2).to(self.v.dtype)
        S = self.key_length
        if self.leading:
            B = k.shape[0]
            return self.k[:B, :, :S], self.v[:B, :, :S]
        return self.k[self.rows, :, :S], self.v[self.rows, :, :S]


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
    if torch.compiler.is_compiling():
        # Inductor has no complex kernels; the same rotation in real arithmetic fuses into one.
        xr = x.float().reshape(*x.shape[:-1], -1, 2)                           # [B, T, H, head_dim/2, 2]
        t = table.float().unsqueeze(-3) if table.dim() == 4 else table.float().view(1, x.shape[1], 1, -1, 2)
        x0, x1, cos, sin = xr[..., 0], xr[..., 1], t[..., 0], t[..., 1]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(3).type_as(x)
    # A rotation of each pair (x0, x1) by (cos, sin) is one complex product: three kernels in all.
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))        # [B, T, H, head_dim/2]
    tc = torch.view_as_complex(table.float().contiguous())                     # [(B,) T, head_dim/2]
    tc = tc.unsqueeze(-2) if table.dim() == 4 else tc.view(1, xc.size(1), 1, xc.size(3))
    return torch.view_as_real(xc * tc).flatten(3).type_as(x)


def attention_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, causal: bool,
                   key_valid: torch.Tensor | None) -> torch.Tensor | None:
    """Who may attend to whom: bool, True = attend; None when nothing is masked (plain bidirectional).

    query_pos [T] (every row the same) or [B, T] (a position per row), key_pos [S] or [B, S] sequence
    positions; key_valid [B, S] marks real keys. -> [T, S] (shared), or [B, 1, T, S]. Padded keys are
    never attended, except that every query sees itself, so a padding query (whose output nobody
    reads) never has an empty row.
    """
    q = query_pos.unsqueeze(-1)                                                         # [(B,) T, 1]
    if key_pos.dim() == 2:                                                              # a position per row
        key_pos = key_pos.unsqueeze(1)                                                  # [B, 1, S]
    allowed = q >= key_pos if causal else None                                          # [(B,) T, S]
    if key_valid is None:
        return allowed if allowed is None or allowed.dim() == 2 else allowed.unsqueeze(1)
    valid = key_valid[:, None, :]                                                       # [B, 1, S]
    allowed = valid if allowed is None else allowed & valid                             # [B, T, S]
    return (allowed | (q == key_pos)).unsqueeze(1)                                      # [B, 1, T, S]


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of a few queries per row over cached keys: q [B, H, T, hd], k/v [B, KV, S, hd] (H a
    multiple of KV: grouped-query heads share their group's keys without a copy), mask bool [B, 1, T,
    S] (True = attend) -> [B, H, T, hd] in the cache's dtype. Matmuls in the cache's dtype, softmax in
    float32.

    On CPU two plain matmuls beat the fused kernel here: it pays its blocking set-up for a handful of
    queries (benchmarks/bench_sampling.py measures the step).
    """
    B, H, T, hd = q.shape
    KV, S = k.shape[1], k.shape[2]
    g = H // KV
    if torch.compiler.is_compiling() and T == 1 and g == 1:
        # Under inductor, products summed over head_dim fuse into one pass over the cache (read once,
        # in its own dtype), where a matmul per (row, head) reads it at half the bandwidth.
        scores = (k.float() * (q.float() * hd ** -0.5)).sum(-1).unsqueeze(-2)          # [B, H, 1, S]
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return (probs.transpose(-1, -2) * v.float()).sum(-2, keepdim=True)               # [B, H, 1, hd]
    q = (q.to(k.dtype) * hd ** -0.5).reshape(B, KV, g * T, hd)                         # a group's queries
    scores = (q @ k.transpose(-1, -2)).float()                                          # [B, KV, g*T, S]
    if g > 1:
        mask = mask.unsqueeze(2).expand(B, 1, g, T, S).reshape(B, 1, g * T, S)
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype)
    return (probs @ v).reshape(B, H, T, hd)


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

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None,
                kv: LayerKV | None = None) -> torch.Tensor:
        """x [B, T, dim], rope [(B,) T, head_dim/2, 2], mask (bool, True = attend) broadcastable to
        [B, 1, T, S] or None, kv: this layer's cache slice (None: attend among the inputs) -> [B, T, dim]."""
        B, T, _ = x.shape
        H, KV = self.n_head, self.kv_heads
        qkv = self.wqkv(x).view(B, T, H + 2 * KV, self.head_dim)                        # heads: q, k, v
        qk = apply_rope(qkv[:, :, :H + KV], rope)                                        # q and k at once
        q = qk[:, :, :H].transpose(1, 2)                                                 # [B, H, T, hd]
        k = qk[:, :, H:].transpose(1, 2)                                                 # [B, KV, T, hd]
        v = qkv[:, :, H + KV:].transpose(1, 2)                                           # [B, KV, T, hd]
        if kv is not None:
            k, v = kv.update(k, v)                                                       # [B, KV, S, hd]
            if q.device.type == "cpu":
                y = cached_attention(q, k, v, mask).to(x.dtype)                          # [B, H, T, hd]
            else:
                y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask,
                                                   enable_gqa=KV != H)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None,
                                               dropout_p=self.attn_dropout if self.training else 0.0,
                                               enable_gqa=KV != H)
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

    def forward(self, x, rope, mask, kv=None):
        x = x + self.drop_path(self.attention(self.attention_norm(x), rope, mask, kv))
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

    def forward(self, h: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                mask: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                key_length: int | None = None) -> torch.Tensor:
        """h [B, T, dim] at sequence positions [T] (every row alike) or [B, T] (a position per row;
        prefix at 0..P-1, image token i at P+i) -> normed hidden states [B, T, dim].

        mask [B, T] bool: True = a real input, False = padding that no query may attend; None = all real.
        cache None: attention among the T inputs (causal by position if the trunk is).
        cache a KVCache: the inputs' keys/values are written into cache rows `rows` [B] (None: rows
        0..B-1) at `positions`, and each row attends over its cached keys [0, key_length) (None: all),
        causally by position and never to invalid (padding) keys. Prefill, one-token decode and a
        k-token verify step are this call with T = P, 1 and k.
        """
        B, T, _ = h.shape
        layer_kv = [None] * len(self.layers)
        if cache is None:
            if rows is not None or key_length is not None:
                raise ValueError("rows and key_length select cache rows and keys; pass a cache")
            causal_fast_path = self.causal and mask is None and positions.dim() == 1
            attn_mask = None if causal_fast_path else attention_mask(positions, positions, self.causal, mask)
        else:
            pos = positions.expand(B, T) if positions.dim() == 1 else positions          # [B, T]
            leading = rows is None
            row_ids = cache.row_ids[:B] if leading else rows                             # [B]
            S = key_length or cache.max_seq
            cache.valid[row_ids[:, None], pos] = True if mask is None else mask
            valid = cache.valid[:B, :S] if leading else cache.valid[row_ids, :S]          # [B, S]
            attn_mask = attention_mask(pos, torch.arange(S, device=h.device), self.causal, valid)
            layer_kv = [LayerKV(k, v, row_ids, pos, S, leading) for k, v in zip(cache.k, cache.v)]
        rope = self.rope[positions]                                                      # [(B,) T, hd/2, 2]
        for layer, kv in zip(self.layers, layer_kv):
            h = layer(h, rope, attn_mask, kv)
        return self.norm(h)
