"""ELM imports checked against a reference written here from ELM's published behaviour (bae/binaryae.py,
llama/ar_model.py): tiny random weights in ELM's key layout, and a plain recomputation of its forward."""
import pytest
import torch
import torch.nn.functional as F

from imagelm.compat import CompatError, load_elm_bae, load_elm_gpt, load_foreign
from imagelm.sampling.autoregressive import SamplingOptions, generate
from test_llamagen import DIM, GRID, HIDDEN, N_HEAD, N_LAYER, conv_norm_writers, llamagen_gpt_state, ref_trunk

NF, EMB, BITS, IMG = 32, 32, 8, 8          # ch_mult (1, 2): 8x8 images -> 4x4 positions of 8 bits


def elm_bae_file_state(norm_first=True, seed=0):
    """Random weights as ELM's BinaryGAN saves them: `ae.` + encoder/quantize/generator flat block lists,
    plus discriminator, perceptual and logsigma weights. Returns (state, encoder kinds, generator kinds)."""
    g = torch.Generator().manual_seed(seed)
    sd, kinds = {}, {"encoder": [], "generator": []}

    conv, norm = conv_norm_writers(sd, g)

    def add(part, kind, cin, cout=None):
        name = f"ae.{part}.blocks.{len(kinds[part])}"
        kinds[part].append(kind)
        if kind == "conv":
            conv(name, cin, cout, 3)
        elif kind == "norm":
            norm(name, cin)
        elif kind == "res":            # ELM's ResBlock always declares its 1x1 conv_out
            norm(name + ".norm1", cin), conv(name + ".conv1", cin, cout, 3)
            norm(name + ".norm2", cout), conv(name + ".conv2", cout, cout, 3), conv(name + ".conv_out", cin, cout, 1)
        elif kind == "attn":
            norm(name + ".norm", cin)
            for n in ("q", "k", "v", "proj_out"):
                conv(f"{name}.{n}", cin, cin, 1)
        else:                          # down/up: a 3x3 conv under `.conv`
            conv(name + ".conv", cin, cin, 3)

    # encoder: conv, [res, down], [res, attn], mid res attn res, norm, conv (attention at 4x4)
    add("encoder", "conv", 3, NF)
    add("encoder", "res", NF, NF), add("encoder", "down", NF)
    add("encoder", "res", NF, 2 * NF), add("encoder", "attn", 2 * NF)
    add("encoder", "res", 2 * NF, 2 * NF), add("encoder", "attn", 2 * NF), add("encoder", "res", 2 * NF, 2 * NF)
    add("encoder", "norm", 2 * NF), add("encoder", "conv", 2 * NF, EMB)
    # generator: (norm), conv, mid, [res, attn, up], [res], norm, conv
    if norm_first:
        add("generator", "norm", EMB)
    add("generator", "conv", EMB, 2 * NF)
    add("generator", "res", 2 * NF, 2 * NF), add("generator", "attn", 2 * NF), add("generator", "res", 2 * NF, 2 * NF)
    add("generator", "res", 2 * NF, 2 * NF), add("generator", "attn", 2 * NF), add("generator", "up", 2 * NF)
    add("generator", "res", 2 * NF, NF)
    add("generator", "norm", NF), add("generator", "conv", NF, 3)
    conv("ae.quantize.proj.0", EMB, BITS, 1)
    sd["ae.quantize.embed.weight"] = torch.randn(BITS, EMB, generator=g)
    conv("ae.generator.logsigma.0", NF, NF, 3), conv("ae.generator.logsigma.2", NF, 3, 1)
    conv("disc.main.0", 3, 8, 4)
    sd["perceptual.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1, generator=g)
    return sd, kinds["encoder"], kinds["generator"]


def ref_run(sd, part, kinds, x):
    """ELM's Encoder/Generator forward: every block of the flat list in order (ResBlock: GN, SiLU, conv,
    GN, SiLU, conv, + conv_out(x) only where the width changes; the list ends GroupNorm -> conv)."""
    def gn(x, n):
        return F.group_norm(x, 32, sd[n + ".weight"], sd[n + ".bias"], eps=1e-6)

    def conv(x, n, stride=1, pad=None):
        w = sd[n + ".weight"]
        return F.conv2d(x, w, sd[n + ".bias"], stride, w.shape[-1] // 2 if pad is None else pad)

    for i, kind in enumerate(kinds):
        n = f"ae.{part}.blocks.{i}"
        if kind == "conv":
            x = conv(x, n)
        elif kind == "norm":
            x = gn(x, n)
        elif kind == "res":
            h = conv(F.silu(gn(conv(F.silu(gn(x, n + ".norm1")), n + ".conv1"), n + ".norm2")), n + ".conv2")
            x = h + (conv(x, n + ".conv_out") if sd[n + ".conv1.weight"].shape[0] != x.shape[1] else x)
        elif kind == "attn":
            B, C, H, W = x.shape
            h = gn(x, n + ".norm")
            q, k, v = (conv(h, f"{n}.{t}").reshape(B, C, H * W) for t in "qkv")
            w = torch.softmax(q.transpose(1, 2) @ k * C ** -0.5, dim=2)
            x = x + conv((v @ w.transpose(1, 2)).reshape(B, C, H, W), n + ".proj_out")
        elif kind == "down":
            x = conv(F.pad(x, (0, 1, 0, 1)), n + ".conv", stride=2, pad=0)
        else:
            x = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), n + ".conv")
    return x


@pytest.mark.parametrize("norm_first", [True, False])
def test_bae_decode_and_encode_match_reference(tmp_path, norm_first):
    sd, enc, gen = elm_bae_file_state(norm_first)
    torch.save(sd, tmp_path / "binaryae_ema.th")
    tok = load_elm_bae(tmp_path / "binaryae_ema.th", image_size=IMG)
    c = tok.config
    assert (c.bits, c.ch, c.ch_mult, c.num_res_blocks, c.decoder_res_blocks, c.norm_first) == \
        (BITS, NF, (1, 2), 1, 1, norm_first)
    assert c.attn_resolutions == (4,) and tok.codes_shape == (4, 4) and not tok.training
    bits = torch.randint(0, 2, (2, 4, 4, BITS), dtype=torch.uint8)
    z = torch.einsum("bnhw,nd->bdhw", bits.permute(0, 3, 1, 2).float(), sd["ae.quantize.embed.weight"])
    ref = ref_run(sd, "generator", gen, z)                                  # ELM's image, in [0, 1]
    assert (tok.decode(bits) - (ref.clamp(0, 1) * 2 - 1)).abs().max() < 1e-4
    # Encoding: ELM sees [0, 1] images; sigmoid(proj) thresholded at 0.5 (its deterministic quantizer).
    images01 = torch.rand(2, 3, IMG, IMG)
    p = torch.sigmoid(F.conv2d(ref_run(sd, "encoder", enc, images01), sd["ae.quantize.proj.0.weight"],
                               sd["ae.quantize.proj.0.bias"]))
    assert torch.equal(tok.encode(images01 * 2 - 1), (p > 0.5).to(torch.uint8).permute(0, 2, 3, 1))


def test_bae_wrong_bits_and_broken_layout_are_refused(tmp_path):
    sd, _, _ = elm_bae_file_state()
    torch.save(sd, tmp_path / "bae.th")
    with pytest.raises(CompatError) as e:
        load_foreign("elm-bae", tmp_path / "bae.th", preset="BAE-16", image_size=IMG)
    assert "ae.quantize.embed.weight is (8, 32) in the file but (16, 32)" in str(e.value)
    del sd["ae.encoder.blocks.3.conv1.weight"], sd["ae.encoder.blocks.3.norm1.weight"]
    torch.save(sd, tmp_path / "broken.th")
    with pytest.raises(CompatError, match="unknown layout"):
        load_elm_bae(tmp_path / "broken.th", image_size=IMG)


# ---------------------------------------------------------------------------------------------- GPT

N_SUB, M_BITS = 2, 3            # ELM's "2-3" vocabulary: 6-bit codes as 2 sub-tokens of 8 values


def elm_ar_state(n=N_SUB, seed=1, m=M_BITS, dim=DIM, n_layer=N_LAYER):
    """ELM AR weights: LlamaGen's trunk and class table, n tok_embedder tables + proj, n output heads."""
    g = torch.Generator().manual_seed(seed)
    trunk = llamagen_gpt_state(seed=seed, dim=dim, n_layer=n_layer)
    sd = {k: v for k, v in trunk.items() if not k.startswith(("tok_", "output"))}
    V = 2 ** m
    if n == 1:
        sd["tok_embedder.weight"] = torch.randn(V, dim, generator=g) * 0.1
        sd["output.weight"] = torch.randn(V, dim, generator=g) * 0.1
    else:
        for i in range(n):
            sd[f"tok_embedder.{i}.weight"] = torch.randn(V, dim, generator=g) * 0.1
            sd[f"output.{i}.weight"] = torch.randn(V, dim, generator=g) * 0.1
        sd["proj.weight"] = torch.randn(dim, n * dim, generator=g) * 0.05
    return sd


def ref_elm_logits(sd, tokens, cond, n=N_SUB, n_head=N_HEAD):
    """ELM's teacher-forced logits: tokens [B, L, n] -> [B, L, n, V] (a head per sub-token)."""
    if n == 1:
        emb = sd["tok_embedder.weight"][tokens[:, :-1, 0]]
    else:
        emb = torch.cat([sd[f"tok_embedder.{i}.weight"][tokens[:, :-1, i]] for i in range(n)], -1) @ sd["proj.weight"].T
    h = ref_trunk(sd, torch.cat([sd["cls_embedding.embedding_table.weight"][cond][:, None], emb], 1), 1,
                  n_head=n_head)
    heads = [sd["output.weight"]] if n == 1 else [sd[f"output.{i}.weight"] for i in range(n)]
    return torch.stack([h @ w.T for w in heads], 2)


@pytest.mark.parametrize("n", [1, N_SUB])
def test_elm_ar_logits_match_reference(tmp_path, n):
    sd = elm_ar_state(n)
    torch.save(sd, tmp_path / "L-2-3.pth")                                  # ELM saves bare state dicts
    model = load_elm_gpt(tmp_path / "L-2-3.pth", image_size=64)            # preset "tiny" by shape
    assert model.config.num_subtokens == n and model.config.vocab_size == 8 and model.meta.preset == "tiny"
    tokens, cond = torch.randint(0, 8, (2, GRID * GRID, n)), torch.tensor([4, 10])
    with torch.no_grad():
        ours = model(tokens, cond)
    assert (ours - ref_elm_logits(sd, tokens, cond, n)).abs().max() < 1e-4


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_elm_ar_greedy_sampling_matches_reference(tmp_path, cfg):
    """ELM's generate_cfg with top-k 1: CFG mixes each sub-token head separately, then argmax per head."""
    sd = elm_ar_state()
    torch.save(sd, tmp_path / "ar.pth")
    model = load_elm_gpt(tmp_path / "ar.pth", image_size=64)
    cond = torch.tensor([2, 6])
    ours = generate(model, cond, SamplingOptions(cfg_scale=cfg, top_k=1))
    seq = torch.zeros(2, 0, N_SUB, dtype=torch.long)
    for _ in range(GRID * GRID):
        padded = torch.cat([seq, torch.zeros(2, 1, N_SUB, dtype=torch.long)], 1)
        logits = ref_elm_logits(sd, padded, cond)[:, -1]
        if cfg != 1.0:
            u = ref_elm_logits(sd, padded, torch.full_like(cond, 10))[:, -1]
            logits = u + (logits - u) * cfg
        seq = torch.cat([seq, logits.argmax(-1)[:, None]], 1)
    assert torch.equal(ours, seq)


def test_elm_non_preset_size_infers_heads_of_64(tmp_path):
    """ELM's releases all have 64-channel heads: a width-256, 2-layer file (no preset) imports with 4 heads."""
    sd = elm_ar_state(dim=256, n_layer=2)
    torch.save(sd, tmp_path / "custom-2-3.pth")
    model = load_elm_gpt(tmp_path / "custom-2-3.pth", image_size=64)
    c = model.config
    assert (c.dim, c.n_layer, c.n_head, c.num_subtokens) == (256, 2, 4, N_SUB) and model.meta.preset is None
    tokens, cond = torch.randint(0, 8, (2, GRID * GRID, N_SUB)), torch.tensor([4, 10])
    with torch.no_grad():
        ours = model(tokens, cond)
    assert (ours - ref_elm_logits(sd, tokens, cond, n_head=4)).abs().max() < 1e-4
    with pytest.raises(CompatError, match="does not fit preset GPT-B"):
        load_elm_gpt(tmp_path / "custom-2-3.pth", preset="GPT-B", image_size=64)


def test_elm_gpt_refusals(tmp_path):
    sd = elm_ar_state()
    torch.save(sd, tmp_path / "ar.pth")
    with pytest.raises(CompatError, match="does not fit preset small"):
        load_elm_gpt(tmp_path / "ar.pth", preset="small", image_size=64)
    mlm = {k: v for k, v in elm_ar_state(2).items() if not k.startswith("output")}
    mlm["mlm_layer.fc.weight"] = torch.zeros(DIM, DIM)
    torch.save(mlm, tmp_path / "mlm.pth")
    with pytest.raises(CompatError, match="masked model with several sub-tokens"):
        load_elm_gpt(tmp_path / "mlm.pth", image_size=64)
    sd["layers.0.adaLN_modulation.1.weight"] = torch.zeros(6 * DIM, DIM)   # an adaLN variant: not ours
    torch.save(sd, tmp_path / "ada.pth")
    with pytest.raises(CompatError, match="adaLN_modulation.1.weight has no place"):
        load_elm_gpt(tmp_path / "ada.pth", image_size=64)
    assert HIDDEN and N_LAYER      # the trunk constants are shared with the LlamaGen tests


def elm_mlm_state(seed=3):
    g = torch.Generator().manual_seed(seed)
    V = 2 ** M_BITS
    sd = {k: v for k, v in elm_ar_state(1).items() if not k.startswith("output")}   # files lack `output`
    sd["tok_embedder.weight"] = torch.randn(V + 1, DIM, generator=g) * 0.1
    sd["pos_embed.weight"] = torch.randn(GRID * GRID, DIM, generator=g)              # declared, unused
    sd.update({"mlm_layer.fc.weight": torch.randn(DIM, DIM, generator=g) * 0.1,
               "mlm_layer.fc.bias": torch.randn(DIM, generator=g) * 0.1,
               "mlm_layer.ln.weight": 1 + torch.randn(DIM, generator=g) * 0.1,
               "mlm_layer.ln.bias": torch.randn(DIM, generator=g) * 0.1,
               "mlm_layer.bias": torch.randn(1, 1, V + 1, generator=g)})
    return sd


def ref_elm_mlm_logits(sd, tokens, cond, mask):
    """ELM's masked model: tokens [B, L], cond [B], mask [B, L] bool -> logits [B, L, V] (every position)."""
    V = sd["tok_embedder.weight"].shape[0] - 1
    idx = torch.where(mask, V, tokens)                                   # ELM writes the mask token's id
    h = torch.cat([sd["cls_embedding.embedding_table.weight"][cond][:, None], sd["tok_embedder.weight"][idx]], 1)
    h = ref_trunk(sd, h, 1, causal=False)
    x = F.layer_norm(F.gelu(h @ sd["mlm_layer.fc.weight"].T + sd["mlm_layer.fc.bias"]), (DIM,),
                     sd["mlm_layer.ln.weight"], sd["mlm_layer.ln.bias"])
    return (x @ sd["tok_embedder.weight"].T + sd["mlm_layer.bias"])[:, 1:, :V]


def test_elm_mlm_logits_match_reference(tmp_path):
    """ELM's 1-m masked model: a shared table with the mask token as its last row, full attention, and the
    tied head LayerNorm(GELU(fc(h))) @ table^T + bias, its mask-token column cut away."""
    V = 2 ** M_BITS
    sd = elm_mlm_state()
    torch.save(sd, tmp_path / "mlmL-1-3.pth")
    model = load_elm_gpt(tmp_path / "mlmL-1-3.pth", image_size=64)
    assert model.kind == "mlm" and model.config.head == "tied-mlm" and model.config.vocab_size == V
    tokens, cond = torch.randint(0, V, (2, GRID * GRID)), torch.tensor([1, 10])
    mask = torch.rand(2, GRID * GRID) < 0.5
    with torch.no_grad():
        ours = model(tokens, cond, mask)
    assert ours.shape == (2, GRID * GRID, V) and (ours - ref_elm_mlm_logits(sd, tokens, cond, mask)).abs().max() < 1e-4
    # The head reads the table, it does not hold a second copy of it.
    assert sorted(k for k in model.state_dict() if k.startswith("output.")) == \
        ["output.bias", "output.fc.bias", "output.fc.weight", "output.norm.bias", "output.norm.weight"]
