"""What both HTTP APIs share: a request's condition, its submission to the engine worker under a
deadline, waiting for its images (or for the client to leave), and the PNGs.

    service = Service(generator, tokenizer, worker, text_encoder, timeout_s=30, metrics=metrics)
    cond, settings = await service.condition("class", class_="circle", n=4)
    job = service.submit(request, cond, options, seed=7)
    images = await service.wait(request, job)     # uint8 [n, H, W, 3]; None if the client left

Errors are ApiError with the field to blame: 422 (the OpenAI routes send 400), 429 with
Retry-After when the queue is full, 503 while shutting down, 504 past the deadline.
"""
from __future__ import annotations

import asyncio
import io
import logging
import time

import torch
from PIL import Image

from imagelm.sampling.engine import EngineError
from imagelm.serve.errors import ApiError
from imagelm.serve.worker import QueueFull, RequestCancelled, ServerClosing

LOG = logging.getLogger("imagelm.serve")
NO_RETRY = {"X-Should-Retry": "false"}      # read by the official openai client


def png_bytes(image) -> bytes:
    """uint8 [H, W, 3] -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class Service:
    """One generator behind the engine worker, for the route handlers. `timeout_s`: a request's
    deadline from its acceptance (None: no deadline); past it the engine request is cancelled, its
    rows are freed at the next step, and the client gets 504."""

    def __init__(self, generator, worker, text_encoder=None, class_names=(), timeout_s: float | None = None,
                 metrics=None):
        self.generator, self.worker, self.text_encoder = generator, worker, text_encoder
        self.config = generator.config
        self.text = self.config.cond == "text"
        self.class_names = list(class_names)
        self.timeout_s, self.metrics = timeout_s, metrics

    def class_name(self, cid: int) -> str:
        return self.class_names[cid] if cid < len(self.class_names) else str(cid)

    async def condition(self, field: str, class_=None, prompt: str | None = None, n: int = 1) -> tuple[object, dict]:
        """The engine's condition for n images ([n] class ids, or a TextCondition of batch n) and the
        settings naming it. A text model takes `prompt`; a class model a class id or name in
        `class_` (errors then blame `field`, which the OpenAI route sets to "prompt")."""
        from imagelm.images import encode_prompts, resolve_classes
        if self.text:
            if prompt is None:
                raise ApiError(422, field, "required: this model is text-conditional")
            # Encoded once and repeated, as imagelm.sample does, so the features (and images) match it.
            cond = await asyncio.to_thread(lambda: encode_prompts(self.generator, [prompt], self.text_encoder))
            return cond.repeat_interleave(n), {"prompt": prompt}
        if class_ is None:
            raise ApiError(422, field, f"required: a class id 0..{self.config.num_classes - 1} or a name")
        if isinstance(class_, str) and not class_.strip():
            raise ApiError(422, field, "empty class name")
        try:
            (cid,) = resolve_classes([class_], self.class_names, self.config.num_classes)
        except ValueError as e:
            raise ApiError(422, field, str(e)) from None
        return torch.full((n,), cid, dtype=torch.long), {"class": cid, "class_name": self.class_name(cid)}

    def submit(self, request, cond, options, seed: int, given=None, known=None, decode=None):
        """Queue one engine request -> Job; the refusals of a full queue, a closing server or an
        engine that cannot take it, as ApiError. given / known / decode: see EngineWorker.submit."""
        request_id = getattr(request.state, "request_id", "-")
        try:
            job = self.worker.submit(cond, options, seed, request_id, given=given, known=known, decode=decode)
        except QueueFull as e:
            raise ApiError(429, "queue", str(e), {"Retry-After": str(e.retry_after_s)}) from None
        except ServerClosing as e:
            raise ApiError(503, "server", str(e), {"Retry-After": "5"}) from None
        except EngineError as e:
            raise ApiError(422, "n", str(e)) from None
        if self.metrics is not None:
            job.future.add_done_callback(lambda _: self.metrics.observe_job(job))
        return job

    def remaining_s(self, job) -> float | None:
        """Seconds left before `job`'s deadline (None: no deadline)."""
        return None if self.timeout_s is None else self.timeout_s - (time.monotonic() - job.submitted)

    def timed_out(self, job) -> ApiError:
        """Cancel `job` (its rows free at the next step) -> the 504 to answer with."""
        job.cancel()
        LOG.warning("timed out after %g s: cancelled, its rows freed", self.timeout_s)
        # The openai client retries 5xx unless told not to: the same request would only run out of time again.
        return ApiError(504, "timeout", f"not finished within the server's --timeout of {self.timeout_s:g} s; "
                        "the request was cancelled", NO_RETRY)

    async def wait(self, request, job):
        """The images uint8 [n, H, W, 3], or None if the client disconnected first (its engine
        request is then cancelled). Raises ApiError: 504 past the deadline, 503 when shutdown
        cancelled it, 500 when the engine or the decoder failed."""
        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass
        watch = asyncio.ensure_future(disconnected())
        result = asyncio.ensure_future(job.result())
        remaining = self.remaining_s(job)
        try:
            done, _ = await asyncio.wait([watch, result], timeout=None if remaining is None else max(remaining, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not result.done():
            result.cancel()                  # cancels the engine request: its rows free at the next step
            if watch in done:
                return None
            raise self.timed_out(job)
        try:
            return result.result()
        except RequestCancelled as e:
            raise ApiError(503, "server", str(e)) from None
        except RuntimeError as e:
            LOG.error("failed: %s", e)
            raise ApiError(500, "server", str(e), NO_RETRY) from None

    async def pngs(self, images) -> list[bytes]:
        return await asyncio.to_thread(lambda: [png_bytes(img) for img in images])
