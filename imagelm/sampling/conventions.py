"""Whose meaning a set of sampling options has: ours, ELM's or LlamaGen's.

A model imported from ELM (Pepper-lll/LMforImageGeneration) or LlamaGen (FoundationVision/LlamaGen)
is sampled, by default, as its original code samples it: the same option means the same thing, and an
option not given takes the original sampling script's default. `plan_sampling` turns options in one
project's terms into what our samplers run:

- imagelm: as given; unset options take SamplingOptions' defaults (masked: 10 steps, choice
  temperature 4.5, rank re-masking).
- elm: CFG schedules are ELM's (linear -> elm-linear, ... see logits.cfg_scale_at). Masked models
  re-mask by ELM's cut-off rule, and `temperature` is what ELM's masked sampler uses it for, the
  Gumbel noise on confidences: its candidates are drawn at temperature 1 (top-k / top-p, which it
  ignores, still filter the draw here, so top_k=1 is greedy). Defaults: AR from sample_fid.sh (the
  recipe behind ELM's FID numbers: CFG 4 linear, top-k 1000, temperature 1), masked from sample.py
  (CFG 4 constant, temperature 1, 10 steps).
- llamagen: guidance only when cfg_scale > 1 (it runs the conditional logits alone otherwise);
  cfg_interval N guides tokens 0..N+1 (its prefill always guides the first token and its decode loop
  stops guiding when i > N, i counting from the second token), then the conditional logits alone
  (our scale 1, exact). Defaults from sample_c2i.py (CFG 4, top-k 2000, top-p 1, temperature 1,
  no interval) or sample_t2i.py (CFG 7.5, top-k 1000).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from imagelm.sampling.logits import SamplingOptions

CONVENTIONS = ("imagelm", "elm", "llamagen")

# Our schedule names -> ELM's formula of the same name (constant is the same in both).
_ELM_SCHEDULES = {name: f"elm-{name}" for name in ("linear", "cos", "log", "square", "square_root")}

# The original sampling scripts' defaults: (conventions, kind, cond) -> options not given by the caller.
ORIGINAL_DEFAULTS = {
    ("elm", "ar", "class"): dict(cfg_scale=4.0, cfg_schedule="linear", top_k=1000, temperature=1.0),
    ("elm", "mlm", "class"): dict(cfg_scale=4.0, cfg_schedule="constant", temperature=1.0, steps=10),
    ("llamagen", "ar", "class"): dict(cfg_scale=4.0, cfg_interval=-1, top_k=2000, top_p=1.0, temperature=1.0),
    ("llamagen", "ar", "text"): dict(cfg_scale=7.5, cfg_interval=-1, top_k=1000, top_p=1.0, temperature=1.0),
}

_OURS = dict(steps=10, choice_temperature=4.5)


@dataclass(frozen=True)
class SamplingPlan:
    """What our samplers run: the options, and for masked generators the step count, the initial
    Gumbel temperature on confidences and the re-masking rule (masked.REMASK_RULES)."""
    options: SamplingOptions
    steps: int = 10
    choice_temperature: float = 4.5
    remask: str = "rank"
    conventions: str = "imagelm"


def checkpoint_source(meta) -> str:
    """Where a checkpoint's weights came from: "imagelm", "elm" or "llamagen". meta: a checkpoint's
    CheckpointMeta (`model.meta`, whose provenance compat records at import), or None (a module
    built in memory: ours)."""
    provenance = getattr(meta, "provenance", None)
    return provenance.source if provenance is not None else "imagelm"


def sampling_conventions(meta) -> str:
    """The conventions a checkpoint is sampled with by default: its source's for an ELM or LlamaGen
    import, ours for everything else (trained here, fine-tuned from an import, built in memory)."""
    source = checkpoint_source(meta)
    return source if source in CONVENTIONS else "imagelm"


def resolve_conventions(conventions: str, meta) -> str:
    """"auto" -> the checkpoint's (sampling_conventions); otherwise one of CONVENTIONS, checked."""
    if conventions == "auto":
        return sampling_conventions(meta)
    if conventions not in CONVENTIONS:
        raise ValueError(f"unknown sampling conventions {conventions!r}; choose auto or one of {', '.join(CONVENTIONS)}")
    return conventions


def plan_sampling(conventions: str, kind: str = "ar", cond: str = "class", *, cfg_scale: float | None = None,
                  cfg_schedule: str | None = None, cfg_interval: int | None = None,
                  temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                  steps: int | None = None, cfg_power: float = 1.0, choice_temperature: float | None = None,
                  remask: str | None = None) -> SamplingPlan:
    """Options in the terms of `conventions` (one of CONVENTIONS) for a generator of `kind` ("ar" or
    "mlm") and condition `cond` ("class" or "text") -> the SamplingPlan our samplers run. None = the
    conventions' default (the original script's for elm / llamagen, ours otherwise).
    choice_temperature and remask (masked generators) are ours to set; ELM's conventions fix them
    (its temperature is the choice temperature, its rule the cut-off one)."""
    if conventions not in CONVENTIONS:
        raise ValueError(f"unknown sampling conventions {conventions!r}; choose one of {', '.join(CONVENTIONS)}")
    given = dict(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, cfg_interval=cfg_interval,
                 temperature=temperature, top_k=top_k, top_p=top_p, steps=steps,
                 choice_temperature=choice_temperature)
    values = {**_OURS, **ORIGINAL_DEFAULTS.get((conventions, kind, cond), {}),
              **{k: v for k, v in given.items() if v is not None}}
    steps, choice_temperature = values.pop("steps"), values.pop("choice_temperature")
    options = SamplingOptions(**values, cfg_power=cfg_power)     # checks every value, in its own terms
    remask = remask or "rank"
    if conventions == "elm":
        options = dataclasses.replace(options, cfg_schedule=_ELM_SCHEDULES.get(options.cfg_schedule,
                                                                               options.cfg_schedule))
        if kind == "mlm":
            choice_temperature, remask = options.temperature, "elm"
            options = dataclasses.replace(options, temperature=1.0)
    elif conventions == "llamagen":
        interval = options.cfg_interval + 2 if options.cfg_interval >= 0 else -1
        options = dataclasses.replace(options, cfg_scale=max(options.cfg_scale, 1.0), cfg_interval=interval)
    return SamplingPlan(options, steps, choice_temperature, remask, conventions)
