"""LlamaGen imports checked against a reference written here from LlamaGen's published behaviour.

Fixtures are tiny random weights saved in LlamaGen's key layout (gpt.py / vq_model.py). The reference
functions below recompute LlamaGen's forward plainly (no imagelm code): RMSNorm, fused wqkv, 2D RoPE
over adjacent channel pairs with all-zero rows at the prefix, explicit softmax attention, SwiGLU.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import imagelm
from imagelm.compat import CompatError, export_llamagen_gpt, load_llamagen_gpt, load_llamagen_vq
from imagelm.models.conditioning import TextCondition
from imagelm.sampling.autoregressive import SamplingOptions, generate

DIM, N_HEAD, N_LAYER, HIDDEN = 128, 4, 4, 512      # preset "tiny"'s trunk; LlamaGen rounds SwiGLU to 256
VOCAB, CLASSES, GRID, IMAGE = 64, 10, 4, 64         # 64 px / 16 = a 4x4 grid


def llamagen_gpt_state(text: bool = False, caption_dim: int = 24, seed: int = 0, dim: int = DIM,
                       n_layer: int = N_LAYER, hidden: int = HIDDEN, kv_dim: int | None = None) -> dict:
    """Random weights in LlamaGen's GPT key layout (c2i, or t2i with a 120-token null caption), of any
    width, depth, SwiGLU width and key/value width (kv_dim = kv heads x head size; default: dim)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1       # noqa: E731
    kv_dim = kv_dim or dim
    sd = {"tok_embeddings.weight": r(VOCAB, dim), "norm.weight": 1 + r(dim), "output.weight": r(VOCAB, dim)}
    if text:
        sd.update({"cls_embedding.cap_proj.fc1.weight": r(dim, caption_dim),
                   "cls_embedding.cap_proj.fc2.weight": r(dim, dim),
                   "cls_embedding.uncond_embedding": r(120, caption_dim) * 10})
    else:
        sd["cls_embedding.embedding_table.weight"] = r(CLASSES + 1, dim) * 10
    for i in range(n_layer):
        p = f"layers.{i}."
        sd.update({p + "attention.wqkv.weight": r(dim + 2 * kv_dim, dim), p + "attention.wo.weight": r(dim, dim),
                   p + "feed_forward.w1.weight": r(hidden, dim), p + "feed_forward.w2.weight": r(dim, hidden),
                   p + "feed_forward.w3.weight": r(hidden, dim),
                   p + "attention_norm.weight": 1 + r(dim), p + "ffn_norm.weight": 1 + r(dim)})
    return sd


# ------------------------------------------------------------------ the reference (LlamaGen, plainly)

def ref_rope(grid: int, head_dim: int, prefix: int) -> torch.Tensor:
    """[prefix + grid^2, head_dim/2, 2]: pair j of the first half turns with the row, of the second
    half with the column, at base^(-2j/(head_dim/2)); prefix rows all zero. Float32, as LlamaGen."""
    half = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    rows = torch.arange(grid).float()[:, None, None] * freqs          # [g, 1, q]
    cols = torch.arange(grid).float()[None, :, None] * freqs          # [1, g, q]
    ang = torch.cat([rows.expand(grid, grid, -1), cols.expand(grid, grid, -1)], -1).reshape(grid * grid, half)
    return torch.cat([torch.zeros(prefix, half, 2), torch.stack([ang.cos(), ang.sin()], -1)])


def ref_rotate(x, table):                 # x [B, T, H, hd]
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = table[None, :, None, :, 0], table[None, :, None, :, 1]
    return torch.stack([a * c - b * s, b * c + a * s], -1).flatten(-2)


def ref_rms(x, w):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w


def ref_trunk(sd, h, prefix: int, key_valid=None, causal: bool = True, n_head: int = N_HEAD, grid: int = GRID):
    """h [B, T, dim] (prefix + tokens) -> final-normed hidden [B, T, dim], causal attention (or full);
    key_valid [B, T] masks padded prefix keys (each position still sees itself, LlamaGen's eye fix).
    Width and depth come from the weights; kv heads from wqkv's rows (each shared by n_head / kv queries)."""
    B, T, dim = h.shape
    hd = dim // n_head
    kv = (sd["layers.0.attention.wqkv.weight"].shape[0] - dim) // (2 * hd)
    n_layer = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    table = ref_rope(grid, hd, prefix)[:T]
    allowed = (torch.ones(T, T).tril() if causal else torch.ones(T, T)).bool()[None].expand(B, T, T).clone()
    if key_valid is not None:
        allowed &= key_valid[:, None, :]
        allowed |= torch.eye(T, dtype=torch.bool)[None]
    for i in range(n_layer):
        p = f"layers.{i}."
        x = ref_rms(h, sd[p + "attention_norm.weight"])
        q, k, v = (x @ sd[p + "attention.wqkv.weight"].T).split([dim, kv * hd, kv * hd], -1)
        q = ref_rotate(q.view(B, T, n_head, hd), table).transpose(1, 2)
        k = ref_rotate(k.view(B, T, kv, hd), table).transpose(1, 2).repeat_interleave(n_head // kv, 1)
        v = v.view(B, T, kv, hd).transpose(1, 2).repeat_interleave(n_head // kv, 1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, dim)
        h = h + y @ sd[p + "attention.wo.weight"].T
        x = ref_rms(h, sd[p + "ffn_norm.weight"])
        ff = F.silu(x @ sd[p + "feed_forward.w1.weight"].T) * (x @ sd[p + "feed_forward.w3.weight"].T)
        h = h + ff @ sd[p + "feed_forward.w2.weight"].T
    return ref_rms(h, sd["norm.weight"])


def ref_prefix(sd, cond, prefix: int):
    if isinstance(cond, TextCondition):
        x = F.gelu(cond.features @ sd["cls_embedding.cap_proj.fc1.weight"].T, approximate="tanh")
        return (x @ sd["cls_embedding.cap_proj.fc2.weight"].T)[:, :prefix]
    return sd["cls_embedding.embedding_table.weight"][cond][:, None]


def ref_logits(sd, tokens, cond, prefix: int = 1, n_head: int = N_HEAD):
    """LlamaGen's teacher-forced logits: [cond prefix | tokens[:, :-1]] -> logits for every token [B, L, V]."""
    h = torch.cat([ref_prefix(sd, cond, prefix), sd["tok_embeddings.weight"][tokens[:, :-1]]], 1)
    valid = None
    if isinstance(cond, TextCondition):
        valid = torch.cat([cond.mask, torch.ones(len(tokens), tokens.shape[1] - 1, dtype=torch.bool)], 1)
    return ref_trunk(sd, h, prefix, valid, n_head=n_head)[:, prefix - 1:] @ sd["output.weight"].T


def ref_greedy(sd, cond, null, cfg: float, prefix: int = 1) -> torch.Tensor:
    """LlamaGen's generate() with top-k 1: each step mixes cond/null logits (uncond + s (cond - uncond))."""
    B, L = len(cond), GRID * GRID
    seq = torch.zeros(B, 0, dtype=torch.long)
    for _ in range(L):
        padded = torch.cat([seq, torch.zeros(B, 1, dtype=torch.long)], 1)
        logits = ref_logits(sd, padded, cond, prefix)[:, -1]
        if cfg != 1.0:
            u = ref_logits(sd, padded, null, prefix)[:, -1]
            logits = u + (logits - u) * cfg
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    return seq


# ----------------------------------------------------------------------------------------- tests

@pytest.fixture
def c2i_file(tmp_path):
    path = tmp_path / "c2i_tiny_64.pt"
    torch.save({"model": llamagen_gpt_state(), "steps": 7, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def test_c2i_logits_match_reference(c2i_file):
    sd = llamagen_gpt_state()
    model = load_llamagen_gpt(c2i_file)                      # preset and image size inferred
    assert model.config.prefix_rope == "zero" and model.config.grid_size == GRID and not model.training
    tokens = torch.randint(0, VOCAB, (3, GRID * GRID))
    cond = torch.tensor([0, 9, CLASSES])                     # the null class is the last row
    with torch.no_grad():
        ours = model(tokens, cond)
    ref = ref_logits(sd, tokens, cond)
    assert ours.shape == (3, GRID * GRID, VOCAB)
    assert (ours - ref).abs().max() < 1e-4


def test_zero_prefix_rope_matters(c2i_file):
    """The same weights with our identity prefix rotation give different logits: the mode is load-bearing."""
    import dataclasses

    from imagelm.models import ARGenerator
    model = load_llamagen_gpt(c2i_file)
    other = ARGenerator(dataclasses.replace(model.config, prefix_rope="identity")).eval()
    other.load_state_dict(model.state_dict())
    tokens, cond = torch.randint(0, VOCAB, (2, GRID * GRID)), torch.tensor([1, 2])
    with torch.no_grad():
        assert (other(tokens, cond) - model(tokens, cond)).abs().max() > 1e-3


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_greedy_sampling_matches_reference(c2i_file, cfg):
    sd = llamagen_gpt_state()
    model = load_llamagen_gpt(c2i_file, preset="tiny", image_size=IMAGE)
    cond = torch.tensor([3, 7])
    ours = generate(model, cond, SamplingOptions(cfg_scale=cfg, top_k=1))[..., 0]
    ref = ref_greedy(sd, cond, torch.full_like(cond, CLASSES), cfg)
    assert torch.equal(ours, ref)


def test_t2i_logits_match_reference(tmp_path):
    sd = llamagen_gpt_state(text=True)
    path = tmp_path / "t2i.pt"
    torch.save({"model": sd}, path)
    model = load_llamagen_gpt(path, preset="tiny-t2i", image_size=IMAGE)   # a 32-token caption prefix
    assert model.config.cond == "text" and model.config.cls_token_num == 32
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[1, :20] = False                                      # left padding, as LlamaGen's sampler
    cond = TextCondition(torch.randn(2, 32, 24) * mask[..., None], mask)
    tokens = torch.randint(0, VOCAB, (2, GRID * GRID))
    with torch.no_grad():
        ours = model(tokens, cond)
    assert (ours - ref_logits(sd, tokens, cond, prefix=32)).abs().max() < 1e-4
    # The null caption is LlamaGen's uncond_embedding cut to the prefix, under the caption's own mask
    # (LlamaGen's generate() masks both CFG halves with the same emb_masks).
    null = model.null_cond(cond)
    assert torch.equal(null.features[0], sd["cls_embedding.uncond_embedding"][:32])
    assert torch.equal(null.mask, mask)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_t2i_greedy_sampling_with_padded_captions_matches_reference(tmp_path, cfg):
    sd = llamagen_gpt_state(text=True)
    torch.save({"model": sd}, tmp_path / "t2i.pt")
    model = load_llamagen_gpt(tmp_path / "t2i.pt", preset="tiny-t2i", image_size=IMAGE)
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[0, :25] = False
    cond = TextCondition(torch.randn(2, 32, 24) * mask[..., None], mask)
    null = TextCondition(sd["cls_embedding.uncond_embedding"][:32].expand(2, -1, -1), mask)
    ours = generate(model, cond, SamplingOptions(cfg_scale=cfg, top_k=1))[..., 0]
    assert torch.equal(ours, ref_greedy(sd, cond, null, cfg, prefix=32))


def test_convert_t2i_records_the_t5_encoder(tmp_path, c2i_file):
    from imagelm.compat import convert
    torch.save({"model": llamagen_gpt_state(text=True)}, tmp_path / "t2i_tiny_64.pt")
    out = convert("llamagen-gpt", tmp_path / "t2i_tiny_64.pt", tmp_path / "ours", preset="tiny-t2i",
                  text_encoder_path=tmp_path / "flan-t5-xl")
    spec = imagelm.load(out).meta["text_encoder"]
    assert spec == {"name": "t5", "path": str((tmp_path / "flan-t5-xl").resolve()), "max_len": 32, "dim": 24}
    with pytest.raises(CompatError, match="text-conditional"):
        convert("llamagen-gpt", c2i_file, tmp_path / "c2i", text_encoder_path=tmp_path / "flan-t5-xl")


def test_non_preset_size_is_inferred_and_matches_reference(tmp_path):
    """Width 128 with 2 layers is no preset: depth, heads (head size 64) and SwiGLU width come from the file."""
    sd = llamagen_gpt_state(n_layer=2)
    torch.save({"model": sd}, tmp_path / "c2i_custom_64.pt")
    model = load_llamagen_gpt(tmp_path / "c2i_custom_64.pt")
    c = model.config
    assert (c.dim, c.n_layer, c.n_head, c.kv_heads, c.ffn_hidden) == (128, 2, 2, 2, HIDDEN)
    assert c.ffn_hidden_dim is None and model.meta["preset"] is None     # LlamaGen's rounding reproduces 512
    tokens, cond = torch.randint(0, VOCAB, (2, GRID * GRID)), torch.tensor([3, CLASSES])
    with torch.no_grad():
        ours = model(tokens, cond)
    assert (ours - ref_logits(sd, tokens, cond, n_head=2)).abs().max() < 1e-4
    # --preset is still accepted, as a check: this file is not "tiny" (4 layers).
    with pytest.raises(CompatError, match="does not fit preset tiny: the file has 2 layers, the preset 4"):
        load_llamagen_gpt(tmp_path / "c2i_custom_64.pt", preset="tiny")


def test_odd_width_needs_n_head_and_gets_exact_ffn_and_kv_heads(tmp_path):
    """Width 96 (not a multiple of 64), a SwiGLU width no rounding rule gives, and one key/value head."""
    sd = llamagen_gpt_state(dim=96, n_layer=3, hidden=200, kv_dim=32)
    torch.save({"model": sd}, tmp_path / "c2i_odd_64.pt")
    with pytest.raises(CompatError, match="width 96 is not a multiple of the usual head size 64.*--n-head"):
        load_llamagen_gpt(tmp_path / "c2i_odd_64.pt")
    with pytest.raises(CompatError, match="wqkv.weight has 160 rows, which no key/value head count fits"):
        load_llamagen_gpt(tmp_path / "c2i_odd_64.pt", n_head=4)       # head size 24: 160 rows do not split
    model = load_llamagen_gpt(tmp_path / "c2i_odd_64.pt", n_head=3)
    c = model.config
    assert (c.dim, c.n_layer, c.n_head, c.kv_heads, c.ffn_hidden, c.ffn_hidden_dim) == (96, 3, 3, 1, 200, 200)
    tokens, cond = torch.randint(0, VOCAB, (2, GRID * GRID)), torch.tensor([0, 7])
    with torch.no_grad():
        ours = model(tokens, cond)
    assert (ours - ref_logits(sd, tokens, cond, n_head=3)).abs().max() < 1e-4


def test_wrong_preset_names_first_mismatched_key(c2i_file):
    with pytest.raises(CompatError) as e:
        load_llamagen_gpt(c2i_file, preset="small", image_size=IMAGE)
    msg = str(e.value)
    assert "\n" not in msg
    # Named in LlamaGen's terms, first in the network's order (the class table comes first).
    assert "does not fit preset small" in msg
    assert "cls_embedding.embedding_table.weight is (11, 128) in the file but (11, 192)" in msg


def test_unknown_and_bad_files_are_refused(tmp_path, c2i_file):
    sd = llamagen_gpt_state()
    sd["layers.0.attention.extra.weight"] = torch.zeros(3)
    torch.save({"model": sd}, tmp_path / "odd.pt")
    with pytest.raises(CompatError, match="layers.0.attention.extra.weight has no place"):
        load_llamagen_gpt(tmp_path / "odd.pt", image_size=IMAGE)
    torch.save({"weights": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(CompatError, match="unknown layout"):
        load_llamagen_gpt(tmp_path / "list.pt", image_size=IMAGE)
    with pytest.raises(CompatError, match="not found"):
        load_llamagen_gpt(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CompatError, match="cannot read"):
        load_llamagen_gpt(tmp_path / "junk.pt")
    torch.save({"model": llamagen_gpt_state()}, tmp_path / "noname.pt")
    with pytest.raises(CompatError, match="--image-size"):
        load_llamagen_gpt(tmp_path / "noname.pt")


def test_pickled_objects_need_weights_only_false(tmp_path):
    from fractions import Fraction
    torch.save({"model": llamagen_gpt_state(), "lr": Fraction(1, 3)}, tmp_path / "obj.pt")
    with pytest.raises(CompatError, match="weights_only=False to load .*fractions.Fraction"):
        load_llamagen_gpt(tmp_path / "obj.pt", image_size=IMAGE)


def test_export_round_trip_in_llamagen_layout(c2i_file, tmp_path):
    model = load_llamagen_gpt(c2i_file)
    out = export_llamagen_gpt(model, tmp_path / "back.pt")
    back = torch.load(out, weights_only=True)["model"]
    original = llamagen_gpt_state()
    assert set(back) == set(original)                         # exactly the keys LlamaGen's model declares
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_export_refuses_identity_prefix_rope_without_force(tmp_path):
    from imagelm.models import build_generator, gpt_config
    model = build_generator(gpt_config("tiny", vocab_size=VOCAB, grid_size=GRID))
    with pytest.raises(CompatError, match="identity"):
        export_llamagen_gpt(model, tmp_path / "x.pt")
    assert export_llamagen_gpt(model, tmp_path / "x.pt", force=True).is_file()


def test_convert_writes_our_checkpoint(c2i_file, tmp_path):
    from imagelm.compat import convert
    out = convert("llamagen-gpt", c2i_file, tmp_path / "ours")
    loaded = imagelm.load(out)
    tokens, cond = torch.randint(0, VOCAB, (2, GRID * GRID)), torch.tensor([1, 5])
    with torch.no_grad():
        assert (loaded(tokens, cond) - ref_logits(llamagen_gpt_state(), tokens, cond)).abs().max() < 1e-4
    assert loaded.meta["imported_from"]["format"] == "llamagen-gpt"


# ------------------------------------------------------------------------------------------- VQ

def conv_norm_writers(sd: dict, g: torch.Generator):
    """conv(name, cin, cout, k) and norm(name, c): write seeded random conv / GroupNorm weights and biases
    into sd under `name` (shared by the LlamaGen VQ and ELM BAE fixtures)."""
    def conv(name, cin, cout, k):
        sd[name + ".weight"] = torch.randn(cout, cin, k, k, generator=g) / math.sqrt(cin * k * k)
        sd[name + ".bias"] = torch.randn(cout, generator=g) * 0.1

    def norm(name, c):
        sd[name + ".weight"] = 1 + torch.randn(c, generator=g) * 0.1
        sd[name + ".bias"] = torch.randn(c, generator=g) * 0.1
    return conv, norm


def llamagen_vq_state(ch=32, ch_mult=(1, 2), z=32, codes=16, dim=4, seed=0) -> dict:
    """Random weights in LlamaGen's VQModel key layout (encoder/decoder conv_blocks with res/attn lists,
    downsample/upsample, mid, quantize.embedding, quant_conv, post_quant_conv, codebook_used)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    conv, norm = conv_norm_writers(sd, g)

    def res(name, cin, cout):
        norm(name + ".norm1", cin), conv(name + ".conv1", cin, cout, 3)
        norm(name + ".norm2", cout), conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{n}", c, c, 1)

    L = len(ch_mult)
    conv("encoder.conv_in", 3, ch, 3)
    cin = ch
    for i, m in enumerate(ch_mult):
        for j in range(2):
            res(f"encoder.conv_blocks.{i}.res.{j}", cin, ch * m)
            cin = ch * m
            if i == L - 1:
                attn(f"encoder.conv_blocks.{i}.attn.{j}", cin)
        if i != L - 1:
            conv(f"encoder.conv_blocks.{i}.downsample.conv", cin, cin, 3)
    res("encoder.mid.0", cin, cin), attn("encoder.mid.1", cin), res("encoder.mid.2", cin, cin)
    norm("encoder.norm_out", cin), conv("encoder.conv_out", cin, z, 3)
    conv("decoder.conv_in", z, cin, 3)
    res("decoder.mid.0", cin, cin), attn("decoder.mid.1", cin), res("decoder.mid.2", cin, cin)
    for n, i in enumerate(reversed(range(L))):
        for j in range(3):
            res(f"decoder.conv_blocks.{n}.res.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
            if i == L - 1:
                attn(f"decoder.conv_blocks.{n}.attn.{j}", cin)
        if i != 0:
            conv(f"decoder.conv_blocks.{n}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin), conv("decoder.conv_out", cin, 3, 3)
    conv("quant_conv", z, dim, 1), conv("post_quant_conv", dim, z, 1)
    sd["quantize.embedding.weight"] = torch.randn(codes, dim, generator=g)
    sd["quantize.codebook_used"] = torch.zeros(65536)
    return sd


def ref_vq_decode(sd, codes, ch_mult=(1, 2)):
    """LlamaGen's decode_code: l2-normalised codebook rows -> post_quant_conv -> decoder (taming layout)."""
    def gn(x, name):
        return F.group_norm(x, 32, sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)

    def conv(x, name, stride=1, pad=None):
        w = sd[name + ".weight"]
        return F.conv2d(x, w, sd[name + ".bias"], stride, w.shape[-1] // 2 if pad is None else pad)

    def res(x, name):
        h = conv(F.silu(gn(x, name + ".norm1")), name + ".conv1")
        h = conv(F.silu(gn(h, name + ".norm2")), name + ".conv2")
        return (conv(x, name + ".nin_shortcut") if name + ".nin_shortcut.weight" in sd else x) + h

    def attn(x, name):
        B, C, H, W = x.shape
        h = gn(x, name + ".norm")
        q, k, v = (conv(h, f"{name}.{n}").reshape(B, C, H * W) for n in "qkv")
        w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(C), dim=2)           # [B, HW(q), HW(k)]
        return x + conv((v @ w.transpose(1, 2)).reshape(B, C, H, W), name + ".proj_out")

    e = F.normalize(sd["quantize.embedding.weight"], dim=-1)[codes].permute(0, 3, 1, 2)
    h = conv(conv(e, "post_quant_conv"), "decoder.conv_in")
    h = res(attn(res(h, "decoder.mid.0"), "decoder.mid.1"), "decoder.mid.2")
    L = len(ch_mult)
    for n in range(L):
        for j in range(3):
            h = res(h, f"decoder.conv_blocks.{n}.res.{j}")
            if n == 0:
                h = attn(h, f"decoder.conv_blocks.{n}.attn.{j}")
        if n != L - 1:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.conv_blocks.{n}.upsample.conv")
    return conv(F.silu(gn(h, "decoder.norm_out")), "decoder.conv_out")


def test_vq_decode_matches_reference(tmp_path):
    sd = llamagen_vq_state()
    torch.save({"model": sd}, tmp_path / "vq_ds2.pt")
    with pytest.raises(CompatError, match="does not fit preset VQ-8: encoder.conv_in.weight is"):
        load_llamagen_vq(tmp_path / "vq_ds2.pt", preset="VQ-8")
    tok = load_llamagen_vq(tmp_path / "vq_ds2.pt", image_size=8)       # every shape read from the file
    assert tok.codes_shape == (4, 4) and tok.config.ch_mult == (1, 2) and not tok.training
    codes = torch.randint(0, 16, (2, 4, 4))
    ref = ref_vq_decode(sd, codes)
    assert (tok.decode(codes) - ref.clamp(-1, 1)).abs().max() < 1e-4
    # Encoding runs LlamaGen's nearest l2-normalised code: decode(encode(x)) is a fixed point of codes.
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    codes2 = tok.encode(x)
    assert codes2.shape == (2, 4, 4) and codes2.max() < 16
