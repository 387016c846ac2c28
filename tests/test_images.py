"""The one image path: conditions validated once, tokens sampled (engine reused only while the
weights are unchanged, never stored on the model), decoded through the checkpoint's layout."""
import pytest
import torch

import imagelm
from imagelm import images
from imagelm.images import Sampler, conditions, engine_for, generate_images, sample_tokens
from imagelm.models import build_generator, gpt_config
from imagelm.sampling.autoregressive import SamplingOptions


def _model(**kw):
    torch.manual_seed(0)
    m = build_generator(gpt_config("tiny", vocab_size=512, grid_size=4, num_classes=3, **kw)).eval()
    for head in m.output.heads:
        torch.nn.init.normal_(head.weight, std=0.2)
    return m


def test_engine_is_reused_until_the_weights_change_and_never_stored_on_the_model():
    model = _model()
    a = engine_for(model, 4, Sampler(dtype="bfloat16"))
    assert engine_for(model, 2, Sampler(dtype="bfloat16")) is a                      # same weights, enough rows
    assert engine_for(model, 8, Sampler(dtype="bfloat16")) is not a                  # more rows: a bigger one
    b = engine_for(model, 8, Sampler(dtype="bfloat16"))
    with torch.no_grad():
        model.trunk.norm.weight.mul_(1.5)                             # an in-place update (as EMA / optimizer)
    assert engine_for(model, 8, Sampler(dtype="bfloat16")) is not b
    assert not any(isinstance(v, images.Engine) for v in vars(model).values())   # nothing cached on the model
    assert "_engines" not in vars(model)
    opts = Sampler(SamplingOptions(cfg_scale=2.0), dtype="bfloat16")
    before = sample_tokens(model, torch.tensor([0, 1]), 2, opts, seed=1)
    with torch.no_grad():
        for p in model.output.parameters():
            p.mul_(-1)
    after = sample_tokens(model, torch.tensor([0, 1]), 2, opts, seed=1)
    assert not torch.equal(before, after)                             # the new weights were sampled


def test_one_validator_for_classes_and_prompts(tiny_generator):
    gen = imagelm.load(tiny_generator)
    every = conditions(gen)
    assert every.cond.tolist() == list(range(gen.config.num_classes)) and every.names[:2] == ("circle", "square")
    picked = conditions(gen, classes=["square", "0"])
    assert picked.cond.tolist() == [1, 0] and picked.what == "classes"
    with pytest.raises(ValueError, match="class-conditional: give --classes, not --prompt"):
        conditions(gen, prompts=["a red circle"])
    with pytest.raises(ValueError, match="unknown class 'dragon'; known class names: circle, square"):
        conditions(gen, classes=["dragon"])
    text = build_generator(gpt_config("tiny-t2i", grid_size=4, cls_token_num=4, caption_dim=8))
    with pytest.raises(ValueError, match="text-conditional: give --prompt TEXT or --prompts FILE, not --classes"):
        conditions(text, classes=[0])
    with pytest.raises(ValueError, match="does not name its text encoder"):
        conditions(text, prompts=["a red circle"])


def test_masked_sampler_refuses_cfg_interval_instead_of_ignoring_it():
    torch.manual_seed(0)
    mlm = build_generator(gpt_config("tiny", vocab_size=16, grid_size=4, num_classes=3), "mlm").eval()
    with pytest.raises(ValueError, match="--cfg-interval"):
        sample_tokens(mlm, torch.tensor([0]), 1, Sampler(SamplingOptions(cfg_scale=2.0, cfg_interval=4)))
    assert sample_tokens(mlm, torch.tensor([0]), 1, Sampler(SamplingOptions(cfg_scale=2.0), steps=2)).shape == (1, 16, 1)


def test_tokens_decode_through_the_checkpoints_layout(tiny_tokenizer, tiny_generator):
    """A generator on an 8x8 grid with a tokenizer trained on 4x4 codes (as an imported LlamaGen model
    at another resolution): its layout, not the tokenizer's size, shapes the images."""
    from imagelm.checkpoint import CheckpointMeta
    from imagelm.vocab import TokenLayout
    tok = imagelm.linked_tokenizer(imagelm.load(tiny_generator).meta)
    big = build_generator(gpt_config("tiny", vocab_size=512, grid_size=8, num_classes=3)).eval()
    big.meta = CheckpointMeta(kind="ar", config=big.config.to_dict(), layout=TokenLayout(8, 512))
    made = generate_images(big, torch.tensor([0, 2]), tok, 1, Sampler(dtype="float32"), seed=0)
    assert made.tokens.shape == (2, 64, 1) and made.images.shape == (2, 3, 32, 32)
    assert made.images.dtype == torch.float32 and made.images.device.type == "cpu"
    bits = CheckpointMeta(kind="ar", config=big.config.to_dict(), layout=TokenLayout.binary(8, 9, 1))
    with pytest.raises(ValueError, match=r"\(9-bit codes\) do not fit this tokenizer's codes \(indices of a 512"):
        images.decode_tokens(made.tokens, tok, bits.layout)


def test_grouped_acceptance_groups_codes_by_the_tokenizers_code_space(tiny_tokenizer, tiny_generator):
    from imagelm.checkpoint import CheckpointMeta
    from imagelm.vocab import TokenLayout
    gen = imagelm.load(tiny_generator)
    tok = imagelm.linked_tokenizer(gen.meta)
    groups = images.acceptance_groups(gen, 4)
    V = gen.config.vocab_size
    assert groups.shape == (V, 4) and torch.equal(groups[:, 0], torch.arange(V))
    codebook = tok.quantize.codebook().detach()
    near = torch.cdist(codebook[:1], codebook)[0]
    assert near[groups[0, 1:]].max() <= near[torch.arange(1, V)].sort().values[2] + 1e-6   # its 3 nearest
    # Binary sub-tokens: neighbours by their bits (one bit apart first).
    m = build_generator(gpt_config("tiny", vocab_size=8, grid_size=2, num_classes=3)).eval()
    m.meta = CheckpointMeta(kind="ar", config=m.config.to_dict(), layout=TokenLayout.binary(2, 3, 1))
    assert set(images.acceptance_groups(m, 4)[0].tolist()) == {0, 1, 2, 4}
    tokens = sample_tokens(gen, torch.tensor([0, 1]), 1, Sampler(SamplingOptions(cfg_scale=2.0), decode="jacobi",
                                                                  groups=4, dtype="float32"), seed=0)
    assert tokens.shape == (2, gen.config.seq_len, 1)
    with pytest.raises(ValueError, match="acceptance rule of --decode jacobi"):
        Sampler(groups=4)
    with pytest.raises(ValueError, match="needs the generator's tokenizer"):
        images.acceptance_groups(_model(), 4)


def test_jacobi_drafts_from_a_codes_directory_are_checked_against_the_generator(tiny_codes, tiny_generator,
                                                                                 tmp_path):
    gen = imagelm.load(tiny_generator)
    store = images.draft_store(gen, tiny_codes, min_match=2)
    assert store.tokens.shape[1:] == (gen.config.seq_len, 1) and store.min_match == 2
    s = Sampler(SamplingOptions(cfg_scale=2.0), decode="jacobi", draft_codes=str(tiny_codes), dtype="float32")
    tokens = sample_tokens(gen, torch.tensor([0, 1]), 2, s, seed=0)
    assert tokens.shape == (4, gen.config.seq_len, 1)
    lines = []
    assert torch.equal(tokens, sample_tokens(gen, torch.tensor([0, 1]), 2, s, seed=0, say=lines.append))  # by seed
    L = gen.config.seq_len
    (line,) = lines                                       # one report of the passes it took
    mean = float(line.split(": ")[1].split(" passes")[0])
    assert line.startswith("jacobi decoding:") and 1 <= mean <= L - 1 and f"{L - 1} tokens" in line
    with pytest.raises(ValueError, match="is not a codes directory"):
        images.draft_store(gen, tmp_path)
    other = build_generator(gpt_config("tiny", vocab_size=512, grid_size=8, num_classes=3)).eval()
    with pytest.raises(ValueError, match="are not this generator's tokens"):
        images.draft_store(other, tiny_codes)
    with pytest.raises(ValueError, match="gives Jacobi decoding its drafts"):
        Sampler(draft_codes=str(tiny_codes))
    with pytest.raises(ValueError, match="--draft-match must be 1..16"):
        Sampler(decode="jacobi", draft_match=0)
