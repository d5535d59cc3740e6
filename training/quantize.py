"""Static INT8 quantisation (QDQ) of an exported YOLO ONNX model, calibrated on real images.

The box/score decoding at the end of the detection head (DFL softmax, anchors, sigmoid, concat)
stays in float: quantising it costs accuracy and saves no time.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx

from pipeline.decode import ImageReadError, read_image
from pipeline.detect import letterbox


class _Calibration:
    """onnxruntime CalibrationDataReader over letterboxed images, one per call."""

    def __init__(self, input_name: str, images: Sequence[Path], imgsz: int):
        self.input_name = input_name
        self.images = list(images)
        self.imgsz = imgsz
        self.pos = 0
        self.read = 0  # images given to the calibrator
        self.unreadable: dict[str, str] = {}  # file -> why it was skipped

    def get_next(self) -> dict[str, np.ndarray] | None:
        while self.pos < len(self.images):
            path = self.images[self.pos]
            self.pos += 1
            try:
                image = read_image(path)
            except ImageReadError as exc:
                self.unreadable[exc.source] = exc.reason
                continue
            self.read += 1
            boxed, _, _ = letterbox(image, (self.imgsz, self.imgsz))
            return {self.input_name: cv2.dnn.blobFromImage(boxed, 1 / 255.0, swapRB=True)}
        return None

    def rewind(self) -> None:
        self.pos = 0


def head_decode_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the detection head's decode nodes (everything in the last module that is not a conv block)."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    head = convs[-1].name.split("/")[1]  # e.g. "model.23"
    prefix = f"/{head}/"
    return [
        n.name for n in model.graph.node if n.name.startswith(prefix) and not ("/cv2." in n.name or "/cv3." in n.name)
    ]


def head_output_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the head's output convolutions (the plain 1x1 convs that produce box distributions and class
    logits at each scale; the head's conv *blocks* are named ``.../conv/Conv``)."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    prefix = "/" + convs[-1].name.split("/")[1] + "/"
    return [
        n.name
        for n in convs
        if n.name.startswith(prefix) and ("/cv2." in n.name or "/cv3." in n.name) and not n.name.endswith("/conv/Conv")
    ]


def stem_nodes(model: onnx.ModelProto, modules: int) -> list[str]:
    """Names of the nodes of the first ``modules`` modules of the network (``/model.0/``, ``/model.1/``, ...)."""
    prefixes = tuple(f"/model.{i}/" for i in range(modules))
    return [n.name for n in model.graph.node if n.name.startswith(prefixes)]


CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def calibration_sample(images: Sequence[Path], n: int) -> list[Path]:
    """At most ``n`` of ``images``, evenly spread over the list: a built dataset lists its images sorted by
    source (``facades__...``, ``garbage__...``), so the first ``n`` would calibrate on one source only."""
    images = list(images)
    if n <= 0 or len(images) <= n:
        return images
    return [images[i] for i in np.linspace(0, len(images) - 1, n).round().astype(int)]


def quantize_int8(
    fp32: Path,
    out: Path,
    calibration: Sequence[Path],
    imgsz: int,
    max_images: int = 200,
    method: str = "minmax",
    float_output_convs: bool = False,
    float_stem: int = 0,
) -> Path:
    """Write a static QDQ int8 model (per-channel int8 weights, uint8 activations) to ``out``; activation
    ranges from ``method``: minmax, percentile (99.999th) or entropy (KL) over the calibration images.
    ``float_output_convs`` also keeps the head's output convolutions in float; ``float_stem`` keeps the first
    ``float_stem`` modules (``model.0`` ...) in float: the stem sees raw pixels, and a model fine-tuned with
    lighting augmentation can need it in float (streetwatch-v2 lost 4.9 mAP50 points fully quantised, none with
    ``model.0`` in float)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}")
    images = calibration_sample(calibration, max_images)
    if not images:
        raise ValueError("int8 quantisation needs calibration images")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        reader = _Calibration(model.graph.input[0].name, images, imgsz)
        try:
            quantize_static(
                str(prepared),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy,
                }[method],
                nodes_to_exclude=head_decode_nodes(model)
                + (head_output_convs(model) if float_output_convs else [])
                + stem_nodes(model, float_stem),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        except Exception:
            if reader.read:
                raise
            raise ValueError(unreadable_calibration(reader.unreadable)) from None  # "No data is collected."
        for path, reason in reader.unreadable.items():
            print(f"warning: calibration image {path} skipped: {reason}", file=sys.stderr)
    return out


def unreadable_calibration(unreadable: dict[str, str]) -> str:
    """The error when none of the calibration images could be read: each file (the first 5) and why."""
    shown = "; ".join(f"{path}: {reason}" for path, reason in list(unreadable.items())[:5])
    more = f" (and {len(unreadable) - 5} more)" if len(unreadable) > 5 else ""
    return f"int8 quantisation: none of the {len(unreadable)} calibration images could be read: {shown}{more}"
