"""`Sample` and `Issue`: the records every dataset step passes on.

A :class:`Sample` is one image of one source with its labels already mapped onto the product classes
(``boxes``: ``(N, 5)`` rows ``class_id, cx, cy, w, h``, normalised like YOLO label files). Pseudo-labels
are kept apart in ``pseudo`` so the source's own labels are never touched. An :class:`Issue` is one
finding of a check, naming the file (and line) it is about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from models.classes import CLASS_NAMES
from pipeline.files import display_path, safe_stem

Severity = Literal["error", "warning", "info"]
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Issue:
    """One finding: ``error`` means the line or image was dropped, ``warning`` that it was kept or fixed."""

    severity: Severity
    kind: str
    file: str
    message: str
    line: int | None = None
    source: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


def empty_boxes() -> np.ndarray:
    """A ``(0, 5)`` label array."""
    return np.zeros((0, 5), np.float32)


@dataclass
class Sample:
    """One image of one source, with product-class labels."""

    source: str
    image: Path
    split: str | None = None
    boxes: np.ndarray = field(default_factory=empty_boxes)
    labelled: frozenset[int] = frozenset()
    context: list[tuple[str, np.ndarray]] = field(default_factory=list)
    pseudo: np.ndarray = field(default_factory=empty_boxes)
    tags: set[str] = field(default_factory=set)
    width: int = 0
    height: int = 0
    sha256: str = ""
    phash: np.ndarray | None = None
    readable: bool = True
    note: str = ""

    @property
    def key(self) -> str:
        """``source/stem``: unique inside a build, used in reports and output file names (bytes of the
        stem that are not UTF-8 escaped as ``\\xff``)."""
        return f"{self.source}/{display_path(self.image.stem)}"

    @property
    def out_stem(self) -> str:
        """Output file stem in a merged dataset: the source name keeps files of different sources apart."""
        return f"{self.source}__{safe_stem(self.image, unique=True)}"

    def all_boxes(self) -> np.ndarray:
        """Own labels followed by pseudo-labels."""
        return np.concatenate([self.boxes, self.pseudo]) if len(self.pseudo) else self.boxes

    def xyxy(self, boxes: np.ndarray | None = None) -> np.ndarray:
        """Boxes (default: own labels) in pixels, xyxy."""
        return xywhn_to_xyxy(self.boxes if boxes is None else boxes, self.width, self.height)


def xywhn_to_xyxy(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(N, 5)`` YOLO rows -> ``(N, 4)`` pixel xyxy."""
    b = np.asarray(boxes, np.float32).reshape(-1, 5)
    cx, cy, w, h = b[:, 1] * width, b[:, 2] * height, b[:, 3] * width, b[:, 4] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def xyxy_to_xywhn(xyxy: np.ndarray, class_id: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel xyxy boxes and class ids -> ``(N, 5)`` YOLO rows (clipped to the image)."""
    b = np.asarray(xyxy, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    out = np.stack(
        [
            np.asarray(class_id, np.float32).reshape(-1),
            (b[:, 0] + b[:, 2]) / 2 / width,
            (b[:, 1] + b[:, 3]) / 2 / height,
            (b[:, 2] - b[:, 0]) / width,
            (b[:, 3] - b[:, 1]) / height,
        ],
        axis=1,
    )
    return out.astype(np.float32)


def class_counts(boxes: np.ndarray) -> dict[str, int]:
    """Boxes per product class name (only classes present), in product order."""
    ids, counts = np.unique(np.asarray(boxes).reshape(-1, 5)[:, 0].astype(int), return_counts=True)
    found = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    return {CLASS_NAMES[i]: found[i] for i in range(len(CLASS_NAMES)) if i in found}
