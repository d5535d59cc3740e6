"""Evaluating a detector on a labelled YOLO dataset: COCO-style AP as ultralytics computes it.

Building blocks, each small and testable on hand-made cases:

- :func:`match_detections`: which detections are true positives at the 10 IoU thresholds 0.50:0.95
  (greedy, by descending confidence, each ground-truth box claimed once per threshold — ultralytics'
  ``DetectionValidator.match_predictions``).
- :func:`average_precision`: COCO's 101-point AP from a recall/precision curve (pycocotools). ultralytics'
  ``compute_ap`` integrates the same envelope with the trapezoid rule and a sentinel that makes a perfect
  class read 0.995; the two agree within 0.005 on a class.
- :func:`ap_per_class`: AP at each threshold, and precision/recall at the confidence that maximises the
  mean F1 over classes (ultralytics' ``ap_per_class``), for the classes that have ground truth.
- :func:`confusion_matrix`: class-agnostic one-to-one matching at an operating confidence. :func:`evaluate`
  builds it, like the AP table and the error breakdown, over the classes that have ground truth in the split.
- :func:`error_breakdown`: at that confidence, why each box of a class is missed and each detection is
  false (a group boxed as one, a box misplaced, another class, nothing there), in the spirit of TIDE.

:func:`load_split` reads a dataset split (data.yaml ``val``/``train``/``test`` or a list file) through the
dataset tools' YOLO reader (:mod:`datasets.yolo`), with its classes mapped onto product classes;
:func:`make_predictor` runs any model the product can run (a registry model, model folder or ONNX file
through :class:`pipeline.detect.Detector`, or an ultralytics ``.pt``); :func:`evaluate` puts them
together into an :class:`EvalResult`.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from datasets.mapping import ClassMapping, identity_mapping
from datasets.yolo import DataYaml, entry_images, label_path_for, load_data_yaml, read_label_file
from models.classes import CLASS_IDS, CLASS_NAMES
from pipeline.decode import ImageReadError, read_image
from pipeline.detections import Detections, box_ios, box_iou
from pipeline.files import atomic_write, write_figure

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
EVAL_CONF = 0.001  # like ultralytics val: the whole precision/recall curve
EVAL_MAX_DET = 300
_AP_X = np.linspace(0, 1, 101)


class DatasetError(ValueError):
    """A dataset cannot be read; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------- maths


def match_detections(
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    det_boxes: np.ndarray,
    det_classes: np.ndarray,
    thresholds: np.ndarray = IOU_THRESHOLDS,
) -> np.ndarray:
    """(N, T) bool: detection i (in the given order, which must be descending confidence) is a true
    positive at IoU threshold t. Each ground-truth box is claimed by at most one detection per threshold;
    a detection takes the unclaimed same-class box it overlaps most."""
    return _greedy_match(gt_boxes, gt_classes, det_boxes, det_classes, thresholds)[0]


def _greedy_match(
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    det_boxes: np.ndarray,
    det_classes: np.ndarray,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`match_detections`' (N, T) ``correct`` and the (M, T) ground-truth boxes it ``claimed``."""
    correct = np.zeros((len(det_boxes), len(thresholds)), bool)
    claimed = np.zeros((len(gt_boxes), len(thresholds)), bool)
    if not len(gt_boxes) or not len(det_boxes):
        return correct, claimed
    iou = box_iou(np.asarray(gt_boxes, np.float32), np.asarray(det_boxes, np.float32)).astype(np.float64)
    iou *= np.asarray(gt_classes)[:, None] == np.asarray(det_classes)[None, :]
    cols = np.arange(len(thresholds))
    for j in np.flatnonzero((iou >= thresholds.min()).any(0)):
        available = np.where(claimed, 0.0, iou[:, j, None])  # (M, T): IoU with boxes still unclaimed
        best = available.argmax(0)
        correct[j] = available[best, cols] >= thresholds
        claimed[best, cols] |= correct[j]
    return correct, claimed


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO 101-point AP (pycocotools): the mean, over recall thresholds 0, 0.01, ..., 1, of the best
    precision reached at that recall or beyond (0 beyond the highest recall). ``recall`` and
    ``precision`` are the cumulative curves over detections in descending confidence."""
    if not len(recall):
        return 0.0
    envelope = np.flip(np.maximum.accumulate(np.flip(np.asarray(precision, np.float64))))
    first = np.searchsorted(recall, _AP_X, side="left")  # first detection reaching each recall threshold
    reached = first < len(recall)
    return float(np.where(reached, envelope[np.minimum(first, len(recall) - 1)], 0.0).mean())


def _smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter smoothing (width: fraction ``f`` of the length), as ultralytics smooths the F1 curve."""
    nf = round(len(y) * f * 2) // 2 + 1
    p = np.ones(nf // 2)
    return np.convolve(np.concatenate((p * y[0], y, p * y[-1])), np.ones(nf) / nf, mode="valid")


@dataclass
class ClassAP:
    """Average precision of all classes that have ground truth."""

    classes: np.ndarray  # class ids with ground truth, ascending
    ap: np.ndarray  # (C, T) AP at each IoU threshold
    precision: np.ndarray  # (C,) at the max-mean-F1 confidence
    recall: np.ndarray  # (C,)
    n_gt: np.ndarray  # (C,)
    conf: float  # the max-mean-F1 confidence

    @property
    def ap50(self) -> np.ndarray:
        return self.ap[:, 0]

    @property
    def ap50_95(self) -> np.ndarray:
        return self.ap.mean(1)


def ap_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, eps: float = 1e-16
) -> ClassAP:
    """AP per class with ground truth, from every detection's TP flags (N, T), confidence and class."""
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_gt = np.unique(target_cls, return_counts=True)
    x = np.linspace(0, 1, 1000)
    ap = np.zeros((len(classes), tp.shape[1]))
    p_curve, r_curve = np.zeros((len(classes), 1000)), np.zeros((len(classes), 1000))
    for ci, c in enumerate(classes):
        mine = pred_cls == c
        if not mine.any():
            continue
        tpc = tp[mine].cumsum(0)
        fpc = (1 - tp[mine]).cumsum(0)
        recall = tpc / (n_gt[ci] + eps)
        precision = tpc / (tpc + fpc)
        r_curve[ci] = np.interp(-x, -conf[mine], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-x, -conf[mine], precision[:, 0], left=1)
        for t in range(tp.shape[1]):
            ap[ci, t] = average_precision(recall[:, t], precision[:, t])
    f1 = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    i = int(_smooth(f1.mean(0), 0.1).argmax()) if len(classes) else 0
    return ClassAP(classes.astype(int), ap, p_curve[:, i], r_curve[:, i], n_gt, float(x[i]))


def confusion_matrix(
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    dets: Detections,
    classes: Sequence[int],
    conf: float = 0.25,
    iou: float = 0.5,
) -> np.ndarray:
    """(K+1, K+1) counts, rows = predicted, columns = true, last row/column = background, over the
    product class ids ``classes``; detections above ``conf`` are matched one-to-one to ground truth
    regardless of class at IoU ``iou`` (0.5, as AP50 and the error breakdown), best IoU first by descending
    confidence."""
    k = len(classes)
    index = {c: i for i, c in enumerate(classes)}
    m = np.zeros((k + 1, k + 1), np.int64)
    keep = (dets.confidence > conf) & np.isin(dets.class_id, list(classes))
    boxes, scores, pred = dets.xyxy[keep], dets.confidence[keep], dets.class_id[keep]
    gt_match = np.full(len(gt_boxes), -1)
    if len(gt_boxes) and len(boxes):
        ious = box_iou(np.asarray(gt_boxes, np.float32), boxes)
        for j in np.argsort(-scores, kind="stable"):
            g = int(ious[:, j].argmax())
            if ious[g, j] > iou:
                gt_match[g] = j
                ious[g] = 0
    matched = set(gt_match[gt_match >= 0].tolist())
    for g, c in enumerate(gt_classes):
        j = gt_match[g]
        m[index[int(pred[j])] if j >= 0 else k, index[int(c)]] += 1
    for j in range(len(boxes)):
        if j not in matched:
            m[index[int(pred[j])], k] += 1
    return m


#: Where a ground-truth box that no detection matched went (first that applies).
MISS_KINDS = ("grouped", "mislocated", "other_class", "no_detection")
#: What an unmatched detection is (first that applies).
FALSE_KINDS = ("grouping", "mislocated", "other_class", "background")


def error_breakdown(
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    dets: Detections,
    classes: Sequence[int],
    conf: float = 0.25,
    totals: dict[int, dict[str, Any]] | None = None,
) -> dict[int, dict[str, Any]]:
    """Per product class id: ``n_gt``, the boxes ``found`` at IoU 0.5 and ``conf`` (matched by
    :func:`match_detections`), and why the rest fail; added into ``totals`` (an earlier result) if given.

    ``misses`` counts the boxes no detection matched: ``grouped`` when 80 % of the box lies inside a
    detection of its class at least twice its size (the model boxed a group, the labels its parts),
    ``mislocated`` when one overlaps it at IoU 0.1-0.5, ``other_class`` when a detection of another class
    covers it at IoU 0.5, else ``no_detection``. ``false`` counts the unmatched detections: ``grouping``
    when one holds 80 % of two or more boxes of its class, ``mislocated`` at IoU 0.1-0.5 with one,
    ``other_class`` at IoU 0.5 with a box of another class, else ``background``.
    """
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    gt_classes = np.asarray(gt_classes, np.int64)
    keep = dets.confidence >= conf
    order = np.argsort(-dets.confidence[keep], kind="stable")
    boxes, pred = dets.xyxy[keep][order], dets.class_id[keep][order]
    iou, ios = box_iou(gt_boxes, boxes), box_ios(gt_boxes, boxes)
    gt_area = np.prod(gt_boxes[:, 2:] - gt_boxes[:, :2], axis=1)
    det_area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    inside = (ios >= 0.8) & (det_area[None, :] >= gt_area[:, None])  # (G, D): the box lies in the detection
    same = gt_classes[:, None] == pred[None, :]
    matched, claimed = (m[:, 0] for m in _greedy_match(gt_boxes, gt_classes, boxes, pred, np.array([0.5])))
    out = totals
    if out is None:
        empty = {"n_gt": 0, "found": 0, "misses": dict.fromkeys(MISS_KINDS, 0), "false": dict.fromkeys(FALSE_KINDS, 0)}
        out = {int(c): copy.deepcopy(empty) for c in classes}
    for g, c in enumerate(gt_classes.tolist()):
        if c not in out:
            continue
        out[c]["n_gt"] += 1
        if claimed[g]:
            out[c]["found"] += 1
            continue
        if (inside[g] & same[g] & (det_area >= 2 * gt_area[g])).any():
            kind = "grouped"
        elif ((iou[g] > 0.1) & same[g]).any():
            kind = "mislocated"
        elif ((iou[g] >= 0.5) & ~same[g]).any():
            kind = "other_class"
        else:
            kind = "no_detection"
        out[c]["misses"][kind] += 1
    for j in np.flatnonzero(~matched):
        c = int(pred[j])
        if c not in out:
            continue
        if (inside[:, j] & same[:, j]).sum() >= 2:
            kind = "grouping"
        elif ((iou[:, j] > 0.1) & same[:, j]).any():
            kind = "mislocated"
        elif ((iou[:, j] >= 0.5) & ~same[:, j]).any():
            kind = "other_class"
        else:
            kind = "background"
        out[c]["false"][kind] += 1
    return out


# ------------------------------------------------------------------------------------------- dataset


@dataclass
class LabelledImage:
    """One image of a split with its ground truth in product class ids (boxes normalised xywh)."""

    path: Path
    classes: np.ndarray
    xywhn: np.ndarray

    def boxes(self, width: int, height: int) -> np.ndarray:
        """Ground-truth boxes in pixels (xyxy) for the decoded image size."""
        x, y, w, h = self.xywhn.T
        return np.stack([(x - w / 2) * width, (y - h / 2) * height, (x + w / 2) * width, (y + h / 2) * height], 1)


@dataclass
class Split:
    """A labelled split: images, the dataset's class names and which product classes the mapping can label."""

    name: str
    images: list[LabelledImage]
    names: list[str]
    mapped: list[int]  # product class ids the mapping produces (ascending)


#: Label problems that make a split unusable for evaluation (other findings drop or fix one box, as in training).
FATAL_LABEL_ISSUES = ("not_a_number", "unknown_class", "wrong_arity", "unreadable_labels")


def dataset_yaml(data: Path) -> DataYaml:
    """A dataset's data.yaml (:func:`datasets.yolo.load_data_yaml`); every problem is a :class:`DatasetError`."""
    try:
        return load_data_yaml(data)
    except FileNotFoundError:
        raise DatasetError(f"{data}: no such dataset file") from None
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


def split_images(spec: DataYaml, split: str) -> list[Path]:
    """Image paths of a split: a data.yaml key (folder, list file or a list of them) or a list file path
    (relative to the dataset root, or to the working directory)."""
    try:
        if spec.has_split(split):
            images = spec.split_images(split)
        elif (spec.root / split).is_file():
            images = entry_images(spec.root, split, spec.file)
        elif Path(split).is_file():  # a list file named on the command line, relative to the working dir
            images = entry_images(spec.root, str(Path(split).resolve()), spec.file)
        else:
            keys = [k for k in ("train", "val", "test") if spec.has_split(k)]
            raise DatasetError(f"{spec.file}: no split {split!r} (splits: {', '.join(keys)}; or give a list file)")
    except FileNotFoundError as exc:
        raise DatasetError(str(exc)) from None
    if not images:
        raise DatasetError(f"{spec.file}: split {split!r} has no images")
    return images


def read_labels(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(class ids, normalised xywh) of a YOLO label file, read as the dataset tools read it (a missing file
    means no objects); a line that is not a box of a known class is a :class:`DatasetError`."""
    rows, issues = read_label_file(path, n_classes)
    for issue in issues:
        if issue.severity == "error" and issue.kind in FATAL_LABEL_ISSUES:
            where = f"{issue.file}:{issue.line}" if issue.line else issue.file
            raise DatasetError(f"{where}: bad box: {issue.message}")
    return rows[:, 0].astype(np.int64), rows[:, 1:5].astype(np.float32)


def load_split(data: Path | str, split: str = "val", mapping: ClassMapping | None = None) -> Split:
    """A dataset split with labels mapped onto product classes (classes mapped to nothing dropped)."""
    data = Path(data)
    spec = dataset_yaml(data)
    names = spec.names
    mapping = mapping or identity_mapping()
    id_map = mapping.id_map(names)
    foreign = [n for n in names if n not in CLASS_IDS]
    if mapping.name == identity_mapping().name and foreign and id_map:  # part of the labels would vanish unsaid
        raise DatasetError(
            f"{data}: classes {', '.join(foreign)} are not product classes, so their boxes would be left out; "
            "pass --map NAME|FILE, a mapping that maps or drops them (streetwatch data mappings lists the shipped ones)"
        )
    if not id_map:
        raise DatasetError(
            f"{data}: none of its classes ({', '.join(names)}) maps onto a product class with mapping "
            f"{mapping.name!r}; pass --map"
        )
    lut = np.full(len(names), -1, np.int64)
    for src, dst in id_map.items():
        lut[src] = dst
    images = []
    for path in split_images(spec, split):
        cls, xywh = read_labels(label_path_for(path), len(names))
        product = lut[cls]
        keep = product >= 0
        images.append(LabelledImage(path, product[keep], xywh[keep]))
    return Split(split, images, names, sorted(set(id_map.values())))


# ----------------------------------------------------------------------------------------- predictors

Predictor = Callable[[np.ndarray], Detections]


@dataclass
class ModelInfo:
    """What is being evaluated: a name for reports, and a predictor returning product-class detections."""

    name: str
    predict: Predictor
    imgsz: int
    classes: list[str] = field(default_factory=list)  # the product classes it can detect


def make_predictor(
    model: str,
    variant: str = "fp32",
    imgsz: int | None = None,
    tile: bool = False,
    model_map: ClassMapping | None = None,
) -> ModelInfo:
    """A predictor for a registry model / model folder / ONNX file (the product's own detector), or for
    an ultralytics ``.pt`` checkpoint (ultralytics predict), at evaluation settings (conf 0.001, 300 boxes)."""
    from pipeline.detect import Detector, DetectorConfig, TileConfig

    if Path(model).suffix == ".pt":
        return _pt_predictor(Path(model), imgsz, model_map)
    detector = Detector(
        DetectorConfig(
            model=model,
            variant=variant,
            imgsz=imgsz,
            conf=EVAL_CONF,
            max_det=EVAL_MAX_DET,
            tile=TileConfig(enabled=tile),
        )
    )
    return ModelInfo(detector.version, detector.detect, detector.imgsz, detector.product_classes)


def _pt_predictor(pt: Path, imgsz: int | None, model_map: ClassMapping | None) -> ModelInfo:
    """ultralytics predict on a checkpoint; outputs mapped onto product classes by the model folder's card
    (when the .pt belongs to one), ``model_map``, or by name (identity)."""
    from models.registry import ModelError, resolve
    from training import ultra

    if not pt.is_file():
        raise FileNotFoundError(f"{pt}: no such weights file")
    yolo = ultra.yolo(pt)
    names = [yolo.names[i] for i in range(len(yolo.names))]
    class_map = None
    if model_map is None:
        try:
            card = resolve(pt).card
            if card.names == names:
                class_map, imgsz = card.class_map, imgsz or card.imgsz
        except ModelError:
            pass
    if class_map is None:
        class_map = (model_map or identity_mapping()).class_map(names)
    if not any(class_map):
        raise ValueError(f"{pt}: none of its classes ({', '.join(names[:6])}...) is a product class; pass --model-map")
    lut = np.array([CLASS_IDS[c] if c else -1 for c in class_map], np.int64)
    size = imgsz or int(yolo.overrides.get("imgsz") or 640)

    def predict(image: np.ndarray) -> Detections:
        r = yolo.predict(image, imgsz=size, conf=EVAL_CONF, iou=0.7, max_det=EVAL_MAX_DET, verbose=False)[0]
        b = r.boxes
        cls = lut[b.cls.cpu().numpy().astype(np.int64)]
        keep = cls >= 0
        return Detections(b.xyxy.cpu().numpy()[keep], b.conf.cpu().numpy()[keep], cls[keep])

    return ModelInfo(str(pt), predict, size, [c for c in CLASS_NAMES if c in class_map])


# ------------------------------------------------------------------------------------------- evaluate


@dataclass
class EvalResult:
    """Metrics of one model on one dataset split."""

    model: str
    data: str
    split: str
    images: int
    map50: float
    map50_95: float
    per_class: dict[str, dict[str, float | int]]
    confusion: np.ndarray
    confusion_classes: list[str]
    f1_conf: float
    confusion_conf: float = 0.25
    unreadable: list[str] = field(default_factory=list)
    image_level: dict[str, Any] | None = None
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)  # error_breakdown at confusion_conf, per class

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` report: model, mAP50, mAP50-95 and per-class figures over classes with ground truth
        (plus ``image_level`` when it was asked for)."""
        out = {"model": self.model, "map50": self.map50, "map50_95": self.map50_95, "per_class": self.per_class}
        if self.image_level is not None:
            out["image_level"] = self.image_level
        return out

    def table(self) -> str:
        """A plain-text table of the per-class figures."""
        lines = [
            f"{self.model} on {self.data} [{self.split}], {self.images} images",
            f"{'class':<16} {'n_gt':>6} {'P':>6} {'R':>6} {'AP50':>6} {'AP50-95':>8}",
        ]
        for name, m in self.per_class.items():
            lines.append(
                f"{name:<16} {m['n_gt']:>6} {m['precision']:>6.3f} {m['recall']:>6.3f} "
                f"{m['ap50']:>6.3f} {m['ap50_95']:>8.3f}"
            )
        lines.append(
            f"{'all':<16} {sum(m['n_gt'] for m in self.per_class.values()):>6} "
            f"{'':>6} {'':>6} {self.map50:>6.3f} {self.map50_95:>8.3f}"
        )
        lines.append(f"(P and R at confidence {self.f1_conf:.3f}, where mean F1 is highest)")
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} unreadable images skipped: {', '.join(self.unreadable[:5])}")
        if self.errors:
            lines.append(f"at confidence {self.confusion_conf}, IoU 0.5: found, and why the rest fail")
            for name, e in self.errors.items():
                misses = ", ".join(f"{k} {v}" for k, v in e["misses"].items())
                false = ", ".join(f"{k} {v}" for k, v in e["false"].items())
                lines.append(f"  {name}: found {e['found']}/{e['n_gt']}; missed: {misses}; false: {false}")
        if self.image_level is not None:
            il = self.image_level
            lines.append(
                f"image level ({' or '.join(il['classes'])} at confidence >= {il['conf']}): recall "
                f"{il['found']}/{il['positives']} = {il['recall']:.2f} of images that show them; false alarms on "
                f"{il['false_alarms']}/{il['negatives']} images that do not"
            )
        return "\n".join(lines)


def evaluate(
    model: ModelInfo,
    split: Split,
    data_name: str = "",
    confusion_conf: float = 0.25,
    progress: bool = True,
    image_level: Sequence[str] | None = None,
    operating_conf: float = 0.25,
) -> EvalResult:
    """Run ``model`` on every image of ``split`` and compute COCO-style AP per product class.

    With ``image_level`` (product class names), also the image-level view an inspector has: of the images
    whose labels show one of those classes, how many get at least one detection of them at
    ``operating_conf`` (recall), and how many of the other images do (false alarms).
    """
    level_ids = np.array([CLASS_IDS[c] for c in image_level or ()], np.int64)
    level = {"found": [], "missed": [], "alarms": [], "quiet": []}
    tps, confs, preds, targets = [], [], [], []
    operating: list[tuple[np.ndarray, np.ndarray, Detections]] = []  # per image: gt, its classes, dets >= conf
    unreadable = []
    mapped = np.asarray(split.mapped)
    for item in tqdm(split.images, desc="evaluate", unit="img", disable=not progress or None, file=sys.stderr):
        try:
            image = read_image(item.path)
        except ImageReadError as exc:
            unreadable.append(f"{item.path} ({exc.reason})")
            continue
        h, w = image.shape[:2]
        gt = item.boxes(w, h)
        dets = model.predict(image)
        dets = dets[np.isin(dets.class_id, mapped)]  # the dataset cannot label other classes
        dets = dets[np.argsort(-dets.confidence, kind="stable")]
        tps.append(match_detections(gt, item.classes, dets.xyxy, dets.class_id))
        confs.append(dets.confidence)
        preds.append(dets.class_id)
        targets.append(item.classes)
        operating.append((gt, item.classes, dets[dets.confidence >= confusion_conf]))
        if image_level:
            shows = bool(np.isin(item.classes, level_ids).any())
            flagged = bool((np.isin(dets.class_id, level_ids) & (dets.confidence >= operating_conf)).any())
            level[("found" if flagged else "missed") if shows else ("alarms" if flagged else "quiet")].append(
                item.path.name
            )
    if not targets:
        raise DatasetError(f"{data_name}: no readable images in split {split.name!r}")
    result = ap_per_class(
        np.concatenate(tps) if tps else np.zeros((0, 10), bool),
        np.concatenate(confs),
        np.concatenate(preds),
        np.concatenate(targets),
    )
    per_class = {
        CLASS_NAMES[c]: {
            "ap50": round(float(result.ap50[i]), 4),
            "ap50_95": round(float(result.ap50_95[i]), 4),
            "precision": round(float(result.precision[i]), 4),
            "recall": round(float(result.recall[i]), 4),
            "n_gt": int(result.n_gt[i]),
        }
        for i, c in enumerate(result.classes)
    }
    has_gt = len(result.classes) > 0
    confusion, errors = _operating_errors(operating, result.classes.tolist(), confusion_conf)
    return EvalResult(
        model=model.name,
        data=data_name,
        split=split.name,
        images=len(targets),
        map50=round(float(result.ap50.mean()), 4) if has_gt else 0.0,
        map50_95=round(float(result.ap50_95.mean()), 4) if has_gt else 0.0,
        per_class=per_class,
        confusion=confusion,
        confusion_classes=[CLASS_NAMES[c] for c in result.classes],
        f1_conf=result.conf,
        confusion_conf=confusion_conf,
        unreadable=unreadable,
        image_level=_image_level_summary(level, image_level, operating_conf) if image_level else None,
        errors={CLASS_NAMES[c]: e for c, e in errors.items()},
    )


def _operating_errors(
    operating: Sequence[tuple[np.ndarray, np.ndarray, Detections]], labelled: list[int], conf: float
) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
    """Confusion matrix and error breakdown at ``conf`` over the classes with ground truth in the split
    (``labelled``, as the AP table): a split whose labels never show a class it lists cannot tell a
    detection of that class right from wrong, so such detections count nowhere, as in AP."""
    confusion = np.zeros((len(labelled) + 1,) * 2, np.int64)
    errors: dict[int, dict[str, Any]] | None = None
    for gt, classes, dets in operating:
        dets = dets[np.isin(dets.class_id, labelled)]
        confusion += confusion_matrix(gt, classes, dets, labelled, conf=conf)
        errors = error_breakdown(gt, classes, dets, labelled, conf=conf, totals=errors)
    return confusion, errors or {}


def _image_level_summary(level: dict[str, list[str]], classes: Sequence[str], conf: float) -> dict[str, Any]:
    """Counts, rates and the file names behind them, for the report."""
    positives = len(level["found"]) + len(level["missed"])
    negatives = len(level["alarms"]) + len(level["quiet"])
    return {
        "classes": list(classes),
        "conf": conf,
        "positives": positives,
        "found": len(level["found"]),
        "recall": round(len(level["found"]) / positives, 4) if positives else None,
        "negatives": negatives,
        "false_alarms": len(level["alarms"]),
        "false_alarm_rate": round(len(level["alarms"]) / negatives, 4) if negatives else None,
        "missed_files": sorted(level["missed"]),
        "false_alarm_files": sorted(level["alarms"]),
    }


def plot_confusion(result: EvalResult, out: Path) -> Path:
    """Write the confusion matrix (columns normalised per true class, counts printed) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*result.confusion_classes, "background"]
    m = result.confusion.astype(np.float64)
    norm = m / np.maximum(m.sum(0, keepdims=True), 1)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.1 * n + 3, 1.0 * n + 2.5), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    f"{int(m[i, j])}\n{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("true class")
    ax.set_ylabel("predicted class")
    where = f"{result.data} [{result.split}], confidence > {result.confusion_conf}, IoU ≥ 0.5"
    ax.set_title(f"{result.model}\n{where}", fontsize=9)
    fig.tight_layout()
    write_figure(out, fig)  # a full disk leaves no truncated picture
    plt.close(fig)
    return out


def write_report(result: EvalResult, path: Path) -> Path:
    """The JSON report plus confusion matrix and context, for keeping beside the plot."""
    body = {
        **result.to_json(),
        "data": result.data,
        "split": result.split,
        "images": result.images,
        "f1_conf": result.f1_conf,
        "confusion": {"classes": [*result.confusion_classes, "background"], "matrix": result.confusion.tolist()},
        "errors": {"conf": result.confusion_conf, "iou": 0.5, "per_class": result.errors},
        "unreadable": result.unreadable,
    }
    atomic_write(path, json.dumps(body, indent=1, ensure_ascii=False) + "\n")  # complete, or not there
    return path
