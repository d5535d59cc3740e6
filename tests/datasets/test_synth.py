"""Synthetic small ads on a real bundled photo."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.samples import Sample, xywhn_to_xyxy
from datasets.synth_ads import KIND_WEIGHTS, SMALL_AD, generate, phone_number, render_ad, synthesize
from datasets.yolo import read_label_file
from models.classes import CLASS_IDS, CLASS_NAMES
from pipeline.decode import read_image

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "pipeline" / "samples" / "photos" / "garbage-bins-roadside.jpg"
BIN = CLASS_IDS["garbage_bin"]


@pytest.fixture(scope="module")
def background():
    image = read_image(PHOTO)
    s = Sample("garbage", PHOTO, "train", np.array([[BIN, 0.5, 0.6, 0.2, 0.4]], np.float32), frozenset({BIN}))
    s.height, s.width = image.shape[:2]
    return s, image


@pytest.mark.parametrize("kind", list(KIND_WEIGHTS))
def test_each_kind_renders_ink_on_paper(kind: str):
    ad = render_ad(np.random.default_rng(3), kind)
    rgba = ad.rgba
    assert rgba.ndim == 3 and rgba.shape[2] == 4 and ad.paper.shape == rgba.shape[:2]
    assert ad.paper.mean() > 0.05
    if kind == "stamp":  # ink only: the letters are in the alpha channel
        assert rgba[..., 3].std() > 30
    else:
        grey = cv2.cvtColor(rgba[..., :3], cv2.COLOR_RGB2GRAY)[rgba[..., 3] > 128]
        assert grey.std() > 15  # printed text, not a blank rectangle
    assert any(ch.isdigit() for ch in ad.text)


def test_phone_numbers_look_chinese():
    rng = np.random.default_rng(0)
    for _ in range(50):
        digits = "".join(c for c in phone_number(rng) if c.isdigit())
        assert (len(digits) == 11 and digits[0] == "1") or digits[0] == "0"


def test_ads_are_pasted_inside_the_image_with_their_boxes(background):
    bg, image = background
    h, w = image.shape[:2]
    for seed in range(6):
        result = synthesize(bg, image, np.random.default_rng(seed))
        np.testing.assert_array_equal(result.boxes[0], bg.boxes[0])  # the background's label carried over
        ads = result.boxes[result.boxes[:, 0] == SMALL_AD]
        assert 1 <= len(ads) <= 5 and len(result.ads) == len(ads)
        for x1, y1, x2, y2 in xywhn_to_xyxy(ads, w, h):
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and min(x2 - x1, y2 - y1) >= 8
            box = (slice(int(y1), int(np.ceil(y2))), slice(int(x1), int(np.ceil(x2))))
            changed = np.abs(result.image[box].astype(int) - image[box].astype(int)).max(axis=2) > 20
            assert changed.mean() > 0.15  # the ad's pixels really are there
        outside = np.ones((h, w), bool)
        for x1, y1, x2, y2 in xywhn_to_xyxy(ads, w, h):
            m = int(6 + 0.25 * max(x2 - x1, y2 - y1))  # tape reaching past the paper, shadow, blur
            outside[max(int(y1) - m, 0) : int(y2) + m, max(int(x1) - m, 0) : int(x2) + m] = False
        assert np.array_equal(result.image[outside], image[outside])  # nothing else changed


def test_reproducible_with_a_seed(background):
    bg, image = background
    a = synthesize(bg, image, np.random.default_rng([7, 1]))
    b = synthesize(bg, image, np.random.default_rng([7, 1]))
    c = synthesize(bg, image, np.random.default_rng([8, 1]))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)


def test_generate_writes_images_and_labels(background, tmp_path: Path):
    bg, _ = background
    made = generate([bg], 3, tmp_path / "s", seed=1, split="val", workers=1)
    again = generate([bg], 3, tmp_path / "t", seed=1, split="val", workers=1)
    assert [s.split for s in made] == ["val"] * 3 and all(s.source == "synth-ads" for s in made)
    for s, t in zip(made, again, strict=True):
        assert s.image.read_bytes() == t.image.read_bytes()
        rows, issues = read_label_file(tmp_path / "s" / "labels" / f"{s.image.stem}.txt", len(CLASS_NAMES))
        assert not issues and np.allclose(rows, s.boxes, atol=1e-5)
        assert s.labelled == frozenset({BIN, SMALL_AD}) and (rows[:, 0] == SMALL_AD).sum() >= 1
