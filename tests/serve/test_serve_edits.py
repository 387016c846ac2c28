"""POST /v1/images/edits: multipart image + mask over the server's engine. Kept pixels come back as
they were sent, the same seed gives `imagelm edit`'s images (float32), and every bad part or field
is a 4xx naming it."""
import io

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
pytest.importorskip("multipart", reason="the serve extra (python-multipart) is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from serve_helpers import decode_png, make_app  # noqa: E402


@pytest.fixture(scope="module")
def client(tiny_generator):
    with TestClient(make_app(tiny_generator, rows=8, max_n=4, max_pending=8)) as c:
        yield c


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


PICTURE = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
MASK = np.zeros((16, 16), dtype=np.uint8)
MASK[4:12, 4:12] = 255                                  # the centre 2x2 tokens of the 4x4 grid


def files(image=None, mask=None):
    return {"image": ("in.png", png(PICTURE) if image is None else image, "image/png"),
            "mask": ("mask.png", png(MASK) if mask is None else mask, "image/png")}


EDITS = [
    ({}, []),
    ({"score": "guided-joint", "score_guidance": "4", "hole_cfg": "3"},
     ["--score", "guided-joint", "--score-guidance", "4", "--hole-cfg", "3"]),
]


@pytest.mark.parametrize("extra,flags", EDITS, ids=["kept", "guided-joint-S4-hole-cfg3"])
def test_an_edit_keeps_the_unmasked_pixels_and_matches_imagelm_edit(client, tiny_generator, tmp_path, extra, flags):
    from imagelm.cli import main
    data = {"class": "1", "n": "2", "candidates": "2", "seed": "5", "cfg": "2", "top_k": "50", **extra}
    r = client.post("/v1/images/edits", files=files(), data=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["settings"]["candidates"] == 2 and body["settings"]["regenerated_tokens"] == 4
    assert body["settings"]["score"] == extra.get("score", "kept")
    assert body["settings"]["hole_cfg"] == (float(extra["hole_cfg"]) if "hole_cfg" in extra else None)
    images = [decode_png(im["png_base64"]) for im in body["images"]]
    assert len(images) == 2 and images[0].shape == (16, 16, 3)
    far = np.ones((16, 16), dtype=bool)
    far[2:14, 2:14] = False                              # beyond the feathered seam: the input exactly
    for img in images:
        assert (img[far] == PICTURE[far]).all()
    (tmp_path / "in.png").write_bytes(png(PICTURE))
    (tmp_path / "mask.png").write_bytes(png(MASK))
    assert main(["edit", "--ckpt", str(tiny_generator), "--image", str(tmp_path / "in.png"), "--mask",
                 str(tmp_path / "mask.png"), "--classes", "1", "--n", "2", "--candidates", "2", "--seed", "5",
                 "--cfg", "2", "--top-k", "50", "--dtype", "float32", "--device", "cpu", *flags,
                 "--out", str(tmp_path / "o.png"), "--each", str(tmp_path / "each")]) == 0
    cli = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((tmp_path / "each").glob("*.png"))]
    assert len(cli) == 2
    for a, b in zip(images, cli):
        np.testing.assert_array_equal(a, b)


BAD = [
    (dict(files=files(mask=png(MASK[:12]))), 422, "mask", "the mask is 16x12 pixels but the image is 16x16"),
    (dict(files=files(mask=b"")), 422, "mask", "is empty"),
    (dict(files=files(mask=b"hello")), 422, "mask", "not a readable image"),
    (dict(files=files(image=b"\x89PNG broken")), 422, "image", "not a readable image"),
    (dict(files=files(image=png(np.zeros((32, 32, 3), np.uint8)))), 422, "image", "this server edits 16x16"),
    (dict(files={"image": files()["image"]}), 422, "mask", "required: a file part"),
    (dict(files=files(), data={"class": "0", "colour": "red"}), 422, "colour", "unknown field; accepted fields"),
    (dict(files=files(), data={"class": "0", "n": "two"}), 422, "n", "should be an integer"),
    (dict(files=files(), data={"class": "0", "n": "9"}), 422, "n", "at most 4 images"),
    (dict(files=files(), data={"class": "0", "cfg": "nan"}), 422, "cfg", "finite number"),
    (dict(files=files(), data={"class": "0", "n": "2", "candidates": "3"}), 422, "candidates", "at most 4 rows"),
    (dict(files=files(), data={"class": "zebra"}), 422, "class", "unknown class 'zebra'"),
    (dict(files=files(), data={"prompt": "a red circle"}), 422, "prompt", "class-conditional"),
    (dict(files=files(), data={"class": "0", "mask": "white"}), 422, "mask", "given more than once"),
    (dict(files=files(), data={"class": "0", "score": "best"}), 422, "score", "kept"),
    (dict(files=files(), data={"class": "0", "score": "guided-joint", "score_guidance": "0.5"}), 422,
     "score_guidance", "greater than or equal to 1"),
    (dict(files=files(), data={"class": "0", "score_guidance": "4"}), 422, "score_guidance", "is not guided"),
    (dict(files=files(), data={"class": "0", "hole_cfg": "strong"}), 422, "hole_cfg", "should be a number"),
]


@pytest.mark.parametrize("request_kwargs,status,field,message", BAD, ids=[b[2] + ":" + b[3][:24] for b in BAD])
def test_each_bad_part_is_named(client, request_kwargs, status, field, message):
    data = request_kwargs.pop("data", {"class": "0"})
    r = client.post("/v1/images/edits", data=data, **request_kwargs)
    assert r.status_code == status, r.text
    error = r.json()
    assert error["errors"][0]["field"] == field and message in error["errors"][0]["message"], error


def test_not_multipart_and_too_large_bodies(client):
    r = client.post("/v1/images/edits", json={"class": 0})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
    big = files(image=b"\0" * (5 * 1024 * 1024))
    r = client.post("/v1/images/edits", files=big, data={"class": "0"})
    assert r.status_code == 413 and r.json()["errors"][0]["field"] == "body"
    assert client.get("/healthz").status_code == 200                 # still answering
