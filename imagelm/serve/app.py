"""The HTTP API and the playground page over one sampling engine (FastAPI).

    app = create_app(imagelm.load("runs/gpt"), tokenizer)      # or `imagelm serve --ckpt runs/gpt`

Routes:
- `POST /v1/images`: {class | prompt, n, cfg, cfg_schedule, cfg_interval, top_k, top_p, temperature,
  seed} -> JSON with base64 PNGs and the settings that reproduce them (default); the PNG itself when
  n is 1 and the client sends `Accept: image/png`; or, with `Accept: application/x-ndjson`, progress
  lines while the images decode, then the same JSON as the last line (the playground uses this).
  A request maps to exactly one engine request of n images seeded by `seed`, so it gives the images
  `imagelm sample --classes C --n N --seed S` gives (same dtype).
- `GET /healthz`, `GET /v1/models` (model, tokenizer, classes or text conditioning, limits),
  `GET /` (the playground), `GET /openapi.json` (the request schema, generated from the same model
  that validates requests).

Errors are JSON `{"error": "<field>: <what is wrong>", "errors": [{"field", "message"}]}`: 422 for a
request that is well-formed JSON but not acceptable, 413 for an oversized body, 429 with `Retry-After`
when the queue is full, 503 while shutting down.
"""

import asyncio
import base64
import io
import json
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagelm.sampling.autoregressive import SamplingOptions
from imagelm.sampling.engine import Engine, EngineError
from imagelm.sampling.logits import CFG_SCHEDULES
from imagelm.serve.worker import EngineWorker, QueueFull, RequestCancelled, ServerClosing

MAX_BODY_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**63 - 1


class ApiError(Exception):
    """A request we refuse: HTTP status, the field at fault (or "body"), and a one-line message."""

    def __init__(self, status: int, field: str, message: str, headers: dict | None = None):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message, self.headers = status, field, message, headers


def request_model(max_n: int, text: bool) -> type[BaseModel]:
    """The pydantic model of a POST /v1/images body for this server's limits (so the OpenAPI schema
    states the same bounds the server enforces). Strict: "3" is not an integer, unknown fields fail."""
    # Both condition fields are in every schema, so a prompt sent to a class model gets a message
    # that says so rather than "unknown field".
    what = "text-conditional: give prompt" if text else "class-conditional: give class"
    cond = {
        "class_": (int | str | None, Field(None, alias="class", description=f"class id or name ({what})")),
        "prompt": (str | None, Field(None, min_length=1, max_length=MAX_PROMPT_CHARS, description=f"caption ({what})")),
    }
    return create_model(
        "ImageRequest",
        __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=False),
        **cond,
        n=(int, Field(1, ge=1, le=max_n, description="images to draw (one engine request)")),
        cfg=(float, Field(2.0, ge=0, le=100, description="classifier-free guidance scale; 1 = off")),
        cfg_schedule=(Literal[CFG_SCHEDULES], Field("constant", description="how guidance rises over tokens")),
        cfg_interval=(int, Field(-1, ge=-1, le=1_000_000, description="guide only the first N tokens; -1 = all")),
        top_k=(int, Field(0, ge=0, le=1_000_000, description="keep the k most likely tokens; 0 = off")),
        top_p=(float, Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1 = off")),
        temperature=(float, Field(1.0, ge=0, le=100, description="0 = greedy")),
        seed=(int, Field(0, ge=0, le=MAX_SEED, description="same seed and settings, same images")),
    )


def png_bytes(image) -> bytes:
    """uint8 [H, W, 3] -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _model_name(meta: dict) -> str:
    """runs/gpt/checkpoints/step-0000400 -> "gpt/step-0000400" (a run's name and its checkpoint)."""
    path = Path(meta.get("path", "model"))
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413 before anything parses them."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _send_json(send, 413, {"error": f"body: larger than {self.limit} bytes", "errors": [
                {"field": "body", "message": f"larger than {self.limit} bytes"}]})
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:   # chunked bodies carry no length up front
                    raise ApiError(413, "body", f"larger than {self.limit} bytes")
            return message
        return await self.app(scope, limited, send)


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(generator, tokenizer, *, rows: int = 32, dtype: str = "auto", max_n: int = 16,
               max_pending: int = 64, grace_s: float = 10.0, text_encoder=None,
               engine_options: dict | None = None) -> FastAPI:
    """The FastAPI app serving `generator` (an AR generator from imagelm.load) and decoding with
    `tokenizer` (imagelm.linked_tokenizer). One engine of `rows` cache rows in `dtype`; at most
    `max_n` images a request and `max_pending` requests queued or decoding; on shutdown, in-flight
    work gets `grace_s` seconds to finish before it is cancelled. engine_options: more Engine
    arguments (decode, window, compile)."""
    from imagelm.api import decode_tokens, encode_prompts, resolve_classes
    from imagelm.data.transforms import to_uint8

    config, meta = generator.config, getattr(generator, "meta", {})
    text = config.cond == "text"
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    engine = Engine(generator, rows=rows, dtype=dtype, **(engine_options or {}))
    worker = EngineWorker(engine, lambda tokens: to_uint8(decode_tokens(tokens, tokenizer).float()),
                          max_pending=max_pending)
    if text and text_encoder is None:
        from imagelm.text import text_encoder_from_spec
        spec = meta.get("text_encoder")
        if not spec:
            raise ValueError("this text-conditional generator does not name its text encoder")
        text_encoder = text_encoder_from_spec(spec, next(generator.parameters()).device)
    class_names = list(meta.get("class_names") or [])
    Body = request_model(max_n, text)
    fields = [f.alias or name for name, f in Body.model_fields.items()]
    info = {
        "model": _model_name(meta), "kind": getattr(generator, "kind", "ar"), "preset": meta.get("preset"),
        "conditioning": "text" if text else "class",
        "classes": None if text else [{"id": i, "name": class_names[i] if i < len(class_names) else str(i)}
                                      for i in range(config.num_classes)],
        "text_encoder": (meta.get("text_encoder") if text else None),
        "tokens": config.seq_len, "image_size": getattr(tokenizer.config, "image_size", None),
        "tokenizer": {"kind": type(tokenizer).__name__, "path": (meta.get("tokenizer") or {}).get("path")},
        "engine": {"dtype": engine.dtype, "why": engine.dtype_reason, "rows": engine.rows,
                   "decode": engine.decode, "compiled": engine.compiled},
        "limits": {"max_n": max_n, "max_pending": max_pending, "max_body_bytes": MAX_BODY_BYTES,
                   "max_prompt_chars": MAX_PROMPT_CHARS if text else None},
        "cfg_schedules": list(CFG_SCHEDULES), "fields": fields,
    }

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        await worker.aclose(grace_s)

    app = FastAPI(title="imagelm", version="0.1.0", lifespan=lifespan,
                  description="Image generation with language models: one sampling engine shared by all clients.")
    app.state.worker, app.state.engine, app.state.info = worker, engine, info

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse({"error": f"{e.field}: {e.message}", "errors": [{"field": e.field, "message": e.message}]},
                            status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        kind = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in kind:
            message = f"send a JSON object with Content-Type: application/json (got {kind or 'no Content-Type'!r})"
            return JSONResponse({"error": f"body: {message}", "errors": [{"field": "body", "message": message}]},
                                status_code=415)
        errors = [_describe(err, fields, max_n) for err in e.errors()]
        merged: dict[str, list[str]] = {}
        for field, message in errors:          # a union (class: int | str) fails once per member
            merged.setdefault(field, []).append(message)
        errors = [{"field": f, "message": " or ".join(dict.fromkeys(m))} for f, m in merged.items()]
        return JSONResponse({"error": "; ".join(f"{x['field']}: {x['message']}" for x in errors), "errors": errors},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        if isinstance(e.__cause__, ApiError):    # BodyLimit stopped a chunked body while FastAPI read it
            return await _api_error(request, e.__cause__)
        if e.status_code == 400:   # FastAPI could not read the body at all (e.g. bytes that are not UTF-8)
            message = f"could not be parsed as JSON ({e.detail})"
            return JSONResponse({"error": f"body: {message}", "errors": [{"field": "body", "message": message}]},
                                status_code=400)
        return JSONResponse({"error": str(e.detail), "errors": []}, status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground():
        return HTMLResponse(resources.files("imagelm.serve").joinpath("static/index.html").read_text())

    @app.get("/healthz")
    async def healthz():
        status = "failed" if worker.broken else "closing" if worker.closing else "ok"
        body = {"status": status, "pending": worker.pending, "rows_in_use": engine.rows_in_use,
                "completed": worker.completed}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/v1/models")
    async def models():
        return info

    async def condition(body) -> tuple[object, dict]:
        """The engine's condition for this body ([n] class ids or a TextCondition) and its settings."""
        if text:
            if body.class_ is not None:
                raise ApiError(422, "class", "this model is text-conditional: give prompt, not class")
            if body.prompt is None:
                raise ApiError(422, "prompt", "required: this model is text-conditional")
            # Encoded once and repeated, as imagelm.sample does, so the features (and images) match it.
            cond = await asyncio.to_thread(lambda: encode_prompts(generator, [body.prompt], text_encoder))
            cond = cond.repeat_interleave(body.n)
            return cond, {"prompt": body.prompt}
        if body.prompt is not None:
            raise ApiError(422, "prompt", "this model is class-conditional: give class (an id or a name), not prompt")
        if body.class_ is None:
            raise ApiError(422, "class", f"required: a class id 0..{config.num_classes - 1} or a name")
        if isinstance(body.class_, str) and not body.class_.strip():
            raise ApiError(422, "class", "empty class name")
        try:
            (cid,) = resolve_classes([body.class_], class_names, config.num_classes)
        except ValueError as e:
            raise ApiError(422, "class", str(e)) from None
        name = class_names[cid] if cid < len(class_names) else str(cid)
        return torch.full((body.n,), cid, dtype=torch.long), {"class": cid, "class_name": name}

    async def submit(request: Request, body):
        """Validate what the schema cannot (class, prompt, rows) and queue the request -> (job, settings)."""
        cond, settings = await condition(body)
        options = SamplingOptions(cfg_scale=body.cfg, cfg_schedule=body.cfg_schedule, cfg_interval=body.cfg_interval,
                                  temperature=body.temperature, top_k=body.top_k, top_p=body.top_p)
        settings.update(n=body.n, cfg=body.cfg, cfg_schedule=body.cfg_schedule, cfg_interval=body.cfg_interval,
                        top_k=body.top_k, top_p=body.top_p, temperature=body.temperature, seed=body.seed)
        try:
            return worker.submit(cond, options, body.seed), settings
        except QueueFull as e:
            raise ApiError(429, "queue", str(e), {"Retry-After": str(e.retry_after_s)}) from None
        except ServerClosing as e:
            raise ApiError(503, "server", str(e), {"Retry-After": "5"}) from None
        except EngineError as e:
            raise ApiError(422, "n", str(e)) from None

    async def payload(job, settings, images) -> dict:
        pngs = await asyncio.to_thread(lambda: [png_bytes(img) for img in images])
        return {"model": info["model"], "settings": settings,
                "images": [{"index": i, "width": int(img.shape[1]), "height": int(img.shape[0]),
                            "png_base64": base64.b64encode(png).decode()} for i, (img, png) in enumerate(zip(images, pngs))],
                "seconds": round(time.monotonic() - job.submitted, 4)}

    @app.post("/v1/images", responses={
        200: {"description": "JSON with base64 PNGs; image/png when n = 1 and asked; NDJSON progress when asked",
              "content": {"image/png": {}, "application/x-ndjson": {}}},
        413: {"description": "body too large"}, 422: {"description": "invalid request"},
        429: {"description": "queue full (see Retry-After)"}, 503: {"description": "shutting down"}})
    async def images(request: Request, body: Body):   # type: ignore[valid-type]
        accept = request.headers.get("accept", "")
        wants_png = "image/png" in accept and "application/json" not in accept
        if wants_png and body.n != 1:
            raise ApiError(406, "n", f"Accept: image/png returns one image; n is {body.n} (ask for application/json)")
        job, settings = await submit(request, body)
        if "application/x-ndjson" in accept:
            return JobStream(job, _progress_lines(job, settings), media_type="application/x-ndjson")
        result = await _await_or_disconnect(request, job)
        if result is None:
            return Response(status_code=499)       # nobody is listening; nginx's "client closed request"
        if wants_png:
            png = await asyncio.to_thread(png_bytes, result[0])
            return Response(png, media_type="image/png", headers={"X-Imagelm-Settings": json.dumps(settings)})
        return await payload(job, settings, result)

    async def _progress_lines(job, settings):
        """NDJSON: {"event": "progress", ...} at least every 0.5 s (so a client that left is noticed:
        the send fails and JobStream cancels the request), then {"event": "done", ...} or "error"."""
        while not job.future.done():
            yield json.dumps({"event": "progress", "queued": job.queued, "generated": job.request.generated,
                              "length": engine.length}) + "\n"
            await asyncio.wait([job.future], timeout=0.5)
        try:
            images = job.future.result()
        except (RequestCancelled, RuntimeError) as e:
            yield json.dumps({"event": "error", "error": str(e)}) + "\n"
            return
        yield json.dumps({"event": "done", **(await payload(job, settings, images))}) + "\n"

    async def _await_or_disconnect(request: Request, job):
        """The images, or None if the client disconnected first (then its engine request is cancelled)."""
        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass
        watch = asyncio.ensure_future(disconnected())
        result = asyncio.ensure_future(job.result())
        try:
            await asyncio.wait([watch, result], return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not result.done():
            result.cancel()                  # cancels the engine request: its rows free at the next step
            return None
        try:
            return result.result()
        except RequestCancelled as e:
            raise ApiError(503, "server", str(e)) from None
        except RuntimeError as e:
            raise ApiError(500, "server", str(e)) from None

    app.add_middleware(BodyLimit)
    return app


class JobStream(StreamingResponse):
    """A streamed answer that cancels its engine request however the stream ends early (a send to a
    gone client fails, or Starlette sees the disconnect): a suspended generator would only be closed
    whenever it is garbage-collected, holding its rows until then."""

    def __init__(self, job, content, **kwargs):
        super().__init__(content, **kwargs)
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.job.future.done():
                self.job.cancel()


def _describe(err: dict, fields: list[str], max_n: int) -> tuple[str, str]:
    """A pydantic error -> (field, plain message)."""
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    kind = err.get("type", "")
    if kind == "json_invalid":
        return "body", f"invalid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
    if not loc or (kind in ("model_attributes_type", "dict_type", "model_type") and len(loc) <= 1 and loc[0] not in fields):
        return "body", "must be a JSON object of fields " + ", ".join(fields)
    field = loc[0]
    if kind == "extra_forbidden":
        return field, "unknown field; accepted fields: " + ", ".join(fields)
    message = err.get("msg", "invalid")
    if kind == "missing":
        message = "required"
    elif field == "class" and kind in ("int_type", "string_type"):
        message = "should be a class id (an integer) or a class name (a string)"
    elif field == "n" and kind == "less_than_equal":
        message = f"at most {max_n} images a request on this server"
    return field, message
