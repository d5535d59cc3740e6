"""Drawing detections on images: boxes with class names and scores, privacy blur."""

from __future__ import annotations

import cv2
import numpy as np

from models.classes import CLASS_NAMES
from pipeline.detections import Detections

# One fixed, distinguishable BGR colour per product class (same order as CLASS_NAMES).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 140, 255),  # street_vending: orange
    (255, 0, 200),  # small_ad: magenta
    (255, 160, 0),  # shop_sign: blue-ish
    (0, 0, 230),  # litter: red
    (0, 170, 0),  # garbage_bin: green
    (0, 220, 220),  # overflowing_bin: yellow
    (200, 200, 200),  # person: grey
    (255, 90, 60),  # car: blue
    (180, 60, 255),  # motorbike: pink
    (120, 255, 120),  # bicycle: light green
)
assert len(PALETTE) == len(CLASS_NAMES)


def draw_detections(
    image: np.ndarray, dets: Detections, labels: list[str] | None = None, thickness: int | None = None
) -> np.ndarray:
    """A copy of ``image`` with each box drawn and labelled ``class score`` (or the given labels)."""
    out = image.copy()
    h, w = out.shape[:2]
    t = thickness or max(1, round(max(h, w) / 500))
    scale = max(0.4, max(h, w) / 1600)
    for i in range(len(dets)):
        x1, y1, x2, y2 = (round(float(v)) for v in dets.xyxy[i])
        cid = int(dets.class_id[i])
        color = PALETTE[cid]
        cv2.rectangle(out, (x1, y1), (x2, y2), color, t, cv2.LINE_AA)
        text = labels[i] if labels else f"{CLASS_NAMES[cid]} {dets.confidence[i]:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, t - 1))
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y1 + th + base + 2, h - 1)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + 1), color, -1)
        dark = sum(color) > 380
        cv2.putText(
            out,
            text,
            (x1 + 1, ty - base + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0) if dark else (255, 255, 255),
            max(1, t - 1),
            cv2.LINE_AA,
        )
    return out


def blur_boxes(image: np.ndarray, boxes: np.ndarray, strength: float = 0.25) -> np.ndarray:
    """A copy of ``image`` with each xyxy box region strongly blurred (privacy masking)."""
    out = image.copy()
    h, w = out.shape[:2]
    for x1, y1, x2, y2 in np.asarray(boxes, np.float32).reshape(-1, 4):
        xa, ya, xb, yb = max(int(x1), 0), max(int(y1), 0), min(int(np.ceil(x2)), w), min(int(np.ceil(y2)), h)
        if xb - xa < 2 or yb - ya < 2:
            continue
        k = max(3, int(max(xb - xa, yb - ya) * strength) | 1)
        out[ya:yb, xa:xb] = cv2.GaussianBlur(out[ya:yb, xa:xb], (k, k), 0)
    return out
