"""Load test of `imagelm serve`: N concurrent clients on loopback against the same requests one at a time.

    python benchmarks/load_server.py                       # builds an untrained `tiny` checkpoint, 1..16 clients
    python benchmarks/load_server.py --ckpt runs/gpt --concurrency 1 4 16 --requests-per-client 4
    python benchmarks/load_server.py --malformed 10000     # also: 10,000 malformed requests, then checks the server
    python benchmarks/load_server.py --concurrency 8 --malformed 10000   # the malformed part alone, quickly

Starts the server as a subprocess (`imagelm serve --api-key K`, 127.0.0.1, a free port; its log goes
to OUT/server.log), warms it up, then for each
concurrency level c sends c clients x --requests-per-client requests (each {"class", "n", "cfg", "seed"})
and reports throughput, p50/p95 latency and errors. Concurrency 1 is the one-at-a-time baseline: the
same request list as the largest level, served one after the other. Everything is bounded: a request
times out after --request-timeout s and a level stops sending after --level-time-limit s.
Writes OUT/load_server.json and OUT/load_server.png (latency vs concurrency, drawn with PIL).

The malformed requests go to both APIs (/v1/images and OpenAI's /v1/images/generations) with random
fields, types, sizes and bodies, and about one in five with a missing, wrong or malformed key. The
server passes when none gets a 5xx or an answer without an error message, /healthz is ok afterwards,
and the same seed then gives a byte-identical PNG on both APIs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["class", "prompt", "n", "cfg", "cfg_schedule", "cfg_interval", "top_k", "top_p", "temperature", "seed"]
OPENAI_FIELDS = ["prompt", "model", "n", "size", "response_format", "quality", "style", "user", "output_format",
                 "background", "stream", "partial_images", "cfg", "top_k", "top_p", "seed", "dtype"]
EXPECTED = (200, 400, 401, 404, 413, 415, 422)       # what a malformed request may get; never a 5xx
KEY = "load-test-key"


# ---------------------------------------------------------------- malformed requests
JUNK = [None, True, False, -1, 0, 1, 3, 2**63, 2**80, -2**70, 1e308, -0.5, 0.5, 1.5, "", "x", "3", "circle",
        "NaN", [], [1], {}, {"a": 1}, "é" * 50, [[[]]], 10**6]


def malformed_bodies(rng: np.random.Generator, count: int) -> list[tuple[bytes, str]]:
    """`count` random bad (or, by chance, valid) request bodies -> [(bytes, content-type)]: wrong
    types, out-of-range values, unknown fields, oversized strings and bodies, broken or non-object
    JSON, deep nesting, random bytes, wrong content types."""
    out = []
    for _ in range(count):
        kind = rng.integers(9)
        body = {"class": int(rng.integers(0, 8)), "n": 1}
        if kind <= 2:      # a few fields set to junk
            for field in rng.choice(FIELDS, size=int(rng.integers(1, 4)), replace=False):
                body[str(field)] = JUNK[int(rng.integers(len(JUNK)))]
            out.append((json.dumps(body).encode(), "application/json"))
        elif kind == 3:    # unknown fields, long names
            name = "".join(chr(int(c)) for c in rng.integers(97, 123, size=int(rng.integers(1, 300))))
            body[name] = JUNK[int(rng.integers(len(JUNK)))]
            out.append((json.dumps(body).encode(), "application/json"))
        elif kind == 4:    # sizes: long strings, big n, bodies past the server's limit
            size = int(rng.choice([100, 2_000, 60_000, 70_000, 500_000]))
            field = str(rng.choice(["class", "prompt", "cfg_schedule", "zzz"]))
            body[field] = "a" * size
            if rng.random() < 0.3:
                body["n"] = int(rng.choice([17, 64, 10**9]))
            out.append((json.dumps(body).encode(), "application/json"))
        elif kind == 5:    # broken JSON: truncated, random bytes, NaN/Infinity literals
            text = json.dumps(body)
            choices = [text[: int(rng.integers(0, len(text)))].encode(), bytes(rng.integers(0, 256, size=64, dtype=np.uint8)),
                       b'{"class": 0, "cfg": Infinity}', b'{"class": 0, "n": NaN}', b"", b"{}{}", b'{"class": 0,}']
            out.append((choices[int(rng.integers(len(choices)))], "application/json"))
        elif kind == 6:    # JSON that is not an object, or deeply nested
            depth = int(rng.choice([1, 100, 5_000, 20_000]))
            choices = [b"[]", b"null", b"42", b'"class"', b"[" * depth + b"]" * depth,
                       json.dumps({"class": 0, "n": 1, "seed": {"a": [1] * 100}}).encode()]
            out.append((choices[int(rng.integers(len(choices)))], "application/json"))
        elif kind == 7:    # a valid body under a wrong content type
            out.append((json.dumps(body).encode(), str(rng.choice(["text/plain", "application/x-www-form-urlencoded",
                                                                      "multipart/form-data", "image/png"]))))
        else:              # duplicated keys and odd but valid-looking values
            out.append((b'{"class": 0, "class": "zebra", "n": 1}', "application/json"))
    return out


def malformed_openai_bodies(rng: np.random.Generator, count: int) -> list[tuple[bytes, str]]:
    """`count` random bad (or, by chance, valid) bodies for /v1/images/generations: junk in the
    fields the openai client sends and in our extra_body ones, random sizes ("WxH" and not), other
    models, unknown fields, long prompts; and the same broken bodies as the native route."""
    out = []
    for _ in range(count):
        kind = rng.integers(6)
        body = {"prompt": str(rng.choice(["circle", "0", "3", "square"])), "n": 1}
        if kind <= 1:
            for field in rng.choice(OPENAI_FIELDS, size=int(rng.integers(1, 4)), replace=False):
                body[str(field)] = JUNK[int(rng.integers(len(JUNK)))]
        elif kind == 2:
            body["size"] = str(rng.choice(["16x16", "32x32", "256x256", "1024x1024", "auto", "0x0", "x", "16X16",
                                           "16x16x16", "-16x16", "9" * 30 + "x1", " 32x32"]))
        elif kind == 3:
            body["model"] = str(rng.choice(["dall-e-3", "gpt-image-1", "", "../../etc/passwd", "x" * 300]))
        elif kind == 4:
            body[str(rng.choice(["colour", "image", "mask", "svg", "frame_count"]))] = JUNK[int(rng.integers(len(JUNK)))]
            body["prompt"] = "p" * int(rng.choice([0, 999, 1000, 1001, 40_000]))
        else:
            out.append(malformed_bodies(rng, 1)[0])
            continue
        out.append((json.dumps(body).encode(), "application/json"))
    return out


def malformed_requests(rng: np.random.Generator, count: int, key: str = KEY) -> list[tuple[str, bytes, dict]]:
    """`count` requests -> [(path, body, headers)]: half to each API, ~80% with the right key, the
    rest with a missing, wrong, empty or malformed Authorization header."""
    paths = rng.integers(2, size=count)
    native = iter(malformed_bodies(rng, int((paths == 0).sum())))
    openai = iter(malformed_openai_bodies(rng, int((paths == 1).sum())))
    bad_auth = [None, "Bearer wrong-key", "Bearer", "Basic bG9hZDp0ZXN0", key, f"Bearer {key}x", "Bearer " + "k" * 5000,
                f"bearer  {key}"[:-1]]
    out = []
    for p in paths:
        raw, content_type = next(native) if p == 0 else next(openai)
        headers = {"content-type": content_type}
        auth = f"Bearer {key}" if rng.random() < 0.8 else bad_auth[int(rng.integers(len(bad_auth)))]
        if auth is not None:
            headers["authorization"] = auth
        out.append(("/v1/images" if p == 0 else "/v1/images/generations", raw, headers))
    return out


# ---------------------------------------------------------------- the server under test
def tiny_checkpoint(workdir: Path) -> Path:
    """An untrained `tiny` generator (64 tokens a 32x32 image) and a 2-step vq-tiny tokenizer: speed does
    not depend on the weights. Built once in `workdir`."""
    gen = workdir / "gpt"
    if (gen / "checkpoints").exists():
        return gen
    from imagelm.data.codes import extract_codes
    from imagelm.tokenizers import load_tokenizer
    from imagelm.train.generator import GeneratorTrainArgs, train_generator
    from imagelm.train.tokenizer import TokenizerTrainArgs, train_tokenizer
    train_tokenizer(TokenizerTrainArgs(out=str(workdir / "vq"), data="shapes", preset="vq-tiny", image_size=32,
                                       data_length=64, steps=2, batch_size=8, precision="fp32", device="cpu",
                                       progress=False, no_perceptual=True))
    extract_codes(load_tokenizer(workdir / "vq"), "shapes", workdir / "codes", length=32, batch_size=32, progress=False)
    train_generator(GeneratorTrainArgs(codes=str(workdir / "codes"), out=str(gen), preset="tiny", steps=1, batch_size=8,
                                       precision="fp32", device="cpu", progress=False))
    return gen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt: Path, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "imagelm.cli", "serve", "--ckpt", str(ckpt), "--host", "127.0.0.1", "--port",
           str(port), "--dtype", args.dtype, "--rows", str(args.rows), "--max-queue", str(args.max_queue), "--device", "cpu",
           "--api-key", KEY]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # a file, not a pipe: one access line a request would fill a pipe nobody reads until the end
    log = open(Path(args.out) / "server.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


async def wait_healthy(client, proc, log: Path, timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            r = await client.get("/healthz")
            if r.status_code == 200:
                return (await client.get("/v1/models")).json()["data"][0]
        except Exception:  # noqa: BLE001 - not up yet
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the server did not come up")


# ---------------------------------------------------------------- load
def request_list(count: int, num_classes: int, n: int, cfg: float) -> list[dict]:
    return [{"class": i % num_classes, "n": n, "cfg": cfg, "top_k": 100, "seed": i} for i in range(count)]


async def run_level(client, requests: list[dict], concurrency: int, time_limit: float, timeout: float) -> dict:
    """Send `requests` from `concurrency` clients (each takes the next unsent request) -> stats."""
    todo = list(requests)
    latencies, errors, statuses = [], 0, {}
    start = time.perf_counter()

    async def one_client():
        nonlocal errors
        while todo and time.perf_counter() - start < time_limit:
            body = todo.pop(0)
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/images", json=body, timeout=timeout)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200 and len(r.json()["images"]) == body["n"]:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
            except Exception as e:  # noqa: BLE001 - a timeout or a dropped connection counts as an error
                statuses[type(e).__name__] = statuses.get(type(e).__name__, 0) + 1
                errors += 1
    await asyncio.gather(*[one_client() for _ in range(concurrency)])
    wall = time.perf_counter() - start
    images = len(latencies) * (requests[0]["n"] if requests else 0)
    return {"concurrency": concurrency, "requests": len(latencies) + errors, "ok": len(latencies), "errors": errors,
            "statuses": {str(k): v for k, v in statuses.items()}, "wall_s": round(wall, 3),
            "req_per_s": round(len(latencies) / wall, 3), "images_per_s": round(images / wall, 3),
            "p50_s": round(float(np.percentile(latencies, 50)), 4) if latencies else None,
            "p95_s": round(float(np.percentile(latencies, 95)), 4) if latencies else None}


def acceptable(status: int, body: bytes) -> bool:
    """A malformed request's answer is fine when it is a success or an expected refusal with a message."""
    if status == 200:
        return True
    if status not in EXPECTED:
        return False
    try:
        error = json.loads(body).get("error")
    except ValueError:
        return False
    return bool(error if isinstance(error, str) else (error or {}).get("message"))


async def probe_images(client) -> tuple[str, str]:
    """The same seeded request on both APIs -> (native base64 PNG, OpenAI base64 PNG)."""
    auth = {"authorization": f"Bearer {KEY}"}
    native = (await client.post("/v1/images", json={"class": 0, "n": 1, "cfg": 2, "seed": 1234}, headers=auth)).json()
    openai = (await client.post("/v1/images/generations", json={"prompt": "0", "cfg": 2, "seed": 1234},
                                headers=auth)).json()
    return native["images"][0]["png_base64"], openai["data"][0]["b64_json"]


async def run_malformed(client, count: int, concurrency: int, seed: int) -> dict:
    """Send `count` malformed requests from `concurrency` clients; then check the server still answers
    correctly: healthz ok, and the same seed gives byte-identical PNGs to those before the barrage."""
    before = await probe_images(client)
    requests = malformed_requests(np.random.default_rng(seed), count)
    statuses, auth_refused, bad = {}, 0, []

    async def worker():
        nonlocal auth_refused
        while requests:
            path, raw, headers = requests.pop()
            try:
                r = await client.post(path, content=raw, headers=headers, timeout=60)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                auth_refused += r.status_code == 401
                if not acceptable(r.status_code, r.content):
                    bad.append((r.status_code, path, raw[:120], r.text[:200]))
            except Exception as e:  # noqa: BLE001
                statuses[type(e).__name__] = statuses.get(type(e).__name__, 0) + 1
                bad.append((type(e).__name__, path, raw[:120], str(e)[:200]))
    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    seconds = time.perf_counter() - t0
    health = (await client.get("/healthz")).json()
    after = await probe_images(client)
    return {"count": count, "seconds": round(seconds, 2),
            "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "server_errors": sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500),
            "unexpected": [list(map(str, b)) for b in bad[:10]], "unexpected_count": len(bad),
            "healthz_after": health, "same_image_after": before[0] == after[0] and before[1] == after[1],
            "native_equals_openai": before[0] == before[1]}


def plot(levels: list[dict], path: Path) -> None:
    """p50 and p95 latency (left axis) vs concurrency, with throughput written under each point."""
    from PIL import Image, ImageDraw
    W, H, left, bottom, top, right = 640, 400, 70, 60, 40, 30
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [lv["concurrency"] for lv in levels]
    ymax = max([lv["p95_s"] or 0 for lv in levels] + [1e-3]) * 1.15
    lx = lambda c: left + (np.log2(c) / max(np.log2(max(xs)), 1)) * (W - left - right)   # noqa: E731
    ly = lambda v: H - bottom - v / ymax * (H - bottom - top)                          # noqa: E731
    d.line([(left, top), (left, H - bottom), (W - right, H - bottom)], fill="black")
    for i in range(5):
        v = ymax * i / 4
        d.line([(left - 4, ly(v)), (left, ly(v))], fill="black")
        d.text((8, ly(v) - 6), f"{v:.2f} s", fill="black")
    for lv in levels:
        x = lx(lv["concurrency"])
        d.text((x - 6, H - bottom + 6), str(lv["concurrency"]), fill="black")
        d.text((x - 20, H - bottom + 22), f"{lv['images_per_s']:.1f}/s", fill="gray")
    for key, colour in (("p50_s", "#1f77b4"), ("p95_s", "#d62728")):
        pts = [(lx(lv["concurrency"]), ly(lv[key])) for lv in levels if lv[key] is not None]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    d.text((left, 10), "imagelm serve: latency vs concurrent clients (p50 blue, p95 red; images/s below)", fill="black")
    d.text((W // 2 - 60, H - 18), "concurrent clients (log2)", fill="black")
    img.save(path)


async def main_async(args) -> dict:
    import httpx
    ckpt = Path(args.ckpt) if args.ckpt else tiny_checkpoint(Path(args.workdir))
    port = free_port()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    proc = start_server(ckpt, port, args)
    result = {"ckpt": str(ckpt), "args": vars(args)}
    try:
        limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                     headers={"authorization": f"Bearer {KEY}"}) as client:
            info = await wait_healthy(client, proc, Path(args.out) / "server.log")
            result["model"] = {k: info[k] for k in ("id", "tokens", "image_size", "engine")}
            num_classes = len(info["classes"] or [0])
            peak = max(args.concurrency)
            requests = request_list(peak * args.requests_per_client, num_classes, args.n, args.cfg)
            await run_level(client, requests[: min(peak, 8)], min(peak, 8), 60, args.request_timeout)   # warm-up
            levels = []
            for c in sorted(set(args.concurrency)):
                level = await run_level(client, requests, c, args.level_time_limit, args.request_timeout)
                levels.append(level)
                print(f"{c:>3} clients: {level['ok']:>4} ok {level['errors']:>3} errors  {level['req_per_s']:7.2f} req/s "
                      f"{level['images_per_s']:7.2f} images/s  p50 {level['p50_s']} s  p95 {level['p95_s']} s", flush=True)
            result["levels"] = levels
            one = next((lv for lv in levels if lv["concurrency"] == 1), None)
            if one and one["req_per_s"]:
                result["speedup_vs_one_at_a_time"] = round(levels[-1]["req_per_s"] / one["req_per_s"], 2)
                print(f"{levels[-1]['concurrency']} clients vs one at a time: {result['speedup_vs_one_at_a_time']}x "
                      f"throughput", flush=True)
            if args.malformed:
                result["malformed"] = await run_malformed(client, args.malformed, peak, args.seed)
                m = result["malformed"]
                print(f"malformed: {m['count']} requests in {m['seconds']} s, statuses {m['statuses']}, "
                      f"5xx {m['server_errors']}, unexpected {m['unexpected_count']}, healthz after "
                      f"{m['healthz_after']['status']}, same images after: {m['same_image_after']}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
            result["server_exit_code"] = proc.returncode
            result["server_log_tail"] = (Path(args.out) / "server.log").read_text()[-1000:]
        except subprocess.TimeoutExpired:
            proc.kill()
            result["server_exit_code"] = "killed after 30 s"
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None, help="generator checkpoint (default: build an untrained tiny one)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "imagelm-load"))
    p.add_argument("--out", default="load_server_out")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--requests-per-client", type=int, default=4, help="requests per client at the highest level")
    p.add_argument("--n", type=int, default=1, help="images per request")
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8"])
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--level-time-limit", type=float, default=300.0, help="stop sending at a level after this")
    p.add_argument("--malformed", type=int, default=0, help="also send this many malformed requests")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_server.json").write_text(json.dumps(result, indent=2))
    if result.get("levels"):
        plot(result["levels"], out / "load_server.png")
    print(f"results: {out / 'load_server.json'}, plot: {out / 'load_server.png'}; server exit {result['server_exit_code']}")


if __name__ == "__main__":
    main()
