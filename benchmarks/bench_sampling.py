"""Sampling speed: the plain sampler vs the engine (eager and compiled) vs the GEMM floor, per dtype
and batch size.

For each preset, dtype and batch (images, each with CFG, so twice the rows), in the same run:
- plain:    `sampling.autoregressive.generate` on the model in that dtype (the reference sampler);
- eager:    `sampling.engine.Engine(compile="off")`, all requests admitted at once;
- compiled: `Engine(compile="on")` (with --compile): its decode step captured by torch.compile
            (CUDA graphs on CUDA); compile time is reported apart and not counted;
- floor:    the matrix multiplies of one decode step alone (every linear of the trunk and the output
            heads, in that dtype, on that many rows, with the kernels the samplers use: on CPU
            oneDNN's packed linears), times the number of tokens: no implementation of the step
            with those kernels can beat it;
- mkl:      the same floor with F.linear (MKL) on unpacked weights, the previous kernels, for reference.
Reported: ms per decode step (per token of each image), the ratios to the floor, images/s, whether
the engine's tokens equal the plain sampler's (fraction of images; float32 must give 1.00), the KV
cache's size and the process's peak RSS. Weights are random (speed does not depend on their
values); a warm-up of 16 steps of the same batch runs before each timing and is not counted.

    python benchmarks/bench_sampling.py                                  # tiny and GPT-B, 1/4/16/64 images
    python benchmarks/bench_sampling.py --presets GPT-B --batches 1 16 --dtypes float32 bfloat16 --compile
    python benchmarks/bench_sampling.py --device cuda --compile
"""
from __future__ import annotations

import argparse
import platform
import resource
import time

import torch
import torch.nn as nn

from imagelm.models import build_generator, gpt_config
from imagelm.runtime import choose_sampling_dtype
from imagelm.sampling.autoregressive import SamplingOptions, generate
from imagelm.sampling.engine import Engine
from imagelm.sampling.precision import PackedLinear, prepare_model


def cpu_capability() -> str:
    """The CPU's model name and its vector extensions that matter for the dtype choice."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f" {f}" in info]
    return f"{name}; {' '.join(flags) or 'no AVX2'}; {torch.get_num_threads()} threads; torch {torch.__version__}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def linears_of_a_step(model: nn.Module) -> list[nn.Module]:
    """Every matrix-multiply module one decode step runs, in order: the trunk's linears, the heads."""
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear
    return [m for part in (model.trunk, model.output) for m in part.modules()
            if isinstance(m, (nn.Linear, Int8Linear, PackedLinear))]


@torch.no_grad()
def gemm_floor_ms(model: nn.Module, rows: int, device: torch.device, dtype: torch.dtype, reps: int) -> float:
    """Milliseconds of one step's matrix multiplies alone, on `rows` rows (median of `reps`)."""
    linears = linears_of_a_step(model)
    inputs = {m.in_features: torch.randn(rows, m.in_features, device=device, dtype=dtype) for m in linears}
    times = []
    for rep in range(reps + 2):
        sync(device)
        start = time.perf_counter()
        for m in linears:
            m(inputs[m.in_features])
        sync(device)
        if rep >= 2:                      # two warm-ups
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def warm_up(engine: Engine, cond: torch.Tensor, options: SamplingOptions, steps: int = 16) -> None:
    """A few steps of the same batch (first-call allocations and kernel set-up), then cancel it."""
    request = engine.submit(cond, options, seed=1)
    for _ in range(steps):
        engine.step()
    request.cancel()
    engine.step()


def timed(fn, device: torch.device) -> float:
    """Seconds of one fn() call."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def random_model(preset: str, device: torch.device, grid: int | None) -> nn.Module:
    overrides = {"grid_size": grid} if grid else {}
    with torch.device(device):
        model = build_generator(gpt_config(preset, **overrides)).eval()
    for head in model.output.heads:        # zero-initialised heads would make every draw uniform
        nn.init.normal_(head.weight, std=0.02)
    return model


def engine_run(model, dtype, cond, options, compile, device):
    """(seconds of one whole batch through a warmed-up engine, its tokens, compile/warm-up seconds, cache MB)."""
    rows = len(cond) * (2 if options.guided else 1)
    start = time.perf_counter()
    engine = Engine(model, rows=rows, dtype=dtype, compile=compile)
    warm_up(engine, cond, options)
    warm = time.perf_counter() - start
    out = {}
    seconds = timed(lambda: out.setdefault("tokens", engine.generate(cond, options, seed=0)), device)
    return seconds, out["tokens"], warm, engine.cache.nbytes / 2 ** 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "GPT-B"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16, 64], help="images (CFG doubles the rows)")
    p.add_argument("--dtypes", nargs="+", default=None,
                   help="float32 / bfloat16 / int8 (default: float32 plus what auto picks here)")
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--grid", type=int, default=None, help="override the token grid (default: the preset's)")
    p.add_argument("--compile", action="store_true", help="also time the compiled engine")
    p.add_argument("--skip-plain-above", type=int, default=1_000_000,
                   help="skip the (slow) plain sampler for batches larger than this")
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=20, help="repetitions of the GEMM floor")
    a = p.parse_args()
    device = torch.device(a.device)
    auto, why = choose_sampling_dtype(device, "auto")
    dtypes = a.dtypes or (["float32"] + ([auto] if auto != "float32" else []))
    print(f"# device: {device} — {cpu_capability() if device.type == 'cpu' else torch.cuda.get_device_name(device)}")
    print(f"# auto dtype here: {auto} ({why}); CFG {a.cfg}, top-k {a.top_k}; times are ms per decode step")
    header = (f"{'preset':<7} {'dtype':<9} {'imgs':>4} {'plain':>8} {'eager':>8} {'compiled':>8} {'floor':>8} "
              f"{'mkl':>8} {'eager/fl':>8} {'comp/fl':>8} {'eag/mkl':>8} {'eag/plain':>9} {'comp/eag':>8} "
              f"{'img/s':>7} {'same e':>6} {'same c':>6} {'compile s':>9} {'cache MB':>8}")
    print(header)
    options = SamplingOptions(cfg_scale=a.cfg, top_k=a.top_k)
    nan = float("nan")
    for preset in a.presets:
        base = random_model(preset, device, a.grid)
        L = base.config.seq_len
        for dtype in dtypes:
            model = prepare_model(base, dtype)        # a converted copy (base stays float32)
            unpacked = prepare_model(base, dtype, pack=False)
            act = torch.bfloat16 if dtype == "bfloat16" else torch.float32
            for batch in a.batches:
                cond = torch.arange(batch, device=device) % base.config.num_classes
                rows = 2 * batch if options.guided else batch
                floor = gemm_floor_ms(model, rows, device, act, a.reps)
                mkl = gemm_floor_ms(unpacked, rows, device, act, a.reps)
                t_eager, tokens, _, cache_mb = engine_run(model, dtype, cond, options, "off", device)
                t_comp, compile_s = nan, nan
                if a.compile:
                    t_comp, compiled_tokens, compile_s, _ = engine_run(model, dtype, cond, options, "on", device)
                plain, same, same_c = nan, nan, nan
                if batch <= a.skip_plain_above:    # after the engine's warm-up: the same kernels, warm
                    gen = torch.Generator(device)
                    out = {}
                    plain = timed(lambda: out.setdefault("t", generate(model, cond, options, gen.manual_seed(0))), device)
                    same = (out["t"] == tokens).flatten(1).all(1).float().mean().item()
                    if a.compile:
                        same_c = (out["t"] == compiled_tokens).flatten(1).all(1).float().mean().item()
                ms = {k: v / L * 1e3 for k, v in dict(plain=plain, eager=t_eager, comp=t_comp).items()}
                best = min(t_eager, t_comp) if a.compile else t_eager
                print(f"{preset:<7} {dtype:<9} {batch:>4} {ms['plain']:>8.2f} {ms['eager']:>8.2f} {ms['comp']:>8.2f} "
                      f"{floor:>8.2f} {mkl:>8.2f} {ms['eager'] / floor:>7.2f}x {ms['comp'] / floor:>7.2f}x "
                      f"{ms['eager'] / mkl:>7.2f}x "
                      f"{ms['plain'] / ms['eager']:>8.2f}x {ms['eager'] / ms['comp']:>7.2f}x {batch / best:>7.2f} "
                      f"{same:>6.2f} {same_c:>6.2f} {compile_s:>9.1f} {cache_mb:>8.1f}", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"# peak RSS of this process: {peak:.0f} MB"
          + (f"; CUDA peak {torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MB" if device.type == "cuda" else ""))
    print("# 'same e' / 'same c': fraction of images whose tokens equal the plain sampler's (eager / compiled engine)")


if __name__ == "__main__":
    main()
