"""`imagelm serve` driven by the official `openai` client, unchanged: a real server (the CLI in a
subprocess, uvicorn on 127.0.0.1, a free port) over the tiny test generator, with an API key.

Images come back as base64 PNGs of the asked count and size; a wrong field is the client's
BadRequestError naming it; a missing or wrong key is AuthenticationError (401); and the same seed via
extra_body gives the images `imagelm sample` gives."""
import base64
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the test extra (openai) is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")

from PIL import Image  # noqa: E402
from serve_helpers import free_port, wait_for_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-1234"


@pytest.fixture(scope="module")
def server(tiny_generator, tmp_path_factory):
    """`imagelm serve --api-key KEY` (float32, so its images match `imagelm sample --dtype float32`)."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMAGELM_API_KEY": ""}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "imagelm.cli", "serve", "--ckpt", str(tiny_generator),
                                 "--port", str(port), "--dtype", "float32", "--device", "cpu", "--max-n", "4",
                                 "--api-key", KEY, "--api-key", "second-key"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(base, proc, log.read_text)
        yield base, log
    finally:
        proc.terminate()
        proc.wait(30)


def client(base, key=KEY):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_models_list_and_generate_give_pngs_of_the_asked_count_and_size(server):
    base, log = server
    c = client(base)
    (model,) = c.models.list().data
    assert model.id.endswith("/step-0000004") and model.owned_by == "imagelm"
    r = c.images.generate(model=model.id, prompt="circle", n=3, size="16x16", response_format="b64_json")
    assert len(r.data) == 3 and r.created > 0 and r.output_format == "png"
    images = [decode(d.b64_json) for d in r.data]
    assert [im.shape for im in images] == [(16, 16, 3)] * 3
    r = c.images.generate(prompt="3", extra_body={"seed": 5})      # no model, size or n: the defaults
    assert len(r.data) == 1 and decode(r.data[0].b64_json).shape == (16, 16, 3)
    assert r._request_id                                            # the id is on the response ...
    deadline = time.monotonic() + 10                                # ... and in the log, whose line the
    while r._request_id not in log.read_text():                     # server writes once the response is out
        assert time.monotonic() < deadline, f"request id {r._request_id} never reached the access log"
        time.sleep(0.05)


def test_same_seed_via_extra_body_gives_the_images_of_imagelm_sample(server, tiny_generator, tmp_path):
    from imagelm.cli import main
    assert main(["sample", "--ckpt", str(tiny_generator), "--classes", "2", "--n", "3", "--cfg", "2", "--top-k", "50",
                 "--seed", "11", "--dtype", "float32", "--device", "cpu", "--out", str(tmp_path / "g.png"),
                 "--each", str(tmp_path / "each")]) == 0
    cli = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((tmp_path / "each").glob("*.png"))]
    r = client(server[0]).images.generate(prompt="2", n=3, size="16x16", response_format="b64_json",
                                          extra_body={"cfg": 2, "top_k": 50, "seed": 11, "dtype": "float32"})
    api = [decode(d.b64_json) for d in r.data]
    assert len(api) == len(cli) == 3
    for a, b in zip(api, cli):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs,param,message", [
    ({"size": "1024x1024"}, "size", "this model draws 16x16 images, not 1024x1024"),
    ({"size": "big"}, "size", "must be 'WxH'"),
    ({"n": 5}, "n", "at most 4 images a request on this server"),
    ({"response_format": "url"}, "response_format", "use b64_json"),
    ({"model": "dall-e-3"}, "model", "not served here"),
    ({"prompt": "zebra"}, "prompt", "unknown class 'zebra'"),
    ({"extra_body": {"colour": "red"}}, "colour", "unknown field"),
    ({"extra_body": {"top_p": 0}}, "top_p", "greater than 0"),
    ({"extra_body": {"cfg_schedule": "zigzag"}}, "cfg_schedule", "'constant'"),
    ({"extra_body": {"dtype": "bfloat16"}}, "dtype", "engine runs float32"),
])
def test_a_wrong_field_is_a_bad_request_naming_it(server, kwargs, param, message):
    kwargs = {"prompt": "circle", **kwargs}
    error = openai.NotFoundError if param == "model" else openai.BadRequestError
    with pytest.raises(error) as e:
        client(server[0]).images.generate(**kwargs)
    assert e.value.param == param and message in e.value.message, (e.value.param, e.value.message)
    assert e.value.body["type"] == "invalid_request_error"


def test_a_missing_or_wrong_key_is_an_authentication_error(server):
    base, _ = server
    with pytest.raises(openai.AuthenticationError) as e:
        client(base, key="wrong").images.generate(prompt="circle")
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as e:                     # no Authorization header at all
        client(base).images.generate(prompt="circle", extra_headers={"Authorization": openai.omit})
    assert e.value.status_code == 401 and "missing API key" in e.value.message
    with pytest.raises(openai.AuthenticationError):
        client(base, key="wrong").models.list()
    assert len(client(base, key="second-key").models.list().data) == 1        # either key works
    health = httpx.get(f"{base}/healthz")
    assert health.status_code == 200 and "x-request-id" in health.headers     # open, and still has an id
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
