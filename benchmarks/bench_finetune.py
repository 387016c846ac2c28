"""Fine-tuning vs training from scratch, at equal steps, on `shapes-simple` (issue 21's benchmark).

    python benchmarks/bench_finetune.py [--work /tmp/bench_finetune] [--stage all|prep|base|classes|lora|res|report]

Recipe (tiny generator, 4 layers, d=128; vq-tiny codes; the built-in classifier as the judge):
- prep: vq-tiny on shapes-simple (32 px -> 8x8 codes), the built-in classifier, and codes: 32 px of all
  8 classes, the same restricted to the first 6 (circle ... cross), and 48 px (12x12 codes, same tokenizer).
- base: a generator trained on the 6 classes only.
- classes: all 8 classes, from scratch vs `--init base` (class table 6 -> 8, new rows at the mean).
- lora: all 8 classes, `--init base --lora-rank 8` (the trunk learns through adapters only).
- res: 12x12 tokens (48 px), from scratch vs `--init` the 8x8 from-scratch run (RoPE rebuilt).
Every run has the same steps, batch, learning rate and schedule; checkpoints at EVAL_STEPS are sampled
(SAMPLES per class, CFG 2, seed 0) and the classifier says which class each sample shows: accuracy on
the 2 new classes (hexagon, heart) and on the old 6. Step 0 is the --init model before any update.
Stages reuse finished runs, so the benchmark can be run one stage (or one run) per invocation, each
under ~15 min on a shared 2-core CPU. The report (markdown tables + JSON) goes to WORK/report.md and
WORK/results.json. Accuracy, not wall time, is what it measures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

DATA = "shapes-simple"
IMAGES = 4000
TOKENIZER_STEPS = 300
CLASSIFIER_STEPS = 300
STEPS = 300
EVAL_STEPS = (0, 75, 150, 300)
BATCH = 64
LR = 1e-3
WARMUP = 20
LOSS_STEPS = (1, 20, 75, 150, 300)
OLD = 6                   # classes 0..5 are known to the base model; 6, 7 (hexagon, heart) are new
SAMPLES = 32              # per class and checkpoint
CFG = 2.0
# Nucleus sampling: these tiny models memorise shapes-simple's 96 images (training loss ~0.07 per token),
# and at temperature 1 one unlikely token early in a sample derails the rest (34% accuracy for the
# 6-class base at step 300 vs 74% with top-p 0.8, measured).
TOP_P = 0.8
SEED = 0


def cpu_kind() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    bf16 = "avx512_bf16" if "avx512_bf16" in flags else "no avx512_bf16"
    return f"{model}, {os.cpu_count()} cores, {bf16}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def subset_codes(src: Path, out: Path, classes: int) -> None:
    """A codes directory holding only the items of classes 0..classes-1 of `src` (same ids and names)."""
    from imagelm.data.codes import MANIFEST, CodesDataset
    codes = CodesDataset(src)
    keep = np.flatnonzero(codes.labels < classes)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "tokens_00000.npy", codes.tokens.take(keep))
    np.save(out / "labels_00000.npy", codes.labels[keep])
    manifest = dict(codes.manifest, class_names=codes.class_names[:classes], num_items=len(keep),
                    shards=[{"count": len(keep), "tokens": "tokens_00000.npy", "labels": "labels_00000.npy"}])
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))


def prep(work: Path) -> None:
    from imagelm.data.codes import MANIFEST, extract_codes
    from imagelm.eval.classifier import ClassifierTrainArgs, train_classifier
    from imagelm import checkpoint
    from imagelm.tokenizers import load_tokenizer
    from imagelm.train.tokenizer import TokenizerTrainArgs, train_tokenizer
    if not checkpoint.list_checkpoints(work / "vq"):
        train_tokenizer(TokenizerTrainArgs(out=str(work / "vq"), data=DATA, preset="vq-tiny", steps=TOKENIZER_STEPS,
                                           data_length=IMAGES, ckpt_every=TOKENIZER_STEPS, preview_every=TOKENIZER_STEPS,
                                           seed=SEED, progress=False))
    if not checkpoint.list_checkpoints(work / "classifier"):
        train_classifier(ClassifierTrainArgs(data=DATA, out=str(work / "classifier"), steps=CLASSIFIER_STEPS,
                                             seed=SEED, progress=False))
    tok = load_tokenizer(work / "vq")
    for name, size in (("codes8", 32), ("codes12", 48)):
        if not (work / name / MANIFEST).is_file():
            extract_codes(tok, DATA, work / name, image_size=size, length=IMAGES, seed=SEED, progress=False)
    if not (work / "codes8-old" / MANIFEST).is_file():
        subset_codes(work / "codes8", work / "codes8-old", OLD)


RUNS = {
    # name: (stage, codes, init run or None, extra options)
    "base-6": ("base", "codes8-old", None, {}),
    "scratch-8": ("classes", "codes8", None, {}),
    "finetune-8": ("classes", "codes8", "base-6", {}),
    "lora-8": ("lora", "codes8", "base-6", {"lora_rank": 8}),
    "scratch-12x12": ("res", "codes12", None, {}),
    "finetune-12x12": ("res", "codes12", "scratch-8", {}),
}


def train_run(work: Path, name: str) -> None:
    from imagelm import checkpoint
    from imagelm.train.generator import GeneratorTrainArgs, train_generator
    _, codes, init, extra = RUNS[name]
    out = work / "runs" / name
    done = checkpoint.list_checkpoints(out)
    if done and done[-1].name == f"step-{STEPS:07d}":
        return
    train_generator(GeneratorTrainArgs(codes=str(work / codes), out=str(out), preset="tiny", steps=STEPS,
                                       batch_size=BATCH, lr=LR, warmup=WARMUP, ckpt_every=75, keep=0, log_every=1,
                                       preview_every=0, seed=SEED, progress=False, resume=True,
                                       init=str(work / "runs" / init) if init else None, **extra))


def _step0_model(work: Path, name: str):
    """The --init model of run `name` before any update (weights mapped as `imagelm train` maps them)."""
    import dataclasses

    from imagelm.data.codes import CodesDataset
    from imagelm.models import build_generator
    from imagelm.train import init
    from imagelm.train.generator import GeneratorTrainArgs, model_config
    _, codes_name, init_run, _ = RUNS[name]
    source, meta = init.load_generator_source(work / "runs" / init_run)
    codes = CodesDataset(work / codes_name)
    config = model_config(GeneratorTrainArgs(codes=str(work / codes_name), out=""), codes, source.config)
    model = build_generator(config)
    state, _ = init.map_state(source.state_dict(), model.state_dict(), str(init_run))
    model.load_state_dict(state)
    model.meta = dict(meta, class_names=codes.class_names)
    return model.eval()


def evaluate(work: Path, name: str, results: dict) -> None:
    """Class accuracy (new classes, old classes) of run `name` at every EVAL_STEPS checkpoint."""
    import imagelm
    from imagelm.data.transforms import to_uint8
    from imagelm.eval.classifier import load_classifier, predict
    from imagelm.tokenizers import load_tokenizer
    clf = load_classifier(work / "classifier")
    tok = load_tokenizer(work / "vq")
    classes = OLD if name == "base-6" else 8
    rows = results.setdefault(name, {})
    metrics = [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    rows["loss"] = {str(m["step"]): round(m["loss"], 4) for m in metrics}
    for step in EVAL_STEPS:
        if str(step) in rows.get("accuracy", {}):
            continue
        if step == 0:
            if RUNS[name][2] is None:
                continue
            gen = _step0_model(work, name)
        else:
            gen = imagelm.load(work / "runs" / name / "checkpoints" / f"step-{step:07d}")
        tokens = imagelm.sample(gen, list(range(classes)), n=SAMPLES, cfg_scale=CFG, top_p=TOP_P, seed=SEED)
        images = to_uint8(imagelm.decode_tokens(tokens, tok).float())
        labels = np.repeat(np.arange(classes), SAMPLES)
        hit = predict(clf, images) == labels
        acc = {"old": float(hit[labels < OLD].mean())}
        if classes > OLD:
            acc["new"] = float(hit[labels >= OLD].mean())
        acc["all"] = float(hit.mean())
        rows.setdefault("accuracy", {})[str(step)] = acc
        print(f"{name} step {step}: " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()), flush=True)


def report(work: Path, results: dict) -> str:
    def acc(name, step, part):
        a = results.get(name, {}).get("accuracy", {}).get(str(step))
        return "-" if a is None or part not in a else f"{a[part]:.0%}"

    lines = [f"CPU: {cpu_kind()}; tiny generator (4 layers, d=128), batch {BATCH}, lr {LR}, warm-up {WARMUP}, "
             f"cosine over {STEPS} steps; {SAMPLES} samples per class, CFG {CFG}, top-p {TOP_P}, seed {SEED}; "
             f"accuracy (new classes / old classes) = the "
             f"built-in classifier (held-out accuracy {results.get('classifier_heldout', 0):.1%}) agrees with "
             f"the class asked for",
             "",
             "| run | " + " | ".join(f"step {s} new / old" for s in EVAL_STEPS) + " |",
             "|---|" + "---|" * len(EVAL_STEPS)]
    for name in RUNS:
        if name in results:
            cells = [f"{acc(name, s, 'new')} / {acc(name, s, 'old')}" for s in EVAL_STEPS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Loss (training batches; step 1 = the loss before the first update):", "",
              "| run | " + " | ".join(f"step {s}" for s in LOSS_STEPS) + " |", "|---|" + "---|" * len(LOSS_STEPS)]
    for name in RUNS:
        loss = results.get(name, {}).get("loss", {})
        if loss:
            lines.append(f"| {name} | " + " | ".join(str(loss.get(str(s), "-")) for s in LOSS_STEPS) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/bench_finetune", help="runs, codes and the report go here")
    p.add_argument("--stage", default="all", choices=["all", "prep", "base", "classes", "lora", "res", "report", *RUNS],
                   help="a group of runs, or one run by name (each run trains only if not finished)")
    p.add_argument("--fresh", action="store_true", help="delete WORK first")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a CPU shared with other jobs one thread keeps going, two collapse)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    if a.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    sampling = {"samples": SAMPLES, "cfg": CFG, "top_p": TOP_P, "seed": SEED}
    if results.get("sampling") != sampling:        # accuracies measured with other settings are void
        results = {k: {kk: vv for kk, vv in v.items() if kk != "accuracy"} if isinstance(v, dict) else v
                   for k, v in results.items()}
        results["sampling"] = sampling
    t0 = time.time()
    if a.stage in ("all", "prep"):
        prep(work)
    for name, (stage, *_rest) in RUNS.items():
        if a.stage in ("all", stage, name):
            train_run(work, name)
        finished = (work / "runs" / name / "checkpoints" / f"step-{STEPS:07d}").is_dir()
        if a.stage in ("all", stage, name) or (a.stage == "report" and finished):
            evaluate(work, name, results)
            results_file.write_text(json.dumps(results, indent=2))
    if a.stage in ("all", "report", "prep"):
        from imagelm import checkpoint
        if checkpoint.list_checkpoints(work / "classifier"):
            results["classifier_heldout"] = checkpoint.read_meta(work / "classifier")["heldout_accuracy"]
            results_file.write_text(json.dumps(results, indent=2))
    text = report(work, results)
    (work / "report.md").write_text(text + "\n")
    print(text)
    print(f"({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
