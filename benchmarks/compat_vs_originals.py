"""Our LlamaGen / ELM imports against the original projects' own model code (not part of the test suite).

    python benchmarks/compat_vs_originals.py --llamagen PATH/TO/LlamaGen --elm PATH/TO/LMforImageGeneration

Each path is a checkout of the original repository (only its model files are needed: LlamaGen's
autoregressive/models/{gpt,generate}.py, utils/drop_path.py, tokenizer/tokenizer_image/vq_model.py; ELM's
llama/{ar_model,mlm_model,drop_path}.py, bae/binaryae.py); they are imported from there, nothing is copied. Tiny randomly initialised models of theirs are saved in their format, imported with
imagelm.compat, and compared: teacher-forced logits (max |diff|), greedy (top-k 1) sampling with and
without CFG, VQ/BAE decode and encode, and LlamaGen strictly loading our export. CPU, float32.

The sampling-conventions rows (printed last, as a table) convert such files with `imagelm convert`'s
function and sample them through `imagelm.sample` with the checkpoint's conventions (ELM's CFG
schedules and MaskGIT re-masking, LlamaGen's defaults and cfg_interval), against the originals' own
generate functions, greedy, on 16x16 grids (256 tokens). "ours" is the share of tokens that would
agree under our conventions instead. ELM's masked sampler draws its candidates from a Categorical;
for a greedy run that draw is replaced by the argmax here, at run time (their files stay untouched).
"""
import argparse
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn as nn

import imagelm
from imagelm.compat import convert, export_llamagen_gpt, load_elm_bae, load_elm_gpt, load_llamagen_gpt, load_llamagen_vq
from imagelm.models.conditioning import TextCondition
from imagelm.sampling.autoregressive import SamplingOptions, generate
from imagelm.sampling.conventions import plan_sampling
from imagelm.sampling.masked import generate_masked


def randomize(m):
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
        for _, b in m.named_buffers():
            if b.is_floating_point():
                b.normal_(0, 0.5)


ROWS = []   # (check, tokens, identical, share agreeing under our conventions)


def row(check: str, theirs: torch.Tensor, mine: torch.Tensor, ours: torch.Tensor) -> None:
    """theirs / mine / ours: tokens [B, L, n] of the original, of imagelm under the checkpoint's
    conventions, of imagelm under ours."""
    same = (ours == theirs).all(-1).float().mean().item()
    ROWS.append((check, theirs.shape[0] * theirs.shape[1], torch.equal(theirs, mine), same))
    print(f"{check}: identical {torch.equal(theirs, mine)} (ours {same:.0%})")


def print_table() -> None:
    print("\n| check (greedy, fp32, CPU) | tokens | identical | ours |\n|---|---|---|---|")
    for check, n, same, ours in ROWS:
        print(f"| {check} | {n} | {'yes' if same else 'NO'} | {ours:.0%} |")


def conventions_llamagen(root: str, d: Path) -> None:
    """LlamaGen's generate() with sample_c2i.py's / sample_t2i.py's defaults (greedy: top-k 1) against
    an imported checkpoint sampled with no options but top_k=1 (and cfg_interval / cfg_scale where named)."""
    sys.path.insert(0, root)
    from autoregressive.models.generate import generate as lg_generate
    from autoregressive.models.gpt import ModelArgs, Transformer
    lg = Transformer(ModelArgs(dim=128, n_layer=4, n_head=4, vocab_size=256, num_classes=10, block_size=256,
                               cls_token_num=1, model_type="c2i"))
    randomize(lg); lg.eval()
    torch.save({"model": lg.state_dict()}, d / "c2i_conv_256.pt")
    gen = imagelm.load(convert("llamagen-gpt", d / "c2i_conv_256.pt", d / "lg-c2i"))
    c = torch.tensor([2, 7])
    for cfg, interval in ((4.0, -1), (4.0, 20), (0.5, -1)):
        theirs = lg_generate(lg, c, 256, cfg_scale=cfg, cfg_interval=interval, temperature=1.0, top_k=1,
                             top_p=1.0, sample_logits=True).long()[..., None]
        given = {} if cfg == 4.0 else {"cfg_scale": cfg}            # 4.0 is sample_c2i.py's default
        if interval >= 0:
            given["cfg_interval"] = interval
        mine = imagelm.sample(gen, c, top_k=1, dtype="float32", **given)
        ours = imagelm.sample(gen, c, top_k=1, dtype="float32", conventions="imagelm", **{"cfg_scale": 4.0, **given})
        what = "defaults (CFG 4)" if not given else ", ".join(f"{k} {v}" for k, v in given.items())
        row(f"LlamaGen c2i {what}", theirs, mine, ours)
    lg = Transformer(ModelArgs(dim=128, n_layer=4, n_head=4, vocab_size=256, block_size=256, cls_token_num=120,
                               caption_dim=32, model_type="t2i"))
    randomize(lg); lg.eval()
    torch.save({"model": lg.state_dict()}, d / "t2i_conv_256.pt")
    gen = imagelm.load(convert("llamagen-gpt", d / "t2i_conv_256.pt", d / "lg-t2i", preset="tiny"))
    emb_masks = torch.ones(2, 120); emb_masks[0, :100] = 0; emb_masks[1, :30] = 0      # left padding
    feats = torch.randn(2, 120, 32) * emb_masks[..., None]
    theirs = lg_generate(lg, feats, 256, emb_masks=emb_masks, cfg_scale=7.5, temperature=1.0, top_k=1, top_p=1.0,
                         sample_logits=True).long()[..., None]
    tc = TextCondition(feats, emb_masks.bool())
    mine = imagelm.sample(gen, tc, top_k=1, dtype="float32")
    ours = imagelm.sample(gen, tc, top_k=1, dtype="float32", conventions="imagelm", cfg_scale=7.5)
    row("LlamaGen t2i defaults (CFG 7.5)", theirs, mine, ours)


class ELMNet(nn.Module):
    """ELM's masked Transformer behind our masked generator's interface (forward(tokens [B, L, 1], cond,
    mask [B, L]) -> logits [B, L, 1, V]), so that generate_masked can drive ELM's own network."""

    def __init__(self, net, config, num_classes: int):
        super().__init__()
        self.net, self.config, self.kind, self.num_classes = net, config, "mlm", num_classes

    def null_cond(self, cond):
        return torch.full_like(cond, self.num_classes)

    def forward(self, tokens, cond, mask):
        logits, _, _ = self.net(tokens.float().clone(), cond, token_all_mask=mask[..., None])
        return logits.view(*tokens.shape, -1)


def conventions_elm(root: str, d: Path) -> None:
    """ELM's AR and masked generate_cfg (greedy) against imported checkpoints sampled through imagelm.sample."""
    from llama.ar_model import ModelArgs as ARArgs
    from llama.ar_model import Transformer as ART
    from llama.mlm_model import ModelArgs as MLMArgs
    from llama.mlm_model import Transformer as MLMT
    ar = ART(ARArgs(dim=128, n_layer=4, n_head=4, token_each=2, code_dim=5, block_size=256, num_classes=10,
                    pos_type="rope2d"))
    randomize(ar); ar.eval()
    torch.save(ar.state_dict(), d / "ar-2-5.pth")
    gen = imagelm.load(convert("elm-gpt", d / "ar-2-5.pth", d / "elm-ar"))
    c = torch.tensor([2, 7])
    for schedule in ("linear", "cos"):
        theirs, _ = ar.generate_cfg(None, c, 256, temperature=1.0, top_k=1, cfg_scale=4.0, cfg_schedule=schedule)
        mine = imagelm.sample(gen, c, cfg_scale=4.0, cfg_schedule=schedule, top_k=1, dtype="float32")
        ours = imagelm.sample(gen, c, cfg_scale=4.0, cfg_schedule=schedule, top_k=1, dtype="float32",
                              conventions="imagelm")
        row(f"ELM AR 2-5 CFG 4 {schedule}", theirs, mine, ours)

    from torch.distributions.categorical import Categorical
    draw = Categorical.sample
    Categorical.sample = lambda self, sample_shape=torch.Size(): self.logits.argmax(-1)   # greedy candidates
    try:
        for sharpen in (1.0, 30.0):
            margs = MLMArgs(dim=128, n_layer=4, n_head=4, token_each=1, code_dim=6, block_size=256, num_classes=10,
                            pos_type="rope2d")
            margs.model_type = "c2i"
            mlm = MLMT(margs)
            randomize(mlm); mlm.eval()
            with torch.no_grad():    # a confident head: many candidates at probability 1, tied confidences
                mlm.mlm_layer.ln.weight.mul_(sharpen); mlm.mlm_layer.ln.bias.mul_(sharpen)
            torch.save({k: v for k, v in mlm.state_dict().items() if not k.startswith("output")}, d / "mlm.pth")
            gen = imagelm.load(convert("elm-gpt", d / "mlm.pth", d / f"elm-mlm-{sharpen:g}"))
            # temperature 0: no Gumbel noise on the confidences (ELM's masked sampler's meaning).
            theirs, _ = mlm.generate_cfg(None, c, num_iter=10, temperature=0.0, cfg_scale=4.0, cfg_schedule="linear")
            mine = imagelm.sample(gen, c, cfg_scale=4.0, cfg_schedule="linear", top_k=1, temperature=0.0, steps=10)
            ours = imagelm.sample(gen, c, cfg_scale=4.0, cfg_schedule="linear", top_k=1, temperature=0.0, steps=10,
                                  conventions="imagelm")
            what = ", random head" if sharpen == 1 else f", head x{sharpen:g} (saturated: ties)"
            row(f"ELM MLM 1-6 MaskGIT 10 steps CFG 4 linear{what}", theirs.long(), mine, ours)
            if sharpen == 1:
                # The same sampler (imagelm.sample's plan) driving ELM's own network: the rule alone.
                plan = plan_sampling("elm", "mlm", cfg_scale=4.0, cfg_schedule="linear", top_k=1, temperature=0.0,
                                     steps=10)
                net = ELMNet(mlm, gen.config, margs.num_classes)
                mine = generate_masked(net, c, plan.options, plan.steps, torch.Generator().manual_seed(0),
                                       choice_temperature=plan.choice_temperature, remask=plan.remask)
                row("ELM MLM 1-6, same, our sampler over ELM's forward", theirs.long(), mine, ours)
    finally:
        Categorical.sample = draw


def check_llamagen(root: str, d: Path) -> None:
    sys.path.insert(0, root)
    from autoregressive.models.generate import generate as lg_generate
    from autoregressive.models.gpt import ModelArgs, Transformer
    from tokenizer.tokenizer_image.vq_model import ModelArgs as VQArgs
    from tokenizer.tokenizer_image.vq_model import VQModel as LGVQ

    # --- c2i
    lg = Transformer(ModelArgs(dim=128, n_layer=4, n_head=4, vocab_size=64, num_classes=10, block_size=16,
                               cls_token_num=1, model_type="c2i"))
    randomize(lg); lg.eval()
    torch.save({"model": lg.state_dict()}, d / "c2i_tiny_64.pt")
    ours = load_llamagen_gpt(d / "c2i_tiny_64.pt")
    tok = torch.randint(0, 64, (3, 16)); cond = torch.tensor([1, 5, 10])
    with torch.no_grad():
        # Its eval path needs input_pos; with a 1-token prefix, position i's logits predict token i.
        ref, _ = lg(tok[:, :-1], cond, input_pos=torch.arange(16))
        mine = ours(tok, cond)
    print("c2i teacher-forced max|diff|", (mine - ref).abs().max().item())
    for cfg in (1.0, 4.0):
        c = torch.tensor([2, 7])
        seq_ref = lg_generate(lg, c, 16, cfg_scale=cfg, temperature=1.0, top_k=1, top_p=1.0, sample_logits=True)
        seq = generate(ours, c, SamplingOptions(cfg_scale=cfg, top_k=1))[..., 0]
        print(f"c2i greedy cfg={cfg} identical:", torch.equal(seq_ref.long(), seq))
    # export -> LlamaGen strict load -> same logits
    export_llamagen_gpt(ours, d / "back.pt")
    lg2 = Transformer(ModelArgs(dim=128, n_layer=4, n_head=4, vocab_size=64, num_classes=10, block_size=16, cls_token_num=1))
    print("export strict load:", lg2.load_state_dict(torch.load(d / "back.pt", weights_only=True)["model"], strict=True))
    lg2.eval()
    with torch.no_grad():
        print("export logits max|diff|", (lg2(tok[:, :-1], cond, input_pos=torch.arange(16))[0] - ref).abs().max().item())

    # --- t2i (cls_token_num 120, caption_dim 32 for size)
    lg = Transformer(ModelArgs(dim=128, n_layer=4, n_head=4, vocab_size=64, block_size=16, cls_token_num=120,
                               caption_dim=32, model_type="t2i"))
    randomize(lg); lg.eval()
    torch.save({"model": lg.state_dict()}, d / "t2i_tiny_64.pt")
    ours = load_llamagen_gpt(d / "t2i_tiny_64.pt", preset="tiny")
    print("t2i prefix", ours.config.cls_token_num, ours.config.null_caption_mask)
    emb_masks = torch.ones(2, 120); emb_masks[0, :100] = 0; emb_masks[1, :30] = 0      # left padding
    feats = torch.randn(2, 120, 32) * emb_masks[..., None]
    tc = TextCondition(feats, emb_masks.bool())
    for cfg in (1.0, 3.0):
        seq_ref = lg_generate(lg, feats, 16, emb_masks=emb_masks, cfg_scale=cfg, temperature=1.0, top_k=1, top_p=1.0,
                              sample_logits=True)
        seq = generate(ours, tc, SamplingOptions(cfg_scale=cfg, top_k=1))[..., 0]
        print(f"t2i greedy cfg={cfg} (padded captions) identical:", torch.equal(seq_ref.long(), seq))
    # --- VQ
    vq = LGVQ(VQArgs(codebook_size=64, codebook_embed_dim=8, encoder_ch_mult=[1, 2], decoder_ch_mult=[1, 2], z_channels=64))
    randomize(vq); vq.eval()
    torch.save({"model": vq.state_dict()}, d / "vq.pt")
    tokz = load_llamagen_vq(d / "vq.pt", image_size=16)
    codes = torch.randint(0, 64, (2, 8, 8))
    with torch.no_grad():
        ref = vq.decode_code(codes.reshape(2, -1), [2, 8, 8, 8])
    print("vq decode max|diff| (ref clamped)", (tokz.decode(codes) - ref.clamp(-1, 1)).abs().max().item(), "ref range", ref.min().item(), ref.max().item())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        _, _, (_, _, idx) = vq.encode(x)
    print("vq encode identical:", torch.equal(idx.view(2, 8, 8), tokz.encode(x)))

def import_elm(root: str) -> None:
    """Make ELM's model files importable: its checkout on the path, and stubs for what they import but
    the code run here never calls."""
    sys.path.insert(0, root)
    # Modules ELM's files import that the model code checked here never calls (training losses, logging,
    # einops). Its GroupNorm helper is the one piece its blocks need: 32 groups, eps 1e-6.
    stubs = {"einops": dict.fromkeys(("rearrange", "reduce", "pack", "unpack")),
             "bae.lpips": {"LPIPS": object}, "bae.diffaug": {"DiffAugment": None}, "utils": {},
             "utils.log_utils": {"log": print},
             "utils.vqgan_utils": {"normalize": lambda c: nn.GroupNorm(32, c, eps=1e-6, affine=True),
                                   **dict.fromkeys(("swish", "adopt_weight", "hinge_d_loss",
                                                    "calculate_adaptive_weight"))}}
    for name, attrs in stubs.items():
        if name == "einops" and "einops" in sys.modules:
            continue
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
    # bae/__init__.py imports its diffusion sampler (timm); a bare package runs only binaryae.py.
    bae = types.ModuleType("bae")
    bae.__path__ = [str(Path(root) / "bae")]
    sys.modules["bae"] = bae
    nn.Module.cuda = lambda self, *a, **k: self        # ELM calls .cuda() in a constructor


def check_elm(root: str, d: Path) -> None:
    from bae.binaryae import BinaryAutoEncoder
    from llama.ar_model import ModelArgs as ARArgs
    from llama.ar_model import Transformer as ART
    from llama.mlm_model import ModelArgs as MLMArgs
    from llama.mlm_model import Transformer as MLMT
    for norm_first in (True, False):
        H = types.SimpleNamespace(n_channels=3, nf=32, res_blocks=2, codebook_size=12, emb_dim=64, ch_mult=[1, 1, 2],
                                  img_size=32, attn_resolutions=[8], quantizer="binary", beta=0.25, deterministic=True,
                                  use_tanh=False, gen_mul=1.0, norm_first=norm_first)
        ae = BinaryAutoEncoder(H); randomize(ae); ae.eval()
        sd = {"ae." + k: v for k, v in ae.state_dict().items()}
        sd["disc.main.0.weight"] = torch.zeros(8, 3, 4, 4); sd["perceptual.net.0.weight"] = torch.zeros(3)
        torch.save(sd, d / "binaryae_ema.th")
        tok = load_elm_bae(d / "binaryae_ema.th", image_size=32)
        bits = torch.randint(0, 2, (2, 8, 8, 12), dtype=torch.uint8)
        with torch.no_grad():
            ref = ae.decode(bits.permute(0, 3, 1, 2).float(), is_bin=True)
            x01 = torch.rand(2, 3, 32, 32)
            _, ref_bits = ae.encode(x01)
        print(f"BAE norm_first={norm_first}: config {tok.config}")
        print("  decode max|diff| vs ELM (its [0,1] image, clamped, to [-1,1])",
              (tok.decode(bits) - (ref.clamp(0, 1) * 2 - 1)).abs().max().item())
        print("  encode identical:", torch.equal(tok.encode(x01 * 2 - 1), ref_bits.permute(0, 2, 3, 1).to(torch.uint8)))

    for n, m in ((2, 5), (1, 6)):
        ar = ART(ARArgs(dim=128, n_layer=4, n_head=4, token_each=n, code_dim=m, block_size=16, num_classes=10,
                        pos_type="rope2d"))
        randomize(ar); ar.eval()
        torch.save(ar.state_dict(), d / "ar.pth")
        ours = load_elm_gpt(d / "ar.pth", image_size=64)
        tok = torch.randint(0, 2 ** m, (3, 16, n)); cond = torch.tensor([1, 4, 10])
        with torch.no_grad():
            ref, _, _ = ar(tok[:, :-1], cond)                     # [B, 16 * n, V]
            mine = ours(tok, cond)
        print(f"ELM AR {n}-{m} teacher-forced max|diff|", (mine.reshape(3, -1, 2 ** m) - ref).abs().max().item())
        for cfg in (1.0, 3.0):
            c = torch.tensor([2, 7])
            torch.manual_seed(0)
            # top_k 1: ELM then draws with multinomial from a one-hot distribution, i.e. the argmax.
            seq_ref, _ = ar.generate_cfg(None, c, 16, temperature=1.0, top_k=1, cfg_scale=cfg)
            seq = generate(ours, c, SamplingOptions(cfg_scale=cfg, top_k=1))
            print(f"  greedy cfg={cfg} identical:", torch.equal(seq_ref, seq))

    margs = MLMArgs(dim=128, n_layer=4, n_head=4, token_each=1, code_dim=6, block_size=16, num_classes=10,
                    pos_type="rope2d")
    margs.model_type = "c2i"        # read by its Transformer but missing from its ModelArgs at HEAD
    mlm = MLMT(margs)
    randomize(mlm); mlm.eval()
    sd = {k: v for k, v in mlm.state_dict().items() if not k.startswith("output")}   # released files lack it
    torch.save(sd, d / "mlm.pth")
    ours = load_elm_gpt(d / "mlm.pth", image_size=64)
    tok = torch.randint(0, 64, (3, 16, 1)); cond = torch.tensor([1, 4, 10]); mask = torch.rand(3, 16) < 0.5
    with torch.no_grad():
        ref, _, _ = mlm(tok.clone().float(), cond, token_all_mask=mask[..., None])
        mine = ours(tok, cond, mask)
    print("ELM MLM 1-6 teacher-forced max|diff|", (mine[:, :, 0] - ref).abs().max().item())

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llamagen", help="a checkout of FoundationVision/LlamaGen")
    p.add_argument("--elm", help="a checkout of Pepper-lll/LMforImageGeneration")
    p.add_argument("--conventions-only", action="store_true", help="only the sampling-conventions rows")
    a = p.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    if a.llamagen:
        if not a.conventions_only:
            check_llamagen(a.llamagen, tmp)
        conventions_llamagen(a.llamagen, tmp)
    if a.elm:
        import_elm(a.elm)
        if not a.conventions_only:
            check_elm(a.elm, tmp)
        conventions_elm(a.elm, tmp)
    print_table()
