"""Checkpoint verbs: `convert` (import a LlamaGen / ELM release) and `export TARGET` (consolidate a
sharded checkpoint, a self-contained bundle, a LlamaGen file).

Each export target is one entry of EXPORT_TARGETS: a function adding its parser to the `export`
subparsers; add a target by adding one."""
from __future__ import annotations


def convert(a) -> None:
    from imagelm.compat import convert
    out = convert(a.format, a.src, a.out_dir, preset=a.preset, image_size=a.image_size, tokenizer=a.tokenizer,
                  text_encoder_path=a.text_encoder_path, n_head=a.n_head)
    print(f"{a.format} {a.src} -> imagelm checkpoint {out}")


def export_consolidate(a) -> None:
    from imagelm.train.dcp import consolidate
    out = consolidate(a.ckpt, a.out)
    print(f"consolidated checkpoint (config.json, model.safetensors, ema.safetensors): {out}")


def export_bundle(a) -> None:
    from imagelm.bundle import export_bundle
    out = export_bundle(a.ckpt, a.out, tokenizer=a.tokenizer)
    print(f"bundle (generator + tokenizer, loads anywhere: imagelm sample --ckpt {out}): {out}")


def export_merge_lora(a) -> None:
    from imagelm.train.merge_lora import merge_lora_checkpoint
    out = merge_lora_checkpoint(a.ckpt, a.out)
    print(f"merged LoRA checkpoint (plain generator, config.json + model.safetensors): {out}")


def export_foreign(a) -> None:
    from imagelm.compat import export
    out = export(a.format, a.ckpt, a.out, force=a.force)
    print(f"{a.ckpt} -> {a.format} file {out}")


def _consolidate(targets) -> None:
    c = targets.add_parser("consolidate", help="write a (sharded) checkpoint as one model.safetensors checkpoint")
    c.add_argument("ckpt", help="a run directory (its newest checkpoint) or a checkpoint directory")
    c.add_argument("out", help="the new checkpoint directory")
    c.set_defaults(func=export_consolidate)


def _bundle(targets) -> None:
    b = targets.add_parser("bundle", help="one self-contained directory: generator + its tokenizer (+ text encoder "
                                          "reference), for imagelm.load / sample / serve anywhere")
    b.add_argument("ckpt", help="a generator run or checkpoint directory")
    b.add_argument("out", help="the new bundle directory")
    b.add_argument("--tokenizer", default=None, help="tokenizer checkpoint to bundle (default: the one linked)")
    b.set_defaults(func=export_bundle)


def _merge_lora(targets) -> None:
    c = targets.add_parser("merge-lora", help="fold a LoRA run's adapters into its weights: a plain checkpoint")
    c.add_argument("ckpt", help="a LoRA run directory (its newest checkpoint) or a checkpoint directory")
    c.add_argument("out", help="the new checkpoint directory")
    c.set_defaults(func=export_merge_lora)


def _foreign(targets) -> None:
    from imagelm.compat import EXPORT_FORMATS
    for fmt in EXPORT_FORMATS:
        ef = targets.add_parser(fmt, help="write an imagelm generator as a file LlamaGen's code loads")
        ef.add_argument("ckpt", help="imagelm generator checkpoint or run directory")
        ef.add_argument("out", help="the .pt file to write")
        ef.add_argument("--force", action="store_true", help="export even where LlamaGen would compute differently")
        ef.set_defaults(func=export_foreign, format=fmt)


EXPORT_TARGETS = (_consolidate, _bundle, _merge_lora, _foreign)


def register(sub) -> None:
    from imagelm.compat import FORMATS
    cv = sub.add_parser("convert", help="import a released LlamaGen / ELM checkpoint as an imagelm checkpoint")
    cv.add_argument("format", choices=FORMATS)
    cv.add_argument("src", help="the released file (.pt / .pth / .th)")
    cv.add_argument("out_dir", help="where to write the imagelm checkpoint")
    cv.add_argument("--preset", default=None,
                    help="generator preset (GPT-B, GPT-L, ...) or BAE-16/20/24/32, checked against the file; "
                         "default: every shape read from the file (any size)")
    cv.add_argument("--n-head", type=int, default=None,
                    help="generators: attention heads, where no preset of the file's width and depth says (default: "
                         "width / 64, the head size of the releases)")
    cv.add_argument("--image-size", type=int, default=None,
                    help="256, 384, ... (LlamaGen GPT: default from the file name; ELM: 256)")
    cv.add_argument("--tokenizer", default=None, help="link a generator to this (converted) tokenizer checkpoint")
    cv.add_argument("--text-encoder-path", default=None,
                    help="LlamaGen t2i: the local FLAN-T5 directory that `sample --prompt` will encode with")
    cv.set_defaults(func=convert)

    ex = sub.add_parser("export", help="export a checkpoint: consolidate, bundle, merge-lora, or a LlamaGen file")
    targets = ex.add_subparsers(dest="target", required=True, metavar="TARGET")
    for add in EXPORT_TARGETS:
        add(targets)
