"""Generator training throughput: one process vs DDP over 2 processes, for `tiny` and GPT-B.

Each configuration is a real `imagelm train` run (the same loop users run) on random codes of the
right shape (speed does not depend on the token values), with --log-every 1: every step's
tokens/s is measured by the loop (device synchronised at both ends, checkpoint and preview time
excluded) and written to metrics.jsonl. The first `--warmup` steps are excluded; the report is
total tokens / total time over the remaining steps, and the DDP/single ratio, all from this run.
Single uses all cores in one process; DDP runs 2 processes of cores/2 threads each (torchrun's
environment, gloo on CPU), with the same global batch.

    python benchmarks/bench_train.py                    # tiny + GPT-B on CPU, a few minutes
    python benchmarks/bench_train.py --presets tiny --steps 10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# preset -> (grid, vocab, global batch): GPT-B at LlamaGen's 256px / f16 = 16x16 tokens, 16384 codes.
SHAPES = {"tiny": (8, 512, 32), "GPT-B": (16, 16384, 4)}


def write_random_codes(out: Path, items: int, grid: int, vocab: int, classes: int = 10, seed: int = 0) -> Path:
    """A codes directory (see imagelm/data/codes.py) of random tokens uint16 [items, 1, grid*grid, 1]."""
    from imagelm.vocab import TokenLayout
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "tokens_00000.npy", rng.integers(0, vocab, (items, 1, grid * grid, 1), dtype=np.uint16))
    np.save(out / "labels_00000.npy", rng.integers(0, classes, items).astype(np.int64))
    manifest = {"tokenizer": {"path": None, "kind": "vq", "preset": None, "config": {}},
                "layout": TokenLayout(grid, vocab).to_dict(), "class_names": [f"c{i}" for i in range(classes)],
                "num_items": items, "views": 1, "text": None,
                "shards": [{"count": items, "tokens": "tokens_00000.npy", "labels": "labels_00000.npy"}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(preset: str, codes: Path, out: Path, world: int, steps: int, batch: int, threads: int,
        precision: str, device: str) -> list[dict]:
    """One `imagelm train` run on `world` processes; returns its metrics.jsonl records."""
    argv = [sys.executable, "-m", "imagelm.cli", "train", "--codes", str(codes), "--out", str(out),
            "--preset", preset, "--steps", str(steps), "--batch-size", str(batch), "--log-every", "1",
            "--warmup", "0", "--ckpt-every", str(10 ** 9), "--preview-every", "0", "--precision", precision,
            "--device", device]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL if rank else None))
    if any(p.wait() for p in procs):
        raise SystemExit(f"{preset} on {world} process(es) failed")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tokens_per_s(records: list[dict], warmup: int) -> float:
    """Total tokens / total seconds over the steps after the first `warmup` (log_every is 1)."""
    timed = [r for r in records if r["step"] > warmup]
    tokens = sum(r["tokens_per_s"] * r["seconds"] for r in timed)
    return tokens / sum(r["seconds"] for r in timed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: tiny 12, GPT-B 5)")
    p.add_argument("--warmup", type=int, default=2, help="first steps excluded from the timing")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    print(f"CPU: {cpu_model()}, {cores} cores; precision {args.precision}; warm-up {args.warmup} steps excluded")
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            grid, vocab, batch = SHAPES[preset]
            steps = args.steps or (12 if preset == "tiny" else 5)
            codes = write_random_codes(Path(tmp) / f"codes-{preset}", 256, grid, vocab)
            speeds = {}
            for world in (1, 2):
                records = run(preset, codes, Path(tmp) / f"{preset}-{world}", world, steps, batch,
                              max(1, cores // world), args.precision, args.device)
                speeds[world] = tokens_per_s(records, args.warmup)
            rows.append((preset, grid * grid, batch, steps - args.warmup, speeds[1], speeds[2]))
    print()
    # Other jobs on a shared machine slow both columns (and the 2-thread single process most).
    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {cores} cores")
    print("| preset | tokens/image | global batch | timed steps | single tok/s | DDP x2 tok/s | DDP / single |")
    print("|---|---|---|---|---|---|---|")
    for preset, L, batch, timed, single, ddp in rows:
        print(f"| {preset} | {L} | {batch} | {timed} | {single:,.0f} | {ddp:,.0f} | {ddp / single:.2f} |")


if __name__ == "__main__":
    main()
