"""`imagelm export merge-lora CKPT OUT_DIR`: a LoRA run's checkpoint (adapters beside the base weights)
-> a plain generator checkpoint whose linears hold W + (alpha / r) B A, for sharing, exporting to
LlamaGen, or starting the next `--init` from."""
from __future__ import annotations

from pathlib import Path

from imagelm import checkpoint
from imagelm.models import GPTConfig, build_generator
from imagelm.models.lora import LoRAConfig, apply_lora, merge_lora


def _merged(meta: checkpoint.CheckpointMeta, state: dict) -> dict:
    model = build_generator(meta.config_as(GPTConfig), meta.kind)
    apply_lora(model, LoRAConfig(**meta.extra["lora"]))
    checkpoint.load_state_strict(model, state, str(meta.path))
    return merge_lora(model).state_dict()


def merge_lora_checkpoint(src, out_dir) -> Path:
    """Merge the adapters of the LoRA checkpoint at (or newest under) `src` into its weights (model and
    EMA alike) and write `out_dir`: config.json (without the LoRA entry) and model/ema.safetensors.
    Atomic; a one-line error when `src` has no adapters or `out_dir` exists."""
    ckpt = checkpoint.resolve(src)
    meta = checkpoint.read_meta(ckpt)
    checkpoint.expect_kind(meta, ("ar", "mlm"), "generator")
    if not meta.extra.get("lora"):
        raise ValueError(f"{ckpt} has no LoRA adapters (it was not trained with --lora-rank): nothing to merge")
    extra = {k: v for k, v in meta.extra.items() if k != "lora"}
    record = meta.replace(extra={**extra, "merged_lora": {"from": str(ckpt.resolve()), **meta.extra["lora"]}})
    ema = _merged(meta, checkpoint.load_weights(ckpt, prefer_ema=True)) if checkpoint.has_ema(ckpt) else None
    return checkpoint.save_dir(out_dir, record, _merged(meta, checkpoint.load_weights(ckpt, prefer_ema=False)), ema)
