"""From logits to tokens: classifier-free guidance and its schedules, temperature, top-k, top-p and
the draw. The one sampling maths of every sampler (plain, engine, masked, Jacobi), per row as tensors:
each row of a batch may have its own temperature, top-k, top-p and guidance scale, so a batch of
requests with different options is one call, and a sampler that runs one request gets exactly the
same arithmetic as the engine running it beside others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Ours rise from 1 at the first token / step to the full scale at the last; ELM's (elm-*) are its own
# samplers' formulas, which never start at exactly 1 (see cfg_scale_at).
CFG_SCHEDULES = ("constant", "linear", "cos", "log", "square", "square_root",
                 "elm-linear", "elm-cos", "elm-log", "elm-square", "elm-square_root", "elm-powercos")


@dataclass(frozen=True)
class SamplingOptions:
    """How to turn logits into tokens. cfg_scale 1 = no guidance; top_k 0 / top_p 1 = off."""
    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    cfg_interval: int = -1          # guide only the first cfg_interval tokens / steps (-1: all of them)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_power: float = 1.0          # elm-powercos only: ELM's scale_pow

    def __post_init__(self):
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"unknown cfg schedule {self.cfg_schedule!r}; choose one of {', '.join(CFG_SCHEDULES)}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg scale must be >= 0, got {self.cfg_scale}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if not self.cfg_power > 0:
            raise ValueError(f"cfg power must be > 0, got {self.cfg_power}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    @property
    def greedy(self) -> bool:
        """Temperature 0 or top-k 1: the argmax, no random draw."""
        return self.temperature <= 0 or self.top_k == 1

    def cfg_scales(self, total: int) -> list[float]:
        """The guidance scale at each of `total` tokens (AR) or steps (MLM): the schedule, and 1 from
        index cfg_interval on (guidance still runs there, at scale 1)."""
        return [cfg_scale_at(i, total, self.cfg_scale, self.cfg_schedule, self.cfg_power)
                if self.cfg_interval < 0 or i < self.cfg_interval else 1.0 for i in range(total)]


# ---------------------------------------------------------------- guidance
_RISE = {  # progress p in [0, 1] -> fraction of the way from 1 to the full scale (0 at p=0, 1 at p=1)
    "linear": lambda p: p,
    "cos": lambda p: (1 - math.cos(math.pi * p)) / 2,      # slow, fast, slow
    "log": lambda p: math.log1p((math.e - 1) * p),         # fast early, then flattening
    "square": lambda p: p * p,                              # slow early
    "square_root": lambda p: math.sqrt(p),                  # fast early
}


# ELM's schedules (Pepper-lll/LMforImageGeneration, llama/ar_model.py and llama/mlm_model.py
# generate_cfg): progress r = (i + 1) / T, so the first token already has some guidance and the last
# the full scale; its square_root alone uses i / T (it starts at exactly 1 and never reaches the
# scale). elm-powercos is its masked sampler's `powercos` (scale_pow = power); its AR sampler offers
# the others, its masked sampler linear (the same formula) and constant.
_ELM = {
    "elm-linear": lambda i, T, power: (i + 1) / T,
    "elm-cos": lambda i, T, power: math.cos(-math.pi / 2 + (i + 1) / T * (math.pi / 2)),
    "elm-log": lambda i, T, power: math.log1p((i + 1) / T * (math.e - 1)) / math.log1p(math.e - 1),
    "elm-square": lambda i, T, power: ((i + 1) / T) ** 2,
    "elm-square_root": lambda i, T, power: (i / T) ** 0.5,
    "elm-powercos": lambda i, T, power: (1 - math.cos(((i + 1) / T) ** power * math.pi)) / 2,
}


def cfg_scale_at(index: int, total: int, scale: float, schedule: str = "constant", power: float = 1.0) -> float:
    """Guidance scale at step `index` of `total` (tokens for AR, steps for MLM).

    constant: `scale` throughout. Ours (linear, cos, log, square, square_root) rise from 1 at the
    first step to `scale` at the last, along that curve of progress index / (total - 1). ELM's
    (elm-*) are 1 + (scale - 1) * f as its samplers compute f (see _ELM); `power` is elm-powercos's.
    """
    if schedule == "constant":
        return scale
    if schedule in _ELM:
        return 1.0 + (scale - 1.0) * _ELM[schedule](index, total, power)
    if schedule not in _RISE:
        raise ValueError(f"unknown cfg schedule {schedule!r}; choose one of {', '.join(CFG_SCHEDULES)}")
    progress = index / max(1, total - 1)
    return 1.0 + (scale - 1.0) * _RISE[schedule](progress)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond); cond, uncond [I, ...], scale a
    number or a tensor broadcastable to them (a scale per row). A row with uncond = cond is unchanged,
    and at scale 1 the result is cond exactly (guidance switched off mid-sample, e.g. past LlamaGen's
    cfg_interval, means the conditional logits alone, not a rounding of them)."""
    mixed = uncond + scale * (cond - uncond)
    if torch.is_tensor(scale):
        return torch.where(scale == 1, cond, mixed)
    return cond if scale == 1 else mixed


def apply_cfg(logits: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Guidance on a doubled batch: logits [2B, ...] (conditional rows first, then unconditional)
    -> [B, ...]."""
    cond, uncond = logits.chunk(2, dim=0)
    return guide(cond, uncond, scale)


# ---------------------------------------------------------------- filtering and the draw
@dataclass(frozen=True)
class RowSampling:
    """Per-row temperature, top-k and top-p of I rows as tensors, and what the host knows of them
    (so that filters no row uses are skipped without looking at the device).

    temperature [I] float32 (1 for greedy rows: their draw is not used), top_k [I] int64 (0 = off,
    at most V), top_p [I] float32 (1 = off), greedy [I] bool (argmax instead of a draw).
    k_bound: the largest top-k in use, rounded up to a power of two (0 = no row filters by top-k);
    any_p / any_temperature / any_greedy / all_greedy: whether some (every) row needs that work.
    """
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    greedy: torch.Tensor
    k_bound: int
    any_p: bool
    any_temperature: bool
    any_greedy: bool
    all_greedy: bool

    @classmethod
    def of(cls, options: list[SamplingOptions], vocab_size: int, device=None) -> RowSampling:
        """One row per element of `options` (repeat an option for each image it covers)."""
        greedy = [o.greedy for o in options]
        ks = [min(o.top_k, vocab_size) if 0 < o.top_k < vocab_size and not g else 0
              for o, g in zip(options, greedy)]
        temps = [1.0 if g else o.temperature for o, g in zip(options, greedy)]
        ps = [1.0 if g else o.top_p for o, g in zip(options, greedy)]
        k_bound = 0 if not any(ks) else min(vocab_size, 1 << (max(ks) - 1).bit_length())
        return cls(torch.tensor(temps, dtype=torch.float32, device=device),
                   torch.tensor(ks, dtype=torch.long, device=device),
                   torch.tensor(ps, dtype=torch.float32, device=device),
                   torch.tensor(greedy, dtype=torch.bool, device=device),
                   k_bound, any(p < 1 for p in ps), any(t != 1.0 for t in temps), any(greedy),
                   bool(greedy) and all(greedy))

    def __len__(self) -> int:
        return self.temperature.shape[0]


def filter_logits(x: torch.Tensor, rows: RowSampling) -> torch.Tensor:
    """x [I, n, V] float32 (row i of rows.* applies to x[i]) -> x / temperature with -inf outside each
    row's top-k largest and outside the smallest set whose probability reaches its top-p."""
    if rows.any_temperature:
        x = x / rows.temperature[:, None, None]
    if rows.any_p:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)                        # [I, n, V]
    if rows.k_bound:
        # Each row's k-th largest value (-inf where top-k is off), from the sort when there is one.
        top = sorted_x if rows.any_p else torch.topk(x, rows.k_bound, dim=-1).values
        k = rows.top_k
        kth = top.gather(-1, (k - 1).clamp(min=0)[:, None, None].expand(-1, x.shape[1], 1))   # [I, n, 1]
        kth = torch.where((k > 0)[:, None, None], kth, torch.full_like(kth, float("-inf")))
        x = x.masked_fill(x < kth, float("-inf"))
        if rows.any_p:
            sorted_x = sorted_x.masked_fill(sorted_x < kth, float("-inf"))
    if rows.any_p:
        probs = sorted_x.softmax(-1)
        p = rows.top_p[:, None, None]
        # Drop a token when the tokens before it already reach top_p (the best one always stays).
        drop_sorted = ((probs.cumsum(-1) - probs) >= p) & (p < 1)
        x = x.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return x


def sample_rows(x: torch.Tensor, rows: RowSampling, u: torch.Tensor | None) -> torch.Tensor:
    """One token per row and sub-token: x [I, n, V] (guided) logits, u [I, n] uniforms in [0, 1)
    (None when every row is greedy) -> tokens [I, n] int64. Greedy rows take the argmax of x."""
    if rows.all_greedy:
        return x.argmax(-1)
    probs = filter_logits(x, rows).softmax(-1)
    drawn = inverse_cdf(probs.reshape(-1, probs.shape[-1]), u.reshape(-1, 1)).view(u.shape)
    if rows.any_greedy:
        drawn = torch.where(rows.greedy[:, None], x.argmax(-1), drawn)
    return drawn


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index of each row of probs [N, V] (non-negative, rows need not sum to 1) at which its
    cumulative mass passes u [N, 1] (uniform in [0, 1)) of the row's total -> [N] int64.

    One uniform per row: torch.multinomial draws an exponential per vocabulary entry instead,
    16,384 random numbers per token for a VQ codebook (5.6 of a 70 ms GPT-B step at 16 images). The
    scaled draw stays strictly below the row's total, so a zero-probability entry at the end of the
    vocabulary can never be picked.
    """
    cdf = probs.float().cumsum(-1)                                                      # [N, V]
    target = u.to(cdf.dtype) * cdf[:, -1:] * (1 - 2 ** -20)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def uniforms(shape, generator: torch.Generator | None, device=None) -> torch.Tensor:
    """The draw's randomness: uniforms of `shape` from `generator`, float32 (the only random numbers a
    sampler's draw consumes, one per row and sub-token)."""
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32)


def draw_rows(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of probs [N, V] (see inverse_cdf), the uniforms from `generator` -> [N] int64."""
    return inverse_cdf(probs, uniforms((probs.shape[0], 1), generator, probs.device))


# ---------------------------------------------------------------- one option set for a whole batch
def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top_k largest and outside the smallest set whose
    probability reaches top_p; logits [..., V] -> same shape. top_k=0 / top_p=1 disable each."""
    rows = logits.reshape(-1, 1, logits.shape[-1])
    options = SamplingOptions(top_k=top_k, top_p=top_p)
    return filter_logits(rows, RowSampling.of([options] * rows.shape[0], logits.shape[-1], logits.device)
                         ).view(logits.shape)


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row: logits [..., V] -> tokens [...] int64, every row with the same options.

    temperature 0 (or top_k 1) is greedy. Randomness comes only from `generator`.
    """
    x = logits.float().reshape(-1, 1, logits.shape[-1])                                 # [N, 1, V]
    options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p)
    rows = RowSampling.of([options] * x.shape[0], logits.shape[-1], logits.device)
    u = None if rows.all_greedy else uniforms((x.shape[0], 1), generator, logits.device)
    return sample_rows(x, rows, u).view(logits.shape[:-1])
