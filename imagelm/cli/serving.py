"""`imagelm serve`: the HTTP API and playground over the sampling engine (imagelm/serve)."""
from __future__ import annotations

from imagelm.cli import flags


def serve(a) -> None:
    from imagelm.serve import serve
    serve(a.ckpt, host=a.host, port=a.port, device=a.device, dtype=a.dtype, rows=a.rows, max_n=a.max_n,
          max_pending=a.max_queue, grace_s=a.grace, tokenizer=a.tokenizer, api_keys=a.api_key,
          cors_origins=a.cors_origin, timeout_s=a.timeout,
          decode=a.decode, window=a.window, groups=a.jacobi_groups, compile=a.compile)


def register(sub) -> None:
    sv = sub.add_parser("serve", help="HTTP API (POST /v1/images) and a web playground over the sampling engine")
    sv.add_argument("--ckpt", required=True, help="a generator: run, checkpoint or bundle directory")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    sv.add_argument("--port", type=int, default=8000)
    flags.tokenizer(sv)
    sv.add_argument("--rows", type=int, default=32, help="engine cache rows shared by all requests (2 per guided image)")
    sv.add_argument("--max-n", type=int, default=16, help="most images in one request")
    sv.add_argument("--max-queue", type=int, default=64, help="requests queued or decoding at once; more get 429")
    sv.add_argument("--grace", type=float, default=10.0, help="seconds in-flight work gets to finish on SIGTERM")
    flags.dtype(sv)
    flags.decoding(sv)
    sv.add_argument("--api-key", action="append", default=None, metavar="KEY",
                    help="require 'Authorization: Bearer KEY' on the API (repeatable; default: $IMAGELM_API_KEY)")
    sv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                    help="let browser pages from ORIGIN call the API (repeatable; none by default)")
    sv.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                    help="a request's deadline: then it is cancelled, its rows freed, and the client gets 504")
    flags.runtime(sv, seed=False)
    sv.set_defaults(func=serve)
