"""Violations from the detections of one uploaded photo (``POST /v1/detect?file=true``, ``serve --demo``)."""

from __future__ import annotations

import hashlib
from datetime import datetime

import cv2
import numpy as np

from models.classes import violation_for_class
from pipeline.annotate import blur_boxes, draw_detections
from pipeline.cases import EvidenceImage, GeoPoint, Violation
from pipeline.detections import Detections

#: Longest side of an evidence frame; crops are cut from the full-resolution image.
EVIDENCE_SIDE = 1600


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode JPEG")
    return buf.tobytes()


def photo_violations(
    image: np.ndarray,
    data: bytes,
    dets: Detections,
    model_version: str,
    taken_at: datetime,
    source_name: str | None = None,
    location: GeoPoint | None = None,
) -> list[Violation]:
    """One :class:`Violation` per detection whose class evidences a violation without zones.

    Keys derive from the photo's content hash and the box, so uploading the same photo again updates
    the same cases. People are blurred in the evidence.
    """
    sha = hashlib.sha256(data).hexdigest()
    h, w = image.shape[:2]
    people = dets.of_classes(["person"]).xyxy
    private = blur_boxes(image, people) if len(people) else image
    scale = min(1.0, EVIDENCE_SIDE / max(h, w))
    clean = (
        private
        if scale == 1
        else cv2.resize(private, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    )
    clean_jpeg = None  # encoded once per photo: every violation of the photo shares the clean frame
    out = []
    for det in dets:
        name = det.class_names[0]
        vtype = violation_for_class(name)
        if vtype is None:
            continue
        x1, y1, x2, y2 = (float(v) for v in det.xyxy[0])
        frame = draw_detections(private, det)
        if scale < 1:
            frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        mx, my = (x2 - x1) * 0.25 + 8, (y2 - y1) * 0.25 + 8
        crop = private[int(max(0, y1 - my)) : int(min(h, y2 + my)), int(max(0, x1 - mx)) : int(min(w, x2 + mx))]
        evidence = [EvidenceImage(kind="frame", jpeg=encode_jpeg(frame))]
        if crop.size:
            evidence.append(EvidenceImage(kind="crop", jpeg=encode_jpeg(crop, 90)))
        clean_jpeg = clean_jpeg or encode_jpeg(clean, 90)
        evidence.append(EvidenceImage(kind="clean", jpeg=clean_jpeg))
        out.append(
            Violation(
                key=f"photo:{sha[:24]}:{vtype}:{round(x1)}-{round(y1)}-{round(x2)}-{round(y2)}",
                type=vtype,
                source="photo",
                source_id=sha,
                source_name=source_name,
                first_seen=taken_at,
                last_seen=taken_at,
                detector_class=name,
                score=float(det.confidence[0]),
                box=(x1 * scale, y1 * scale, x2 * scale, y2 * scale),
                frame_size=(round(w * scale), round(h * scale)),
                model_version=model_version,
                location=location,
                evidence=evidence,
            )
        )
    return out
