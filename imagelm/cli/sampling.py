"""Sampling verbs: `sample` (a PNG grid) and `sample-many` (an ADM-style .npz, torchrun-aware)."""
from __future__ import annotations

from imagelm.cli import flags


def sample(a) -> None:
    if a.size:
        from imagelm.cli.editing import sample_size
        return sample_size(a)
    from imagelm.images import sample_to_files
    sample_to_files(a.ckpt, a.out, classes=a.classes, prompts=flags.prompts(a), n=a.n, sampler=flags.sampler(a),
                    seed=a.seed, tokenizer=a.tokenizer, each=a.each, tokens_out=a.tokens_out, device=a.device)


def sample_many(a) -> None:
    from imagelm.cli import say
    from imagelm.sample_many import sample_many
    out = sample_many(a.ckpt, a.n, a.out, batch_size=a.batch_size, classes=a.classes, sampler=flags.sampler(a),
                      seed=a.seed, tokenizer=a.tokenizer, device=a.device)
    if out is not None:
        say(f"{a.n} samples (arr_0 uint8 [N, H, W, 3], arr_1 labels): {out}")


def register(sub) -> None:
    s = sub.add_parser("sample", help="sample images from a generator into a PNG grid")
    s.add_argument("--ckpt", required=True, help="a generator: run, checkpoint or bundle directory")
    flags.conditions(s)
    s.add_argument("--n", type=int, default=4, help="images per class or prompt")
    flags.sampling(s)
    flags.tokenizer(s)
    s.add_argument("--out", default="samples.png")
    s.add_argument("--each", default=None, help="also write one PNG per image into this folder")
    s.add_argument("--tokens-out", default=None, help="also save the tokens [B, L, n] as .npy")
    s.add_argument("--size", default=None, metavar="WxH",
                   help="pixels, for canvases larger than the trained size (a sliding window of the trained grid)")
    from imagelm.cli.editing import stride
    stride(s)
    flags.runtime(s)
    s.set_defaults(func=sample)

    sm = sub.add_parser("sample-many", help="sample many images into an ADM-style .npz (resumable, torchrun-aware)")
    sm.add_argument("--ckpt", required=True, help="a generator: run, checkpoint or bundle directory")
    sm.add_argument("--n", type=int, default=50000, help="number of images")
    sm.add_argument("--out", required=True, help="output .npz (arr_0 uint8 [N, H, W, 3], arr_1 labels)")
    sm.add_argument("--batch-size", type=int, default=32, help="images per chunk (part of the seeding)")
    sm.add_argument("--classes", nargs="*", default=None, help="class ids or names, cycled (default: all)")
    flags.sampling(sm)
    flags.tokenizer(sm)
    flags.runtime(sm)
    sm.set_defaults(func=sample_many)
