"""Tests of imagelm.data: the built-in data sets, file data sets with bad files, and the transforms."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from imagelm.data import (COLORS, DATASET_NAMES, SHAPE_KINDS, CaptionsDataset, DigitsDataset, ImageFolderDataset,
                          ShapesDataset, build_dataset, caption_from_attributes, center_crop_arr, make_grid,
                          random_flip, save_grid, ten_crop, to_tensor, to_uint8)


# ----------------------------------------------------------------------------------------------- shapes

def test_shapes_deterministic_by_seed_and_index():
    a = ShapesDataset(image_size=32, length=50, seed=3)
    b = ShapesDataset(image_size=32, length=50, seed=3)
    forward = [a[i] for i in range(10)]
    backward = [b[i] for i in reversed(range(10))][::-1]
    for (xa, ca, ta), (xb, cb, tb) in zip(forward, backward):
        assert torch.equal(xa, xb) and ca == cb and ta == tb
    assert torch.equal(a[7][0], a[7][0])  # the same index twice
    other = ShapesDataset(image_size=32, length=50, seed=4)
    assert not all(torch.equal(a[i][0], other[i][0]) for i in range(10))
    assert len({a.caption(i) for i in range(20)}) > 10  # items differ from each other too


@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes_tensor_shape_and_range(size):
    ds = ShapesDataset(image_size=size, length=8)
    for i in range(8):
        image, class_id, caption = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, size, size)
        assert image.min() >= -1 and image.max() <= 1
        assert isinstance(class_id, int) and isinstance(caption, str)
    assert ds.image_size == size and ds.class_names == SHAPE_KINDS
    batch = ds.render_batch(range(4))
    assert batch.dtype == np.uint8 and batch.shape == (4, size, size, 3)
    np.testing.assert_array_equal(batch[2], ds.images_uint8(2))
    np.testing.assert_array_equal(to_uint8(ds[2][0]), batch[2])  # tensor and uint8 paths agree exactly


def test_shapes_captions_and_classes_match_attributes():
    ds = ShapesDataset(image_size=32, length=200, seed=1)
    n_two = 0
    for i in range(200):
        attrs = ds.attributes(i)
        assert json.loads(json.dumps(attrs)) == attrs  # plain, JSON-serialisable
        _, class_id, caption = ds[i]
        assert caption == caption_from_attributes(attrs) == ds.caption(i)
        assert class_id == SHAPE_KINDS.index(attrs["shapes"][0]["kind"]) == ds.class_id(i)
        assert caption.endswith(f"on a {attrs['background']} background")
        assert 1 <= len(attrs["shapes"]) <= 2
        n_two += len(attrs["shapes"]) == 2
        for shape in attrs["shapes"]:
            assert f"{shape['size']} {shape['color']} {shape['kind']}" in caption
            assert shape["color"] != attrs["background"]
        if len(attrs["shapes"]) == 2:
            assert attrs["shapes"][0]["position"] != attrs["shapes"][1]["position"]
    assert 40 < n_two < 160  # both counts occur


def test_caption_grammar():
    attrs = {"background": "blue", "shapes": [{"kind": "triangle", "color": "red", "size": "small",
                                               "position": "top left"}]}
    assert caption_from_attributes(attrs) == "a small red triangle at the top left on a blue background"
    attrs["shapes"].append({"kind": "star", "color": "green", "size": "large", "position": "right"})
    assert caption_from_attributes(attrs) == ("a small red triangle at the top left and a large green star "
                                              "on the right on a blue background")


def test_shapes_pixels_show_background_and_shape():
    # A small shape at the center leaves the corners as background and covers the centre pixel.
    ds = ShapesDataset(image_size=32, length=20, max_shapes=1, sizes=["small"], positions=["center"])
    for i in range(20):
        attrs, pixels = ds.attributes(i), ds.images_uint8(i).astype(int)
        background = np.array(COLORS[attrs["background"]])
        for corner in (pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]):
            np.testing.assert_array_equal(corner, background)
        np.testing.assert_array_equal(pixels[16, 16], COLORS[attrs["shapes"][0]["color"]])


def test_shapes_restricted_options():
    ds = ShapesDataset(image_size=16, length=100, kinds=["star", "circle"], sizes=["medium"],
                       positions=["left", "right"], colors=["red", "blue"], max_shapes=2)
    assert ds.class_names == ["star", "circle"]
    for i in range(100):
        attrs = ds.attributes(i)
        assert ds[i][1] == ["star", "circle"].index(attrs["shapes"][0]["kind"])
        assert attrs["background"] in ("red", "blue")
        for shape in attrs["shapes"]:
            assert shape["kind"] in ("star", "circle") and shape["size"] == "medium"
            assert shape["position"] in ("left", "right") and shape["color"] in ("red", "blue")


def test_shapes_argument_errors():
    with pytest.raises(ValueError, match="circle, square"):
        ShapesDataset(kinds=["circle", "blob"])
    with pytest.raises(ValueError, match="image_size"):
        ShapesDataset(image_size=4)
    with pytest.raises(ValueError, match="list of names"):
        ShapesDataset(colors="red")
    with pytest.raises(ValueError, match="no shape colour"):
        ShapesDataset(colors=["red"])
    with pytest.raises(ValueError, match="max_shapes=1"):
        ShapesDataset(positions=["center"])  # two shapes cannot both sit at the center
    with pytest.raises(IndexError):
        ShapesDataset(length=5)[5]


def test_build_dataset_shapes_variants():
    train, test = build_dataset("shapes", 16), build_dataset("shapes", 16, split="test")
    assert len(train) == 10000 and len(test) == 1000
    assert train.caption(0) != test.caption(0) or not torch.equal(train[0][0], test[0][0])
    simple = build_dataset("shapes-simple", 16, length=30)
    assert len(simple) == 30
    for i in range(30):
        attrs = simple.attributes(i)
        assert len(attrs["shapes"]) == 1
        assert attrs["shapes"][0]["size"] == "large" and attrs["shapes"][0]["position"] == "center"
    assert set(DATASET_NAMES) == {"shapes", "shapes-simple", "digits"}


def test_build_dataset_unknown_name():
    with pytest.raises(ValueError, match="shapes, shapes-simple, digits"):
        build_dataset("imagenet-please")


# ----------------------------------------------------------------------------------------------- digits

def test_digits():
    train, test = DigitsDataset(16, split="train"), DigitsDataset(16, split="test")
    everything = DigitsDataset(16, split="all")
    assert len(train) + len(test) == len(everything) == 1797
    assert abs(len(test) - 0.2 * 1797) < 2
    image, label, caption = train[0]
    assert image.shape == (3, 16, 16) and image.min() >= -1 and image.max() <= 1
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey over RGB
    assert 0 <= label <= 9 and caption == f"a handwritten digit {train.class_names[label]}"
    assert train.class_names[7] == "seven"
    assert set(int(v) for v in test.labels) == set(range(10))
    built = build_dataset("digits", 16, split="test", length=10)
    assert len(built) == 10 and torch.equal(built[3][0], test[3][0]) and built.class_names == test.class_names


# ----------------------------------------------------------------------------------------------- files

def _write_image(path, size=(40, 30), color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _write_truncated_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)  # noise does not compress: the pixel data fills most of the file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_image_folder_classes_and_captions(tmp_path):
    _write_image(tmp_path / "zebra" / "a.png")
    _write_image(tmp_path / "apple" / "b.jpg", color=(0, 255, 0))
    _write_image(tmp_path / "apple" / "sub" / "c.webp")
    _write_image(tmp_path / "golden_retriever" / "d.bmp")
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, 16, captions={"zebra/a.png": "a striped horse"})
    assert ds.class_names == ["apple", "golden_retriever", "zebra"]
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 4 and ds.skipped == 0
    assert [class_id for _, class_id, _ in items] == [0, 0, 1, 2]
    assert items[0][2] == "a photo of a apple" and items[2][2] == "a photo of a golden retriever"
    assert items[3][2] == "a striped horse"
    assert items[0][0].shape == (3, 16, 16)
    np.testing.assert_allclose(items[0][0][:, 8, 8], [-1, 1, -1], atol=0.05)  # the green JPEG


def test_bad_files_are_skipped_with_a_warning(tmp_path):
    _write_image(tmp_path / "cat" / "0.png")
    (tmp_path / "cat" / "1.png").write_bytes(np.random.default_rng(1).bytes(500))  # random bytes
    _write_truncated_png(tmp_path / "cat" / "2.png")  # a real PNG cut in half
    _write_image(tmp_path / "cat" / "3.png", color=(0, 0, 255))
    ds = ImageFolderDataset(tmp_path, 16)
    assert len(ds) == 4
    with pytest.warns(UserWarning) as record:
        image, class_id, _ = ds[1]
    # One warning per bad file, each naming it.
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and "1.png" in messages[0] and "2.png" in messages[1]
    # The next readable item (3.png, blue) came back instead; the truncated 2.png was skipped too.
    assert class_id == 0 and image[2].mean() > 0.9 and image[0].mean() < -0.9
    assert ds.skipped == 2
    assert [p.rsplit("/", 1)[-1] for p in ds.bad_files] == ["1.png", "2.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known bad file does not warn again
        ds[2]
    assert ds.skipped == 2
    assert ds.report().startswith("skipped 2 unreadable files")


def test_truncated_png_warning_names_file(tmp_path):
    _write_truncated_png(tmp_path / "dog" / "half.png")
    _write_image(tmp_path / "dog" / "whole.png")
    ds = ImageFolderDataset(tmp_path, 16)
    with pytest.warns(UserWarning, match="half.png"):
        ds[0]
    assert ds.skipped == 1


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "missing", 16)
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolderDataset(tmp_path, 16)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path, 16)


def test_captions_jsonl(tmp_path):
    _write_image(tmp_path / "imgs" / "red.png", size=(50, 20))
    _write_image(tmp_path / "elsewhere" / "blue.png", color=(0, 0, 255))
    lines = [{"image": "imgs/red.png", "caption": "a red thing"},
             {"image": str(tmp_path / "elsewhere" / "blue.png"), "caption": "a blue thing"}]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    ds = CaptionsDataset(jsonl, 16)
    assert len(ds) == 2 and ds.class_names == ["image"]
    image, class_id, caption = ds[0]
    assert image.shape == (3, 16, 16) and class_id == 0 and caption == "a red thing"
    assert ds[1][2] == "a blue thing"
    built = build_dataset(str(jsonl), 16, split="test")
    assert built[0][2] == "a red thing"
    # Relative paths resolve against root when given.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"image": "red.png", "caption": "via root"}) + "\n")
    assert CaptionsDataset(other, 16, root=tmp_path / "imgs")[0][2] == "via root"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.png"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        CaptionsDataset(bad, 16)
    with pytest.raises(FileNotFoundError):
        CaptionsDataset(tmp_path / "nope.jsonl", 16)


def test_build_dataset_folder(tmp_path):
    _write_image(tmp_path / "b" / "x.png")
    _write_image(tmp_path / "a" / "y.png")
    ds = build_dataset(str(tmp_path), 16, length=1)
    assert len(ds) == 1 and ds.class_names == ["a", "b"] and ds.image_size == 16


# ----------------------------------------------------------------------------------------------- transforms

def test_center_crop_arr_non_square():
    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste((255, 255, 255), (100, 0, 200, 100))  # a white middle third
    out = center_crop_arr(img, 32)
    assert out.size == (32, 32) and out.mode == "RGB"
    assert np.asarray(out).min() > 240  # the crop is the white middle
    assert center_crop_arr(Image.new("L", (20, 70)), 64).size == (64, 64)  # upscales too


def test_ten_crop():
    img = Image.fromarray(np.arange(40 * 50 * 3, dtype=np.uint32).reshape(40, 50, 3).astype(np.uint8))
    crops = ten_crop(img, 24)
    assert len(crops) == 10 and all(c.size == (24, 24) for c in crops)
    np.testing.assert_array_equal(np.asarray(crops[0]), np.asarray(img)[:24, :24])
    np.testing.assert_array_equal(np.asarray(crops[5]), np.asarray(crops[0])[:, ::-1])
    with pytest.raises(ValueError):
        ten_crop(img, 41)


def test_tensor_conversions_and_flip():
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    x = to_tensor(pixels)
    assert x.shape == (2, 3, 5, 7) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(to_uint8(x), pixels)
    assert to_tensor(Image.fromarray(pixels[0])).shape == (3, 5, 7)
    flips = {torch.equal(random_flip(x[0], torch.Generator().manual_seed(s)), x[0].flip(-1)) for s in range(20)}
    assert flips == {True, False}


def test_save_grid(tmp_path):
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    path = save_grid(images, tmp_path / "out" / "grid.png", nrow=3)
    with Image.open(path) as im:
        assert im.size == (3 * 18 + 2, 2 * 18 + 2)
        np.testing.assert_array_equal(np.asarray(im), make_grid(images, nrow=3))
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temp file left behind
    np.testing.assert_array_equal(np.asarray(Image.open(path))[2:18, 2:18], to_uint8(images[0]))
