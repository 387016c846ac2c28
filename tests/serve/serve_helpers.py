"""Helpers the serve tests share: an app over a checkpoint, PNG decoding, a gate on engine steps."""
import asyncio
import base64
import io
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
