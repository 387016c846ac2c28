"""The HTTP API and the playground page over one sampling engine (FastAPI).

    app = create_app(imagelm.load("runs/gpt"), tokenizer)      # or `imagelm serve --ckpt runs/gpt`

Routes:
- `POST /v1/images`: {class | prompt, n, cfg, cfg_schedule, cfg_interval, top_k, top_p, temperature,
  seed} -> JSON with base64 PNGs and the settings that reproduce them (default); the PNG itself when
  n is 1 and the client sends `Accept: image/png`; or, with `Accept: application/x-ndjson`, progress
  lines while the images decode, then the same JSON as the last line (the playground uses this).
  A request maps to exactly one engine request of n images seeded by `seed`, so it gives the images
  `imagelm sample --classes C --n N --seed S` gives (same dtype).
- `POST /v1/images/edits`: multipart image + mask (white = regenerate) and the same fields, plus
  candidates and dilate -> the same JSON (imagelm.serve.edits).
- `POST /v1/images/generations`, `GET /v1/models`, `GET /v1/models/{id}`: OpenAI's images API and
  model list, so the official `openai` client works unchanged (imagelm.serve.openai_compat).
- `GET /metrics` (Prometheus text format), `GET /healthz`, `GET /` (the playground),
  `GET /openapi.json` (the request schemas, generated from the models that validate requests).

With API keys, every route but /, /healthz and the schema needs `Authorization: Bearer KEY` (401
otherwise). Every answer carries `X-Request-Id`. Errors on /v1/images are JSON `{"error": "<field>:
<what is wrong>", "errors": [{"field", "message"}]}`, elsewhere OpenAI's `{"error": {"message",
"type", "param", "code"}}`: 422 (400 on OpenAI routes) for a request that is well-formed JSON but not
acceptable, 401 without a valid key, 413 for an oversized body, 429 with `Retry-After` when the queue
is full, 503 while shutting down, 504 past the `timeout_s` deadline.
"""

import asyncio
import base64
import json
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagelm.sampling.engine import Engine
from imagelm.sampling.logits import CFG_SCHEDULES
from imagelm.serve.edits import MAX_EDIT_BYTES, ROUTE as EDIT_ROUTE, install_edit_route
from imagelm.serve.errors import ApiError, error_payload, speaks_openai
from imagelm.serve.metrics import CONTENT_TYPE, ServerMetrics
from imagelm.serve.middleware import MAX_BODY_BYTES, ApiKeys, BodyLimit, RequestContext
from imagelm.serve.openai_compat import install_openai_routes, model_card
from imagelm.serve.schema import MAX_PROMPT_CHARS, request_model, sampling_options, sampling_settings
from imagelm.serve.service import Service, png_bytes
from imagelm.serve.worker import EngineWorker, RequestCancelled

def _model_name(meta: dict) -> str:
    """runs/gpt/checkpoints/step-0000400 -> "gpt/step-0000400" (a run's name and its checkpoint)."""
    path = Path(meta.get("path", "model"))
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name


def create_app(generator, tokenizer, *, rows: int = 32, dtype: str = "auto", max_n: int = 16,
               max_pending: int = 64, grace_s: float = 10.0, text_encoder=None, api_keys=(),
               cors_origins=(), timeout_s: float | None = None, engine_options: dict | None = None) -> FastAPI:
    """The FastAPI app serving `generator` (an AR generator from imagelm.load) and decoding with
    `tokenizer` (imagelm.linked_tokenizer). One engine of `rows` cache rows in `dtype`; at most
    `max_n` images a request and `max_pending` requests queued or decoding; on shutdown, in-flight
    work gets `grace_s` seconds to finish before it is cancelled. api_keys: bearer keys the API
    routes require (none: open); cors_origins: browser origins allowed to call it (none by default);
    timeout_s: each request's deadline (None: none); engine_options: more Engine arguments
    (decode, window, compile)."""
    from imagelm.images import decode_tokens, layout_of
    from imagelm.data.transforms import to_uint8

    config, meta = generator.config, getattr(generator, "meta", {})
    text = config.cond == "text"
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"the timeout must be > 0 seconds, got {timeout_s}")
    engine = Engine(generator, rows=rows, dtype=dtype, **(engine_options or {}))
    layout = layout_of(generator)
    worker = EngineWorker(engine, lambda tokens: to_uint8(decode_tokens(tokens, tokenizer, layout)),
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
                   "max_edit_bytes": MAX_EDIT_BYTES,
                   "max_prompt_chars": MAX_PROMPT_CHARS, "timeout_s": timeout_s},
        "auth": "bearer" if api_keys else None,
        "cfg_schedules": list(CFG_SCHEDULES), "fields": fields,
    }

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        await worker.aclose(grace_s)

    app = FastAPI(title="imagelm", version="0.1.0", lifespan=lifespan,
                  description="Image generation with language models: one sampling engine shared by all clients.")
    metrics = ServerMetrics(worker, engine, routes=())
    service = Service(generator, worker, text_encoder, class_names, timeout_s, metrics)
    app.state.worker, app.state.engine, app.state.info, app.state.metrics = worker, engine, info, metrics
    app.state.service = service
    route_fields = {"/v1/images": fields}

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        path = request.url.path
        status = 400 if e.status == 422 and speaks_openai(path) else e.status   # OpenAI: BadRequestError
        return JSONResponse(error_payload(path, status, e.field, e.message, e.code), status_code=status,
                            headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        path, kind = request.url.path, request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in kind:
            message = f"send a JSON object with Content-Type: application/json (got {kind or 'no Content-Type'!r})"
            return await _api_error(request, ApiError(415, "body", message))
        merged: dict[str, list[str]] = {}
        for field, message in (_describe(err, route_fields.get(path, []), max_n) for err in e.errors()):
            merged.setdefault(field, []).append(message)      # a union (class: int | str) fails once per member
        errors = [(f, " or ".join(dict.fromkeys(m))) for f, m in merged.items()]
        if speaks_openai(path):                                # OpenAI's shape holds one param: the first
            return await _api_error(request, ApiError(400, *errors[0]))
        return JSONResponse({"error": "; ".join(f"{f}: {m}" for f, m in errors),
                             "errors": [{"field": f, "message": m} for f, m in errors]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        if isinstance(e.__cause__, ApiError):    # BodyLimit stopped a chunked body while FastAPI read it
            return await _api_error(request, e.__cause__)
        if e.status_code == 400:   # FastAPI could not read the body at all (e.g. bytes that are not UTF-8)
            return await _api_error(request, ApiError(400, "body", f"could not be parsed as JSON ({e.detail})"))
        return await _api_error(request, ApiError(e.status_code, "request", str(e.detail),
                                                  getattr(e, "headers", None)))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground():
        return HTMLResponse(resources.files("imagelm.serve").joinpath("static/index.html").read_text())

    @app.get("/healthz")
    async def healthz():
        status = "failed" if worker.broken else "closing" if worker.closing else "ok"
        body = {"status": status, "pending": worker.pending, "rows_in_use": engine.rows_in_use,
                "completed": worker.completed}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def payload(job, settings, images) -> dict:
        pngs = await service.pngs(images)
        body = {"model": info["model"], "settings": settings,
                "images": [{"index": i, "width": int(img.shape[1]), "height": int(img.shape[0]),
                            "png_base64": base64.b64encode(png).decode()} for i, (img, png) in enumerate(zip(images, pngs))],
                "seconds": round(time.monotonic() - job.submitted, 4)}
        if job.request.jacobi is not None:          # under Jacobi decoding: each image's verify passes
            body["jacobi_passes"] = list(job.request.jacobi.passes)
        return body

    @app.post("/v1/images", responses={
        200: {"description": "JSON with base64 PNGs; image/png when n = 1 and asked; NDJSON progress when asked",
              "content": {"image/png": {}, "application/x-ndjson": {}}},
        401: {"description": "missing or wrong API key"}, 413: {"description": "body too large"},
        422: {"description": "invalid request"}, 429: {"description": "queue full (see Retry-After)"},
        503: {"description": "shutting down"}, 504: {"description": "past the server's deadline"}})
    async def images(request: Request, body: Body):   # type: ignore[valid-type]
        accept = request.headers.get("accept", "")
        wants_png = "image/png" in accept and "application/json" not in accept
        if wants_png and body.n != 1:
            raise ApiError(406, "n", f"Accept: image/png returns one image; n is {body.n} (ask for application/json)")
        if text and body.class_ is not None:
            raise ApiError(422, "class", "this model is text-conditional: give prompt, not class")
        if not text and body.prompt is not None:
            raise ApiError(422, "prompt", "this model is class-conditional: give class (an id or a name), not prompt")
        cond, settings = await service.condition("prompt" if text else "class", body.class_, body.prompt, body.n)
        settings.update(sampling_settings(body))
        job = service.submit(request, cond, sampling_options(body, service.generator), body.seed)
        if "application/x-ndjson" in accept:
            return JobStream(job, _progress_lines(job, settings), media_type="application/x-ndjson")
        result = await service.wait(request, job)
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
            remaining = service.remaining_s(job)
            if remaining is not None and remaining <= 0:
                e = service.timed_out(job)
                yield json.dumps({"event": "error", "status": e.status, "error": f"{e.field}: {e.message}"}) + "\n"
                return
            yield json.dumps({"event": "progress", "queued": job.queued, "generated": job.request.generated,
                              "length": engine.length}) + "\n"
            await asyncio.wait([job.future], timeout=0.5 if remaining is None else min(0.5, remaining))
        try:
            images = job.future.result()
        except (RequestCancelled, RuntimeError) as e:
            yield json.dumps({"event": "error", "error": str(e)}) + "\n"
            return
        yield json.dumps({"event": "done", **(await payload(job, settings, images))}) + "\n"

    app.state.payload = payload
    install_edit_route(app, service, generator, tokenizer, max_n, _describe)
    info["edit_fields"] = app.state.edit_fields
    install_openai_routes(app, service, model_card(info), max_n, route_fields)
    metrics.routes.update(route.path for route in app.routes)
    # Added innermost first: requests pass RequestContext, then ApiKeys, then BodyLimit; CORS wraps them all.
    app.add_middleware(BodyLimit, limits={EDIT_ROUTE: MAX_EDIT_BYTES})
    if api_keys:
        app.add_middleware(ApiKeys, keys=list(api_keys))
    app.add_middleware(RequestContext, metrics=metrics)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-Id"],
                           expose_headers=["X-Request-Id", "Retry-After", "X-Imagelm-Settings"], max_age=600)
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
