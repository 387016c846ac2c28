"""The engine's decode step: one forward of every running row through the model's one forward, then
guidance, filtering and one draw per image. Static in shape when asked (a fixed, bucketed row count
and the full key length under a mask), so `torch.compile` captures it once per bucket and CUDA
graphs can replay it.

A batch is a set of cache rows and, over them, a set of images. An image reads its logits from its
conditional row and, with guidance, its null-condition row; without guidance both are the same row,
and guide(l, l, s) = l exactly. Its sampled token is written back as the next input of both rows.
Padding slots (to fill a bucket) read row 0 and write to a trash row past the cache's rows, so a
static shape costs no bookkeeping.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from imagelm.models.transformer import KVCache
from imagelm.sampling.logits import RowSampling, guide, sample_rows

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def row_bucket(rows: int, limit: int) -> int:
    """The smallest bucket holding `rows` rows, at most `limit` (the cache's rows)."""
    return min(limit, next((b for b in ROW_BUCKETS if b >= rows), rows))


@dataclass(frozen=True)
class DecodeBatch:
    """The running set as one decode step sees it; built when requests join or leave.

    rows: the step runs cache rows [0, rows); active [rows] int64: 1 where a row decodes (its
    position advances), 0 for a free row. Per image slot (I of them): read / read_null [I] the rows
    its conditional / null logits come from, write / write_null [I] the rows its token is fed to
    next (the trash row for nothing), scales [I, L] its guidance scale at each token index,
    sampling its temperature / top-k / top-p, given [I, L, n] / known [I, L] the tokens fixed in
    advance (editing; None when no image has any). key_length: keys the step attends ([0,
    key_length); None = all of them, the static shape).
    """
    rows: int
    active: torch.Tensor
    read: torch.Tensor
    read_null: torch.Tensor
    write: torch.Tensor
    write_null: torch.Tensor
    scales: torch.Tensor
    sampling: RowSampling
    given: torch.Tensor | None = None
    known: torch.Tensor | None = None
    key_length: int | None = None

    @property
    def images(self) -> int:
        return self.read.shape[0]


def sample_images(logits: torch.Tensor, batch: DecodeBatch, token_index: torch.Tensor,
                  u: torch.Tensor | None) -> torch.Tensor:
    """logits [rows, n, V] of the batch's rows, token_index [I] (which token each image samples), u [I, n]
    uniforms (None when every image is greedy) -> tokens [I, n]: guidance at each image's scale for
    that token, then the plain sampler's filtering and draw."""
    L = batch.scales.shape[1]
    t = token_index.clamp(max=L - 1)[:, None]                                           # [I, 1]
    scale = batch.scales.gather(1, t)[:, :, None]                                       # [I, 1, 1]
    x = guide(logits[batch.read], logits[batch.read_null], scale)                       # [I, n, V]
    tokens = sample_rows(x, batch.sampling, u)                                          # [I, n]
    if batch.known is not None:    # the plain sampler's order: draw, then take the given token
        n = tokens.shape[1]
        given = batch.given.gather(1, t[:, :, None].expand(-1, 1, n))[:, 0]             # [I, n]
        tokens = torch.where(batch.known.gather(1, t), given, tokens)
    return tokens


def decode_step(model, cache: KVCache, inputs: torch.Tensor, positions: torch.Tensor, batch: DecodeBatch,
                token_index: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """One decode step, in place: feed inputs[:rows] [rows, n] at positions[:rows] through the model
    (keys/values written into `cache`), sample one token per image, write each image's token into
    `inputs` at its rows, advance the active rows' positions and token_index -> tokens [I, n]."""
    R = batch.rows
    h = model.embed_tokens(inputs[:R, None])                                            # [R, 1, dim]
    logits = model.logits(h, positions[:R, None], cache, key_length=batch.key_length)[:, 0]   # [R, n, V]
    tokens = sample_images(logits, batch, token_index, u)                               # [I, n]
    inputs[batch.write] = tokens
    inputs[batch.write_null] = tokens
    positions[:R] += batch.active
    token_index += 1
    return tokens


def compile_step(device: torch.device):
    """decode_step compiled for `device`: CUDA graphs on CUDA (`reduce-overhead`, static shapes: one
    graph per row bucket and filter set, all keys under the mask), inductor's fused kernels on CPU
    (rows bucketed, key length dynamic), so continuous batching never recompiles within a bucket."""
    import torch._dynamo
    config = torch._dynamo.config
    # Row buckets x filter sets: more graphs than dynamo's default limit of 8 per function.
    if getattr(config, "recompile_limit", 64) < 64:
        config.recompile_limit = 64
    if device.type == "cuda":
        return torch.compile(decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
    # CPU: no graphs to replay, so the key length may vary (one recompile makes it symbolic): a
    # step then reads only the keys written so far, half of them on average.
    return torch.compile(decode_step, fullgraph=True, dynamic=None)
