"""Export an ultralytics checkpoint into a registry model folder: ONNX fp32 (+ int8) and a model card."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets.mapping import ClassMapping, identity_mapping
from models.registry import ModelCard, ModelRef, describe_file, now_iso, write_card
from training import ultra

PT_NAME = "model.pt"
FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"


def export_onnx(pt_path: Path, imgsz: int) -> Path:
    """ONNX export with dynamic batch and input size (rectangular inference), simplified; beside the .pt."""
    model = ultra.yolo(pt_path)
    out = model.export(format="onnx", dynamic=True, simplify=True, imgsz=imgsz, verbose=False)
    return Path(out)


def checkpoint_names(pt_path: Path) -> list[str]:
    """Class names stored in an ultralytics checkpoint, in output order."""
    names = ultra.yolo(pt_path).names
    return [names[i] for i in range(len(names))]


def build_model_folder(
    pt_path: Path,
    folder: Path,
    *,
    name: str,
    version: str,
    mapping: ClassMapping | None = None,
    imgsz: int = 640,
    description: str = "",
    interim: bool = False,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    notes: str = "",
    int8_calibration: Sequence[Path] | None = None,
) -> ModelRef:
    """Copy the checkpoint into ``folder``, export ONNX fp32 (and int8 when calibration images are given)
    and write the card. The class map comes from ``mapping`` (identity: names are product classes)."""
    from ultralytics.utils.torch_utils import strip_optimizer

    folder.mkdir(parents=True, exist_ok=True)
    pt = folder / PT_NAME
    if pt_path.resolve() != pt.resolve():
        shutil.copyfile(pt_path, pt)
    strip_optimizer(str(pt))  # fp16 weights, no optimizer state: half the size, same predictions
    onnx_path = export_onnx(pt, imgsz)
    if onnx_path.name != FP32_NAME:
        onnx_path.replace(folder / FP32_NAME)
    names = checkpoint_names(pt)
    class_map = (mapping or identity_mapping()).class_map(names)
    if not any(class_map):
        raise ValueError(f"{pt_path}: none of the model's classes map onto a product class")
    files = {"fp32": describe_file(folder, FP32_NAME), "pt": describe_file(folder, PT_NAME)}
    if int8_calibration:
        from training.quantize import quantize_int8

        quantize_int8(folder / FP32_NAME, folder / INT8_NAME, list(int8_calibration), imgsz)
        files["int8"] = describe_file(folder, INT8_NAME)
    card = ModelCard(
        name=name,
        version=version,
        created=now_iso(),
        interim=interim,
        description=description,
        architecture=_architecture(pt),
        imgsz=imgsz,
        names=names,
        class_map=class_map,
        files=files,
        training=training or {},
        metrics=metrics or {},
        notes=notes,
    )
    write_card(folder, card)
    return ModelRef(folder=folder, card=card)


def _architecture(pt: Path) -> str:
    """Architecture name from the checkpoint's yaml (e.g. yolo11n)."""
    model = ultra.yolo(pt).model
    yaml_file = str(getattr(model, "yaml", {}).get("yaml_file", "")) or "yolo"
    stem = Path(yaml_file).stem
    scale = getattr(model, "yaml", {}).get("scale", "")
    return stem if stem.endswith(scale) else f"{stem}{scale}"
