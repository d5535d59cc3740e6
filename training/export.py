"""Export an ultralytics checkpoint into a registry model folder: ONNX fp32 (+ int8) and a model card."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets.mapping import ClassMapping, identity_mapping
from models.registry import (
    CARD_NAME,
    ModelCard,
    ModelError,
    ModelRef,
    describe_file,
    imgsz_problem,
    now_iso,
    write_card,
)
from training import ultra

if TYPE_CHECKING:
    from training.evaluate import EvalResult, Split

PT_NAME = "model.pt"
FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"


def export_onnx(pt_path: Path, imgsz: int) -> Path:
    """ONNX export with dynamic batch and input size (rectangular inference), simplified; beside the .pt."""
    model = ultra.yolo(pt_path)
    out = model.export(format="onnx", dynamic=True, simplify=True, imgsz=imgsz, verbose=False)
    return Path(out)


def checkpoint_names(pt_path: Path) -> list[str]:
    """Class names stored in an ultralytics checkpoint, in output order; ``ValueError`` for a file that is
    not one (a data.yaml, a truncated download)."""
    try:
        names = ultra.yolo(pt_path).names
    except Exception as exc:  # torch and ultralytics raise anything here
        raise ValueError(f"{pt_path}: not an ultralytics checkpoint ({type(exc).__name__}: {exc})") from None
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
    calibration_method: str = "minmax",
    calibration_max: int = 200,
    float_output_convs: bool = False,
    float_stem: int = 0,
) -> ModelRef:
    """Copy the checkpoint into ``folder``, export ONNX fp32 (and int8 when calibration images are given)
    and write the card. The class map comes from ``mapping`` (identity: names are product classes)."""
    from ultralytics.utils.torch_utils import strip_optimizer

    problem = imgsz_problem(imgsz)
    if problem:
        raise ValueError(f"imgsz {problem}")
    names = checkpoint_names(pt_path)  # before anything is written: a wrong file leaves no folder behind
    class_map = (mapping or identity_mapping()).class_map(names)
    if not any(class_map):
        raise ValueError(f"{pt_path}: none of its classes ({', '.join(names[:8])}...) is a product class; pass --map")
    folder.mkdir(parents=True, exist_ok=True)
    pt = folder / PT_NAME
    if pt_path.resolve() != pt.resolve():
        shutil.copyfile(pt_path, pt)
    strip_optimizer(str(pt))  # fp16 weights, no optimizer state: half the size, same predictions
    onnx_path = export_onnx(pt, imgsz)
    if onnx_path.name != FP32_NAME:
        onnx_path.replace(folder / FP32_NAME)
    files = {"fp32": describe_file(folder, FP32_NAME), "pt": describe_file(folder, PT_NAME)}
    (folder / INT8_NAME).unlink(missing_ok=True)  # never leave an int8 file of an earlier export behind
    if int8_calibration:
        from training.quantize import quantize_int8

        quantize_int8(
            folder / FP32_NAME,
            folder / INT8_NAME,
            list(int8_calibration),
            imgsz,
            max_images=calibration_max,
            method=calibration_method,
            float_output_convs=float_output_convs,
            float_stem=float_stem,
        )
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


def already_exported(folder: Path) -> str:
    """Why no export goes into ``folder``: it holds a model (a registered version stays as it is)."""
    return f"{folder} already holds a model; export under a new --name (or another --out)"


def publish_model(work: Path, folder: Path) -> None:
    """Move the complete model folder ``work`` (built beside ``folder`` in a :func:`pipeline.files.staged_folder`)
    to ``folder``: renamed into place when there is none (or an empty one). Into a folder that holds other files
    but no model, its files move one by one, replacing those of the same name (an int8 file of an earlier export
    goes, the rest stays), the card last: the folder is a model only once complete."""
    try:
        work.rename(folder)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if (folder / CARD_NAME).exists():  # exported there meanwhile
        raise ModelError(already_exported(folder))
    (folder / INT8_NAME).unlink(missing_ok=True)
    for path in sorted(work.iterdir(), key=lambda p: p.name == CARD_NAME):
        os.replace(path, folder / path.name)


def _architecture(pt: Path) -> str:
    """Architecture name from the checkpoint's yaml (e.g. yolo11n)."""
    model = ultra.yolo(pt).model
    yaml_file = str(getattr(model, "yaml", {}).get("yaml_file", "")) or "yolo"
    stem = Path(yaml_file).stem
    scale = getattr(model, "yaml", {}).get("scale", "")
    return stem if stem.endswith(scale) else f"{stem}{scale}"


@dataclass
class Int8Gate:
    """The outcome of comparing a model folder's int8 model with its fp32 model on validation data."""

    results: dict[str, EvalResult]
    drop_points: float | None
    max_drop_points: float
    refused: bool
    message: str


def record_results(card: ModelCard, data_name: str, split_name: str, results: dict[str, EvalResult]) -> str:
    """Keep evaluations of a model's variants in its card's metrics under ``"<data> [<split>]"`` (other
    variants measured there before stay); returns the key. The caller writes the card."""
    key = f"{data_name} [{split_name}]"
    entry = card.metrics.setdefault(key, {})
    entry["images"] = next(iter(results.values())).images
    entry.update({variant: r.to_json() for variant, r in results.items()})
    return key


def gate_int8(
    ref: ModelRef, split: Split, *, data_name: str, max_drop_points: float = 1.0, progress: bool = True
) -> Int8Gate:
    """Evaluate fp32 (and int8, when the folder has one) on ``split``; record both in the card; delete the
    int8 file and drop it from the card when its mAP50 is more than ``max_drop_points`` below fp32."""
    from training.evaluate import evaluate, make_predictor

    folder, card = ref.folder, ref.card
    results = {
        variant: evaluate(make_predictor(str(folder), variant=variant), split, data_name, progress=progress)
        for variant in ("fp32", "int8")
        if variant in card.files
    }
    drop = None
    refused = False
    if "int8" in results:
        drop = round((results["fp32"].map50 - results["int8"].map50) * 100, 2)
        refused = drop > max_drop_points
    key = record_results(card, data_name, split.name, results)
    if drop is None:
        message = "no int8 model to check (no calibration images given)"
    elif refused:
        message = (
            f"int8 REFUSED: mAP50 {results['int8'].map50:.4f} is {drop:.2f} points below fp32 "
            f"{results['fp32'].map50:.4f} (allowed: {max_drop_points:.2f}); {INT8_NAME} not written"
        )
    else:
        message = (
            f"int8 accepted: mAP50 {results['int8'].map50:.4f} vs fp32 {results['fp32'].map50:.4f} "
            f"({f'{drop:.2f} points lower' if drop > 0 else f'{-drop:.2f} points higher'}; "
            f"allowed: {max_drop_points:.2f} lower)"
        )
    card.metrics["int8_gate"] = {
        "data": key,
        "max_drop_points": max_drop_points,
        "drop_points": drop,
        "accepted": drop is not None and not refused,
    }
    if refused:
        (folder / INT8_NAME).unlink(missing_ok=True)
        card.files.pop("int8", None)
        card.notes = (card.notes + " " if card.notes else "") + f"No int8 model: {message}."
    write_card(folder, card)
    return Int8Gate(results, drop, max_drop_points, refused, message)
