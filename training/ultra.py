"""Importing ultralytics safely offline: no downloads, no auto-installs, a writable config dir with a font.

Call :func:`yolo` (or :func:`setup`) instead of importing ultralytics directly anywhere in the product.
"""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    """The writable ultralytics settings folder streetwatch uses."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streetwatch" / "ultralytics"


def setup() -> None:
    """Set the offline environment and font before ultralytics is first imported."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    cfg = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir())))
    font = cfg / "Ultralytics" / "Arial.ttf"
    if not font.is_file():
        import matplotlib

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, font)
    if "polars" not in sys.modules:  # ultralytics imports polars when saving a checkpoint; it is optional
        try:
            import polars  # noqa: F401
        except ImportError:
            sys.modules["polars"] = types.ModuleType("polars")


def has_polars() -> bool:
    """Whether the real polars is importable: ultralytics' plots need it, its checkpoints only import it."""
    setup()
    return hasattr(sys.modules["polars"], "DataFrame")


def amp_outputs_agree(full: Any, mixed: Any, size: int, box_tol: float = 0.02, score_tol: float = 0.05) -> bool:
    """Whether a detection head's raw outputs (batch, 4 + classes, anchors; boxes in pixels of a ``size``
    input) under mixed precision agree with full precision: all finite, boxes within ``box_tol`` of the
    input size, class scores within ``score_tol``. fp16 rounds a 250 px coordinate by up to 0.125 px, so
    raw boxes of a healthy model differ by a pixel or so; broken AMP gives NaN, inf or unrelated values."""
    import torch

    if not bool(torch.isfinite(mixed).all()):
        return False
    boxes = (full[:, :4] - mixed[:, :4]).abs().max() / size
    scores = (full[:, 4:] - mixed[:, 4:]).abs().max()
    return bool(boxes <= box_tol and scores <= score_tol)


def offline_amp_check() -> None:
    """Make ultralytics' mixed-precision check offline: it downloads yolo26n.pt to compare fp32 with AMP
    detections on a photo; ours compares the raw outputs of the model being trained on a random input
    (:func:`amp_outputs_agree`), with nothing downloaded."""
    setup()
    import torch
    from ultralytics.engine import trainer as trainer_module

    def check_amp(model: Any) -> bool:
        device = next(model.parameters()).device
        if device.type != "cuda":
            return False
        size = 256
        x = torch.rand(2, 3, size, size, device=device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                a = model(x)[0].float()
                with torch.autocast("cuda"):
                    b = model(x)[0].float()
        finally:
            model.train(was_training)
        ok = amp_outputs_agree(a, b, size)
        if not ok:
            print("AMP check failed: training in fp32", file=sys.stderr)
        return ok

    trainer_module.check_amp = check_amp


def yolo(weights: str | os.PathLike[str]) -> Any:
    """An ultralytics ``YOLO`` model from a local file path (never by bare name: that downloads)."""
    path = Path(weights)
    if path.suffix in (".pt", ".onnx") and not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    setup()
    from ultralytics import YOLO

    return YOLO(str(path))
