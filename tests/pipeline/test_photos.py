"""Violations in a single photo: types without zones, idempotency keys, evidence with bystanders blurred."""

from __future__ import annotations

from datetime import datetime, timezone

import cv2
import numpy as np
import pytest

from models.classes import CLASS_IDS
from pipeline.cases import GeoPoint
from pipeline.detections import Detections
from pipeline.photos import find_violations, photo_violations, violation_key, violation_types


def test_violation_types_follow_the_class_list_without_zones():
    dets = Detections(np.tile([[0, 0, 10, 10]], (6, 1)), np.full(6, 0.9), [0, 1, 3, 5, 6, 7])
    assert violation_types(dets, parking_anywhere=False) == [
        "street_vending",
        "small_ad",
        "exposed_garbage",
        "overflowing_bin",
        None,
        None,
    ]
    assert violation_types(dets, parking_anywhere=True)[-2:] == [None, "illegal_parking"]
    taken: set[str] = set()
    a = violation_key("ab" * 32, "small_ad", [10.2, 20.7, 30.4, 40.5], taken)
    b = violation_key("ab" * 32, "small_ad", [10.4, 20.6, 30.0, 40.1], taken)
    assert a == f"photo:{'ab' * 32}:small_ad:10,21,30,40" and b == a + "#2"


def sharpness(img: np.ndarray) -> float:
    return cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()


def test_evidence_keeps_the_vendor_and_blurs_bystanders():
    """A vending stall with its vendor inside, a passer-by and a parked car: the vendor is part of the
    stall's violation (sharp), the passer-by is blurred in every picture, the car is not judged here."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (1200, 2400, 3), dtype=np.uint8)  # sharp texture everywhere
    stall, vendor, passer, car = (
        [200, 300, 900, 1100],
        [400, 400, 600, 1000],
        [1000, 300, 1200, 900],
        [1500, 600, 2300, 1100],
    )
    cls = [CLASS_IDS[c] for c in ("street_vending", "person", "person", "car")]
    dets = Detections(np.array([stall, vendor, passer, car], np.float32), np.array([0.8, 0.9, 0.9, 0.7]), cls)
    sha = "cd" * 32
    findings = find_violations(dets, sha)
    assert [(f.index, f.type) for f in findings] == [(0, "street_vending")]
    taken = datetime(2026, 11, 20, 9, 15, tzinfo=timezone.utc)
    (v,) = photo_violations(
        photo,
        dets,
        findings,
        sha256=sha,
        model_version="m@1",
        taken_at=taken,
        source_name="market.jpg",
        location=GeoPoint(lat=31.2, lon=121.5),
        extra={"file": "/x/market.jpg"},
    )
    assert v.key == f"photo:{sha}:street_vending:200,300,900,1100" and v.source_id == sha
    assert v.first_seen == v.last_seen == taken and v.location == GeoPoint(lat=31.2, lon=121.5)
    assert v.extra == {"file": "/x/market.jpg", "photo_box": stall, "photo_size": [2400, 1200]}
    frame, crop, clean = (cv2.imdecode(np.frombuffer(e.jpeg, np.uint8), cv2.IMREAD_COLOR) for e in v.evidence)
    assert [e.kind for e in v.evidence] == ["frame", "crop", "clean"]
    assert clean.shape == frame.shape and not np.array_equal(clean, frame)  # same view, nothing drawn
    assert frame.shape[:2] == (800, 1600) and v.frame_size == (1600, 800)  # shrunk to 1600 px
    assert v.box == pytest.approx([200 * 2 / 3, 300 * 2 / 3, 900 * 2 / 3, 1100 * 2 / 3])  # on the evidence frame
    s = 2 / 3
    passer_px = frame[int(320 * s) : int(880 * s), int(1020 * s) : int(1180 * s)]
    vendor_px = frame[int(420 * s) : int(980 * s), int(420 * s) : int(580 * s)]
    assert sharpness(passer_px) < 0.05 * sharpness(vendor_px)
    assert sharpness(clean[int(320 * s) : int(880 * s), int(1020 * s) : int(1180 * s)]) < 0.05 * sharpness(vendor_px)
    assert crop.shape[0] <= 640 and crop.shape[1] <= 640 and sharpness(crop) > 1000
