"""Issue 20 goal (a), third attempt: other ways to choose among the AR candidates, on bench_edit's
settings, against AR teacher forcing.

bench_edit's sweep scores candidates with the package's scores (sampling/editing.SCORES) one draw set
at a time. This asks whether any other choice, of the score or of the pool the candidates come from,
beats teacher forcing on (a), (b) and (c) together. Per setting (3 data sets x centre holes 4 and 6),
it draws 8 candidates an image at the request's CFG 2 and 8 at hole CFG 4 (bench_edit's draws, the
same seeds), scores each candidate once (one conditional and one null teacher-forced pass), and
judges each once (classifier verdict, classifier features, pictures); then every (pool, rule) pair
is a choice per image, judged by (a) accuracy, (b) FID of the chosen images, (c) their seam score.

Pools: the first K candidates at CFG 2 (K = 4, 8), at CFG 4 (K = 4), and mixed ones (the first 2 or
4 of each): a mixed pool lets a rule take a more strongly guided fill only where it scores better.
Rules, each the candidate with the highest value:
- kept, joint, class, guided-joint S=3: the package's scores (editing.candidate_scores);
- class-hole: the class evidence log p(x | c) - log p(x | null) over the hole's own tokens only (the
  fill's own evidence, not that of the kept tokens after it);
- rank-sum: rank by kept plus rank by class (neither scale dominates), ties to kept;
- kept-then-class: the highest class evidence among the better half by kept.

Teacher forcing is the first candidate at CFG 2, as in bench_edit. Run on the validation split first
(where a rule would be chosen), then on the reported images:

    python benchmarks/edit_selection.py [--work runs/bench_edit] --split val|eval

-> WORK/selection-SPLIT.json and the table on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench_edit import CANDIDATES, CFG, CHUNK, DATASETS, ROOT, cpu_kind
from edit_eval import load_setting

HOLE_SIDES = (4, 6)
DRAWS = (CFG, 4.0)                 # hole guidance of the two draw sets, 8 candidates an image each
POOLS = {                          # name -> [(draw set, first candidate, last + 1)]
    "CFG 2, K=4": [(0, 0, 4)],
    "CFG 2, K=8": [(0, 0, 8)],
    "CFG 4, K=4": [(1, 0, 4)],
    "2 at CFG 2 + 2 at CFG 4": [(0, 0, 2), (1, 0, 2)],
    "4 at CFG 2 + 4 at CFG 4": [(0, 0, 4), (1, 0, 4)],
}


def ranks(x: np.ndarray) -> np.ndarray:
    """Each candidate's rank within its image: x [N, K] -> [N, K] int, 0 = the lowest."""
    return x.argsort(1).argsort(1)


RULES = {
    "kept": lambda c: c["kept"],
    "joint": lambda c: c["joint"],
    "class": lambda c: c["class"],
    "guided-joint S=3": lambda c: c["joint"] + 2 * c["class"],
    "class-hole": lambda c: c["class-hole"],
    "rank-sum": lambda c: ranks(c["kept"]) + ranks(c["class"]) + 1e-6 * ranks(c["kept"]),
    "kept-then-class": lambda c: np.where(ranks(c["kept"]) >= c["kept"].shape[1] // 2, c["class"], -np.inf),
}


def candidates_of(s, engine, hole_cfg) -> dict:
    """One draw set, scored and judged per candidate: arrays [N, K] (scores, verdicts), features
    [N, K, D], pictures [N, K, 32, 32, 3]."""
    from imagelm.sampling.editing import candidate_scores, token_log_probs
    drawn = s.draw(engine, None if hole_cfg == CFG else hole_cfg)                       # [N, K, 64, 1]
    N, K = drawn.shape[:2]
    flat = drawn.reshape(N * K, *drawn.shape[2:])
    known_k = s.known.repeat_interleave(K, 0)
    conditional, null = token_log_probs(s.models["ar"], torch.from_numpy(s.requested).repeat_interleave(K), flat,
                                        null=True)                                      # [N*K, 64] each
    out = {name: candidate_scores(conditional, null, known_k, name).view(N, K).numpy()
           for name in ("kept", "joint", "class")}
    out["class-hole"] = ((conditional - null) * ~known_k).sum(1).view(N, K).numpy()
    pictures = np.stack([s.pictures(drawn[:, j].contiguous()) for j in range(K)], 1)    # [N, K, 32, 32, 3]
    out["pictures"] = pictures
    judged = [s.classify(pictures[:, j]) for j in range(K)]
    out["features"] = np.stack([features for features, _ in judged], 1)                 # [N, K, D]
    out["correct"] = np.stack([correct for _, correct in judged], 1)                    # [N, K]
    return out


def pooled(draws: list[dict], spec) -> dict:
    """The candidates of a pool: draws (candidates_of per draw set), spec [(draw set, first, last + 1)]
    -> the same keys, candidates concatenated along axis 1."""
    return {key: np.concatenate([draws[d][key][:, a:b] for d, a, b in spec], 1) for key in draws[0]}


def judged(s, pool: dict, choice: np.ndarray) -> dict:
    """The chosen candidate of each image, choice [N] indices into the pool: its verdicts [N] bool,
    their accuracy, the FID of the chosen images' features and their seam score."""
    from imagelm.eval.fid import fid
    from imagelm.eval.seams import seam_score
    at = np.arange(len(choice))
    correct = pool["correct"][at, choice]
    return {"correct": correct, "accuracy": float(correct.mean()),
            "fid": fid(pool["features"][at, choice], s.ref_feats),
            "seam": seam_score(pool["pictures"][at, choice], s.pixel_mask.numpy())}


def study(work: Path, split: str) -> dict:
    """Every (pool, rule) against teacher forcing on the six settings of `split` -> the JSON result."""
    from imagelm.sampling.engine import Engine
    settings = []
    for data in DATASETS:
        for hole in HOLE_SIDES:
            start = time.time()
            s = load_setting(work, data, hole, split)
            engine = Engine(s.models["ar"], rows=CHUNK * max(CANDIDATES) * 2, dtype="auto")
            draws = [candidates_of(s, engine, g) for g in DRAWS]
            tf = judged(s, draws[0], np.zeros(len(s.real), dtype=int))
            rows = []
            for pool_name, spec in POOLS.items():
                pool = pooled(draws, spec)
                ceiling = float(pool["correct"].any(1).mean())
                for rule_name, rule in RULES.items():
                    r = judged(s, pool, rule(pool).argmax(1))
                    better = [r["accuracy"] > tf["accuracy"], r["fid"] < tf["fid"], r["seam"] < tf["seam"]]
                    rows.append({"pool": pool_name, "rule": rule_name, "accuracy": r["accuracy"], "fid": r["fid"],
                                 "seam": r["seam"], "wins": int((r["correct"] & ~tf["correct"]).sum()),
                                 "losses": int((~r["correct"] & tf["correct"]).sum()), "better": better,
                                 "ceiling": ceiling})
            settings.append({"data": data, "hole": hole, "images": len(s.real),
                             "teacher_forcing": {k: tf[k] for k in ("accuracy", "fid", "seam")}, "rows": rows})
            print(f"{data} {hole}x{hole} ({split}): {time.time() - start:.0f} s", flush=True)
    return {"split": split, "cpu": cpu_kind(), "draws": list(DRAWS), "settings": settings}


def table(result: dict) -> str:
    """Markdown: per (pool, rule), the settings where it beats teacher forcing on all three, its
    wins of 18 comparisons, and its summed (a) change."""
    lines = [f"Split `{result['split']}`; {result['cpu']}. Teacher forcing per setting: " + "; ".join(
        f"{x['data']} {x['hole']}x{x['hole']} {x['teacher_forcing']['accuracy']:.1%} / "
        f"{x['teacher_forcing']['fid']:.2f} / {x['teacher_forcing']['seam']:.3f}" for x in result["settings"]) + ".",
        "", "| pool | rule | settings better on a, b and c (of 6) | wins of 18 | summed (a) change |",
        "|---|---|---|---|---|"]
    keys = [(r["pool"], r["rule"]) for r in result["settings"][0]["rows"]]
    summary = []
    for i, (pool, rule) in enumerate(keys):
        per = [x["rows"][i] for x in result["settings"]]
        all3 = [f"{x['data']} {x['hole']}x{x['hole']}" for x, r in zip(result["settings"], per) if all(r["better"])]
        gain = sum(r["accuracy"] - x["teacher_forcing"]["accuracy"] for x, r in zip(result["settings"], per))
        summary.append((len(all3), sum(sum(r["better"]) for r in per), gain, pool, rule, all3))
    for n, wins, gain, pool, rule, all3 in sorted(summary, key=lambda t: (-t[0], -t[1], -t[2])):
        lines.append(f"| {pool} | {rule} | {n}{' (' + ', '.join(all3) + ')' if all3 else ''} | {wins} | "
                     f"{100 * gain:+.1f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_edit"))
    p.add_argument("--split", default="val", choices=["val", "eval"])
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    result = study(Path(a.work), a.split)
    (Path(a.work) / f"selection-{a.split}.json").write_text(json.dumps(
        result, indent=2, default=lambda x: bool(x) if isinstance(x, np.bool_) else float(x)))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
