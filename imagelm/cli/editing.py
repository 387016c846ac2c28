"""Editing verbs: `edit` (inpaint where a mask is white) and `expand` (outpaint), over imagelm/edits.py.
`sample --size WxH` (canvases larger than the trained grid) lives with `sample` in sampling.py and
calls `sample_size` here.

    imagelm edit --ckpt runs/gpt --image in.png --mask mask.png --classes star --n 4 --candidates 8 --out out.png
    imagelm expand --ckpt runs/gpt --image in.png --right 32 --n 2 --out wide.png
    imagelm sample --ckpt runs/gpt --classes circle --size 64x32 --out wide.png
"""
from __future__ import annotations

from imagelm.cli import flags


def _condition(a):
    """--classes / --prompt / --prompts -> what imagelm.edits takes (None: unconditional), and the
    number of conditions (rows of the grid)."""
    prompts = flags.prompts(a)
    if prompts and a.classes:
        raise ValueError("give --classes or --prompt/--prompts, not both")
    cond = prompts or a.classes or None
    return cond, len(cond) if cond else 1


def _load(a):
    from imagelm.models import load_generator
    from imagelm.runtime import pick_device
    return load_generator(a.ckpt, pick_device(a.device))


def _save(a, images) -> None:
    from imagelm.images import save_images
    save_images(images, a.out, nrow=a.n, each=a.each)
    if a.each:
        print(f"one PNG per image: {a.each}")


def edit(a) -> None:
    from imagelm.edits import edit
    gen = _load(a)
    cond, rows = _condition(a)
    out = edit(gen, a.image, a.mask, cond, a.n, tokenizer=a.tokenizer, sampler=flags.sampler(a), seed=a.seed,
               candidates=a.candidates, score=a.score, dilate=a.dilate, feather=a.feather, stride=a.stride,
               progress=True, score_guidance=a.score_guidance, hole_cfg=a.hole_cfg)
    _save(a, out.images)
    h, w = out.grid
    print(f"{len(out.images)} edited images ({rows} x {a.n}, a row each; {int(out.regenerated.sum())} of {h * w} "
          f"tokens regenerated): {a.out}")


def expand(a) -> None:
    from imagelm.edits import expand
    gen = _load(a)
    cond, rows = _condition(a)
    out = expand(gen, a.image, a.left, a.right, a.up, a.down, cond, a.n, tokenizer=a.tokenizer,
                 sampler=flags.sampler(a), seed=a.seed, feather=a.feather, stride=a.stride, progress=True)
    _save(a, out.images)
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


def sample_size(a) -> None:
    """`imagelm sample --size WxH`: the canvas path (imagelm.edits.sample_canvas), saved like sample's grid."""
    from imagelm.edits import sample_canvas
    from imagelm.images import conditions
    width, height = parse_size(a.size)
    if a.tokens_out:
        raise ValueError("--tokens-out saves square grids; not with --size")
    gen = _load(a)
    conds = conditions(gen, a.classes, flags.prompts(a))          # like `sample`: default every class
    out = sample_canvas(gen, conds.cond, width, height, a.n, tokenizer=a.tokenizer, sampler=flags.sampler(a),
                        seed=a.seed, stride=a.stride, progress=True)
    _save(a, out.images)
    print(f"{len(out.images)} images of {width}x{height} pixels ({len(conds)} {conds.what} x {a.n}, a row each): "
          f"{a.out}")


def stride(sp) -> None:
    """--stride: how the window of the trained grid moves over a larger canvas."""
    sp.add_argument("--stride", type=int, default=None,
                    help="canvases larger than the trained grid: AR columns per window placement (default "
                         "grid/4; 1 = re-feed the window every token), masked window stride (default grid/2)")


def _common(sp, out: str) -> None:
    sp.add_argument("--ckpt", required=True, help="a generator: run, checkpoint or bundle directory")
    sp.add_argument("--image", required=True, help="the picture (PNG, JPEG, ...) of the trained size or larger")
    sp.add_argument("--classes", nargs="*", default=None, help="class ids or names (default: unconditional)")
    sp.add_argument("--prompt", action="append", default=None, help="a caption (text generators; repeatable)")
    sp.add_argument("--prompts", default=None, help="a text file of captions, one per line")
    sp.add_argument("--n", type=int, default=4, help="images per class or prompt")
    sp.add_argument("--feather", type=float, default=None, help="seam width in pixels (default: half a token)")
    stride(sp)
    flags.sampling(sp)
    flags.tokenizer(sp)
    sp.add_argument("--out", default=out, help="the PNG grid (a row per condition)")
    sp.add_argument("--each", default=None, help="also write one PNG per image into this folder")
    flags.runtime(sp)


def register(sub) -> None:
    e = sub.add_parser("edit", help="inpaint an image where a mask is white (black = keep)")
    _common(e, "edited.png")
    e.add_argument("--mask", required=True, help="same size as the image: white = regenerate, black = keep")
    e.add_argument("--candidates", type=int, default=1,
                   help="AR generators: draw K candidates for the hole, keep the one that best explains the kept "
                        "tokens after it (cost: K decodes + K scoring passes; 1 = teacher forcing)")
    e.add_argument("--score", default="kept", choices=["kept", "joint", "guided-kept", "guided-joint", "class"],
                   help="candidate score: likelihood of the kept tokens after the hole (kept), or of everything "
                        "from the hole on (joint); the guided- ones score under the guidance the draw used "
                        "(s log p(x|c) - (s-1) log p(x|null), a second scoring pass)")
    e.add_argument("--score-guidance", type=float, default=None, metavar="S",
                   help="the guided scores at the constant scale S >= 1 instead of --cfg-scale: guided-joint at S "
                        "is joint + (S-1) x class evidence (no extra pass; needs --score guided-kept/guided-joint)")
    e.add_argument("--hole-cfg", type=float, default=None, metavar="G",
                   help="AR and masked: draw the hole at guidance scale G >= 1 instead of --cfg-scale (the kept "
                        "tokens are given, so this guides only the hole); the scores keep --cfg-scale")
    e.add_argument("--dilate", type=int, default=0, help="also regenerate this many tokens around the mask")
    e.set_defaults(func=edit)

    x = sub.add_parser("expand", help="outpaint: grow an image to the right, left, up or down")
    _common(x, "expanded.png")
    for side in ("left", "right", "up", "down"):
        x.add_argument(f"--{side}", type=int, default=0, metavar="PIXELS", help=f"pixels to add {side}")
    x.set_defaults(func=expand)
