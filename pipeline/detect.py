"""The ONNX detector: letterbox as ultralytics does, one onnxruntime call per batch, numpy NMS.

Building blocks (:func:`letterbox`, :func:`nms`, :func:`merge_tiles`, :func:`make_tiles`) are small
and explicit; :class:`DetectorConfig` + :func:`build_detector` assemble them from configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.classes import CLASS_IDS, CLASS_NAMES
from models.registry import ModelError, ModelRef, resolve
from pipeline.detections import Detections, box_ios

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


class TileConfig(BaseModel):
    """Sliced inference for small objects in large images."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Run sliced inference (tiles plus one full-image pass)")
    size: int | None = Field(None, ge=64, description="Tile side in source pixels; default 1.5x the model input size")
    overlap: float = Field(0.2, ge=0.0, lt=0.9, description="Overlap between neighbouring tiles, fraction")
    min_side: int = Field(
        0, ge=0, description="With enabled, only tile images whose long side exceeds this (0: always)"
    )
    merge_ios: float = Field(
        0.6, gt=0, le=1, description="Merge same-class boxes whose intersection over the smaller box exceeds this"
    )


class DetectorConfig(BaseModel):
    """How to build a :class:`Detector`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="Registry name, model folder, or 'default'")
    variant: Literal["fp32", "int8"] = Field("fp32", description="Which ONNX file of the model to run")
    provider: Literal["cpu", "cuda", "openvino", "auto"] = Field(
        "cpu", description="onnxruntime execution provider; auto takes the best installed one"
    )
    threads: int | None = Field(None, ge=1, description="Intra-op threads; default: onnxruntime's choice")
    imgsz: int | None = Field(
        None, ge=32, multiple_of=32, description="Inference size (long side, a multiple of 32); default: the model's"
    )
    conf: float = Field(0.25, ge=0.0, le=1.0, description="Minimum confidence to keep a detection")
    iou: float = Field(0.7, ge=0.0, le=1.0, description="IoU above which NMS suppresses a same-class box")
    class_conf: dict[str, float] = Field(
        default_factory=dict, description="Per-class confidence thresholds overriding conf"
    )
    classes: list[str] | None = Field(None, description="Keep only these product classes")
    max_det: int = Field(300, ge=1, description="Maximum detections per image")
    tile: TileConfig = Field(default_factory=TileConfig, description="Sliced inference settings")

    @field_validator("class_conf")
    @classmethod
    def _known_class_conf(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if name not in CLASS_IDS:
                raise ValueError(f"unknown class {name!r} in class_conf; known: {', '.join(CLASS_NAMES)}")
        return value

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if name not in CLASS_IDS:
                raise ValueError(f"unknown class {name!r}; known: {', '.join(CLASS_NAMES)}")
        return value


# --------------------------------------------------------------------------------------- building blocks


def rect_shape(hw: tuple[int, int], imgsz: int, stride: int = 32) -> tuple[int, int]:
    """Smallest stride-multiple (h, w) that holds the image scaled to fit ``imgsz`` (ultralytics' rect)."""
    h, w = hw
    r = min(imgsz / h, imgsz / w)
    nh, nw = max(round(h * r), 1), max(round(w * r), 1)
    return nh + (imgsz - nh) % stride, nw + (imgsz - nw) % stride


def letterbox(image: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Resize keeping aspect ratio and pad (value 114, centred) to ``shape`` exactly as ultralytics' LetterBox.

    Returns the padded image, the (gain_x, gain_y) scale and the (left, top) padding.
    """
    h, w = image.shape[:2]
    r = min(shape[0] / h, shape[1] / w)
    nw, nh = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (shape[1] - nw) / 2, (shape[0] - nh) / 2
    if (w, h) != (nw, nh):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return image, (nw / w, nh / h), (left, top)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, classes: np.ndarray | None = None) -> np.ndarray:
    """Greedy NMS, class-aware when ``classes`` is given; returns kept indices by descending score."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    boxes = boxes.astype(np.float32, copy=False)
    if classes is not None:  # shift each class into its own coordinate range: one pass serves all classes
        boxes = boxes + (classes.astype(np.float32) * (float(boxes.max()) + 1.0))[:, None]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, np.int64)


def make_tiles(hw: tuple[int, int], size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Tile windows (x1, y1, x2, y2) covering an image of (h, w) with the given overlap."""
    h, w = hw
    step = max(int(size * (1 - overlap)), 1)

    def starts(length: int) -> list[int]:
        if length <= size:
            return [0]
        s = list(range(0, length - size, step))
        return [*s, length - size]

    return [(x, y, min(x + size, w), min(y + size, h)) for y in starts(h) for x in starts(w)]


def merge_tiles(dets: Detections, ios: float, passes: np.ndarray | None = None) -> Detections:
    """Greedy non-maximum merging of same-class boxes across tiles: overlapping parts become one box.

    ``passes`` says which inference pass (the full image, one tile) found each box (default: each its own).
    A merged box holds at most one box of each pass: two boxes one pass kept apart (two cars parked in a
    row) are two objects, however they overlap. A box grown by a merge is compared again, until no
    same-class boxes of different passes overlap by more than ``ios`` (intersection over the smaller)."""
    if len(dets) < 2:
        return dets
    order = np.argsort(-dets.confidence, kind="stable")
    dets = dets[order]
    passes = np.arange(len(dets)) if passes is None else np.unique(np.asarray(passes), return_inverse=True)[1][order]
    boxes = dets.xyxy.copy()
    merged = np.zeros(len(dets), bool)
    holds = np.zeros((len(dets), int(passes.max()) + 1), bool)  # the passes each box is made of
    holds[np.arange(len(dets)), passes] = True
    same = dets.class_id[:, None] == dets.class_id[None, :]
    overlap = box_ios(boxes, boxes) > ios  # kept up to date as boxes grow (intersection over the smaller)
    changed = True
    while changed:  # a box that grew may now overlap one it did not, or a more confident one kept before it
        changed = False
        for i in range(len(dets)):
            if merged[i]:
                continue
            while True:  # a box takes in only less confident ones, of passes it does not hold yet
                taken = holds[i].copy()
                for j in i + 1 + np.flatnonzero(overlap[i, i + 1 :] & same[i, i + 1 :] & ~merged[i + 1 :]):
                    if not (holds[j] & taken).any():  # one box of each pass: the most confident
                        taken |= holds[j]
                        boxes[i, :2] = np.minimum(boxes[i, :2], boxes[j, :2])
                        boxes[i, 2:] = np.maximum(boxes[i, 2:], boxes[j, 2:])
                        merged[j] = changed = True
                if (taken == holds[i]).all():
                    break
                holds[i] = taken
                overlap[i] = overlap[:, i] = box_ios(boxes[i], boxes)[0] > ios
    keep = np.flatnonzero(~merged)
    out = dets[keep]
    out.xyxy = boxes[keep]
    return out


def available_providers() -> list[str]:
    """Short names of the execution providers this onnxruntime build has."""
    have = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in have]


def session_providers(provider: str) -> list[str]:
    """onnxruntime provider list for a short name; a clear error when it is not installed."""
    have = available_providers()
    if provider == "auto":
        chosen = next(p for p in ("cuda", "openvino", "cpu") if p in have)
    elif provider not in have:
        raise ModelError(f"execution provider {provider!r} is not installed (available: {', '.join(have)})")
    else:
        chosen = provider
    return [PROVIDERS[chosen]] + ([PROVIDERS["cpu"]] if chosen != "cpu" else [])


# --------------------------------------------------------------------------------------------- detector


class Detector:
    """Runs a registry model with onnxruntime and returns :class:`Detections` in source pixels."""

    def __init__(self, config: DetectorConfig | None = None, **overrides: object):
        self.config = DetectorConfig.model_validate({**(config or DetectorConfig()).model_dump(), **overrides})
        self.ref: ModelRef = resolve(self.config.model)
        if self.ref.role == "pt":
            raise ModelError(f"{self.config.model}: the detector runs the ONNX files; give the model or its .onnx")
        if self.ref.role is not None:  # a path to one ONNX file: that file is the variant that runs
            self.config = self.config.model_copy(update={"variant": self.ref.role})
        card = self.ref.card
        self.model_path: Path = self.ref.file(self.config.variant)
        self.imgsz = self.config.imgsz or card.imgsz
        self.stride = card.stride
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.config.threads:
            options.intra_op_num_threads = self.config.threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), options, providers=session_providers(self.config.provider)
            )
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own types for corrupt files
            raise ModelError(f"{self.model_path}: cannot load ONNX model: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name
        in_shape = self.session.get_inputs()[0].shape
        self.fixed_hw = tuple(in_shape[2:]) if all(isinstance(d, int) for d in in_shape[2:]) else None
        self.fixed_batch = in_shape[0] if isinstance(in_shape[0], int) else None
        # model output index -> product class id (-1: dropped)
        self.out_to_product = np.array([CLASS_IDS[c] if c is not None else -1 for c in card.class_map], dtype=np.int64)
        self.thresholds = np.full(len(CLASS_NAMES), self.config.conf, np.float32)
        for name, value in self.config.class_conf.items():
            self.thresholds[CLASS_IDS[name]] = value
        self.allowed = np.zeros(len(CLASS_NAMES), bool)
        for name in self.config.classes or CLASS_NAMES:
            self.allowed[CLASS_IDS[name]] = True

    # ---- public API
    @property
    def version(self) -> str:
        """The model version recorded on everything this detector finds."""
        return f"{self.ref.card.name}@{self.ref.card.version}/{self.config.variant}"

    @property
    def product_classes(self) -> list[str]:
        """Product classes this detector can report."""
        return [c for c in self.ref.card.product_classes() if self.allowed[CLASS_IDS[c]]]

    def __call__(self, image: np.ndarray) -> Detections:
        return self.detect(image)

    def detect(self, image: np.ndarray, tile: bool | None = None) -> Detections:
        """Detections of one BGR image; ``tile`` overrides the config's sliced-inference switch."""
        tiling = self.config.tile.enabled if tile is None else tile
        if tiling and max(image.shape[:2]) > self.config.tile.min_side:
            return self.detect_tiled(image)
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for several BGR images in one onnxruntime call (letterboxed to a common shape)."""
        if not images:
            return []
        for img in images:
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"expected HxWx3 uint8 BGR images, got {img.shape} {img.dtype}")
        if self.fixed_hw:
            shape = self.fixed_hw
        else:
            shapes = np.array([rect_shape(img.shape[:2], self.imgsz, self.stride) for img in images])
            shape = tuple(int(v) for v in shapes.max(0))
        boxed, gains, pads = zip(*(letterbox(img, shape) for img in images), strict=True)
        blob = cv2.dnn.blobFromImages(list(boxed), 1 / 255.0, swapRB=True)
        raw = self._run(blob)
        return [self._postprocess(raw[i], gains[i], pads[i], images[i].shape[:2]) for i in range(len(images))]

    def detect_tiled(self, image: np.ndarray) -> Detections:
        """Sliced inference: tiles plus one full-image pass, merged across tiles."""
        cfg = self.config.tile
        size = cfg.size or int(self.imgsz * 1.5)
        windows = make_tiles(image.shape[:2], size, cfg.overlap)
        full = self.detect_batch([image])[0]
        if len(windows) == 1:
            return full
        crops = [image[y1:y2, x1:x2] for x1, y1, x2, y2 in windows]
        parts = [full]
        batch = 8
        for start in range(0, len(crops), batch):
            found = self.detect_batch(crops[start : start + batch])
            for (x1, y1, _, _), dets in zip(windows[start : start + batch], found, strict=True):
                dets.xyxy += np.array([x1, y1, x1, y1], np.float32)
                parts.append(dets)
        passes = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)])
        merged = merge_tiles(Detections.merge(parts), cfg.merge_ios, passes)
        order = np.argsort(-merged.confidence, kind="stable")[: self.config.max_det]
        return merged[order]

    # ---- internals
    def _run(self, blob: np.ndarray) -> np.ndarray:
        if self.fixed_batch and blob.shape[0] != self.fixed_batch:
            outs = [self.session.run(None, {self.input_name: blob[i : i + 1]})[0] for i in range(len(blob))]
            return np.concatenate(outs)
        return self.session.run(None, {self.input_name: blob})[0]

    def _postprocess(
        self, pred: np.ndarray, gain: tuple[float, float], pad: tuple[int, int], hw: tuple[int, int]
    ) -> Detections:
        """(4+nc, N) raw output -> thresholded, NMS-ed detections in source pixels."""
        scores_all = pred[4:]
        best = scores_all.argmax(0)
        score = scores_all[best, np.arange(scores_all.shape[1])]
        product = self.out_to_product[best]
        keep = product >= 0
        keep[keep] &= self.allowed[product[keep]]
        keep[keep] &= score[keep] > self.thresholds[product[keep]]
        if not keep.any():
            return Detections.empty()
        xywh = pred[:4, keep].T
        score, cls = score[keep], product[keep]
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        if len(score) > 30000:
            top = np.argsort(-score)[:30000]
            boxes, score, cls = boxes[top], score[top], cls[top]
        idx = nms(boxes, score, self.config.iou, cls)[: self.config.max_det]
        boxes = boxes[idx]
        boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - pad[0]) / gain[0]).clip(0, hw[1])
        boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - pad[1]) / gain[1]).clip(0, hw[0])
        return Detections(boxes, score[idx], cls[idx])


def build_detector(config: DetectorConfig | dict | None = None) -> Detector:
    """A :class:`Detector` from a config object or dict."""
    if isinstance(config, dict):
        config = DetectorConfig.model_validate(config)
    return Detector(config)
