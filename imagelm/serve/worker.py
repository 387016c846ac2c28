"""The engine's step loop on its own thread, and the bridge that lets asyncio handlers await it.

One `EngineWorker` per server process owns one `Engine`. Its thread is the only one that calls
`engine.step()`; handlers on the event loop only `submit` (thread-safe) and await an asyncio future
that is resolved through `loop.call_soon_threadsafe`, so a decode step never blocks the event loop
and requests from many clients share the engine's rows. Finished tokens go to a second thread that
turns them into images, so the tokenizer's decoder never holds up the next sampling step.

    worker = EngineWorker(engine, decode=lambda tokens: images_uint8, max_pending=64)
    worker.start()
    job = worker.submit(cond, options, seed)          # raises QueueFull / EngineError at once
    images = await job.result()                       # uint8 [n, H, W, 3]; cancels on CancelledError
    await worker.aclose(grace_s=10)                   # finish or cancel what is left, join the thread

The worker also counts what it makes (tokens_total, images_total, throughput over a recent window)
and stamps each job's times (submitted, admitted into rows, finished) for the server's metrics.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque

import numpy as np

from imagelm.sampling.autoregressive import SamplingOptions
from imagelm.sampling.engine import Engine, Request

HISTORY_S = 60.0     # how far back throughput() can look


class QueueFull(Exception):
    """More requests are pending than the server accepts; `retry_after_s` is a hint for the client."""

    def __init__(self, pending: int, retry_after_s: int):
        super().__init__(f"the queue is full ({pending} requests pending); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ServerClosing(Exception):
    """The server is shutting down and takes no new work."""


class RequestCancelled(Exception):
    """The engine dropped this request before it finished (the server is shutting down)."""


class Job:
    """One accepted request: the engine's Request plus the future its handler awaits, and its times
    (time.monotonic(): submitted; admitted, the start of the step that took it into rows; finished,
    when its images were ready; None until then)."""

    def __init__(self, worker: "EngineWorker", request: Request, future: asyncio.Future, request_id: str = "-",
                 decode=None):
        self.worker, self.request, self.future, self.request_id = worker, request, future, request_id
        self.decode = decode or worker.decode      # tokens -> images for this job (edits paste back)
        self.submitted = time.monotonic()
        self.admitted: float | None = None
        self.finished: float | None = None
        self.counted = 0                     # tokens per image already added to the worker's totals

    @property
    def progress(self) -> float:
        """Fraction of this request's tokens sampled so far (0 while queued, 1 when done)."""
        return self.request.generated / self.worker.engine.length

    @property
    def queued(self) -> bool:
        """Still waiting for engine rows (no token sampled yet)."""
        return self.request.generated == 0 and not self.request.finished

    async def result(self) -> np.ndarray:
        """The images uint8 [n, H, W, 3]. If the awaiting task is cancelled (the client went away),
        the engine request is cancelled too and its rows are freed at the next step."""
        try:
            return await self.future      # cancelling the awaiting task cancels the future too
        except asyncio.CancelledError:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Called on the event loop when nobody waits any more: drop the engine request and the future."""
        self.request.cancel()
        self.future.cancel()
        self.worker._wake()


class EngineWorker:
    """Runs `engine.step()` on a daemon thread while requests are pending; sleeps when idle.

    decode: tokens [n, L, n_sub] -> images uint8 [n, H, W, 3], called on the decode thread for each
    finished request (one call per request, so images match `imagelm sample` for that request).
    max_pending: requests accepted at once (queued + decoding); one more raises QueueFull.
    """

    def __init__(self, engine: Engine, decode, max_pending: int = 64):
        self.engine, self.decode, self.max_pending = engine, decode, max_pending
        self._jobs: dict[int, Job] = {}          # id(request) -> job, for every unfinished request
        self._cv = threading.Condition()
        self._closing = False                    # no new work
        self._stop = False                       # the thread should exit once nothing is pending
        self._thread: threading.Thread | None = None
        self._decoding: queue.Queue[Job | None] = queue.Queue()   # finished, waiting for their images
        self._decoder: threading.Thread | None = None
        self._in_decode = 0                      # jobs handed to the decode thread, not yet resolved
        self._step_times: deque[float] = deque(maxlen=64)
        self.broken: str | None = None           # set if a step ever raised: the engine is unusable
        self.completed = 0
        self.tokens_total = 0                    # tokens sampled, summed over images
        self.images_total = 0                    # images decoded and handed back
        self._history: deque[tuple[float, int, int]] = deque()   # (time, tokens_total, images_total), last minute
        self._history_lock = threading.Lock()

    # ------------------------------------------------------------ event-loop side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="imagelm-engine", daemon=True)
        self._decoder = threading.Thread(target=self._decode_loop, name="imagelm-decode", daemon=True)
        self._thread.start()
        self._decoder.start()

    @property
    def pending(self) -> int:
        """Requests accepted and not answered yet: queued, sampling, or being decoded to images."""
        with self._cv:
            return len(self._jobs) + self._in_decode

    @property
    def queued(self) -> int:
        """Requests accepted and still waiting for engine rows."""
        with self._cv:
            return sum(job.queued for job in self._jobs.values())

    @property
    def closing(self) -> bool:
        return self._closing

    def throughput(self, window_s: float = 10.0) -> tuple[float, float]:
        """(tokens/s, images/s) over the last `window_s` (<= HISTORY_S) seconds; 0 when idle in it."""
        now = time.monotonic()
        with self._history_lock:
            history = list(self._history)
        recent = [h for h in history if now - h[0] <= window_s]
        if not recent:
            return 0.0, 0.0
        before = [h for h in history if now - h[0] > window_s]
        start = before[-1] if before else (now - window_s, recent[0][1], recent[0][2])
        return (self.tokens_total - start[1]) / window_s, (self.images_total - start[2]) / window_s

    def retry_after_s(self) -> int:
        """Roughly how long until a slot frees: one request's worth of decode steps, at least 1 s."""
        step = float(np.mean(self._step_times)) if self._step_times else 0.05
        return max(1, int(np.ceil(step * self.engine.length)))

    def submit(self, cond, options: SamplingOptions, seed: int, request_id: str = "-", given=None, known=None,
               decode=None) -> Job:
        """Queue one request (on the event loop's thread). Raises ServerClosing, QueueFull, or the
        engine's EngineError (a ValueError with a one-line message) for a request it cannot take.
        given [n, L, n_sub] / known [n, L] bool: tokens fixed in advance (Engine.submit); decode:
        this job's tokens -> images uint8 [n', H, W, 3] (default: the worker's)."""
        loop = asyncio.get_running_loop()
        with self._cv:
            if self._closing or self.broken:
                raise ServerClosing(self.broken or "the server is shutting down")
            if len(self._jobs) >= self.max_pending:
                raise QueueFull(len(self._jobs), self.retry_after_s())
            request = self.engine.submit(cond, options, seed, given=given, known=known)
            job = Job(self, request, loop.create_future(), request_id, decode)
            self._jobs[id(request)] = job
            self._cv.notify()
        return job

    async def aclose(self, grace_s: float = 10.0) -> None:
        """Take no new work; let pending requests finish for up to `grace_s`, cancel the rest (their
        handlers get RequestCancelled), and join the thread. Safe to call twice."""
        with self._cv:
            self._closing = True
        deadline = time.monotonic() + grace_s
        alive = self._thread is not None and self._thread.is_alive()
        while alive and self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        with self._cv:
            for job in self._jobs.values():
                job.request.cancel()
            self._stop = True          # the thread drops the cancelled requests, then exits
            self._cv.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._decoding.put(None)   # after the last finished request: the decode thread ends
            await asyncio.to_thread(self._decoder.join, 30)
        await asyncio.sleep(0)         # let the last call_soon_threadsafe callbacks run

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # ------------------------------------------------------------ worker thread
    def _run(self) -> None:
        while True:
            with self._cv:
                # Sleep while nothing is pending; wake on submit, cancel or stop.
                while not self._jobs and not self._stop:
                    self._cv.wait()
                if self._stop and not self._jobs:
                    return
            try:
                t0, started = time.perf_counter(), time.monotonic()
                finished = self.engine.step()
                self._step_times.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - a bug in the step: fail everything, say why
                self._fail_all(f"the engine failed: {type(e).__name__}: {e}")
                return
            self._count(started)
            for request in finished:
                self._finish(request)

    def _count(self, step_started: float) -> None:
        """After a step: add the tokens it sampled to the totals, stamp newly admitted jobs."""
        with self._cv:
            jobs = list(self._jobs.values())
        for job in jobs:
            generated = job.request.generated
            if generated > job.counted:
                self.tokens_total += (generated - job.counted) * job.request.n
                job.counted = generated
                if job.admitted is None:
                    job.admitted = step_started
        self._record()

    def _record(self) -> None:
        """Note the totals now (for throughput), keeping the last HISTORY_S seconds."""
        with self._history_lock:           # both threads record
            now = time.monotonic()
            self._history.append((now, self.tokens_total, self.images_total))
            while now - self._history[0][0] > HISTORY_S:
                self._history.popleft()

    def _finish(self, request: Request) -> None:
        with self._cv:
            job = self._jobs.pop(id(request), None)
        if job is None:
            return
        if request.error:
            _post(job.future, RequestCancelled(f"the request was {request.error} (the server is shutting down)"))
            return
        with self._cv:
            self._in_decode += 1
        self._decoding.put(job)

    def _decode_loop(self) -> None:
        while (job := self._decoding.get()) is not None:
            try:
                outcome = job.decode(job.request.tokens)
                self.completed += 1
                self.images_total += len(outcome)
                job.finished = time.monotonic()
                self._record()
            except Exception as e:  # noqa: BLE001 - reported to this request's client as a 500
                outcome = RuntimeError(f"decoding the tokens failed: {type(e).__name__}: {e}")
            _post(job.future, outcome)
            with self._cv:
                self._in_decode -= 1

    def _fail_all(self, message: str) -> None:
        with self._cv:
            self.broken = message
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            _post(job.future, RuntimeError(message))


def _post(future: asyncio.Future, outcome) -> None:
    """From the worker thread: resolve `future` on its own loop (a closed loop has nobody waiting)."""
    try:
        future.get_loop().call_soon_threadsafe(_resolve, future, outcome)
    except RuntimeError:
        pass


def _resolve(future: asyncio.Future, outcome) -> None:
    """Runs on the event loop: images, or an exception (a cancelled request, a failure)."""
    if future.done():                # its handler was cancelled already (the client went away)
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
