"""The evaluation stage of bench_edit.py (issue 20): class-changing inpainting of held-out centres by
every method, judged by the built-in classifier, FID and the seam score (see bench_edit's doc).

A `Setting` holds one (data set, hole, split): the images, the requested classes, the models and the
judges; `evaluate` runs every method on it and writes the JSON that edit_report.py turns into tables.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench_edit import (CANDIDATES, CFG, CHUNK, DEFAULT_K, EVAL_IMAGES, GENERATOR_STEPS, HOLE, HOLE_CFGS, MLM_STEPS,
                        SCORE_GUIDANCES, SCORE_NAMES, SEED, SWEEP_SCORES, TOP_P, VAL_IMAGES, centre_masks, cpu_kind,
                        eval_file, finished, held_out, method_name, shown_key)


@dataclass
class Setting:
    """One (data set, hole, split) of the benchmark: the held-out images with the centre hole, each
    asked for another class than its own, what fills them and what judges the fills (load_setting)."""
    data: str
    hole: int
    split: str
    tokenizer: object
    models: dict                 # "ar" / "mlm" -> generator, the trained ones only
    missing: list
    net: object                  # the built-in classifier (ClassifierFeatures)
    real: np.ndarray             # uint8 [N, 32, 32, 3]
    labels: np.ndarray           # [N] their own classes
    requested: np.ndarray        # [N] the class each is asked for (never its own)
    reference_images: int
    ref_feats: torch.Tensor      # the FID reference: real held-out images' features
    pixel_mask: torch.Tensor     # [32, 32] bool, True = regenerated
    alpha: torch.Tensor          # the feathered paste-back weights
    originals: torch.Tensor      # [N, 3, 32, 32]
    given: torch.Tensor          # [N, 64, 1] the originals' tokens
    known: torch.Tensor          # [N, 64] bool, True = kept
    options: object              # SamplingOptions of every method

    def pictures(self, tokens: torch.Tensor) -> np.ndarray:
        """tokens [N, 64, 1] (the first N images') -> uint8 [N, 32, 32, 3], kept pixels pasted back."""
        from imagelm.data.transforms import to_uint8
        from imagelm.edits import decode_canvas, paste_back
        return to_uint8(paste_back(decode_canvas(self.tokenizer, tokens, 8, 8), self.originals[:len(tokens)],
                                   self.alpha))

    def classify(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One pass of the classifier over uint8 images [N, 32, 32, 3] (the first N images') -> their
        features [N, D] (for FID) and verdicts [N] bool (predicted class = the requested one)."""
        features, logits = self.net(images)
        return features, logits.argmax(1) == self.requested[:len(images)]

    def judge(self, images: np.ndarray) -> dict:
        """(a) per image: the classifier's verdict = the requested class, (b) FID, (c) seam score."""
        from imagelm.eval.fid import fid
        from imagelm.eval.seams import seam_score
        features, correct = self.classify(images)
        return {"correct": correct, "fid": fid(features, self.ref_feats),
                "seam": seam_score(images, self.pixel_mask.numpy())}

    def draw(self, engine, hole_cfg: float | None = None, K: int = max(CANDIDATES)) -> torch.Tensor:
        """K AR candidates an image (what `inpaint` submits for K candidates), in requests of CHUNK
        images, the hole drawn at hole_cfg (None: the request's CFG) -> [N, K, 64, 1]."""
        from imagelm.sampling.editing import inpaint
        model, out = self.models["ar"], []
        for c in range(0, len(self.real), CHUNK):
            part = slice(c, c + CHUNK)
            cond = torch.from_numpy(self.requested[part]).repeat_interleave(K)
            tokens = inpaint(model, cond, self.given[part].repeat_interleave(K, 0),
                             self.known[part].repeat_interleave(K, 0), self.options, seed=SEED + c, engine=engine,
                             hole_cfg=hole_cfg)                                          # [b * K, 64, 1]
            out.append(tokens.view(-1, K, *tokens.shape[1:]))
        return torch.cat(out)

    def verdicts(self, drawn: torch.Tensor) -> np.ndarray:
        """The classifier's verdict on every candidate: drawn [N, K, 64, 1] -> bool [N, K]."""
        return np.stack([self.classify(self.pictures(drawn[:, j].contiguous()))[1] for j in range(drawn.shape[1])], 1)


def load_setting(work: Path, data: str, hole: int = HOLE, split: str = "eval") -> Setting:
    """The reported held-out images (split "eval", requested classes from seed SEED) or the validation
    ones (split "val", see VAL_IMAGES; seed SEED + 1), with the models trained in WORK/DATA."""
    import imagelm
    from imagelm.data.transforms import to_tensor
    from imagelm.edits import encode_canvas, feather_alpha
    from imagelm.eval.features import ClassifierFeatures
    from imagelm.sampling.autoregressive import SamplingOptions
    from imagelm.tokenizers import load_tokenizer
    d = work / data
    tok = load_tokenizer(d / "vq")
    # A generator whose training has not finished is left out of the table (and said so), never half-trained.
    models = {kind: imagelm.load(d / kind) for kind in ("ar", "mlm") if finished(d / kind, GENERATOR_STEPS)}
    missing = [kind for kind in ("ar", "mlm") if kind not in models]
    if missing:
        print(f"{data}: not trained to {GENERATOR_STEPS} steps, left out: {', '.join(missing)}", flush=True)
    net = ClassifierFeatures(d / "classifier")
    validation = split == "val"
    real, labels = held_out(data, VAL_IMAGES, EVAL_IMAGES) if validation else held_out(data, EVAL_IMAGES)
    reference, _ = held_out(data, 1000)
    C = len(net.class_names)
    rng = np.random.default_rng(SEED + 1 if validation else SEED)
    requested = (labels + rng.integers(1, C, len(labels))) % C                          # never the own class
    pixel_mask, holed = centre_masks(hole)
    originals = to_tensor(real)                                                        # [N, 3, 32, 32]
    return Setting(data, hole, split, tok, models, missing, net, real, labels, requested, len(reference),
                   net(reference)[0], pixel_mask, feather_alpha(pixel_mask, 2.0), originals,
                   encode_canvas(tok, originals, 1), (~holed)[None].expand(len(real), -1).contiguous(),
                   SamplingOptions(cfg_scale=CFG, top_p=TOP_P))


def evaluate(work: Path, data: str, hole: int = HOLE, split: str = "eval", sweep_only: bool = False,
             hole_cfgs=HOLE_CFGS) -> None:
    """Class-changing inpainting of the held-out centre by every method: WORK/DATA/eval.json (see
    eval_file) and a few of the pictures (eval_images.npz).

    The AR methods share their draws: each image's max(CANDIDATES) candidates come from one engine
    request (what `inpaint` submits for K candidates); teacher forcing is candidate 1, and "K
    candidates, score S" is the best of candidates 1..K by S (`choose_candidates`, what `inpaint`
    runs after its draw). So the methods are compared on the same draws (paired), and every K and
    score costs one draw. The sweep (see sweep) adds one draw per hole guidance G, with the same
    seeds. split "val": the validation images (see VAL_IMAGES; no masked generator, no pictures) ->
    WORK/DATA/val.json. sweep_only: the reported images without the masked generator, the timed
    score rows and the pictures -> WORK/DATA/sweep.json."""
    from imagelm.eval.seams import seam_score
    from imagelm.eval.classifier import predict
    from imagelm.sampling.editing import choose_candidates, inpaint
    from imagelm.sampling.engine import Engine
    s = load_setting(work, data, hole, split)
    quick = split == "val" or sweep_only            # no masked generator, no timed rows, no pictures
    rows = [{"method": "real held-out images (unedited; accuracy = their own class)", "images": len(s.real),
             "accuracy": float((predict(s.net.net, s.real) == s.labels).mean()), "fid": None,
             "seam": seam_score(s.real, s.pixel_mask.numpy()), "seconds": None}]
    shown = {"real": s.real[:8], "requested": s.requested[:8]}

    def judged(name, tokens, seconds, **extra):
        assert torch.equal(tokens[s.known], s.given[s.known]), "a kept token changed"
        images = s.pictures(tokens)
        verdict = s.judge(images)
        rows.append({"method": name, "images": len(s.real), **extra,
                     "correct": verdict["correct"].astype(int).tolist(),
                     "accuracy": float(verdict["correct"].mean()), "fid": verdict["fid"], "seam": verdict["seam"],
                     "seconds": None if seconds is None else round(seconds, 2)})
        shown[shown_key(name)] = images[:8]
        print(f"{data}: {name}: accuracy {rows[-1]['accuracy']:.3f} FID {rows[-1]['fid']:.2f} "
              f"seam {rows[-1]['seam']:.3f}", flush=True)

    if "mlm" in s.models and not quick:
        start, out = time.time(), []
        for c in range(0, len(s.real), CHUNK):
            part = slice(c, c + CHUNK)
            out.append(inpaint(s.models["mlm"], torch.from_numpy(s.requested[part]), s.given[part], s.known[part],
                               s.options, seed=SEED + c, steps=MLM_STEPS))
        judged(f"masked generator (MaskGIT, {MLM_STEPS} steps)", torch.cat(out), time.time() - start,
               engine="float32")
    draw_seconds, sweep_seconds, ceiling, sweep_ceilings = None, None, None, None
    if "ar" in s.models:
        model, K = s.models["ar"], max(CANDIDATES)
        engine = Engine(model, rows=CHUNK * K * 2, dtype="auto")
        start = time.time()
        drawn = s.draw(engine)                                                       # [N, K, 64, 1]
        draw_seconds = time.time() - start
        cond = torch.from_numpy(s.requested)
        ceiling = ceiling_of(s.verdicts(drawn))
        judged(method_name(1, "kept"), drawn[:, 0].contiguous(), None, candidates=1, engine=engine.dtype)
        if not quick:                       # the score rows as `inpaint` runs them, timed
            for k in CANDIDATES:
                for score in SCORE_NAMES:
                    start = time.time()
                    tokens = choose_candidates(model, cond, drawn[:, :k], s.known, score, s.options)[0]
                    judged(method_name(k, score), tokens, time.time() - start, candidates=k, score=score,
                           engine=engine.dtype)
        start, sweep_ceilings = time.time(), {}
        for g in hole_cfgs:
            hole_cfg = None if g == CFG else g
            if hole_cfg is not None:
                drawn = s.draw(engine, hole_cfg)
                sweep_ceilings[f"{g:g}"] = ceiling_of(s.verdicts(drawn))
                judged(method_name(1, "kept", None, hole_cfg), drawn[:, 0].contiguous(), None, candidates=1,
                       hole_cfg=hole_cfg, engine=engine.dtype)
            sweep(s, drawn, hole_cfg, quick, lambda name, tokens, **extra: judged(name, tokens, None, **extra,
                                                                                  engine=engine.dtype))
        sweep_seconds = time.time() - start
    lo = (8 - hole) // 2
    result = {"data": data, "cpu": cpu_kind(), "held_out_images": len(s.real), "reference_images": s.reference_images,
              "hole": hole, "hole_tokens": f"{hole}x{hole} tokens (rows/cols {lo}..{lo + hole - 1} of 8x8, "
              f"{4 * hole}x{4 * hole} of 32x32 px)",
              "kept_fraction": float(s.known[0].float().mean()),
              "options": {"cfg_scale": CFG, "top_p": TOP_P, "mlm_steps": MLM_STEPS, "feather_px": 2},
              "ar_draw_seconds": None if draw_seconds is None else round(draw_seconds, 2),
              "ar_draw_candidates": max(CANDIDATES),
              "ceiling_accuracy": ceiling, "sweep_ceiling_accuracy": sweep_ceilings,
              "sweep_seconds": None if sweep_seconds is None else round(sweep_seconds, 2),
              "split": split, "hole_cfgs": list(hole_cfgs), "score_guidances": list(SCORE_GUIDANCES),
              "classifier_heldout_accuracy": s.net.net.meta.get("heldout_accuracy"),
              "class_names": list(s.net.class_names), "left_out": s.missing, "rows": rows}
    eval_file(work / data, hole, "val" if split == "val" else "sweep" if sweep_only else "eval").write_text(
        json.dumps(result, indent=2))
    if not quick:
        np.savez(eval_file(work / data, hole, "eval_images", "npz"), **shown)


def ceiling_of(hits: np.ndarray) -> dict:
    """The ceiling of (a) for any choice among the draws: hits [N, K] bool (Setting.verdicts) -> for
    each K of CANDIDATES, the share of images with one of their first K candidates judged the
    requested class. It asks the judge, so it is a bound, not a method."""
    return {k: float(hits[:, :k].any(1).mean()) for k in CANDIDATES}


def sweep(s: Setting, drawn: torch.Tensor, hole_cfg: float | None, quick: bool, judged) -> None:
    """The sweep's rows on one draw set drawn [N, K, 64, 1] (the hole at hole_cfg): every score of
    SWEEP_SCORES (guided-joint at each S of SCORE_GUIDANCES) and K of CANDIDATES, all scored from one
    conditional and one null scoring pass (candidate_scores on the stored log-probabilities; checked
    once against choose_candidates, inpaint's path). judged(name, tokens, **extra) records a row.
    Outside quick runs, the rows evaluate's timed rows already hold are skipped."""
    from imagelm.sampling.editing import candidate_scores, choose_candidates, token_log_probs
    model, K = s.models["ar"], drawn.shape[1]
    cond = torch.from_numpy(s.requested)
    cond_k, known_k = cond.repeat_interleave(K), s.known.repeat_interleave(K, 0)
    flat = drawn.reshape(-1, *drawn.shape[2:])                                       # [N*K, 64, 1]
    conditional, null = token_log_probs(model, cond_k, flat, null=True)              # [N*K, 64] each
    if hole_cfg is None:                                                             # the shortcut = inpaint's path
        scale = SCORE_GUIDANCES[1]
        direct = choose_candidates(model, cond, drawn[:, :DEFAULT_K], s.known, "guided-joint", s.options,
                                   score_guidance=scale)[1]
        stored = candidate_scores(conditional, null, known_k, "guided-joint",
                                  torch.full((64,), scale)).view(-1, K)[:, :DEFAULT_K]
        assert torch.allclose(direct, stored, rtol=1e-4, atol=1e-2), "stored scores differ from inpaint's"
    for score in SWEEP_SCORES:
        for sg in SCORE_GUIDANCES if score == "guided-joint" else (None,):
            if sg is not None and hole_cfg is None and sg == CFG and not quick:
                continue                    # the request's guided-joint row: evaluate's timed rows
            if hole_cfg is None and sg is None and not quick:
                continue                    # kept / joint / class at CFG: evaluate's timed rows
            values = candidate_scores(conditional, null, known_k, score,
                                      None if sg is None else torch.full((64,), sg)).view(-1, K)
            for k in CANDIDATES:
                best = values[:, :k].argmax(1)
                judged(method_name(k, score, sg, hole_cfg), drawn[torch.arange(len(drawn)), best], candidates=k,
                       score=score, score_guidance=sg, hole_cfg=hole_cfg)
