"""Reading sources: label files without images, images without label files, a mapping that fits nothing."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.sources import SourceSpec, load_source
from models.classes import CLASS_NAMES

from .conftest import texture, write_yolo_source


def by_kind(issues, kind: str) -> list:
    return [i for i in issues if i.kind == kind]


def test_a_yolo_label_file_without_an_image_is_a_warning(garbage_like: Path):
    orphan = garbage_like / "train" / "labels" / "gone.txt"
    orphan.write_text("0 0.5 0.5 0.2 0.2\n")
    data = load_source(SourceSpec(name="g", path=str(garbage_like), mapping="garbage"))
    found = by_kind(data.issues, "no_image")
    assert [(i.severity, i.file) for i in found] == [("warning", str(orphan))]
    assert "without an image" in found[0].message
    assert len(data.samples) == 9  # the labels of the 9 images are all read; nothing made up for gone.txt


def test_folder_source_without_split_file_keeps_unlabelled_images_and_reports_both_sides(tmp_path: Path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(1)
    for stem in ("a", "b", "c"):
        cv2.imwrite(str(images / f"{stem}.jpg"), texture(rng))
    (labels / "a.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    (labels / "b.txt").write_text("")  # labelled: nothing on it
    (labels / "orphan.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    (labels / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")  # not a label file
    spec = SourceSpec(name="f", kind="folder", path=str(images), labels=str(labels), mapping="product")
    data = load_source(spec)
    assert sorted(s.image.stem for s in data.samples) == ["a", "b", "c"]  # c: no label file, kept like in YOLO sets
    c = next(s for s in data.samples if s.image.stem == "c")
    assert len(c.boxes) == 0
    missing = by_kind(data.issues, "no_label_file")
    assert [(i.severity, i.file) for i in missing] == [("warning", str(labels / "c.txt"))]
    assert "c.jpg has no label file" in missing[0].message
    assert [i.file for i in by_kind(data.issues, "no_image")] == [str(labels / "orphan.txt")]


def test_folder_source_with_no_label_file_at_all_is_not_labelled_yet(tmp_path: Path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    cv2.imwrite(str(images / "a.jpg"), texture(np.random.default_rng(0)))
    spec = SourceSpec(name="f", kind="folder", path=str(images), labels=str(labels), mapping="product")
    with pytest.raises(FileNotFoundError, match="no labelled images"):
        load_source(spec)


def test_a_mapping_that_maps_none_of_the_source_classes_is_an_error(tmp_path: Path):
    src = write_yolo_source(tmp_path / "g", ["garbage", "garbage_bin", "overflow"], 2, 1)
    with pytest.raises(ValueError) as info:
        load_source(SourceSpec(name="g", path=str(src), mapping="facades"))
    text = str(info.value)
    assert "no class of the source is mapped" in text and str(src) in text
    assert "garbage, garbage_bin, overflow" in text  # the source's classes
    assert "signboard, cantilever, win_ad" in text  # the mapping's keys
