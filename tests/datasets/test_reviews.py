"""Reviewed cases back into training data: a real case store filled by the real producers (photo filing
and stream evidence, with a real tiny model), reviewed, exported, re-imported after correction in an
annotation tool, and read back as a recipe source."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from datasets.checks import scan_samples
from datasets.pseudo import add_pseudo_labels
from datasets.recipe import build, load_recipe
from datasets.reviews import (
    ExportError,
    ExportResult,
    export_reviews,
    export_window_end,
    import_annotations,
    read_export_labels,
)
from datasets.sources import load_source
from models.classes import CLASS_IDS, CLASS_NAMES
from pipeline.cases import EvidenceImage, Violation
from pipeline.cli import main
from pipeline.decode import read_image
from pipeline.detections import Detections, box_iou
from pipeline.evidence import render_evidence
from pipeline.photos import find_violations, photo_violations
from serve.store import Actor, CaseStore

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
ALICE, BOB = Actor("alice", "reviewer"), Actor("bob", "reviewer")


def encode(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


@pytest.fixture
def filed(use_tiny_registry, tiny_pt: Path, tmp_path: Path):
    """A SQLite case store with cases filed the way the product files them: photo cases from the tiny model's
    litter detections (two photos with several cases each), a camera case with stream evidence, and two
    cases filed before clean frames were kept (annotated frame and crop only)."""
    from pipeline.detect import Detector

    detector = Detector()
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}", tmp_path / "data")
    photos: list[tuple[Path, list[int]]] = []
    for path in sorted((tiny_pt.parents[3] / "shapes" / "train" / "images").glob("*.jpg")):
        image = read_image(path)
        dets = detector.detect(image)
        if len(dets.of_classes(["litter"])) < 2:
            continue
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        found = photo_violations(
            image,
            dets,
            find_violations(dets, sha),
            sha256=sha,
            model_version=detector.version,
            taken_at=T0,
            source_name=path.name,
        )
        ids = sorted({store.ingest(v).case_id for v in found})
        photos.append((path, ids))
        if len(photos) == 2:
            break
    assert len(photos) == 2, "the tiny model finds several litter shapes on some training images"
    # a stream worker's violation: a parked car with the evidence pipeline.streams renders
    scene = np.full((240, 320, 3), 140, np.uint8)
    cv2.circle(scene, (200, 120), 40, (230, 60, 20), -1)
    box = np.array([160, 80, 240, 160], np.float32)
    evidence = render_evidence(scene, Detections([box], [0.8], [CLASS_IDS["car"]]), box, CLASS_IDS["car"], "car", ["c"])
    camera = Violation(
        key="cam-1:illegal_parking:7",
        type="illegal_parking",
        source="camera",
        source_id="cam-1",
        first_seen=T0,
        last_seen=T0 + timedelta(minutes=3),
        detector_class="car",
        score=0.8,
        box=tuple(box.tolist()),
        frame_size=(320, 240),
        model_version=detector.version,
        evidence=evidence,
    )
    cam_id = store.ingest(camera).case_id
    # filed by an older version: annotated frame and crop only
    old = []
    for k in range(2):
        frame = scene.copy()
        cv2.rectangle(frame, (10 + k, 10), (60, 60), (0, 0, 255), 3)
        old.append(
            store.ingest(
                camera.model_copy(
                    update={
                        "key": f"old-{k}",
                        "source_id": f"cam-old-{k}",
                        "box": (10.0 + k, 10.0, 60.0, 60.0),
                        "evidence": [
                            EvidenceImage(kind="frame", jpeg=encode(frame)),
                            EvidenceImage(kind="crop", jpeg=encode(scene[0:80, 0:80])),
                        ],
                    }
                )
            ).case_id
        )
    yield {"store": store, "photos": photos, "camera": cam_id, "old": old, "detector": detector}
    store.dispose()


def test_export_applies_corrections_keeps_hard_negatives_and_case_ids(filed, tmp_path: Path):
    store, photos = filed["store"], filed["photos"]
    (p1, ids1), (_, ids2) = photos
    # photo 1: one case is really a car (class correction), the others confirmed; photo 2: all false positives
    store.review(ids1[0], "relabel", ALICE, type="illegal_parking", detector_class="car")
    for cid in ids1[1:]:
        store.review(cid, "confirm", ALICE)
    for cid in ids2:
        store.review(cid, "dismiss", BOB)
    store.review(filed["camera"], "confirm", ALICE)
    old_confirmed, old_dismissed = filed["old"]
    store.review(old_confirmed, "confirm", ALICE)
    store.review(old_dismissed, "dismiss", BOB)

    out = tmp_path / "field-1"
    result = export_reviews(store, out, base_recipe="product-v1", source_name="field-1", progress=False)
    counts = result.counts()
    assert counts["cases"] == len(ids1) + len(ids2) + 3
    assert counts["images"] == 4  # photo 1, photo 2, the camera frame, the old dismissed case's crop
    assert counts["corrected"] == 1 and counts["dismissed"] == len(ids2) + 1 and counts["background_images"] == 2
    assert [s["case_id"] for s in result.skipped] == [old_confirmed]
    assert "box drawn in" in result.skipped[0]["reason"]

    by_cases = {tuple(lb.case_id for lb in i.labels): i for i in result.items}
    item1 = by_cases[tuple(ids1)]
    assert item1.stem.startswith(f"case-{'-'.join(map(str, ids1))}_") and item1.origin == "clean"
    classes, boxes = read_export_labels(out, item1.stem)
    case1 = {c.id: c for c in (store.get_case(i) for i in ids1)}
    assert sorted(classes.tolist()) == sorted([CLASS_IDS["car"]] + [CLASS_IDS["litter"]] * (len(ids1) - 1))
    for cid in ids1:
        clean = next(e for e in case1[cid].evidence if e.kind == "clean")
        assert np.abs(boxes - np.array(clean.box)).max(1).min() < 1.0  # every case's box is a label
    # the exported picture is the clean frame: the same pixels as the photo (no box drawn), at its size
    img = cv2.imread(str(out / item1.image))
    photo = cv2.imread(str(p1))
    assert img.shape == photo.shape and np.abs(img.astype(int) - photo.astype(int)).mean() < 4
    frame = next(e for e in case1[ids1[0]].evidence if e.kind == "frame")
    annotated = cv2.imdecode(np.frombuffer(store.evidence.read(frame.sha256), np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(annotated.astype(int) - photo.astype(int)).mean() > np.abs(img.astype(int) - photo.astype(int)).mean()

    item2 = by_cases[tuple(ids2)]
    assert item2.negative and (out / "labels" / f"{item2.stem}.txt").read_text() == ""  # boxes removed
    crop_item = by_cases[(old_dismissed,)]
    assert crop_item.origin == "crop" and crop_item.negative and crop_item.width == 80
    cam_item = by_cases[(filed["camera"],)]
    cam_classes, cam_boxes = read_export_labels(out, cam_item.stem)
    assert cam_classes.tolist() == [CLASS_IDS["car"]] and (cam_item.width, cam_item.height) == (320, 240)
    np.testing.assert_allclose(cam_boxes[0], [160, 80, 240, 160], atol=1)

    # export.json: every item with its cases and verdicts, the skipped case with its reason
    body = json.loads((out / "export.json").read_text())
    assert body["counts"] == counts and body["source_name"] == "field-1"
    labelled = {lb["case_id"]: lb for it in body["items"] for lb in it["labels"]}
    assert labelled[ids1[0]]["detector_class"] == "car" and labelled[ids1[0]]["model_class"] == "litter"
    assert labelled[ids1[0]]["reviewed_by"] == "alice" and labelled[ids2[0]]["verdict"] == "dismissed"
    assert body["skipped"][0]["case_id"] == old_confirmed

    # Label Studio: the model's boxes (its class and score) and the reviewed labels as pre-annotations
    tasks = json.loads((out / "tasks.json").read_text())
    task = next(t for t in tasks if t["data"]["stem"] == item1.stem)
    assert task["data"]["image"] == f"/data/local-files/?d=field-1/images/{item1.stem}.jpg"
    assert task["data"]["case_ids"] == ids1 and "model said litter" in task["data"]["review"]
    model = next(p for p in task["predictions"] if p["model_version"] == filed["detector"].version)
    reviewed = next(p for p in task["predictions"] if p["model_version"] == "reviewed")
    assert {r["value"]["rectanglelabels"][0] for r in model["result"]} == {"litter"}
    assert sorted(r["value"]["rectanglelabels"][0] for r in reviewed["result"]) == sorted(
        CLASS_NAMES[c] for c in classes
    )
    r0 = next(r for r in model["result"] if r["id"] == f"m{ids1[0]}")
    h, w = photo.shape[:2]
    x1, y1, x2, y2 = next(e for e in case1[ids1[0]].evidence if e.kind == "clean").box
    assert r0["value"]["x"] == pytest.approx(100 * x1 / w, abs=0.05)  # boxes kept to 0.1 px
    assert r0["value"]["width"] == pytest.approx(100 * (x2 - x1) / w, abs=0.1)
    assert r0["value"]["y"] == pytest.approx(100 * y1 / h, abs=0.05)
    assert r0["value"]["height"] == pytest.approx(100 * (y2 - y1) / h, abs=0.1)
    assert r0["original_width"] == w and r0["type"] == "rectanglelabels" and 0 < r0["score"] <= 1
    neg = next(t for t in tasks if t["data"]["stem"] == item2.stem)
    assert next(p for p in neg["predictions"] if p["model_version"] == "reviewed")["result"] == []
    config = (out / "label-studio.xml").read_text()
    assert all(f'<Label value="{c}"' in config for c in CLASS_NAMES) and 'value="$image"' in config
    assert (out / "sheet.jpg").is_file() and cv2.imread(str(out / "sheet.jpg")) is not None

    # the folder is a recipe source: recipe.yaml extends the base recipe with it
    recipe = load_recipe(out / "recipe.yaml")
    base = load_recipe("product-v1")
    assert [s.name for s in recipe.sources] == [*(s.name for s in base.sources), "field-1"]
    assert recipe.extends == "product-v1" and recipe.synth_ads == base.synth_ads
    data = load_source(recipe.sources[-1])
    assert len(data.samples) == 4 and {s.split for s in data.samples} == {"train"}
    car_sample = next(s for s in data.samples if s.image.stem == cam_item.stem)
    assert car_sample.boxes[:, 0].tolist() == [CLASS_IDS["car"]]
    # a frame is labelled only where cases were filed: no class is exhaustive, so the build's teacher adds
    # the other vehicles (a CCTV frame's unfiled cars are not background) but not a second box on the case's
    assert all(s.labelled == frozenset() for s in data.samples)
    scan_samples([car_sample], features=False)  # as the build does: the image's size
    filed_car = car_sample.xyxy()[0]
    other_car = np.array([0, 0, car_sample.width / 4, car_sample.height / 4], np.float32)
    assert box_iou(other_car, filed_car)[0, 0] == 0
    teacher = Detections(
        np.stack([filed_car + 1, other_car]), np.array([0.9, 0.8], np.float32), np.array([CLASS_IDS["car"]] * 2)
    )
    add_pseudo_labels([car_sample], [teacher], conf=0.5)
    assert car_sample.xyxy(car_sample.pseudo) == pytest.approx(other_car[None], abs=0.5)

    assert recipe.name == "product-v1+field-1"
    with pytest.raises(ExportError, match="not empty"):
        export_reviews(store, out, progress=False)
    with pytest.raises(ExportError, match="--base-recipe: product-v9: no such recipe"):
        export_reviews(store, tmp_path / "other", base_recipe="product-v9", progress=False)
    assert not (tmp_path / "other").exists()


def export_after(store: CaseStore, previous: Path, out: Path, name: str, **kw) -> ExportResult:
    """The next export of a chain: the window after ``previous``'s, extending its recipe."""
    return export_reviews(
        store,
        out,
        since=export_window_end(previous),
        base_recipe=str(previous / "recipe.yaml"),
        source_name=name,
        progress=False,
        **kw,
    )


@pytest.fixture
def base_recipe(garbage_like: Path, tmp_path: Path) -> Path:
    """A small recipe to extend an export with: a garbage-like source, no scene dedup, no teacher."""
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "name": "base",
                "sources": [{"name": "garbage", "path": str(garbage_like), "mapping": "garbage"}],
                "dedup": {"scene": False},
                "pseudo": {"enabled": False},
            }
        )
    )
    return base


def test_a_frame_waits_for_every_case_on_it_and_since_selects_by_review_time(filed, tmp_path: Path):
    store = filed["store"]
    (_, ids1), _ = filed["photos"]
    store.review(ids1[0], "confirm", ALICE)  # the other cases of that photo are still new
    first = export_reviews(store, tmp_path / "a", progress=False)
    assert first.items == [] and [s["case_id"] for s in first.skipped] == [ids1[0]]
    assert f"case {ids1[1]} (new)" in first.skipped[0]["reason"]
    cut = datetime.now(timezone.utc)
    for cid in ids1[1:]:
        store.review(cid, "dismiss", BOB)
    later = export_reviews(store, tmp_path / "b", since=cut, progress=False)
    # reviewed since the cut: the dismissed ones; the frame carries the earlier confirmation too
    assert later.cases == len(ids1) - 1 and len(later.items) == 1
    assert [lb.case_id for lb in later.items[0].labels] == ids1
    classes, _ = read_export_labels(tmp_path / "b", later.items[0].stem)
    assert classes.tolist() == [CLASS_IDS["litter"]]


def test_corrected_annotations_come_back_from_label_studio_yolo_and_coco(filed, tmp_path: Path, capsys):
    store = filed["store"]
    (_, ids1), (_, ids2) = filed["photos"]
    for cid in ids1:
        store.review(cid, "confirm", ALICE)
    for cid in ids2:
        store.review(cid, "dismiss", ALICE)
    out = tmp_path / "field"
    result = export_reviews(store, out, progress=False)
    one, two = sorted(result.items, key=lambda i: i.labels[0].case_id)
    reviewed_one = (out / "labels" / f"{one.stem}.txt").read_text()

    # Label Studio YOLO export: its own class order, uploaded files renamed with an 8-hex prefix
    ls = tmp_path / "ls-yolo"
    (ls / "labels").mkdir(parents=True)
    (ls / "classes.txt").write_text("car\nlitter\n")
    (ls / "labels" / f"1a2b3c4d-{one.stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.25 0.25 0.1 0.1\n")
    (ls / "labels" / "not-from-this-export.txt").write_text("1 0.5 0.5 0.1 0.1\n")
    assert main(["data", "import", str(ls), "--into", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 images of" in printed and "not-from-this-export" in printed
    classes, boxes = read_export_labels(out, one.stem)
    assert classes.tolist() == [CLASS_IDS["car"], CLASS_IDS["litter"]]
    assert boxes[0] == pytest.approx([0.4 * one.width, 0.4 * one.height, 0.6 * one.width, 0.6 * one.height], abs=0.5)
    assert (out / "labels.reviewed" / f"{one.stem}.txt").read_text() == reviewed_one  # the reviewed labels kept

    # CVAT / Label Studio COCO: a box added on the former background image (a missed object after all)
    coco = {
        "images": [{"id": 7, "file_name": f"images/{two.stem}.jpg", "width": two.width, "height": two.height}],
        "categories": [{"id": 0, "name": "car"}, {"id": 1, "name": "litter"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, 30, 40]}],
    }
    (tmp_path / "result.json").write_text(json.dumps(coco))
    assert main(["data", "import", str(tmp_path / "result.json"), "--into", str(out)]) == 0
    classes, boxes = read_export_labels(out, two.stem)
    assert classes.tolist() == [CLASS_IDS["litter"]] and boxes[0] == pytest.approx([10, 20, 40, 60], abs=0.5)
    corrections = json.loads((out / "export.json").read_text())["corrections"]
    assert [c["format"] for c in corrections] == ["yolo", "coco"] and corrections[1]["images"] == [two.stem]
    assert load_source(load_recipe(out / "recipe.yaml").sources[-1]).samples  # still a valid source

    # refusals name the problem
    coco["categories"][1]["name"] = "banana"
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(ExportError, match="banana"):
        import_annotations(tmp_path / "bad.json", out)
    coco["images"][0]["file_name"] = "elsewhere.jpg"
    coco["categories"][1]["name"] = "litter"
    (tmp_path / "other.json").write_text(json.dumps(coco))
    with pytest.raises(ExportError, match="none of its 1 images"):
        import_annotations(tmp_path / "other.json", out)
    with pytest.raises(ExportError, match="not an export-reviews folder"):
        import_annotations(ls, tmp_path)


def test_export_reviews_command(filed, tmp_path: Path, capsys):
    store = filed["store"]
    (_, ids1), _ = filed["photos"]
    for cid in ids1:
        store.review(cid, "confirm", ALICE)
    data_dir = store.data_dir
    args = ["data", "export-reviews", "--db", store.db_url, "--data-dir", str(data_dir), "--quiet"]
    today = datetime.now(timezone.utc).date()
    assert main([*args, "--since", str(today - timedelta(days=1)), "--out", str(tmp_path / "x")]) == 0
    printed = capsys.readouterr().out
    assert f"{len(ids1)} reviewed cases -> 1 images" in printed and "recipe.yaml" in printed
    assert main([*args, "--since", str(today + timedelta(days=2)), "--out", str(tmp_path / "y")]) == 0
    assert "0 reviewed cases -> 0 images" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--since", "yesterday", "--out", str(tmp_path / "z")])
    assert "not a date" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a mistyped folder: no empty store made there, no export window recorded
        main(["data", "export-reviews", "--data-dir", str(tmp_path / "dat"), "--out", str(tmp_path / "w")])
    assert "no case store at" in capsys.readouterr().err and not (tmp_path / "dat").exists()
    assert not (tmp_path / "w").exists()
    spec = yaml.safe_load((tmp_path / "x" / "recipe.yaml").read_text())
    assert spec["sources"][0]["path"] == str((tmp_path / "x" / "images").resolve())


def test_after_an_export_the_next_one_takes_exactly_the_reviews_made_since(filed, tmp_path: Path, capsys):
    store = filed["store"]
    (_, ids1), (_, ids2) = filed["photos"]
    args = ["data", "export-reviews", "--db", store.db_url, "--data-dir", str(store.data_dir), "--quiet"]
    for cid in ids1:
        store.review(cid, "confirm", ALICE)
    assert main([*args, "--out", str(tmp_path / "first")]) == 0
    first = json.loads((tmp_path / "first" / "export.json").read_text())
    assert {lb["case_id"] for i in first["items"] for lb in i["labels"]} == set(ids1)
    assert first["until"] is not None  # the window's end is recorded even when no --until was given
    for cid in ids2:
        store.review(cid, "dismiss", BOB)
    capsys.readouterr()
    assert main([*args, "--after", str(tmp_path / "first"), "--out", str(tmp_path / "second")]) == 0
    assert f"{len(ids2)} reviewed cases -> 1 images" in capsys.readouterr().out  # the first photo is not repeated
    second = json.loads((tmp_path / "second" / "export.json").read_text())
    assert second["since"] == first["until"]
    assert {lb["case_id"] for i in second["items"] for lb in i["labels"]} == set(ids2)
    assert main([*args, "--after", str(tmp_path / "second"), "--out", str(tmp_path / "third")]) == 0
    out = capsys.readouterr().out  # nothing new: said so, and no build of an empty recipe suggested
    assert "0 reviewed cases -> 0 images" in out and f"continues with --after {tmp_path / 'third'}" in out
    assert "next: streetwatch data build" not in out and "contact sheet" not in out
    with pytest.raises(SystemExit):
        main([*args, "--after", str(tmp_path), "--out", str(tmp_path / "fourth")])
    assert "not an export-reviews folder" in capsys.readouterr().err


def test_a_frame_reviewed_again_after_an_export_is_built_from_the_later_export_only(
    filed, base_recipe: Path, tmp_path: Path
):
    store = filed["store"]
    (_, ids1), _ = filed["photos"]
    for cid in ids1:
        store.review(cid, "confirm", ALICE)
    first = export_reviews(
        store, tmp_path / "first", base_recipe=str(base_recipe), source_name="field-1", progress=False
    )
    # the reviewer changes her mind about one case: the next export takes the photo again, with the car
    store.review(ids1[0], "relabel", ALICE, type="illegal_parking", detector_class="car")
    after = export_window_end(tmp_path / "first")
    second = export_reviews(
        store,
        tmp_path / "second",
        since=after,
        base_recipe=str(tmp_path / "first" / "recipe.yaml"),
        source_name="field-2",
        progress=False,
    )
    assert [i.sha256 for i in first.items] == [i.sha256 for i in second.items]  # the same frame twice
    recipe = load_recipe(tmp_path / "second" / "recipe.yaml")
    assert [s.name for s in recipe.sources] == ["garbage", "field-1", "field-2"]
    result = build(recipe, tmp_path, tmp_path / "dataset", sheets=False)
    # one copy of the frame trains, the later one with the car; the earlier copy is reported as superseded
    (stem,) = [p.stem for p in (tmp_path / "dataset" / "images" / "train").iterdir() if "case-" in p.stem]
    assert stem.startswith("field-2__")
    labels = (tmp_path / "dataset" / "labels" / "train" / f"{stem}.txt").read_text().split()
    assert labels[::5].count(str(CLASS_IDS["car"])) == 1
    (dropped,) = [d for d in json.loads(result.manifest.read_text())["dedup"]["dropped"] if "field" in d["image"]]
    assert dropped["image"].startswith("field-1/") and "later review export" in dropped["why"]


def small_export(root: Path, stems: tuple[str, ...] = ("case-1_aaaa1111",), size: tuple[int, int] = (640, 480)) -> Path:
    """An export-reviews folder as the export writes it (images, empty labels, export.json), without a store."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for stem in stems:
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), np.full((size[1], size[0], 3), 90, np.uint8))
        (root / "labels" / f"{stem}.txt").write_text("")
    items = [{"stem": s, "image": f"images/{s}.jpg", "width": size[0], "height": size[1]} for s in stems]
    (root / "export.json").write_text(json.dumps({"items": items, "corrections": []}))
    return root


def coco_file(path: Path, annotations: list[dict], image: dict | None = None) -> Path:
    image = image or {"id": 1, "file_name": "images/case-1_aaaa1111.jpg", "width": 640, "height": 480}
    body = {"images": [image], "categories": [{"id": 1, "name": "litter"}], "annotations": annotations}
    path.write_text(json.dumps(body))
    return path


def test_coco_boxes_are_checked_like_yolo_lines(tmp_path: Path, capsys):
    export = small_export(tmp_path / "field")
    ann = [
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [600, 400, 200, 200]},  # partly outside: clipped
        {"id": 12, "image_id": 1, "category_id": 1, "segmentation": [[10, 20, 110, 20, 110, 70, 10, 70]]},
    ]
    assert main(["data", "import", str(coco_file(tmp_path / "ok.json", ann)), "--into", str(export)]) == 0
    printed = capsys.readouterr().out
    assert "ok.json: warning: annotation 11" in printed and "clipped" in printed
    assert "annotation 12" in printed and "segmentation polygon" in printed
    classes, boxes = read_export_labels(export, "case-1_aaaa1111")
    assert classes.tolist() == [CLASS_IDS["litter"]] * 2
    assert boxes[0] == pytest.approx([600, 400, 640, 480], abs=0.5)  # inside the image, never beyond
    assert boxes[1] == pytest.approx([10, 20, 110, 70], abs=0.5)
    correction = json.loads((export / "export.json").read_text())["corrections"][0]
    assert len(correction["warnings"]) == 2

    refused = {
        "wholly outside": ([{"id": 21, "image_id": 1, "category_id": 1, "bbox": [700, 500, 20, 20]}], "outside"),
        "no area": ([{"id": 22, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 20]}], "no area"),
        "not a number": ([{"id": 23, "image_id": 1, "category_id": 1, "bbox": [10, "x", 20, 20]}], "not a number"),
        "no box": ([{"id": 24, "image_id": 1, "category_id": 1}], "has no bbox and no segmentation"),
        "RLE only": (
            [{"id": 25, "image_id": 1, "category_id": 1, "segmentation": {"counts": "a1", "size": [480, 640]}}],
            "not a polygon",
        ),
    }
    before = (export / "labels" / "case-1_aaaa1111.txt").read_text()
    bad = coco_file(tmp_path / "outside.json", refused["wholly outside"][0])
    with pytest.raises(SystemExit) as exit_info:  # the command: exit 2 with the file and annotation named
        main(["data", "import", str(bad), "--into", str(export)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("streetwatch: error: ")
    assert f"{bad}: annotation 21" in err and "outside the image" in err
    for k, (anns, needle) in enumerate(refused.values()):
        bad = coco_file(tmp_path / f"bad{k}.json", anns)
        with pytest.raises(ExportError, match=rf"bad{k}\.json: annotation {anns[0]['id']} .*{needle}"):
            import_annotations(bad, export)
    assert (export / "labels" / "case-1_aaaa1111.txt").read_text() == before  # refused imports change nothing


def test_coco_image_without_size_is_measured_from_its_file(tmp_path: Path):
    export = small_export(tmp_path / "field", size=(320, 200))
    ann = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [32, 20, 64, 40]}]
    # Label Studio's upload prefix: the file is found in the export's images/ under its own name
    unsized = {"id": 1, "file_name": "/data/upload/3/1a2b3c4d-case-1_aaaa1111.jpg"}
    import_annotations(coco_file(tmp_path / "a.json", ann, unsized), export)
    _, boxes = read_export_labels(export, "case-1_aaaa1111")
    assert boxes[0] == pytest.approx([32, 20, 96, 60], abs=0.5)
    nowhere = {"id": 5, "file_name": "elsewhere/zzz.jpg"}
    with pytest.raises(ExportError, match=r"b\.json: image 5 \(elsewhere/zzz\.jpg\) gives no width/height"):
        import_annotations(coco_file(tmp_path / "b.json", ann, nowhere), export)


def test_a_window_takes_each_verdict_as_it_stood_when_the_window_ended(filed, tmp_path: Path):
    store = filed["store"]
    (_, ids1), _ = filed["photos"]
    for cid in ids1[:-1]:
        store.review(cid, "confirm", ALICE)
    until = datetime.now(timezone.utc)
    store.review(ids1[-1], "dismiss", BOB)  # the photo's last case, reviewed after the window's end
    early = export_reviews(store, tmp_path / "a", until=until, progress=False)
    assert early.items == [] and {s["case_id"] for s in early.skipped} == set(ids1[:-1])
    assert f"case {ids1[-1]}, reviewed after this window" in early.skipped[0]["reason"]
    later = export_reviews(store, tmp_path / "b", since=export_window_end(tmp_path / "a"), progress=False)
    assert [lb.case_id for lb in later.items[0].labels] == ids1  # the next window takes the photo, whole


def test_a_dismissal_reopened_after_an_export_withdraws_its_frame_from_the_build(
    filed, base_recipe: Path, tmp_path: Path
):
    store = filed["store"]
    (_, ids1), _ = filed["photos"]
    for cid in ids1:
        store.review(cid, "dismiss", ALICE)  # the photo is a background image: nothing on it is litter
    first = export_reviews(
        store, tmp_path / "first", base_recipe=str(base_recipe), source_name="field-1", progress=False
    )
    assert len(first.items) == 1 and first.items[0].negative
    store.reopen(ids1[0], BOB, "that one is litter after all")  # not reviewed again yet
    second = export_after(store, tmp_path / "first", tmp_path / "second", "field-2")
    assert second.items == [] and [(w["export"], w["case_ids"]) for w in second.withdrawn] == [("field-1", [ids1[0]])]
    assert second.withdrawn[0]["sha256"] == first.items[0].sha256
    result = build(load_recipe(tmp_path / "second" / "recipe.yaml"), tmp_path, tmp_path / "dataset", sheets=False)
    assert not [p for p in (tmp_path / "dataset" / "images" / "train").iterdir() if "case-" in p.stem]
    (dropped,) = [d for d in json.loads(result.manifest.read_text())["dedup"]["dropped"] if "field" in d["image"]]
    assert (
        dropped["image"].startswith("field-1/")
        and f"withdrawn by field-2: a verdict on it changed since (case {ids1[0]})" in dropped["why"]
    )
    store.review(ids1[0], "confirm", BOB)  # reviewed again: the next export brings the photo back, with the box
    third = export_after(store, tmp_path / "second", tmp_path / "third", "field-3")
    assert third.withdrawn == [] and [i.sha256 for i in third.items] == [first.items[0].sha256]
    build(load_recipe(tmp_path / "third" / "recipe.yaml"), tmp_path, tmp_path / "dataset3", sheets=False)
    (stem,) = [p.stem for p in (tmp_path / "dataset3" / "images" / "train").iterdir() if "case-" in p.stem]
    assert stem.startswith("field-3__")


def test_a_frame_whose_verdict_changed_but_must_wait_is_withdrawn_then_comes_back(
    filed, base_recipe: Path, tmp_path: Path
):
    """A dismissal reopened and confirmed, while another case on the frame is relabelled only after the
    window: the frame waits for the next export, and meanwhile the earlier copy (which teaches the now
    confirmed object as background) must not train."""
    store = filed["store"]
    (_, ids1), _ = filed["photos"]
    a, rest = ids1[0], ids1[1:]
    store.review(a, "dismiss", ALICE)
    for cid in rest:
        store.review(cid, "confirm", ALICE)
    export_reviews(store, tmp_path / "e1", base_recipe=str(base_recipe), source_name="field-1", progress=False)
    store.reopen(a, BOB, "it is litter")
    store.review(a, "confirm", BOB)
    until = datetime.now(timezone.utc)
    store.review(rest[0], "relabel", BOB, type="illegal_parking", detector_class="car")  # after the window
    e2 = export_after(store, tmp_path / "e1", tmp_path / "e2", "field-2", until=until)
    assert e2.items == [] and [(w["export"], w["case_ids"]) for w in e2.withdrawn] == [("field-1", [a])]
    e3 = export_after(store, tmp_path / "e2", tmp_path / "e3", "field-3")
    assert e3.withdrawn == [] and len(e3.items) == 1  # reviewed as a whole now: back, with both changes
    classes, _ = read_export_labels(tmp_path / "e3", e3.items[0].stem)
    assert sorted(classes.tolist()) == sorted([CLASS_IDS["litter"]] * (len(ids1) - 1) + [CLASS_IDS["car"]])


def test_a_window_that_ends_before_it_starts_is_refused(filed, tmp_path: Path):
    with pytest.raises(ExportError, match="is not after the window's start"):
        export_reviews(filed["store"], tmp_path / "x", since=T0, until=T0 - timedelta(days=1), progress=False)
    assert not (tmp_path / "x").exists()


def test_a_picture_removed_by_retention_is_skipped_saying_so(tmp_path: Path):
    """A dismissal's clean frame pruned by `streetwatch evidence prune` was reported as missing from the store."""
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}", tmp_path / "data")
    try:
        clean = EvidenceImage(kind="clean", jpeg=encode(np.full((240, 320, 3), 90, np.uint8)))
        v = Violation(
            key="cam-1:illegal_parking:1",
            type="illegal_parking",
            source="camera",
            source_id="cam-1",
            first_seen=T0,
            last_seen=T0 + timedelta(minutes=1),
            detector_class="car",
            score=0.7,
            box=(10, 10, 60, 60),
            frame_size=(320, 240),
            model_version="tiny@t1/fp32",
            evidence=[clean],
        )
        cid = store.ingest(v).case_id
        store.review(cid, "dismiss", ALICE)
        now = datetime.now(timezone.utc)
        store.prune_evidence(now, now)
        result = export_reviews(store, tmp_path / "export", progress=False)
    finally:
        store.dispose()
    assert [s["case_id"] for s in result.skipped] == [cid]
    assert f"{clean.sha256} was removed by the retention policy on {now:%Y-%m-%d}" in result.skipped[0]["reason"]
