"""`imagelm edit` and `imagelm expand` (and `sample --size`): parse, call imagelm/edits.py, save.

    imagelm edit --ckpt runs/gpt --image in.png --mask mask.png --classes star --n 4 --candidates 8 --out out.png
    imagelm expand --ckpt runs/gpt --image in.png --right 32 --n 2 --out wide.png
    imagelm sample --ckpt runs/gpt --classes circle --size 64x32 --out wide.png
"""
from __future__ import annotations

from pathlib import Path


def add_condition_args(sp) -> None:
    sp.add_argument("--classes", nargs="*", default=None,
                    help="class ids or names, a row of --n images each (default: unconditional)")
    sp.add_argument("--prompt", action="append", default=None, help="a caption (text generators; repeatable)")


def add_sampling_args(sp) -> None:
    from imagelm.sampling.logits import CFG_SCHEDULES
    sp.add_argument("--n", type=int, default=4, help="images per class or prompt")
    sp.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale (1 = off)")
    sp.add_argument("--cfg-schedule", default="constant", choices=list(CFG_SCHEDULES))
    sp.add_argument("--cfg-interval", type=int, default=-1, help="guide only the first N tokens (-1: all)")
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--top-k", type=int, default=0)
    sp.add_argument("--top-p", type=float, default=1.0)
    sp.add_argument("--steps", type=int, default=10, help="parallel decoding steps of a masked (mlm) generator")
    sp.add_argument("--stride", type=int, default=None,
                    help="canvases larger than the trained grid: AR columns per window placement (default "
                         "grid/4; 1 = re-feed the window every token), masked window stride (default grid/2)")
    sp.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the one linked)")
    sp.add_argument("--out", default="edited.png", help="the PNG grid (a row per condition)")
    sp.add_argument("--each", default=None, help="also write one PNG per image into this folder")


def sampling_kwargs(a) -> dict:
    return dict(cfg_scale=a.cfg, cfg_schedule=a.cfg_schedule, cfg_interval=a.cfg_interval,
                temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed, steps=a.steps,
                stride=a.stride, engine=a.engine, dtype=a.dtype, progress=True)


def condition(a, gen):
    """--prompt / --classes -> what imagelm.edit takes (None: unconditional), and how many rows."""
    if a.prompt and a.classes:
        raise ValueError("give --classes or --prompt, not both")
    cond = a.prompt or a.classes or None
    return cond, len(cond) if cond else 1


def save(out, images, nrow: int, each=None) -> None:
    from imagelm.data.transforms import save_grid, to_uint8
    save_grid(images, out, nrow=nrow)
    if each:
        from PIL import Image
        folder = Path(each)
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(to_uint8(images)):
            Image.fromarray(img).save(folder / f"{i:05d}.png")
        print(f"one PNG per image: {folder}")


def _edit(a) -> None:
    import imagelm
    from imagelm.edits import edit
    gen = imagelm.load(a.ckpt, a.device)
    cond, rows = condition(a, gen)
    out = edit(gen, a.image, a.mask, cond, a.n, tokenizer=a.tokenizer, candidates=a.candidates, score=a.score,
               dilate=a.dilate, feather=a.feather, **sampling_kwargs(a))
    save(a.out, out.images, a.n, a.each)
    h, w = out.grid
    print(f"{len(out.images)} edited images ({rows} x {a.n}, a row each; {int(out.regenerated.sum())} of {h * w} "
          f"tokens regenerated): {a.out}")


def _expand(a) -> None:
    import imagelm
    from imagelm.edits import expand
    gen = imagelm.load(a.ckpt, a.device)
    cond, rows = condition(a, gen)
    out = expand(gen, a.image, a.left, a.right, a.up, a.down, cond, a.n, tokenizer=a.tokenizer, feather=a.feather,
                 **sampling_kwargs(a))
    save(a.out, out.images, a.n, a.each)
    H, W = out.images.shape[2:]
    print(f"{len(out.images)} expanded images of {W}x{H} pixels ({rows} x {a.n}, a row each): {a.out}")


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H) pixels; a one-line error otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 64x32") from None
    if w < 1 or h < 1:
        raise ValueError(f"--size {text!r}: width and height must be >= 1")
    return w, h


def sample_size(a, gen, cond, tokenizer) -> None:
    """`imagelm sample --size WxH`: the canvas path (imagelm.edits.sample_canvas), saved like sample's grid."""
    from imagelm.edits import sample_canvas
    width, height = parse_size(a.size)
    if a.tokens_out:
        raise ValueError("--tokens-out saves square grids; not with --size")
    out = sample_canvas(gen, cond, width, height, a.n, tokenizer=tokenizer, cfg_scale=a.cfg,
                        cfg_schedule=a.cfg_schedule, cfg_interval=a.cfg_interval, temperature=a.temperature,
                        top_k=a.top_k, top_p=a.top_p, seed=a.seed, steps=a.steps, engine=a.engine, dtype=a.dtype,
                        progress=True)
    save(a.out, out.images, a.n, a.each)
    print(f"{len(out.images)} images of {width}x{height} pixels ({len(cond)} conditions x {a.n}, a row each): {a.out}")


def add_parsers(sub, sampler_args, common) -> None:
    """The `edit` and `expand` verbs, on the CLI's shared sampler/device options."""
    e = sub.add_parser("edit", help="inpaint an image where a mask is white (black = keep)")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--image", required=True, help="the picture (PNG, JPEG, ...) of the trained size or larger")
    e.add_argument("--mask", required=True, help="same size: white = regenerate, black = keep")
    add_condition_args(e)
    e.add_argument("--candidates", type=int, default=1,
                   help="AR generators: draw K candidates for the hole, keep the one that best explains the kept "
                        "tokens after it (cost: K decodes; 1 = teacher forcing)")
    e.add_argument("--score", default="kept", choices=["kept", "joint"],
                   help="candidate score: likelihood of the kept tokens after the hole, or of everything after it")
    e.add_argument("--dilate", type=int, default=0, help="also regenerate this many tokens around the mask")
    e.add_argument("--feather", type=float, default=None, help="seam width in pixels (default: half a token)")
    add_sampling_args(e)
    sampler_args(e)
    common(e)
    e.set_defaults(func=_edit)

    x = sub.add_parser("expand", help="outpaint: grow an image to the right, left, up or down")
    x.add_argument("--ckpt", required=True)
    x.add_argument("--image", required=True)
    for side in ("left", "right", "up", "down"):
        x.add_argument(f"--{side}", type=int, default=0, metavar="PIXELS", help=f"pixels to add {side}")
    add_condition_args(x)
    x.add_argument("--feather", type=float, default=None, help="seam width in pixels (default: half a token)")
    add_sampling_args(x)
    x.set_defaults(out="expanded.png")
    sampler_args(x)
    common(x)
    x.set_defaults(func=_expand)
