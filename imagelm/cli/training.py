"""Training verbs: `train-tokenizer`, `train` (a generator on extracted codes), `train-features`."""
from __future__ import annotations

from imagelm.cli import flags


def train_tokenizer(a) -> None:
    from imagelm.cli import say
    from imagelm.train.tokenizer import TokenizerTrainArgs, train_tokenizer
    ckpt = train_tokenizer(TokenizerTrainArgs(
        data=a.data, image_size=a.image_size, data_length=a.data_length, perceptual_weights=a.perceptual_weights,
        no_perceptual=a.no_perceptual, disc_start=a.disc_start, init=a.init, **flags.training_kwargs(a)))
    say(f"tokenizer checkpoint: {ckpt}")


def train(a) -> None:
    from imagelm.cli import say
    from imagelm.train.generator import GeneratorTrainArgs, train_generator
    ckpt = train_generator(GeneratorTrainArgs(
        codes=a.codes, kind=a.kind, subtokens=a.subtokens, cond=a.cond, warmup=a.warmup, lr_schedule=a.lr_schedule,
        class_dropout=a.class_dropout, dropout=a.dropout, peak_tflops=a.peak_tflops, init=a.init,
        class_map=a.class_map, freeze=a.freeze, lora_rank=a.lora_rank, lora_alpha=a.lora_alpha,
        **flags.training_kwargs(a)))
    say(f"generator checkpoint: {ckpt}")


def train_features(a) -> None:
    from pathlib import Path

    from imagelm.eval.classifier import load_classifier
    from imagelm.train.classifier import ClassifierTrainArgs, train_classifier
    out = a.out or f"runs/features/{Path(a.data).name}"
    ckpt = train_classifier(ClassifierTrainArgs(data=a.data, out=out, image_size=a.image_size,
                                                data_length=a.data_length, steps=a.steps, batch_size=a.batch_size,
                                                lr=a.lr, device=a.device, seed=a.seed))
    extra = load_classifier(ckpt).meta.extra
    print(f"held-out accuracy {extra['heldout_accuracy']:.1%} over {extra['heldout_images']} images")
    print(f"feature net checkpoint: {ckpt}")


def finetuning(sp) -> None:
    """`imagelm train`'s fine-tuning options (imagelm/train/init.py, freeze.py, models/lora.py)."""
    sp.add_argument("--init", default=None, metavar="CKPT",
                    help="start from this generator checkpoint's weights (ours or `imagelm convert`ed), fresh "
                         "optimizer; its architecture is kept, grid and classes come from --codes")
    sp.add_argument("--class-map", default=None, metavar="OLD:NEW,...",
                    help="with --init: class-table rows to carry over (ids or names); default: same ids kept, "
                         "new classes start at the mean of the old rows")
    sp.add_argument("--freeze", default=None, metavar="PARTS",
                    help="comma-separated parts not to train: embeddings, cond, blocks, blocks:N (the first N), "
                         "norm, trunk, heads, all-but-heads")
    sp.add_argument("--lora-rank", type=int, default=None, metavar="R",
                    help="LoRA adapters of rank R on attention and MLP linears; the trunk trains through them only")
    sp.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale alpha / R (default alpha = R)")


def register(sub) -> None:
    t = sub.add_parser("train-tokenizer", help="train an image tokenizer (VQ or binary autoencoder)")
    flags.data(t)
    t.add_argument("--preset", default=None, help="VQ-16, VQ-8, vq-tiny (default), BAE-16/20/24/32, bae-tiny")
    t.add_argument("--init", default=None, metavar="CKPT",
                   help="adapt this tokenizer (ours, or a converted LlamaGen VQ / ELM BAE) to --data: its "
                        "architecture and weights, a fresh optimizer")
    t.add_argument("--out", required=True)
    flags.optimization(t, steps=600, batch_size=64, lr=2e-3)
    t.add_argument("--perceptual-weights", default=None, help="local VGG16 state dict for the perceptual loss")
    t.add_argument("--no-perceptual", action="store_true", help="train without the perceptual loss")
    t.add_argument("--disc-start", type=int, default=None, help="step at which the adversarial loss starts")
    flags.training(t, preview_every=200, ckpt_every=200)
    t.set_defaults(func=train_tokenizer)

    tr = sub.add_parser("train", help="train a generator on extracted codes")
    tr.add_argument("--codes", required=True)
    tr.add_argument("--out", required=True)
    tr.add_argument("--preset", default=None, help="tiny (default), GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-XXXL, GPT-1B, "
                                                   "GPT-3B; with --init only a check of its shape")
    tr.add_argument("--kind", default=None, choices=["ar", "mlm"],
                    help="autoregressive (default) or masked (MaskGIT) generator; with --init default its kind")
    tr.add_argument("--subtokens", type=int, default=None,
                    help="binary codes: split the D bits into N sub-tokens of D/N bits (ELM's N-M); default: <= 10 bits each")
    tr.add_argument("--cond", default=None, choices=["class", "text"],
                    help="condition on class ids or on the codes' caption features (default: the preset's)")
    flags.optimization(tr, steps=1000, batch_size=64, lr=1e-3)
    tr.add_argument("--warmup", type=int, default=50)
    tr.add_argument("--lr-schedule", default="cosine", choices=["constant", "cosine"])
    tr.add_argument("--class-dropout", type=float, default=None, help="condition dropout for CFG (default 0.1)")
    tr.add_argument("--dropout", type=float, default=None, help="token/residual/FFN dropout")
    tr.add_argument("--peak-tflops", type=float, default=None,
                    help="one device's peak TFLOPS for the MFU estimate (default: a known GPU's bf16 peak)")
    finetuning(tr)
    flags.training(tr, preview_every=500, ckpt_every=500)
    tr.set_defaults(func=train)

    tf = sub.add_parser("train-features", help="train the built-in feature net (a classifier) on a data set")
    flags.data(tf, image_size=32)
    tf.add_argument("--out", default=None, help="run directory (default: runs/features/DATA)")
    flags.optimization(tf, steps=1000, batch_size=128, lr=2e-3)
    flags.runtime(tf)
    tf.set_defaults(func=train_features)
