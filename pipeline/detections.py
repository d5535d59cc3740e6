"""`Detections`: the one type every stage of the pipeline passes on.

Boxes are xyxy in source-image pixels; ``class_id`` indexes :data:`models.classes.CLASS_NAMES`.
``data`` holds free-form per-detection arrays (same length as the boxes), e.g. ``"tile"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.classes import CLASS_IDS, CLASS_NAMES


@dataclass
class Detections:
    """Detections of one image: boxes, scores, class ids, optional track ids and extra data."""

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    tracker_id: np.ndarray | None = None
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        n = len(self.xyxy)
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(n)
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(n)
        if self.tracker_id is not None:
            self.tracker_id = np.asarray(self.tracker_id, dtype=np.int64).reshape(n)
        for key, value in self.data.items():
            value = np.asarray(value)
            if len(value) != n:
                raise ValueError(f"data[{key!r}] has {len(value)} rows for {n} detections")
            self.data[key] = value

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @classmethod
    def merge(cls, parts: Sequence[Detections]) -> Detections:
        """Concatenate several sets (e.g. from tiles); track ids and data kept only if all have them."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        tracker = None
        if all(p.tracker_id is not None for p in parts):
            tracker = np.concatenate([p.tracker_id for p in parts])
        keys = set.intersection(*(set(p.data) for p in parts))
        return cls(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.confidence for p in parts]),
            np.concatenate([p.class_id for p in parts]),
            tracker,
            {k: np.concatenate([p.data[k] for p in parts]) for k in sorted(keys)},
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Any) -> Detections:
        """Select by boolean mask, index array or slice; always returns `Detections`."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(
            self.xyxy[index],
            self.confidence[index],
            self.class_id[index],
            None if self.tracker_id is None else self.tracker_id[index],
            {k: v[index] for k, v in self.data.items()},
        )

    def __iter__(self) -> Iterator[Detections]:
        for i in range(len(self)):
            yield self[i]

    @property
    def class_names(self) -> list[str]:
        """Product class name of each detection."""
        return [CLASS_NAMES[i] for i in self.class_id]

    @property
    def area(self) -> np.ndarray:
        """Box areas in pixels."""
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    @property
    def bottom_center(self) -> np.ndarray:
        """(N, 2) bottom-centre point of each box: where an object stands on the ground."""
        return np.stack([(self.xyxy[:, 0] + self.xyxy[:, 2]) / 2, self.xyxy[:, 3]], axis=1)

    def of_classes(self, names: Sequence[str]) -> Detections:
        """Only the detections of the named product classes."""
        ids = [CLASS_IDS[n] for n in names]
        return self[np.isin(self.class_id, ids)]

    def to_records(self, ndigits: int = 1) -> list[dict[str, Any]]:
        """JSON-ready list: ``{"class", "score", "box"[, "track_id"]}`` per detection."""
        out = []
        for i in range(len(self)):
            rec: dict[str, Any] = {
                "class": CLASS_NAMES[int(self.class_id[i])],
                "score": round(float(self.confidence[i]), 4),
                "box": [round(float(v), ndigits) for v in self.xyxy[i]],
            }
            if self.tracker_id is not None:
                rec["track_id"] = int(self.tracker_id[i])
            out.append(rec)
        return out

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]]) -> Detections:
        """Inverse of :meth:`to_records`."""
        if not records:
            return cls.empty()
        tracks = [r.get("track_id") for r in records]
        return cls(
            np.array([r["box"] for r in records], np.float32),
            np.array([r["score"] for r in records], np.float32),
            np.array([CLASS_IDS[r["class"]] for r in records], np.int64),
            None if any(t is None for t in tracks) else np.array(tracks, np.int64),
        )


def _intersections(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersection areas of (N,4) and (M,4) xyxy boxes, and each side's areas."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter, area_a, area_b


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N,4) and (M,4) xyxy boxes -> (N,M)."""
    inter, area_a, area_b = _intersections(a, b)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def box_ios(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over the smaller box's area -> (N,M)."""
    inter, area_a, area_b = _intersections(a, b)
    return inter / np.maximum(np.minimum(area_a[:, None], area_b[None, :]), 1e-9)
