"""Evidence pictures for a violation, and the building blocks every evidence picture shares.

Camera evidence (:func:`render_evidence`) is the full frame with the subject's box, zone and a caption,
and a crop; photo evidence (:mod:`pipeline.photos`) is the photo shrunk with the box drawn, and a crop.
Either way people other than the subject are blurred first (privacy, :func:`bystanders`). The caption
carries what a reviewer needs to trust the picture on its own: time, camera, zone, violation, class and
score, model version.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from models.classes import CLASS_IDS
from pipeline.annotate import PALETTE, blur_boxes
from pipeline.cases import EvidenceImage
from pipeline.detections import Detections, box_ios

JPEG_QUALITY = 90
CROP_MARGIN = 0.3  # crop: the box grown by this fraction of its size on each side
CROP_MIN_SIDE = 160
#: A person this much inside a subject's box (intersection over the person's box) is part of the subject.
BYSTANDER_IOS = 0.6
#: Subjects whose people belong to them: a person subject itself, the vendor at a vending stall.
SUBJECTS_WITH_PEOPLE = (CLASS_IDS["person"], CLASS_IDS["street_vending"])


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def fit(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    """``image`` shrunk so its long side is at most ``long_side``, and the scale applied."""
    h, w = image.shape[:2]
    scale = min(1.0, long_side / max(h, w))
    if scale >= 1.0:
        return image, 1.0
    size = (max(round(w * scale), 1), max(round(h * scale), 1))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def bystanders(
    dets: Detections, subjects: np.ndarray, subject_classes: Sequence[int], ios: float = BYSTANDER_IOS
) -> np.ndarray:
    """xyxy boxes of the detected people who are not part of a subject; these are blurred in evidence.

    A person is part of a subject that is a person (the subject itself) or a vending stall (the vendor)
    when the person's box lies mostly inside the subject's box and is not the larger of the two.
    """
    people = dets.xyxy[dets.class_id == CLASS_IDS["person"]]
    subjects = np.asarray(subjects, np.float32).reshape(-1, 4)
    subjects = subjects[np.isin(np.asarray(subject_classes, np.int64), SUBJECTS_WITH_PEOPLE)]
    if not len(people) or not len(subjects):
        return people
    inside = box_ios(people, subjects)  # intersection over the smaller box: the person, usually
    person_area = np.prod(np.clip(people[:, 2:] - people[:, :2], 0, None), axis=1)
    subject_area = np.prod(np.clip(subjects[:, 2:] - subjects[:, :2], 0, None), axis=1)
    part_of = ((inside > ios) & (person_area[:, None] <= subject_area[None, :])).any(axis=1)
    return people[~part_of]


def crop_box(
    frame: np.ndarray, box: Sequence[float], blur: np.ndarray | None = None, margin: float = CROP_MARGIN
) -> np.ndarray:
    """The region around ``box`` grown by ``margin`` of its size on each side (at least ``CROP_MIN_SIDE`` px),
    clipped to the frame; ``blur``: xyxy boxes (frame pixels) blurred in the crop."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = x2 - x1, y2 - y1
    gx = max(bw * margin, (CROP_MIN_SIDE - bw) / 2, 0)
    gy = max(bh * margin, (CROP_MIN_SIDE - bh) / 2, 0)
    xa, ya = max(int(x1 - gx), 0), max(int(y1 - gy), 0)
    xb, yb = max(min(int(np.ceil(x2 + gx)), w), xa + 1), max(min(int(np.ceil(y2 + gy)), h), ya + 1)
    crop = frame[ya:yb, xa:xb].copy()
    if blur is not None and len(blur):
        crop = blur_boxes(crop, np.asarray(blur, np.float32) - np.array([xa, ya, xa, ya], np.float32))
    return crop


def draw_caption(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """``image`` with a dark caption band of text lines added below it."""
    w = image.shape[1]
    scale = max(0.45, w / 1800)
    thick = max(1, round(scale * 1.6))
    line_h = int(cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][1] * 1.9) + 2
    band = np.full((line_h * len(lines) + line_h // 2, w, 3), 24, np.uint8)
    for k, text in enumerate(lines):
        y = line_h * (k + 1) - line_h // 4
        cv2.putText(band, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), thick, cv2.LINE_AA)
    return np.vstack([image, band])


def render_evidence(
    frame: np.ndarray,
    dets: Detections,
    box: np.ndarray,
    class_id: int,
    label: str,
    caption: list[str],
    zone_polygon_px: np.ndarray | None = None,
) -> list[EvidenceImage]:
    """The annotated full frame, the crop and the clean frame (nothing drawn, for retraining), as JPEG
    evidence; people other than the subject are blurred in all three."""
    box = np.asarray(box, np.float32)
    hidden = bystanders(dets, box, [class_id])
    clean = blur_boxes(frame, hidden) if len(hidden) else frame.copy()
    annotated = clean.copy()
    h, w = frame.shape[:2]
    t = max(2, round(max(h, w) / 400))
    if zone_polygon_px is not None:
        pts = np.round(zone_polygon_px).astype(np.int32).reshape(-1, 1, 2)
        overlay = annotated.copy()
        cv2.fillPoly(overlay, [pts], (0, 0, 200))
        annotated = cv2.addWeighted(overlay, 0.08, annotated, 0.92, 0)
        cv2.polylines(annotated, [pts], True, (0, 0, 230), max(1, t - 1), cv2.LINE_AA)
    color = PALETTE[class_id]
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    cv2.rectangle(annotated, (x1, y1), (x2, y2), (0, 0, 0), t + 2, cv2.LINE_AA)
    cv2.rectangle(annotated, (x1, y1), (x2, y2), color, t, cv2.LINE_AA)
    scale = max(0.5, max(h, w) / 1400)
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, t - 1))
    ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(y2 + th + base + 4, h - 1)
    cv2.rectangle(annotated, (x1, ty - th - base), (x1 + tw + 4, ty + 2), color, -1)
    cv2.putText(
        annotated,
        label,
        (x1 + 2, ty - base + 1),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (0, 0, 0),
        max(1, t - 1),
        cv2.LINE_AA,
    )
    full = draw_caption(annotated, caption)
    crop = crop_box(clean, box)
    return [
        EvidenceImage(kind="frame", jpeg=encode_jpeg(full)),
        EvidenceImage(kind="crop", jpeg=encode_jpeg(crop)),
        EvidenceImage(kind="clean", jpeg=encode_jpeg(clean)),
    ]
