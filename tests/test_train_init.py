"""--init's weight mapping (imagelm/train/init.py): kept / resized / new / dropped, and the refusals."""
import dataclasses

import pytest
import torch

from imagelm.models import build_generator, gpt_config
from imagelm.train.init import (CLASS_TABLE, InitError, format_table, map_state, parse_class_map,
                                resize_class_table, rope_row)

SRC = gpt_config("tiny", n_layer=2, grid_size=4, vocab_size=32, num_classes=6)


def _state(config, kind="ar", seed=0):
    torch.manual_seed(seed)
    return build_generator(config, kind).state_dict()


def _statuses(rows):
    return {r.key: r.status for r in rows if r.status != "kept"}


def test_same_shape_keeps_everything_bit_exact():
    source = _state(SRC, seed=1)
    out, rows = map_state(source, _state(SRC, seed=2), "src")
    assert all(r.status == "kept" for r in rows) and all(torch.equal(out[k], source[k]) for k in source)


def test_class_table_resize_keeps_rows_and_null_bit_exact():
    old = torch.randn(7, 16)                                     # 6 classes + null
    new = resize_class_table(old, 8)
    assert new.shape == (9, 16)
    assert torch.equal(new[:6], old[:6]) and torch.equal(new[8], old[6])
    assert torch.allclose(new[6], old[:6].mean(0)) and torch.allclose(new[7], old[:6].mean(0))
    mapped = resize_class_table(old, 8, {7: 2, 0: 5})          # new 7 starts as old 2; new 0 as old 5
    assert torch.equal(mapped[7], old[2]) and torch.equal(mapped[0], old[5]) and torch.equal(mapped[1], old[1])
    shrunk = resize_class_table(old, 3)
    assert torch.equal(shrunk[:3], old[:3]) and torch.equal(shrunk[3], old[6])


def test_more_classes_resizes_only_the_class_table():
    source = _state(SRC, seed=1)
    target_config = dataclasses.replace(SRC, num_classes=8)
    out, rows = map_state(source, _state(target_config, seed=2), "src")
    assert _statuses(rows) == {CLASS_TABLE: "resized"}
    assert torch.equal(out[CLASS_TABLE][:6], source[CLASS_TABLE][:6])
    assert torch.equal(out[CLASS_TABLE][8], source[CLASS_TABLE][6])
    model = build_generator(target_config)
    model.load_state_dict(out)                                   # fits exactly
    assert "resized  cond_embedder.embedding_table.weight" in format_table(rows, "src")


def test_class_map_by_id_and_name():
    names6, names8 = list("abcdef"), list("abcdefgh")
    assert parse_class_map("2:7, a:g", names6, names8, 6, 8) == {7: 2, 6: 0}
    with pytest.raises(InitError, match="no class 'z' in the --init checkpoint"):
        parse_class_map("z:1", names6, names8, 6, 8)
    with pytest.raises(InitError, match="class 9 is not in the new data"):
        parse_class_map("1:9", names6, names8, 6, 8)
    with pytest.raises(InitError, match="old:new pairs"):
        parse_class_map("1-2", names6, names8, 6, 8)


def test_new_grid_keeps_every_weight_and_rebuilds_rope():
    target_config = dataclasses.replace(SRC, grid_size=6)
    source = _state(SRC, seed=1)
    out, rows = map_state(source, _state(target_config), "src")
    assert _statuses(rows) == {}
    row = rope_row(SRC, target_config)
    assert row.status == "rebuilt" and row.source == (17, 16, 2) and row.target == (37, 16, 2)
    model = build_generator(target_config)
    model.load_state_dict(out)
    assert model(torch.randint(0, 32, (2, 36)), torch.tensor([0, 6])).shape == (2, 36, 32)


def test_new_caption_width_is_a_new_projection_only():
    t2i = gpt_config("tiny-t2i", n_layer=2, grid_size=4, vocab_size=32)
    wider = dataclasses.replace(t2i, caption_dim=512)
    source, fresh = _state(t2i, seed=1), _state(wider, seed=2)
    out, rows = map_state(source, fresh, "src")
    assert _statuses(rows) == {"cond_embedder.mlp.0.weight": "new", "cond_embedder.null_caption": "new"}
    assert torch.equal(out["cond_embedder.mlp.0.weight"], fresh["cond_embedder.mlp.0.weight"])
    assert torch.equal(out["cond_embedder.mlp.2.weight"], source["cond_embedder.mlp.2.weight"])
    longer = dataclasses.replace(t2i, cls_token_num=40)
    out, rows = map_state(source, _state(longer), "src")
    assert _statuses(rows) == {"cond_embedder.null_caption": "resized"}
    assert torch.equal(out["cond_embedder.null_caption"][:32], source["cond_embedder.null_caption"])


def test_ar_to_mlm_and_back():
    out, rows = map_state(_state(SRC), _state(SRC, "mlm"), "src")
    assert _statuses(rows) == {"mask_embedding": "new"}
    out, rows = map_state(_state(SRC, "mlm"), _state(SRC), "src")
    assert _statuses(rows) == {"mask_embedding": "dropped"}


def test_unresolvable_mismatch_names_the_key_in_one_line():
    source = _state(SRC)
    with pytest.raises(InitError) as e:
        map_state(source, _state(dataclasses.replace(SRC, vocab_size=64)), "runs/base")
    msg = str(e.value)
    assert "\n" not in msg and "tok_embeddings.table.weight is (32, 128) there but (64, 128) here" in msg
    assert "another vocabulary" in msg
    with pytest.raises(InitError, match="no weights for trunk.layers.2.attention_norm.weight .*another width, depth"):
        map_state(source, _state(dataclasses.replace(SRC, n_layer=3)), "runs/base")
    with pytest.raises(InitError, match="trunk.layers.1.attention_norm.weight .* has no place"):
        map_state(source, _state(dataclasses.replace(SRC, n_layer=1)), "runs/base")
