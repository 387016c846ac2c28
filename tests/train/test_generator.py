import shutil

import torch
from safetensors.torch import load_file

from imagelm import checkpoint
from imagelm.data.codes import CodesDataset
from imagelm.models import load_generator
from imagelm.train.generator import GeneratorTrainArgs, token_loss, train_generator
from imagelm.vocab import TokenLayout

ARGS = dict(steps=4, batch_size=8, log_every=2, preview_every=4, ckpt_every=2, precision="fp32", device="cpu",
            progress=False)


def test_resume_is_exact(tiny_codes, tiny_generator, tmp_path):
    shutil.copytree(tiny_generator / "checkpoints" / "step-0000002", tmp_path / "checkpoints" / "step-0000002")
    train_generator(GeneratorTrainArgs(codes=str(tiny_codes), out=str(tmp_path), resume=True, **ARGS))
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tiny_generator / "checkpoints" / "step-0000004" / name)
        b = load_file(tmp_path / "checkpoints" / "step-0000004" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state = checkpoint.load_train_state(tmp_path)
    assert state["step"] == 4


def test_generator_checkpoint_links_tokenizer_and_preview(tiny_tokenizer, tiny_generator):
    meta = checkpoint.read_meta(tiny_generator)
    assert meta.kind == "ar" and meta.tokenizer.path == str(checkpoint.resolve(tiny_tokenizer))
    assert meta.tokenizer.sha256 == checkpoint.weights_sha256(checkpoint.load_weights(tiny_tokenizer))
    assert meta.class_names[:2] == ("circle", "square") and meta.provenance.source == "imagelm"
    assert (tiny_generator / "previews" / "step-0000004.png").is_file()


def test_previews_sample_the_current_weights_in_bf16(tiny_generator):
    """The session's run previews at steps 2 and 4 through the bfloat16 engine, whose weights are a
    converted copy: the second preview must come from step 4's EMA weights, not the copy made at
    step 2 (the two differ), and equal a fresh sample from the saved step-4 EMA."""
    import numpy as np
    from PIL import Image

    import imagelm
    from imagelm.data.transforms import make_grid
    from imagelm.images import Sampler, generate_images
    from imagelm.sampling.autoregressive import SamplingOptions
    first, second = (np.asarray(Image.open(tiny_generator / "previews" / f"step-{s:07d}.png").convert("RGB"))
                     for s in (2, 4))
    assert not np.array_equal(first, second)
    gen = load_generator(tiny_generator / "checkpoints" / "step-0000004")              # its EMA weights
    cond = torch.arange(min(10, gen.config.num_classes))
    fresh = generate_images(gen, cond, imagelm.linked_tokenizer(gen.meta), 8,
                            Sampler(SamplingOptions(cfg_scale=2.0), dtype="bfloat16"), seed=0).images
    assert np.array_equal(second, make_grid(fresh, nrow=8))


def test_training_lowers_the_loss(tiny_codes, tmp_path):
    train_generator(GeneratorTrainArgs(codes=str(tiny_codes), out=str(tmp_path), lr=3e-3, warmup=0,
                                       **{**ARGS, "steps": 30, "ckpt_every": 1, "keep": 100, "preview_every": 1000}))
    codes = CodesDataset(tiny_codes)
    tokens, labels = codes.batch(torch.arange(32))

    def loss_at(step):
        model = load_generator(tmp_path / "checkpoints" / f"step-{step:07d}", prefer_ema=False)
        with torch.no_grad():
            return token_loss(model(tokens, labels), tokens).item()

    assert loss_at(30) < loss_at(1) - 1.0


def _loss_falls(codes_dir, tmp_path, kind, subtokens):
    import imagelm
    from imagelm.models import load_generator
    from imagelm.train.generator import generator_loss
    out = tmp_path / f"{kind}-{subtokens}"
    train_generator(GeneratorTrainArgs(codes=str(codes_dir), out=str(out), kind=kind, subtokens=subtokens, lr=3e-3,
                                       warmup=0, class_dropout=0.0,
                                       **{**ARGS, "steps": 30, "ckpt_every": 30, "preview_every": 30}))
    codes = CodesDataset(codes_dir)
    meta = checkpoint.read_meta(out)
    layout = meta.layout
    tokens, labels = codes.batch(torch.arange(32), layout=layout)
    assert tokens.shape[-1] == layout.num_subtokens

    def loss_of(model):
        with torch.no_grad():   # the same masks for both models (mlm)
            return generator_loss(kind, model.eval(), tokens, labels, torch.Generator().manual_seed(0)).item()

    from imagelm.models import GPTConfig, build_generator
    torch.manual_seed(0)  # the loop seeds with args.seed before building: this is its step-0 model
    first = loss_of(build_generator(meta.config_as(GPTConfig), kind))
    last = loss_of(load_generator(out, prefer_ema=False))
    assert last < 0.9 * first, (kind, subtokens, first, last)
    gen = imagelm.load(out)
    sampled = imagelm.sample(gen, [0, 1], cfg_scale=2.0, seed=0, steps=4)
    assert sampled.shape == (2, 16, layout.num_subtokens)
    assert (out / "previews" / "step-0000030.png").is_file()  # decoded through the linked tokenizer
    return meta


def test_binary_codes_with_n_1_and_n_2_subtokens_train(tiny_bae_codes, tmp_path):
    meta1 = _loss_falls(tiny_bae_codes, tmp_path, "ar", 1)
    assert meta1.config["vocab_size"] == 2 ** 12 and meta1.config["num_subtokens"] == 1
    assert meta1.layout == TokenLayout.binary(4, 12, 1)
    meta2 = _loss_falls(tiny_bae_codes, tmp_path, "ar", 2)
    assert meta2.config["vocab_size"] == 2 ** 6 and meta2.config["num_subtokens"] == 2


def test_masked_generator_trains_on_vq_and_binary_codes(tiny_codes, tiny_bae_codes, tmp_path):
    assert _loss_falls(tiny_codes, tmp_path / "vq", "mlm", None).kind == "mlm"
    _loss_falls(tiny_bae_codes, tmp_path / "bae", "mlm", 3)
