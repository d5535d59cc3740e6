"""Importing a source: a YOLO dataset (data.yaml) or an images folder + labels folder (+ split file),
its labels mapped onto the product classes.

:class:`SourceSpec` says where a source is and how to map it; :func:`load_source` reads it into
:class:`~datasets.samples.Sample` records and findings. Images are not decoded here (see
:func:`datasets.checks.scan_samples`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from datasets.mapping import ClassMapping, load_mapping
from datasets.samples import Issue, Sample, class_counts
from datasets.yolo import label_path_for, read_data_yaml, read_label_file
from models.classes import CLASS_IDS, CLASS_NAMES
from pipeline.decode import IMAGE_SUFFIXES, iter_image_paths

REPO = Path(__file__).resolve().parents[1]
REPO_PREFIX = "{repo}/"


class SourceSpec(BaseModel):
    """One labelled source and how its classes map onto the product classes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Short source name; prefixes output files")
    kind: Literal["yolo", "folder"] = Field(
        "yolo", description="yolo: a dataset with data.yaml; folder: an images folder plus a labels folder"
    )
    path: str = Field(description="yolo: dataset folder or data.yaml; folder: the images folder")
    labels: str | None = Field(None, description="folder: the labels folder (YOLO .txt per image)")
    split_file: str | None = Field(
        None, description="folder: yaml listing image stems under train/eval/clean; default: labels/split.yaml"
    )
    mapping: str = Field(description="Class mapping: a shipped mapping name, a mapping file, or 'product'")
    names: list[str] | None = Field(
        None, description="folder: class names of the label ids; default labels/classes.txt, or product classes"
    )
    val_fraction: float = Field(
        0.15, ge=0.0, lt=1.0, description="Held-out fraction for images the source gives no split for"
    )
    labelled: list[str] | None = Field(
        None,
        description="Product classes this source labels exhaustively (pseudo-labels never add these); "
        "default: the mapped classes that occur in its labels",
    )
    required: bool = Field(True, description="False: skip the source with a warning when its files are absent")
    pseudo: bool = Field(
        True, description="Pseudo-label this source's images (off for views the teacher does not know, e.g. aerial)"
    )
    repeat: int = Field(
        1,
        ge=1,
        le=20,
        description="Oversampling: the source's training images are listed this many times in data.yaml's train "
        "entry (for small sources that matter more than their size, e.g. real patrol photos)",
    )


class SourceMissing(FileNotFoundError):
    """A source's images or labels are absent."""


@dataclass
class SourceData:
    """A source read from disk: its samples (product-class labels), findings and provenance."""

    spec: SourceSpec
    samples: list[Sample]
    issues: list[Issue] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    mapping: ClassMapping | None = None
    root: Path | None = None
    labels_root: Path | None = None
    extra: dict[str, list[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images and boxes per given split (``none`` for images without one)."""
        out: dict[str, dict[str, int]] = {}
        for s in self.samples:
            c = out.setdefault(s.split or "none", {"images": 0, "boxes": 0})
            c["images"] += 1
            c["boxes"] += len(s.boxes)
        return out


def resolve_path(text: str, shared: Path, repo: Path = REPO) -> Path:
    """A recipe path: ``{repo}/...`` is inside the repository, absolute stays, anything else is under ``shared``."""
    if text.startswith(REPO_PREFIX):
        return repo / text[len(REPO_PREFIX) :]
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else shared / path


def load_source(spec: SourceSpec, shared: Path = Path("."), repo: Path = REPO) -> SourceData:
    """Read a source and map its labels; raises :class:`SourceMissing` when its files are absent."""
    mapping = load_mapping(spec.mapping)
    if spec.kind == "yolo":
        data = _load_yolo(spec, resolve_path(spec.path, shared, repo), mapping)
    else:
        data = _load_folder(spec, shared, repo, mapping)
    for key in mapping.unknown_names(data.names):
        data.issues.append(
            Issue("warning", "mapping", spec.mapping, f"mapping lists {key!r}, which source {spec.name} does not have")
        )
    dropped = [n for n, p in zip(data.names, mapping.class_map(data.names), strict=True) if p is None]
    if dropped:
        data.issues.append(
            Issue(
                "info",
                "mapping",
                spec.mapping,
                f"classes dropped by the mapping: {', '.join(dropped)}",
                None,
                spec.name,
            )
        )
    labelled = spec.labelled
    if labelled is None:
        present: set[str] = set()
        for s in data.samples:
            present.update(class_counts(s.boxes))
        labelled = [c for c in mapping.targets() if c in present]
    for c in labelled:
        if c not in CLASS_IDS:
            raise ValueError(f"source {spec.name}: unknown product class {c!r} in labelled")
    ids = frozenset(CLASS_IDS[c] for c in labelled)
    for s in data.samples:
        s.labelled = ids
    return data


def apply_mapping(
    rows: np.ndarray, names: list[str], id_map: dict[int, int]
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Source-id rows -> product-id rows (mapped classes) and ``(name, row)`` context boxes (dropped classes)."""
    keep = np.array([int(c) in id_map for c in rows[:, 0]], bool) if len(rows) else np.zeros(0, bool)
    mapped = rows[keep].copy()
    if len(mapped):
        mapped[:, 0] = [id_map[int(c)] for c in mapped[:, 0]]
    context = [(names[int(r[0])], r.copy()) for r in rows[~keep]]
    return mapped, context


def _id_map(spec: SourceSpec, mapping: ClassMapping, names: list[str], where: Path) -> dict[int, int]:
    """Source class id -> product class id; a mapping that maps none of the source's classes is an error
    (it is the wrong mapping: every image would be imported without objects)."""
    id_map = mapping.id_map(names)
    if not id_map:
        raise ValueError(
            f"source {spec.name} ({where}): no class of the source is mapped onto a product class by mapping "
            f"{spec.mapping!r}; the source's classes: {', '.join(names) or 'none'}; the mapping's keys: "
            f"{', '.join(mapping.map) or 'none'} (streetwatch data mappings lists the shipped mappings)"
        )
    return id_map


def _load_yolo(spec: SourceSpec, path: Path, mapping: ClassMapping) -> SourceData:
    if not path.exists():
        raise SourceMissing(f"source {spec.name}: {path} does not exist")
    names, splits = read_data_yaml(path)
    id_map = _id_map(spec, mapping, names, path)
    data = SourceData(spec, [], names=names, mapping=mapping, root=path if path.is_dir() else path.parent)
    # a set without a val split gives no split at all: its images are held out by val_fraction
    held_out = "val" not in splits
    for split, images in splits.items():
        for image in images:
            rows, issues = read_label_file(label_path_for(image), len(names), spec.name)
            data.issues.extend(issues)
            boxes, context = apply_mapping(rows, names, id_map)
            data.samples.append(Sample(spec.name, image, None if held_out else split, boxes, context=context))
    folders: dict[Path, set[Path]] = {}  # labels folder -> the image folders whose labels it holds
    for image in (i for images in splits.values() for i in images):
        folders.setdefault(label_path_for(image).parent, set()).add(image.parent)
    for labels_dir, image_dirs in folders.items():
        if labels_dir not in image_dirs:  # labels beside the images: other .txt files there are lists
            data.issues += _labels_without_images(labels_dir, image_dirs, spec.name)
    if held_out:
        data.issues.append(
            Issue(
                "info",
                "split",
                str(path),
                f"no val split: {spec.val_fraction:.0%} held out by image group",
                None,
                spec.name,
            )
        )
    _check_unique_stems(data)
    return data


def _load_folder(spec: SourceSpec, shared: Path, repo: Path, mapping: ClassMapping) -> SourceData:
    images_dir = resolve_path(spec.path, shared, repo)
    if spec.labels is None:
        raise ValueError(f"source {spec.name}: kind 'folder' needs 'labels' (the labels folder)")
    labels_dir = resolve_path(spec.labels, shared, repo)
    if not images_dir.is_dir():
        raise SourceMissing(f"source {spec.name}: images folder {images_dir} does not exist")
    if not labels_dir.is_dir():
        raise SourceMissing(f"source {spec.name}: labels folder {labels_dir} does not exist (not labelled yet?)")
    names = spec.names
    if names is None and (labels_dir / "classes.txt").is_file():
        names = [n.strip() for n in (labels_dir / "classes.txt").read_text().splitlines() if n.strip()]
    if names is None:
        if mapping.name != "product":
            raise ValueError(f"source {spec.name}: give 'names' (or labels/classes.txt) for mapping {spec.mapping}")
        names = list(CLASS_NAMES)
    id_map = _id_map(spec, mapping, names, images_dir)
    split_path = resolve_path(spec.split_file, shared, repo) if spec.split_file else labels_dir / "split.yaml"
    given: dict[str, str] = {}
    extra: dict[str, list[str]] = {}
    if split_path.is_file():
        try:
            doc = yaml.safe_load(split_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{split_path}: invalid split file: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{split_path}: split file must map train/eval/clean to lists of image stems")
        for key, stems in doc.items():
            if not isinstance(stems, list):
                if key in ("train", "val", "eval"):
                    raise ValueError(f"{split_path}: {key!r} must be a list of image stems")
                continue  # other entries (e.g. per-photo notes) are for people
            stems = [Path(str(s)).stem for s in stems]
            if key in ("train", "val", "eval"):
                for stem in stems:
                    given[stem] = "train" if key == "train" else "val"
            else:
                extra[str(key)] = stems
    elif spec.split_file:
        raise SourceMissing(f"source {spec.name}: split file {split_path} does not exist")
    data = SourceData(spec, [], names=names, mapping=mapping, root=images_dir, labels_root=labels_dir, extra=extra)
    tags: dict[str, set[str]] = {}
    for key, stems in extra.items():
        for stem in stems:
            tags.setdefault(stem, set()).add(key)
    images = iter_image_paths([images_dir], recursive=False)
    # a review export may hold no image (only frames withdrawn from earlier exports): still a source
    review_export = (images_dir.parent / "export.json").is_file()
    if not given and not review_export and not any((labels_dir / f"{image.stem}.txt").is_file() for image in images):
        raise SourceMissing(f"source {spec.name}: no labelled images in {images_dir} (labels: {labels_dir})")
    for image in images:
        label = labels_dir / f"{image.stem}.txt"
        if given and image.stem not in given:
            continue  # not labelled: the split file lists what is
        rows, issues = read_label_file(label, len(names), spec.name)
        if not label.is_file():  # as in a YOLO set: an image without objects, but here it may be unlabelled
            why = "listed in the split file but has" if given else "has"
            issues = [
                Issue(
                    "warning",
                    "no_label_file",
                    str(label),
                    f"{image.name} {why} no label file; treated as an image without objects",
                    None,
                    spec.name,
                )
            ]
        data.issues.extend(issues)
        boxes, context = apply_mapping(rows, names, id_map)
        sample = Sample(spec.name, image, given.get(image.stem), boxes, context=context)
        sample.tags |= tags.get(image.stem, set())
        data.samples.append(sample)
    found = {i.stem for i in images}
    data.issues += _labels_without_images(labels_dir, {images_dir}, spec.name, frozenset(given))
    for stem in given:
        if stem not in found:
            data.issues.append(
                Issue(
                    "error",
                    "missing_image",
                    str(split_path),
                    f"{stem}: listed but no such image in {images_dir}",
                    None,
                    spec.name,
                )
            )
    if not data.samples and not review_export:
        raise SourceMissing(f"source {spec.name}: no labelled images in {images_dir} (labels: {labels_dir})")
    _check_unique_stems(data)
    return data


def _labels_without_images(
    labels_dir: Path, image_dirs: set[Path], source: str, skip: frozenset[str] = frozenset()
) -> list[Issue]:
    """A warning for each label file in ``labels_dir`` with no image of its stem in ``image_dirs`` (its labels
    are not used: a misnamed or deleted image). ``skip``: stems already reported otherwise."""
    stems = {p.stem for d in image_dirs if d.is_dir() for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    return [
        Issue("warning", "no_image", str(label), "label file without an image: not used", None, source)
        for label in sorted(labels_dir.glob("*.txt"))
        if label.name != "classes.txt" and label.stem not in stems and label.stem not in skip
    ]


def _check_unique_stems(data: SourceData) -> None:
    """Output names are ``source__stem``: two images of one source with one stem would collide."""
    seen: dict[str, Sample] = {}
    kept = []
    for s in data.samples:
        if s.image.stem in seen:
            data.issues.append(
                Issue(
                    "error",
                    "name_clash",
                    str(s.image),
                    f"same file name as {seen[s.image.stem].image}: dropped",
                    None,
                    data.spec.name,
                )
            )
            continue
        seen[s.image.stem] = s
        kept.append(s)
    data.samples = kept
