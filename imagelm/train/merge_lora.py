"""`imagelm export merge-lora CKPT OUT_DIR`: a LoRA run's checkpoint (adapters beside the base weights)
-> a plain generator checkpoint whose linears hold W + (alpha / r) B A, for sharing, exporting to
LlamaGen, or starting the next `--init` from."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

from imagelm import checkpoint
from imagelm.models import GPTConfig, build_generator
from imagelm.models.lora import LoRAConfig, apply_lora, merge_lora


def _merged(meta: dict, state: dict) -> dict:
    model = build_generator(GPTConfig(**meta["config"]), meta["kind"])
    apply_lora(model, LoRAConfig(**meta["lora"]))
    checkpoint.load_state_strict(model, state, meta["path"])
    return merge_lora(model).state_dict()


def merge_lora_checkpoint(src, out_dir) -> Path:
    """Merge the adapters of the LoRA checkpoint at (or newest under) `src` into its weights (model and
    EMA alike) and write `out_dir`: config.json (without the LoRA entry) and model/ema.safetensors.
    Atomic; a one-line ValueError when `src` has no adapters or `out_dir` exists."""
    ckpt = checkpoint.resolve(src)
    meta = checkpoint.read_meta(ckpt)
    checkpoint.expect_kind(meta, ("ar", "mlm"), "generator")
    if not meta.get("lora"):
        raise ValueError(f"{ckpt} has no LoRA adapters (it was not trained with --lora-rank): nothing to merge")
    out = Path(out_dir)
    if out.exists():
        raise ValueError(f"{out} already exists; choose a new output directory")
    record = {k: v for k, v in meta.items() if k not in ("path", "lora")}
    record["merged_lora"] = {"from": str(ckpt.resolve()), **meta["lora"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / "config.json").write_text(json.dumps(record, indent=2))
        save_file(_merged(meta, checkpoint.load_weights(ckpt, prefer_ema=False)), str(tmp / "model.safetensors"))
        if checkpoint.has_ema(ckpt):
            save_file(_merged(meta, checkpoint.load_weights(ckpt, prefer_ema=True)), str(tmp / "ema.safetensors"))
        checkpoint.publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
