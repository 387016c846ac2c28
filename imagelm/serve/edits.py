"""`POST /v1/images/edits`: inpainting over the server's one engine (multipart/form-data).

    curl -F image=@in.png -F mask=@mask.png -F class=star -F n=2 -F candidates=4 http://HOST/v1/images/edits

Parts: `image` and `mask` (files: PNG, JPEG, ...; the mask white = regenerate, black or transparent =
keep, the same size as the image, which is the model's trained size), and the fields of `/v1/images`
(class | prompt, n, cfg, cfg_schedule, cfg_interval, top_k, top_p, temperature, seed) plus
`candidates` (AR candidate search, 1 = teacher forcing; n x candidates rows at most max_n), `score`,
`score_guidance` and `hole_cfg` (how candidates are scored and the hole drawn, as `imagelm edit`'s
flags of those names) and `dilate` (tokens). Strict: form values are text, parsed as the JSON route's types ("3" is an integer
here, "3.5" is not); unknown, repeated or missing parts are 422 naming the part; a body over
MAX_EDIT_BYTES is 413. The answer is /v1/images's JSON (base64 PNGs and the settings).

One edit is one engine request of n x candidates rows with the kept tokens given (Engine.submit's
given/known; drawn at `hole_cfg` when given); the worker's decode thread then picks each image's
best candidate by `score` (default: the likelihood of the kept tokens after the hole,
sampling/editing.py), decodes, and pastes the kept pixels back, as
`imagelm edit` does with the same seed and dtype.
"""
from __future__ import annotations

import asyncio
import math
import re
from typing import Literal

from fastapi import Request
from pydantic import Field, ValidationError, create_model
from starlette.datastructures import UploadFile

from imagelm.serve.errors import ApiError
from imagelm.serve.schema import MAX_PROMPT_CHARS, STRICT, sampling_fields, sampling_options, sampling_settings

ROUTE = "/v1/images/edits"
MAX_EDIT_BYTES = 4 * 1024 * 1024        # the whole multipart body: two pictures and the fields
MAX_CANDIDATES = 16
MAX_DILATE = 8
FILES = ("image", "mask")
_INT = re.compile(r"[+-]?\d{1,19}")


def edit_model(max_n: int, text: bool):
    """The pydantic model of an edit's fields (the files aside), strict like /v1/images's body."""
    from imagelm.sampling.editing import SCORES
    what = "text-conditional: give prompt" if text else "class-conditional: give class"
    return create_model(
        "EditRequest", __config__=STRICT,
        class_=(int | str | None, Field(None, alias="class", description=f"class id or name ({what})")),
        prompt=(str | None, Field(None, min_length=1, max_length=MAX_PROMPT_CHARS, description=f"caption ({what})")),
        candidates=(int, Field(1, ge=1, le=MAX_CANDIDATES, description="AR candidates per image (cost knob)")),
        score=(Literal[SCORES], Field("kept", description="how the candidates are scored (imagelm edit --score)")),
        score_guidance=(float | None, Field(None, ge=1, description="the guided scores' constant scale S "
                                                                   "(with score guided-kept / guided-joint)")),
        hole_cfg=(float | None, Field(None, ge=1, description="the guidance the hole's candidates are drawn with")),
        dilate=(int, Field(0, ge=0, le=MAX_DILATE, description="also regenerate this many tokens around the mask")),
        **sampling_fields(max_n),
    )


def form_value(name: str, text: str, kind):
    """A form field's text -> the JSON route's type for it (int, float, str; class: id or name); a
    ValueError naming what it should be otherwise."""
    if kind is int:
        if not _INT.fullmatch(text.strip()):
            raise ValueError("should be an integer")
        return int(text)
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("should be a number") from None
        if not math.isfinite(value):
            raise ValueError("should be a finite number")
        return value
    if name == "class":
        return int(text) if _INT.fullmatch(text.strip()) else text
    return text


def install_edit_route(app, service, generator, tokenizer, max_n: int, describe) -> None:
    """Add POST /v1/images/edits to `app` (see the module doc). describe: the app's pydantic error ->
    (field, message) mapping, so both routes word their refusals alike."""
    from imagelm.data.transforms import to_tensor, to_uint8
    from imagelm.edits import decode_canvas, encode_canvas, feather_alpha, paste_back, read_image, read_mask
    from imagelm.images import layout_of
    from imagelm.sampling.editing import check_score_guidance, choose_candidates, drawing_options, token_grid

    config, text = generator.config, generator.config.cond == "text"
    layout, factor = layout_of(generator), tokenizer.config.downsample
    side = config.grid_size * factor
    Model = edit_model(max_n, text)
    kinds = {(f.alias or name): f.annotation for name, f in Model.model_fields.items()}
    fields = [*FILES, *kinds]

    async def parse(request: Request):
        kind = request.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            raise ApiError(415, "body", f"send multipart/form-data with parts {', '.join(FILES)} "
                           f"(got {kind or 'no Content-Type'!r})")
        try:
            form = await request.form(max_files=len(FILES), max_fields=len(kinds), max_part_size=MAX_EDIT_BYTES)
        except Exception as e:  # noqa: BLE001 - starlette's MultiPartException / HTTPException: malformed body
            raise ApiError(400, "body", f"could not be parsed as multipart/form-data ({getattr(e, 'detail', e)})") \
                from None
        values, files = {}, {}
        for name in dict.fromkeys(form.keys()):
            parts = form.getlist(name)
            if name not in fields:
                raise ApiError(422, name, "unknown field; accepted fields: " + ", ".join(fields))
            if len(parts) > 1:
                raise ApiError(422, name, "given more than once")
            part = parts[0]
            if name in FILES:
                if not isinstance(part, UploadFile):
                    raise ApiError(422, name, "must be a file part (an image), not a text field")
                files[name] = await part.read()
                continue
            if isinstance(part, UploadFile):
                raise ApiError(422, name, "must be a text field, not a file")
            annotation = kinds[name]
            kind = int if annotation is int else float if annotation in (float, float | None) else str
            try:
                values[name] = form_value(name, part, kind)
            except ValueError as e:
                raise ApiError(422, name, str(e)) from None
        for name in FILES:
            if name not in files:
                raise ApiError(422, name, "required: a file part")
        try:
            body = Model.model_validate(values)
        except ValidationError as e:
            raise ApiError(422, *describe(e.errors()[0], fields, max_n)) from None
        return body, files

    def pictures(files, dilate: int):
        """The image uint8 [H, W, 3] and its pixel mask [H, W] (True = regenerate); 422 naming the part."""
        try:
            pixels = read_image(files["image"], "image")
        except ValueError as e:
            raise ApiError(422, "image", str(e)) from None
        H, W = pixels.shape[:2]
        if (H, W) != (side, side):
            raise ApiError(422, "image", f"is {W}x{H} pixels; this server edits {side}x{side} images "
                           "(larger canvases: `imagelm edit`)")
        try:
            mask = read_mask(files["mask"], (W, H))
        except ValueError as e:
            raise ApiError(422, "mask", str(e)) from None
        return pixels, mask, token_grid(mask, factor, dilate)

    @app.post(ROUTE, responses={
        200: {"description": "JSON with base64 PNGs and the settings, as /v1/images"},
        401: {"description": "missing or wrong API key"}, 413: {"description": "body too large"},
        415: {"description": "not multipart/form-data"}, 422: {"description": "invalid request (the part named)"},
        429: {"description": "queue full (see Retry-After)"}, 503: {"description": "shutting down"},
        504: {"description": "past the server's deadline"}})
    async def edits(request: Request):
        body, files = await parse(request)
        if text and body.class_ is not None:
            raise ApiError(422, "class", "this model is text-conditional: give prompt, not class")
        if not text and body.prompt is not None:
            raise ApiError(422, "prompt", "this model is class-conditional: give class (an id or a name), not prompt")
        n, K = body.n, body.candidates
        try:
            check_score_guidance(body.score_guidance, body.score)
        except ValueError as e:
            raise ApiError(422, "score_guidance", str(e)) from None
        if n * K > max_n:
            raise ApiError(422, "candidates", f"n x candidates is {n * K}; at most {max_n} rows a request on "
                           "this server")
        pixels, mask, regenerated = await asyncio.to_thread(pictures, files, body.dilate)
        field = "prompt" if text else "class"
        cond, settings = await service.condition(field, body.class_, body.prompt, n * K)
        original = to_tensor(pixels)                                                   # [3, H, W]
        given = await asyncio.to_thread(encode_canvas, tokenizer, original[None], config.num_subtokens, layout)
        known = (~regenerated).flatten()[None]                                          # [1, L]
        alpha = feather_alpha(mask, factor / 2)
        chosen = cond[::K]                                                              # one condition an image
        options = sampling_options(body, service.generator)                             # the request's: scores

        def finish(tokens):
            """[n * K, L, n_sub] -> the best candidate of each image, decoded and pasted back: uint8 [n, H, W, 3]."""
            tokens = tokens.to(given.device)
            if K > 1:
                tokens = choose_candidates(generator, chosen, tokens.view(n, K, *tokens.shape[1:]),
                                           known.expand(n, -1).to(tokens.device), body.score, options,
                                           score_guidance=body.score_guidance)[0]
            decoded = decode_canvas(tokenizer, tokens, config.grid_size, config.grid_size, layout)
            return to_uint8(paste_back(decoded, original, alpha))

        settings.update(sampling_settings(body), candidates=K, score=body.score, score_guidance=body.score_guidance,
                        hole_cfg=body.hole_cfg, dilate=body.dilate, regenerated_tokens=int(regenerated.sum()))
        drawing = drawing_options(options, body.hole_cfg)
        job = service.submit(request, cond, drawing, body.seed,
                             given=given.expand(n * K, -1, -1).contiguous(),
                             known=known.expand(n * K, -1).contiguous(), decode=finish)
        images = await service.wait(request, job)
        if images is None:
            from fastapi.responses import Response
            return Response(status_code=499)
        return await app.state.payload(job, settings, images)

    app.state.edit_fields = fields
