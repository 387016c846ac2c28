"""--freeze PARTS (imagelm/train/freeze.py): which parameters each part names, and the refusals."""
import pytest

from imagelm.models import build_generator, gpt_config
from imagelm.models.lora import LoRAConfig, apply_lora
from imagelm.train.freeze import freeze_parts, trainable_summary

CONFIG = gpt_config("tiny", n_layer=3, grid_size=4, vocab_size=32, num_classes=5)


def _frozen(spec, kind="ar"):
    model = build_generator(CONFIG, kind)
    names = set(freeze_parts(model, spec))
    assert names == {n for n, p in model.named_parameters() if not p.requires_grad}
    return names, model


def test_parts_name_what_they_say():
    names, _ = _frozen("embeddings")
    assert names == {"tok_embeddings.table.weight"}
    names, _ = _frozen("embeddings", kind="mlm")
    assert names == {"tok_embeddings.table.weight", "mask_embedding"}
    names, _ = _frozen("blocks:2")
    assert names and all(n.startswith(("trunk.layers.0.", "trunk.layers.1.")) for n in names)
    assert "trunk.layers.1.feed_forward.w2.weight" in names
    names, model = _frozen("all-but-heads")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"output.heads.0.weight"}
    total = sum(p.numel() for p in model.parameters())
    assert trainable_summary(model) == f"{32 * 128:,} of {total:,} parameters train ({100 * 32 * 128 / total:.1f}%)"
    names, _ = _frozen("cond, norm")
    assert names == {"cond_embedder.embedding_table.weight", "trunk.norm.weight"}


def test_adapters_always_train():
    model = build_generator(CONFIG)
    apply_lora(model, LoRAConfig(rank=2))
    freeze_parts(model, "trunk")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "trunk.layers.0.attention.wqkv.lora_a" in trainable
    assert not any(n.startswith("trunk.") and "lora_" not in n for n in trainable)


def test_refusals():
    model = build_generator(CONFIG)
    with pytest.raises(ValueError, match="unknown part 'embedding' for --freeze"):
        freeze_parts(model, "embedding")
    with pytest.raises(ValueError, match="blocks:5, but the model has 3 blocks"):
        freeze_parts(model, "blocks:5")
    with pytest.raises(ValueError, match="leaves nothing to train"):
        freeze_parts(model, "all-but-heads,heads")
    assert freeze_parts(model, None) == [] and all(p.requires_grad for p in model.parameters())
