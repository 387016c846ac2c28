"""imagelm serve in operation: API keys, CORS, request ids, Prometheus metrics, the per-request
deadline, and the warning for an open server on a public address (in-process, TestClient / httpx)."""
import asyncio
import json
import logging

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from serve_helpers import asgi_client, gate_steps, make_app, wait_until  # noqa: E402

KEYS = ["alpha-key", "beta-key", "gamma-key"]


@pytest.fixture(scope="module")
def keyed(tiny_generator):
    with TestClient(make_app(tiny_generator, rows=8, max_n=4, api_keys=KEYS)) as c:
        yield c


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


# ------------------------------------------------------------------ keys
def test_api_routes_need_a_key_and_the_page_and_health_do_not(keyed):
    for method, path, body in [("GET", "/v1/models", None), ("POST", "/v1/images", {"class": 0}),
                               ("POST", "/v1/images/generations", {"prompt": "circle"}), ("GET", "/metrics", None),
                               ("GET", "/v1/nothing", None)]:
        r = keyed.request(method, path, json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), (path, r.text)
        assert r.headers["x-request-id"]
        r = keyed.request(method, path, json=body, headers=bearer("not-a-key"))
        assert r.status_code == 401
        if path != "/v1/nothing":
            assert keyed.request(method, path, json=body, headers=bearer(KEYS[2])).status_code == 200, path
    # our route keeps its own error shape; the others speak OpenAI's
    r = keyed.post("/v1/images", json={"class": 0}, headers={"Authorization": "Basic abc"})
    assert r.json()["error"] == "authorization: malformed Authorization header: expected 'Bearer KEY'"
    r = keyed.get("/v1/models", headers=bearer("nope"))
    assert r.json()["error"] == {"message": "invalid API key", "type": "invalid_request_error", "param": None,
                                 "code": "invalid_api_key"}
    assert keyed.get("/v1/models").json()["error"]["message"].startswith("missing API key")
    for path in ("/", "/healthz", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path
    assert keyed.get("/v1/models", headers=bearer(KEYS[0])).json()["data"][0]["auth"] == "bearer"


def test_every_key_is_compared_whatever_the_outcome(keyed, monkeypatch):
    import imagelm.serve.middleware as middleware
    calls = []
    real = middleware.hmac.compare_digest
    monkeypatch.setattr(middleware.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for key in (KEYS[0], KEYS[2], "wrong"):
        calls.clear()
        keyed.get("/v1/models", headers=bearer(key))
        assert len(calls) == len(KEYS), key                  # no early exit on the first match


def test_keys_must_be_real_strings(tiny_generator):
    with pytest.raises(ValueError, match="API keys must be non-empty"):
        TestClient(make_app(tiny_generator, rows=8, api_keys=["ok", ""])).__enter__()


# ------------------------------------------------------------------ CORS and request ids
def test_cors_only_for_the_allowed_origins(tiny_generator):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    with TestClient(make_app(tiny_generator, rows=8, api_keys=KEYS, cors_origins=["https://app.example"])) as c:
        r = c.options("/v1/images", headers={"Origin": "https://app.example", **preflight})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = c.post("/v1/images", json={"class": 0}, headers={"Origin": "https://app.example"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()   # the page may read it
        r = c.options("/v1/images", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in r.headers
    with TestClient(make_app(tiny_generator, rows=8)) as c:          # none by default
        r = c.get("/v1/models", headers={"Origin": "https://app.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_a_request_id_in_every_answer_and_log_line(tiny_generator, caplog):
    caplog.set_level(logging.INFO, logger="imagelm.serve")
    with TestClient(make_app(tiny_generator, rows=8, max_n=4)) as c:
        answers = [c.post("/v1/images", json={"class": 0}), c.post("/v1/images", json={"class": "zebra"}),
                   c.post("/v1/images", content=b" " * 70_000, headers={"content-type": "application/json"}),
                   c.get("/v1/nothing"), c.get("/healthz"),
                   c.get("/healthz", headers={"X-Request-Id": "client-id.42"}),
                   c.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})]
    assert [a.status_code for a in answers] == [200, 422, 413, 404, 200, 200, 200]
    ids = [a.headers["x-request-id"] for a in answers]
    assert len(set(ids)) == len(ids) and ids[5] == "client-id.42" and " " not in ids[6]
    records = [r for r in caplog.records if r.name == "imagelm.serve"]
    for rid, answer in zip(ids, answers):
        lines = [r for r in records if r.request_id == rid]
        assert len(lines) == 1 and f" {answer.status_code} " in lines[0].getMessage(), rid


# ------------------------------------------------------------------ metrics
def scrape(c, headers=None) -> dict:
    """/metrics parsed by prometheus_client's own parser -> {(name, labels...): value}."""
    r = c.get("/metrics", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def delta(after, before, name, **labels):
    key = (name, *sorted(labels.items()))
    return after.get(key, 0) - before.get(key, 0)


def test_metrics_counters_move_by_exactly_the_requests_sent(tiny_generator):
    with TestClient(make_app(tiny_generator, rows=8, max_n=4, api_keys=KEYS)) as c:
        h = bearer(KEYS[1])
        before = scrape(c, h)
        sent = [c.post("/v1/images", json={"class": 0, "n": 2}, headers=h),
                c.post("/v1/images", json={"class": 1, "n": 3, "cfg": 1}, headers=h),
                c.post("/v1/images", json={"class": 1, "n": 9}, headers=h),
                c.post("/v1/images/generations", json={"prompt": "circle", "n": 1}, headers=h),
                c.post("/v1/images/generations", json={"prompt": "circle", "size": "9x9"}, headers=h),
                c.post("/v1/images", json={"class": 0}),
                c.get("/v1/nothing", headers=h), c.get("/v1/nothing/else", headers=h)]
        assert [r.status_code for r in sent] == [200, 200, 422, 200, 400, 401, 404, 404]
        after = scrape(c, h)
    req = "imagelm_requests_total"
    assert delta(after, before, req, route="/v1/images", status="200") == 2
    assert delta(after, before, req, route="/v1/images", status="422") == 1
    assert delta(after, before, req, route="/v1/images", status="401") == 1
    assert delta(after, before, req, route="/v1/images/generations", status="200") == 1
    assert delta(after, before, req, route="/v1/images/generations", status="400") == 1
    assert delta(after, before, req, route="other", status="404") == 2          # junk paths share one label
    assert delta(after, before, req, route="/metrics", status="200") == 1       # the first scrape
    assert sum(v for k, v in after.items() if k[0] == req) - sum(v for k, v in before.items() if k[0] == req) == 9
    assert delta(after, before, "imagelm_generated_images_total") == 6
    assert delta(after, before, "imagelm_generated_tokens_total") == 6 * 16      # 16 tokens an image
    assert delta(after, before, "imagelm_queue_wait_seconds_count") == 3
    assert delta(after, before, "imagelm_decode_seconds_count") == 3
    assert delta(after, before, "imagelm_request_seconds_count", route="/v1/images") == 4
    assert after[("imagelm_engine_rows",)] == 8 and after[("imagelm_engine_rows_busy",)] == 0
    assert after[("imagelm_queue_depth",)] == 0 and after[("imagelm_requests_pending",)] == 0
    assert after[("imagelm_images_per_second",)] > 0 and after[("imagelm_tokens_per_second",)] > 0


def test_queue_depth_and_busy_rows_while_requests_wait(tiny_generator):
    app = make_app(tiny_generator, rows=4, max_n=2)
    permits = gate_steps(app.state.engine)

    async def run():
        app.state.worker.start()
        async with asgi_client(app) as c:
            calls = [asyncio.ensure_future(c.post("/v1/images", json={"class": i, "n": 2, "cfg": 2})) for i in range(2)]
            await wait_until(lambda: app.state.worker.pending == 2)
            permits.release(1)                              # the first is admitted (4 rows), the second waits
            # after that step: its first token sampled (rows are taken inside the step, before it)
            await wait_until(lambda: app.state.engine.rows_in_use == 4 and app.state.worker.queued == 1)
            text = (await c.get("/metrics")).text
            values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
            assert values["imagelm_engine_rows_busy"] == 4 and values["imagelm_queue_depth"] == 1
            assert values["imagelm_requests_pending"] == 2
            permits.release(1000)
            assert [(await f).status_code for f in calls] == [200, 200]
        await app.state.worker.aclose(1)
    asyncio.run(run())


# ------------------------------------------------------------------ deadline
def test_a_request_past_its_deadline_gets_504_and_its_rows_are_reused(tiny_generator):
    # 4 rows: a guided request of 2 images takes them all, so the next can only run on freed rows.
    app = make_app(tiny_generator, rows=4, max_n=2, timeout_s=0.5)
    worker, engine = app.state.worker, app.state.engine
    permits = gate_steps(engine)

    async def run():
        worker.start()
        async with asgi_client(app) as c:
            late = asyncio.ensure_future(c.post("/v1/images", json={"class": 0, "n": 2, "cfg": 2}))
            await wait_until(lambda: worker.pending == 1)
            request = next(iter(worker._jobs.values())).request
            permits.release(2)                               # admitted, two tokens in, then stuck
            await wait_until(lambda: request.generated >= 2)
            assert engine.rows_in_use == 4
            r = await late                                    # the deadline passes
            assert r.status_code == 504 and r.json()["errors"][0]["field"] == "timeout"
            assert "--timeout of 0.5 s" in r.json()["error"] and r.headers["x-request-id"]
            permits.release(1000)
            await wait_until(lambda: engine.rows_in_use == 0 and worker.pending == 0)
            assert request.error == "cancelled" and request.generated < engine.length
            r = await c.post("/v1/images", json={"class": 1, "n": 2, "cfg": 2})   # on the freed rows
            assert r.status_code == 200 and len(r.json()["images"]) == 2
            metrics = (await c.get("/metrics")).text
            assert 'imagelm_requests_total{route="/v1/images",status="504"} 1.0' in metrics
        await worker.aclose(1)
    asyncio.run(run())


def test_the_deadline_on_the_openai_route_and_the_progress_stream(tiny_generator):
    app = make_app(tiny_generator, rows=8, max_n=2, timeout_s=0.3)
    permits = gate_steps(app.state.engine)               # nothing decodes: every request runs out of time

    async def run():
        app.state.worker.start()
        async with asgi_client(app) as c:
            r = await c.post("/v1/images/generations", json={"prompt": "circle"})
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
            assert r.json()["error"]["type"] == "server_error" and r.headers["x-should-retry"] == "false"
            async with c.stream("POST", "/v1/images", json={"class": 0},
                                headers={"accept": "application/x-ndjson"}) as s:
                events = [json.loads(line) async for line in s.aiter_lines() if line]
            assert events[-1]["event"] == "error" and events[-1]["status"] == 504
            assert all(e["event"] == "progress" for e in events[:-1])
            permits.release(1000)
            await wait_until(lambda: app.state.worker.pending == 0 and app.state.engine.rows_in_use == 0)
        await app.state.worker.aclose(1)
    asyncio.run(run())


# ------------------------------------------------------------------ imagelm serve's start-up
def test_serve_warns_when_open_on_a_public_address_and_reads_the_key_from_the_environment(
        tiny_generator, monkeypatch, capsys):
    import socket

    import uvicorn

    from imagelm.serve import serve
    from imagelm.serve.middleware import LOG
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append((app, kw)))   # no listening
    monkeypatch.setattr(LOG, "handlers", [])                # serve() adds its stderr handler: undone after
    monkeypatch.setattr(LOG, "propagate", True)
    monkeypatch.delenv("IMAGELM_API_KEY", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve(tiny_generator, host="0.0.0.0", port=port, device="cpu", dtype="float32", rows=4)
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0 with no API key" in err and len(err.strip().splitlines()) == 1
    assert started[-1][0].state.info["auth"] is None
    monkeypatch.setenv("IMAGELM_API_KEY", "from-env")
    serve(tiny_generator, host="0.0.0.0", port=port, device="cpu", dtype="float32", rows=4, timeout_s=5)
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "1 API key" in captured.out
    app = started[-1][0]
    assert app.state.info["auth"] == "bearer" and app.state.info["limits"]["timeout_s"] == 5
    with TestClient(app) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers=bearer("from-env")).status_code == 200
    serve(tiny_generator, host="127.0.0.1", port=port, device="cpu", dtype="float32", rows=4, api_keys=[])
    assert "warning" not in capsys.readouterr().err                    # loopback: no warning


@pytest.mark.parametrize("args,message", [
    (["--timeout", "0"], "--timeout must be > 0 seconds, got 0.0"),
    (["--api-key", " "], "--api-key must not be empty"),
])
def test_cli_serve_refuses_bad_limits_in_one_line(tiny_generator, capsys, args, message):
    from imagelm.cli import main
    assert main(["serve", "--ckpt", str(tiny_generator), *args]) == 2
    assert capsys.readouterr().err.strip() == f"imagelm serve: error: {message}"
