"""The fast sampling engine: static KV slots, continuous batching, the right dtype per device.

Image sequences have one fixed length per model, so instead of paging, the engine keeps a static
KV cache of `rows` sequence rows. An image being decoded holds one row, two with guidance (its
conditional row and its null-condition row, decoded in the same forward pass). Requests wait in a
queue; between decode steps the engine admits those that fit into free rows (prefilling their
condition prefix), and a request that reaches its last token frees its rows for the next one in the
same step loop: continuous batching without paging.

A decode step runs rows [0, used) only, over keys [0, longest position]. Rows admitted at different
steps sit at different positions, so each row has its own position, RoPE row and mask row; the mask
also hides the stale keys a row's previous occupant left behind.

Exactness: each request draws from its own `torch.Generator`, seeded by the request, in the same
order and shapes as the plain sampler (`autoregressive.generate`), and the logits-to-token maths is
the same, so in float32 a request gets the plain sampler's tokens whenever it is admitted and
whoever shares its batch. In bfloat16 or with int8 weights the logits move a little (bounded in
tests/test_engine.py), so tokens may differ.

    engine = Engine(model, rows=32)                 # dtype="auto": what this device runs fastest
    request = engine.submit(torch.tensor([3, 3]), SamplingOptions(cfg_scale=2.0), seed=0)
    engine.run()                                    # or engine.step() from your own loop
    request.tokens                                  # [2, L, n] int64
"""
from __future__ import annotations

import copy
import threading
import warnings
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm import tqdm

from imagelm.models.conditioning import cat_conditions
from imagelm.runtime import SAMPLING_DTYPES, choose_sampling_dtype, int8_available  # noqa: F401
from imagelm.models.transformer import attention_mask, rope_2d_table
from imagelm.sampling.autoregressive import SamplingOptions
from imagelm.sampling.logits import cfg_scale_at, draw_rows

ENGINE_DTYPES = SAMPLING_DTYPES


class EngineError(ValueError):
    """A request the engine cannot take (too many images, wrong condition); the message is one line."""


def choose_engine_dtype(device: torch.device | str, requested: str = "auto", **detected) -> tuple[str, str]:
    """runtime.choose_sampling_dtype, its one-line ValueError raised as an EngineError."""
    try:
        return choose_sampling_dtype(device, requested, **detected)
    except ValueError as e:
        raise EngineError(str(e)) from None


def prepare_model(model: nn.Module, dtype: str, inplace: bool = False) -> nn.Module:
    """The model in the engine's dtype, in eval mode: float32 / bfloat16 weights, or int8 weights
    (dynamically quantised linears of the trunk and the output heads; activations stay float32).
    A copy unless `inplace` or nothing needs to change."""
    current = next(model.parameters()).dtype
    target = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.float32}[dtype]
    quantized = any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())
    if current == target and (dtype == "int8") == quantized:
        return model.eval()
    if quantized:
        raise EngineError(f"this model has int8 weights already; it cannot run in {dtype}")
    if not inplace:   # the copy must not carry engines cached on the model (imagelm.api.engine_for)
        cached = model.__dict__.get("_engines")
        model = copy.deepcopy(model, memo={id(cached): {}} if cached is not None else None)
    model = model.to(target).eval()
    if dtype == "int8":
        with warnings.catch_warnings():   # the API works; it only points at torchao for the future
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic
            for name in ("trunk", "output"):
                quantize_dynamic(getattr(model, name), {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model


class _StepPlan:
    """Where the forward pass now running writes its keys/values, shared by every layer's cache.

    rows [B] and positions [T] (prefill: each row its prefix) or [B, 1] (decode: each row its own
    position); read_length None = attend within the input only (a prefill starts from an empty row),
    else attend over cache keys [0, read_length) of rows [0, B).
    """
    rows: torch.Tensor
    positions: torch.Tensor
    read_length: int | None = None


class SlotKVCache(nn.Module):
    """The engine's per-layer cache: keys/values [rows, kv_heads, max_seq, head_dim], written at
    the rows and positions of the shared step plan. It takes the place of the model's KVCache while
    the engine runs a forward pass, so the attention code is the model's own."""

    def __init__(self, rows: int, kv_heads: int, max_seq: int, head_dim: int, dtype: torch.dtype,
                 device, plan: _StepPlan):
        super().__init__()
        shape = (rows, kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.plan = plan

    def update(self, input_pos, k: torch.Tensor, v: torch.Tensor):
        """k, v [B, kv_heads, T, head_dim] -> the keys/values to attend: themselves (prefill), or the
        cache's rows [0, B) over keys [0, read_length) (decode). input_pos is unused: positions come
        from the plan because they differ per row."""
        plan = self.plan
        rows = plan.rows[:, None]                                              # [B, 1]
        pos = plan.positions if plan.positions.dim() == 2 else plan.positions[None, :]   # [B or 1, T]
        self.k[rows, :, pos] = k.transpose(1, 2).to(self.k.dtype)              # [B, T, kv_heads, hd]
        self.v[rows, :, pos] = v.transpose(1, 2).to(self.v.dtype)
        if plan.read_length is None:
            return k, v
        B, S = k.shape[0], plan.read_length
        return self.k[:B, :, :S], self.v[:B, :, :S]


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

    @property
    def finished(self) -> bool:
        return self.done.is_set()

    def cancel(self) -> None:
        """Stop this request: it leaves the queue, or frees its rows at the engine's next step."""
        self.cancelled = True


class Engine:
    """Continuous-batching sampler over a static KV cache of `rows` sequence rows (see the module doc).

    model: an AR generator (imagelm.load); dtype: auto | float32 | bfloat16 | int8 (see
    choose_engine_dtype); inplace: convert `model` itself rather than a copy when the dtype changes.
    Thread-safe for `submit`/`cancel` from other threads while one thread calls `step`.
    """

    def __init__(self, model: nn.Module, rows: int = 32, dtype: str = "auto", inplace: bool = False):
        if getattr(model, "kind", "ar") != "ar":
            raise EngineError("the engine decodes autoregressive generators; masked (mlm) generators use "
                              "their own parallel sampler")
        if rows < 1:
            raise EngineError(f"the engine needs at least 1 row, got {rows}")
        self.device = next(model.parameters()).device
        self.dtype, self.dtype_reason = choose_engine_dtype(self.device, dtype)
        self.model = prepare_model(model, self.dtype, inplace)
        config = self.model.config
        self.config, self.rows = config, rows
        self.prefix_len, self.length = config.cls_token_num, config.seq_len
        self.max_seq = self.prefix_len + self.length
        self.n_sub = config.num_subtokens
        # float32 caches under bf16 weights too, on CPU: a decode step then reads them with float32
        # matmuls in place (bf16 ones copy the slice), at the price of twice the cache memory.
        cache_dtype = torch.bfloat16 if self.dtype == "bfloat16" and self.device.type != "cpu" else torch.float32
        self._plan = _StepPlan()
        self._caches = [SlotKVCache(rows, config.kv_heads, self.max_seq, config.head_dim, cache_dtype,
                                    self.device, self._plan) for _ in range(config.n_layer)]
        # float32 whatever the weights' dtype: bf16 angles would blur the positions.
        self._rope = rope_2d_table(config).to(self.device)                      # [max_seq, hd/2, 2]
        self._valid = torch.ones(rows, self.max_seq, dtype=torch.bool, device=self.device)  # real keys
        self._row_input = torch.zeros(rows, self.n_sub, dtype=torch.long, device=self.device)
        self._keys = torch.arange(self.max_seq, device=self.device)
        self._row_pos = [0] * rows            # the sequence position each row feeds at its next decode
        self._free = list(range(rows))        # kept sorted: the lowest free rows are taken first
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._lock = threading.Lock()
        self._batch_cache = None              # per-image tensors, rebuilt when the running set changes

    # ---------------------------------------------------------------- requests
    def rows_needed(self, n: int, options: SamplingOptions) -> int:
        """Cache rows that n images with these options occupy while decoding."""
        return n * (2 if options.guided else 1)

    def submit(self, cond, options: SamplingOptions = SamplingOptions(), seed: int = 0) -> Request:
        """Queue n images: cond [n] class ids (a tensor or list) or a TextCondition of batch n -> the
        Request, filled in by later `step` calls. Same seed and options, same tokens as the plain
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
        request = Request(cond=cond.to(self.device), options=options, seed=int(seed), n=n)
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
        """One decode step for every running request, then admission of waiting ones into free rows
        (with their prefill), then one sampled token for each. Returns the requests finished now."""
        finished = self._drop_cancelled()
        decoded = self._decode() if self._running else None                   # [used, n_sub, V]
        prefilled = self._admit()
        if not self._running:
            return finished
        logits = self._merge_logits(decoded, prefilled)
        self._sample_and_advance(logits)
        for request in [r for r in self._running if r.generated == self.length]:
            self._release(request)
            request.done.set()
            finished.append(request)
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
        request = self.submit(cond, options, seed)
        self.run(progress)
        if request.error:
            raise EngineError(request.error)
        return request.tokens

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
        for row in request.rows:
            self._row_pos[row] = 0        # a free row idles at position 0 until its next prefill
        self._free = sorted(self._free + request.rows)
        self._batch_cache = None

    def _admit(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Move waiting requests (first come, first served) into free rows and prefill them
        -> (their rows [B], token-0 logits [B, n_sub, V]), or None when none was admitted."""
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
            return None
        for request in admitted:
            request.tokens = torch.empty(request.n, self.length, self.n_sub, dtype=torch.long, device=self.device)
            request.generator = torch.Generator(self.device).manual_seed(request.seed)
            self._running.append(request)
        self._batch_cache = None
        return self._prefill(admitted)

    def _forward(self, h: torch.Tensor, rope: torch.Tensor, mask) -> torch.Tensor:
        """The model's blocks, final norm and heads with the engine's caches plugged in:
        h [B, T, dim] -> logits of the last position [B, n_sub, V] float32."""
        layers = self.model.trunk.layers
        saved = [layer.attention.kv_cache for layer in layers]
        try:
            for layer, cache in zip(layers, self._caches):
                layer.attention.kv_cache = cache
            for layer in layers:
                h = layer(h, rope, None, mask)
        finally:
            for layer, cache in zip(layers, saved):
                layer.attention.kv_cache = cache
        h = self.model.trunk.norm(h[:, -1])                                    # [B, dim]
        return self.model.output(h).float()                                    # [B, n_sub, V]

    def _prefill(self, admitted: list[Request]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the admitted requests' condition prefixes into their rows -> (rows [B], token-0 logits
        [B, n_sub, V])."""
        conds = []
        for request in admitted:
            conds.append(request.cond)
            if request.options.guided:
                conds.append(self.model.null_cond(request.cond))
        inputs = cat_conditions(conds)
        rows = torch.tensor([row for r in admitted for row in r.rows], device=self.device)
        P = self.prefix_len
        h = self.model.cond_embedder(inputs)                                   # [B, P, dim]
        prefix_mask = self.model.cond_embedder.prefix_mask(inputs)             # [B, P] or None
        self._valid[rows] = True
        if prefix_mask is not None:
            self._valid[rows, :P] = prefix_mask
        positions = torch.arange(P, device=self.device)
        mask = attention_mask(positions, positions, True, prefix_mask) if P > 1 or prefix_mask is not None else None
        self._plan.rows, self._plan.positions, self._plan.read_length = rows, positions, None
        logits = self._forward(h, self._rope[:P], mask)                       # [B, n_sub, V]
        for row in rows.tolist():
            self._row_pos[row] = P                 # token 0 will sit at position P
        return rows, logits

    def _decode(self) -> torch.Tensor:
        """Feed each running row its last token at its own position -> logits [used, n_sub, V].

        Positions live on the device (built when the running set changes, then advanced in place),
        so a step copies nothing from the host: on CUDA the loop never waits for the GPU."""
        b = self._batch()
        used = b["used"]
        pos = b["pos"]                                                         # [used]
        length = max(self._row_pos[:used]) + 1
        keys = self._keys[:length]
        mask = ((keys[None, :] <= pos[:, None]) & self._valid[:used, :length]) | (keys[None, :] == pos[:, None])
        h = self.model.tok_embeddings(self._row_input[:used, None])            # [used, 1, dim]
        self._plan.rows = b["all_rows"]
        self._plan.positions, self._plan.read_length = pos[:, None], length
        logits = self._forward(h, self._rope[pos][:, None], mask[:, None, None, :])
        pos += b["active"]                                                     # free rows stay at 0
        for r in self._running:
            for row in r.rows:
                self._row_pos[row] += 1
        return logits

    def _merge_logits(self, decoded: torch.Tensor | None, prefilled: tuple | None) -> torch.Tensor:
        """Decode logits [used_before, n_sub, V] and the prefill's (rows, logits) -> one tensor indexed by
        row, [used, n_sub, V]."""
        if prefilled is None:
            return decoded
        rows, fresh = prefilled
        used = max(row for r in self._running for row in r.rows) + 1
        logits = torch.zeros(used, self.n_sub, fresh.shape[-1], device=self.device)
        if decoded is not None:
            logits[: decoded.shape[0]] = decoded
        logits[rows] = fresh
        return logits

    def _batch(self) -> dict:
        """Per-row and per-image tensors of the running set, images in request order; built when the
        set changes (admission, release), then advanced in place step by step."""
        if self._batch_cache is not None:
            return self._batch_cache
        used = max(row for r in self._running for row in r.rows) + 1
        cond_rows, null_rows, guided_images, spans, scale_rows = [], [], [], [], []
        ks, ps, active = [], [], [False] * used
        for r in self._running:
            start = len(cond_rows)
            cond_rows += r.rows[: r.n]
            for row in r.rows:
                active[row] = True
            if r.options.guided:
                null_rows += r.rows[r.n:]
                guided_images += list(range(start, start + r.n))
                # Column t: the guidance scale of this request's token generated + t (plain: apply_cfg).
                o = r.options
                row_scales = [cfg_scale_at(i, self.length, o.cfg_scale, o.cfg_schedule)
                              if o.cfg_interval < 0 or i < o.cfg_interval else 1.0
                              for i in range(r.generated, r.generated + self.length)]
                scale_rows += [row_scales] * r.n
            spans.append((r, start, start + r.n))
            ks += [r.options.top_k] * r.n
            ps += [r.options.top_p] * r.n
        as_long = lambda x: torch.tensor(x, dtype=torch.long, device=self.device)   # noqa: E731
        kmax = max(min(k, self.config.vocab_size) for k in ks)
        self._batch_cache = dict(
            used=used, all_rows=torch.arange(used, device=self.device),
            pos=as_long(self._row_pos[:used]), active=as_long(active), steps=0,
            cond_rows=as_long(cond_rows), null_rows=as_long(null_rows), guided=as_long(guided_images),
            scales=torch.tensor(scale_rows, device=self.device).reshape(len(guided_images), self.length),
            spans=spans, any_temperature=any(r.options.temperature != 1.0 for r in self._running),
            ks=as_long(ks), kmax=kmax, ps=torch.tensor(ps, device=self.device)[:, None, None],
            any_k=any(0 < k < self.config.vocab_size for k in ks), any_p=any(p < 1 for p in ps),
            greedy=[r.options.temperature <= 0 or r.options.top_k == 1 for r in self._running])
        return self._batch_cache

    def _sample_and_advance(self, logits: torch.Tensor) -> None:
        """Guidance, filtering and one draw per image, each request from its own generator."""
        b = self._batch()
        x = logits[b["cond_rows"]]                                             # [I, n_sub, V]
        if len(b["guided"]):
            # The plain sampler's apply_cfg, each request at its own token index.
            scale = b["scales"][:, b["steps"], None, None]                     # [G, 1, 1]
            cond, uncond = x[b["guided"]], logits[b["null_rows"]]
            x[b["guided"]] = uncond + scale * (cond - uncond)
        tokens = self._draw(x, b)                                              # [I, n_sub]
        self._row_input[b["cond_rows"]] = tokens
        if len(b["guided"]):
            self._row_input[b["null_rows"]] = tokens[b["guided"]]
        for r, start, end in b["spans"]:
            r.tokens[:, r.generated] = tokens[start:end]
            r.generated += 1
        b["steps"] += 1

    def _draw(self, x: torch.Tensor, b: dict) -> torch.Tensor:
        """x [I, n_sub, V] guided logits -> tokens [I, n_sub], as sample_tokens does per request."""
        if all(b["greedy"]):
            return x.argmax(-1)
        raw = x
        if b["any_temperature"]:   # divide per request by the Python float, exactly as sample_tokens does
            x = torch.cat([x[start:end] / max(r.options.temperature, 1e-9) for r, start, end in b["spans"]])
        if b["any_p"]:
            sorted_x, order = torch.sort(x, dim=-1, descending=True)                    # [I, n_sub, V]
        if b["any_k"]:
            # Each image's k-th largest value (-inf where top-k is off), from the sort when there is one.
            top = sorted_x if b["any_p"] else torch.topk(x, b["kmax"], dim=-1).values
            ks = b["ks"].clamp(max=x.shape[-1])
            kth = top.gather(-1, (ks - 1).clamp(min=0)[:, None, None].expand(-1, x.shape[1], 1))
            kth = torch.where((ks > 0)[:, None, None], kth, torch.full_like(kth, float("-inf")))
            x = x.masked_fill(x < kth, float("-inf"))
            if b["any_p"]:
                sorted_x = sorted_x.masked_fill(sorted_x < kth, float("-inf"))
        if b["any_p"]:
            probs_sorted = sorted_x.softmax(-1)
            drop_sorted = ((probs_sorted.cumsum(-1) - probs_sorted) >= b["ps"]) & (b["ps"] < 1)
            x = x.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
        probs = x.softmax(-1)
        tokens = torch.empty(x.shape[:2], dtype=torch.long, device=x.device)
        for (r, start, end), greedy in zip(b["spans"], b["greedy"]):
            if greedy:
                tokens[start:end] = raw[start:end].argmax(-1)   # temperature 0 / top-k 1: no draw
            else:
                flat = probs[start:end].reshape(-1, probs.shape[-1])
                tokens[start:end] = draw_rows(flat, r.generator).view(end - start, -1)
        return tokens
