"""LoRA adapters (imagelm/models/lora.py): exact at step 0, exact-enough after merging, sampled either way."""
import pytest
import torch

from imagelm import checkpoint
from imagelm.models import build_generator, gpt_config, load_generator
from imagelm.models.lora import LoRAConfig, LoRALinear, apply_lora, is_lora, merge_lora
from imagelm.sampling.autoregressive import SamplingOptions, generate
from imagelm.sampling.engine import Engine

CONFIG = gpt_config("tiny", n_layer=2, grid_size=4, vocab_size=32, num_classes=5)


def _model(kind="ar"):
    torch.manual_seed(0)
    model = build_generator(CONFIG, kind).eval()
    # Heads start at zero (uniform logits): give them weights so the comparisons below mean something.
    torch.nn.init.normal_(model.output.heads[0].weight, std=0.05)
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 32, (3, 16), generator=g), torch.tensor([0, 4, 5])


@pytest.mark.parametrize("kind", ["ar", "mlm"])
def test_zero_b_gives_the_base_logits_exactly(kind):
    model = _model(kind)
    tokens, cond = _batch()
    mask = torch.rand(3, 16, generator=torch.Generator().manual_seed(2)) < 0.5
    args = (tokens, cond) if kind == "ar" else (tokens, cond, mask)
    with torch.no_grad():
        before = model(*args)
    names = apply_lora(model, LoRAConfig(rank=4), torch.Generator().manual_seed(0))
    assert len(names) == 5 * CONFIG.n_layer and is_lora(model)
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    with torch.no_grad():
        assert torch.equal(model(*args), before)
    # The base weight keeps its name under `base`; only the adapters train among the wrapped linears.
    keys = model.state_dict().keys()
    assert "trunk.layers.0.attention.wqkv.base.weight" in keys and "trunk.layers.1.feed_forward.w2.lora_b" in keys
    assert not model.trunk.layers[0].attention.wqkv.base.weight.requires_grad
    assert model.trunk.layers[0].attention.wqkv.lora_a.requires_grad


def test_merge_gives_the_unmerged_logits_and_plain_keys():
    model = _model()
    plain_keys = set(model.state_dict())
    tokens, cond = _batch()
    with torch.no_grad():
        base = model(tokens, cond)
    apply_lora(model, LoRAConfig(rank=8, alpha=16), torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(std=0.05, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        unmerged = model(tokens, cond)
        base_only = model.trunk.layers[0].attention.wqkv.base.weight.clone()
        merge_lora(model)
        merged = model(tokens, cond)
    assert not is_lora(model) and set(model.state_dict()) == plain_keys
    assert not torch.equal(model.trunk.layers[0].attention.wqkv.weight, base_only)     # the adapter is in W now
    assert torch.allclose(merged, unmerged, atol=1e-4, rtol=0)
    assert (merged - base).abs().max() > 1e-2                                          # and it changes the model


def test_unmerged_model_samples_like_the_merged_one():
    """Sampling needs no merge (the wrappers are called where the Linears were), and gives the same tokens."""
    model = _model()
    apply_lora(model, LoRAConfig(rank=4), torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(std=0.05, generator=torch.Generator().manual_seed(4))
    cond = torch.tensor([1, 2])
    options = SamplingOptions(cfg_scale=2.0, top_k=1)
    unmerged = generate(model, cond, options)
    engine = Engine(model, rows=4, dtype="float32").generate(cond, options, seed=0)
    merged = generate(merge_lora(model), cond, options)
    assert torch.equal(unmerged, merged) and torch.equal(engine, merged)


def test_lora_checkpoint_loads_merged(tmp_path):
    model = _model()
    lora = LoRAConfig(rank=2)
    apply_lora(model, lora, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.trunk.layers[1].feed_forward.w1.lora_b.fill_(0.01)
    tokens, cond = _batch()
    with torch.no_grad():
        expected = model(tokens, cond)
    meta = checkpoint.CheckpointMeta(kind="ar", config=CONFIG.to_dict(), extra={"lora": lora.to_dict()})
    checkpoint.save(tmp_path, 3, meta, model.state_dict())
    loaded = load_generator(tmp_path)
    assert not is_lora(loaded)
    with torch.no_grad():
        assert torch.allclose(loaded(tokens, cond), expected, atol=1e-4, rtol=0)


def test_refusals():
    model = _model()
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="unknown LoRA target 'attention.q'"):
        LoRAConfig(rank=2, targets=("attention.q",))
    apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(ValueError, match="has LoRA adapters already"):
        apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(ValueError, match="no linear layer named"):
        apply_lora(torch.nn.Sequential(torch.nn.ReLU()), LoRAConfig(rank=2))
