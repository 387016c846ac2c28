"""Editing pictures with a generator: inpainting (`edit`), outpainting (`expand`) and canvases larger
than the trained size (`sample_canvas`), on the token machinery of sampling/editing.py (the trained
grid: the engine, candidate search, the masked sampler) and sampling/canvas.py (larger canvases: a
sliding window of the trained grid).

    out = imagelm.edit(gen, "in.png", "mask.png", ["star"], n=4, candidates=8, cfg_scale=2.0)
    out = imagelm.expand(gen, "in.png", right=32, n=2)               # out.images [2, 3, 32, 64]
    out = imagelm.sample_canvas(gen, ["circle"], width=64, height=32)

How tokens are drawn is an imagelm.images.Sampler (`sampler=`, what `imagelm sample`'s flags
build); SamplingOptions / Sampler fields given as keywords (cfg_scale=2.0, steps=8, dtype="float32")
override it.

A mask is white where pixels are regenerated and black where they are kept (grey: thresholded at
128). A token is regenerated when any of its pixels is masked (`dilate` grows that by whole tokens);
the decoded picture then gets the kept pixels pasted back over it, with a seam feathered `feather`
pixels into the kept side (diffusers' inpainting pastes the same way). The whole canvas is decoded
by the tokenizer in one pass (our tokenizers are fully convolutional), never window by window.
"""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from imagelm.data.transforms import to_tensor
from imagelm.images import (Sampler, as_condition, check_tokenizer_fits, engine_for, layout_of, meta_of,
                            resolve_sampler)
from imagelm.models.conditioning import TextCondition
from imagelm.runtime import seeded_generator
from imagelm.sampling.canvas import generate_canvas, generate_masked_canvas
from imagelm.sampling.editing import drawing_options, inpaint, token_grid
from imagelm.vocab import TokenLayout

MASK_THRESHOLD = 128
MAX_PIXELS = 4096 * 4096        # a decompression bomb is refused before it is decoded


@dataclass(frozen=True)
class Edited:
    """What an edit made: images [B, 3, H, W] float32 on the CPU in [-1, 1] (kept pixels pasted
    back), tokens [B, h*w, n] int64 (raster order over the h x w token canvas) and regenerated [h, w]
    bool (the tokens that were drawn; all True for a fresh canvas)."""
    images: torch.Tensor
    tokens: torch.Tensor
    regenerated: torch.Tensor

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.regenerated.shape)


# ------------------------------------------------------------------------------ files
def read_image(source, what: str = "image", mode: str = "RGB") -> np.ndarray:
    """A picture from a path, raw bytes, a PIL image or a uint8 array -> uint8 [H, W, 3] (mode RGB)
    or [H, W] (mode L). A missing, empty or unreadable file is a one-line error naming `what`."""
    if isinstance(source, np.ndarray):
        return _as_mode(Image.fromarray(source), mode)
    if isinstance(source, Image.Image):
        return _as_mode(source, mode)
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), f"the {what}"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")
        data, name = path.read_bytes(), f"{what} file {path}"
    if not data:
        raise ValueError(f"{name} is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"{name} is {img.width}x{img.height} pixels, more than the "
                                 f"{MAX_PIXELS} allowed")
            img.load()
            return _as_mode(img, mode)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise ValueError(f"{name} is not a readable image (PNG, JPEG, ...): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _as_mode(img: Image.Image, mode: str) -> np.ndarray:
    if mode == "L" and (img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info):
        # A mask painted on a transparent background: what is not painted is kept (black).
        rgba = np.asarray(img.convert("RGBA")).astype(np.float32)
        return (rgba[..., :3].mean(-1) * rgba[..., 3] / 255.0).round().astype(np.uint8)
    return np.asarray(img.convert(mode))


def read_mask(source, size: tuple[int, int]) -> torch.Tensor:
    """A mask (path, bytes, PIL image, or an array: bool, or uint8 grey) for an image of size (W, H)
    -> bool [H, W], True = regenerate (white). A mask of another size is a one-line error."""
    if isinstance(source, np.ndarray) and source.dtype == np.bool_:
        mask = torch.from_numpy(source.copy())
    elif torch.is_tensor(source):
        mask = source.bool().cpu()
    else:
        mask = torch.from_numpy(read_image(source, "mask", mode="L") >= MASK_THRESHOLD)
    if mask.dim() != 2 or (mask.shape[1], mask.shape[0]) != tuple(size):
        got = "x".join(str(s) for s in reversed(mask.shape))
        raise ValueError(f"the mask is {got} pixels but the image is {size[0]}x{size[1]}")
    return mask


# ------------------------------------------------------------------------------ pixels <-> tokens
def pixel_factor(tokenizer) -> int:
    """Pixels per token along a side (the tokenizer's downsample factor)."""
    return tokenizer.config.downsample


def position_layout(tokenizer, num_subtokens: int, layout: TokenLayout | None = None) -> TokenLayout:
    """The token layout of one position (grid 1), so canvases of any shape go through it: `layout`
    (a generator's `meta.layout`, checked against the tokenizer) or the tokenizer's own codes split
    into `num_subtokens` sub-tokens."""
    if layout is None:
        layout = TokenLayout.for_tokenizer(tokenizer, num_subtokens)
    else:
        check_tokenizer_fits(layout, tokenizer)
    return dataclasses.replace(layout, grid_size=1)


@torch.no_grad()
def encode_canvas(tokenizer, images: torch.Tensor, num_subtokens: int,
                  layout: TokenLayout | None = None) -> torch.Tensor:
    """images [B, 3, H, W] in [-1, 1] (H, W multiples of the downsample factor) -> tokens [B, h*w, n]
    (raster order), through `layout` (see position_layout)."""
    device = next(tokenizer.parameters()).device
    codes = tokenizer.encode(images.to(device))                                      # [B, h, w(, D)]
    B, h, w = codes.shape[:3]
    per_position = codes.reshape(B * h * w, 1, 1, *codes.shape[3:])
    return position_layout(tokenizer, num_subtokens, layout).to_tokens(per_position).reshape(B, h * w, num_subtokens)


@torch.no_grad()
def decode_canvas(tokenizer, tokens: torch.Tensor, height: int, width: int,
                  layout: TokenLayout | None = None) -> torch.Tensor:
    """tokens [B, h*w, n] of an h x w token canvas -> images [B, 3, h*f, w*f] float32 on the CPU, in
    one pass of the tokenizer's decoder (on the trained square grid: what images.decode_tokens gives)."""
    B, N, n = tokens.shape
    if N != height * width:
        raise ValueError(f"{N} tokens do not fill a {width}x{height} canvas")
    device = next(tokenizer.parameters()).device
    codes = position_layout(tokenizer, n, layout).to_codes(tokens.reshape(B * N, 1, n).to(device))
    return tokenizer.decode(codes.reshape(B, height, width, *codes.shape[3:])).float().cpu()


def feather_alpha(mask: torch.Tensor, pixels: float) -> torch.Tensor:
    """How much of the generated picture each pixel shows: mask [H, W] bool -> alpha [H, W] float32,
    1 on the mask, falling linearly to 0 over `pixels` pixels into the kept side (Euclidean distance),
    0 beyond; pixels 0 is the mask itself."""
    if pixels <= 0:
        return mask.float()
    if not bool(mask.any()):
        return torch.zeros(mask.shape)
    from scipy.ndimage import distance_transform_edt
    distance = distance_transform_edt(~mask.numpy())                                  # 0 on the mask
    return torch.from_numpy(np.clip(1.0 - distance / (pixels + 1.0), 0.0, 1.0)).float()


def paste_back(decoded: torch.Tensor, original: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """decoded [B, 3, H, W], original [3, H, W], alpha [H, W] -> alpha * decoded + (1 - alpha) *
    original, [B, 3, H, W]: the kept pixels are the original's exactly where alpha is 0."""
    return alpha * decoded + (1 - alpha) * original


# ------------------------------------------------------------------------------ conditions
def condition_rows(generator, cond, n: int, text_encoder=None):
    """cond as imagelm.sample takes it (validated by images.as_condition; None: the unconditional
    class of a class generator) -> the sampler's condition for B * n images (class ids [B*n] or a
    TextCondition), grouped by condition, on the generator's device."""
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    device = next(generator.parameters()).device
    config = generator.config
    if config.cond == "text":
        if cond is None:
            raise ValueError("this generator is text-conditional: give a prompt")
        if torch.is_tensor(cond) or (isinstance(cond, (list, tuple)) and cond and not isinstance(cond[0], str)):
            raise ValueError("this generator is text-conditional: give prompts, not classes")
    elif cond is None:
        cond = torch.tensor([config.num_classes])                     # the null class: no condition
    elif isinstance(cond, (TextCondition, str)):
        raise ValueError("this generator is class-conditional: give classes, not a prompt")
    elif not torch.is_tensor(cond) and not list(cond):
        raise ValueError("no classes given (None: unconditional)")
    return as_condition(generator, cond, text_encoder).to(device).repeat_interleave(n)


def with_overrides(sampler: Sampler | None, overrides: dict) -> Sampler:
    """`sampler` (default Sampler()) with SamplingOptions or Sampler fields overridden by keyword
    (cfg_scale=2.0, steps=8, engine="plain", ...); an unknown keyword is a TypeError."""
    sampler = Sampler() if sampler is None else sampler
    option_fields = {f.name for f in dataclasses.fields(sampler.options)}
    sampler_fields = {f.name for f in dataclasses.fields(Sampler)} - {"options"}
    unknown = set(overrides) - option_fields - sampler_fields
    if unknown:
        raise TypeError(f"unknown sampling keyword(s): {', '.join(sorted(unknown))}")
    options = dataclasses.replace(sampler.options, **{k: v for k, v in overrides.items() if k in option_fields})
    return dataclasses.replace(sampler, options=options,
                               **{k: v for k, v in overrides.items() if k in sampler_fields})


# ------------------------------------------------------------------------------ the token step
def fill_tokens(generator, cond, given: torch.Tensor | None, known: torch.Tensor | None, height: int, width: int,
                sampler: Sampler = Sampler(), seed: int = 0, candidates: int = 1, score: str = "kept",
                stride: int | None = None, progress: bool = False, score_guidance: float | None = None,
                hole_cfg: float | None = None) -> torch.Tensor:
    """The unknown tokens of an h x w canvas filled in: given [B, h*w, n] / known [B, h*w] bool (None:
    a fresh canvas) -> tokens [B, h*w, n]. On the trained grid: `inpaint` (AR through the engine of
    images.engine_for or the plain sampler, with candidate search; masked generators in
    `sampler.steps` steps); on a larger canvas the sliding window (sampling/canvas.py, `stride`, the
    plain loop in float32), where candidates must be 1 and score_guidance / hole_cfg unset."""
    config = generator.config
    g, n, B = config.grid_size, config.num_subtokens, len(cond)
    device = next(generator.parameters()).device
    masked = generator.kind == "mlm"
    sampler = resolve_sampler(generator, sampler)       # an import's conventions, as imagelm.sample does
    options = sampler.options
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if masked and options.cfg_interval >= 0:
        raise ValueError("--cfg-interval guides the first N tokens of an autoregressive generator; a masked "
                         "generator decodes every position at every step (use --cfg-schedule)")
    if (height, width) == (g, g):
        if given is None:
            given = torch.zeros(B, g * g, n, dtype=torch.long, device=device)
            known = torch.zeros(B, g * g, dtype=torch.bool, device=device)
        engine = None
        if not masked and sampler.engine == "engine":
            guided = drawing_options(options, hole_cfg).guided                          # rows for the draws
            engine = engine_for(generator, B * candidates * (2 if guided else 1), sampler)
        return inpaint(generator, cond, given.to(device), known.to(device), options, seed, candidates, score,
                       sampler.steps, sampler.engine, engine=engine, progress=progress,
                       score_guidance=score_guidance, hole_cfg=hole_cfg)
    if candidates != 1:
        raise ValueError(f"candidate search runs on the trained {g}x{g} grid; this canvas is "
                         f"{width}x{height} tokens (use candidates=1)")
    if score_guidance is not None or hole_cfg is not None:
        raise ValueError(f"score_guidance and hole_cfg are for inpainting on the trained {g}x{g} grid; this canvas "
                         f"is {width}x{height} tokens")
    given = None if given is None else given.to(device)
    known = None if known is None else known.to(device)
    rng = seeded_generator(seed, device)
    if masked:
        return generate_masked_canvas(generator, cond, height, width, options, sampler.steps, rng, given, known,
                                      stride, progress)
    return generate_canvas(generator, cond, height, width, options, rng, given, known, stride, progress)


def _canvas_of(tokenizer, generator, image: np.ndarray) -> tuple[int, int]:
    """The token canvas (h, w) of a uint8 picture [H, W, 3]; a one-line error unless its sides are
    whole tokens and at least the trained size."""
    f, g = pixel_factor(tokenizer), generator.config.grid_size
    H, W = image.shape[:2]
    if H % f or W % f or H < g * f or W < g * f:
        raise ValueError(f"the image is {W}x{H} pixels; this generator edits images of {g * f}x{g * f} pixels "
                         f"or larger, with sides a multiple of {f}")
    return H // f, W // f


def _tokenizer(generator, tokenizer):
    """A loaded tokenizer as it is; a path loaded; None: the one the generator's checkpoint links."""
    from imagelm.tokenizers import load_linked_tokenizer, load_tokenizer
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    device = next(generator.parameters()).device
    if tokenizer is not None:
        return load_tokenizer(tokenizer, device)
    if meta_of(generator) is None:
        raise ValueError("this generator was built in memory and links no tokenizer: pass tokenizer=")
    return load_linked_tokenizer(meta_of(generator), device, True)


# ------------------------------------------------------------------------------ the three verbs
def edit(generator, image, mask, cond=None, n: int = 1, *, tokenizer=None, sampler: Sampler | None = None,
         seed: int = 0, candidates: int = 1, score: str = "kept", dilate: int = 0, feather: float | None = None,
         stride: int | None = None, progress: bool = False, text_encoder=None, score_guidance: float | None = None,
         hole_cfg: float | None = None, **sampling) -> Edited:
    """Inpaint `image` where `mask` is white: n images per condition (cond as imagelm.sample takes it;
    None: unconditional) -> Edited with images [B * n, 3, H, W], grouped by condition.

    image: a path, bytes, PIL image or uint8 array of the trained size or larger (sides whole tokens);
    mask: the same size (see read_mask). candidates: AR candidate search on the trained grid, the cost
    knob (see sampling/editing.py; 1 = teacher forcing); score: how candidates are ranked, one of
    sampling/editing.SCORES ("kept", "joint", "guided-kept", "guided-joint", "class"; the guided
    ones under this call's guidance, or at the constant scale score_guidance S >= 1: guided-joint at
    S = joint + (S - 1) class, from the same scoring passes, so free); hole_cfg: the guidance scale the
    hole's candidates are drawn with (default cfg_scale; the scores keep cfg_scale); dilate: grow the
    regenerated tokens by this many; feather: seam width in pixels (default half a token); sampler / **sampling: how tokens are
    drawn (see the module doc). All-black masks return the input's tokens; with an all-white mask and
    candidates=1 the tokens are imagelm.sample's for the same seed.
    """
    sampler = with_overrides(sampler, sampling)
    tokenizer = _tokenizer(generator, tokenizer)
    pixels = read_image(image)
    h, w = _canvas_of(tokenizer, generator, pixels)
    pixel_mask = read_mask(mask, (pixels.shape[1], pixels.shape[0]))
    regenerated = token_grid(pixel_mask, pixel_factor(tokenizer), dilate)                # [h, w]
    cond = condition_rows(generator, cond, n, text_encoder)
    layout = layout_of(generator)
    original = to_tensor(pixels)                                                          # [3, H, W]
    given = encode_canvas(tokenizer, original[None], generator.config.num_subtokens, layout).expand(len(cond), -1, -1)
    known = (~regenerated).flatten()[None].expand(len(cond), -1)
    tokens = fill_tokens(generator, cond, given.contiguous(), known.contiguous(), h, w, sampler, seed,
                         candidates, score, stride, progress, score_guidance, hole_cfg)
    decoded = decode_canvas(tokenizer, tokens, h, w, layout)
    feather = pixel_factor(tokenizer) / 2 if feather is None else feather
    return Edited(paste_back(decoded, original, feather_alpha(pixel_mask, feather)), tokens.cpu(), regenerated)


def expand(generator, image, left: int = 0, right: int = 0, up: int = 0, down: int = 0, cond=None, n: int = 1, *,
           tokenizer=None, sampler: Sampler | None = None, seed: int = 0, feather: float | None = None,
           stride: int | None = None, progress: bool = False, text_encoder=None, **sampling) -> Edited:
    """Outpaint: grow `image` by left / right / up / down pixels -> Edited with images [B * n, 3,
    H + up + down, W + left + right]. The original's own tokens are kept exactly (it is encoded alone);
    the canvas is padded to whole tokens on the new sides and cropped back to the size asked."""
    sampler = with_overrides(sampler, sampling)
    tokenizer = _tokenizer(generator, tokenizer)
    f, g = pixel_factor(tokenizer), generator.config.grid_size
    pixels = read_image(image)
    H, W = pixels.shape[:2]
    amounts = dict(left=left, right=right, up=up, down=down)
    bad = [k for k, v in amounts.items() if not isinstance(v, int) or v < 0]
    if bad:
        raise ValueError(f"--{bad[0]} must be a whole number of pixels >= 0, got {amounts[bad[0]]!r}")
    if not any(amounts.values()):
        raise ValueError("nothing to expand: give --left, --right, --up or --down PIXELS")
    if H % f or W % f:
        raise ValueError(f"the image is {W}x{H} pixels; its sides must be a multiple of {f} (whole tokens)")
    pad = {k: -(-v // f) for k, v in amounts.items()}                                     # whole tokens
    h, w = H // f + pad["up"] + pad["down"], W // f + pad["left"] + pad["right"]
    if h < g or w < g:
        raise ValueError(f"the expanded canvas would be {w * f}x{h * f} pixels, smaller than the trained "
                         f"{g * f}x{g * f}")
    cond = condition_rows(generator, cond, n, text_encoder)
    layout = layout_of(generator)
    original = to_tensor(pixels)
    inner = encode_canvas(tokenizer, original[None], generator.config.num_subtokens, layout)   # [1, H/f * W/f, n]
    rows = torch.arange(H // f)[:, None] + pad["up"]
    cols = torch.arange(W // f)[None, :] + pad["left"]
    index = (rows * w + cols).flatten()                                                    # the original's place
    given = torch.zeros(len(cond), h * w, inner.shape[-1], dtype=torch.long, device=inner.device)
    given[:, index] = inner
    regenerated = torch.ones(h * w, dtype=torch.bool)
    regenerated[index] = False
    known = (~regenerated)[None].expand(len(cond), -1).contiguous()
    tokens = fill_tokens(generator, cond, given, known, h, w, sampler, seed, 1, "kept", stride, progress)
    decoded = decode_canvas(tokenizer, tokens, h, w, layout)                               # [B, 3, h*f, w*f]
    top, lft = pad["up"] * f, pad["left"] * f
    canvas = torch.zeros(3, h * f, w * f)
    canvas[:, top:top + H, lft:lft + W] = original
    pixel_mask = torch.ones(h * f, w * f, dtype=torch.bool)
    pixel_mask[top:top + H, lft:lft + W] = False
    feather = f / 2 if feather is None else feather
    images = paste_back(decoded, canvas, feather_alpha(pixel_mask, feather))
    y0, x0 = top - up, lft - left                                                          # crop to the size asked
    images = images[:, :, y0:y0 + H + up + down, x0:x0 + W + left + right]
    return Edited(images.contiguous(), tokens.cpu(), regenerated.view(h, w))


def sample_canvas(generator, cond, width: int, height: int, n: int = 1, *, tokenizer=None,
                  sampler: Sampler | None = None, seed: int = 0, stride: int | None = None,
                  progress: bool = False, text_encoder=None, **sampling) -> Edited:
    """n images per condition of width x height pixels (whole tokens, at least the trained size) ->
    Edited with images [B * n, 3, height, width]. At the trained size this is imagelm.sample (same
    seed, same tokens); larger canvases slide the trained window (sampling/canvas.py)."""
    sampler = with_overrides(sampler, sampling)
    tokenizer = _tokenizer(generator, tokenizer)
    f, g = pixel_factor(tokenizer), generator.config.grid_size
    if width % f or height % f or width < g * f or height < g * f:
        raise ValueError(f"--size {width}x{height}: this generator makes images of {g * f}x{g * f} pixels or "
                         f"larger, with sides a multiple of {f}")
    h, w = height // f, width // f
    cond = condition_rows(generator, cond, n, text_encoder)
    tokens = fill_tokens(generator, cond, None, None, h, w, sampler, seed, 1, "kept", stride, progress)
    return Edited(decode_canvas(tokenizer, tokens, h, w, layout_of(generator)), tokens.cpu(),
                  torch.ones(h, w, dtype=torch.bool))
