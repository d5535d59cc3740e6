"""Pseudo-labels: a COCO teacher adds boxes for classes a source never labelled.

The garbage, facade and vending sets label no people or vehicles, yet their photos are full of them;
trained on those labels alone a model learns that people and cars are background. The teacher (by
default the product's own ONNX :class:`~pipeline.detect.Detector` on the shipped COCO model, or any
ultralytics ``.pt``) finds ``person``, ``car``, ``motorbike`` and ``bicycle``; its boxes above ``conf``
go into ``Sample.pseudo`` -- never into the source's own labels -- and only for classes the sample's
source does not label itself, skipping any box that repeats an existing same-class box.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datasets.mapping import load_mapping
from datasets.samples import Sample, xyxy_to_xywhn
from models.classes import CLASS_IDS, CLASS_NAMES
from models.registry import file_sha256
from pipeline.decode import ImageReadError, read_image
from pipeline.detections import Detections, box_iou
from pipeline.files import atomic_write

PSEUDO_CLASSES = ("person", "car", "motorbike", "bicycle")
#: The teacher's detections are cached at this floor so that any threshold above it needs no rerun.
CACHE_FLOOR = 0.1


class Teacher:
    """A detector whose output is in product classes: the ONNX pipeline (registry name or model folder)
    or an ultralytics ``.pt`` checkpoint (classes mapped with the ``coco`` mapping or by product name)."""

    def __init__(
        self,
        ref: str = "default",
        classes: Sequence[str] = PSEUDO_CLASSES,
        floor: float = CACHE_FLOOR,
        imgsz: int | None = None,
    ):
        self.ref = str(ref)
        self.classes = list(classes)
        self.floor = floor
        self._pt = None
        if self.ref.endswith(".pt"):
            from training import ultra

            path = Path(self.ref)
            self._pt = ultra.yolo(path)
            names = [self._pt.names[i] for i in range(len(self._pt.names))]
            coco = load_mapping("coco")
            mapped = [coco.map.get(n, n if n in CLASS_IDS else None) for n in names]
            self._pt_map = np.array([CLASS_IDS[m] if m else -1 for m in mapped], np.int64)
            self._pt_keep = [i for i, m in enumerate(mapped) if m in self.classes]
            self.imgsz = imgsz or 640
            self.name = path.name
            self.sha256 = file_sha256(path)
        else:
            from pipeline.detect import Detector

            self._det = Detector(model=self.ref, conf=floor, classes=self.classes, imgsz=imgsz)
            self.imgsz = self._det.imgsz
            self.name = self._det.version
            self.sha256 = self._det.ref.card.files["fp32"].sha256

    def describe(self) -> dict[str, object]:
        """What the manifest records about the teacher."""
        return {"teacher": self.ref, "model": self.name, "sha256": self.sha256, "imgsz": self.imgsz}

    def batch_key(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Images batched together must share this key: then each gets the input it would get alone.

        The ONNX detector letterboxes a batch to its largest shape and ultralytics pads mixed shapes to a
        square, so a batch mixing shapes changes the padding, and with it the scores (by ~0.01: enough to
        move a box across the pseudo-label threshold and make a rebuild differ from the first build).
        """
        if self._pt is not None:
            return hw
        from pipeline.detect import rect_shape

        return self._det.fixed_hw or rect_shape(hw, self._det.imgsz, self._det.stride)

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections (product classes, confidence >= floor) per BGR image; see :meth:`batch_key`."""
        if self._pt is None:
            return self._det.detect_batch(list(images))
        out = []
        results = self._pt.predict(
            list(images), conf=self.floor, imgsz=self.imgsz, classes=self._pt_keep, verbose=False
        )
        for r in results:
            b = r.boxes
            cls = self._pt_map[b.cls.cpu().numpy().astype(int)]
            out.append(Detections(b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), cls))
        return out


@dataclass
class PseudoStats:
    """What pseudo-labelling did."""

    images: int = 0
    added: Counter = field(default_factory=Counter)
    skipped_labelled: Counter = field(default_factory=Counter)
    skipped_duplicate: Counter = field(default_factory=Counter)
    skipped_conflict: Counter = field(default_factory=Counter)
    skipped_small: Counter = field(default_factory=Counter)
    by_threshold: dict[float, Counter] = field(default_factory=dict)

    def to_json(self) -> dict:
        """Counts by class name."""
        return {
            "images": self.images,
            "added": dict(self.added),
            "skipped_duplicate": dict(self.skipped_duplicate),
            "skipped_conflict_other_class": dict(self.skipped_conflict),
            "skipped_class_labelled_by_source": dict(self.skipped_labelled),
            "skipped_small": dict(self.skipped_small),
            "thresholds": {f"{t:.2f}": dict(c) for t, c in sorted(self.by_threshold.items())},
        }


class DetectionCache:
    """Teacher detections per image SHA-256 in a JSON file, so rebuilds and threshold studies are instant."""

    def __init__(self, path: Path | None, teacher: Teacher):
        self.path = path
        # "one-shape": detections since batches hold one input shape; older caches depended on batching
        spec = f"{teacher.sha256}:{teacher.imgsz}:{teacher.floor}:{teacher.classes}:one-shape"
        key = hashlib.sha256(spec.encode())
        self.file = path / f"teacher-{key.hexdigest()[:16]}.json" if path else None
        self.data: dict[str, list[list[float]]] = {}
        if self.file and self.file.is_file():
            try:
                self.data = json.loads(self.file.read_text())
            except json.JSONDecodeError:
                self.data = {}

    def get(self, sha: str) -> Detections | None:
        """Cached detections of an image, or None."""
        rows = self.data.get(sha)
        if rows is None:
            return None
        a = np.array(rows, np.float32).reshape(-1, 6)
        return Detections(a[:, 2:], a[:, 1], a[:, 0].astype(np.int64))

    def put(self, sha: str, dets: Detections) -> None:
        """Remember an image's detections."""
        self.data[sha] = [
            [int(c), round(float(s), 4), *(round(float(v), 2) for v in b)]
            for c, s, b in zip(dets.class_id, dets.confidence, dets.xyxy, strict=True)
        ]

    def save(self) -> None:
        """Write the cache file (atomically: a full disk keeps the previous one)."""
        if self.file:
            atomic_write(self.file, json.dumps(self.data))


def rounded(dets: Detections) -> Detections:
    """Detections rounded as :class:`DetectionCache` stores them (boxes 0.01 px, scores 1e-4)."""
    return Detections(
        np.round(dets.xyxy.astype(np.float64), 2), np.round(dets.confidence.astype(np.float64), 4), dets.class_id
    )


def teacher_detections(
    samples: Sequence[Sample],
    teacher: Teacher,
    cache: DetectionCache | None = None,
    batch: int = 8,
    desc: str = "pseudo-labels",
) -> list[Detections | None]:
    """The teacher's detections for each sample (``None`` for unreadable images), cached by image hash."""
    results: list[Detections | None] = [None] * len(samples)
    todo = []
    for i, s in enumerate(samples):
        sha = s.sha256 or file_sha256(s.image)
        s.sha256 = sha
        hit = cache.get(sha) if cache else None
        if hit is not None:
            results[i] = hit
        else:
            todo.append(i)
    # a batch holds one input shape only, so what is cached and what is not never changes a result
    groups: dict[tuple[int, int], list[int]] = {}
    for i in todo:
        hw = (samples[i].height, samples[i].width)
        groups.setdefault(teacher.batch_key(hw) if all(hw) else (-1, i), []).append(i)  # size unknown: alone
    batches = [g[k : k + batch] for _, g in sorted(groups.items()) for k in range(0, len(g), batch)]

    def load(i: int) -> np.ndarray | None:
        try:
            return read_image(samples[i].image)
        except ImageReadError:
            return None

    with ThreadPoolExecutor(max_workers=2) as pool:
        bar = tqdm(total=len(todo), desc=desc, unit="img", file=sys.stderr, disable=len(todo) < 20 or None)
        for n, idx in enumerate(batches):
            images = list(pool.map(load, idx))
            ok = [(i, im) for i, im in zip(idx, images, strict=True) if im is not None]
            for (i, _), dets in zip(ok, teacher.detect([im for _, im in ok]) if ok else [], strict=True):
                results[i] = rounded(dets)  # as the cache keeps them: a rebuild from cache gives the same labels
                if cache:
                    cache.put(samples[i].sha256, results[i])
            bar.update(len(idx))
            if cache and n % 25 == 24:  # keep what is done if the run is stopped
                cache.save()
        bar.close()
    if cache:
        cache.save()
    return results


def add_pseudo_labels(
    samples: Sequence[Sample],
    detections: Sequence[Detections | None],
    conf: float,
    classes: Sequence[str] = PSEUDO_CLASSES,
    duplicate_iou: float = 0.5,
    min_pixels: float = 4.0,
    study: Sequence[float] = (0.25, 0.35, 0.5, 0.65),
    conflict_iou: float = 0.6,
) -> PseudoStats:
    """Put the teacher's boxes above ``conf`` into ``sample.pseudo`` (replacing earlier pseudo-labels).

    A box is skipped when its class is one the sample's source labels itself (``sample.labelled``), when
    it overlaps an own box of the same class with IoU above ``duplicate_iou``, when it covers an own box
    of another class with IoU above ``conflict_iou`` (the teacher calling a heap of bags a car), or when a
    side is under ``min_pixels``. ``study`` thresholds count what each would have added (to justify ``conf``).
    """
    stats = PseudoStats(by_threshold={t: Counter() for t in study})
    wanted = {CLASS_IDS[c] for c in classes}
    for s, dets in zip(samples, detections, strict=True):
        if dets is None:
            continue
        stats.images += 1
        keep_rows = []
        own = s.xyxy()
        for box, score, cid in zip(dets.xyxy, dets.confidence, dets.class_id.tolist(), strict=True):
            name = CLASS_NAMES[cid]
            if cid not in wanted:
                continue
            for t in study:
                if score >= t and cid not in s.labelled:
                    stats.by_threshold[t][name] += 1
            if score < conf:
                continue
            if cid in s.labelled:
                stats.skipped_labelled[name] += 1
                continue
            if min(box[2] - box[0], box[3] - box[1]) < min_pixels:
                stats.skipped_small[name] += 1
                continue
            same_class = s.boxes[:, 0].astype(int) == cid
            iou = box_iou(box[None], own)[0] if len(own) else np.zeros(0, np.float32)
            if (iou[same_class] > duplicate_iou).any():
                stats.skipped_duplicate[name] += 1
                continue
            if (iou[~same_class] > conflict_iou).any():
                stats.skipped_conflict[name] += 1
                continue
            keep_rows.append((box, cid))
            stats.added[name] += 1
        if keep_rows:
            boxes = np.array([b for b, _ in keep_rows], np.float32)
            s.pseudo = xyxy_to_xywhn(boxes, np.array([c for _, c in keep_rows]), s.width, s.height)
        else:
            s.pseudo = np.zeros((0, 5), np.float32)
    return stats
