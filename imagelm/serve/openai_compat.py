"""OpenAI's images API over our engine, so existing clients work unchanged.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")
    r = client.images.generate(model="gpt/step-0001000", prompt="circle", n=4, size="256x256",
                               response_format="b64_json", extra_body={"cfg": 2, "top_k": 100, "seed": 7})
    png = base64.b64decode(r.data[0].b64_json)

`POST /v1/images/generations` takes the fields the official client sends for `images.generate`:
`prompt` (a caption for text models; a class id or name, e.g. "3" or "circle", for class models),
`model` (this server's model id, or omitted), `n`, `size` ("WxH": the model's own size, or "auto"),
`response_format` ("b64_json"; there are no URLs to fetch), `output_format` ("png"), `background`
("auto"/"opaque"), and `quality`, `style`, `user`, `moderation`, `safety_identifier`,
`output_compression`, which are accepted and change nothing. Our sampling options go in the client's
`extra_body`, which it merges into the JSON body: cfg, cfg_schedule, cfg_interval, top_k, top_p,
temperature, seed, and dtype (which must be the engine's: a check that the images are the ones
`imagelm sample --dtype D` gives). The answer is OpenAI's: {"created", "data": [{"b64_json"}], ...}.
Refusals are OpenAI's error objects, 400 (BadRequestError) naming the field as `param`.
"""

import base64
import re
import time
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field, create_model

from imagelm.serve.errors import ApiError
from imagelm.serve.schema import MAX_PROMPT_CHARS, STRICT, sampling_fields, sampling_options, sampling_settings

QUALITIES = Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"]
ENGINE_DTYPES = Literal["auto", "float32", "bfloat16", "int8"]
_SIZE = re.compile(r"(\d{1,6})x(\d{1,6})")


def model_card(info: dict) -> dict:
    """The server's model as an entry of OpenAI's model list: id, object, created, owned_by, and our
    own description (conditioning, classes, tokens, image size, engine, limits) beside them."""
    card = {"id": info["model"], "object": "model", "created": int(time.time()), "owned_by": "imagelm"}
    card.update({k: v for k, v in info.items() if k != "model"})
    return card


def generation_model(max_n: int):
    """The pydantic model of a POST /v1/images/generations body (strict; unknown fields fail)."""
    ours = sampling_fields(max_n)
    ours["n"] = (int | None, Field(1, ge=1, le=max_n, description="images to draw (one engine request)"))
    return create_model(
        "ImageGenerationRequest", __config__=STRICT,
        prompt=(str, Field(min_length=1, max_length=MAX_PROMPT_CHARS,
                           description="a caption (text models), or a class id or name (class models)")),
        model=(str | None, Field(None, description="this server's model id (GET /v1/models), or omitted")),
        size=(str | None, Field(None, description='"WxH", the model\'s own size, or "auto"')),
        response_format=(Literal["b64_json", "url"] | None, Field(None, description="b64_json only")),
        output_format=(Literal["png", "webp", "jpeg", "gif", "svg"] | None, Field(None, description="png only")),
        background=(Literal["transparent", "opaque", "auto"] | None, Field(None, description="opaque images")),
        stream=(bool | None, Field(None, description="not supported: use /v1/images with NDJSON")),
        partial_images=(int | None, Field(None, ge=0, le=3, description="not supported (0 only)")),
        quality=(QUALITIES | None, Field(None, description="accepted; the model has one quality")),
        style=(Literal["vivid", "natural"] | None, Field(None, description="accepted; changes nothing")),
        moderation=(Literal["low", "auto"] | None, Field(None, description="accepted; changes nothing")),
        output_compression=(int | None, Field(None, ge=0, le=100, description="accepted; PNGs are lossless")),
        user=(str | None, Field(None, max_length=256, description="accepted; not stored")),
        safety_identifier=(str | None, Field(None, max_length=256, description="accepted; not stored")),
        dtype=(ENGINE_DTYPES | None, Field(None, description="must be the engine's dtype (or auto)")),
        **{k: v for k, v in ours.items() if k != "n"}, n=ours["n"],
    )


def _check_unsupported(body, engine_dtype: str, native: tuple[int, int]) -> None:
    """Refuse, naming the field, what this server cannot do."""
    if body.response_format == "url":
        raise ApiError(400, "response_format", "this server returns images inline: use b64_json (there are no URLs)")
    if body.output_format not in (None, "png"):
        raise ApiError(400, "output_format", f"only png is produced, not {body.output_format}")
    if body.background == "transparent":
        raise ApiError(400, "background", "the images are opaque: use auto or opaque")
    if body.stream:
        raise ApiError(400, "stream", "streaming is not supported here; POST /v1/images with "
                       "Accept: application/x-ndjson streams progress")
    if body.partial_images:
        raise ApiError(400, "partial_images", "partial images are not supported (0 only)")
    if body.dtype not in (None, "auto", engine_dtype):
        raise ApiError(400, "dtype", f"this server's engine runs {engine_dtype}, not {body.dtype} "
                       f"(start it with --dtype {body.dtype} for those images)")
    w, h = native
    if body.size not in (None, "auto"):
        m = _SIZE.fullmatch(body.size)
        if m is None:
            raise ApiError(400, "size", f"must be 'WxH' (e.g. '{w}x{h}') or 'auto', got {body.size!r}")
        if (int(m[1]), int(m[2])) != (w, h):
            raise ApiError(400, "size", f"this model draws {w}x{h} images, not {body.size}")


def install_openai_routes(app: FastAPI, service, card: dict, max_n: int, route_fields: dict) -> None:
    """Add GET /v1/models, GET /v1/models/{id} and POST /v1/images/generations to `app`."""
    Body = generation_model(max_n)
    route_fields["/v1/images/generations"] = list(Body.model_fields)
    engine = service.worker.engine
    size = card.get("image_size") or 0
    native = (size, size)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != card["id"]:
            raise ApiError(404, "model", f"the model {model_id!r} is not served here; this server serves "
                           f"{card['id']!r}", code="model_not_found")
        return card

    @app.post("/v1/images/generations", responses={
        400: {"description": "invalid request (param names the field)"}, 401: {"description": "missing or wrong API key"},
        404: {"description": "another model"}, 413: {"description": "body too large"},
        429: {"description": "queue full (see Retry-After)"}, 503: {"description": "shutting down"},
        504: {"description": "past the server's deadline"}})
    async def generations(request: Request, body: Body):   # type: ignore[valid-type]
        if body.model is not None and body.model != card["id"]:
            raise ApiError(404, "model", f"the model {body.model!r} is not served here; this server serves "
                           f"{card['id']!r}", code="model_not_found")
        _check_unsupported(body, engine.dtype, native)
        if body.n is None:                                   # the client sends null for n=None
            body = body.model_copy(update={"n": 1})
        prompt = body.prompt
        class_ = None if service.text else (int(prompt) if prompt.strip().isdigit() else prompt.strip())
        cond, settings = await service.condition("prompt", class_, prompt if service.text else None, body.n)
        settings.update(sampling_settings(body), dtype=engine.dtype)
        job = service.submit(request, cond, sampling_options(body, service.generator), body.seed)
        result = await service.wait(request, job)
        if result is None:
            return Response(status_code=499)       # nobody is listening
        pngs = await service.pngs(result)
        return {"created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(png).decode(), "revised_prompt": None} for png in pngs],
                "background": "opaque", "output_format": "png", "size": f"{result.shape[2]}x{result.shape[1]}",
                "settings": settings}
