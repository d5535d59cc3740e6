"""Writing a merged dataset in the ultralytics layout, with per-source lists.

Layout of ``OUT``::

    data.yaml                 names = the product classes, train: images/train, val: images/val
    images/{train,val}/       <source>__<stem>.<ext> (source bytes copied unchanged)
    labels/{train,val}/       own labels followed by pseudo-labels, product class ids
    pseudo.json               label file -> how many of its last lines are pseudo-labels
    train-<source>.txt        image lists per source (./images/... relative to OUT)
    train-<source>.yaml       that source alone (val: its val list, else all of images/val), for ablations
    val-<source>.txt/.yaml    per-source validation sets for the evaluator
    val-<source>-<tag>.txt    tagged subsets (e.g. patrol photos tagged clean)
    manifest.json, report/    provenance and the check report; work/ holds caches and generated sources
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml

from datasets.manifest import MANIFEST
from datasets.samples import SPLITS, Sample
from datasets.yolo import write_label_file
from models.classes import CLASS_NAMES


def data_yaml(train: str | list[str], val: str) -> dict:
    """A data yaml without ``path`` (ultralytics then resolves entries against the yaml's folder)."""
    return {"train": train, "val": val, "nc": len(CLASS_NAMES), "names": dict(enumerate(CLASS_NAMES))}


def check_output(out: Path) -> None:
    """Refuse ``out`` as the folder of a (re)build when it is a file, or a non-empty folder that is not a
    dataset built here (no manifest, no ``work/`` caches)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file() and not (out / "work").is_dir():
        raise FileExistsError(f"{out}: folder is not empty and holds no dataset manifest; choose a new --out")


def write_dataset(
    samples: Sequence[Sample],
    out: Path,
    image_bytes: dict[str, bytes] | None = None,
    repeat: dict[str, int] | None = None,
) -> dict[str, int]:
    """Copy images, write labels, data.yaml and per-source lists; returns images written per split.

    ``image_bytes`` may give encoded bytes for a sample key instead of copying its file. ``repeat`` maps a
    source name to how often its training images are listed in data.yaml's train entry (oversampling).
    """
    lists: dict[str, list[str]] = {}
    written = dict.fromkeys(SPLITS, 0)
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    for s in samples:
        if s.split not in SPLITS:
            raise ValueError(f"{s.key}: no split assigned")
        name = f"{s.out_stem}{s.image.suffix.lower()}"
        dest = out / "images" / s.split / name
        if image_bytes and s.key in image_bytes:
            dest.write_bytes(image_bytes[s.key])
        else:
            shutil.copyfile(s.image, dest)
        write_label_file(out / "labels" / s.split / f"{s.out_stem}.txt", s.all_boxes())
        rel = f"./images/{s.split}/{name}"
        lists.setdefault(f"{s.split}-{s.source}", []).append(rel)
        for tag in sorted(s.tags):
            lists.setdefault(f"{s.split}-{s.source}-{tag}", []).append(rel)
        written[s.split] += 1
    pseudo = {f"labels/{s.split}/{s.out_stem}.txt": len(s.pseudo) for s in samples if len(s.pseudo)}
    (out / "pseudo.json").write_text(json.dumps(pseudo, indent=0, sort_keys=True))
    for name, items in sorted(lists.items()):
        (out / f"{name}.txt").write_text("\n".join(sorted(items)) + "\n")
        val = name if name.startswith("val-") else f"val-{name.removeprefix('train-')}"
        val = f"{val}.txt" if val in lists else "images/val"
        (out / f"{name}.yaml").write_text(yaml.safe_dump(data_yaml(f"{name}.txt", val), sort_keys=False))
    train: str | list[str] = "images/train"
    extra = [
        f"train-{src}.txt" for src, n in sorted((repeat or {}).items()) if f"train-{src}" in lists for _ in range(n - 1)
    ]
    if extra:
        train = ["images/train", *extra]
    (out / "data.yaml").write_text(yaml.safe_dump(data_yaml(train, "images/val"), sort_keys=False))
    return written
