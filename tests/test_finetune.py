"""`imagelm train --init / --freeze / --lora-rank` and `imagelm export merge-lora`, end to end on tiny runs."""
import json

import pytest
import torch

import imagelm
from imagelm import checkpoint
from imagelm.cli import main
from imagelm.compat import convert
from imagelm.data.codes import CodesDataset, extract_codes
from imagelm.data.sampler import code_batch_loader
from imagelm.models import GPTConfig, build_generator, load_generator
from imagelm.models.lora import LoRAConfig, apply_lora
from imagelm.tokenizers import load_tokenizer
from imagelm.train.generator import GeneratorTrainArgs, token_loss, train_generator, train_layout
from test_compat_llamagen import CLASSES, llamagen_gpt_state, llamagen_vq_state

RUN = dict(batch_size=8, log_every=1, preview_every=0, precision="fp32", device="cpu", progress=False, warmup=0)


def _train(codes, out, steps=3, **kw):
    return train_generator(GeneratorTrainArgs(codes=str(codes), out=str(out), steps=steps, ckpt_every=steps,
                                              **{**RUN, **kw}))


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(path, ema=False):
    return checkpoint.load_weights(checkpoint.resolve(path), prefer_ema=ema)


@pytest.fixture(scope="module")
def imported_llamagen(tmp_path_factory):
    """A LlamaGen-layout VQ (64 codes) and c2i GPT (10 classes, 4x4 tokens) converted, and 8x8-px shapes
    encoded by that VQ (8 classes: the class table is resized 10 -> 8 on --init)."""
    tmp = tmp_path_factory.mktemp("llamagen")
    torch.save({"model": llamagen_vq_state(codes=64)}, tmp / "vq.pt")
    torch.save({"model": llamagen_gpt_state()}, tmp / "c2i_tiny_64.pt")
    vq = convert("llamagen-vq", tmp / "vq.pt", tmp / "vq", image_size=8)
    gpt = convert("llamagen-gpt", tmp / "c2i_tiny_64.pt", tmp / "gpt", tokenizer=vq)
    extract_codes(load_tokenizer(vq), "shapes", tmp / "codes", image_size=8, length=48, batch_size=48,
                  progress=False)
    return gpt, tmp / "codes"


def test_init_from_imported_llamagen_first_loss_equals_the_imported_models(imported_llamagen, tmp_path, capsys):
    gpt, codes = imported_llamagen
    out = tmp_path / "ft"
    _train(codes, out, init=str(gpt), dropout=0.0, class_dropout=0.0, lr=1e-3)
    table = capsys.readouterr().out
    assert "resized  cond_embedder.embedding_table.weight" in table and "10 -> 8 classes" in table
    assert "kept     " in table and "imported from llamagen-gpt" in table
    # The imported model's loss on the run's first batch (its trunk keeps LlamaGen's zero prefix RoPE).
    imported = load_generator(gpt)
    data = CodesDataset(codes)
    tokens, labels, _ = next(iter(code_batch_loader(data, train_layout(GeneratorTrainArgs(str(codes), ""), data),
                                                    8, 0)))
    with torch.no_grad():
        expected = token_loss(imported(tokens, labels), tokens).item()
    losses = _losses(out)
    assert losses[0] == pytest.approx(expected, abs=1e-5)
    meta = checkpoint.read_meta(out)
    assert meta["config"]["prefix_rope"] == "zero" and meta["config"]["num_classes"] == 8
    assert meta["init"]["path"] == str(checkpoint.resolve(gpt))
    trained = _weights(out)
    assert len(losses) == 3 and not torch.equal(trained["trunk.layers.0.attention.wqkv.weight"],
                                                imported.state_dict()["trunk.layers.0.attention.wqkv.weight"])


def test_frozen_parts_do_not_move_and_kept_class_rows_are_exact(tiny_generator, tiny_codes, tmp_path):
    source = _weights(tiny_generator, ema=True)          # --init takes the EMA weights
    out = tmp_path / "frozen"
    _train(tiny_codes, out, init=str(tiny_generator), freeze="cond,blocks:1", lr=1e-2)
    after = _weights(out)
    table = "cond_embedder.embedding_table.weight"
    assert torch.equal(after[table], source[table])
    for k in source:
        if k.startswith("trunk.layers.0."):
            assert torch.equal(after[k], source[k]), k
    assert not torch.equal(after["trunk.layers.1.attention.wqkv.weight"], source["trunk.layers.1.attention.wqkv.weight"])


def test_new_classes_keep_old_rows_bit_exact(tiny_generator, tiny_codes, tmp_path):
    """A source with 10 classes onto codes with 8 (+ --class-map 9:7), the table frozen to read it back."""
    src = tmp_path / "ten"
    state = _weights(tiny_generator, ema=True)
    meta = checkpoint.read_meta(tiny_generator)
    config = GPTConfig(**{**meta["config"], "num_classes": 10})
    model = build_generator(config)
    old = torch.randn(11, config.dim)
    model.load_state_dict({**state, "cond_embedder.embedding_table.weight": old})
    checkpoint.save(src, 1, {**{k: v for k, v in meta.items() if k != "path"}, "config": config.to_dict(),
                             "class_names": [str(i) for i in range(10)]}, model.state_dict())
    out = tmp_path / "eight"
    _train(tiny_codes, out, init=str(src), class_map="9:7", freeze="cond")
    table = _weights(out)["cond_embedder.embedding_table.weight"]
    assert table.shape == (9, config.dim)
    assert torch.equal(table[:7], old[:7]) and torch.equal(table[7], old[9]) and torch.equal(table[8], old[10])


def test_lora_trains_saves_beside_base_and_merges(tiny_generator, tiny_codes, tmp_path):
    out = tmp_path / "lora"
    _train(tiny_codes, out, init=str(tiny_generator), lora_rank=4, lr=1e-2, freeze="embeddings,heads")
    source, state = _weights(tiny_generator, ema=True), _weights(out)
    meta = checkpoint.read_meta(out)
    assert meta["lora"]["rank"] == 4
    # The base weights are saved as they came in, the adapters beside them.
    assert torch.equal(state["trunk.layers.0.attention.wqkv.base.weight"], source["trunk.layers.0.attention.wqkv.weight"])
    assert torch.equal(state["trunk.norm.weight"], source["trunk.norm.weight"])
    assert state["trunk.layers.0.feed_forward.w2.lora_b"].abs().max() > 0
    # Unmerged (the run's own modules) vs merged on load vs exported by merge-lora: the same logits.
    unmerged = build_generator(GPTConfig(**meta["config"]))
    apply_lora(unmerged, LoRAConfig(**meta["lora"]))
    unmerged.load_state_dict(_weights(out, ema=True))
    loaded = imagelm.load(out)
    assert main(["export", "merge-lora", str(out), str(tmp_path / "merged")]) == 0
    merged = imagelm.load(tmp_path / "merged")
    assert "lora" not in merged.meta and merged.meta["merged_lora"]["rank"] == 4
    tokens, cond = torch.randint(0, loaded.config.vocab_size, (2, loaded.config.seq_len)), torch.tensor([0, 3])
    with torch.no_grad():
        ref = unmerged.eval()(tokens, cond)
        assert torch.allclose(loaded(tokens, cond), ref, atol=1e-4, rtol=0)
        assert torch.allclose(merged(tokens, cond), ref, atol=1e-4, rtol=0)
    assert main(["export", "merge-lora", str(tiny_generator), str(tmp_path / "m2")]) == 2


def test_larger_grid_from_an_8x8_checkpoint_trains(tiny_tokenizer, tmp_path):
    tok = load_tokenizer(tiny_tokenizer)            # 4x downsampling: 32 px -> 8x8, 48 px -> 12x12
    extract_codes(tok, "shapes", tmp_path / "c8", image_size=32, length=16, batch_size=16, progress=False)
    extract_codes(tok, "shapes", tmp_path / "c12", image_size=48, length=16, batch_size=16, progress=False)
    _train(tmp_path / "c8", tmp_path / "g8", steps=2)
    out = tmp_path / "g12"
    _train(tmp_path / "c12", out, steps=3, init=str(tmp_path / "g8"), lr=3e-3)
    gen = imagelm.load(out)
    assert gen.config.grid_size == 12 and gen.trunk.rope.shape[0] == 1 + 144
    assert all(loss == loss for loss in _losses(out)) and _losses(out)[-1] < _losses(out)[0]
    assert imagelm.sample(gen, [1], top_k=1).shape == (1, 144, 1)


def test_cli_refusals_are_one_line(tiny_generator, tiny_tokenizer, tiny_codes, tiny_bae_codes, tmp_path, capsys):
    def err(*argv):
        assert main(["train", "--codes", str(tiny_codes), "--out", str(tmp_path / "x"), "--steps", "1", *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "a generator for --init" in err("--init", str(tiny_tokenizer))
    assert "--class-map says how to carry class rows over from --init" in err("--class-map", "1:2")
    assert "unknown part 'trunks' for --freeze" in err("--init", str(tiny_generator), "--freeze", "trunks")
    assert "--preset small (dim 192" in err("--init", str(tiny_generator), "--preset", "small")
    assert "no class 'dragon'" in err("--init", str(tiny_generator), "--class-map", "dragon:1")
    line = main(["train", "--codes", str(tiny_bae_codes), "--out", str(tmp_path / "y"), "--steps", "1",
                 "--init", str(tiny_generator)])
    assert line == 2
    msg = capsys.readouterr().err.strip()
    assert "tok_embeddings" in msg and "another vocabulary" in msg and len(msg.splitlines()) == 1


@pytest.mark.parametrize("fmt", ["llamagen-vq", "elm-bae"])
def test_train_tokenizer_init_from_converted_weights(fmt, tmp_path, capsys):
    """A converted LlamaGen VQ or ELM BAE adapted to other data: every weight carried over, then trained."""
    from test_compat_elm import IMG, elm_bae_file_state
    if fmt == "llamagen-vq":
        torch.save({"model": llamagen_vq_state(codes=64)}, tmp_path / "src.pt")
        size = 8
    else:
        torch.save(elm_bae_file_state()[0], tmp_path / "src.pt")
        size = IMG
    ours = convert(fmt, tmp_path / "src.pt", tmp_path / "conv", image_size=size)
    source = checkpoint.load_weights(ours)
    argv = ["train-tokenizer", "--init", str(ours), "--data", "shapes", "--data-length", "32", "--image-size",
            str(size), "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "run"), "--precision", "fp32",
            "--device", "cpu", "--no-perceptual", "--ckpt-every", "2", "--preview-every", "2", "--num-workers", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"kept     {len(source)} tensors" in printed
    trained = _weights(tmp_path / "run")
    assert set(trained) == set(source) and any(not torch.equal(trained[k], source[k]) for k in source)
    meta = checkpoint.read_meta(tmp_path / "run")
    assert meta["kind"] == ("vq" if fmt == "llamagen-vq" else "bae-elm") and meta["init"]["path"] == str(ours)
    assert main(["train-tokenizer", "--preset", "bae-tiny", "--init", str(ours), "--out", str(tmp_path / "r2")]) == 2
    assert "leave --preset out" in capsys.readouterr().err


def test_lora_init_run_resumes_exactly(tiny_generator, tiny_codes, tmp_path):
    """A --init --lora-rank run stopped at step 2 and resumed ends with the weights of one run straight to 4."""
    opts = dict(init=str(tiny_generator), lora_rank=2, freeze="embeddings", lr=1e-2, steps=4, lr_schedule="constant")
    train_generator(GeneratorTrainArgs(codes=str(tiny_codes), out=str(tmp_path / "straight"), ckpt_every=4,
                                       **{**RUN, **opts}))
    half = GeneratorTrainArgs(codes=str(tiny_codes), out=str(tmp_path / "halves"), ckpt_every=2,
                              **{**RUN, **opts, "steps": 2})
    train_generator(half)
    train_generator(GeneratorTrainArgs(**{**half.__dict__, "steps": 4, "resume": True}))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "halves")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_imported_elm_keeps_its_subtoken_split(tmp_path):
    """An ELM 2-4 AR model (8-bit codes as 2 sub-tokens) fine-tuned on its BAE's codes: the split follows
    the source (our default would be 1-8), and the first loss is the imported model's."""
    from test_compat_elm import IMG, elm_ar_state, elm_bae_file_state
    torch.save(elm_bae_file_state()[0], tmp_path / "bae.th")
    torch.save(elm_ar_state(n=2, m=4), tmp_path / "L-2-4.pth")
    bae = convert("elm-bae", tmp_path / "bae.th", tmp_path / "bae", image_size=IMG)
    gpt = convert("elm-gpt", tmp_path / "L-2-4.pth", tmp_path / "gpt", image_size=64, tokenizer=bae)
    extract_codes(load_tokenizer(bae), "shapes", tmp_path / "codes", image_size=IMG, length=16, batch_size=16,
                  progress=False)
    out = tmp_path / "ft"
    _train(tmp_path / "codes", out, steps=1, init=str(gpt), dropout=0.0, class_dropout=0.0)
    assert checkpoint.read_meta(out)["layout"]["num_subtokens"] == 2
    data = CodesDataset(tmp_path / "codes")
    layout = data.layout.split(2)
    tokens, labels, _ = next(iter(code_batch_loader(data, layout, 8, 0)))
    with torch.no_grad():
        expected = token_loss(load_generator(gpt)(tokens, labels), tokens).item()
    assert _losses(out)[0] == pytest.approx(expected, abs=1e-5)
