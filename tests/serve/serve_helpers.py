"""Helpers the serve tests share: an app over a checkpoint, PNG decoding, a gate on engine steps."""
import asyncio
import base64
import io
import socket
import threading
import time

import httpx
import numpy as np
from PIL import Image

import imagelm
from imagelm.serve import create_app


def make_app(ckpt, **kwargs):
    gen = imagelm.load(ckpt)
    return create_app(gen, imagelm.linked_tokenizer(gen.meta), dtype="float32", **kwargs)


def decode_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def gate_steps(engine):
    """Make engine.step wait for permits (a semaphore the test releases) -> the semaphore."""
    permits, step = threading.Semaphore(0), engine.step

    def gated():
        permits.acquire(timeout=10)
        return step()
    engine.step = gated
    return permits


async def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


def asgi_client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(base: str, proc, output, timeout: float = 60.0) -> None:
    """Wait until the `imagelm serve` process `proc` answers GET base/healthz; fail with its
    output (`output()`) if it exits first, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, output()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.1)
