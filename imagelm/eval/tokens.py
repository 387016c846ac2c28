"""Analyses of tokens and attention that ELM makes: how random are the tokens a tokenizer makes
(unigram KL divergence from uniform), and how local is the generator's attention."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from imagelm.models.transformer import apply_rope


def unigram_kl_from_uniform(tokens: torch.Tensor, vocab_size: int) -> float:
    """KL(p || uniform) in nats of the token frequencies p: tokens [...] ints in [0, V) -> float.

    0 means the tokens look like uniform noise (ELM finds BAE tokens close to that); log V means one
    token only.
    """
    counts = torch.bincount(tokens.reshape(-1).long(), minlength=vocab_size).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    return float(math.log(vocab_size) + (nz * nz.log()).sum())


@torch.no_grad()
def attention_maps(model, tokens: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
    """Attention probabilities of each layer of an AR generator on a teacher-forced pass.

    tokens [B, L, n], cond [B] -> per layer [B, heads, T, T] with T = prefix + L - 1 (causal).
    Recomputed from each layer's input, so the model's fast attention path stays untouched.
    """
    model.eval()
    inputs = []
    hooks = [layer.attention.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
             for layer in model.trunk.layers]
    try:
        model(tokens, cond)
    finally:
        for h in hooks:
            h.remove()
    maps = []
    T = inputs[0].shape[1]
    rope = model.trunk.rope[:T]
    causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
    for layer, x in zip(model.trunk.layers, inputs):
        att = layer.attention
        B = x.shape[0]
        q_size, kv_size = att.n_head * att.head_dim, att.kv_heads * att.head_dim
        q, k, _ = att.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = apply_rope(q.view(B, T, att.n_head, att.head_dim), rope).transpose(1, 2)
        k = apply_rope(k.view(B, T, att.kv_heads, att.head_dim), rope).transpose(1, 2)
        k = k.repeat_interleave(att.n_head // att.kv_heads, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(att.head_dim)
        maps.append(F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1))
    return maps


def attention_locality(maps: list[torch.Tensor], prefix_len: int, grid_size: int, window: int = 3) -> list[float]:
    """Per layer, the mean attention mass that image-token queries put on image keys within a
    window x window neighbourhood (on the 2D grid) of the position being predicted.

    maps: from `attention_maps`; query at sequence index s >= prefix_len - 1 predicts grid position
    s - prefix_len + 1; key at index j >= prefix_len is grid position j - prefix_len.
    """
    T = maps[0].shape[-1]
    half = window // 2
    q_idx = torch.arange(prefix_len - 1, T)
    target = q_idx - prefix_len + 1                                   # grid position being predicted
    k_idx = torch.arange(prefix_len, T)
    key_pos = k_idx - prefix_len
    dr = (target[:, None] // grid_size - key_pos[None, :] // grid_size).abs()
    dc = (target[:, None] % grid_size - key_pos[None, :] % grid_size).abs()
    near = ((dr <= half) & (dc <= half)).float()                      # [Q, K]
    out = []
    for m in maps:
        sub = m[:, :, q_idx][:, :, :, k_idx]                          # [B, H, Q, K]
        out.append(float((sub * near).sum(-1).mean()))
    return out
