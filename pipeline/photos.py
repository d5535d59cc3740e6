"""Violations in a single photo: which detections are violations, their idempotency keys, their evidence.

One implementation for every way a photo reaches the case queue (``streetwatch audit --file-cases``,
``POST /v1/detect?file=true``), so the same photo filed both ways is one case: the key of a violation is
the photo's content hash, the violation type and the box rounded to whole pixels.

In photos there are no zones: a detection is a violation when its class evidences one on its own (a
vending stall, a small ad, litter, an overflowing bin); a vehicle only when parking is judged everywhere
(``parking_anywhere``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from models.classes import VIOLATIONS, violation_for_class
from pipeline.annotate import blur_boxes, draw_detections
from pipeline.cases import EvidenceImage, GeoPoint, Violation
from pipeline.detections import Detections
from pipeline.evidence import BYSTANDER_IOS, bystanders, crop_box, encode_jpeg, fit

PARKING = "illegal_parking"
#: Long side of a photo's evidence frame, pixels (crops are cut from the full-resolution photo).
EVIDENCE_SIDE = 1600
#: Long side of a photo's evidence crop, pixels.
CROP_SIDE = 640


@dataclass(frozen=True)
class Finding:
    """One violation in a photo: which detection, of which type, under which idempotency key."""

    index: int
    type: str
    key: str


def violation_types(dets: Detections, parking_anywhere: bool) -> list[str | None]:
    """The violation each detection evidences in a photo (no zones: vehicles only when parking is judged)."""
    parking_sources = VIOLATIONS[PARKING].sources
    out = []
    for name in dets.class_names:
        kind = violation_for_class(name)
        if kind is None and parking_anywhere and name in parking_sources:
            kind = PARKING
        out.append(kind)
    return out


def photo_key_prefix(sha256: str) -> str:
    """What the keys of every violation in one photo start with."""
    return f"photo:{sha256}:"


def violation_key(sha256: str, kind: str, box: Sequence[float], taken: set[str] | None = None) -> str:
    """Deterministic idempotency key: photo hash + violation type + the box rounded to whole pixels."""
    base = f"{photo_key_prefix(sha256)}{kind}:" + ",".join(str(round(float(v))) for v in box)
    key, n = base, 1
    while taken is not None and key in taken:  # two boxes of one type rounding alike: number them
        n += 1
        key = f"{base}#{n}"
    if taken is not None:
        taken.add(key)
    return key


def find_violations(dets: Detections, sha256: str, parking_anywhere: bool = False) -> list[Finding]:
    """The violations among a photo's detections, each with its key."""
    taken: set[str] = set()
    return [
        Finding(i, kind, violation_key(sha256, kind, dets.xyxy[i], taken))
        for i, kind in enumerate(violation_types(dets, parking_anywhere))
        if kind is not None
    ]


def photo_violations(
    image: np.ndarray,
    dets: Detections,
    findings: Sequence[Finding],
    *,
    sha256: str,
    model_version: str,
    taken_at: datetime,
    source_name: str | None = None,
    location: GeoPoint | None = None,
    extra: dict[str, Any] | None = None,
    evidence_side: int = EVIDENCE_SIDE,
    crop_side: int = CROP_SIDE,
    bystander_ios: float = BYSTANDER_IOS,
) -> list[Violation]:
    """A :class:`Violation` with evidence for each finding (see :func:`find_violations`).

    Evidence: the photo shrunk to ``evidence_side`` with the subject's box labelled ``type score``, a
    crop around the subject from the full-resolution photo, and the shrunk photo with nothing drawn (the
    clean frame, for retraining); people who are not the subject are blurred in all three. ``extra`` is
    recorded on every violation, with the box in photo pixels and the photo's size.
    """
    if not findings:
        return []
    h, w = image.shape[:2]
    small, scale = fit(image, evidence_side)  # once per photo: blurring 12 MP costs
    out = []
    for f in findings:
        box = dets.xyxy[f.index]
        hidden = bystanders(dets, box, dets.class_id[f.index : f.index + 1], bystander_ios)
        one = dets[[f.index]]
        one.xyxy = one.xyxy * np.float32(scale)
        score = float(dets.confidence[f.index])
        clean = blur_boxes(small, hidden * scale)
        frame = draw_detections(clean, one, labels=[f"{f.type} {score:.2f}"])
        crop = fit(crop_box(image, box, hidden), crop_side)[0]
        out.append(
            Violation(
                key=f.key,
                type=f.type,
                source="photo",
                source_id=sha256,
                source_name=source_name,
                first_seen=taken_at,
                last_seen=taken_at,
                detector_class=dets.class_names[f.index],
                score=round(min(max(score, 0.0), 1.0), 4),
                box=tuple(float(v) for v in one.xyxy[0]),
                frame_size=(frame.shape[1], frame.shape[0]),
                model_version=model_version,
                location=location,
                evidence=[
                    EvidenceImage(kind="frame", jpeg=encode_jpeg(frame, 85)),
                    EvidenceImage(kind="crop", jpeg=encode_jpeg(crop, 90)),
                    EvidenceImage(kind="clean", jpeg=encode_jpeg(clean, 90)),
                ],
                extra={
                    **(extra or {}),
                    "photo_box": [round(float(v), 1) for v in box],
                    "photo_size": [w, h],
                },
            )
        )
    return out
