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


def offline_amp_check() -> None:
    """Make ultralytics' mixed-precision check offline: it downloads yolo26n.pt to compare fp32 with AMP
    outputs; ours compares them on the model being trained (same tolerance), with nothing downloaded."""
    setup()
    import torch
    from ultralytics.engine import trainer as trainer_module

    def check_amp(model: Any) -> bool:
        device = next(model.parameters()).device
        if device.type != "cuda":
            return False
        x = torch.rand(2, 3, 256, 256, device=device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                a = model(x)[0].float()
                with torch.autocast("cuda"):
                    b = model(x)[0].float()
        finally:
            model.train(was_training)
        ok = bool(torch.isfinite(b).all() and torch.allclose(a, b, atol=0.5))
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
