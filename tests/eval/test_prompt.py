import numpy as np
import pytest

from imagelm.data import COLORS, build_dataset, render_attributes
from imagelm.eval.prompt import measure_image, nearest_colors, prompt_accuracy


@pytest.fixture(scope="module")
def shapes():
    ds = build_dataset("shapes", image_size=32, split="test", length=120)
    return ds.render_batch(range(120)), [ds.attributes(i) for i in range(120)]


def test_nearest_colors_recovers_the_palette():
    palette = np.array(list(COLORS.values()), dtype=np.uint8)
    assert nearest_colors(palette).tolist() == list(range(len(COLORS)))


def test_real_images_match_their_captions(shapes):
    images, attrs = shapes
    acc = prompt_accuracy(images, attrs)
    assert acc["images"] == 120 and "kind" not in acc
    assert acc["background"] == 1.0
    assert acc["color"] >= 0.97 and acc["position"] >= 0.95


def test_shuffled_captions_score_low(shapes):
    images, attrs = shapes
    perm = np.random.default_rng(0).permutation(len(attrs))
    acc = prompt_accuracy(images, [attrs[i] for i in perm])
    assert acc["background"] < 0.4 and acc["color"] < 0.4 and acc["position"] < 0.4


def test_each_attribute_is_measured_on_its_own():
    attrs = {"background": "blue", "shapes": [{"kind": "square", "color": "red", "size": "medium",
                                               "position": "top left"}]}
    image = render_attributes(attrs, 32)
    assert measure_image(image, attrs) == {"background": True, "color": [True], "position": [True]}
    moved = dict(attrs, shapes=[dict(attrs["shapes"][0], position="bottom right")])
    assert measure_image(render_attributes(moved, 32), attrs) == {"background": True, "color": [False],
                                                                  "position": [False]}
    recoloured = dict(attrs, shapes=[dict(attrs["shapes"][0], color="yellow")])
    assert measure_image(render_attributes(recoloured, 32), attrs)["color"] == [False]
    assert measure_image(render_attributes(dict(attrs, background="white"), 32), attrs)["background"] is False


def test_kind_accuracy_uses_the_classifier(shapes, monkeypatch):
    class Always:  # a "classifier" that always says circle
        meta = {"class_names": ["circle", "square", "triangle", "star", "diamond", "cross", "hexagon", "heart"]}

    import imagelm.eval.classifier as classifier
    images, attrs = shapes
    monkeypatch.setattr(classifier, "predict", lambda net, imgs: np.zeros(len(imgs), dtype=np.int64))
    acc = prompt_accuracy(images, attrs, classifier=Always())
    circles = np.mean([a["shapes"][0]["kind"] == "circle" for a in attrs])
    assert acc["kind"] == pytest.approx(circles)


def test_bad_input():
    with pytest.raises(ValueError, match="2 images but 1 attribute records"):
        prompt_accuracy(np.zeros((2, 8, 8, 3), np.uint8), [{}])
    with pytest.raises(ValueError, match="expected uint8 images"):
        prompt_accuracy(np.zeros((2, 8, 8), np.uint8), [{}, {}])
