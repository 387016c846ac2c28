"""Inpainting and larger canvases, measured (issue 20's benchmark).

    python benchmarks/bench_edit.py [--work runs/bench_edit] --stage STAGE [--data shapes-simple|digits|shapes]

Stages (each reuses what a previous invocation finished, and each fits in ~15 min of a shared
2-core CPU, so run them one per invocation under /work/bin/cpu-shared):
- prep:   vq-tiny (32 px -> 8x8 codes), the codes, the built-in classifier (`imagelm train-features`),
          all through the CLI, for --data.
- ar, mlm: a tiny generator (4 layers, d=128) of that kind on the codes.
- eval:   held-out images of --data with the centre 4x4 of the 8x8 tokens (16x16 px) masked
          (--hole 2|4|6 for other centre holes), each asked for another class than its own
          (class-changing inpainting), by the masked generator, AR teacher forcing (K = 1) and the
          AR candidate search (K = 4 and 8 candidates, the best by each candidate score of
          sampling/editing.py, all on the same draws), with the same seeds and sampling options. Judged by (a) the
          classifier: inpainted class = requested class; (b) FID on the classifier's features,
          inpainted vs the real held-out images; (c) the seam score: mean |pixel difference| across
          the mask border over the mean |difference| of neighbouring pixels elsewhere in the same
          image (1 = the border is no sharper than the rest; real images score it too).
          `--split val`: the same on validation images (held-out images 256-383, other requested
          classes), the sweep alone -> val.json, where the default of the sweep is chosen (see
          VAL_IMAGES for the rule). `--sweep-only`: the sweep alone on the reported images -> sweep.json.
          The sweep: `guided-joint` at score_guidance S in SCORE_GUIDANCES and the hole drawn at
          hole_cfg G in HOLE_CFGS (teacher forcing at G reported too), K = 4 and 8.
- canvas: the sliding-window AR sampler on a 2x-wide canvas: ms per image at strides 1 (the window
          re-fed for every token, no cache reuse) to 8, timed (run under /work/bin/cpu-exclusive);
          and the pictures docs/edit_expand.png and docs/edit_inpaint.png.
- grid:   docs/edit_inpaint.png alone, from the eval stages' pictures (no timing).
- report: WORK/report.md (the tables, benchmarks/edit_report.py) from the JSON the stages wrote.

The eval stage's code is benchmarks/edit_eval.py (a `Setting` per data set, hole and split, and
`evaluate`); benchmarks/edit_selection.py reuses it to try other choices among the candidates.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("shapes-simple", "digits", "shapes")
IMAGES = 4000                 # shapes(-simple) images rendered and coded (digits: its 1,438 training images)
TOKENIZER_STEPS = 300
CLASSIFIER_STEPS = 300
GENERATOR_STEPS = 1000
BATCH = 64
SEED = 0
# Evaluation: the same for every method.
EVAL_IMAGES = 256             # held-out images per data set (a shared 2-core CPU: each eval a few minutes)
HOLE = 4                      # the centre 4x4 of the 8x8 tokens (16x16 pixels); --hole for others
HOLES = (2, 4, 6)
CFG = 2.0
TOP_P = 0.8                   # tiny models memorise; nucleus sampling keeps one unlikely token from derailing
MLM_STEPS = 8
CANDIDATES = (4, 8)           # drawn once (8 a image), every K and score chooses among those draws
# The sweep (issue 20 goal (a)): the guided-joint score at a constant scale S (joint + (S - 1) class,
# `score_guidance`), and the hole drawn at a stronger guidance G (`hole_cfg`, CFG stays the request's
# and the scores' scale). Every (G, score, S, K) is one row, scored from one pair of scoring passes per
# draw set (editing.candidate_scores on the stored log-probabilities).
SCORE_GUIDANCES = (2.0, 3.0, 4.0, 6.0)
HOLE_CFGS = (CFG, 4.0)            # 8.0 too on shapes-simple 4x4 only (a shared CPU's budget)
SWEEP_SCORES = ("kept", "joint", "guided-joint", "class")
# The default is chosen on a validation split, never on the reported images: held-out images
# EVAL_IMAGES .. EVAL_IMAGES + VAL_IMAGES - 1 (digits has 359 held-out images: 103 of them), their
# requested classes drawn with seed SEED + 1. The rule, fixed before any sweep was run: among the
# K = DEFAULT_K methods of the sweep (not teacher forcing at any G), the one winning the most of the
# 18 (setting, criterion) comparisons against teacher forcing at CFG on validation, over the 3 data
# sets x holes 4 and 6 and (a) accuracy strictly higher, (b) FID lower, (c) seam lower; ties go to
# the larger summed (a) gain, then the smaller G, then the smaller S.
VAL_IMAGES = 128
DEFAULT_K = 4
SCORE_NAMES = {               # sampling/editing.SCORES, as the table names them
    "kept": "kept-token likelihood",
    "joint": "joint likelihood (hole + kept after it)",
    "guided-kept": "guided kept-token likelihood",
    "guided-joint": "guided joint likelihood",
    "class": "class evidence (model's implicit classifier)",
}
TRAIN_MINUTES = 12            # one invocation's share of the shared CPU
AGAIN = 75                    # exit status of a stage to run again (time ran out)
CHUNK = 32                    # images per engine request


def cpu_kind() -> str:
    text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor())
    bf16 = "avx512_bf16" if "avx512_bf16" in text else "no avx512_bf16"
    return f"{model}, {os.cpu_count()} cores, {bf16}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def cli(*args: str, minutes: float | None = None) -> bool:
    """One `imagelm` verb in a subprocess (the CLI is what a user runs). With `minutes`, a run still
    going then is interrupted (a resumable one continues from its last checkpoint next time);
    returns whether it finished."""
    cmd = [sys.executable, "-m", "imagelm.cli", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    process = subprocess.Popen(cmd, cwd=ROOT)
    try:
        code = process.wait(timeout=None if minutes is None else minutes * 60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        process.wait()
        print(f"interrupted after {minutes} min (shared CPU); run this stage again to continue", flush=True)
        return False
    if code:
        raise SystemExit(f"imagelm {args[0]} failed (exit {code})")
    return True


def finished(run: Path, steps: int) -> bool:
    from imagelm import checkpoint
    done = checkpoint.list_checkpoints(run)
    return bool(done) and done[-1].name == f"step-{steps:07d}"


# ------------------------------------------------------------------------------ training stages
def prep(work: Path, data: str) -> bool:
    """Tokenizer, codes and classifier for `data`; False when this invocation's time ran out first."""
    d = work / data
    length = ["--data-length", str(IMAGES)] if data != "digits" else []
    if not finished(d / "vq", TOKENIZER_STEPS) and not cli("train-tokenizer", "--data", data, "--preset", "vq-tiny", "--out", str(d / "vq"),
            "--steps", str(TOKENIZER_STEPS), *length, "--ckpt-every", "50",
            "--preview-every", str(TOKENIZER_STEPS), "--seed", str(SEED), "--resume", minutes=TRAIN_MINUTES):
        return False
    if not (d / "codes" / "manifest.json").is_file():
        cli("extract-codes", "--tokenizer", str(d / "vq"), "--data", data, "--out", str(d / "codes"), *length,
            "--seed", str(SEED))
    if not finished(d / "classifier", CLASSIFIER_STEPS):
        cli("train-features", "--data", data, "--out", str(d / "classifier"), "--steps", str(CLASSIFIER_STEPS),
            "--seed", str(SEED))
    return True


def train(work: Path, data: str, kind: str) -> bool:
    """Train (or continue) the generator; False when this invocation's time ran out first."""
    d = work / data
    if not finished(d / kind, GENERATOR_STEPS):
        return cli("train", "--codes", str(d / "codes"), "--out", str(d / kind), "--preset", "tiny", "--kind", kind,
            "--steps", str(GENERATOR_STEPS), "--batch-size", str(BATCH), "--ckpt-every", "100",
            "--preview-every", "0", "--seed", str(SEED), "--resume", minutes=TRAIN_MINUTES)
    return True


# ------------------------------------------------------------------------------ evaluation
def held_out(data: str, n: int, start: int = 0):
    """Held-out images start .. start + n - 1 of `data` (fewer if it has fewer): uint8 [n, 32, 32, 3]
    and class ids [n]."""
    from imagelm.data import build_dataset
    from imagelm.data.transforms import to_uint8
    ds = build_dataset(data, image_size=32, split="test", seed=SEED)
    items = [ds[i] for i in range(start, min(start + n, len(ds)))]
    return to_uint8(torch.stack([x for x, _, _ in items])), np.array([y for _, y, _ in items])


def centre_masks(hole: int = HOLE):
    """The centre hole of hole x hole tokens: pixel mask [32, 32] bool and token mask [64] bool (True =
    regenerated)."""
    lo = (8 - hole) // 2
    tokens = torch.zeros(8, 8, dtype=torch.bool)
    tokens[lo:lo + hole, lo:lo + hole] = True
    pixels = tokens.repeat_interleave(4, 0).repeat_interleave(4, 1)
    return pixels, tokens.flatten()


def eval_file(data_dir: Path, hole: int, stem: str = "eval", suffix: str = "json") -> Path:
    """WORK/DATA/eval.json for the default hole, eval-hole6.json etc. for the others (stem
    "eval_images", suffix "npz": the pictures; stem "val": the validation split)."""
    return data_dir / (f"{stem}.{suffix}" if hole == HOLE else f"{stem}-hole{hole}.{suffix}")


def method_name(K: int, score: str, score_guidance: float | None = None, hole_cfg: float | None = None) -> str:
    hole = "" if hole_cfg is None else f", hole drawn at CFG {hole_cfg:g}"
    if K == 1:
        return f"AR teacher forcing (K=1){hole}"
    scale = "" if score_guidance is None else f" S={score_guidance:g}"
    return f"AR candidates K={K}, {SCORE_NAMES[score]}{scale}{hole}"


def shown_key(name: str) -> str:
    return name.replace(" ", "_")


# ------------------------------------------------------------------------------ canvases
STRIDES = (1, 2)
CANVAS_IMAGES = 16


def canvas(work: Path) -> None:
    """The AR window sampler on a 2x-wide canvas (shapes-simple expanded right by 32 px): ms per
    image by stride, against the plain sampler on the trained grid in the same run; the seam score
    across the original's right edge; docs/edit_expand.png and docs/edit_inpaint.png."""
    import imagelm
    from imagelm.data.transforms import save_grid, to_tensor, to_uint8
    from imagelm.edits import decode_canvas, encode_canvas, feather_alpha, paste_back
    from imagelm.eval.seams import seam_score
    from imagelm.sampling.autoregressive import SamplingOptions, generate
    from imagelm.sampling.canvas import generate_canvas, generate_masked_canvas
    from imagelm.tokenizers import load_tokenizer
    d = work / "shapes-simple"
    tok = load_tokenizer(d / "vq")
    ar, mlm = imagelm.load(d / "ar"), imagelm.load(d / "mlm")
    real, labels = held_out("shapes-simple", CANVAS_IMAGES)
    B, cond = len(real), torch.from_numpy(labels)
    options = SamplingOptions(cfg_scale=CFG, top_p=TOP_P)
    # The 8x16 canvas: each image's own tokens on the left, 64 new ones on the right (expand right 32 px).
    given = torch.zeros(B, 8, 16, 1, dtype=torch.long)
    given[:, :, :8] = encode_canvas(tok, to_tensor(real), 1).view(B, 8, 8, 1)
    known = torch.zeros(8, 16, dtype=torch.bool)
    known[:, :8] = True
    given, known = given.view(B, 128, 1), known.flatten().expand(B, -1).contiguous()
    new_side = np.zeros((32, 64), dtype=bool)
    new_side[:, 32:] = True
    wide = torch.zeros(3, 32, 64)
    alpha = feather_alpha(torch.from_numpy(new_side), 2.0)

    def timed(fn):
        fn()                                        # warm-up, excluded
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    def pictures_of(tokens):
        originals = torch.cat([to_tensor(real), wide[None, :, :, 32:].expand(B, -1, -1, -1)], dim=3)
        return paste_back(decode_canvas(tok, tokens, 8, 16), originals, alpha)      # [B, 3, 32, 64]

    rng = lambda: torch.Generator().manual_seed(SEED)   # noqa: E731
    _, plain_s = timed(lambda: generate(ar, cond, options, rng()))
    rows = [{"sampler": "plain AR sampler on the trained 8x8 grid (reference: 64 tokens an image too)",
             "stride": None, "ms_per_image": 1000 * plain_s / B, "seam": None}]
    pictures = {}
    for stride in STRIDES:
        tokens, seconds = timed(lambda: generate_canvas(ar, cond, 8, 16, options, rng(), given, known, stride))
        assert torch.equal(tokens[known], given[known]), "an original token changed"
        pictures[stride] = pictures_of(tokens)
        rows.append({"sampler": f"AR window, stride {stride}", "stride": stride, "ms_per_image": 1000 * seconds / B,
                     "seam": seam_score(to_uint8(pictures[stride]), new_side)})
        print(f"stride {stride}: {rows[-1]['ms_per_image']:.0f} ms/image, seam {rows[-1]['seam']:.3f}", flush=True)
    tokens, seconds = timed(lambda: generate_masked_canvas(mlm, cond, 8, 16, options, MLM_STEPS, rng(), given, known))
    pictures["mlm"] = pictures_of(tokens)
    rows.append({"sampler": f"masked generator, windows at stride 4, {MLM_STEPS} steps each", "stride": 4,
                 "ms_per_image": 1000 * seconds / B, "seam": seam_score(to_uint8(pictures["mlm"]), new_side)})
    pairs = np.concatenate([real, real[np.roll(np.arange(B), 1)]], axis=2)
    rows.append({"sampler": "two real images side by side (a seam by construction)", "stride": None,
                 "ms_per_image": None, "seam": seam_score(pairs, new_side)})
    result = {"cpu": cpu_kind(), "images": B, "canvas": "8x16 tokens (32x64 px), the left 8x8 given",
              "options": {"cfg_scale": CFG, "top_p": TOP_P}, "dtype": "float32 (plain loop, packed linears)",
              "rows": rows}
    (work / "canvas.json").write_text(json.dumps(result, indent=2))
    docs = ROOT / "docs"
    default = max(1, ar.config.grid_size // 4)
    save_grid(torch.cat([pictures[default][:8], pictures["mlm"][:8]]), docs / "edit_expand.png", nrow=4)
    inpaint_grid(work, docs / "edit_inpaint.png")


SHOWN = ("masked generator (MaskGIT, 8 steps)", method_name(1, "kept"), method_name(8, "kept"),
         method_name(8, "class"))


def inpaint_grid(work: Path, out: Path) -> None:
    """docs/edit_inpaint.png: per data set and hole (4x4, then 6x6), rows of 8 held-out images: the
    original, the input with its hole greyed, then the methods of SHOWN in that order."""
    from imagelm.data.transforms import save_grid, to_tensor
    rows = []
    for data, hole in [(data, hole) for data in DATASETS for hole in (HOLE, 6)]:
        file = eval_file(work / data, hole, "eval_images", "npz")
        if not file.is_file():
            continue                                     # that eval stage has not run
        pixel_mask, _ = centre_masks(hole)
        shown = np.load(file)
        holed = shown["real"].copy()
        holed[:, pixel_mask.numpy()] = 128
        rows += [shown["real"], holed]
        rows += [shown[shown_key(name)] for name in SHOWN if shown_key(name) in shown.files]
    save_grid(to_tensor(np.concatenate(rows)), out, nrow=8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_edit"))
    p.add_argument("--stage", required=True, choices=["prep", "ar", "mlm", "eval", "canvas", "grid", "report"])
    p.add_argument("--data", default="shapes-simple", choices=DATASETS)
    p.add_argument("--hole", type=int, default=HOLE, choices=HOLES,
                   help="eval: the centre hole's side in tokens of the 8x8 grid (default 4: 75%% kept)")
    p.add_argument("--split", default="eval", choices=["eval", "val"],
                   help="eval: the reported held-out images, or the validation ones the default is chosen on")
    p.add_argument("--hole-cfgs", type=float, nargs="+", default=list(HOLE_CFGS),
                   help="eval: the hole guidance scales of the sweep (the request's CFG first)")
    p.add_argument("--sweep-only", action="store_true",
                   help="eval: only the AR sweep rows (no masked generator, no timed rows) -> sweep.json")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t = time.time()
    if a.stage == "prep" and not prep(work, a.data):
        return AGAIN
    elif a.stage in ("ar", "mlm") and not train(work, a.data, a.stage):
        return AGAIN
    elif a.stage == "eval":
        if a.hole_cfgs[0] != CFG:
            p.error(f"--hole-cfgs must start with the request's CFG {CFG:g}")
        from edit_eval import evaluate
        evaluate(work, a.data, a.hole, a.split, a.sweep_only, tuple(a.hole_cfgs))
    elif a.stage == "canvas":
        canvas(work)
    elif a.stage == "grid":
        inpaint_grid(work, ROOT / "docs" / "edit_inpaint.png")
    elif a.stage == "report":
        from edit_report import report
        print(report(work))
    print(f"stage {a.stage} ({a.data}) done in {time.time() - t:.0f} s on {cpu_kind()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
