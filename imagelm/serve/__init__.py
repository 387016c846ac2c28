"""HTTP API and a web page over the sampling engine (`imagelm serve`).

    from imagelm.serve import create_app, serve
    serve("runs/gpt", port=8000)              # blocks; SIGTERM finishes or cancels in-flight work
    serve("runs/gpt", host="0.0.0.0", api_keys=["KEY"], timeout_s=60)

Needs the `serve` extra (fastapi, uvicorn, prometheus-client): `pip install imagelm[serve]`.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys

API_KEY_ENV = "IMAGELM_API_KEY"


def create_app(*args, **kwargs):
    """See imagelm.serve.app.create_app (imported lazily: fastapi is an optional extra)."""
    from imagelm.serve.app import create_app as _create_app
    return _create_app(*args, **kwargs)


def serve(ckpt, host: str = "127.0.0.1", port: int = 8000, device=None, dtype: str = "auto", rows: int = 32,
          max_n: int = 16, max_pending: int = 64, grace_s: float = 10.0, tokenizer=None, api_keys=None,
          cors_origins=(), timeout_s: float | None = None, decode: str = "plain", window: int = 16,
          compile: str = "auto", groups: int = 1, draft_codes=None, draft_match: int = 4) -> None:
    """Load the generator at `ckpt` and serve it on host:port until SIGINT/SIGTERM (uvicorn, one
    process, one engine). On shutdown, in-flight requests get `grace_s` seconds to finish.
    decode / window / groups / draft_codes / draft_match / compile: the engine's decoding (see
    imagelm.images.Sampler).

    api_keys: bearer keys every API route then requires; None takes $IMAGELM_API_KEY if set. A host
    other than loopback with no key prints a warning. cors_origins: browser origins allowed to call
    the API (none by default). timeout_s: each request's deadline (504 after it; None: none). One
    access line per request (with its request id) goes to stderr."""
    try:
        import uvicorn

        from imagelm.serve.app import create_app as _create_app
    except ImportError as e:
        raise ValueError(f"serving needs the serve extra ({e.name} is missing): pip install 'imagelm[serve]'") from None
    import torch

    import imagelm
    from imagelm.images import Sampler, decoding_arguments
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {port}")
    for name, value in (("--rows", rows), ("--max-n", max_n), ("--max-queue", max_pending)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {timeout_s}")
    if api_keys is None:
        api_keys = [os.environ[API_KEY_ENV]] if os.environ.get(API_KEY_ENV, "").strip() else []
    api_keys = [k.strip() for k in api_keys]
    if any(not k for k in api_keys):
        raise ValueError("--api-key must not be empty")
    _check_port(host, port)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = imagelm.load(ckpt, device)
    tok = imagelm.linked_tokenizer(gen.meta, tokenizer, device)
    # The Sampler checks the decoding flags as `imagelm sample` does; the server's engine takes them.
    decoding = Sampler(decode=decode, window=window, groups=groups, compile=compile,
                       draft_codes=None if draft_codes is None else str(draft_codes), draft_match=draft_match)
    app = _create_app(gen, tok, rows=rows, dtype=dtype, max_n=max_n, max_pending=max_pending, grace_s=grace_s,
                      api_keys=api_keys, cors_origins=cors_origins, timeout_s=timeout_s,
                      engine_options=dict(compile=compile, **decoding_arguments(gen, decoding)))
    info = app.state.info
    _log_to_stderr()
    print(f"serving {info['model']} ({info['conditioning']}-conditional, engine {info['engine']['dtype']}: "
          f"{info['engine']['why']}, {rows} rows) on http://{host}:{port}/  (playground at /, API at /v1/images, "
          f"OpenAI's at /v1/images/generations, metrics at /metrics; "
          f"{len(api_keys)} API key{'s' * (len(api_keys) != 1)})", flush=True)
    if not api_keys and not _is_loopback(host):
        print(f"imagelm serve: warning: listening on {host} with no API key: anyone who can reach this port can "
              f"use it; pass --api-key KEY or set {API_KEY_ENV}", file=sys.stderr, flush=True)
    # uvicorn drains on SIGTERM, then re-raises the signal to the handler that was there before it:
    # make that one a no-op so a requested shutdown ends with exit code 0, not "killed by SIGTERM".
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=grace_s)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("server stopped", flush=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False                       # a host name: it may resolve to anything


def _log_to_stderr() -> None:
    """The server's log lines (one per request, and warnings) on stderr, each with its request id."""
    from imagelm.serve.middleware import LOG
    if any(getattr(h, "_imagelm", False) for h in LOG.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._imagelm = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s request_id=%(request_id)s %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def _check_port(host: str, port: int) -> None:
    """Fail in one line before loading anything when host:port cannot be listened on."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
