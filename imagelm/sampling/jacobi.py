"""Speculative Jacobi decoding (SJD, arXiv 2410.01699): fewer forward passes than tokens, with the
model's own sampling distribution.

Each image keeps a window of W draft tokens ahead of what it has accepted, each drawn from a known
proposal distribution q. One forward pass feeds the last accepted token and the first W-1 drafts (a
W-token verify step of the one forward, per row at its own positions) and returns the model's
distribution p at every window slot, after guidance, temperature, top-k and top-p exactly as the
plain sampler computes them. Then, slot by slot:

- draft x is accepted with probability min(1, p(x) / q(x)) (sub-tokens: the joint probability of
  the position's n sub-tokens, the product over its heads);
- at the first rejection, a token is drawn from the normalised residual max(0, p - q) and the window
  stops there: every slot before it, and that one, are tokens of the image.

This is speculative sampling, so each accepted token has exactly the model's distribution given the
tokens before it, whatever the drafts were: the drafts only decide how many tokens a pass yields
(at least one). Greedy decoding (temperature 0 or top-k 1) makes p one-hot, so it yields exactly the
argmax tokens.

Drafts (the Jacobi part, how good the guesses are): slots after the rejection are re-drafted from
this pass's p at those slots (conditioned on the old drafts, so only a guess), by maximal coupling
with the old draft (MC-SJD, arXiv 2510.24211): the old draft is kept with probability
min(1, p(x)/q(x)), else a token is drawn from the residual max(0, p - q). That is a draw from p
that changes as few drafts as possible between passes, so windows settle faster than with SJD's
independent re-draws; its proposal is then p. New slots at the window's end are drawn from the
distribution at the last slot (neighbouring image tokens are alike).

What is approximate: nothing for one token per position. With n > 1 sub-tokens the residual over the
joint vocabulary (V^n values) is drawn by rejection from p with a bounded number of candidates
(RESIDUAL_CANDIDATES); if every candidate is rejected, which happens with probability at most about
1% of a rejection, the last candidate (a draw from p) is taken.

Drafts from a datastore of codes (optional, exact; retrieval drafting as in REST, arXiv
2311.08252): given codes of real images (the training set's, `DraftStore`), after each pass the
window of an image whose last `min_match` or more tokens equal a stored image's tokens at the same
positions is drafted from that image's next tokens (the longest such match; same class first),
each with the one-hot proposal q = 1 at the drafted token: it is accepted with probability p(x)
and a rejection draws from p without x. A draft that is a fixed function of the accepted tokens is
as valid as a drawn one, so the distribution stays the model's. It pays where the model reproduces
stored images (a model fitted closely to a small data set); elsewhere few windows match.

Grouped acceptance (optional, lossy, after GSD, arXiv 2508.07747): image tokens are redundant,
many codes decode to almost the same pixels, so a stale draft is often "right enough" where exact
acceptance rejects it. With a group table (each token's `size` nearest tokens in the tokenizer's
code space, itself included: `nearest_groups`), draft x is accepted with probability
min(1, p(G(x)) / q(G(x))), the mass of its group under p and q (sub-tokens: the product over the
position's sub-tokens). What is exact then: the distribution over groups at an accepted slot when p
and q agree within groups; what is not: which member of the group is taken (the draft, not a draw
from p inside the group). A group of size 1 is exact acceptance.

Randomness: per pass every image draws a fixed block of uniforms from its request's torch.Generator,
so the same seed gives the same tokens (not the plain sampler's tokens: another random stream, the
same distribution).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from imagelm.sampling.logits import RowSampling, SamplingOptions, filter_logits, guide, inverse_cdf, uniforms

DEFAULT_WINDOW = 16
RESIDUAL_CANDIDATES = 64


# ---------------------------------------------------------------- the maths (per slot, batched)
def slot_probs(x: torch.Tensor, rows: RowSampling) -> torch.Tensor:
    """The sampling distribution of each slot: guided logits x [N, n, V] -> probabilities [N, n, V]
    after temperature, top-k and top-p (rows: one per slot); one-hot at the argmax for greedy rows."""
    if rows.all_greedy:
        return torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1]).to(x.dtype)
    probs = filter_logits(x, rows).softmax(-1)
    if rows.any_greedy:
        onehot = torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1]).to(x.dtype)
        probs = torch.where(rows.greedy[:, None, None], onehot, probs)
    return probs


def joint(probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Probability of a position's sub-tokens: probs [..., n, V], tokens [..., n] -> [...]."""
    return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).prod(-1)


def residual_draw(p: torch.Tensor, q: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A draw from the normalised residual max(0, p - q) of joint distributions over n sub-tokens:
    p, q [N, n, V] (per sub-token factors), u [N, C] uniforms (C = residual_uniforms(n)) -> [N, n].

    n = 1: exact, by inverse CDF of max(0, p - q) (p itself where p = q, where no rejection happens).
    n > 1: candidates y ~ p accepted with probability max(0, 1 - q(y) / p(y)), the first accepted
    taken (the last candidate if none is: see the module doc)."""
    N, n, V = p.shape
    if n == 1:
        r = (p[:, 0] - q[:, 0]).clamp_min(0)                                            # [N, V]
        r = torch.where(r.sum(-1, keepdim=True) > 0, r, p[:, 0])
        return inverse_cdf(r, u[:, :1]).unsqueeze(-1)
    K = RESIDUAL_CANDIDATES
    draws = u[:, :K * n].view(N, K, n)                                                  # [N, K, n]
    accept_u = u[:, K * n:K * n + K]                                                    # [N, K]
    pk = p.unsqueeze(1).expand(N, K, n, V).reshape(-1, V)
    cand = inverse_cdf(pk, draws.reshape(-1, 1)).view(N, K, n)                          # y ~ p
    pj = joint(p.unsqueeze(1).expand(N, K, n, V), cand)
    qj = joint(q.unsqueeze(1).expand(N, K, n, V), cand)
    ok = accept_u < (1 - qj / pj.clamp_min(1e-30)).clamp_min(0)                         # [N, K]
    ok[:, -1] = True
    first = ok.float().argmax(-1)                                                       # first True
    return cand[torch.arange(N, device=p.device), first]


def residual_uniforms(n: int) -> int:
    """Uniforms residual_draw consumes per draw for n sub-tokens."""
    return 1 if n == 1 else RESIDUAL_CANDIDATES * (n + 1)


def nearest_groups(vectors: torch.Tensor, size: int) -> torch.Tensor:
    """Acceptance groups from token vectors [V, D] (a VQ codebook, or a binary sub-token's bits):
    -> [V, size] int64, each token's `size` nearest tokens by Euclidean distance, itself first."""
    V = vectors.shape[0]
    if not 1 <= size <= V:
        raise ValueError(f"an acceptance group has 1..{V} tokens, got {size}")
    vectors = vectors.float()
    distance = torch.cdist(vectors, vectors)
    distance.fill_diagonal_(-1.0)                        # itself first, whatever the ties
    return distance.topk(size, dim=1, largest=False).indices


def group_mass(probs: torch.Tensor, tokens: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Probability of each token's group: probs [..., n, V], tokens [..., n], groups [V, g] (the g
    tokens of each token's group, itself first) -> [...], the product over sub-tokens."""
    return probs.gather(-1, groups[tokens]).sum(-1).prod(-1)


@dataclass
class Verdict:
    """One verify pass over I windows of W slots: tokens [I, W, n] the image's tokens at the first
    `count` slots (count [I], 1 <= count <= W unless a window is empty), and the next window's drafts
    [I, W, n] and proposals [I, W, n, V]."""
    tokens: torch.Tensor
    count: torch.Tensor
    drafts: torch.Tensor
    proposals: torch.Tensor


def verify(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, valid: torch.Tensor,
           u_accept: torch.Tensor, u_residual: torch.Tensor, u_fresh: torch.Tensor,
           known: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> Verdict:
    """Speculative acceptance of I windows and the next drafts (see the module doc).

    p, q [I, W, n, V]: the model's and the proposals' distributions per slot; drafts [I, W, n];
    valid [I, W] bool: slots inside the image (a window near the end is shorter); u_accept [I, W],
    u_residual [I, W, C], u_fresh [I, W, n] uniforms; known [I, W]: slots whose token is fixed in
    advance (always accepted: the caller drafts the given token there); groups [V, g]: grouped
    (lossy) acceptance, see the module doc (None: exact).
    """
    I, W, n, V = p.shape
    if groups is None:
        ratio = joint(p, drafts) / joint(q, drafts).clamp_min(1e-30)                    # [I, W]
    else:
        ratio = group_mass(p, drafts, groups) / group_mass(q, drafts, groups).clamp_min(1e-30)
    accept = u_accept < ratio
    if known is not None:
        accept = accept | known
    accept = accept & valid
    count = accept.long().cumprod(1).sum(1)                                             # leading accepts
    residual = residual_draw(p.reshape(I * W, n, V), q.reshape(I * W, n, V),
                             u_residual.reshape(I * W, -1)).view(I, W, n)
    # The image's tokens: accepted drafts, then the residual draw at the first rejection.
    slot = torch.arange(W, device=p.device)
    tokens = torch.where((slot < count[:, None])[..., None], drafts, residual)
    total = torch.minimum(count + 1, valid.sum(1))                                      # [I]
    # Re-draft by maximal coupling: keep an old draft where it was accepted, else the residual draw
    # (a draw from p either way); the proposal becomes p.
    redrafted = torch.where(accept[..., None], drafts, residual)
    # Shift every window by its total; new slots at the end come from the last valid slot's p.
    last = (valid.sum(1) - 1).clamp_min(0)
    tail = p[torch.arange(I, device=p.device), last]                                    # [I, n, V]
    fresh = inverse_cdf(tail.unsqueeze(1).expand(I, W, n, V).reshape(-1, V),
                        u_fresh.reshape(-1, 1)).view(I, W, n)
    index = total[:, None] + slot                                                       # [I, W]
    inside = index < W
    take = index.clamp(max=W - 1)
    next_drafts = torch.where(inside[..., None], redrafted.gather(1, take[..., None].expand(I, W, n)), fresh)
    next_q = torch.where(inside[..., None, None],
                         p.gather(1, take[..., None, None].expand(I, W, n, V)), tail.unsqueeze(1).expand(I, W, n, V))
    return Verdict(tokens, total, next_drafts, next_q)


def describe_passes(passes: list[int], length: int) -> str:
    """One line on a request's decoding: each image's verify passes (JacobiState.passes) for its
    `length` tokens, of which the prefill samples the first."""
    mean = sum(passes) / max(len(passes), 1)
    return (f"jacobi decoding: {mean:.1f} passes an image on average for {length - 1} tokens (plain decoding: "
            f"{length - 1} steps), {(length - 1) / max(mean, 1e-9):.2f} tokens a pass")


# ---------------------------------------------------------------- drafts from stored codes
class DraftStore:
    """Codes of stored images to draft from: tokens [N, L, n] int64, labels [N] int64 (or None), and
    the shortest match (in tokens, at the same positions) that is drafted from (see the module doc)."""

    MAX_MATCH = 16           # matches are compared over at most this many trailing tokens

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, min_match: int = 4):
        if tokens.dim() != 3 or len(tokens) == 0:
            raise ValueError(f"draft codes must be a non-empty [N, L, n] tensor, got {list(tokens.shape)}")
        if not 1 <= min_match <= self.MAX_MATCH:
            raise ValueError(f"the draft match must be 1..{self.MAX_MATCH} tokens, got {min_match}")
        self.tokens, self.min_match = tokens.long(), min_match
        self.labels = None if labels is None else labels.long()

    def to(self, device) -> "DraftStore":
        """The same store with its codes on `device`."""
        return DraftStore(self.tokens.to(device), None if self.labels is None else self.labels.to(device),
                          self.min_match)

    def continuation(self, prefix: torch.Tensor, window: int, label: int | None = None) -> torch.Tensor | None:
        """The next tokens after prefix [g, n] (g >= 1): up to `window` tokens [k, n] of the stored
        image whose trailing tokens match the prefix's longest (at least min_match; ties: the same
        label, then the lowest index), or None when none matches."""
        g = len(prefix)
        if g >= self.tokens.shape[1]:
            return None
        start = max(0, g - self.MAX_MATCH)
        same = (self.tokens[:, start:g] == prefix[start:]).all(-1)                     # [N, <=16]
        run = same.flip(1).long().cumprod(1).sum(1).float()                            # trailing match length
        if label is not None and self.labels is not None:
            run = run + 0.5 * (self.labels == label)
        best = int(run.argmax())
        if run[best] < self.min_match:
            return None
        return self.tokens[best, g:g + window]


STORE_PAUSE = 4              # passes an image drafts without the store after a stored draft missed


def draft_from_store(state, store: DraftStore, tokens: torch.Tensor, labels: list, window: int, length: int,
                     accepted: list[int] | None = None) -> None:
    """Replace the windows of a request's images (state: its JacobiState; tokens [n, L, n_sub] drawn
    so far; labels: each image's class id or None) by stored continuations where one matches.
    accepted: each image's tokens taken in the pass just run (None: its first window). An image
    whose stored draft was rejected at once (1 token taken) drafts the Jacobi way for the next
    STORE_PAUSE passes: where the model does not follow the stored images, their one-hot drafts
    are worse guesses than Jacobi's, which are drawn from the model's own distribution."""
    V = state.proposals.shape[-1]
    for i, g in enumerate(state.progress):
        if accepted is not None and state.stored[i] and accepted[i] <= 1:
            state.store_pause[i] = STORE_PAUSE
        state.stored[i] = False
        if g >= length:
            continue
        if state.store_pause[i] > 0:
            state.store_pause[i] -= 1
            continue
        following = store.continuation(tokens[i, :g], window, labels[i])
        if following is None:
            continue
        state.stored[i] = True
        k = len(following)
        state.drafts[i, :k] = following
        state.proposals[i, :k] = torch.nn.functional.one_hot(following, V).to(state.proposals.dtype)


# ---------------------------------------------------------------- in the engine
@dataclass
class JacobiState:
    """A request's windows: drafts [n, W, n_sub], proposals [n, W, n_sub, V], and each image's
    number of tokens so far and verify passes it has run (host ints, for reports: an image finished
    early stops counting); for a DraftStore, per image: whether its window is a stored continuation,
    and how many passes it drafts without the store (after a miss)."""
    drafts: torch.Tensor
    proposals: torch.Tensor
    progress: list[int]
    passes: list[int]
    stored: list[bool]
    store_pause: list[int]


def at_indices(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table [I, L, ...] at token indices index [I, W] (clamped to the last) -> [I, W, ...]."""
    L = table.shape[1]
    index = index.clamp(max=L - 1)
    return table.gather(1, index.view(*index.shape, *[1] * (table.dim() - 2)).expand(*index.shape, *table.shape[2:]))


class JacobiDecoding:
    """The engine's decode step when it runs with decode="jacobi": one verify pass of every running
    image's window per step, each image accepting its own number of tokens (see the module doc)."""

    def __init__(self, engine, window: int = DEFAULT_WINDOW, groups: torch.Tensor | None = None,
                 store: DraftStore | None = None):
        if window < 1:
            raise ValueError(f"the Jacobi window must be >= 1 token, got {window}")
        V = engine.config.vocab_size
        if groups is not None and (groups.dim() != 2 or groups.shape[0] != V):
            raise ValueError(f"acceptance groups must be a [{V}, size] table, got {list(groups.shape)}")
        self.engine, self.window = engine, window
        self.groups = None if groups is None or groups.shape[1] == 1 else groups.to(engine.device)
        if store is not None:
            if tuple(store.tokens.shape[1:]) != (engine.config.seq_len, engine.config.num_subtokens):
                raise ValueError(f"draft codes of {list(store.tokens.shape[1:])} tokens per image do not fit a "
                                 f"generator of {engine.config.seq_len} x {engine.config.num_subtokens}")
            if int(store.tokens.max()) >= V:
                raise ValueError(f"draft codes reach token {int(store.tokens.max())}; the generator has {V}")
            store = store.to(engine.device)
        self.store = store
        self.passes = 0                  # forward passes run (verify steps), for reports
        self._rows = None                # RowSampling of the batch's slots, per batch

    def start(self, requests, logits: torch.Tensor, batch) -> None:
        """After the prefill sampled each request's first token: its first window, drawn from that
        token's distribution. logits [A, n_sub, V] of the prefill, batch its DecodeBatch."""
        e, W = self.engine, self.window
        x0 = guide(logits[batch.read], logits[batch.read_null], batch.scales[:, :1, None])   # [I, n_sub, V]
        start = 0
        for r in requests:
            drafts, proposals = first_window(x0[start:start + r.n], r.options, W, r.generator, e.device)
            if r.known is not None:
                index = (1 + torch.arange(W, device=e.device)).expand(r.n, W)
                drafts = torch.where(at_indices(r.known, index)[..., None], at_indices(r.given, index), drafts)
            r.jacobi = JacobiState(drafts, proposals, [1] * r.n, [0] * r.n, [False] * r.n, [0] * r.n)
            self._draft_from_store(r)
            start += r.n

    def batch_changed(self) -> None:
        self._rows = None

    @torch.no_grad()
    def step(self, batch) -> None:
        """One verify pass over the running requests (batch: their eager DecodeBatch)."""
        e, W, requests = self.engine, self.window, self.engine._running
        L, n, P, max_seq = e.length, e.n_sub, e.prefix_len, e.cache.max_seq
        device = e.device
        progress_list = [g for r in requests for g in r.jacobi.progress]
        progress = torch.tensor(progress_list, device=device)                          # [I]
        I, V = len(progress_list), e.config.vocab_size
        drafts = torch.cat([r.jacobi.drafts for r in requests])                        # [I, W, n]
        q = torch.cat([r.jacobi.proposals for r in requests])                           # [I, W, n, V]
        # Inputs of every row: its last token, then the first W-1 drafts, at its next W positions.
        R = batch.rows
        cur = e._inputs[batch.write]                                                    # [I, n]
        image_inputs = torch.cat([cur[:, None], drafts[:, :W - 1]], dim=1)              # [I, W, n]
        row_inputs = torch.zeros(e.rows + 1, W, n, dtype=torch.long, device=device)
        row_inputs[batch.write] = image_inputs
        row_inputs[batch.write_null] = image_inputs
        slot = torch.arange(W, device=device)
        positions = (e._positions[:R, None] + slot).clamp(max=max_seq - 1)              # [R, W]
        key_length = min(max_seq, P + max(progress_list) - 1 + W)
        running = running_rows(batch, progress_list, L)
        if running is None:
            h = e.model.embed_tokens(row_inputs[:R])                                    # [R, W, dim]
            logits = e.model.logits(h, positions, e.cache, key_length=key_length)       # [R, W, n, V]
        else:   # only the rows of unfinished images run; the others' logits stay 0 (no valid slot)
            h = e.model.embed_tokens(row_inputs[running])                               # [R', W, dim]
            part = e.model.logits(h, positions[running], e.cache, rows=running, key_length=key_length)
            logits = part.new_zeros(R, *part.shape[1:])
            logits[running] = part
        self.passes += 1
        index = progress[:, None] + slot                                                # token index per slot
        x = guided_window(logits, batch.read, batch.read_null, window_scales(batch.scales, progress, W))
        if self._rows is None:
            self._rows = RowSampling.of([r.options for r in requests for _ in range(r.n) for _ in range(W)], V, device)
        p = slot_probs(x.reshape(I * W, n, V), self._rows).view(I, W, n, V)
        valid = index < L
        known = given = None
        if batch.known is not None:
            known, given = at_indices(batch.known, index) & valid, at_indices(batch.given, index)
        draws = [pass_uniforms(r.n, W, n, r.generator, device) for r in requests]
        u_accept, u_residual, u_fresh = (torch.cat(part) for part in zip(*draws))
        verdict = verify(p, q, drafts, valid, u_accept, u_residual, u_fresh, known, self.groups)
        total = verdict.count                                                           # [I]
        next_drafts = verdict.drafts
        if known is not None:   # the next window drafts the given tokens where they are known
            ahead = (progress + total)[:, None] + slot
            next_drafts = torch.where(at_indices(batch.known, ahead)[..., None], at_indices(batch.given, ahead),
                                      next_drafts)
        # Feed each image's last token next, from positions advanced by what it took.
        last = verdict.tokens.gather(1, (total - 1).clamp(min=0)[:, None, None].expand(I, 1, n))[:, 0]
        last = torch.where((total > 0)[:, None], last, cur)
        e._inputs[batch.write] = last
        e._inputs[batch.write_null] = last
        advance = torch.zeros(e.rows + 1, dtype=torch.long, device=device)
        advance[batch.write] = total
        advance[batch.write_null] = total
        e._positions += advance[:e.rows]
        totals, start = total.tolist(), 0
        for r in requests:
            state = r.jacobi
            for i in range(r.n):
                g, t = state.progress[i], totals[start + i]
                r.tokens[i, g:g + t] = verdict.tokens[start + i, :t]
                state.progress[i] = g + t
                state.passes[i] += g < L
            state.drafts = next_drafts[start:start + r.n]
            state.proposals = verdict.proposals[start:start + r.n]
            r.generated = min(state.progress)
            self._draft_from_store(r, totals[start:start + r.n])
            start += r.n

    def _draft_from_store(self, r, accepted: list[int] | None = None) -> None:
        """Stored continuations as the next drafts of r's images (not for edits: their known tokens
        are drafted already)."""
        if self.store is None or r.known is not None:
            return
        labels = r.cond.tolist() if isinstance(r.cond, torch.Tensor) else [None] * r.n
        draft_from_store(r.jacobi, self.store, r.tokens, labels, self.window, self.engine.length, accepted)


def running_rows(batch, progress: list[int], length: int) -> torch.Tensor | None:
    """The cache rows [R'] (ascending) of the images still decoding (progress < length), conditional
    and null, when they are fewer than the batch's rows; None when every row runs. A request's images
    finish after different numbers of passes, and the batch runs until its slowest: the finished
    images' rows (and free ones) leave the forward instead of costing a full window each pass."""
    live = [i for i, g in enumerate(progress) if g < length]
    if not live:
        return None
    rows = torch.cat([batch.read[live], batch.read_null[live]]).unique()                  # sorted
    return None if len(rows) == batch.rows else rows


def first_window(x0: torch.Tensor, options: SamplingOptions, window: int, generator, device) -> tuple:
    """Drafts and proposals of a first window from the prefill's guided logits x0 [n, n_sub, V]: every
    slot drawn from the first token's distribution -> (drafts [n, W, n_sub], proposals [n, W, n_sub, V])."""
    n, n_sub, V = x0.shape
    probs = slot_probs(x0.float(), RowSampling.of([options] * n, V, device))            # [n, n_sub, V]
    u = uniforms((n, window, n_sub), generator, device)
    drafts = inverse_cdf(probs.unsqueeze(1).expand(n, window, n_sub, V).reshape(-1, V),
                         u.reshape(-1, 1)).view(n, window, n_sub)
    return drafts, probs.unsqueeze(1).expand(n, window, n_sub, V).contiguous()


def pass_uniforms(n_images: int, window: int, n_sub: int, generator, device) -> tuple:
    """One pass's uniforms of a request's images: (accept [n, W], residual [n, W, C], fresh [n, W, n_sub])."""
    C = residual_uniforms(n_sub)
    u = uniforms((n_images, window, 1 + C + n_sub), generator, device)
    return u[..., 0], u[..., 1:1 + C], u[..., 1 + C:]


def window_scales(scales: torch.Tensor, start: torch.Tensor, window: int) -> torch.Tensor:
    """Guidance scale of every slot: scales [I, L] per token index, start [I] the window's first
    token index -> [I, W, 1, 1] (clamped at the last token)."""
    L = scales.shape[1]
    index = (start[:, None] + torch.arange(window, device=start.device)).clamp(max=L - 1)
    return scales.gather(1, index)[..., None, None]


def guided_window(logits: torch.Tensor, read: torch.Tensor, read_null: torch.Tensor,
                  scale: torch.Tensor) -> torch.Tensor:
    """logits [R, W, n, V] of a verify pass -> each image's guided logits [I, W, n, V]."""
    return guide(logits[read], logits[read_null], scale)
