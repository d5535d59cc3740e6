"""YOLO-format files: label lines (validated, with findings), data.yaml, image/label path pairing."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from datasets.samples import Issue, Severity, empty_boxes
from pipeline.decode import IMAGE_SUFFIXES, iter_image_paths
from pipeline.files import TextFileError, read_text

#: Coordinates this little outside [0, 1] are rounding (labels written with 6 decimals): clipped silently.
ROUNDING = 1e-5
#: Coordinates this far outside [0, 1] are clipped with a warning; further out, the line is dropped.
CLIP_TOLERANCE = 0.02


def label_path_for(image: Path) -> Path:
    """The label file of an image by the YOLO convention (last ``/images/`` -> ``/labels/``, ``.txt``)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = str(image)
    if sa in text:
        text = sb.join(text.rsplit(sa, 1))
    return Path(text).with_suffix(".txt")


def check_box(
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    report: Callable[[Severity, str, str], None],
    tolerance: float = CLIP_TOLERANCE,
) -> tuple[float, float, float, float] | None:
    """Validate a normalised xyxy box: the clipped box, or ``None`` when it is dropped.

    Findings go to ``report(severity, kind, message)``: a box without width or height, or with an edge more
    than ``tolerance`` outside the image, or wholly outside it, is an ``error`` (dropped); a box partly
    outside is clipped (``warning``). YOLO lines allow :data:`CLIP_TOLERANCE` (further out, the values are
    usually not normalised); pixel boxes (COCO) are unambiguous and pass ``math.inf``: any overlap is clipped.
    """
    if not x2 > x1 or not y2 > y1:
        report("error", "degenerate_box", f"box has no area (w={x2 - x1:g}, h={y2 - y1:g})")
        return None
    outside = f"box ({x1:.3f},{y1:.3f})-({x2:.3f},{y2:.3f}) lies outside the image"
    if min(x1, y1) < -tolerance or max(x2, y2) > 1 + tolerance:
        partly = x2 > 0 and y2 > 0 and x1 < 1 and y1 < 1
        what = f"reaches more than {tolerance:g} past the image's edge" if partly else "lies outside the image"
        report(
            "error",
            "out_of_range",
            f"box ({x1:.3f},{y1:.3f})-({x2:.3f},{y2:.3f}) {what}; coordinates must be normalised to 0..1",
        )
        return None
    if x2 <= 0 or y2 <= 0 or x1 >= 1 or y1 >= 1:
        report("error", "out_of_range", f"{outside} entirely")
        return None
    if min(x1, y1) < 0 or max(x2, y2) > 1:
        if min(x1, y1) < -ROUNDING or max(x2, y2) > 1 + ROUNDING:  # not worth a word: 6-decimal label rounding
            report("warning", "clipped", "box partly outside the image: clipped")
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)  # overlaps: area left
    return x1, y1, x2, y2


def parse_label_lines(text: str, nc: int, file: str = "<labels>", source: str = "") -> tuple[np.ndarray, list[Issue]]:
    """Parse YOLO label text into ``(N, 5)`` rows ``class, cx, cy, w, h`` (source class ids).

    Every problem is an :class:`Issue`: wrong arity, non-numbers and unknown class ids, boxes far outside
    the image (dropped: ``error``); boxes slightly outside (clipped), polygon lines (converted to their
    bounding box) and repeated lines (dropped once) are ``warning``. Degenerate boxes (no width or
    height) are dropped.
    """
    rows: list[list[float]] = []
    issues: list[Issue] = []
    seen: set[tuple[float, ...]] = set()

    def issue(severity: str, kind: str, msg: str, n: int) -> None:
        issues.append(Issue(severity, kind, file, msg, n, source))  # type: ignore[arg-type]

    for n, raw in enumerate(text.splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        try:
            values = [float(v) for v in parts]
        except ValueError:
            issue("error", "not_a_number", f"not a number in {raw.strip()[:60]!r}", n)
            continue
        if not all(math.isfinite(v) for v in values):
            issue("error", "not_a_number", f"non-finite value in {raw.strip()[:60]!r}", n)
            continue
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < nc:
            issue("error", "unknown_class", f"class id {parts[0]} is not one of the {nc} classes (0..{nc - 1})", n)
            continue
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        elif len(values) >= 7 and len(values) % 2 == 1:
            xs, ys = values[1::2], values[2::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            issue("warning", "polygon", f"segment polygon of {len(xs)} points converted to its bounding box", n)
        else:
            issue("error", "wrong_arity", f"{len(values)} values; expected 5 (class cx cy w h)", n)
            continue
        box = check_box(x1, y1, x2, y2, lambda severity, kind, msg, n=n: issue(severity, kind, msg, n))
        if box is None:
            continue
        x1, y1, x2, y2 = box
        row = (cls, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
        key = tuple(round(v, 5) for v in row)
        if key in seen:
            issue("warning", "duplicate_line", "same box repeated: dropped", n)
            continue
        seen.add(key)
        rows.append(list(row))
    return (np.array(rows, np.float32).reshape(-1, 5) if rows else empty_boxes()), issues


def read_label_file(path: Path, nc: int, source: str = "") -> tuple[np.ndarray, list[Issue]]:
    """Parse a label file; a missing file means no objects (reported as ``info``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return empty_boxes(), [
            Issue("info", "no_label_file", str(path), "no label file: image has no objects", None, source)
        ]
    except (OSError, UnicodeDecodeError) as exc:
        return empty_boxes(), [
            Issue("error", "unreadable_labels", str(path), f"cannot read label file: {exc}", None, source)
        ]
    return parse_label_lines(text, nc, str(path), source)


def format_label_lines(boxes: np.ndarray) -> str:
    """``(N, 5)`` rows as YOLO label text (empty string for no boxes)."""
    return "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in np.asarray(boxes).reshape(-1, 5))


def write_label_file(path: Path, boxes: np.ndarray) -> None:
    """Write a YOLO label file (an empty file for an image without objects)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_label_lines(boxes))


# ------------------------------------------------------------------------------------------ data.yaml


def find_data_yaml(path: Path) -> Path:
    """``path`` itself if it is a file, else ``data.yaml`` (or the only ``*.yaml``) in the folder."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such dataset folder or data.yaml")
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.yaml"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"{path}: no data.yaml in the folder")


def parse_names(names: object, file: Path) -> list[str]:
    """``names`` as a list (YOLO allows a list or an ``{id: name}`` dict with ids 0..n-1)."""
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return names
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            ids = []
        if ids == list(range(len(names))):
            return [str(names[k] if k in names else names[str(k)]) for k in ids]
    raise ValueError(f"{file}: 'names' must be a list of class names or a {{0: name, ...}} mapping")


@dataclass(frozen=True)
class DataYaml:
    """A YOLO data.yaml as written: its file, class names, the dataset root its relative paths start from
    (``path:``, itself relative to the yaml's folder, as ultralytics resolves it) and the raw mapping."""

    file: Path
    names: list[str]
    root: Path
    spec: dict[str, Any]

    def has_split(self, key: str) -> bool:
        """Whether ``key`` (train, val, test, ...) names image entries in the file."""
        return key not in NOT_SPLITS and isinstance(self.spec.get(key), (str, list)) and bool(self.spec[key])

    def split_images(self, key: str) -> list[Path]:
        """Image files of one split key: folders (recursive), ``.txt`` lists of image paths, image files."""
        entry = self.spec[key]
        images: list[Path] = []
        for item in entry if isinstance(entry, list) else [entry]:
            images += entry_images(self.root, str(item), self.file)
        return images


#: data.yaml keys that are not splits.
NOT_SPLITS = ("names", "nc", "path", "download")


def load_data_yaml(path: Path) -> DataYaml:
    """Read a data.yaml (or the one in a dataset folder); errors name the file."""
    file = find_data_yaml(Path(path))
    try:
        data = yaml.safe_load(read_text(file))
    except TextFileError:
        raise
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{file}: cannot read data yaml: {exc}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise ValueError(f"{file}: not a YOLO data yaml (needs 'names' and split entries)")
    names = parse_names(data["names"], file)
    root = Path(data.get("path") or ".")
    if not root.is_absolute():
        root = (file.parent / root).resolve()
    return DataYaml(file, names, root, data)


def read_data_yaml(path: Path) -> tuple[list[str], dict[str, list[Path]]]:
    """Class names and image files per split of a YOLO dataset (``test`` counts as held out: ``val``).

    Split entries may be image folders, ``.txt`` lists of image paths, or lists of either; relative paths
    are resolved against ``path:`` (itself relative to the yaml's folder), as ultralytics does.
    """
    spec = load_data_yaml(path)
    splits: dict[str, list[Path]] = {}
    for key, split in (("train", "train"), ("val", "val"), ("test", "val")):
        if spec.has_split(key):
            splits.setdefault(split, []).extend(spec.split_images(key))
    if not splits:
        raise ValueError(f"{spec.file}: no train/val/test entries")
    return spec.names, {k: sorted(dict.fromkeys(v)) for k, v in splits.items()}


def entry_images(root: Path, item: str, file: Path) -> list[Path]:
    """The images one split entry names: a folder (recursive), a ``.txt`` list (``./x`` relative to the list,
    other relative lines to ``root``) or an image file; relative entries start from ``root``."""
    p = Path(item)
    p = p if p.is_absolute() else root / p
    if p.is_dir():
        return iter_image_paths([p])
    if p.is_file() and p.suffix == ".txt":
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                q = Path(line[2:]) if line.startswith("./") else Path(line)
                out.append(q if q.is_absolute() else (p.parent if line.startswith("./") else root) / q)
        return out
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        return [p]
    raise FileNotFoundError(f"{file}: split entry {item!r} is neither an image folder nor a .txt list ({p})")
