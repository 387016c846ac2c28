"""ELM (Pepper-lll/LMforImageGeneration) checkpoints -> our modules: the one place that knows their keys.

BAE (bae/binaryae.py, `binaryae_ema.th`): a flat state dict whose autoencoder keys start with `ae.`
(the rest -- `disc.*`, `perceptual.*` -- is training-only and dropped, as is the generator's `logsigma`
ELBO head). Its encoder and generator are flat `blocks` lists; the adapter reads the list's structure
(conv, ResBlock, AttnBlock, resampling, GroupNorm by their keys), derives the shape, builds our
`ELMBAEModel` (tokenizers/bae_elm.py) and maps list index -> our module path. ELM's ResBlock always
carries a 1x1 `conv_out`, used only where the width changes: there it is our `nin_shortcut`, elsewhere
it is dropped (it never touches the output).

GPT (llama/ar_model.py, llama/mlm_model.py): the trunk is LlamaGen's; `tok_embedder.{i}` (one table of 2^m rows per
sub-token), `proj` (Linear n*dim -> dim, no bias) and `output.{i}` map onto our SubTokenEmbedding /
SubTokenHeads; n = 1 files have a single `tok_embedder` and `output`. The 2D RoPE has LlamaGen's zero
prefix rows (rope2d, ELM's released setting), so the import uses `prefix_rope="zero"`.
ELM's masked models (1-m files) share one table of 2^m + 1 rows (the last is the mask token: our
`mask_embedding`) and predict through a tied head (`mlm_layer`: fc, GELU, LayerNorm, table^T + bias),
our `head="tied-mlm"`; the AR-style `output` they declare is absent from the files and unused.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from imagelm.compat.common import (LLAMA_TRUNK_RENAMES, CompatError, block_indices, build_and_load, float32,
                                   imported, read_file, rename_gpt_keys, unwrap)
from imagelm.compat.shapes import describe, infer_trunk
from imagelm.models import ARGenerator, MaskedGenerator
from imagelm.models.presets import GPTConfig
from imagelm.tokenizers.bae_elm import ELMBAEConfig, ELMBAEModel
from imagelm.vocab import TokenLayout

GPT_DOWNSAMPLE = 16      # ELM's generators model f16 BAE codes: 256 px -> 16 x 16 positions
DEFAULT_IMAGE_SIZE = 256  # ELM trains and samples at 256 px (sample.py's default)


# ---------------------------------------------------------------------------------------------- BAE

def _block_kinds(state: dict, prefix: str, src: str) -> list[str]:
    """What each entry of a flat `blocks` list is, read from its keys: conv, norm, res, attn, resample."""
    idx = block_indices(state, rf"{re.escape(prefix)}\.(\d+)\.")
    if idx != list(range(len(idx))) or not idx:
        raise CompatError(f"{src}: unknown layout, {prefix}.* is not a list 0..N")
    kinds = []
    for n in idx:
        p = f"{prefix}.{n}."
        if p + "norm1.weight" in state:
            kinds.append("res")
        elif p + "q.weight" in state:
            kinds.append("attn")
        elif p + "conv.weight" in state:
            kinds.append("resample")
        elif p + "weight" in state:
            kinds.append("conv" if state[p + "weight"].dim() == 4 else "norm")
        else:
            raise CompatError(f"{src}: unknown layout, {p}* is none of conv/norm/ResBlock/AttnBlock/resample")
    return kinds


def _split(kinds: list[str], sep: str, offset: int = 0) -> list[list[int]]:
    """Positions (+ offset) of kinds grouped into segments ended by `sep` (the separator excluded)."""
    segments, cur = [], []
    for i, k in enumerate(kinds, start=offset):
        if k == sep:
            segments.append(cur)
            cur = []
        else:
            cur.append(i)
    return segments + [cur]


def bae_config_from_state(state: dict, src: str, image_size: int | None) -> ELMBAEConfig:
    """ELMBAEConfig read off the weights' flat block lists (without the `ae.` prefix)."""
    enc = _block_kinds(state, "encoder.blocks", src)
    gen = _block_kinds(state, "generator.blocks", src)
    bad = CompatError(f"{src}: unknown layout, the encoder/generator block lists are not ELM's BinaryAutoEncoder")
    if enc[0] != "conv" or enc[-2:] != ["norm", "conv"] or enc[-5:-2] != ["res", "attn", "res"]:
        raise bad
    norm_first = gen[0] == "norm"
    start = 1 if norm_first else 0
    if gen[start:start + 4] != ["conv", "res", "attn", "res"] or gen[-2:] != ["norm", "conv"]:
        raise bad
    ch = state["encoder.blocks.0.weight"].shape[0]
    levels = _split(enc[:-5], "resample")
    levels[0] = levels[0][1:]                                       # drop conv_in
    res_counts = [sum(enc[i] == "res" for i in lv) for lv in levels]
    if len(set(res_counts)) != 1:
        raise bad
    outs = [state[f"encoder.blocks.{[i for i in lv if enc[i] == 'res'][-1]}.conv1.weight"].shape[0] for lv in levels]
    image_size = image_size or DEFAULT_IMAGE_SIZE
    attn = {image_size // 2 ** i for i, lv in enumerate(levels) if any(enc[j] == "attn" for j in lv)}
    dec_levels = _split(gen[start + 4:-2], "resample", offset=start + 4)
    grid = image_size // 2 ** (len(levels) - 1)
    attn |= {grid * 2 ** n for n, lv in enumerate(dec_levels) if any(gen[j] == "attn" for j in lv)}
    bits, z = state["quantize.embed.weight"].shape
    try:
        return ELMBAEConfig(image_size=image_size, ch=ch, ch_mult=tuple(o // ch for o in outs),
                            num_res_blocks=res_counts[0],
                            decoder_res_blocks=sum(gen[j] == "res" for j in dec_levels[0]),
                            z_channels=z, bits=bits, attn_resolutions=tuple(sorted(attn, reverse=True)),
                            norm_first=norm_first)
    except ValueError as e:
        raise CompatError(f"{src}: {e}") from None


def _elm_order(model: ELMBAEModel, part: str) -> list[str]:
    """Our module paths in the order ELM's flat `blocks` list holds them (encoder, or decoder=generator)."""
    net = getattr(model, part)
    paths = []
    if part == "decoder" and net.norm_in is not None:
        paths.append("decoder.norm_in")
    paths.append(f"{part}.conv_in")
    mid = [f"{part}.mid.{i}" for i in range(len(net.mid))]
    levels = []
    for i, level in enumerate(net.conv_blocks):
        for j in range(len(level.res)):
            levels.append(f"{part}.conv_blocks.{i}.res.{j}")
            if len(level.attn):
                levels.append(f"{part}.conv_blocks.{i}.attn.{j}")
        if level.resample is not None:
            levels.append(f"{part}.conv_blocks.{i}.resample")
    paths += levels + mid if part == "encoder" else mid + levels
    return paths + [f"{part}.norm_out", f"{part}.conv_out"]


def _bae_renames(state: dict, model: ELMBAEModel, src: str) -> dict[str, str | None]:
    """ELM key (no `ae.`) -> our key, or None for weights that never reach the output."""
    orders = {"encoder": _elm_order(model, "encoder"), "generator": _elm_order(model, "decoder")}
    out = {}
    for k, v in state.items():
        m = re.match(r"(encoder|generator)\.blocks\.(\d+)\.(.+)", k)
        if m:
            part, n, rest = m.group(1), int(m.group(2)), m.group(3)
            if n >= len(orders[part]):
                raise CompatError(f"{src}: unknown layout, {k} lies beyond the {len(orders[part])} blocks expected")
            if rest.startswith("conv_out."):       # a ResBlock's 1x1 shortcut
                conv1 = state.get(f"{part}.blocks.{n}.conv1.weight")
                if conv1 is None:
                    raise CompatError(f"{src}: unknown layout, ae.{k} belongs to no ResBlock")
                out[k] = f"{orders[part][n]}.nin_shortcut.{rest[9:]}" if conv1.shape[0] != conv1.shape[1] else None
            else:
                out[k] = f"{orders[part][n]}.{rest}"
        elif k.startswith("generator.logsigma."):
            out[k] = None                          # ELBO head, fine-tuned separately, unused by decode
        elif k == "quantize.proj.0.weight" or k == "quantize.proj.0.bias":
            out[k] = "quantize.proj." + k.rsplit(".", 1)[1]
        else:
            out[k] = k
    return out


def load_elm_bae(path, image_size: int | None = None, bits: int | None = None) -> ELMBAEModel:
    """ELM's `binaryae_ema.th` -> our ELMBAEModel in eval mode (float32, CPU).

    encode(images [B, 3, H, W] in [-1, 1]) -> bits [B, H/16, W/16, D]; decode(bits) -> images in [-1, 1]
    (ELM's [0, 1] output, converted). bits, if given, must match the file's D (e.g. 16, 20, 24).
    """
    src = str(path)
    raw = read_file(path)
    wrapped = [raw[k] for k in ("model", "state_dict", "module", "ema") if isinstance(raw.get(k), dict)]
    raw = wrapped[0] if wrapped else raw      # ELM saves it bare; accept the usual wrappers too
    if any(k.startswith("ae.") for k in raw):
        state = {k[3:]: v for k, v in raw.items() if k.startswith("ae.")}   # disc./perceptual. dropped
    else:
        state = dict(raw)
    if "quantize.embed.weight" not in state or not isinstance(state["quantize.embed.weight"], torch.Tensor):
        raise CompatError(f"{src}: not an ELM binary autoencoder (no ae.quantize.embed.weight)")
    config = bae_config_from_state(state, src, image_size)
    if bits is not None and bits != config.bits:
        shape = tuple(state["quantize.embed.weight"].shape)
        raise CompatError(f"{src} does not fit {bits} bits: ae.quantize.embed.weight is {shape} in the file "
                          f"but ({bits}, {config.z_channels})")
    with torch.device("meta"):
        skeleton = ELMBAEModel(config)
    renames = _bae_renames(state, skeleton, src)
    ours = {renames[k]: v for k, v in float32(state).items() if renames[k] is not None}
    source_name = {v: "ae." + k for k, v in renames.items() if v is not None}
    model = build_and_load(lambda: ELMBAEModel(config), ours, source_name, src, f"an ELM BAE of {config.bits} bits")
    model.meta = {"kind": "bae-elm", "config": config.to_dict(), "preset": f"elm-bae-{config.bits}",
                  "class_names": [], **imported("elm-bae", path)}
    return model


# ---------------------------------------------------------------------------------------------- GPT

_GPT_RENAMES = {
    **LLAMA_TRUNK_RENAMES,
    "tok_embedder.weight": "tok_embeddings.table.weight",
    "proj.weight": "tok_embeddings.proj.weight",
}
_GPT_PATTERNS = ((r"tok_embedder\.(\d+)\.weight", r"tok_embeddings.tables.\1.weight"),
                 (r"output\.(\d+)\.weight", r"output.heads.\1.weight"))


def _gpt_renames(state: dict) -> dict[str, str]:
    """ELM GPT key -> our generator key (n-m vocabularies: one table and one head per sub-token)."""
    return rename_gpt_keys(state, _GPT_RENAMES, _GPT_PATTERNS)


def elm_gpt_config(state: dict, src: str, preset: str | None, image_size: int | None,
                   n_head: int | None = None) -> tuple[GPTConfig, str | None]:
    """Our GPTConfig for ELM AR or MLM weights -> (config, preset name, or None for a size no preset has).

    n-m vocabulary read from the tables; the trunk from the preset when given (then checked against the
    weights), else from the weights (compat/shapes.py; heads of 64 channels, as in every ELM release,
    unless a preset of that width and depth or n_head says otherwise)."""
    mlm = "mlm_layer.fc.weight" in state
    if mlm and ("proj.weight" in state or "tok_embedder.weight" not in state):
        raise CompatError(f"{src} is an ELM masked model with several sub-tokens per position (each its own "
                          f"sequence element); imagelm imports ELM's MLMs with one token per position (1-m) only")
    if mlm and "pos_embed" in state:
        raise CompatError(f"{src} is an ELM masked model with sin-cos absolute positions (pos_embed); only its "
                          f"rope2d models import")
    if mlm:        # one table of 2^m code rows plus the mask token's row
        n, (vocab, dim) = 1, state["tok_embedder.weight"].shape
        vocab -= 1
    elif "tok_embedder.weight" in state:
        n, vocab, dim = 1, *state["tok_embedder.weight"].shape
    else:
        tables = block_indices(state, r"tok_embedder\.(\d+)\.weight")
        if not tables:
            raise CompatError(f"{src}: not an ELM generator (no tok_embedder)")
        n, (vocab, dim) = len(tables), state["tok_embedder.0.weight"].shape
    m = int(round(math.log2(vocab)))
    if 2 ** m != vocab:
        raise CompatError(f"{src}: tok_embedder has {vocab} rows, not 2^m for an m-bit sub-token")
    if "cls_embedding.embedding_table.weight" not in state:
        raise CompatError(f"{src}: unknown layout (no cls_embedding.embedding_table)")
    trunk, name = infer_trunk(state, dim, src, preset, n_head)
    image_size = image_size or DEFAULT_IMAGE_SIZE
    try:
        config = GPTConfig(**trunk, vocab_size=vocab, num_subtokens=n, grid_size=image_size // GPT_DOWNSAMPLE,
                           prefix_rope="zero", head="tied-mlm" if mlm else "linear",
                           num_classes=state["cls_embedding.embedding_table.weight"].shape[0] - 1)
    except ValueError as e:
        raise CompatError(f"{src}: {describe(trunk, name)}: {e}") from None
    return config, name


def _mlm_state(state: dict, vocab: int) -> tuple[dict, dict]:
    """ELM MLM weights -> (our MaskedGenerator state, our key -> their key). The shared table's last row is
    the mask token; the head's bias loses its mask-token column, which ELM cuts from the logits anyway."""
    # Declared by ELM's MLM but never used by its forward: the AR-style heads and the frozen pos_embed.
    state = {k: v for k, v in state.items() if not k.startswith("output") and k != "pos_embed.weight"}
    renames = _gpt_renames({k: v for k, v in state.items() if not k.startswith(("tok_embedder", "mlm_layer"))})
    ours = {renames[k]: v for k, v in state.items() if k in renames}
    table = state["tok_embedder.weight"]
    # Copies, not views: two tensors sharing one storage cannot be saved side by side (safetensors).
    ours["tok_embeddings.table.weight"], ours["mask_embedding"] = table[:vocab].clone(), table[vocab].clone()
    names = {v: k for k, v in renames.items()}
    names.update({"tok_embeddings.table.weight": "tok_embedder.weight", "mask_embedding": "tok_embedder.weight"})
    for theirs, mine in (("fc.weight", "fc.weight"), ("fc.bias", "fc.bias"), ("ln.weight", "norm.weight"),
                         ("ln.bias", "norm.bias")):
        if "mlm_layer." + theirs in state:
            ours["output." + mine], names["output." + mine] = state["mlm_layer." + theirs], "mlm_layer." + theirs
    if "mlm_layer.bias" in state:
        ours["output.bias"], names["output.bias"] = state["mlm_layer.bias"].reshape(-1)[:vocab], "mlm_layer.bias"
    extra = [k for k in state if k.startswith("mlm_layer.") and k[10:] not in ("fc.weight", "fc.bias", "ln.weight",
                                                                                "ln.bias", "bias")]
    for k in extra:
        ours[k] = state[k]          # refused by the shape check as having no place
    return ours, names


def load_elm_gpt(path, preset: str | None = None, image_size: int | None = None, n_head: int | None = None):
    """An ELM generator -> our ARGenerator (AR files, `L-2-10.pth`, ...) or MaskedGenerator (MLM files,
    `mlmL-1-16.pth`), in eval mode (float32, CPU).

    AR: forward(tokens [B, L, n], cond [B]) -> logits [B, L, n, 2^m], ELM's teacher-forced logits, one head
    per sub-token. MLM: forward(tokens, cond, mask [B, L]) -> logits [B, L, 1, 2^m] through ELM's tied head.
    preset: e.g. "GPT-L", checked against the weights (default: the shape read from the weights, any size;
    n_head: the head count, default that of a preset of this width and depth, else width / 64);
    image_size default 256.
    """
    src = str(path)
    state = float32(unwrap(read_file(path), src, "cls_embedding.embedding_table.weight"))
    config, name = elm_gpt_config(state, src, preset, image_size, n_head)
    m = int(math.log2(config.vocab_size))
    what = f"{describe(config.to_dict(), name)} with {config.num_subtokens}-{m} tokens"
    if config.head == "tied-mlm":
        ours, names = _mlm_state(state, config.vocab_size)
        model = build_and_load(lambda: MaskedGenerator(config), ours, names, src, what)
    else:
        renames = _gpt_renames(state)
        ours = {renames[k]: v for k, v in state.items()}
        model = build_and_load(lambda: ARGenerator(config), ours, {v: k for k, v in renames.items()}, src, what)
    bits = config.num_subtokens * int(math.log2(config.vocab_size))
    model.meta = {"kind": model.kind, "config": config.to_dict(), "preset": name, "class_names": [], "tokenizer": None,
                  "layout": TokenLayout.binary(config.grid_size, bits, config.num_subtokens).to_dict(),
                  "text_encoder": None, **imported("elm-gpt", path)}
    return model
