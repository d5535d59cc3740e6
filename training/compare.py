"""Comparing a candidate model with a baseline before it may replace it: per-class AP deltas on a fixed
evaluation set, the promotion gate, and the detections that changed on field images.

Building blocks:

- :class:`GateConfig` (pydantic): how much AP a class and the mean may lose (default: no class more
  than 2 AP50 points, the mean nothing); :func:`apply_gate` judges two :class:`~training.evaluate.EvalResult`
  with it.
- :func:`detection_changes`: one image's detections of both models matched one-to-one by IoU: what
  appeared, disappeared or changed class.
- :func:`field_changes` / :func:`changes_sheet`: those changes over a set of field images, and a picture
  of them (baseline left, candidate right).
- :func:`split_fingerprint`: the SHA-256 of an evaluation split's images and labels, so a gate verdict
  names exactly the data it was measured on.

:func:`compare` runs it all; :func:`record_gate` writes the verdict into the candidate's model card, where
``streetwatch promote`` looks for it.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from datasets.yolo import label_path_for
from models.classes import CLASS_NAMES
from models.registry import ModelError, ModelRef, file_sha256, now_iso, resolve, write_card
from pipeline.annotate import draw_detections
from pipeline.decode import ImageReadError, read_image
from pipeline.detections import Detections, box_iou
from pipeline.files import read_text
from training.evaluate import EvalResult, ModelInfo, Split, evaluate

#: Where the gate's verdict is kept in the candidate's card (``card.metrics``).
GATE_KEY = "promotion_gate"


class GateConfig(BaseModel):
    """When a candidate may replace the model in force: how much AP it may lose, per class and on average."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["ap50", "ap50_95"] = Field("ap50", description="AP measure the gate compares")
    max_class_drop: float = Field(
        2.0, ge=0, description="Most AP points (0-100 scale) any one class may lose against the baseline"
    )
    max_mean_drop: float = Field(
        0.0, ge=0, description="Most AP points the mean over classes may lose (0: the mean must not drop)"
    )
    min_instances: int = Field(
        1, ge=1, description="Classes with fewer ground-truth boxes in the evaluation set are reported, not gated"
    )


def load_gate(path: str | Path | None, **overrides: float | None) -> GateConfig:
    """A gate config from a YAML file (optional) with non-None keyword overrides; errors name the file."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(read_text(path)) or {}
        except FileNotFoundError:
            raise ValueError(f"{path}: no such gate config file") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a gate config is a mapping of fields")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GateConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{path or 'gate'}: invalid gate config: {exc}") from None


# --------------------------------------------------------------------------------------------- gate


@dataclass
class ClassDelta:
    """One class's AP under both models, in points (0-100)."""

    name: str
    n_gt: int
    baseline: float
    candidate: float
    gated: bool

    @property
    def delta(self) -> float:
        return round(self.candidate - self.baseline, 2)


@dataclass
class GateResult:
    """The gate's verdict: per-class deltas, the mean, and every reason for refusal."""

    config: GateConfig
    classes: list[ClassDelta]
    baseline_mean: float
    candidate_mean: float
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def mean_delta(self) -> float:
        return round(self.candidate_mean - self.baseline_mean, 2)

    def table(self) -> str:
        """Plain-text table of the deltas and the verdict."""
        m = self.config.metric.upper().replace("_", "-")
        lines = [f"{'class':<16} {'n_gt':>5} {'baseline':>9} {'candidate':>9} {'delta':>7}  ({m}, points)"]
        for c in self.classes:
            flag = "" if c.gated else "  (not gated: too few boxes)"
            if c.gated and -c.delta > self.config.max_class_drop:
                flag = "  <- drop over the limit"
            lines.append(f"{c.name:<16} {c.n_gt:>5} {c.baseline:>9.2f} {c.candidate:>9.2f} {c.delta:>+7.2f}{flag}")
        lines.append(
            f"{'mean':<16} {'':>5} {self.baseline_mean:>9.2f} {self.candidate_mean:>9.2f} {self.mean_delta:>+7.2f}"
        )
        verdict = "PASSED" if self.passed else "REFUSED: " + "; ".join(self.failures)
        lines.append(
            f"gate (no class may lose more than {self.config.max_class_drop:g} points, the mean more than "
            f"{self.config.max_mean_drop:g}): {verdict}"
        )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": self.failures,
            "config": self.config.model_dump(),
            "mean": {"baseline": self.baseline_mean, "candidate": self.candidate_mean, "delta": self.mean_delta},
            "classes": {
                c.name: {
                    "n_gt": c.n_gt,
                    "baseline": c.baseline,
                    "candidate": c.candidate,
                    "delta": c.delta,
                    "gated": c.gated,
                }
                for c in self.classes
            },
        }


def apply_gate(baseline: EvalResult, candidate: EvalResult, config: GateConfig | None = None) -> GateResult:
    """Judge ``candidate`` against ``baseline`` (both evaluated on the same split) with the gate ``config``."""
    config = config or GateConfig()
    names = [c for c in CLASS_NAMES if c in baseline.per_class or c in candidate.per_class]
    classes = []
    for name in names:
        b, c = baseline.per_class.get(name, {}), candidate.per_class.get(name, {})
        n_gt = int(b.get("n_gt", c.get("n_gt", 0)))
        classes.append(
            ClassDelta(
                name,
                n_gt,
                round(float(b.get(config.metric, 0.0)) * 100, 2),
                round(float(c.get(config.metric, 0.0)) * 100, 2),
                n_gt >= config.min_instances,
            )
        )
    failures = [
        f"{c.name} lost {-c.delta:.2f} points (allowed {config.max_class_drop:g})"
        for c in classes
        if c.gated and -c.delta > config.max_class_drop + 1e-9
    ]
    if not any(c.gated for c in classes):  # AP 0 against AP 0 is no evidence that the candidate is as good
        boxes = sum(c.n_gt for c in classes)
        failures.append(
            "the evaluation set has no ground truth (no labelled boxes): nothing to judge the candidate on"
            if boxes == 0
            else f"no class reaches min_instances ({config.min_instances} ground-truth boxes; the evaluation set "
            f"has {boxes} in all): nothing to judge the candidate on"
        )
    key = "map50" if config.metric == "ap50" else "map50_95"
    base_mean = round(float(getattr(baseline, key)) * 100, 2)
    cand_mean = round(float(getattr(candidate, key)) * 100, 2)
    if base_mean - cand_mean > config.max_mean_drop + 1e-9:
        failures.append(f"the mean lost {base_mean - cand_mean:.2f} points (allowed {config.max_mean_drop:g})")
    return GateResult(config, classes, base_mean, cand_mean, failures)


# ------------------------------------------------------------------------------------ field changes


@dataclass
class Change:
    """One detection that differs between the models on an image."""

    kind: Literal["new", "gone", "relabelled"]
    box: tuple[float, float, float, float]
    baseline: str | None  # "class score" under the baseline (None: it had nothing there)
    candidate: str | None

    def describe(self) -> str:
        if self.kind == "new":
            return f"+ {self.candidate}"
        if self.kind == "gone":
            return f"- {self.baseline}"
        return f"~ {self.baseline} -> {self.candidate}"


def _label(dets: Detections, i: int) -> str:
    return f"{CLASS_NAMES[int(dets.class_id[i])]} {float(dets.confidence[i]):.2f}"


def _box(dets: Detections, i: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (round(float(v), 1) for v in dets.xyxy[i])
    return (x1, y1, x2, y2)


def detection_changes(baseline: Detections, candidate: Detections, iou: float = 0.5) -> list[Change]:
    """The differences between two detection sets of one image: boxes matched one-to-one (best IoU first,
    at least ``iou``, regardless of class); a matched pair whose class differs is ``relabelled``, an
    unmatched candidate box ``new``, an unmatched baseline box ``gone``."""
    matched_b: set[int] = set()
    matched_c: set[int] = set()
    changes: list[Change] = []
    if len(baseline) and len(candidate):
        ious = box_iou(baseline.xyxy, candidate.xyxy)
        for flat in np.argsort(-ious, axis=None, kind="stable"):
            b, c = divmod(int(flat), ious.shape[1])
            if ious[b, c] < iou:
                break
            if b in matched_b or c in matched_c:
                continue
            matched_b.add(b)
            matched_c.add(c)
            if baseline.class_id[b] != candidate.class_id[c]:
                changes.append(Change("relabelled", _box(candidate, c), _label(baseline, b), _label(candidate, c)))
    for c in range(len(candidate)):
        if c not in matched_c:
            changes.append(Change("new", _box(candidate, c), None, _label(candidate, c)))
    for b in range(len(baseline)):
        if b not in matched_b:
            changes.append(Change("gone", _box(baseline, b), _label(baseline, b), None))
    return changes


@dataclass
class ImageChanges:
    """One field image with both models' detections at the operating confidence and their differences."""

    path: Path
    baseline: Detections
    candidate: Detections
    changes: list[Change]


def field_changes(
    baseline: ModelInfo, candidate: ModelInfo, images: Sequence[Path], conf: float = 0.25, progress: bool = True
) -> tuple[list[ImageChanges], list[str]]:
    """Run both models on every field image (detections at or above ``conf``) and diff them; returns the
    images and the unreadable files (with the reason)."""
    out, unreadable = [], []
    for path in tqdm(images, desc="field images", unit="img", disable=not progress or None, file=sys.stderr):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            unreadable.append(f"{path} ({exc.reason})")
            continue
        b, c = baseline.predict(image), candidate.predict(image)
        b, c = b[b.confidence >= conf], c[c.confidence >= conf]
        out.append(ImageChanges(path, b, c, detection_changes(b, c)))
    return out, unreadable


def changes_sheet(
    items: Sequence[ImageChanges], out: Path, baseline_name: str, candidate_name: str, n: int = 12, side: int = 420
) -> Path | None:
    """A picture of the field images with the most changes: baseline's boxes left, candidate's right
    (the boxes that differ drawn thick). None when no image changed."""
    from datasets.checks import save_sheet

    changed = sorted((i for i in items if i.changes), key=lambda i: -len(i.changes))[:n]
    if not changed:
        return None
    rows = []
    for item in changed:
        try:
            image = read_image(item.path)
        except ImageReadError:
            continue
        halves = []
        for dets, other, title in (
            (item.baseline, item.candidate, baseline_name),
            (item.candidate, item.baseline, candidate_name),
        ):
            differs = _unmatched_or_relabelled(dets, other)
            drawn = draw_detections(image, dets[~differs], thickness=1)
            drawn = draw_detections(drawn, dets[differs], thickness=max(2, round(max(image.shape[:2]) / 250)))
            h, w = drawn.shape[:2]
            scale = side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            drawn = cv2.resize(drawn, size, interpolation=cv2.INTER_AREA)
            tile = np.full((side + 22, side, 3), 255, np.uint8)
            tile[22 : 22 + drawn.shape[0], : drawn.shape[1]] = drawn
            caption = f"{title[:40]}: {len(dets)} boxes"
            cv2.putText(tile, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            halves.append(tile)
        row = np.hstack([halves[0], np.full((side + 22, 8, 3), 255, np.uint8), halves[1]])
        footer = np.full((20, row.shape[1], 3), 255, np.uint8)
        text = f"{item.path.name[:60]}: " + ", ".join(c.describe() for c in item.changes)
        cv2.putText(footer, text[:140], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
        rows.append(np.vstack([row, footer]))
    return save_sheet(rows, out, cols=1) if rows else None


def _unmatched_or_relabelled(dets: Detections, other: Detections, iou: float = 0.5) -> np.ndarray:
    """Which of ``dets`` have no same-class box in ``other`` at ``iou`` (what the other model lacks)."""
    if not len(dets):
        return np.zeros(0, bool)
    if not len(other):
        return np.ones(len(dets), bool)
    ious = box_iou(dets.xyxy, other.xyxy) * (dets.class_id[:, None] == other.class_id[None, :])
    return ious.max(1) < iou


# ---------------------------------------------------------------------------------------- compare


def split_fingerprint(split: Split) -> str:
    """SHA-256 over the split's image and label files (names and contents): equal means the same eval set."""
    h = hashlib.sha256()
    for item in sorted(split.images, key=lambda i: str(i.path)):
        label = label_path_for(item.path)
        h.update(f"{item.path.name} {file_sha256(item.path)}\n".encode())
        h.update(f"{label.name} {file_sha256(label) if label.is_file() else '-'}\n".encode())
    return h.hexdigest()


@dataclass
class Comparison:
    """Everything ``streetwatch compare`` found."""

    baseline: EvalResult
    candidate: EvalResult
    gate: GateResult
    data: str
    split: str
    fingerprint: str
    field_items: list[ImageChanges] = field(default_factory=list)
    field_unreadable: list[str] = field(default_factory=list)
    conf: float = 0.25

    def field_summary(self) -> dict[str, int]:
        """Images looked at, images that changed, and boxes new / gone / relabelled."""
        kinds = [c.kind for i in self.field_items for c in i.changes]
        return {
            "images": len(self.field_items),
            "changed_images": sum(bool(i.changes) for i in self.field_items),
            "new": kinds.count("new"),
            "gone": kinds.count("gone"),
            "relabelled": kinds.count("relabelled"),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "at": now_iso(),
            "baseline": self.baseline.to_json(),
            "candidate": self.candidate.to_json(),
            "data": self.data,
            "split": self.split,
            "images": self.baseline.images,
            "fingerprint": self.fingerprint,
            "gate": self.gate.to_json(),
            "field": {
                "conf": self.conf,
                **self.field_summary(),
                "unreadable": self.field_unreadable,
                "changes": [
                    {"image": str(i.path), "changes": [c.__dict__ for c in i.changes]}
                    for i in self.field_items
                    if i.changes
                ],
            },
        }


def compare(
    baseline: ModelInfo,
    candidate: ModelInfo,
    split: Split,
    data_name: str,
    gate: GateConfig | None = None,
    field_images: Sequence[Path] = (),
    conf: float = 0.25,
    progress: bool = True,
) -> Comparison:
    """Evaluate both models on ``split``, judge the candidate with the gate, diff them on ``field_images``."""
    base = evaluate(baseline, split, data_name, progress=progress)
    cand = evaluate(candidate, split, data_name, progress=progress)
    verdict = apply_gate(base, cand, gate)
    lost = [c for c in baseline.classes if c not in candidate.classes]
    if lost:  # whatever the split holds: the cameras and audits rely on every class the baseline detects
        verdict.failures.append(f"cannot detect {', '.join(lost)}, which the baseline detects")
    result = Comparison(base, cand, verdict, data_name, split.name, split_fingerprint(split))
    result.conf = conf
    if field_images:
        result.field_items, result.field_unreadable = field_changes(baseline, candidate, field_images, conf, progress)
    return result


def model_ref(ref: str) -> ModelRef | None:
    """The registry model / model folder a model reference names (None for a bare checkpoint or ONNX file)."""
    try:
        return resolve(ref)
    except (ModelError, ValueError):
        return None


def gate_record(result: Comparison, baseline: ModelRef) -> dict[str, Any]:
    """What the candidate's card keeps of a comparison: against which baseline, on which data, the verdict."""
    return {
        "at": now_iso(),
        "baseline": {"name": baseline.card.name, "version": baseline.card.version},
        "data": result.data,
        "split": result.split,
        "images": result.baseline.images,
        "fingerprint": result.fingerprint,
        **result.gate.to_json(),
    }


def record_gate(candidate: ModelRef, record: dict[str, Any]) -> None:
    """Keep the gate's verdict in the candidate's card (``metrics.promotion_gate``), for ``promote``."""
    candidate.card.metrics[GATE_KEY] = record
    write_card(candidate.folder, candidate.card)
