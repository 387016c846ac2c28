"""Import LlamaGen and ELM released checkpoints into imagelm's modules, and export back to LlamaGen.

    gen = imagelm.compat.load_llamagen_gpt("c2i_L_384.pt")            # shape and size inferred, any size
    vq = imagelm.compat.load_llamagen_vq("vq_ds16_c2i.pt")
    bae = imagelm.compat.load_elm_bae("binaryae_ema.th")
    elm = imagelm.compat.load_elm_gpt("L-2-10.pth")
    imagelm.compat.convert("llamagen-gpt", "c2i_L_384.pt", "runs/c2i-L", tokenizer="runs/vq16")
    imagelm.compat.export("llamagen-gpt", "runs/c2i-L", "c2i_L_384_again.pt")

Each adapter (llamagen.py, elm.py) is the only code that knows its source's key names; the models
stay ours. Bad input raises CompatError (a ValueError) with a one-line message.
"""
from __future__ import annotations

from pathlib import Path

from imagelm.compat.common import CompatError, save_checkpoint
from imagelm.compat.elm import load_elm_bae, load_elm_gpt
from imagelm.compat.llamagen import export_llamagen_gpt, load_llamagen_gpt, load_llamagen_vq

FORMATS = ("llamagen-gpt", "llamagen-vq", "elm-bae", "elm-gpt")
EXPORT_FORMATS = ("llamagen-gpt",)

__all__ = ["CompatError", "FORMATS", "EXPORT_FORMATS", "load_llamagen_gpt", "load_llamagen_vq", "load_elm_bae",
           "load_elm_gpt", "export_llamagen_gpt", "convert", "export", "load_foreign"]


def load_foreign(fmt: str, src, preset: str | None = None, image_size: int | None = None,
                 n_head: int | None = None):
    """The module for a released checkpoint of format `fmt` (one of FORMATS), in eval mode with `.meta`.
    n_head: generators only, the head count where neither a preset nor the 64-channel head size applies."""
    if n_head is not None and fmt not in ("llamagen-gpt", "elm-gpt"):
        raise CompatError(f"--n-head is for generators (llamagen-gpt, elm-gpt), not {fmt}")
    if fmt == "llamagen-gpt":
        return load_llamagen_gpt(src, preset=preset, image_size=image_size, n_head=n_head)
    if fmt == "llamagen-vq":
        return load_llamagen_vq(src, preset=preset, image_size=image_size)
    if fmt == "elm-bae":
        bits = None
        if preset is not None:
            from imagelm.tokenizers.bae import BAE_PRESETS
            if preset not in BAE_PRESETS:
                raise CompatError(f"unknown BAE preset {preset!r}; choose one of {', '.join(BAE_PRESETS)}")
            bits = BAE_PRESETS[preset]["bits"]
        return load_elm_bae(src, image_size=image_size, bits=bits)
    if fmt == "elm-gpt":
        return load_elm_gpt(src, preset=preset, image_size=image_size, n_head=n_head)
    raise CompatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def convert(fmt: str, src, out_dir, preset: str | None = None, image_size: int | None = None,
            tokenizer=None, text_encoder_path=None, n_head: int | None = None) -> Path:
    """Import `src` (format `fmt`) and save it as our checkpoint under out_dir (atomically) -> the checkpoint
    directory, which `imagelm.load` / `load_tokenizer` / `imagelm sample` read. tokenizer: our (converted)
    tokenizer checkpoint to link a generator to, so sampling can decode without --tokenizer.
    text_encoder_path: for a LlamaGen text model, the local FLAN-T5 directory its captions are encoded
    with (recorded, not read now), so `imagelm sample --prompt` works."""
    model = load_foreign(fmt, src, preset, image_size, n_head)
    meta = dict(model.meta)
    if text_encoder_path is not None:
        if getattr(model, "config", None) is None or getattr(model.config, "cond", None) != "text":
            raise CompatError("--text-encoder-path is for text-conditional generators only")
        meta["text_encoder"] = {"name": "t5", "path": str(Path(text_encoder_path).resolve()),
                                "max_len": model.config.cls_token_num, "dim": model.config.caption_dim}
    if tokenizer is not None:
        if meta["kind"] not in ("ar", "mlm"):
            raise CompatError("--tokenizer links a generator to its tokenizer; this is a tokenizer")
        meta["tokenizer"] = {"path": str(_check_tokenizer(model.config, tokenizer))}
    return save_checkpoint(out_dir, meta, model)


def _check_tokenizer(config, tokenizer) -> Path:
    """The resolved tokenizer checkpoint, after checking its codes fit the generator's tokens."""
    from imagelm import checkpoint
    from imagelm.tokenizers import load_tokenizer
    from imagelm.vocab import TokenLayout
    path = checkpoint.resolve(tokenizer).resolve()
    try:
        layout = TokenLayout.for_tokenizer(load_tokenizer(path), config.num_subtokens)
    except ValueError as e:
        raise CompatError(f"tokenizer {path} does not fit this generator: {e}") from None
    if layout.vocab_size != config.vocab_size:
        raise CompatError(f"tokenizer {path} gives {layout.vocab_size} values per token, the generator "
                          f"expects {config.vocab_size}")
    return path


def export(fmt: str, ckpt, out, force: bool = False) -> Path:
    """Write our generator checkpoint `ckpt` as a file of format `fmt` (only "llamagen-gpt") -> out path."""
    if fmt not in EXPORT_FORMATS:
        raise CompatError(f"cannot export to {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    from imagelm.models import load_generator
    return export_llamagen_gpt(load_generator(ckpt, prefer_ema=True), out, force=force)
