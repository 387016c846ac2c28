"""The fast sampling engine: static KV rows, continuous batching, a static-shape decode step that
torch.compile can capture, the right dtype per device.

Image sequences have one fixed length per model, so instead of paging, the engine owns a static
KVCache of `rows` sequence rows. An image being decoded holds one row, two with guidance (its
conditional row and its null-condition row, decoded in the same forward pass). Requests wait in a
queue; after each decode step the engine releases the requests that reached their last token and
admits waiting ones into the free rows (prefilling their condition prefix and sampling their first
token): continuous batching without paging.

Everything model- and maths-shaped is shared: the step is the model's one forward
(`GeneratorBase.logits`) with the engine's cache passed in, and the same guidance, filtering and
draw as the plain sampler (`sampling/logits.py`, `sampling/step.py`). Rows admitted at different
steps sit at different positions, so each row has its own position; the causal mask by position also
hides the stale keys a row's previous occupant left behind.

Exactness: each request draws from its own `torch.Generator`, seeded by the request, in the same
order and shapes as the plain sampler (`autoregressive.generate`), so in float32 a request gets the
plain sampler's tokens whenever it is admitted and whoever shares its batch. In bfloat16 or with
int8 weights the logits move a little (bounded in the tests), so tokens may differ.

    engine = Engine(model, rows=32)                 # dtype="auto": what this device runs fastest
    request = engine.submit(torch.tensor([3, 3]), SamplingOptions(cfg_scale=2.0), seed=0)
    engine.run()                                    # or engine.step() from your own loop
    request.tokens                                  # [2, L, n] int64
"""
from __future__ import annotations

import dataclasses
import threading
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm import tqdm

from imagelm.models.conditioning import cat_conditions
from imagelm.models.transformer import KVCache
from imagelm.runtime import SAMPLING_DTYPES, choose_sampling_dtype, int8_available, seeded_generator  # noqa: F401
from imagelm.sampling.autoregressive import cache_dtype, check_given, evaluating
from imagelm.sampling.jacobi import DEFAULT_WINDOW, DraftStore, JacobiDecoding
from imagelm.sampling.logits import RowSampling, SamplingOptions, uniforms
from imagelm.sampling.precision import prepare_model
from imagelm.sampling.step import DecodeBatch, compile_step, decode_step, row_bucket, sample_images

ENGINE_DTYPES = SAMPLING_DTYPES
COMPILE_CHOICES = ("auto", "on", "off")
DECODE_MODES = ("plain", "jacobi")


class EngineError(ValueError):
    """A request the engine cannot take (too many images, wrong condition); the message is one line."""


def choose_engine_dtype(device: torch.device | str, requested: str = "auto", **detected) -> tuple[str, str]:
    """runtime.choose_sampling_dtype, its one-line ValueError raised as an EngineError."""
    try:
        return choose_sampling_dtype(device, requested, **detected)
    except ValueError as e:
        raise EngineError(str(e)) from None


# Decode steps after which a compiled step has paid for its compile (~40 s for GPT-B on either device,
# ~15 s for tiny on CPU): CUDA graphs save ~10 ms a GPT-B step over eager kernel launches; on CPU the
# fused step saved 1.5-2 ms (tiny) to 3-14 ms (GPT-B) a step (benchmarks/RESULTS.md).
COMPILE_PAYS_AFTER = {"cuda": 4_000, "cpu": 10_000}


def choose_compile(device: torch.device, requested: str | bool = "auto", model: nn.Module | None = None,
                   workload: int | None = None) -> tuple[bool, str]:
    """Whether the engine compiles its decode step, and why: -> (bool, reason).

    auto: only when the work ahead pays for the compile: `workload` decode steps of at least
    COMPILE_PAYS_AFTER for the device. An unknown workload (None, e.g. a server) compiles on CUDA,
    where the eager step is launch-bound, and not on the CPU, where the compiled step is 1.1-1.5x
    faster but each row bucket's compile takes 30-45 s (GPT-B, 2 cores) that the first requests
    would wait for. So a one-batch `imagelm sample` never waits for a compile. "on" / "off" (or
    True / False) force it.
    """
    requested = {True: "on", False: "off"}.get(requested, requested)
    if requested not in COMPILE_CHOICES:
        raise EngineError(f"unknown compile choice {requested!r}; choose one of {', '.join(COMPILE_CHOICES)}")
    if requested != "auto":
        return requested == "on", "as asked"
    kind = "cuda" if device.type == "cuda" else "cpu"
    if workload is not None and workload < COMPILE_PAYS_AFTER[kind]:
        return False, f"{workload} decode steps ahead: too few to pay for a compile"
    if kind == "cpu":
        if workload is None:
            return False, "CPU, workload unknown: compiling each row bucket would stall the first requests"
        return True, "CPU, long-running: inductor fuses the step's small operators and its attention"
    return True, "CUDA, long-running: one captured graph per row bucket"


@dataclass(eq=False)
class Request:
    """One request: n images of one condition each (cond [n] class ids or a TextCondition of batch n),
    decoded with `options` from `seed`. The engine fills `tokens` [n, L, n_sub] and sets `done`."""
    cond: object
    options: SamplingOptions
    seed: int
    n: int
    tokens: torch.Tensor | None = None
    generated: int = 0                       # tokens sampled so far per image (0 .. L)
    rows: list[int] = field(default_factory=list)   # cond rows, then null rows with guidance
    cancelled: bool = False
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None
    given: torch.Tensor | None = None       # [n, L, n_sub] tokens fixed in advance (editing), with
    known: torch.Tensor | None = None       # [n, L] bool: where they are
    jacobi: object = None                   # its windows, under speculative Jacobi decoding

    @property
    def finished(self) -> bool:
        return self.done.is_set()

    def cancel(self) -> None:
        """Stop this request: it leaves the queue, or frees its rows at the engine's next step."""
        self.cancelled = True

    def draw(self, n_sub: int, device) -> torch.Tensor:
        """This step's uniforms for the request's images, [n, n_sub] (zeros when greedy: no draw)."""
        if self.options.greedy:
            return torch.zeros(self.n, n_sub, device=device)
        return uniforms((self.n, n_sub), self.generator, device)


class Engine:
    """Continuous-batching sampler over a static KV cache of `rows` sequence rows (see the module doc).

    model: an AR generator (imagelm.load); dtype: auto | float32 | bfloat16 | int8 (see
    runtime.choose_sampling_dtype; another dtype than the model's means a converted copy, the
    caller's model is never changed); compile: auto | on | off (see choose_compile); decode: "plain"
    (one token per image a step) or "jacobi" (speculative Jacobi decoding, sampling/jacobi.py:
    several tokens a step, same distribution, other random stream; eager only) with `window` drafts
    and, optionally, lossy grouped acceptance over `groups` [V, g] (jacobi.nearest_groups) and
    drafts from stored codes (`draft_store`, a jacobi.DraftStore: exact);
    workload: the decode steps expected (None: unknown, e.g. a server), for compile="auto".
    Thread-safe for `submit`/`cancel` from other threads while one thread calls `step`.
    """

    def __init__(self, model: nn.Module, rows: int = 32, dtype: str = "auto", compile: str | bool = "auto",
                 decode: str = "plain", window: int = DEFAULT_WINDOW, workload: int | None = None,
                 groups: torch.Tensor | None = None, draft_store: DraftStore | None = None):
        if getattr(model, "kind", "ar") != "ar":
            raise EngineError("the engine decodes autoregressive generators; masked (mlm) generators use "
                              "their own parallel sampler")
        if rows < 1:
            raise EngineError(f"the engine needs at least 1 row, got {rows}")
        self.device = next(model.parameters()).device
        self.dtype, self.dtype_reason = choose_engine_dtype(self.device, dtype)
        try:
            self.model = prepare_model(model, self.dtype)
        except ValueError as e:
            raise EngineError(str(e)) from None
        config = self.model.config
        self.config, self.rows = config, rows
        self.prefix_len, self.length = config.cls_token_num, config.seq_len
        self.n_sub = config.num_subtokens
        if decode not in DECODE_MODES:
            raise EngineError(f"unknown decode {decode!r}; choose one of {', '.join(DECODE_MODES)}")
        if groups is not None and decode != "jacobi":
            raise EngineError("grouped acceptance is part of Jacobi decoding; use decode jacobi")
        if draft_store is not None and decode != "jacobi":
            raise EngineError("drafts from stored codes are part of Jacobi decoding; use decode jacobi")
        if decode == "jacobi" and compile in (True, "on"):
            raise EngineError("speculative Jacobi decoding runs eager; use compile off or auto")
        self.decode = decode
        self.compiled, self.compile_reason = (False, "Jacobi decoding runs eager") if decode == "jacobi" \
            else choose_compile(self.device, compile, self.model, workload)
        try:
            self._jacobi = JacobiDecoding(self, window, groups, draft_store) if decode == "jacobi" else None
        except ValueError as e:
            raise EngineError(str(e)) from None
        self.cache = KVCache(config, rows, cache_dtype(self.model, self.compiled), self.device)
        self._inputs = torch.zeros(rows + 1, self.n_sub, dtype=torch.long, device=self.device)  # + trash row
        self._positions = torch.zeros(rows, dtype=torch.long, device=self.device)
        self._token_index = torch.zeros(rows, dtype=torch.long, device=self.device)   # per image slot
        self._positions_of_prefix = torch.arange(self.prefix_len, device=self.device)
        if self.compiled:
            if self.device.type == "cuda":   # CUDA graphs write these in place: their addresses never move
                self.cache.mark_static()
                for t in (self._inputs, self._positions, self._token_index):
                    torch._dynamo.mark_static_address(t)
            self._step = compile_step(self.device)
        else:
            self._step = decode_step
        self._free = list(range(rows))        # kept sorted: the lowest free rows are taken first
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._lock = threading.Lock()
        self._batch: DecodeBatch | None = None   # rebuilt when the running set changes
        self._spans: list[tuple[Request, int, int]] = []

    # ---------------------------------------------------------------- requests
    def rows_needed(self, n: int, options: SamplingOptions) -> int:
        """Cache rows that n images with these options occupy while decoding."""
        return n * (2 if options.guided else 1)

    def submit(self, cond, options: SamplingOptions = SamplingOptions(), seed: int = 0,
               given: torch.Tensor | None = None, known: torch.Tensor | None = None) -> Request:
        """Queue n images: cond [n] class ids (a tensor or list) or a TextCondition of batch n -> the
        Request, filled in by later `step` calls. given [n, L, n_sub] / known [n, L] bool: tokens fixed
        in advance (see autoregressive.generate). Same seed and options, same tokens as the plain
        sampler given cond and torch.Generator(device).manual_seed(seed)."""
        if not hasattr(cond, "features"):
            cond = torch.as_tensor(cond, dtype=torch.long).reshape(-1)
        n = len(cond)
        if n < 1:
            raise EngineError("a request needs at least one image")
        need = self.rows_needed(n, options)
        if need > self.rows:
            raise EngineError(f"a request of {n} images{' with guidance' if options.guided else ''} needs "
                              f"{need} cache rows; this engine has {self.rows}")
        if self.config.cond == "text" and not hasattr(cond, "features"):
            raise EngineError("this generator is text-conditional: give a TextCondition, not class ids")
        if self.config.cond != "text":
            if hasattr(cond, "features"):
                raise EngineError("this generator is class-conditional: give class ids, not text")
            bad = cond[(cond < 0) | (cond > self.config.num_classes)]
            if len(bad):
                raise EngineError(f"class id {int(bad[0])} outside 0..{self.config.num_classes} "
                                  f"({self.config.num_classes} is the null class)")
        try:
            check_given(given, known, n, self.length, self.n_sub)
        except ValueError as e:
            raise EngineError(str(e)) from None
        request = Request(cond=cond.to(self.device), options=options, seed=int(seed), n=n,
                          given=None if given is None else given.to(self.device),
                          known=None if known is None else known.to(self.device))
        with self._lock:
            self._waiting.append(request)
        return request

    @property
    def idle(self) -> bool:
        """True when nothing is queued or decoding."""
        with self._lock:
            return not self._waiting and not self._running

    @property
    def rows_in_use(self) -> int:
        return self.rows - len(self._free)

    # ---------------------------------------------------------------- the step loop
    @torch.no_grad()
    def step(self) -> list[Request]:
        """One decode step for every running request (one token each), then release of the requests
        that are complete and admission of waiting ones into free rows (their prefill samples their
        first token). Returns the requests finished now."""
        finished = self._drop_cancelled()
        with evaluating(self.model):
            if self._running:
                self._decode()
                finished += self._release_complete()
            self._admit()
            finished += self._release_complete()
        return finished

    def run(self, progress: bool = False) -> None:
        """Step until every submitted request is finished (a progress bar over tokens if asked)."""
        total = sum(r.n * self.length for r in list(self._waiting) + self._running)
        with tqdm(total=total, desc=f"sampling ({self.dtype})", unit="tok", disable=not progress,
                  leave=False) as bar:
            while not self.idle:
                before = sum(r.generated * r.n for r in self._running)
                done = self.step()
                after = sum(r.generated * r.n for r in self._running) + sum(r.n * self.length for r in done)
                bar.update(after - before)

    def generate(self, cond, options: SamplingOptions = SamplingOptions(), seed: int = 0,
                 progress: bool = False) -> torch.Tensor:
        """Submit one request and run it to the end: cond [B] or TextCondition -> tokens [B, L, n]."""
        return self.run_request(cond, options, seed, progress).tokens

    def run_request(self, cond, options: SamplingOptions = SamplingOptions(), seed: int = 0,
                    progress: bool = False) -> Request:
        """generate(), returning the finished Request (its tokens [B, L, n], and under Jacobi
        decoding `request.jacobi.passes`, each image's verify passes)."""
        request = self.submit(cond, options, seed)
        self.run(progress)
        if request.error:
            raise EngineError(request.error)
        return request

    # ---------------------------------------------------------------- internals
    def _drop_cancelled(self) -> list[Request]:
        out = []
        with self._lock:
            for request in [r for r in self._waiting if r.cancelled]:
                self._waiting.remove(request)
                out.append(request)
        for request in [r for r in self._running if r.cancelled]:
            self._release(request)
            out.append(request)
        for request in out:
            request.error = "cancelled"
            request.done.set()
        return out

    def _release(self, request: Request) -> None:
        self._running.remove(request)
        self._positions[request.rows] = 0     # a free row idles at position 0 until its next prefill
        self._free = sorted(self._free + request.rows)
        self._batch = None

    def _release_complete(self) -> list[Request]:
        done = [r for r in self._running if r.generated == self.length]
        for request in done:
            self._release(request)
            request.done.set()
        return done

    def _build_batch(self, requests: list[Request], read_index, rows: int = 0, pad_to: int = 0,
                     key_length: int | None = None) -> DecodeBatch:
        """A DecodeBatch over `requests` (images in request order). read_index maps a cache row to
        the index of its logits in the step; rows: the cache rows the step runs ([0, rows), those of
        the requests active); pad_to: idle image slots up to that many."""
        trash = self.rows
        read, read_null, write, write_null, scales, options = [], [], [], [], [], []
        active = [0] * rows
        for r in requests:
            guided = r.options.guided
            row_scales = r.options.cfg_scales(self.length) if guided else [1.0] * self.length
            for i in range(r.n):
                cond_row = r.rows[i]
                null_row = r.rows[r.n + i] if guided else cond_row
                read += [read_index(cond_row)]
                read_null += [read_index(null_row)]
                write += [cond_row]
                write_null += [null_row if guided else trash]
                scales.append(row_scales)
                options.append(r.options)
            for row in r.rows:
                if row < rows:
                    active[row] = 1
        pad = max(0, pad_to - len(read))
        read, read_null = read + [0] * pad, read_null + [0] * pad
        write, write_null = write + [trash] * pad, write_null + [trash] * pad
        scales += [[1.0] * self.length] * pad
        options += [SamplingOptions(temperature=0.0)] * pad
        given = known = None
        if any(r.known is not None for r in requests):
            L, n = self.length, self.n_sub
            given = torch.cat([r.given if r.known is not None else torch.zeros(r.n, L, n, dtype=torch.long,
                               device=self.device) for r in requests] + [torch.zeros(pad, L, n, dtype=torch.long,
                                                                                    device=self.device)])
            known = torch.cat([r.known if r.known is not None else torch.zeros(r.n, L, dtype=torch.bool,
                               device=self.device) for r in requests] + [torch.zeros(pad, L, dtype=torch.bool,
                                                                                    device=self.device)])
        as_long = lambda x: torch.tensor(x, dtype=torch.long, device=self.device)   # noqa: E731
        return DecodeBatch(rows=rows, active=as_long(active), read=as_long(read), read_null=as_long(read_null),
                           write=as_long(write), write_null=as_long(write_null),
                           scales=torch.tensor(scales, dtype=torch.float32, device=self.device),
                           sampling=RowSampling.of(options, self.config.vocab_size, self.device),
                           given=given, known=known, key_length=key_length)

    def _uniforms(self, requests: list[Request], slots: int) -> torch.Tensor | None:
        """Each request's uniforms for this step, in image order, padded to `slots` rows (None when
        every request is greedy)."""
        if all(r.options.greedy for r in requests):
            return None
        u = torch.cat([r.draw(self.n_sub, self.device) for r in requests])
        if slots > len(u):
            u = torch.cat([u, u.new_zeros(slots - len(u), self.n_sub)])
        return u

    def _decode(self) -> None:
        """One decode step of the running set (compiled or eager), its tokens recorded per request."""
        if self._batch is None:
            used = max(row for r in self._running for row in r.rows) + 1
            identity = lambda row: row   # noqa: E731  (a decode step's logits are indexed by row)
            if self.compiled:   # static shapes: a bucket of rows, all keys, padded image slots
                rows = row_bucket(used, self.rows)
                self._batch = self._build_batch(self._running, identity, rows, pad_to=rows)
            else:
                self._batch = self._build_batch(self._running, identity, used)
            self._spans = self._image_spans(self._running)
            if self._jacobi is not None:
                self._jacobi.batch_changed()
            for r, start, end in self._spans:
                self._token_index[start:end] = r.generated
        batch = self._batch
        if self._jacobi is not None:
            self._jacobi.step(batch)
            return
        if not (self.compiled and self.device.type == "cuda"):   # read keys only up to the longest row's position
            batch = dataclasses.replace(batch, key_length=self.prefix_len + max(r.generated for r in self._running))
        u = self._uniforms(self._running, batch.images)
        tokens = self._step(self.model, self.cache, self._inputs, self._positions, batch,
                            self._token_index[:batch.images], u)
        self._record(tokens, self._spans)

    @staticmethod
    def _image_spans(requests: list[Request]) -> list[tuple[Request, int, int]]:
        """Each request's image slots [start, end) in request order."""
        spans, start = [], 0
        for r in requests:
            spans.append((r, start, start + r.n))
            start += r.n
        return spans

    def _record(self, tokens: torch.Tensor, spans) -> None:
        for r, start, end in spans:
            r.tokens[:, r.generated] = tokens[start:end]
            r.generated += 1

    def _admit(self) -> None:
        """Move waiting requests (first come, first served) into free rows, prefill their condition
        prefixes and sample their first tokens."""
        admitted = []
        with self._lock:
            while self._waiting:
                request = self._waiting[0]
                need = self.rows_needed(request.n, request.options)
                if need > len(self._free):
                    break
                self._waiting.popleft()
                request.rows, self._free = self._free[:need], self._free[need:]
                admitted.append(request)
        if not admitted:
            return
        for request in admitted:
            request.tokens = torch.empty(request.n, self.length, self.n_sub, dtype=torch.long, device=self.device)
            request.generator = seeded_generator(request.seed, self.device)
        conds = []
        for request in admitted:
            conds.append(request.cond)
            if request.options.guided:
                conds.append(self.model.null_cond(request.cond))
        rows = [row for r in admitted for row in r.rows]
        index = {row: i for i, row in enumerate(rows)}
        row_ids = torch.tensor(rows, device=self.device)
        P = self.prefix_len
        prefix, prefix_mask = self.model.embed_condition(cat_conditions(conds))      # [A, P, dim]
        logits = self.model.logits(prefix, self._positions_of_prefix, self.cache, prefix_mask, rows=row_ids,
                                   key_length=P, last=1)[:, 0]                          # [A, n_sub, V]
        batch = self._build_batch(admitted, index.__getitem__)
        start_index = torch.zeros(batch.images, dtype=torch.long, device=self.device)
        tokens = sample_images(logits, batch, start_index, self._uniforms(admitted, batch.images))
        self._inputs[batch.write] = tokens
        self._inputs[batch.write_null] = tokens
        self._positions[row_ids] = P                                                    # token 0 sits at P
        self._record(tokens, self._image_spans(admitted))
        if self._jacobi is not None:
            self._jacobi.start(admitted, logits, batch)
        self._running += admitted
        self._batch = None
