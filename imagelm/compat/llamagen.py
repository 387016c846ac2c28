"""LlamaGen (FoundationVision/LlamaGen) checkpoints <-> our modules: the one place that knows their keys.

GPT (autoregressive/models/gpt.py): the trunk maps one to one onto ours (same fused wqkv with q, k, v
rows, SwiGLU w1/w2/w3, RMSNorms); only the outer names move. Two behaviours are kept exactly:
- 2D RoPE with LlamaGen's all-zero table rows at the condition prefix (our `prefix_rope="zero"`), which
  zero the prefix's queries and keys;
- the text models' caption MLP has no biases (ours has, imported as zeros), and its null caption
  (`uncond_embedding`) is [120, C] whatever the prefix length, sliced to the prefix after projection;
  its sampler masks the null caption with the caption's own padding mask (our `null_caption_mask="same"`).
VQ (tokenizer/tokenizer_image/vq_model.py): our VQModel uses the same module tree; the per-level
`downsample`/`upsample` become our `resample`, and the training-only `codebook_used` buffer is dropped.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from imagelm.atomic import atomic_file
from imagelm.compat.common import (LLAMA_TRUNK_RENAMES, CompatError, block_indices, build_and_load, float32,
                                   imported, read_file, rename_gpt_keys, unwrap)
from imagelm.compat.shapes import describe, infer_trunk
from imagelm.models import ARGenerator
from imagelm.models.presets import GPT_PRESETS, GPTConfig
from imagelm.tokenizers.vq import VQ_PRESETS, VQConfig, VQModel

# Tokens per side = image size / 16: LlamaGen's GPTs all model VQ-16 codes.
GPT_DOWNSAMPLE = 16
# LlamaGen's CaptionEmbedder always holds a 120-token null caption (its token_num default).
T2I_NULL_TOKENS = 120


# ---------------------------------------------------------------------------------------------- GPT

_GPT_RENAMES = {
    **LLAMA_TRUNK_RENAMES,
    "tok_embeddings.weight": "tok_embeddings.table.weight",
    "cls_embedding.cap_proj.fc1.weight": "cond_embedder.mlp.0.weight",
    "cls_embedding.cap_proj.fc2.weight": "cond_embedder.mlp.2.weight",
    "cls_embedding.uncond_embedding": "cond_embedder.null_caption",
}


def _gpt_renames(state: dict) -> dict[str, str]:
    """LlamaGen GPT key -> our ARGenerator key, for every key we import (others are refused later)."""
    return rename_gpt_keys(state, _GPT_RENAMES)


def _ignored_gpt_key(k: str) -> bool:
    # RoPE tables and KV caches are recomputed, never imported (older saves may carry them).
    return k == "freqs_cis" or k == "causal_mask" or ".kv_cache." in k


def image_size_from_name(path) -> int | None:
    """LlamaGen names its files by resolution (c2i_L_384.pt, t2i_XL_stage1_256.pt): that number, or None."""
    m = re.search(r"_(\d+)\.[^.]+$", Path(path).name)        # the number just before the extension
    return int(m.group(1)) if m and int(m.group(1)) % GPT_DOWNSAMPLE == 0 else None


def gpt_config_from_state(state: dict, src: str, preset: str | None, image_size: int | None,
                          path=None, n_head: int | None = None) -> tuple[GPTConfig, str | None]:
    """Our GPTConfig for LlamaGen GPT weights -> (config, preset name, or None for a size no preset has).

    The trunk shape comes from the preset when one is given (and is then checked against the weights),
    else from the weights themselves (compat/shapes.py: depth, heads, key/value heads, SwiGLU width);
    vocabulary, classes and the caption setting come from the weights; the grid from image_size (given,
    or read from the file name).
    """
    if "tok_embeddings.weight" not in state:
        raise CompatError(f"{src}: not a LlamaGen GPT (no tok_embeddings.weight)")
    vocab, dim = state["tok_embeddings.weight"].shape
    trunk, name = infer_trunk(state, dim, src, preset, n_head)
    image_size = image_size or (image_size_from_name(path) if path is not None else None)
    if image_size is None:
        raise CompatError(f"{src}: the image size is not stored in LlamaGen files; pass --image-size (256 or 384)")
    if image_size % GPT_DOWNSAMPLE:
        raise CompatError(f"image size {image_size} is not a multiple of {GPT_DOWNSAMPLE}")
    p = GPT_PRESETS[name] if name is not None else {}
    fields = dict(**trunk, vocab_size=vocab, grid_size=image_size // GPT_DOWNSAMPLE, prefix_rope="zero")
    if "cls_embedding.embedding_table.weight" in state:
        fields.update(cond="class", cls_token_num=1,
                      num_classes=state["cls_embedding.embedding_table.weight"].shape[0] - 1)
    elif "cls_embedding.cap_proj.fc1.weight" in state:
        caption_dim = state["cls_embedding.cap_proj.fc1.weight"].shape[1]
        fields.update(cond="text", cls_token_num=p.get("cls_token_num", T2I_NULL_TOKENS), caption_dim=caption_dim,
                      null_caption_mask="same")
    else:
        raise CompatError(f"{src}: unknown layout (neither cls_embedding.embedding_table nor cls_embedding.cap_proj)")
    try:
        return GPTConfig(**fields), name
    except ValueError as e:
        raise CompatError(f"{src}: {describe(trunk, name)}: {e}") from None


def gpt_from_state(state: dict, config: GPTConfig, src: str, what: str) -> ARGenerator:
    """LlamaGen GPT weights -> our ARGenerator (eval mode). Shapes are checked first, in one line."""
    state = {k: v for k, v in state.items() if not _ignored_gpt_key(k)}
    renames = _gpt_renames(state)
    ours = {renames[k]: v for k, v in float32(state).items()}
    if config.cond == "text":
        null = ours.get("cond_embedder.null_caption")
        if null is not None and null.shape[0] >= config.cls_token_num:
            # Their null caption is projected, then cut to the prefix: the same as cutting it first.
            ours["cond_embedder.null_caption"] = null[:config.cls_token_num]
        for i in (0, 2):   # their caption MLP has no biases
            w = ours.get(f"cond_embedder.mlp.{i}.weight")
            if w is not None:
                ours[f"cond_embedder.mlp.{i}.bias"] = torch.zeros(w.shape[0])
    source_name = {v: k for k, v in renames.items()}
    return build_and_load(lambda: ARGenerator(config), ours, source_name, src, what)


def load_llamagen_gpt(path, preset: str | None = None, image_size: int | None = None,
                      use_ema: bool = False, n_head: int | None = None) -> ARGenerator:
    """A LlamaGen GPT checkpoint (c2i or t2i) -> our ARGenerator in eval mode, float32 on CPU.

    preset: e.g. "GPT-L", checked against the weights (default: the shape is read from the weights, any
    size; n_head: the head count when no preset of that width and depth says it, default width / 64);
    image_size: 256, 384, ...
    (default: from the file name, e.g. c2i_L_384.pt). The model's `forward(tokens [B, L], cond) ->
    logits [B, L, V]` gives LlamaGen's teacher-forced logits. `.meta` holds the config.json to save.
    """
    src = str(path)
    state = unwrap(read_file(path), src, "tok_embeddings.weight", use_ema)
    config, name = gpt_config_from_state(state, src, preset, image_size, path, n_head)
    what = f"{describe(config.to_dict(), name)} at {config.grid_size}x{config.grid_size}"
    model = gpt_from_state(state, config, src, what)
    model.meta = {"kind": "ar", "config": config.to_dict(), "preset": name, "layout": None,
                  "class_names": [], "tokenizer": None, "text_encoder": None,
                  **imported("llamagen-gpt", path)}
    return model


def export_llamagen_gpt(model: ARGenerator, out, force: bool = False) -> Path:
    """Our AR generator -> a LlamaGen `.pt` ({"model": state_dict}) that its GPT_models[...] load_state_dict
    accepts (strictly). Written atomically. Refused when the model cannot be expressed in LlamaGen's layout
    (sub-tokens, caption MLP biases, a null caption not 120 tokens long); a model trained with our identity
    prefix RoPE would compute differently there (LlamaGen zeroes the prefix's q/k), so it needs force=True.
    """
    c = model.config
    if model.kind != "ar":
        raise CompatError(f"only autoregressive generators export to LlamaGen, not {model.kind!r}")
    if c.num_subtokens != 1:
        raise CompatError(f"LlamaGen has one token per position; this model has {c.num_subtokens} sub-tokens")
    if c.prefix_rope != "zero" and not force:
        raise CompatError("this model rotates its prefix by the identity, LlamaGen zeroes the prefix's queries "
                          "and keys: its outputs would differ there (pass --force to export anyway)")
    ours = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    back = {}
    for k, v in ours.items():
        if k.startswith("trunk.layers."):
            back[k[len("trunk."):]] = v
        elif k == "trunk.norm.weight":
            back["norm.weight"] = v
        elif k == "tok_embeddings.table.weight":
            back["tok_embeddings.weight"] = v
        elif k == "output.heads.0.weight":
            back["output.weight"] = v
        elif k == "cond_embedder.embedding_table.weight":
            back["cls_embedding.embedding_table.weight"] = v
        elif k in ("cond_embedder.mlp.0.weight", "cond_embedder.mlp.2.weight"):
            back[f"cls_embedding.cap_proj.fc{1 if '.0.' in k else 2}.weight"] = v
        elif k in ("cond_embedder.mlp.0.bias", "cond_embedder.mlp.2.bias"):
            if v.abs().max() > 0:
                raise CompatError(f"LlamaGen's caption MLP has no biases, but this model's {k} is not zero")
        elif k == "cond_embedder.null_caption":
            if v.shape[0] != T2I_NULL_TOKENS:
                raise CompatError(f"LlamaGen's null caption has {T2I_NULL_TOKENS} tokens; "
                                  f"this model's has {v.shape[0]}")
            back["cls_embedding.uncond_embedding"] = v
        else:
            raise CompatError(f"{k} has no place in LlamaGen's GPT")
    out = Path(out)
    with atomic_file(out) as f:
        torch.save({"model": back}, f)
    return out


# ----------------------------------------------------------------------------------------------- VQ

def _vq_rename(k: str) -> str:
    return re.sub(r"\.(downsample|upsample)\.", ".resample.", k)


def vq_config_from_state(state: dict, src: str, preset: str | None, image_size: int | None) -> tuple[VQConfig, str]:
    """Our VQConfig for LlamaGen VQ weights -> (config, preset name). With a preset, its shape is used
    (and checked against the weights later); without one, every shape is read from the weights."""
    if "quantize.embedding.weight" not in state or "encoder.conv_in.weight" not in state:
        raise CompatError(f"{src}: not a LlamaGen VQ (no quantize.embedding / encoder.conv_in)")
    if preset is not None:
        if preset not in VQ_PRESETS:
            raise CompatError(f"unknown VQ preset {preset!r}; choose one of {', '.join(VQ_PRESETS)}")
        fields, name = dict(VQ_PRESETS[preset]), preset
    else:
        levels = block_indices(state, r"encoder\.conv_blocks\.(\d+)\.")
        ch = state["encoder.conv_in.weight"].shape[0]
        outs = [state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] for i in levels]
        size, code_dim = state["quantize.embedding.weight"].shape
        fields = dict(ch=ch, ch_mult=tuple(o // ch for o in outs), codebook_size=size, code_dim=code_dim,
                      num_res_blocks=len(block_indices(state, r"encoder\.conv_blocks\.0\.res\.(\d+)\.")),
                      z_channels=state["quant_conv.weight"].shape[1] if "quant_conv.weight" in state else 256,
                      attn=any(".attn." in k or k.startswith("encoder.mid.1.") for k in state))
        name = {(1, 1, 2, 2, 4): "VQ-16", (1, 2, 2, 4): "VQ-8"}.get(fields["ch_mult"], "llamagen-vq")
    fields["image_size"] = image_size or 256     # LlamaGen's ImageNet resolution; only codes_shape depends on it
    try:
        return VQConfig(**fields), name
    except ValueError as e:
        raise CompatError(f"{src}: preset {name}: {e}") from None


def load_llamagen_vq(path, preset: str | None = None, image_size: int | None = None,
                     use_ema: bool = False) -> VQModel:
    """A LlamaGen VQ checkpoint (vq_ds16_c2i.pt, vq_ds8_c2i.pt, ...) -> our VQModel in eval mode.

    encode(images [B, 3, H, W] in [-1, 1]) -> codes [B, H/f, W/f]; decode(codes) -> images in [-1, 1]
    (LlamaGen's decoder output, clamped). image_size sets only `codes_shape` (the nets are convolutional).
    """
    src = str(path)
    state = unwrap(read_file(path), src, "quantize.embedding.weight", use_ema)
    state = {k: v for k, v in state.items() if k != "quantize.codebook_used"}   # training statistics
    config, name = vq_config_from_state(state, src, preset, image_size)
    renames = {k: _vq_rename(k) for k in state}
    ours = {renames[k]: v for k, v in float32(state).items()}
    model = build_and_load(lambda: VQModel(config), ours, {v: k for k, v in renames.items()}, src, f"preset {name}")
    model.meta = {"kind": "vq", "config": config.to_dict(), "preset": name, "class_names": [],
                  **imported("llamagen-vq", path)}
    return model
