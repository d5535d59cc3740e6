"""Pseudo-labels from the real shipped COCO model on a bundled photo with cars, people and a bicycle."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.pseudo import DetectionCache, Teacher, add_pseudo_labels, teacher_detections
from datasets.samples import Sample, xyxy_to_xywhn
from models.classes import CLASS_IDS
from pipeline.decode import read_image
from pipeline.detections import box_iou

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "pipeline" / "samples" / "photos" / "patrol-containers-cyclist.jpg"
LITTER, CAR, PERSON = CLASS_IDS["litter"], CLASS_IDS["car"], CLASS_IDS["person"]


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return Teacher("yolo11n-coco-interim")


@pytest.fixture(scope="module")
def found(teacher: Teacher):
    image = read_image(PHOTO)
    return image, teacher.detect([image])[0]


def sample(boxes: np.ndarray, labelled: set[int], image: np.ndarray) -> Sample:
    s = Sample("patrol", PHOTO, "train", boxes.astype(np.float32), frozenset(labelled))
    s.height, s.width = image.shape[:2]
    return s


def test_teacher_adds_people_and_vehicles_without_touching_own_labels(found, tmp_path: Path, teacher: Teacher):
    image, _ = found
    own = np.array([[LITTER, 0.3, 0.8, 0.2, 0.2], [CLASS_IDS["garbage_bin"], 0.6, 0.7, 0.1, 0.3]])
    s = sample(own, {LITTER, CLASS_IDS["garbage_bin"]}, image)
    before = s.boxes.copy()
    cache = DetectionCache(tmp_path, teacher)
    got = teacher_detections([s], teacher, cache)
    stats = add_pseudo_labels([s], got, conf=0.5)
    np.testing.assert_array_equal(s.boxes, before)  # the source's labels are untouched
    classes = s.pseudo[:, 0].astype(int).tolist()
    assert classes.count(CAR) >= 2 and classes.count(PERSON) >= 2
    assert set(classes) <= {CLASS_IDS[c] for c in ("person", "car", "motorbike", "bicycle")}
    assert stats.added["car"] == classes.count(CAR)
    assert np.all((s.pseudo[:, 1:] >= 0) & (s.pseudo[:, 1:] <= 1))
    assert len(s.all_boxes()) == len(own) + len(s.pseudo)
    # lower thresholds find more; the study counts them
    assert sum(stats.by_threshold[0.25].values()) >= sum(stats.by_threshold[0.5].values()) == len(s.pseudo)
    # the cache answers a second time without the model
    again = DetectionCache(tmp_path, teacher).get(s.sha256)
    assert again is not None and np.array_equal(again.xyxy, got[0].xyxy)  # cached = fresh, to the bit
    assert np.array_equal(again.confidence, got[0].confidence)


def test_classes_the_source_labels_are_never_added(found):
    image, dets = found
    s = sample(np.zeros((0, 5)), {CAR}, image)  # the source labels cars itself (here: none in the photo)
    stats = add_pseudo_labels([s], [dets], conf=0.5)
    assert CAR not in s.pseudo[:, 0] and stats.skipped_labelled["car"] >= 2 and PERSON in s.pseudo[:, 0]


def test_a_box_repeating_an_existing_same_class_label_is_skipped(found):
    image, dets = found
    h, w = image.shape[:2]
    car = dets[(dets.class_id == CAR) & (dets.confidence >= 0.5)][0]
    shifted = car.xyxy + np.array([[3, 2, 3, 2]], np.float32)  # a hand-drawn box of the same car
    own = xyxy_to_xywhn(shifted, np.array([CAR]), w, h)
    s = sample(own, set(), image)  # the source does not claim to label all cars
    stats = add_pseudo_labels([s], [dets], conf=0.5)
    assert stats.skipped_duplicate["car"] == 1
    assert (s.pseudo[:, 0] == CAR).sum() == (dets[dets.confidence >= 0.5].class_id == CAR).sum() - 1


@pytest.mark.slow
def test_pt_teacher_agrees_with_the_onnx_teacher(found):
    pytest.importorskip("ultralytics")
    image, dets = found
    pt = Teacher(str(REPO / "models" / "yolo11n-coco-interim" / "model.pt"))
    got = pt.detect([image])[0]

    def strong(d):
        return sorted(d[d.confidence >= 0.5].class_id.tolist())

    assert strong(got) == strong(dets)


def test_a_box_covering_a_label_of_another_class_is_the_teachers_mistake(found):
    image, dets = found
    h, w = image.shape[:2]
    car = dets[(dets.class_id == CAR) & (dets.confidence >= 0.5)][0]
    own = xyxy_to_xywhn(car.xyxy, np.array([LITTER]), w, h)  # say the source labelled that spot as litter
    s = sample(own, {LITTER}, image)
    stats = add_pseudo_labels([s], [dets], conf=0.5)
    assert stats.skipped_conflict["car"] == 1
    assert not any(box_iou(b[None], car.xyxy)[0, 0] > 0.6 for b in s.xyxy(s.pseudo))


def test_a_photos_pseudo_labels_do_not_depend_on_what_it_is_batched_with(found, tmp_path: Path, teacher: Teacher):
    image, _ = found
    tall = image[:, : image.shape[1] // 2]  # a portrait crop: a larger letterbox height than the photo's
    assert teacher.batch_key(tall.shape[:2]) != teacher.batch_key(image.shape[:2])
    tall_path = tmp_path / "tall.png"
    cv2.imwrite(str(tall_path), tall)
    alone = teacher_detections([sample(np.zeros((0, 5)), set(), image)], teacher)[0]
    other = Sample("patrol", tall_path, "train", np.zeros((0, 5), np.float32), frozenset())
    other.height, other.width = tall.shape[:2]
    # sorted by size the crop and the photo would share a batch and the photo would be padded to the crop's height
    together = teacher_detections([sample(np.zeros((0, 5)), set(), image), other], teacher)[0]
    assert alone is not None and together is not None and len(alone)
    assert np.array_equal(alone.confidence, together.confidence) and np.array_equal(alone.xyxy, together.xyxy)
