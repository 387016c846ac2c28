"""Why Jacobi decoding accepts as many tokens per pass as it does, on a trained AR generator.

Prints, for `--n` images sampled plainly (CFG `--cfg`): the entropy and top-1 probability of the
model's sampling distribution p (teacher forced on those samples); then, under Jacobi decoding of
`--n` images, the overlap sum min(p, q) of each window slot's proposal q with p (the chance a draft
would be accepted were its prefix right), the histogram of drafts accepted per pass, and the
tokens per pass at temperature 1 and greedy (top-k 1), which separates the acceptance rule from
the model's own sequential dependence. And how often the token drawn at a window's rejection (from
the residual) is among the m most likely tokens of that slot's proposal besides the draft: the
share of passes a tree that put those m guesses beside each draft (and verified what follows them
in the same pass) would gain a token by.

With `--chains M ...`, also the tokens per pass of M parallel Jacobi chains per image (a two-level
draft tree: M drafts for a window's first slot, each with its own chain behind it, tried in turn by
recursive rejection as in SpecInfer, arXiv 2305.09781, which keeps the distribution; then the
accepted chain's slots as usual). It is what "tree drafts" could gain before paying for M times the
verify rows. A reference simulation with full forwards (no cache), one sub-token, `--chain-images`
images.

With `--cost` (timed: run it alone on the CPU), where the time of one image's decoding goes: ms per
plain step and per Jacobi pass, split into the model's forward, the acceptance (`jacobi.verify`)
and the rest of the step, the mean over `--cost-images` single-image requests after warm-ups.

    python benchmarks/jacobi_diagnostics.py --ckpt runs/demo/gpt [--chains 1 2 4 8] [--cost]
"""
from __future__ import annotations

import argparse
import collections
import time

import torch

import imagelm
import imagelm.sampling.jacobi as jacobi
from imagelm.runtime import cpu_description
from imagelm.sampling.engine import Engine
from imagelm.sampling.logits import RowSampling, SamplingOptions, guide


def sampling_distributions(gen, tokens, cond, cfg):
    """Teacher-forced, guided p [N, L, V] of the first sub-token."""
    with torch.no_grad():
        x = guide(gen(tokens, cond), gen(tokens, gen.null_cond(cond)), torch.tensor(cfg))
    return x.softmax(-1)[:, :, 0]


GUESSES = (1, 2, 4, 8)


def jacobi_run(gen, cond, options, window):
    """(tokens per pass, accepted drafts per pass histogram, mean overlap per slot, guesses) of one
    request. guesses[m]: the image-passes whose window ends in a rejection with the residual draw
    among the m most likely tokens of that slot's proposal q other than its draft (tokens a
    two-level tree could have put beside the draft, before the pass, to verify what follows them)."""
    real, counts, overlaps, guesses = jacobi.verify, collections.Counter(), [], collections.Counter()

    def recording(p, q, drafts, valid, *rest, **kw):
        verdict = real(p, q, drafts, valid, *rest, **kw)
        counts.update(c - 1 for c in verdict.count.tolist() if c > 0)   # drafts accepted; 0: an image done
        overlaps.append(torch.minimum(p, q).sum(-1)[..., 0])
        slot = (verdict.count - 1).clamp_min(0)                          # the window's last token
        at = torch.arange(len(slot))
        residual, draft = verdict.tokens[at, slot, 0], drafts[at, slot, 0]
        rejected = (verdict.count > 0) & (residual != draft)             # a residual never equals its draft
        ranked = q[at, slot, 0].scatter(-1, draft[:, None], -1.0).argsort(-1, descending=True)   # draft last
        for m in GUESSES:
            guesses[m] += int(((ranked[:, :m] == residual[:, None]).any(1) & rejected).sum())
        guesses["passes"] += int((verdict.count > 0).sum())
        return verdict

    jacobi.verify = recording
    try:
        engine = Engine(gen, rows=2 * len(cond), dtype="float32", decode="jacobi", window=window)
        request = engine.submit(cond, options, seed=0)
        done = [0] * len(cond)
        while not request.finished:
            engine.step()
            if request.jacobi is not None:
                for i, g in enumerate(request.jacobi.progress):
                    if g >= gen.config.seq_len and not done[i]:
                        done[i] = engine._jacobi.passes
    finally:
        jacobi.verify = real
    per_pass = gen.config.seq_len / (sum(done) / len(done))
    return per_pass, counts, torch.cat(overlaps).mean(0), guesses


def parallel_chains(gen, cond, options, window, chains, seed=0):
    """Tokens per pass of `chains` Jacobi chains per image (see the module doc): cond [N] class ids."""
    N, L, V, W = len(cond), gen.config.seq_len, gen.config.vocab_size, window
    rng = torch.Generator().manual_seed(seed)

    def distributions(seqs, c):                          # [B, L] tokens -> p [B, L, V]
        with torch.no_grad():
            x = guide(gen(seqs, c), gen(seqs, gen.null_cond(c)), torch.tensor(options.cfg_scale))
        B = len(seqs)
        rows = RowSampling.of([options] * (B * L), V, torch.device("cpu"))
        return jacobi.slot_probs(x.float().reshape(B * L, 1, V), rows).view(B, L, V)

    def draw(p):                                         # p [..., V] -> tokens [...]
        return torch.multinomial(p.reshape(-1, V), 1, generator=rng).view(p.shape[:-1])

    def coin(p_x, q_x):                                  # accept with min(1, p/q)
        return bool(torch.rand((), generator=rng) < p_x / max(float(q_x), 1e-30))

    def residual(p, q):
        r = (p - q).clamp_min(0)
        return r / r.sum() if r.sum() > 1e-12 else p

    tokens = torch.zeros(N, L, dtype=torch.long)
    first = distributions(tokens, cond)[:, 0]                                            # [N, V]
    tokens[:, 0] = draw(first)
    done, passes = [1] * N, [0] * N
    drafts = [[draw(first[i].expand(W, V)) for _ in range(chains)] for i in range(N)]    # [W] each
    proposals = [[first[i].expand(W, V) for _ in range(chains)] for i in range(N)]      # [W, V] each
    while min(done) < L:
        running = [i for i in range(N) if done[i] < L]
        seqs = tokens[running].repeat_interleave(chains, 0).clone()
        for j, i in enumerate(running):
            k = min(W, L - done[i])
            for b in range(chains):
                seqs[j * chains + b, done[i]:done[i] + k] = drafts[i][b][:k]
        P = distributions(seqs, cond[running].repeat_interleave(chains))
        for j, i in enumerate(running):
            g, k = done[i], min(W, L - done[i])
            p = [P[j * chains + b, g:g + k] for b in range(chains)]                    # [k, V] per chain
            r, chosen = p[0][0], None                    # the first slot's p is every chain's
            for b in range(chains):
                x = drafts[i][b][0]
                if coin(r[x], proposals[i][b][0][x]):
                    chosen = b
                    break
                r = residual(r, proposals[i][b][0])
            taken = [draw(r)] if chosen is None else [drafts[i][chosen][0]]
            for slot in range(1, k if chosen is not None else 1):
                x, q = drafts[i][chosen][slot], proposals[i][chosen][slot]
                if not coin(p[chosen][slot][x], q[x]):
                    taken.append(draw(residual(p[chosen][slot], q)))
                    break
                taken.append(x)
            t = len(taken)
            tokens[i, g:g + t] = torch.stack(taken)
            done[i], passes[i] = g + t, passes[i] + 1
            for b in range(chains):                      # each chain re-drafts from its own p (coupled)
                kept = [x if coin(p[b][s][x], proposals[i][b][s][x]) else int(draw(residual(p[b][s], proposals[i][b][s])))
                        for s, x in enumerate(drafts[i][b][:k].tolist())]
                fresh = draw(p[b][k - 1].expand(W, V))
                drafts[i][b] = torch.cat([torch.tensor(kept[t:], dtype=torch.long), fresh])[:W]
                proposals[i][b] = torch.cat([p[b][t:], p[b][k - 1].expand(W, V)])[:W]
    return L / (sum(passes) / N)


def step_cost(gen, options, decode, window, images):
    """(ms per decode step, of which forward, of which verify, steps per image) of single-image
    requests (class i % classes, seed i) through a fresh fp32 engine each, the prefill not counted."""
    spent = {"forward": 0.0, "verify": 0.0}

    def timed(name, f):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = f(*args, **kwargs)
            spent[name] += time.perf_counter() - start
            return out
        return wrapper

    def run(seed):
        engine = Engine(gen, rows=2, dtype="float32", decode=decode, window=window)
        request = engine.submit(torch.tensor([seed % gen.config.num_classes]), options, seed=seed)
        engine.step()                                    # the prefill
        engine.model.logits = timed("forward", engine.model.logits)   # the engine's own prepared copy
        steps, seconds = 0, 0.0
        while not request.finished:
            start = time.perf_counter()
            engine.step()
            seconds += time.perf_counter() - start
            steps += 1
        return steps, seconds

    real = jacobi.verify
    jacobi.verify = timed("verify", real)
    try:
        for seed in range(3):                            # warm-up
            run(1000 + seed)
        spent.update(forward=0.0, verify=0.0)
        steps, seconds = map(sum, zip(*[run(seed) for seed in range(images)]))
    finally:
        jacobi.verify = real
    return seconds / steps * 1e3, spent["forward"] / steps * 1e3, spent["verify"] / steps * 1e3, steps / images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--chains", type=int, nargs="*", default=[], help="parallel Jacobi chains per image to simulate")
    p.add_argument("--chain-images", type=int, default=32)
    p.add_argument("--cost", action="store_true", help="also time a plain step and a Jacobi pass (run alone)")
    p.add_argument("--cost-images", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(2)
    gen = imagelm.load(a.ckpt).eval()
    cond = torch.arange(a.n) % gen.config.num_classes
    options = SamplingOptions(cfg_scale=a.cfg)
    print(f"# {a.ckpt}: CPU {cpu_description()}, {a.n} images, CFG {a.cfg}, window {a.window}")
    if a.cost:
        print(f"cost at 1 image, fp32, mean of {a.cost_images} images (timed, first: before any large batch):")
        for decode in ("plain", "jacobi"):
            ms, forward, verify, steps = step_cost(gen, options, decode, a.window, a.cost_images)
            print(f"  {decode:<6} {ms:.2f} ms a step (forward {forward:.2f}, acceptance {verify:.2f}, rest "
                  f"{ms - forward - verify:.2f}), {steps:.1f} steps an image: {ms * steps:.0f} ms an image", flush=True)
    engine = Engine(gen, rows=2 * a.n, dtype="float32")
    request = engine.submit(cond, options, seed=0)
    engine.run()
    probs = sampling_distributions(gen, request.tokens, cond, a.cfg)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    print(f"p on plain samples: mean entropy {entropy.mean():.3f} nats, mean top-1 probability "
          f"{probs.max(-1).values.mean():.3f}")
    per_pass, counts, overlap, guesses = jacobi_run(gen, cond, options, a.window)
    print(f"jacobi, temperature 1: {per_pass:.2f} tokens per pass")
    print("  overlap sum min(p, q) per window slot: " + " ".join(f"{v:.2f}" for v in overlap.tolist()))
    print("  drafts accepted per pass: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    print("  residual draw among the top-m of its proposal besides the draft, share of image-passes: " +
          ", ".join(f"m={m}: {guesses[m] / max(guesses['passes'], 1):.3f}" for m in GUESSES))
    greedy, _, _, _ = jacobi_run(gen, cond, SamplingOptions(cfg_scale=a.cfg, top_k=1), a.window)
    print(f"jacobi, greedy (top-k 1): {greedy:.2f} tokens per pass")
    for m in a.chains:
        per_pass = parallel_chains(gen, cond[:a.chain_images], options, a.window, m)
        print(f"{m} parallel chains per image (simulated, {min(a.n, a.chain_images)} images, {m}x the verify rows): "
              f"{per_pass:.2f} tokens per pass", flush=True)


if __name__ == "__main__":
    main()
