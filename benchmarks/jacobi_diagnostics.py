"""Why Jacobi decoding accepts as many tokens per pass as it does, on a trained AR generator.

Prints, for `--n` images sampled plainly (CFG `--cfg`): the entropy and top-1 probability of the
model's sampling distribution p (teacher forced on those samples); then, under Jacobi decoding of
`--n` images, the overlap sum min(p, q) of each window slot's proposal q with p (the chance a draft
would be accepted were its prefix right), the histogram of drafts accepted per pass, and the
tokens per pass at temperature 1 and greedy (top-k 1), which separates the acceptance rule from
the model's own sequential dependence.

    python benchmarks/jacobi_diagnostics.py --ckpt runs/demo/gpt
"""
from __future__ import annotations

import argparse
import collections

import torch

import imagelm
import imagelm.sampling.jacobi as jacobi
from imagelm.runtime import cpu_description
from imagelm.sampling.engine import Engine
from imagelm.sampling.logits import SamplingOptions, guide


def sampling_distributions(gen, tokens, cond, cfg):
    """Teacher-forced, guided p [N, L, V] of the first sub-token."""
    with torch.no_grad():
        x = guide(gen(tokens, cond), gen(tokens, gen.null_cond(cond)), torch.tensor(cfg))
    return x.softmax(-1)[:, :, 0]


def jacobi_run(gen, cond, options, window):
    """(tokens per pass, accepted drafts per pass histogram, mean overlap per slot) of one request."""
    real, counts, overlaps = jacobi.verify, collections.Counter(), []

    def recording(p, q, drafts, valid, *rest, **kw):
        verdict = real(p, q, drafts, valid, *rest, **kw)
        counts.update(c - 1 for c in verdict.count.tolist() if c > 0)   # drafts accepted; 0: an image done
        overlaps.append(torch.minimum(p, q).sum(-1)[..., 0])
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
    return per_pass, counts, torch.cat(overlaps).mean(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--window", type=int, default=16)
    a = p.parse_args()
    torch.set_num_threads(2)
    gen = imagelm.load(a.ckpt).eval()
    cond = torch.arange(a.n) % gen.config.num_classes
    options = SamplingOptions(cfg_scale=a.cfg)
    print(f"# {a.ckpt}: CPU {cpu_description()}, {a.n} images, CFG {a.cfg}, window {a.window}")
    engine = Engine(gen, rows=2 * a.n, dtype="float32")
    request = engine.submit(cond, options, seed=0)
    engine.run()
    probs = sampling_distributions(gen, request.tokens, cond, a.cfg)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    print(f"p on plain samples: mean entropy {entropy.mean():.3f} nats, mean top-1 probability "
          f"{probs.max(-1).values.mean():.3f}")
    per_pass, counts, overlap = jacobi_run(gen, cond, options, a.window)
    print(f"jacobi, temperature 1: {per_pass:.2f} tokens per pass")
    print("  overlap sum min(p, q) per window slot: " + " ".join(f"{v:.2f}" for v in overlap.tolist()))
    print("  drafts accepted per pass: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    greedy, _, _ = jacobi_run(gen, cond, SamplingOptions(cfg_scale=a.cfg, top_k=1), a.window)
    print(f"jacobi, greedy (top-k 1): {greedy:.2f} tokens per pass")


if __name__ == "__main__":
    main()
