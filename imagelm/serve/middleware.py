"""ASGI middleware of the server, outermost first: RequestContext (request id, access log, request
metrics), ApiKeys (bearer keys), BodyLimit (64 KiB). CORS, when asked for, wraps all three.

Each runs before FastAPI parses anything, so an unauthenticated or oversized request costs no
parsing, and every answer, refusals included, carries an `X-Request-Id` and is counted.
"""
from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import re
import time
import uuid

from imagelm.serve.errors import ApiError, error_payload, send_json

MAX_BODY_BYTES = 64 * 1024
LOG = logging.getLogger("imagelm.serve")
REQUEST_ID = contextvars.ContextVar("imagelm_request_id", default="-")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
OPEN_PATHS = ("/", "/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every log record (`%(request_id)s`; "-" outside a request)."""

    def filter(self, record):
        record.request_id = REQUEST_ID.get()
        return True


LOG.addFilter(RequestIdFilter())      # on the logger, so every record it makes carries the id


class RequestContext:
    """Gives each request an id (the client's `X-Request-Id` when it is a short token, else a new
    one), returns it in the `X-Request-Id` header, logs one access line, and reports (route, status,
    seconds) to `metrics.observe_request`. An exception that escapes the app is answered as a 500
    here, with the id, rather than as a bare traceback page."""

    def __init__(self, app, metrics=None):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        status, t0 = [0], time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as e:  # noqa: BLE001 - a bug below us: answer 500 with the id and log why
            LOG.exception("unhandled %s: %s", type(e).__name__, e)
            if not status[0]:
                message = f"internal error ({type(e).__name__}); request id {request_id}"
                await send_json(send_with_id, 500, error_payload(scope["path"], 500, "server", message))
        finally:
            seconds = time.perf_counter() - t0
            LOG.info("%s %s %d %.3f s", scope.get("method", ""), scope["path"], status[0], seconds)
            if self.metrics is not None:
                route = scope.get("route")
                self.metrics.observe_request(getattr(route, "path", None) or scope["path"], status[0], seconds)
            REQUEST_ID.reset(token)


def _digest(key: str) -> bytes:
    # Compare fixed-length digests, so the comparison time says nothing about the key's length either.
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """Refuses requests to API routes (everything but the page, /healthz and the schema) without
    `Authorization: Bearer KEY` for one of `keys`: 401 with WWW-Authenticate. Every configured key is
    compared, in constant time, whatever the outcome; CORS preflights (OPTIONS) pass."""

    def __init__(self, app, keys):
        self.app = app
        self.digests = [_digest(k) for k in keys]
        if not self.digests or any(not k for k in keys):
            raise ValueError("API keys must be non-empty strings")

    def _allowed(self, header: bytes) -> str | None:
        """None when `header` holds a valid key, else why not."""
        scheme, _, key = header.decode("latin-1").strip().partition(" ")
        if not header:
            return "missing API key: send the header 'Authorization: Bearer KEY'"
        if scheme.lower() != "bearer" or not key.strip():
            return "malformed Authorization header: expected 'Bearer KEY'"
        given = _digest(key.strip())
        matches = [hmac.compare_digest(given, d) for d in self.digests]   # all of them, no early exit
        return None if any(matches) else "invalid API key"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        why = self._allowed(dict(scope.get("headers", [])).get(b"authorization", b""))
        if why is None:
            return await self.app(scope, receive, send)
        code = "invalid_api_key" if why == "invalid API key" else None
        await send_json(send, 401, error_payload(scope["path"], 401, "authorization", why, code),
                        {"WWW-Authenticate": 'Bearer realm="imagelm"'})


class BodyLimit:
    """Refuses bodies over `limit` bytes (or `limits[path]` for the routes listed there, e.g. the
    multipart edits route) with 413 before anything parses them."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES, limits: dict | None = None):
        self.app, self.default, self.limits = app, limit, dict(limits or {})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope["path"].rstrip("/"), self.default)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await send_json(send, 413, error_payload(scope["path"], 413, "body",
                                                            f"larger than {limit} bytes"))
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:   # chunked bodies carry no length up front
                    raise ApiError(413, "body", f"larger than {limit} bytes")
            return message
        return await self.app(scope, limited, send)
