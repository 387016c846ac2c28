"""Sample many images for evaluation: batched, resumable, split over torchrun processes.

    imagelm sample-many --ckpt runs/gpt --n 50000 --out samples.npz
    torchrun --nproc-per-node 4 -m imagelm.cli -- sample-many --ckpt runs/gpt --n 50000 --out samples.npz

(Under torchrun, `--` ends torchrun's own options: it would otherwise take `--n` for an
abbreviation of its `--nnodes`/`--nproc-per-node` and stop.)

Image i has class classes[i % len(classes)] (all classes by default, so they are evenly spread).
The images are made in fixed chunks of `batch_size` indices; chunk c is sampled from its own seed
(a function of --seed and c alone), so the same checkpoint, n, batch size, seed and options give the
same file whatever the number of processes and however often the run was interrupted. Process r of
W takes the chunks c with c % W == r. Each finished chunk is written atomically to `OUT.parts/`; a
rerun skips those. When all are there, rank 0 streams them into the ADM-style batch file: `arr_0`
uint8 [N, H, W, 3] and `arr_1` int64 [N] class labels, written to a temporary file and renamed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imagelm import runtime
from imagelm.atomic import atomic_file
from imagelm.eval.fid import open_npz, write_npz_atomic
from imagelm.images import Sampler, generate_images, resolve_classes, resolve_sampler
from imagelm.models import load_generator
from imagelm.tokenizers import load_linked_tokenizer, load_tokenizer


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of chunk `chunk` (independent of who samples it, and when)."""
    return (seed * 1_000_003 + chunk * 7_919 + 12_345) % (2 ** 62)


def sample_many(ckpt, n: int, out, batch_size: int = 32, classes=None, sampler: Sampler = Sampler(),
                seed: int = 0, tokenizer=None, device: str | None = None, progress: bool = True) -> Path | None:
    """Sample n images from the generator at `ckpt` into `out` (.npz with arr_0 uint8 [n, H, W, 3],
    arr_1 labels [n]). Returns `out`, or None on ranks other than 0 / when chunks are still missing."""
    from imagelm.data.transforms import to_uint8
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    if out.exists() and not parts.exists():
        raise ValueError(f"{out} already exists; remove it or choose another --out")
    rt = runtime.setup_runtime(device)
    try:
        gen = load_generator(ckpt, rt.device)
        tok = load_tokenizer(tokenizer, rt.device) if tokenizer else load_linked_tokenizer(gen.meta, rt.device)
        ids = resolve_classes(list(classes) if classes else list(range(gen.config.num_classes)),
                              gen.meta.class_names, gen.config.num_classes)
        labels = np.array([ids[i % len(ids)] for i in range(n)], dtype=np.int64)
        # The options as run (an import's conventions resolved): a resume compares what sampled.
        sampler = resolve_sampler(gen, sampler)
        if sampler.engine == "engine" and gen.kind == "ar":
            # Record what auto means here: a resumed run on another machine must not switch dtypes.
            sampler = dataclasses.replace(sampler, dtype=runtime.choose_sampling_dtype(rt.device, sampler.dtype)[0])
        o = sampler.options
        plan = {"ckpt": str(gen.meta.path), "n": n, "batch_size": batch_size, "seed": seed, "classes": ids,
                "cfg_scale": o.cfg_scale, "cfg_schedule": o.cfg_schedule, "cfg_interval": o.cfg_interval,
                "temperature": o.temperature, "top_k": o.top_k, "top_p": o.top_p, "engine": sampler.engine,
                "dtype": sampler.dtype, "steps": sampler.steps,
                # only Jacobi runs record the decoding, so plans written before it existed still resume
                **({"decode": "jacobi", "window": sampler.window} if sampler.decode == "jacobi" else {}),
                **({"cfg_power": o.cfg_power} if o.cfg_power != 1.0 else {}),
                **({"remask": sampler.remask, "choice_temperature": sampler.choice_temperature}
                   if (sampler.remask, sampler.choice_temperature) != ("rank", 4.5) else {})}
        if rt.is_main:
            _start_or_check(parts, plan)
        runtime.barrier(rt)
        if not rt.is_main:
            _start_or_check(parts, plan)
        num_chunks = math.ceil(n / batch_size)
        mine = [c for c in range(rt.rank, num_chunks, rt.world_size) if not _chunk_path(parts, c).exists()]
        rt.print(f"sample-many: {n} images in {num_chunks} chunks of {batch_size}; "
                 f"{len(mine)} to sample on this process (of {rt.world_size})")
        for c in tqdm(mine, desc="sample-many", unit="chunk", disable=not (progress and rt.is_main)):
            cond = torch.from_numpy(labels[c * batch_size:(c + 1) * batch_size])
            images = to_uint8(generate_images(gen, cond, tok, 1, sampler, chunk_seed(seed, c)).images)  # [b, H, W, 3]
            write_npz_atomic(_chunk_path(parts, c), arr_0=images, arr_1=cond.numpy())
        runtime.barrier(rt)
        if not rt.is_main:
            return None
        missing = [c for c in range(num_chunks) if not _chunk_path(parts, c).exists()]
        if missing:
            print(f"sample-many: {len(missing)} of {num_chunks} chunks still missing in {parts} "
                  f"(other processes not finished); rerun to assemble {out}")
            return None
        _assemble(parts, num_chunks, n, out)
        shutil.rmtree(parts, ignore_errors=True)
        return out
    finally:
        runtime.cleanup_runtime(rt)


def _chunk_path(parts: Path, c: int) -> Path:
    return parts / f"chunk-{c:06d}.npz"


def _start_or_check(parts: Path, plan: dict) -> None:
    """Record the plan of a new run in parts/plan.json, or check that a resumed run matches it."""
    file = parts / "plan.json"
    if file.is_file():
        try:
            old = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{file}: unreadable ({e}); remove {parts} to start over") from None
        changed = [k for k in plan if old.get(k) != plan[k]]
        if changed:
            raise ValueError(f"{file}: a run with other settings ({', '.join(changed)}) is in progress here; "
                             f"rerun with the same settings, or remove {parts} to start over")
        return
    with atomic_file(file) as f:
        f.write(json.dumps(plan, indent=2).encode())


def _assemble(parts: Path, num_chunks: int, n: int, out: Path) -> None:
    """Stream the chunk files into one .npz (arr_0, arr_1) without holding all images in memory."""
    first = open_npz(_chunk_path(parts, 0))["arr_0"]
    shape = (n,) + first.shape[1:]
    labels = []
    with atomic_file(out) as target, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                    "shape": shape})
            for c in range(num_chunks):
                chunk = open_npz(_chunk_path(parts, c))
                if chunk["arr_0"].shape[1:] != shape[1:]:
                    raise ValueError(f"{_chunk_path(parts, c)}: images {chunk['arr_0'].shape[1:]} differ "
                                     f"from chunk 0's {shape[1:]}; remove {parts} to start over")
                f.write(np.ascontiguousarray(chunk["arr_0"]).tobytes())
                labels.append(chunk["arr_1"])
        with zf.open("arr_1.npy", "w") as f:
            np.lib.format.write_array(f, np.concatenate(labels).astype(np.int64))
