"""Reviewed cases back into training data, and corrected annotations back into it.

:func:`export_reviews` turns what reviewers decided into a labelled ``folder`` source:

- a confirmed case becomes a box of the class the reviewer settled on (a class correction applied);
- a dismissed case becomes a hard negative: its box is left out of the labels of its frame (a frame
  with nothing confirmed on it is a background image);
- images are the clean frames the producers keep (``clean`` evidence: nothing drawn, bystanders
  blurred); a photo's frame shared by several cases is exported once with all their verdicts. A case
  whose frame shows another case nobody reviewed yet waits for that review. Cases filed before clean
  frames were kept: a dismissed one becomes a background image from its crop (nothing drawn on it), a
  confirmed one is skipped with the reason (its only full frame has the box drawn in).

The export folder (``OUT``) holds::

    images/case-<ids>_<sha8>.jpg   the frames; file names keep the case ids
    labels/<stem>.txt              YOLO labels in product class ids (empty: background)
    labels/classes.txt, split.yaml the folder source's class names; every image goes to train
    export.json                    every image with its cases and verdicts, every skipped case and why
    tasks.json, label-studio.xml   Label Studio tasks (the model's boxes and the reviewed labels as
                                   pre-annotations) and the labelling config to create the project with
    recipe.yaml                    a dataset recipe: the base training set plus this folder as a source
    sheet.jpg                      a contact sheet of the exported images with their verdicts drawn

:func:`import_annotations` brings boxes corrected in Label Studio or CVAT (YOLO or COCO export) back into
an export folder (the reviewed labels are kept in ``labels.reviewed/``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from datasets.manifest import tool_version
from datasets.mapping import load_mapping
from datasets.samples import Issue, xywhn_to_xyxy, xyxy_to_xywhn
from datasets.yolo import check_box, parse_label_lines, write_label_file
from models.classes import CLASS_IDS, CLASS_NAMES
from pipeline.annotate import PALETTE, draw_detections
from pipeline.decode import IMAGE_SUFFIXES, ImageReadError, read_image
from pipeline.detections import Detections

if TYPE_CHECKING:
    from serve.store import CaseStore, ReviewedCase

EXPORT_FILE = "export.json"
TASKS_FILE = "tasks.json"
LS_CONFIG_FILE = "label-studio.xml"
RECIPE_FILE = "recipe.yaml"
SHEET_FILE = "sheet.jpg"
REVIEWED_LABELS = "labels.reviewed"
REVIEWED_MODEL = "reviewed"  # Label Studio model_version of the pre-annotation that carries the reviewed labels


class ExportError(ValueError):
    """An export or import cannot be done; the message names the folder or file and says why."""


@dataclass
class ReviewLabel:
    """One reviewed case on an exported image: its verdict and its box on that image."""

    case_id: int
    verdict: str  # confirmed | dismissed
    detector_class: str  # the reviewer's class (confirmed) or the model's (dismissed)
    model_class: str
    type: str
    box: list[float]  # xyxy pixels on the exported image
    score: float
    model_version: str
    reviewed_by: str | None
    reviewed_at: str


@dataclass
class ExportItem:
    """One exported image."""

    stem: str
    image: str  # relative to the export folder
    sha256: str  # evidence id of the picture
    width: int
    height: int
    origin: str  # clean: the clean frame; crop: a dismissed old case's crop (background)
    labels: list[ReviewLabel]

    @property
    def negative(self) -> bool:
        """A background image: no confirmed object on it."""
        return not any(lb.verdict == "confirmed" for lb in self.labels)


@dataclass
class ExportResult:
    """What an export wrote and skipped."""

    out: Path
    items: list[ExportItem]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    cases: int = 0
    withdrawn: list[dict[str, Any]] = field(default_factory=list)  # earlier exports' frames no longer to train on

    def counts(self) -> dict[str, int]:
        labels = [lb for i in self.items for lb in i.labels]
        return {
            "cases": self.cases,
            "images": len(self.items),
            "background_images": sum(i.negative for i in self.items),
            "confirmed": sum(lb.verdict == "confirmed" for lb in labels),
            "corrected": sum(lb.verdict == "confirmed" and lb.detector_class != lb.model_class for lb in labels),
            "dismissed": sum(lb.verdict == "dismissed" for lb in labels),
            "skipped": len(self.skipped),
            "withdrawn": len(self.withdrawn),
        }


# ------------------------------------------------------------------------------------------- export


def _best_evidence(rc: ReviewedCase, kind: str):
    """The case's highest-scoring evidence of ``kind`` (the store lists evidence best first)."""
    return next((e for e in rc.case.evidence if e.kind == kind), None)


def _label(rc: ReviewedCase, evidence) -> ReviewLabel:
    case = rc.case
    return ReviewLabel(
        case_id=case.id,
        verdict=rc.verdict,
        detector_class=case.detector_class if rc.verdict == "confirmed" else rc.model_class,
        model_class=rc.model_class,
        type=case.type,
        box=[round(float(v), 1) for v in evidence.box],
        score=round(float(evidence.score), 4),
        model_version=case.model_version,
        reviewed_by=case.reviewed_by,
        reviewed_at=rc.reviewed_at.isoformat(),
    )


def _stem(case_ids: Sequence[int], sha: str) -> str:
    return f"case-{'-'.join(str(i) for i in sorted(case_ids))}_{sha[:8]}"


def prepare_export_folder(out: Path) -> None:
    """Exports are kept as versions: refuse a folder that exists and is not empty."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not empty; exports are kept, choose a new --out")
    out.mkdir(parents=True, exist_ok=True)


def export_reviews(
    store: CaseStore,
    out: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    base_recipe: str = "product-v2",
    source_name: str | None = None,
    image_prefix: str | None = None,
    progress: bool = True,
) -> ExportResult:
    """Export the cases reviewed in [since, until) (see the module docstring); returns what was written."""
    from datasets.recipe import load_recipe
    from serve.store import CONFIRMED_STATUSES

    reviewed_statuses = (*CONFIRMED_STATUSES, "dismissed")

    try:
        base = load_recipe(base_recipe)
    except (FileNotFoundError, ValueError) as exc:
        raise ExportError(f"--base-recipe: {exc}") from None
    base_name = base.name
    if since is not None and until is not None and until <= since:  # (a --since ahead of now alone: empty)
        raise ExportError(f"--until {until.isoformat()} is not after the window's start {since.isoformat()}")
    until = until or datetime.now(timezone.utc)  # the window's end is recorded: the next export starts there
    prepare_export_folder(out)
    reviewed = store.reviewed_cases(since, until)
    result = ExportResult(out, [], cases=len(reviewed))
    # pictures earlier exports of the chain hold with a case whose verdict changed in this window (reviewed
    # again, or a dismissal reopened): exported again with the verdicts as they stand, or withdrawn
    changed = {rc.case.id for rc in reviewed} | store.reopened_dismissals(since, until)
    held = {sha: (name, ids, origin) for sha, name, ids, origin in _earlier_pictures(base) if ids & changed}
    frames: dict[str, set[int]] = {}  # clean frame -> the window's cases that chose it
    for sha, (_, ids, origin) in held.items():
        if origin == "clean":  # (an old case's crop comes back on the crops path, if dismissed again)
            frames.setdefault(sha, set()).update(ids & {rc.case.id for rc in reviewed})
    crops: list[ReviewedCase] = []
    for rc in reviewed:
        clean = _best_evidence(rc, "clean")
        if clean is not None:
            frames.setdefault(clean.sha256, set()).add(rc.case.id)
        elif rc.verdict == "dismissed" and _best_evidence(rc, "crop") is not None:
            crops.append(rc)
        else:
            result.skipped.append(
                {
                    "case_id": rc.case.id,
                    "verdict": rc.verdict,
                    "reason": "no clean frame (filed before clean frames were kept, or by a producer that sends "
                    "none); its full frame has the box drawn in, which would teach the model to find drawn boxes",
                }
            )
    users = store.evidence_cases(list(frames))
    known = {rc.case.id: rc for rc in reviewed}
    others = {cid for pairs in users.values() for cid, _ in pairs} - set(known)
    for rc in store.reviewed_cases(until=until, ids=others) if others else []:  # as the window ends
        known[rc.case.id] = rc
    (out / "images").mkdir()
    (out / "labels").mkdir()
    bar = tqdm(total=len(frames) + len(crops), desc="export", unit="img", disable=not progress or None, file=sys.stderr)
    for sha, chosen in frames.items():
        bar.update(1)
        pending = [(cid, status) for cid, status in users.get(sha, []) if cid not in known]
        if pending:
            later = [f"case {cid}" for cid, status in pending if status in reviewed_statuses]
            waiting = [f"case {cid} ({status})" for cid, status in pending if status not in reviewed_statuses]
            why = "; ".join(
                [f"its frame also shows {', '.join(waiting)}, not reviewed yet: exported once that is reviewed"]
                * bool(waiting)
                + [f"its frame also shows {', '.join(later)}, reviewed after this window: exported by the next"]
                * bool(later)
            )
            for cid in sorted(chosen):
                result.skipped.append({"case_id": cid, "verdict": known[cid].verdict, "reason": why})
            continue  # (an earlier export's copy of it is withdrawn below)
        if sha not in users:
            continue  # an earlier export's frame the store no longer holds: withdrawn below
        shown = [(known[cid], next(e for e in known[cid].case.evidence if e.sha256 == sha)) for cid, _ in users[sha]]
        labels = [_label(rc, evidence) for rc, evidence in shown]
        item = _write_item(store, out, sha, "clean", labels, tuple(shown[0][1].frame_size))
        if isinstance(item, str):
            for cid in sorted(chosen):
                result.skipped.append({"case_id": cid, "verdict": known[cid].verdict, "reason": item})
            continue
        result.items.append(item)
    for rc in crops:
        bar.update(1)
        crop = _best_evidence(rc, "crop")
        item = _write_item(store, out, crop.sha256, "crop", [_label(rc, crop)], None)
        if isinstance(item, str):
            result.skipped.append({"case_id": rc.case.id, "verdict": rc.verdict, "reason": item})
        else:
            item.labels[0].box = []  # the crop shows the dismissed object; its frame box does not apply
            result.items.append(item)
    bar.close()
    result.items.sort(key=lambda i: i.stem)
    exported = {i.sha256 for i in result.items}
    result.withdrawn = [
        {
            "sha256": sha,
            "export": name,
            "case_ids": sorted(ids & changed),
            "reason": "a verdict on it changed in this window (reviewed again, or a dismissal reopened) and it "
            "could not be exported again yet: the earlier copy no longer stands",
        }
        for sha, (name, ids, _) in sorted(held.items())
        if sha not in exported
    ]
    name = source_name or f"field-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ExportError(f"source name {name!r}: use lowercase letters, digits, '-' and '_'")
    _write_source_files(result)
    _write_export_json(result, store, since, until, name)
    _write_label_studio(result, image_prefix if image_prefix is not None else f"/data/local-files/?d={out.name}/")
    _write_recipe(result, base_recipe, base_name, name)
    export_sheet(result.items, out, out / SHEET_FILE)
    return result


def _earlier_pictures(recipe: Any) -> list[tuple[str, str, set[int], str]]:
    """Every picture the review exports among a recipe's sources hold: (sha256, export source, case ids,
    origin: clean frame or crop)."""
    out = []
    for spec in recipe.sources:
        folder = Path(spec.path).parent if spec.path else None
        if folder is None or not (folder / EXPORT_FILE).is_file():
            continue
        for item in load_export(folder).get("items", []):
            labels = {lb["case_id"] for lb in item.get("labels", [])}
            out.append((item["sha256"], spec.name, labels, item.get("origin", "clean")))
    return out


def _write_item(
    store: CaseStore, out: Path, sha: str, origin: str, labels: list[ReviewLabel], size: tuple[int, int] | None
) -> ExportItem | str:
    """Copy one picture out of the evidence store and write its labels; a reason string when it cannot."""
    from serve.evidence import EvidenceNotFound

    try:
        data = store.evidence.read(sha)
    except EvidenceNotFound:
        pruned = store.evidence_status(sha)[1]
        if pruned is not None:
            return f"evidence file {sha} was removed by the retention policy on {pruned:%Y-%m-%d} (UTC)"
        return f"evidence file {sha} is missing from {store.evidence.root}"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return f"evidence file {sha} is not a readable JPEG"
    h, w = image.shape[:2]
    if size is not None and (w, h) != size:
        return f"clean frame {sha[:12]} is {w}x{h}, but its box refers to a {size[0]}x{size[1]} frame"
    stem = _stem([lb.case_id for lb in labels], sha)
    (out / "images" / f"{stem}.jpg").write_bytes(data)
    confirmed = [lb for lb in labels if lb.verdict == "confirmed"]
    rows = xyxy_to_xywhn(
        np.array([lb.box for lb in confirmed], np.float32).reshape(-1, 4),
        np.array([CLASS_IDS[lb.detector_class] for lb in confirmed]),
        w,
        h,
    )
    write_label_file(out / "labels" / f"{stem}.txt", rows)
    return ExportItem(stem, f"images/{stem}.jpg", sha, w, h, origin, sorted(labels, key=lambda lb: lb.case_id))


def _write_source_files(result: ExportResult) -> None:
    """classes.txt and split.yaml: what makes the folder a ``folder`` source of a recipe (all images train:
    the evaluation set stays fixed, and field frames were chosen by the model in force)."""
    labels = result.out / "labels"
    (labels / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    split = {"train": [i.stem for i in result.items], "val": []}
    (labels / "split.yaml").write_text(
        "# written by streetwatch data export-reviews: every field image trains\n" + yaml.safe_dump(split)
    )


def _write_export_json(
    result: ExportResult, store: CaseStore, since: datetime | None, until: datetime | None, name: str
) -> None:
    from sqlalchemy import make_url

    body = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool": tool_version(),
        "source_name": name,
        "store": make_url(store.db_url).render_as_string(hide_password=True),
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "counts": result.counts(),
        "items": [{**asdict(i), "negative": i.negative} for i in result.items],
        "skipped": result.skipped,
        "withdrawn": result.withdrawn,
        "corrections": [],
    }
    (result.out / EXPORT_FILE).write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n")


def export_window_end(folder: Path) -> datetime:
    """Where an earlier export's window ended: ``--after`` starts the next one there, so that consecutive
    exports neither miss nor repeat a review."""
    body = load_export(folder)
    end = body.get("until") or body.get("created")
    if not end:
        raise ExportError(f"{folder / EXPORT_FILE}: records no time window")
    return datetime.fromisoformat(end)


def load_export(folder: Path) -> dict[str, Any]:
    """An export folder's ``export.json``; a clear error for a folder that is not an export."""
    path = folder / EXPORT_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{folder}: not an export-reviews folder (no {EXPORT_FILE})") from None
    except ValueError as exc:
        raise ExportError(f"{path}: invalid JSON: {exc}") from None


# ------------------------------------------------------------------------------------ Label Studio


def _ls_box(box: Sequence[float], w: int, h: int, label: str, rid: str, score: float | None = None) -> dict:
    """One Label Studio ``rectanglelabels`` result (percent coordinates of the original image)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    result: dict[str, Any] = {
        "id": rid,
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {
            "x": round(100 * max(x1, 0) / w, 4),
            "y": round(100 * max(y1, 0) / h, 4),
            "width": round(100 * (min(x2, w) - max(x1, 0)) / w, 4),
            "height": round(100 * (min(y2, h) - max(y1, 0)) / h, 4),
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }
    if score is not None:
        result["score"] = round(score, 4)
    return result


def label_studio_tasks(items: Sequence[ExportItem], image_prefix: str) -> list[dict[str, Any]]:
    """Label Studio tasks: each image with the model's boxes (one prediction per model version, the
    classes it reported, its scores) and the reviewed labels (``model_version: reviewed``) as pre-annotations."""
    tasks = []
    for item in items:
        by_version: dict[str, list[dict]] = {}
        for lb in item.labels:
            if lb.box:
                by_version.setdefault(lb.model_version, []).append(
                    _ls_box(lb.box, item.width, item.height, lb.model_class, f"m{lb.case_id}", lb.score)
                )
        predictions = [
            {"model_version": version, "score": max(r["score"] for r in results), "result": results}
            for version, results in by_version.items()
        ]
        reviewed = [
            _ls_box(lb.box, item.width, item.height, lb.detector_class, f"r{lb.case_id}")
            for lb in item.labels
            if lb.verdict == "confirmed"
        ]
        predictions.append({"model_version": REVIEWED_MODEL, "score": 1.0, "result": reviewed})
        review = "; ".join(
            f"case {lb.case_id}: "
            + (
                f"confirmed {lb.detector_class}"
                + (f" (model said {lb.model_class})" if lb.detector_class != lb.model_class else "")
                if lb.verdict == "confirmed"
                else f"dismissed (model said {lb.model_class} {lb.score:.2f})"
            )
            + (f" by {lb.reviewed_by}" if lb.reviewed_by else "")
            for lb in item.labels
        )
        tasks.append(
            {
                "data": {
                    "image": f"{image_prefix}{item.image}",
                    "stem": item.stem,
                    "case_ids": [lb.case_id for lb in item.labels],
                    "review": review,
                },
                "predictions": predictions,
            }
        )
    return tasks


def label_studio_config() -> str:
    """The Label Studio labelling config for the product classes (colours as on every picture)."""
    labels = "\n".join(
        f'    <Label value="{name}" background="#{r:02x}{g:02x}{b:02x}"/>'
        for name, (b, g, r) in zip(CLASS_NAMES, PALETTE, strict=True)
    )
    return (
        "<View>\n"
        '  <Header value="$review"/>\n'
        '  <Image name="image" value="$image" zoom="true"/>\n'
        '  <RectangleLabels name="label" toName="image">\n'
        f"{labels}\n"
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def _write_label_studio(result: ExportResult, image_prefix: str) -> None:
    tasks = label_studio_tasks(result.items, image_prefix)
    (result.out / TASKS_FILE).write_text(json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    (result.out / LS_CONFIG_FILE).write_text(label_studio_config())


def _write_recipe(result: ExportResult, base_recipe: str, base_name: str, name: str) -> None:
    """``recipe.yaml``: the base recipe extended by this folder as a ``folder`` source (product classes),
    labelling no class exhaustively, so that the teacher pseudo-labels people and vehicles in it."""
    base_path = Path(base_recipe)
    base = str(base_path.resolve()) if base_path.is_file() else base_recipe
    out = result.out.resolve()
    recipe = {
        "name": f"{base_name}+{name}",
        "description": f"{base_name} plus {len(result.items)} reviewed field images ({name})",
        "extends": base,
        "sources": [
            {
                "name": name,
                "kind": "folder",
                "path": str(out / "images"),
                "labels": str(out / "labels"),
                "mapping": "product",
                "labelled": [],  # a frame is labelled only where cases were filed: the teacher adds the rest
            }
        ],
    }
    header = (
        f"# Written by `streetwatch data export-reviews`: {base} plus the reviewed cases of {out.name}.\n"
        "# Build:  streetwatch data build THIS_FILE --out DATASET_DIR   (the manifest fingerprints the result)\n"
        "# Several exports: point `extends` of a later export's recipe at an earlier one's recipe.yaml (a frame\n"
        "#   both exported, a case reviewed again, is built from the later one).\n"
        "# labelled: []  a frame is labelled only where cases were filed, so no class counts as labelled\n"
        "#   exhaustively and the teacher pseudo-labels people and vehicles as in every training image (a\n"
        "#   dismissed parking case is usually a real vehicle). After relabelling every box of some classes\n"
        "#   (Label Studio, CVAT: `data import`), list those classes here.\n"
    )
    (result.out / RECIPE_FILE).write_text(header + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))


def export_sheet(items: Sequence[ExportItem], root: Path, out: Path, n: int = 24, side: int = 320) -> Path | None:
    """A contact sheet of exported images: confirmed boxes in their class colour (``*`` when the reviewer
    corrected the class), dismissed boxes crossed out in black; background images say so."""
    from datasets.checks import save_sheet

    tiles = []
    for item in list(items)[:n]:
        try:
            image = read_image(root / item.image)
        except ImageReadError:
            continue
        confirmed = [lb for lb in item.labels if lb.verdict == "confirmed"]
        dets = Detections(
            np.array([lb.box for lb in confirmed], np.float32).reshape(-1, 4),
            np.ones(len(confirmed), np.float32),
            np.array([CLASS_IDS[lb.detector_class] for lb in confirmed], np.int64),
        )
        names = [f"{lb.detector_class}{'*' * (lb.detector_class != lb.model_class)} #{lb.case_id}" for lb in confirmed]
        drawn = draw_detections(image, dets, labels=names)
        t = max(1, round(max(image.shape[:2]) / 300))
        for lb in item.labels:
            if lb.verdict == "dismissed" and lb.box:
                x1, y1, x2, y2 = (round(v) for v in lb.box)
                cv2.rectangle(drawn, (x1, y1), (x2, y2), (0, 0, 0), t)
                cv2.line(drawn, (x1, y1), (x2, y2), (0, 0, 0), t)
                cv2.line(drawn, (x1, y2), (x2, y1), (0, 0, 0), t)
        h, w = drawn.shape[:2]
        scale = side / max(h, w)
        drawn = cv2.resize(drawn, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        tile = np.full((side + 20, side, 3), 255, np.uint8)
        tile[: drawn.shape[0], : drawn.shape[1]] = drawn
        caption = ("background: " if item.negative else "") + ", ".join(
            f"#{lb.case_id} {'ok' if lb.verdict == 'confirmed' else 'x'}" for lb in item.labels
        )
        cv2.putText(tile, caption[:52], (4, side + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    return save_sheet(tiles, out, cols=4) if tiles else None


# -------------------------------------------------------------------------------- import corrections


_TOOL_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio prefixes uploaded files with 8 hex digits and '-'


@dataclass
class Annotations:
    """Boxes per image file stem, by class name, and the findings (warnings) of reading them."""

    names: list[str]
    boxes: dict[str, np.ndarray]  # stem -> (N, 5) rows: class index into names, cx, cy, w, h (normalised)
    source: str
    issues: list[Issue] = field(default_factory=list)


def _refuse_errors(issues: Sequence[Issue]) -> list[Issue]:
    """Corrections are imported whole or not at all: raise on any ``error`` finding; the rest is returned."""
    errors = [i for i in issues if i.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 3} more errors)" if len(errors) > 3 else ""
        raise ExportError(
            "; ".join(f"{i.file}:{i.line}: {i.message}" if i.line else f"{i.file}: {i.message}" for i in errors[:3])
            + more
        )
    return list(issues)


def read_yolo_annotations(src: Path) -> Annotations:
    """A YOLO export (Label Studio: classes.txt + labels/; CVAT YOLO 1.1: obj.names + obj_train_data/;
    or a data.yaml dataset): boxes per label file stem."""
    if not src.is_dir():
        raise ExportError(f"{src}: a YOLO export is a folder (with classes.txt, obj.names or data.yaml)")
    names: list[str] | None = None
    for candidate in ("classes.txt", "obj.names", "labels/classes.txt"):
        if (src / candidate).is_file():
            names = [n.strip() for n in (src / candidate).read_text().splitlines() if n.strip()]
            break
    if names is None and (src / "notes.json").is_file():
        cats = json.loads((src / "notes.json").read_text()).get("categories", [])
        names = [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
    if names is None:
        yamls = [p for p in (src / "data.yaml", *src.glob("*.yaml")) if p.is_file()]
        if yamls:
            from datasets.yolo import parse_names

            names = parse_names((yaml.safe_load(yamls[0].read_text()) or {}).get("names"), yamls[0])
    if not names:
        raise ExportError(f"{src}: no class names (classes.txt, obj.names, notes.json or data.yaml)")
    boxes: dict[str, np.ndarray] = {}
    found: list[Issue] = []
    skip = {"classes.txt", "obj.names", "train.txt", "valid.txt", "test.txt", "obj.data"}
    for path in sorted(src.rglob("*.txt")):
        if path.name in skip:
            continue
        rows, issues = parse_label_lines(path.read_text(encoding="utf-8"), len(names), str(path))
        found += issues
        if path.stem in boxes:
            raise ExportError(f"{path}: a second label file for image {path.stem}")
        boxes[path.stem] = rows
    return Annotations(names, boxes, str(src), _refuse_errors(found))


def _number(value: object) -> float:
    """A finite JSON number (a numeric string passes too); ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(value)
    return number


def _coco_image_size(path: Path, file_name: str, image_dirs: Sequence[Path]) -> tuple[float, float] | str:
    """Width and height of a COCO image read from its file (beside the JSON file, in ``images/`` there or one
    folder up, or in ``image_dirs``); a reason string when there is no readable file."""
    name = re.split(r"[/=\\\\]", file_name)[-1]
    rel = Path(file_name.lstrip("/"))
    base = path.parent
    candidates = [Path(file_name)] if Path(file_name).is_absolute() else []
    candidates += [base / rel, base / "images" / name, base.parent / rel, base.parent / "images" / name]
    candidates += [d / n for d in image_dirs for n in (name, _TOOL_PREFIX.sub("", name))]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        where = ", ".join(str(d) for d in [base, *image_dirs])
        return f"no image file {name!r} was found to read them from (looked in {where})"
    try:
        h, w = read_image(file).shape[:2]
    except ImageReadError as exc:
        return f"its image file is unreadable: {exc}"
    return float(w), float(h)


def read_coco_annotations(src: Path, image_dirs: Sequence[Path] = ()) -> Annotations:
    """A COCO export (Label Studio ``result.json``, CVAT ``annotations/instances_*.json``): boxes per image
    file stem, normalised by each image's size (read from the image file when the entry gives none).

    Boxes are checked as YOLO label lines are (:func:`datasets.yolo.check_box`): a box partly outside its
    image is clipped (a warning), one wholly outside or without area refuses the import, as does a missing
    or non-numeric ``bbox``; an annotation with only a polygon ``segmentation`` gets the polygon's bounding
    box. Errors name the JSON file and the annotation or image id.
    """
    path = src
    if src.is_dir():
        found = [src / "result.json", *sorted((src / "annotations").glob("instances_*.json"))]
        found += sorted(src.glob("*.json"))
        path = next((p for p in found if p.is_file()), src / "result.json")
    try:
        coco = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path}: no COCO annotation file") from None
    except ValueError as exc:
        raise ExportError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(coco, dict) or not {"images", "annotations", "categories"} <= set(coco):
        raise ExportError(f"{path}: not a COCO file (needs images, annotations and categories)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco[key], list) or not all(isinstance(x, dict) for x in coco[key]):
            raise ExportError(f"{path}: {key!r} must be a list of objects")
    for c in coco["categories"]:
        if "id" not in c or "name" not in c:
            raise ExportError(f"{path}: category {c} needs an 'id' and a 'name'")
    try:
        cats = sorted(coco["categories"], key=lambda c: c["id"])
    except TypeError:
        raise ExportError(f"{path}: category ids must all be numbers (or all strings)") from None
    names = [str(c["name"]) for c in cats]
    cat_index = {c["id"]: k for k, c in enumerate(cats)}
    images: dict[object, tuple[str, float, float]] = {}
    for im in coco["images"]:
        if "id" not in im or not isinstance(im.get("file_name"), str):
            raise ExportError(f"{path}: image entry {im} needs an 'id' and a 'file_name'")
        where = f"image {im['id']} ({im['file_name']})"
        if im.get("width") is None or im.get("height") is None:
            size = _coco_image_size(path, im["file_name"], image_dirs)
            if isinstance(size, str):
                raise ExportError(f"{path}: {where} gives no width/height and {size}")
            w, h = size
        else:
            try:
                w, h = _number(im["width"]), _number(im["height"])
            except ValueError:
                size = f"{im['width']!r}x{im['height']!r}"
                raise ExportError(f"{path}: {where}: width/height {size} are not numbers") from None
            if w <= 0 or h <= 0:
                raise ExportError(f"{path}: {where}: width/height must be positive, not {w:g}x{h:g}")
        stem = Path(re.split(r"[/=\\\\]", im["file_name"])[-1]).stem
        images[im["id"]] = (stem, w, h)
    boxes: dict[str, list[list[float]]] = {stem: [] for stem, _, _ in images.values()}
    issues: list[Issue] = []
    for ann in coco["annotations"]:
        if ann.get("image_id") not in images or ann.get("category_id") not in cat_index:
            raise ExportError(f"{path}: annotation {ann.get('id')} names an unknown image or category")
        stem, w, h = images[ann["image_id"]]
        ref = f"annotation {ann.get('id')} (image {ann['image_id']}, {w:g}x{h:g} px)"

        def report(severity: str, kind: str, msg: str, ref: str = ref) -> None:
            issues.append(Issue(severity, kind, str(path), f"{ref}: {msg}"))  # type: ignore[arg-type]

        xyxy = _coco_box(ann, report)
        if xyxy is None:
            continue
        box = check_box(xyxy[0] / w, xyxy[1] / h, xyxy[2] / w, xyxy[3] / h, report, tolerance=math.inf)
        if box is not None:
            x1, y1, x2, y2 = box
            boxes[stem].append([cat_index[ann["category_id"]], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
    rows = {k: np.array(v, np.float32).reshape(-1, 5) for k, v in boxes.items()}
    return Annotations(names, rows, str(path), _refuse_errors(issues))


def _coco_box(ann: dict, report: Callable[[str, str, str], None]) -> tuple[float, float, float, float] | None:
    """A COCO annotation's pixel xyxy box: its ``bbox``, else the bounding box of its polygon segmentation."""
    bbox = ann.get("bbox")
    if bbox is not None:
        if not isinstance(bbox, list) or len(bbox) != 4:
            report("error", "wrong_arity", f"bbox must be [x, y, width, height], not {bbox!r}")
            return None
        try:
            x, y, bw, bh = (_number(v) for v in bbox)
        except ValueError:
            report("error", "not_a_number", f"bbox {bbox!r} holds a value that is not a number")
            return None
        return x, y, x + bw, y + bh
    seg = ann.get("segmentation")
    if not seg or not isinstance(seg, list) or not all(isinstance(p, list) for p in seg):
        what = "its segmentation is not a polygon (RLE?)" if seg else "no segmentation"
        report("error", "no_box", f"has no bbox and {what}")
        return None
    try:
        points = [_number(v) for polygon in seg for v in polygon]
    except ValueError:
        report("error", "not_a_number", "segmentation holds a value that is not a number")
        return None
    if len(points) < 4 or len(points) % 2:
        report("error", "wrong_arity", f"segmentation polygon of {len(points)} values is not a list of x, y points")
        return None
    xs, ys = points[0::2], points[1::2]
    report("warning", "polygon", f"no bbox: the bounding box of its segmentation polygon ({len(xs)} points) is used")
    return min(xs), min(ys), max(xs), max(ys)


@dataclass
class ImportResult:
    """What an import changed."""

    folder: Path
    corrected: list[str]
    unchanged: int
    unknown: list[str]
    boxes_before: int
    boxes_after: int
    warnings: list[Issue] = field(default_factory=list)


def import_annotations(src: Path, into: Path, fmt: str | None = None, mapping: str = "product") -> ImportResult:
    """Replace the labels of the export folder ``into`` with corrected annotations from ``src`` (YOLO folder
    or COCO JSON; ``fmt`` auto-detected), matched by file name (the case ids are in it); the reviewed labels
    are kept in ``labels.reviewed/`` and the correction is recorded in ``export.json`` (with the warnings of
    reading the annotations: clipped boxes, polygons)."""
    export = load_export(into)
    fmt = fmt or ("coco" if src.suffix == ".json" or (src.is_dir() and (src / "result.json").is_file()) else "yolo")
    ann = read_coco_annotations(src, [into / "images"]) if fmt == "coco" else read_yolo_annotations(src)
    class_map = load_mapping(mapping).class_map(ann.names)
    unmapped = [n for n, p in zip(ann.names, class_map, strict=True) if p is None]
    stems = {item["stem"]: item for item in export["items"]}
    matches: dict[str, str] = {}
    unknown = []
    for stem in ann.boxes:
        target = stem if stem in stems else _TOOL_PREFIX.sub("", stem)
        if target in stems:
            matches[target] = stem
        else:
            unknown.append(stem)
    if not matches:
        raise ExportError(
            f"{ann.source}: none of its {len(ann.boxes)} images is an image of {into} "
            f"(e.g. {', '.join(sorted(ann.boxes)[:3]) or 'none'}); is it the export of this folder's tasks?"
        )
    used = {int(c) for stem in matches.values() for c in ann.boxes[stem][:, 0]}
    used_unmapped = sorted(ann.names[c] for c in used if class_map[c] is None)
    if used_unmapped:
        raise ExportError(
            f"{ann.source}: classes {', '.join(used_unmapped)} are not product classes under mapping {mapping!r} "
            f"(unmapped: {', '.join(unmapped)})"
        )
    labels = into / "labels"
    backup = into / REVIEWED_LABELS
    if not backup.is_dir():
        backup.mkdir()
        for stem in stems:
            if (labels / f"{stem}.txt").is_file():
                shutil.copyfile(labels / f"{stem}.txt", backup / f"{stem}.txt")
    warnings = [i for i in ann.issues if i.severity == "warning"]  # errors refused the import already
    before = after = 0
    for target, stem in sorted(matches.items()):
        rows = ann.boxes[stem].copy()
        old, _ = parse_label_lines((labels / f"{target}.txt").read_text(), len(CLASS_NAMES))
        before += len(old)
        if len(rows):
            rows[:, 0] = [CLASS_IDS[class_map[int(c)]] for c in rows[:, 0]]
        after += len(rows)
        write_label_file(labels / f"{target}.txt", rows)
    export.setdefault("corrections", []).append(
        {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "from": ann.source,
            "format": fmt,
            "mapping": mapping,
            "images": sorted(matches),
            "boxes_before": before,
            "boxes_after": after,
            "warnings": [str(i) for i in warnings],
        }
    )
    (into / EXPORT_FILE).write_text(json.dumps(export, indent=1, ensure_ascii=False) + "\n")
    return ImportResult(into, sorted(matches), len(stems) - len(matches), sorted(unknown), before, after, warnings)


def read_export_labels(folder: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    """(class ids, pixel xyxy) of one exported image's current labels (after any imported corrections)."""
    image = next((p for p in (folder / "images").glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES), None)
    if image is None:
        raise ExportError(f"{folder}: no image {stem}")
    try:
        h, w = read_image(image).shape[:2]
    except ImageReadError as exc:
        raise ExportError(str(exc)) from None
    rows, _ = parse_label_lines((folder / "labels" / f"{stem}.txt").read_text(), len(CLASS_NAMES))
    return rows[:, 0].astype(int), xywhn_to_xyxy(rows, w, h)
