"""The playground in a real browser: Debian's chromium, headless, driven by Playwright for Python.

The test starts uvicorn on 127.0.0.1 (a free port) over the tiny generator, opens the page, picks a
class and settings, presses Generate, waits until the images render, checks the settings shown beside
them, and saves a screenshot (to IMAGELM_SCREENSHOT if set, else the test's tmp dir). Skipped, with
the reason, when chromium or playwright is missing (`make install` installs both when it can).
"""
import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install 'imagelm[serve]')")

from serve_helpers import free_port  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@contextlib.contextmanager
def _open_page(url: str, viewport: dict | None = None):
    """Headless chromium on `url` -> its page (30 s default timeout); the browser closes after."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport=viewport) if viewport else browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(url)
            yield page
        finally:
            browser.close()


def _run(app):
    """uvicorn on 127.0.0.1 (a free port) in a thread -> (base URL, stop function)."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)   # not the main thread: no signal handlers
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)

    def stop():
        srv.should_exit = True
        thread.join(30)
    return f"http://127.0.0.1:{port}", stop


def _app(tiny_generator, **kwargs):
    import imagelm
    from imagelm.serve import create_app
    gen = imagelm.load(tiny_generator)
    return create_app(gen, imagelm.linked_tokenizer(gen.meta), dtype="float32", rows=16, max_n=8, **kwargs)


@pytest.fixture
def server(tiny_generator):
    base, stop = _run(_app(tiny_generator))
    yield base
    stop()


@pytest.fixture
def keyed_server(tiny_generator):
    base, stop = _run(_app(tiny_generator, api_keys=["page-key"]))
    yield base
    stop()


def test_playground_asks_for_the_key_once_and_keeps_it_for_the_tab(keyed_server):
    with _open_page(keyed_server + "/") as page:
        page.wait_for_selector("#auth:not([hidden])")            # /v1/models answered 401
        assert "missing API key" in page.text_content("#auth-why")
        page.fill("#api-key", "wrong")
        page.click("#use-key")
        page.wait_for_function("() => document.querySelector('#auth-why').textContent.includes('invalid API key')")
        page.fill("#api-key", "page-key")
        page.click("#use-key")
        page.wait_for_selector("#class option[value='3']", state="attached")
        assert page.is_hidden("#auth")
        page.fill("#n", "2")
        page.click("#generate")
        page.wait_for_function("() => document.querySelectorAll('.card.done img.result-image').length === 2")
        assert 'Authorization: Bearer $IMAGELM_API_KEY' in page.text_content(".card.done .settings")
        page.reload()                                              # the same tab: no second question
        page.wait_for_selector("#class option[value='3']", state="attached")
        assert page.is_hidden("#auth")
        assert page.evaluate("() => sessionStorage.getItem('imagelm-api-key')") == "page-key"


def test_playground_renders_images_in_chromium(server, tmp_path):
    shot = Path(os.environ.get("IMAGELM_SCREENSHOT", tmp_path / "playground.png"))
    with _open_page(server + "/", viewport={"width": 1100, "height": 620}) as page:
        page.wait_for_selector("#class option[value='3']", state="attached")   # classes came from /v1/models
        assert "tiny" in page.text_content("#model") or "class-conditional" in page.text_content("#model")
        page.select_option("#class", "3")
        page.fill("#cfg", "3")
        page.select_option("#cfg_schedule", "linear")
        page.fill("#top_k", "40")
        page.fill("#n", "6")
        page.fill("#seed", "7")
        page.click("#generate")
        page.wait_for_selector(".card.done")
        # every image decoded by the browser (naturalWidth > 0), not just inserted
        page.wait_for_function("() => { const im = [...document.querySelectorAll('.card.done img.result-image')];"
                               " return im.length === 6 && im.every(i => i.complete && i.naturalWidth === 16); }")
        settings = page.text_content(".card.done .settings")
        assert '"class":3' in settings.replace(" ", "") or "class: 3 (star)" in settings
        assert "seed: 7" in settings and "cfg_schedule: \"linear\"" in settings and "6 images in" in settings
        page.select_option("#class", "0")                 # a second request, shown above the first
        page.fill("#n", "3")
        page.click("#generate")
        page.wait_for_function("() => document.querySelectorAll('.card.done').length === 2")
        assert page.locator(".card.failed").count() == 0
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5_000
    print(f"screenshot: {shot}")
    if os.environ.get("IMAGELM_SCREENSHOT_COPY"):
        shutil.copy(shot, os.environ["IMAGELM_SCREENSHOT_COPY"])


def test_playground_paints_a_mask_and_shows_the_edited_images(server, tmp_path):
    import numpy as np
    from PIL import Image
    picture = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "in.png")
    with _open_page(server + "/", viewport={"width": 1100, "height": 720}) as page:
        page.wait_for_selector("#class option[value='3']", state="attached")
        page.select_option("#class", "3")
        page.fill("#n", "2")
        page.set_input_files("#edit-image", str(tmp_path / "in.png"))
        page.wait_for_selector("#edit:not([disabled])")
        box = page.locator("#edit-canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.4)
        page.mouse.down()                                # a stroke across the centre
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6, steps=8)
        page.mouse.up()
        painted = page.evaluate("() => { const d = edit.mask.getContext('2d').getImageData(0, 0, 16, 16).data;"
                                " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 127; return n; }")
        assert 0 < painted < 256                          # some pixels masked, not all
        page.fill("#candidates", "2")
        page.select_option("#score", "guided-joint")
        page.fill("#score-guidance", "3")
        page.fill("#hole-cfg", "3")
        page.click("#edit")
        page.wait_for_function("() => { const im = [...document.querySelectorAll('.card.edited img.result-image')];"
                               " return im.length === 2 && im.every(i => i.complete && i.naturalWidth === 16); }")
        assert page.locator(".card.failed").count() == 0
        settings = page.text_content(".card.edited .settings")
        assert "candidates: 2" in settings and "/v1/images/edits" in settings and "2 images in" in settings
        assert 'score: "guided-joint"' in settings and "score_guidance: 3" in settings and "hole_cfg: 3" in settings
        # The corner, far from the stroke, is the uploaded picture's own pixels.
        corner = page.evaluate("""() => new Promise((resolve) => {
            const img = document.querySelector('.card.edited img.result-image');
            const c = document.createElement('canvas'); c.width = 16; c.height = 16;
            const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
            resolve(Array.from(ctx.getImageData(0, 0, 2, 2).data)); })""")
        assert corner == [int(v) for px in picture[:2, :2].reshape(-1, 3) for v in (*px, 255)]
