"""Whole-process speed against LlamaGen's own sampler, on the same weights (GPT-B, VQ-16, 256 px).

    python benchmarks/vs_llamagen.py --llamagen PATH/TO/LlamaGen [--images 4 --cfg 4 --reps 3]

PATH is a checkout of FoundationVision/LlamaGen (nothing of it is copied or committed: its model
files are imported from there). The script:
1. builds GPT-B (class-conditional, 16x16 tokens) and VQ-16 with LlamaGen's own classes, random
   weights, and saves them in LlamaGen's checkpoint format (once, in --work);
2. converts them with `imagelm convert llamagen-gpt` / `llamagen-vq`;
3. times, as separate processes from start to the PNG on disk (start-up, imports, loading, sampling
   and decoding all counted), `--reps` times each, alternating:
   - LlamaGen: what its `autoregressive/sample/sample_c2i.py` does (VQ and GPT loaded with its
     defaults: GPT in bf16 (`--precision bf16`), top-k 2000, CFG 4), its own `generate()`, its
     `decode_code`, the PNG saved with PIL (its script's torchvision `save_image` does not import
     beside this torch); `--llamagen-precision none` runs it in float32;
   - imagelm: `imagelm sample --ckpt OURS --classes ... --cfg 4 --top-k 2000 --out x.png` with the
     default `--dtype auto` (or `--ours-args` to add flags, e.g. "--decode jacobi").
Prints the median seconds of each and the ratio; the CPU kind is named.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLASSES = [207, 360, 387, 974, 88, 979, 417, 279]    # LlamaGen's sample_c2i.py labels


def build_llamagen_files(root: Path, work: Path) -> tuple[Path, Path]:
    """GPT-B and VQ-16 with random weights in LlamaGen's formats -> (gpt .pt, vq .pt)."""
    gpt_file, vq_file = work / "c2i_B_256.pt", work / "vq_ds16_c2i.pt"
    if gpt_file.exists() and vq_file.exists():
        return gpt_file, vq_file
    sys.path.insert(0, str(root))
    import torch
    from autoregressive.models.gpt import GPT_models
    from tokenizer.tokenizer_image.vq_model import VQ_models
    torch.manual_seed(0)
    gpt = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i")
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            p.normal_(0, 0.02)
    torch.save({"model": gpt.state_dict()}, gpt_file)
    vq = VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8)
    torch.save({"model": vq.state_dict()}, vq_file)
    return gpt_file, vq_file


def llamagen_process(a) -> None:
    """The LlamaGen side, run in its own process: sample_c2i.py's steps on its own code."""
    sys.path.insert(0, a.llamagen)
    import numpy as np
    import torch
    from PIL import Image
    torch.set_grad_enabled(False)
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import GPT_models
    from tokenizer.tokenizer_image.vq_model import VQ_models
    torch.manual_seed(0)
    device = "cpu"
    vq = VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8).to(device).eval()
    vq.load_state_dict(torch.load(a.vq, map_location="cpu")["model"])
    precision = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.llamagen_precision]
    gpt = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1,
                              model_type="c2i").to(device=device, dtype=precision)
    gpt.load_state_dict(torch.load(a.gpt, map_location="cpu")["model"], strict=False)
    gpt.eval()
    labels = torch.tensor(CLASSES[:a.images], device=device)
    tokens = generate(gpt, labels, 256, cfg_scale=a.cfg, cfg_interval=-1, temperature=1.0, top_k=2000, top_p=1.0,
                      sample_logits=True)
    images = vq.decode_code(tokens, [len(labels), 8, 16, 16])
    grid = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    Image.fromarray(np.concatenate(list(grid), axis=1)).save(a.out)


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llamagen", required=True, help="a checkout of FoundationVision/LlamaGen")
    p.add_argument("--work", default="runs/vs_llamagen", help="where the weights and outputs go")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--llamagen-precision", default="bf16", choices=["none", "bf16", "fp16"])
    p.add_argument("--ours-args", default="", help="extra flags for imagelm sample")
    p.add_argument("--role", default="compare", choices=["compare", "llamagen"], help=argparse.SUPPRESS)
    p.add_argument("--gpt", help=argparse.SUPPRESS)
    p.add_argument("--vq", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.role == "llamagen":
        llamagen_process(a)
        return
    import torch

    from imagelm.runtime import cpu_description
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    gpt_file, vq_file = build_llamagen_files(Path(a.llamagen), work)
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ours_vq, ours_gpt = work / "ours-vq", work / "ours-gpt"
    if not (ours_gpt / "config.json").exists():
        subprocess.run([py, "-m", "imagelm.cli", "convert", "llamagen-vq", str(vq_file), str(ours_vq)], check=True, env=env)
        subprocess.run([py, "-m", "imagelm.cli", "convert", "llamagen-gpt", str(gpt_file), str(ours_gpt),
                        "--tokenizer", str(ours_vq)], check=True, env=env)
    theirs_cmd = [py, __file__, "--role", "llamagen", "--llamagen", a.llamagen, "--gpt", str(gpt_file), "--vq",
                  str(vq_file), "--out", str(work / "llamagen.png"), "--images", str(a.images), "--cfg", str(a.cfg),
                  "--llamagen-precision", a.llamagen_precision]
    ours_cmd = [py, "-m", "imagelm.cli", "sample", "--ckpt", str(ours_gpt), "--classes",
                *map(str, CLASSES[:a.images]), "--n", "1", "--cfg", str(a.cfg), "--top-k", "2000", "--seed", "0",
                "--out", str(work / "imagelm.png"), *a.ours_args.split()]
    print(f"# CPU: {cpu_description()}, torch {torch.__version__}, {os.cpu_count()} cores; GPT-B c2i 256 px, "
          f"{a.images} images, CFG {a.cfg}, top-k 2000; LlamaGen precision {a.llamagen_precision}; "
          f"imagelm sample {a.ours_args or '(defaults: --dtype auto)'}")
    theirs, ours = [], []
    for rep in range(a.reps):
        theirs.append(timed(theirs_cmd, env))
        ours.append(timed(ours_cmd, env))
        print(f"rep {rep}: LlamaGen {theirs[-1]:.1f} s, imagelm {ours[-1]:.1f} s", flush=True)
    t, o = statistics.median(theirs), statistics.median(ours)
    print(f"median whole process: LlamaGen generate() {t:.1f} s, imagelm sample {o:.1f} s: {t / o:.2f}x")


if __name__ == "__main__":
    main()
