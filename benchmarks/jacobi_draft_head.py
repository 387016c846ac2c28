"""What relaxing issue 19's "training-free" would buy: a trained draft head, estimated offline.

Jacobi decoding's drafts are the model's own stale guesses; on the digits generator 70% of passes
accept none, because the slot after a freshly drawn token was drafted before that token existed
(jacobi_diagnostics.py). A draft head knows the token just drawn. This trains a small recurrent one
(Hydra-style, arXiv 2402.05109) on the frozen generator and measures how often its drafts would be
accepted, without building it into the engine:

- data: the generator's own samples (`--train` of them, CFG `--cfg`, temperature 1), teacher forced
  once: the trunk's states (conditional and null rows) that predict each token, and the guided
  sampling distribution p of each token;
- head: z = W [state_cond, state_null]; then per drafted token z += MLP(norm z, embedding of the
  token before it), draft distribution q = softmax(out(norm z)). Trained by KL(p || q) over
  `--depth` tokens after each position, teacher forced;
- measured on `--test` other samples: the acceptance of a depth-d draft, E sum min(p, q_d) (the
  chance speculative sampling accepts it when the drafts before it were accepted), and from those
  the tokens a verify pass would yield with k drafts, 1 + sum_d prod_{i<=d} alpha_i (treating the
  depths as independent), and the time of one head step (CPU, one image).

    python benchmarks/jacobi_draft_head.py --ckpt runs/digits/gpt [--train 16384 --steps 8000]

Not a decode mode of the package: a measurement for the issue's author (RESULTS.md, issue 19).
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn as nn

import imagelm
from imagelm.runtime import cpu_description
from imagelm.sampling.engine import Engine
from imagelm.sampling.logits import SamplingOptions, guide


def own_samples(gen, n: int, seed: int, cfg: float):
    """n plain samples, classes in turn -> (tokens [n, L], class ids [n])."""
    cond = torch.arange(n) % gen.config.num_classes
    tokens = Engine(gen, rows=2 * n, dtype="float32").generate(cond, SamplingOptions(cfg_scale=cfg), seed)
    return tokens[..., 0], cond


@torch.no_grad()
def states_and_targets(gen, tokens, cond, cfg: float, batch: int = 256):
    """Teacher forced: the trunk states that predict each token, conditional and null side by side
    [n, L, 2 dim], and each token's guided sampling distribution p [n, L, V]."""
    states, targets, seen = [], [], []
    # The model's own forward; its output head's input is the trunk state of each token's position.
    hook = gen.output.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    try:
        for s in range(0, len(tokens), batch):
            t, c = tokens[s:s + batch, :, None], cond[s:s + batch]
            logits = [gen(t, condition)[:, :, 0] for condition in (c, gen.null_cond(c))]   # [b, L, V] each
            states.append(torch.cat(seen, -1))                                             # [b, L, 2 dim]
            seen.clear()
            targets.append(guide(logits[0], logits[1], torch.tensor(cfg)).softmax(-1))
    finally:
        hook.remove()
    return torch.cat(states), torch.cat(targets)


class DraftHead(nn.Module):
    """A recurrent draft head: start(states [b, 2 dim]) -> z; step(z, token [b]) -> (z, logits [b, V])
    of the token after `token`."""

    def __init__(self, dim: int, vocab: int, hidden: int = 256):
        super().__init__()
        self.start = nn.Linear(2 * dim, hidden)
        self.embedding = nn.Embedding(vocab, hidden)
        self.mix = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, vocab)

    def step(self, z, token):
        z = z + self.mix(torch.cat([self.norm(z), self.embedding(token)], -1))
        return z, self.out(self.norm(z))


def train_head(head, states, targets, tokens, depth: int, steps: int, batch: int = 512, lr: float = 2e-3):
    """Train `head` in place on states [N, L, 2 dim], targets p [N, L, V], tokens [N, L]: random
    (sample, position) pairs, `depth` drafts each, teacher forced, KL(p || q) summed over the depths;
    AdamW with a cosine schedule, seeded."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    N, L = tokens.shape
    for it in range(steps):
        b = torch.randint(0, N, (batch,), generator=g)
        j = torch.randint(0, L - depth, (batch,), generator=g)
        z, loss = head.start(states[b, j]), 0.0
        for d in range(depth):               # the state predicting token j, then tokens j+1 .. j+depth
            z, logits = head.step(z, tokens[b, j + d])
            p = targets[b, j + d + 1]
            loss = loss + (p * (p.clamp_min(1e-30).log() - logits.log_softmax(-1))).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (it + 1) / steps))
        if it % 1000 == 0 or it == steps - 1:
            print(f"  step {it}: KL(p || q) {loss.item() / depth:.3f} nats a draft", flush=True)


@torch.no_grad()
def acceptance(head, states, targets, tokens, depth: int) -> torch.Tensor:
    """E sum min(p, q_d) per draft depth d over every start position -> [depth]."""
    L, total, count = tokens.shape[1], torch.zeros(depth), 0
    for j in range(L - depth):
        z = head.start(states[:, j])
        for d in range(depth):
            z, logits = head.step(z, tokens[:, j + d])
            total[d] += torch.minimum(targets[:, j + d + 1], logits.softmax(-1)).sum()
        count += len(tokens)
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--train", type=int, default=16384, help="own samples to train on (a multiple of 2048)")
    p.add_argument("--test", type=int, default=256)
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--depth", type=int, default=6)
    a = p.parse_args()
    torch.set_num_threads(2)
    gen = imagelm.load(a.ckpt).eval().requires_grad_(False)
    print(f"# {a.ckpt}: CPU {cpu_description()}; {a.train} training samples, {a.test} test samples, CFG {a.cfg}")
    start = time.time()
    parts = [own_samples(gen, 2048, 100 + s, a.cfg) for s in range(max(1, a.train // 2048))]
    tokens, cond = torch.cat([t for t, _ in parts]), torch.cat([c for _, c in parts])
    test_tokens, test_cond = own_samples(gen, a.test, 1, a.cfg)
    states, targets = states_and_targets(gen, tokens, cond, a.cfg)
    test_states, test_targets = states_and_targets(gen, test_tokens, test_cond, a.cfg)
    entropy = -(test_targets * test_targets.clamp_min(1e-30).log()).sum(-1).mean()
    print(f"data in {time.time() - start:.0f} s; entropy of p {entropy:.2f} nats a token", flush=True)
    head = DraftHead(gen.config.dim, gen.config.vocab_size)
    start = time.time()
    train_head(head, states, targets, tokens, a.depth, a.steps)
    print(f"trained in {time.time() - start:.0f} s", flush=True)
    alpha = acceptance(head, test_states, test_targets, test_tokens, a.depth)
    print("acceptance of a draft at depth 1.." + str(a.depth) + " (held-out samples): " +
          " ".join(f"{x:.3f}" for x in alpha.tolist()))
    for k in range(1, a.depth + 1):
        tokens_a_pass = 1 + sum(math.prod(alpha[:d].tolist()) for d in range(1, k + 1))
        print(f"  {k} head drafts a pass: ~{tokens_a_pass:.2f} tokens a verify pass")
    z, token = head.start(test_states[:1, 0]), test_tokens[:1, 0]
    with torch.no_grad():
        for _ in range(50):
            head.step(z, token)
        t = time.perf_counter()
        for _ in range(500):
            head.step(z, token)
    print(f"one head step, one image: {(time.perf_counter() - t) / 500 * 1e3:.3f} ms (before its draw)")


if __name__ == "__main__":
    main()
