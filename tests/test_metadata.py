"""CheckpointMeta: one typed record, written and read in one place, checked field by field; the
config.json of older imagelm versions (an untyped dict) still loads."""
import json
import shutil

import pytest
import torch

from imagelm import checkpoint
from imagelm.checkpoint import CheckpointError, CheckpointMeta, Provenance, TokenizerLink
from imagelm.models import load_generator
from imagelm.tokenizers import load_tokenizer
from imagelm.vocab import TokenLayout


def test_round_trip_keeps_every_field_and_writes_the_link_relative(tmp_path):
    tok_dir = tmp_path / "vq" / "checkpoints" / "step-0000001"
    tok_dir.mkdir(parents=True)
    meta = CheckpointMeta(kind="ar", config={"dim": 8}, layout=TokenLayout.binary(4, 12, 2),
                          tokenizer=TokenizerLink(str(tok_dir), "ab" * 32), class_names=("a", "b"),
                          provenance=Provenance("elm", "/models/L-2-6.pth", "elm-gpt"), preset="tiny",
                          extra={"note": [1, 2]})
    final = checkpoint.save(tmp_path / "gpt", 7, meta, {"w": torch.zeros(1)})
    raw = json.loads((final / "config.json").read_text())
    assert raw["format"] == 2 and raw["tokenizer"]["path"] == "../../../vq/checkpoints/step-0000001"
    back = checkpoint.read_meta(tmp_path / "gpt")
    assert back == meta.replace(step=7) and back.path == final
    assert back.provenance.source == "elm" and back.provenance.imported and back.layout.bits_per_token == 6
    assert back.get("class_names") == ["a", "b"] and back["note"] == [1, 2]     # the old dict view


def test_a_wrong_field_is_named_in_one_line(tmp_path):
    final = checkpoint.save(tmp_path / "run", 1, CheckpointMeta(kind="vq", config={}), {"w": torch.zeros(1)})
    cases = [({"layout": {"grid_size": 4, "vocab_size": 512, "num_subtokens": 1, "bits": None, "x": 1}},
              "field 'layout.x' is unknown"),
             ({"class_names": "circle"}, "field 'class_names' must be a list"),
             ({"provenance": {"source": "dall-e"}}, "field 'provenance.source' is 'dall-e'"),
             ({"tokenizer": {"sha256": "00"}}, "field 'tokenizer.path' is missing"),
             ({"format": 9}, "field 'format' is 9")]
    good = json.loads((final / "config.json").read_text())
    for change, message in cases:
        (final / "config.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(CheckpointError, match=message) as e:
            checkpoint.read_meta(final)
        assert len(str(e.value).splitlines()) == 1 and str(final / "config.json") in str(e.value)


def test_loading_checks_the_config_and_the_layout(tiny_generator, tmp_path):
    run = tmp_path / "gpt"
    shutil.copytree(tiny_generator, run)
    ckpt = checkpoint.resolve(run)
    good = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**good, "config": {**good["config"], "wings": 2}}))
    with pytest.raises(CheckpointError, match="field 'config.wings' is not a GPTConfig field"):
        load_generator(run)
    (ckpt / "config.json").write_text(json.dumps({**good, "layout": {**good["layout"], "vocab_size": 7}}))
    with pytest.raises(CheckpointError, match="field 'layout.vocab_size' is 7 but 'config.vocab_size' is 512"):
        load_generator(run)


def test_format_1_checkpoints_still_load(tiny_tokenizer, tiny_generator, tmp_path):
    """A config.json as imagelm wrote it before CheckpointMeta: an untyped dict with an absolute
    tokenizer path, `imported_from` for imports, the rest at the top level."""
    run = tmp_path / "old"
    shutil.copytree(tiny_generator, run)
    ckpt = checkpoint.resolve(run)
    new = json.loads((ckpt / "config.json").read_text())
    tok = str(checkpoint.resolve(tiny_tokenizer))
    old = {"kind": "ar", "config": new["config"], "preset": "tiny",
           "tokenizer": {"path": tok, "kind": "vq", "preset": "vq-tiny", "config": {}},
           "layout": new["layout"], "class_names": new["class_names"], "codes": "/somewhere/codes",
           "text_encoder": None, "train_args": {"steps": 4}, "step": 4, "format": 1}
    (ckpt / "config.json").write_text(json.dumps(old))
    gen = load_generator(run)
    assert gen.meta.tokenizer.path == tok and gen.meta.tokenizer.sha256 is None
    assert gen.meta.extra["train_args"] == {"steps": 4} and gen.meta.provenance.source == "imagelm"
    import imagelm
    assert imagelm.linked_tokenizer(gen.meta).meta.path == checkpoint.resolve(tiny_tokenizer)

    # An old LlamaGen import: no layout saved (one VQ index a position, read off the config).
    imported = {**old, "layout": None, "tokenizer": None,
                "imported_from": {"format": "llamagen-gpt", "path": "/releases/c2i_B_256.pt"}}
    (ckpt / "config.json").write_text(json.dumps(imported))
    meta = checkpoint.read_meta(run)
    assert meta.provenance == Provenance("llamagen", "/releases/c2i_B_256.pt", "llamagen-gpt")
    assert meta.layout == TokenLayout(new["config"]["grid_size"], new["config"]["vocab_size"])


def test_weights_hash_is_about_content_not_files(tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    state = tok.state_dict()
    h = checkpoint.weights_sha256(state)
    assert h == checkpoint.weights_sha256(dict(reversed(list(state.items()))))     # order-free
    assert h == checkpoint.weights_sha256(checkpoint.load_weights(tiny_tokenizer))  # = the file's tensors
    changed = {**state}
    key = next(iter(changed))
    changed[key] = changed[key].clone()
    changed[key].view(-1)[0] += 1
    assert checkpoint.weights_sha256(changed) != h


def test_one_loader_builds_on_the_meta_device_and_names_mismatches(tiny_tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file
    run = tmp_path / "vq"
    shutil.copytree(tiny_tokenizer, run)
    ckpt = checkpoint.resolve(run)
    tok = load_tokenizer(run)
    assert all(p.device.type == "cpu" for p in tok.parameters()) and not tok.training
    for name in ("model.safetensors", "ema.safetensors"):
        state = load_file(ckpt / name)
        state.pop(next(iter(state)))
        save_file(state, ckpt / name)
    with pytest.raises(CheckpointError, match=r"does not match the model its config describes: missing 1 keys"):
        load_tokenizer(run)
