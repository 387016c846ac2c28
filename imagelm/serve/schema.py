"""The request bodies both APIs validate (pydantic, strict: "3" is not an integer, unknown fields
fail), built for one server's limits so the OpenAPI schema states the bounds the server enforces."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from imagelm.sampling.autoregressive import SamplingOptions
from imagelm.sampling.logits import CFG_SCHEDULES

MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**63 - 1
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=False)


def sampling_fields(max_n: int) -> dict:
    """The fields both APIs take for how to sample (pydantic create_model specs), with this server's bounds."""
    return dict(
        n=(int, Field(1, ge=1, le=max_n, description="images to draw (one engine request)")),
        cfg=(float, Field(2.0, ge=0, le=100, description="classifier-free guidance scale; 1 = off")),
        cfg_schedule=(Literal[CFG_SCHEDULES], Field("constant", description="how guidance rises over tokens")),
        cfg_interval=(int, Field(-1, ge=-1, le=1_000_000, description="guide only the first N tokens; -1 = all")),
        top_k=(int, Field(0, ge=0, le=1_000_000, description="keep the k most likely tokens; 0 = off")),
        top_p=(float, Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1 = off")),
        temperature=(float, Field(1.0, ge=0, le=100, description="0 = greedy")),
        seed=(int, Field(0, ge=0, le=MAX_SEED, description="same seed and settings, same images")),
    )


# Body field -> SamplingOptions field.
_OPTION_FIELDS = {"cfg": "cfg_scale", "cfg_schedule": "cfg_schedule", "cfg_interval": "cfg_interval",
                  "temperature": "temperature", "top_k": "top_k", "top_p": "top_p"}


def sampling_options(body, generator=None) -> SamplingOptions:
    """The options a body asks for, as the served `generator` is sampled: with its checkpoint's
    conventions (an ELM or LlamaGen import: that project's meaning, and its sampling script's
    defaults for the fields the body leaves out; ours: the schema's defaults), as `imagelm sample`."""
    if generator is None:
        return SamplingOptions(**{opt: getattr(body, f) for f, opt in _OPTION_FIELDS.items()})
    from imagelm.images import asked_sampler, resolve_sampler
    asked = {opt: getattr(body, f) if f in body.model_fields_set else None for f, opt in _OPTION_FIELDS.items()}
    fallback = {opt: getattr(body, f) for f, opt in _OPTION_FIELDS.items()}
    return resolve_sampler(generator, asked_sampler(asked, "auto", fallback)).options


def sampling_settings(body) -> dict:
    """The sampling fields of a body as they reproduce its images."""
    return {k: getattr(body, k) for k in ("n", "cfg", "cfg_schedule", "cfg_interval", "top_k", "top_p",
                                           "temperature", "seed")}


def request_model(max_n: int, text: bool) -> type[BaseModel]:
    """The pydantic model of a POST /v1/images body for this server's limits (so the OpenAPI schema
    states the same bounds the server enforces). Strict: "3" is not an integer, unknown fields fail."""
    # Both condition fields are in every schema, so a prompt sent to a class model gets a message
    # that says so rather than "unknown field".
    what = "text-conditional: give prompt" if text else "class-conditional: give class"
    return create_model(
        "ImageRequest", __config__=STRICT,
        class_=(int | str | None, Field(None, alias="class", description=f"class id or name ({what})")),
        prompt=(str | None, Field(None, min_length=1, max_length=MAX_PROMPT_CHARS, description=f"caption ({what})")),
        **sampling_fields(max_n),
    )
