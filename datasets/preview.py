"""Contact sheets of a built dataset: random images with their labels drawn (pseudo-labels marked ``*``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from datasets.checks import save_sheet
from datasets.samples import xywhn_to_xyxy
from datasets.yolo import read_label_file
from models.classes import CLASS_NAMES
from pipeline.annotate import draw_detections
from pipeline.decode import IMAGE_SUFFIXES, ImageReadError, read_image
from pipeline.detections import Detections

PSEUDO_INDEX = "pseudo.json"


def label_sheet(
    root: Path,
    split: str,
    out: Path,
    n: int = 24,
    rng: np.random.Generator | None = None,
    source: str | None = None,
    side: int = 360,
    cols: int = 4,
) -> Path | None:
    """Draw ``n`` random images of ``split`` (optionally of one ``source``) with their labels; own labels are
    named by class, pseudo-labels (listed in ``pseudo.json``) get a ``*``. Returns the sheet path."""
    if n < 1:
        raise ValueError(f"a contact sheet needs at least 1 image, not {n}")
    rng = rng or np.random.default_rng(0)
    images = sorted(p for p in (root / "images" / split).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if source:
        images = [p for p in images if p.name.startswith(f"{source}__")]
    if not images:
        return None
    pseudo = json.loads((root / PSEUDO_INDEX).read_text()) if (root / PSEUDO_INDEX).is_file() else {}
    tiles = []
    for k in sorted(rng.choice(len(images), min(n, len(images)), replace=False)):
        path = images[int(k)]
        try:
            image = read_image(path)
        except ImageReadError:
            continue
        rel = f"labels/{split}/{path.stem}.txt"
        rows, _ = read_label_file(root / rel, len(CLASS_NAMES))
        n_pseudo = int(pseudo.get(rel, 0))
        h, w = image.shape[:2]
        dets = Detections(xywhn_to_xyxy(rows, w, h), np.ones(len(rows)), rows[:, 0].astype(int))
        names = [CLASS_NAMES[int(c)] + ("*" if i >= len(rows) - n_pseudo else "") for i, c in enumerate(rows[:, 0])]
        drawn = draw_detections(image, dets, labels=names)
        scale = side / max(h, w)
        drawn = cv2.resize(drawn, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        tile = np.full((side, side, 3), 255, np.uint8)
        tile[: drawn.shape[0], : drawn.shape[1]] = drawn
        cv2.putText(tile, path.stem[:48], (4, side - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    return save_sheet(tiles, out, cols=cols) if tiles else None
