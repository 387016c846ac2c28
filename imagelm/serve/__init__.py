"""HTTP API and a web page over the sampling engine (`imagelm serve`).

    from imagelm.serve import create_app, serve
    serve("runs/gpt", port=8000)              # blocks; SIGTERM finishes or cancels in-flight work

Needs the `serve` extra (fastapi, uvicorn): `pip install imagelm[serve]`.
"""
from __future__ import annotations

import signal
import socket


def create_app(*args, **kwargs):
    """See imagelm.serve.app.create_app (imported lazily: fastapi is an optional extra)."""
    from imagelm.serve.app import create_app as _create_app
    return _create_app(*args, **kwargs)


def serve(ckpt, host: str = "127.0.0.1", port: int = 8000, device=None, dtype: str = "auto", rows: int = 32,
          max_n: int = 16, max_pending: int = 64, grace_s: float = 10.0, tokenizer=None, decode: str = "plain",
          window: int = 16, compile: str = "auto") -> None:
    """Load the generator at `ckpt` and serve it on host:port until SIGINT/SIGTERM (uvicorn, one
    process, one engine). On shutdown, in-flight requests get `grace_s` seconds to finish."""
    try:
        import uvicorn

        from imagelm.serve.app import create_app as _create_app
    except ImportError as e:
        raise ValueError(f"serving needs the serve extra ({e.name} is missing): pip install 'imagelm[serve]'") from None
    import torch

    import imagelm
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {port}")
    for name, value in (("--rows", rows), ("--max-n", max_n), ("--max-queue", max_pending)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    _check_port(host, port)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = imagelm.load(ckpt, device)
    tok = imagelm.linked_tokenizer(gen.meta, tokenizer, device)
    app = _create_app(gen, tok, rows=rows, dtype=dtype, max_n=max_n, max_pending=max_pending, grace_s=grace_s,
                      engine_options=dict(decode=decode, window=window, compile=compile))
    info = app.state.info
    print(f"serving {info['model']} ({info['conditioning']}-conditional, engine {info['engine']['dtype']}: "
          f"{info['engine']['why']}, {rows} rows) on http://{host}:{port}/  (playground at /, API at /v1/images)",
          flush=True)
    # uvicorn drains on SIGTERM, then re-raises the signal to the handler that was there before it:
    # make that one a no-op so a requested shutdown ends with exit code 0, not "killed by SIGTERM".
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=grace_s)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("server stopped", flush=True)


def _check_port(host: str, port: int) -> None:
    """Fail in one line before loading anything when host:port cannot be listened on."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
