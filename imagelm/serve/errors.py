"""The server's refusals and the two shapes they are written in.

Our own routes `/v1/images` and `/v1/images/edits` keep their shape: `{"error": "<field>: <what is wrong>", "errors": [{"field",
"message"}]}`. Every other route speaks OpenAI's, so the official clients raise their usual
exceptions: `{"error": {"message", "type", "param", "code"}}`.
"""
from __future__ import annotations

import json

NATIVE_ROUTE = "/v1/images"
NATIVE_ROUTES = (NATIVE_ROUTE, "/v1/images/edits")

# OpenAI's `type` (and default `code`) for each status we send.
_OPENAI_KIND = {
    400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed"),
    406: ("invalid_request_error", None), 413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"), 422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"), 500: ("server_error", "internal_error"),
    503: ("server_error", "service_unavailable"), 504: ("server_error", "timeout"),
}


class ApiError(Exception):
    """A request we refuse: HTTP status, the field at fault (or "body", "server", ...), a one-line
    message, optional headers (Retry-After) and an OpenAI error `code` (default: by status)."""

    def __init__(self, status: int, field: str, message: str, headers: dict | None = None, code: str | None = None):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message, self.headers, self.code = status, field, message, headers, code


def speaks_openai(path: str) -> bool:
    """Which shape errors on `path` take: ours on /v1/images and /v1/images/edits, OpenAI's elsewhere."""
    return path.rstrip("/") not in NATIVE_ROUTES


def error_payload(path: str, status: int, field: str | None, message: str, code: str | None = None) -> dict:
    """The JSON body of a refusal on `path`. field: the request field at fault; for OpenAI's shape it
    becomes `param` (None for things that are not request fields: body, server, auth)."""
    if not speaks_openai(path):
        field = field or "request"
        return {"error": f"{field}: {message}", "errors": [{"field": field, "message": message}]}
    kind, default_code = _OPENAI_KIND.get(status, ("invalid_request_error" if status < 500 else "server_error", None))
    param = field if field not in (None, "body", "server", "queue", "authorization", "request", "timeout") else None
    text = message if param is None else f"{param}: {message}"
    return {"error": {"message": text, "type": kind, "param": param, "code": code or default_code}}


async def send_json(send, status: int, payload: dict, headers: dict | None = None) -> None:
    """Answer an ASGI request with JSON directly (for middleware, which runs outside FastAPI's handlers)."""
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
