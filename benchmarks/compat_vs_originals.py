"""Our LlamaGen / ELM imports against the original projects' own model code (not part of the test suite).

    python benchmarks/compat_vs_originals.py --llamagen PATH/TO/LlamaGen --elm PATH/TO/LMforImageGeneration

Each path is a checkout of the original repository (only its model files are needed: LlamaGen's
autoregressive/models/{gpt,generate}.py, utils/drop_path.py, tokenizer/tokenizer_image/vq_model.py; ELM's
llama/{ar_model,mlm_model,drop_path}.py, bae/binaryae.py); they are imported from there, nothing is copied. Tiny randomly initialised models of theirs are saved in their format, imported with
imagelm.compat, and compared: teacher-forced logits (max |diff|), greedy (top-k 1) sampling with and
without CFG, VQ/BAE decode and encode, and LlamaGen strictly loading our export. CPU, float32.
"""
import argparse
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn as nn

from imagelm.compat import export_llamagen_gpt, load_elm_bae, load_elm_gpt, load_llamagen_gpt, load_llamagen_vq
from imagelm.models.conditioning import TextCondition
from imagelm.sampling.autoregressive import SamplingOptions, generate


def randomize(m):
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
        for _, b in m.named_buffers():
            if b.is_floating_point():
                b.normal_(0, 0.5)


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

def check_elm(root: str, d: Path) -> None:
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
    nn.Module.cuda = lambda self, *a, **k: self        # ELM calls .cuda() in a constructor
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
    a = p.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    if a.llamagen:
        check_llamagen(a.llamagen, tmp)
    if a.elm:
        check_elm(a.elm, tmp)
