"""Token canvases larger than the trained grid (and outpainting): a window of the trained g x g grid
slides over an H x W token canvas, so every forward sees positions (and 2D RoPE angles) of the
trained range, and the tokenizer (fully convolutional) decodes the whole canvas at once.

AR (`generate_canvas`): the canvas is decoded in raster order. Token (r, c) is drawn inside the
window whose top is r - g/2 and whose columns are centred on c's segment of `stride` columns, both
clamped to the canvas (Taming-transformers' placement: the model sees the rows above and the tokens
to its left, and the canvas border is the window's border). Inside one window the tokens of a
segment are ordinary AR decoding on a KV cache: when the window moves, the window's raster prefix
(the rows above and the row's tokens to the left, all decided by then) is fed in one forward, then
the segment's tokens one step each. The condition prefix's keys never change, so it is prefilled
once. `stride` is the cost knob: stride 1 re-feeds the window for every token (no reuse, the token
always centred); larger strides reuse the cache along the row (ceil(W / stride) feeds per row).
On a canvas of the trained size there is one window, so it is the plain sampler token for token.

Masked (`generate_masked_canvas`): windows at a stride (default g/2, half overlapping) in raster
order, each filling its unknown tokens with the masked sampler, every known token of the window
visible.

Tokens of a canvas are [B, H * W, n] in raster order; given/known as in the other samplers.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from imagelm.models.conditioning import cat_conditions
from imagelm.models.transformer import KVCache
from imagelm.sampling.autoregressive import SamplingOptions, cache_dtype, evaluating
from imagelm.sampling.logits import RowSampling, guide, sample_rows, uniforms
from imagelm.sampling.masked import generate_masked
from imagelm.sampling.precision import dtype_name, prepare_model


def window_stride(grid: int, stride: int | None, default: int) -> int:
    """The columns a window advances: `stride`, or `default` when None; a one-line ValueError
    unless it is in 1..grid (the trained grid)."""
    stride = default if stride is None else stride
    if not 1 <= stride <= grid:
        raise ValueError(f"stride must be in 1..{grid} (the trained grid), got {stride}")
    return stride


def check_canvas(config, height: int, width: int, B: int, given: torch.Tensor | None,
                 known: torch.Tensor | None) -> None:
    """A one-line ValueError unless the canvas is at least the trained grid in both directions and
    given [B, H*W, n] / known [B, H*W] bool come together (or neither)."""
    g = config.grid_size
    if height < g or width < g:
        raise ValueError(f"a {width}x{height}-token canvas is smaller than the trained {g}x{g} grid")
    if (given is None) != (known is None):
        raise ValueError("given tokens and the known mask go together: pass both or neither")
    N, n = height * width, config.num_subtokens
    if given is not None and (tuple(given.shape) != (B, N, n) or tuple(known.shape) != (B, N)
                              or known.dtype != torch.bool):
        raise ValueError(f"given canvas tokens must be [{B}, {N}, {n}] and known [{B}, {N}] bool, got "
                         f"{list(given.shape)} and {list(known.shape)} {known.dtype}")


def window_origin(r: int, c: int, height: int, width: int, grid: int, stride: int) -> tuple[int, int]:
    """The (top, left) of the g x g window token (r, c) of an H x W canvas is drawn in: the token's row
    g/2 rows from the window's top, the window's columns centred on c's segment of `stride` columns,
    both clamped to the canvas. Every token of a segment gets the same window."""
    top = min(max(r - grid // 2, 0), height - grid)
    start = (c // stride) * stride
    left = min(max(start + stride // 2 - grid // 2, 0), width - grid)
    return top, left


@torch.no_grad()
def generate_canvas(model, cond, height: int, width: int, options: SamplingOptions = SamplingOptions(),
                    generator: torch.Generator | None = None, given: torch.Tensor | None = None,
                    known: torch.Tensor | None = None, stride: int | None = None,
                    progress: bool = False) -> torch.Tensor:
    """Sample an H x W token canvas with an AR generator trained on g x g: cond [B] (class ids) or a
    TextCondition -> tokens [B, H*W, n] int64 (raster order).

    given [B, H*W, n] / known [B, H*W] bool: tokens fixed in advance (outpainting, editing a large
    image), kept as they are; the known mask must be the same for every image (one window plan for
    the batch). A uniform draw is made for every canvas position, known or not, so the random stream
    is the same whatever is known. stride: columns decoded per window placement (default g / 4, at
    least 1; see the module doc). Guidance's schedule runs over the H*W canvas tokens.
    """
    config = model.config
    g, P, n, V = config.grid_size, config.cls_token_num, config.num_subtokens, config.vocab_size
    B, device = len(cond), cond.device
    check_canvas(config, height, width, B, given, known)
    stride = window_stride(g, stride, default=max(1, g // 4))
    N = height * width
    if known is not None and not bool((known == known[:1]).all()):
        raise ValueError("a canvas's known mask must be the same for every image")
    tokens = given.clone() if given is not None else torch.zeros(B, N, n, dtype=torch.long, device=device)
    is_known = known[0].tolist() if known is not None else [False] * N
    inputs = cat_conditions([cond, model.null_cond(cond)]) if options.guided else cond
    rows = RowSampling.of([options] * B, V, device)
    scales = options.cfg_scales(N)
    model = prepare_model(model, dtype_name(model))
    with evaluating(model):
        cache = KVCache(config, len(inputs), cache_dtype(model), device)
        prefix, prefix_mask = model.embed_condition(inputs)                             # [R, P, dim]
        prefix_logits = model.logits(prefix, torch.arange(P, device=device), cache, prefix_mask,
                                     key_length=P, last=1)[:, 0]                        # [R, n, V]
        window, fed = None, 0          # the window the cache holds, and how many of its tokens
        for i in tqdm(range(N), desc="sampling canvas", disable=not progress, leave=False):
            u = None if rows.all_greedy else uniforms((B, n), generator, device)
            if is_known[i]:
                continue
            r, c = divmod(i, width)
            top, left = window_origin(r, c, height, width, g, stride)
            j = (r - top) * g + (c - left)                                               # index in the window
            if window != (top, left):
                window, fed = (top, left), 0
            if j == 0:
                logits = prefix_logits
            else:
                local = torch.arange(fed, j, device=device)
                canvas_index = (top + local // g) * width + left + local % g
                x = tokens[:, canvas_index]                                              # [B, j - fed, n]
                h = model.embed_tokens(torch.cat([x, x]) if options.guided else x)       # [R, j - fed, dim]
                logits = model.logits(h, P + local, cache, key_length=P + j, last=1)[:, 0]
                fed = j
            if options.guided:
                logits = guide(logits[:B], logits[B:], scales[i])
            tokens[:, i] = sample_rows(logits, rows, u)
    return tokens


def window_starts(size: int, grid: int, stride: int) -> list[int]:
    """Window offsets along one axis of `size` tokens: 0, stride, 2 stride, ... and size - grid last,
    so the windows cover the axis."""
    starts = list(range(0, size - grid + 1, stride))
    if starts[-1] != size - grid:
        starts.append(size - grid)
    return starts


@torch.no_grad()
def generate_masked_canvas(model, cond, height: int, width: int, options: SamplingOptions = SamplingOptions(),
                           steps: int = 10, generator: torch.Generator | None = None,
                           given: torch.Tensor | None = None, known: torch.Tensor | None = None,
                           stride: int | None = None, progress: bool = False) -> torch.Tensor:
    """Sample an H x W token canvas with a masked generator trained on g x g: cond [B] or a
    TextCondition -> tokens [B, H*W, n] int64. Windows of g x g at `stride` (default g / 2) in raster
    order; each fills its still-unknown tokens in `steps` steps seeing every known token of the
    window. given / known [B, H*W] as in generate_canvas (here the mask may differ per image)."""
    config = model.config
    g, n = config.grid_size, config.num_subtokens
    B, device = len(cond), cond.device
    check_canvas(config, height, width, B, given, known)
    stride = window_stride(g, stride, default=max(1, g // 2))
    N = height * width
    tokens = given.clone() if given is not None else torch.zeros(B, N, n, dtype=torch.long, device=device)
    known = known.clone() if known is not None else torch.zeros(B, N, dtype=torch.bool, device=device)
    local = torch.arange(g * g, device=device)
    windows = [(t, l) for t in window_starts(height, g, stride) for l in window_starts(width, g, stride)]
    for top, left in tqdm(windows, desc="sampling canvas", disable=not progress, leave=False):
        index = (top + local // g) * width + left + local % g                           # [g*g]
        if bool(known[:, index].all()):
            continue
        filled = generate_masked(model, cond, options, steps, generator, tokens=tokens[:, index],
                                 known=known[:, index])
        tokens[:, index] = filled
        known[:, index] = True
    return tokens
