"""Evaluation: AP maths on hand-made cases, dataset reading with class mappings, the CLI report, and
agreement with ultralytics' own validation on the same checkpoint and data."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from synth import SHAPE_CLASSES

from datasets.mapping import ClassMapping, load_mapping
from models.classes import CLASS_IDS, CLASS_NAMES
from pipeline.cli import main
from pipeline.decode import read_image
from pipeline.detections import Detections
from training.evaluate import (
    DatasetError,
    EvalResult,
    ModelInfo,
    ap_per_class,
    average_precision,
    confusion_matrix,
    error_breakdown,
    evaluate,
    load_split,
    make_predictor,
    match_detections,
    plot_confusion,
    write_report,
)

LITTER, BIN = CLASS_IDS["litter"], CLASS_IDS["garbage_bin"]


def box_with_iou(iou: float, side: float = 100.0) -> np.ndarray:
    """A box shifted horizontally from (0, 0, side, side) so that its IoU with it is exactly ``iou``."""
    shift = side * (1 - iou) / (1 + iou)  # overlap (side - s) / (side + s) = iou
    return np.array([[shift, 0, side + shift, side]], np.float32)


def ap_of(gt: list[tuple[int, list[float]]], dets: list[tuple[int, float, list[float]]]) -> tuple[float, float]:
    """(mAP50, mAP50-95) of one image's detections against its ground truth, through the evaluator's maths."""
    gt_boxes = np.array([b for _, b in gt], np.float32).reshape(-1, 4)
    gt_cls = np.array([c for c, _ in gt])
    order = sorted(range(len(dets)), key=lambda i: -dets[i][1])
    det_boxes = np.array([dets[i][2] for i in order], np.float32).reshape(-1, 4)
    det_cls = np.array([dets[i][0] for i in order])
    conf = np.array([dets[i][1] for i in order])
    tp = match_detections(gt_boxes, gt_cls, det_boxes, det_cls)
    result = ap_per_class(tp, conf, det_cls, gt_cls)
    return float(result.ap50.mean()), float(result.ap50_95.mean())


# ------------------------------------------------------------------------------------ hand-made AP


def test_perfect_detections_score_one():
    gt = [(LITTER, [10, 10, 60, 60]), (LITTER, [100, 100, 180, 150]), (BIN, [0, 0, 30, 90])]
    dets = [(c, 0.9 - 0.1 * i, b) for i, (c, b) in enumerate(gt)]
    assert ap_of(gt, dets) == (1.0, 1.0)


def test_half_the_objects_found_at_full_precision():
    """Recall 0.5 at precision 1: 51 of the 101 recall thresholds (0.00..0.50) have precision 1."""
    gt = [(LITTER, [10, 10, 60, 60]), (LITTER, [100, 100, 180, 150])]
    ap50, ap = ap_of(gt, [(LITTER, 0.9, [10, 10, 60, 60])])
    assert ap50 == pytest.approx(51 / 101) and ap == pytest.approx(51 / 101)


def test_false_positive_ranked_first_halves_the_precision():
    """FP at 0.9, then the only object found at 0.8: precision 0.5 at every recall up to 1."""
    gt = [(LITTER, [10, 10, 60, 60])]
    dets = [(LITTER, 0.9, [200, 200, 250, 250]), (LITTER, 0.8, [10, 10, 60, 60])]
    assert ap_of(gt, dets)[0] == pytest.approx(0.5)
    # the same FP ranked last costs nothing
    dets = [(LITTER, 0.9, [10, 10, 60, 60]), (LITTER, 0.8, [200, 200, 250, 250])]
    assert ap_of(gt, dets)[0] == pytest.approx(1.0)


def test_iou_just_below_and_just_above_one_half():
    gt = [(LITTER, [0, 0, 100, 100])]
    below = box_with_iou(0.49)[0].tolist()
    above = box_with_iou(0.51)[0].tolist()
    assert ap_of(gt, [(LITTER, 0.9, below)]) == (0.0, 0.0)
    ap50, ap = ap_of(gt, [(LITTER, 0.9, above)])
    assert ap50 == pytest.approx(1.0) and ap == pytest.approx(0.1)  # a TP at IoU 0.50 only, of 10 thresholds
    ap50, ap = ap_of(gt, [(LITTER, 0.9, box_with_iou(0.76)[0].tolist())])
    assert ap == pytest.approx(0.6)  # TP at 0.50, 0.55, ..., 0.75


def test_duplicates_and_wrong_classes_are_false_positives():
    gt = [(LITTER, [0, 0, 100, 100])]
    tp = match_detections(
        np.array([[0, 0, 100, 100]], np.float32),
        np.array([LITTER]),
        np.array([[0, 0, 100, 100], [2, 0, 100, 100], [0, 0, 100, 100]], np.float32),
        np.array([LITTER, LITTER, BIN]),
    )
    assert tp[:, 0].tolist() == [True, False, False]  # one object is claimed once; a bin is not litter
    # duplicate ranked first at lower IoU: the better-placed later box cannot claim it again
    assert ap_of(gt, [(LITTER, 0.9, box_with_iou(0.6)[0].tolist()), (LITTER, 0.8, [0, 0, 100, 100])])[0] == 1.0


def test_map_is_the_mean_over_classes_with_ground_truth():
    gt = [(LITTER, [0, 0, 50, 50]), (BIN, [100, 100, 150, 150]), (BIN, [200, 0, 250, 50])]
    dets = [(LITTER, 0.9, [0, 0, 50, 50]), (BIN, 0.8, [100, 100, 150, 150]), (CLASS_IDS["car"], 0.99, [5, 5, 9, 9])]
    # litter 1.0, bin 51/101 (half found); the car has no ground truth and counts nowhere
    assert ap_of(gt, dets)[0] == pytest.approx((1.0 + 51 / 101) / 2)


def test_agrees_with_ultralytics_maths_on_random_detections():
    """On random TP flags, ultralytics' ap_per_class (trapezoid variant) is within 0.01 of ours per class,
    and precision/recall at its max-F1 confidence are identical."""
    from training import ultra

    ultra.setup()
    from ultralytics.utils.metrics import ap_per_class as ultra_ap_per_class

    rng = np.random.default_rng(1)
    n = 400
    conf = rng.random(n)
    pred_cls = rng.integers(0, 3, n)
    tp = rng.random((n, 10)) < np.linspace(0.8, 0.2, 10) * conf[:, None]
    target = rng.integers(0, 3, 300)
    ours = ap_per_class(tp, conf, pred_cls, target)
    theirs = ultra_ap_per_class(tp, conf, pred_cls, target)
    np.testing.assert_allclose(ours.ap, theirs[5], atol=0.01)
    np.testing.assert_allclose(ours.precision, theirs[2], atol=1e-9)
    np.testing.assert_allclose(ours.recall, theirs[3], atol=1e-9)


def test_average_precision_edge_cases():
    assert average_precision(np.array([]), np.array([])) == 0.0
    assert average_precision(np.array([1.0]), np.array([1.0])) == 1.0
    # precision rising later lifts the envelope before it (interpolated precision)
    assert average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(
        (51 * 1.0 + 50 * 2 / 3) / 101
    )


def test_confusion_matrix_counts_confusions_misses_and_background():
    gt_boxes = np.array([[0, 0, 50, 50], [100, 100, 150, 150], [200, 200, 250, 250]], np.float32)
    gt_cls = np.array([LITTER, LITTER, BIN])
    dets = Detections(
        np.array([[0, 0, 50, 50], [100, 100, 150, 150], [300, 300, 350, 350], [0, 0, 50, 50]], np.float32),
        np.array([0.9, 0.8, 0.7, 0.1]),  # the last is below the operating confidence
        np.array([LITTER, BIN, BIN, LITTER]),
    )
    m = confusion_matrix(gt_boxes, gt_cls, dets, [LITTER, BIN])
    # rows predicted (litter, bin, background), columns true (litter, bin, background)
    assert m.tolist() == [[1, 0, 0], [1, 0, 1], [0, 1, 0]]


def test_error_breakdown_says_why_each_box_is_missed_and_each_detection_is_false():
    signs = [[0, 0, 40, 20], [50, 0, 90, 20]]  # two plates of one shop front, labelled apart
    gt_boxes = np.array([*signs, [200, 0, 240, 40], [300, 0, 340, 40], [400, 0, 440, 40], [500, 0, 540, 40]])
    gt_cls = np.array([LITTER, LITTER, LITTER, LITTER, BIN, LITTER])
    dets = Detections(
        np.array(
            [
                [0, 0, 90, 20],  # one box over both plates
                [200, 0, 240, 40],  # right
                [320, 0, 360, 40],  # half a box off: IoU 1/3
                [400, 0, 440, 40],  # litter on a bin
                [700, 0, 740, 40],  # nothing there
                [500, 0, 540, 40],  # right, but below the operating confidence
            ],
            np.float32,
        ),
        np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1]),
        np.array([LITTER] * 6),
    )
    got = error_breakdown(gt_boxes, gt_cls, dets, [LITTER, BIN], conf=0.25)
    litter, bins = got[LITTER], got[BIN]
    assert (litter["n_gt"], litter["found"]) == (5, 1)
    assert litter["misses"] == {"grouped": 2, "mislocated": 1, "other_class": 0, "no_detection": 1}
    assert litter["false"] == {"grouping": 1, "mislocated": 1, "other_class": 1, "background": 1}
    assert (bins["n_gt"], bins["found"]) == (1, 0)
    assert bins["misses"] == {"grouped": 0, "mislocated": 0, "other_class": 1, "no_detection": 0}
    # every box and every detection above the confidence is counted once
    assert litter["found"] + sum(litter["misses"].values()) == litter["n_gt"]
    assert litter["found"] + sum(litter["false"].values()) == 5


# --------------------------------------------------------------------------------- dataset reading


def write_dataset(root: Path, names: list[str], items: dict[str, list[str] | None]) -> Path:
    """A YOLO dataset with one 64x64 image per item; None = no label file at all."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for name, lines in items.items():
        cv2.imwrite(str(root / "images" / "val" / f"{name}.jpg"), np.full((64, 96, 3), 128, np.uint8))
        if lines is not None:
            (root / "labels" / "val" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val", "names": names}))
    return data


def test_load_split_maps_classes_and_drops_unmapped(tmp_path: Path):
    data = write_dataset(
        tmp_path,
        ["garbage", "window", "overflow"],
        {"a": ["0 0.5 0.5 0.5 0.5", "1 0.2 0.2 0.1 0.1", "2 0.5 0.5 0.25 1.0"], "b": None, "c": []},
    )
    mapping = ClassMapping(name="t", map={"garbage": "litter", "overflow": "overflowing_bin"})
    split = load_split(data, "val", mapping)  # `path: .` is the data.yaml's folder, not the working dir
    assert [p.name for p in (i.path for i in split.images)] == ["a.jpg", "b.jpg", "c.jpg"]
    a = split.images[0]
    assert a.classes.tolist() == [LITTER, CLASS_IDS["overflowing_bin"]]
    np.testing.assert_allclose(a.boxes(96, 64)[1], [36, 0, 60, 64])
    assert split.mapped == [LITTER, CLASS_IDS["overflowing_bin"]]
    assert len(split.images[1].classes) == 0
    (tmp_path / "val-a.txt").write_text("./images/val/a.jpg\n")  # a per-source list file
    assert [i.path.name for i in load_split(data, "val-a.txt", mapping).images] == ["a.jpg"]


def test_load_split_errors_name_the_file(tmp_path: Path):
    data = write_dataset(tmp_path, ["garbage"], {"a": ["3 0.5 0.5 0.2 0.2"]})
    mapping = ClassMapping(name="t", map={"garbage": "litter"})
    with pytest.raises(DatasetError, match=r"a\.txt:1: bad box"):
        load_split(data, "val", mapping)
    with pytest.raises(DatasetError, match="none of its classes"):
        load_split(data, "val")  # 'garbage' is not a product class: a mapping is needed
    with pytest.raises(DatasetError, match="no split 'test'"):
        load_split(data, "test", mapping)
    mixed = write_dataset(tmp_path / "mixed", ["garbage", "garbage_bin"], {"a": ["0 0.5 0.5 0.2 0.2"]})
    with pytest.raises(DatasetError, match=r"classes garbage are not product classes.*pass --map"):
        load_split(mixed)  # without a mapping, the 'garbage' boxes would silently not count
    assert load_split(mixed, "val", ClassMapping(name="t", map={"garbage_bin": "garbage_bin"})).mapped == [
        CLASS_IDS["garbage_bin"]
    ]  # a mapping that leaves 'garbage' out drops it on purpose
    with pytest.raises(DatasetError, match="no such dataset file"):
        load_split(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------- real models, CLI


def test_evaluate_json_report(use_tiny_registry, shapes_data: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["evaluate", "--data", str(shapes_data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"model", "map50", "map50_95", "per_class"}
    assert report["model"] == "tiny@t1/fp32"
    assert set(report["per_class"]) == {"litter", "car"}
    for m in report["per_class"].values():
        assert set(m) == {"ap50", "ap50_95", "precision", "recall", "n_gt"}
        assert 0 <= m["ap50_95"] <= m["ap50"] <= 1 and m["n_gt"] > 0
    assert report["map50"] == pytest.approx(np.mean([m["ap50"] for m in report["per_class"].values()]), abs=1e-3)
    assert report["map50"] > 0.5  # the tiny model does find the shapes


def test_evaluate_json_names_skipped_images_and_writes_the_report(
    use_tiny_registry, shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    broken = tmp_path / "images" / "broken.jpg"  # beside a labels/ folder, like a dataset's own image
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    images = sorted((shapes_data.parent / "val" / "images").glob("*.jpg"))
    listing = tmp_path / "val-with-broken.txt"
    listing.write_text("".join(f"{p}\n" for p in [*images, broken]))
    out = tmp_path / "report"
    assert main(["evaluate", "--data", str(shapes_data), "--split", str(listing), "--json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["model"] == "tiny@t1/fp32"  # stdout stays the JSON alone
    assert "1 unreadable images skipped" in captured.err and "broken.jpg" in captured.err
    report = json.loads((out / "evaluation.json").read_text())
    assert report["images"] == len(images) and "broken.jpg" in report["unreadable"][0]
    assert (out / "confusion_matrix.png").is_file()


def test_evaluate_table_and_confusion_plot(use_tiny_registry, shapes_data: Path, tmp_path: Path, capsys):
    assert main(["evaluate", "--data", str(shapes_data), "--variant", "int8", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tiny@t1/int8" in out and "litter" in out and "AP50-95" in out
    png = tmp_path / "confusion_matrix.png"
    assert str(png) in out and cv2.imread(str(png)).shape[0] > 200
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["confusion"]["classes"] == ["litter", "car", "background"]
    errors = report["errors"]["per_class"]
    assert set(errors) == {"litter", "car"} and "why the rest fail" in out
    for name, e in errors.items():  # the breakdown accounts for every labelled box
        assert e["found"] + sum(e["misses"].values()) == e["n_gt"] == report["per_class"][name]["n_gt"]


def test_confusion_matrix_covers_only_classes_with_ground_truth(use_tiny_registry, shapes_data: Path, tmp_path: Path):
    """A split whose data.yaml lists car but whose labels never show one: the tiny model's car detections
    are neither a class row nor background false positives, as the AP table leaves car out."""
    root = tmp_path / "litter-only"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    litter = CLASS_IDS["litter"]
    for image in sorted((shapes_data.parent / "val" / "images").glob("*.jpg")):
        (root / "images" / image.name).symlink_to(image)
        lines = (image.parents[1] / "labels" / f"{image.stem}.txt").read_text().splitlines()
        kept = [line for line in lines if line.split() and SHAPE_CLASSES[int(line.split()[0])] == "litter"]
        (root / "labels" / f"{image.stem}.txt").write_text("".join(f"{line}\n" for line in kept))
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "val": "images", "names": dict(enumerate(SHAPE_CLASSES))}))
    split = load_split(data)
    assert split.mapped == sorted(CLASS_IDS[n] for n in SHAPE_CLASSES)  # the mapping still lists car
    model = make_predictor("tiny")
    operating = [model.predict(read_image(i.path)) for i in split.images]
    cars = sum(int(((d.class_id == CLASS_IDS["car"]) & (d.confidence > 0.25)).sum()) for d in operating)
    assert cars > 0  # the model does see cars here: the old matrix counted them as false positives
    result = evaluate(model, split, progress=False)

    assert set(result.per_class) == set(result.errors) == {"litter"}
    assert result.confusion_classes == ["litter"] and result.confusion.shape == (2, 2)
    # every litter box is in the litter column; the predicted rows hold exactly the litter detections
    assert result.confusion[:, 0].sum() == result.per_class["litter"]["n_gt"]
    litters = sum(int(((d.class_id == litter) & (d.confidence > 0.25)).sum()) for d in operating)
    assert result.confusion[0].sum() == litters
    report = json.loads(write_report(result, tmp_path / "evaluation.json").read_text())
    assert report["confusion"]["classes"] == ["litter", "background"]
    assert cv2.imread(str(plot_confusion(result, tmp_path / "confusion.png"))) is not None


def test_tiled_evaluation_runs_the_sliced_detector(use_tiny_registry, shapes_data: Path):
    split = load_split(shapes_data)
    tiled = evaluate(make_predictor("tiny", tile=True, imgsz=96), split, progress=False)
    full = evaluate(make_predictor("tiny", imgsz=96), split, progress=False)
    assert tiled.map50 > 0.3 and tiled.map50 != full.map50  # 160 px images in 144 px tiles: not the same run


def test_evaluate_bad_inputs_are_cli_errors(use_tiny_registry, tmp_path: Path, shapes_data: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--data", str(tmp_path / "nope.yaml")])
    assert exc.value.code == 2 and "nope.yaml: no such dataset file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(shapes_data), "--model", "no-such-model"])
    assert "no-such-model" in capsys.readouterr().err


def test_agrees_with_ultralytics_val(tiny_pt: Path, shapes_data: Path):
    """Same .pt, same data: our mAP50 and mAP50-95 are ultralytics val's within 0.01. (rect=False: val's
    rectangular batches pad each image by an extra half stride, which predict and the product do not.)"""
    from training import ultra

    ours = evaluate(make_predictor(str(tiny_pt), imgsz=160), load_split(shapes_data), progress=False)
    theirs = ultra.yolo(tiny_pt).val(
        data=str(shapes_data), imgsz=160, batch=8, conf=0.001, iou=0.7, rect=False, plots=False, device="cpu"
    )
    assert ours.map50 > 0.5
    assert ours.map50 == pytest.approx(theirs.box.map50, abs=0.01)
    assert ours.map50_95 == pytest.approx(theirs.box.map, abs=0.01)


def test_onnx_and_pt_evaluate_alike(tiny_registry: Path, tiny_pt: Path, shapes_data: Path):
    """The product's ONNX detector and ultralytics on the .pt score the same model the same."""
    split = load_split(shapes_data)
    onnx = evaluate(make_predictor(str(tiny_registry / "tiny")), split, progress=False)
    pt = evaluate(make_predictor(str(tiny_pt), imgsz=160), split, progress=False)
    assert onnx.model == "tiny@t1/fp32"
    assert onnx.map50 == pytest.approx(pt.map50, abs=0.01)
    assert onnx.map50_95 == pytest.approx(pt.map50_95, abs=0.01)


def compare_on_real_photos(
    pt: Path, class_map: list[str | None], imgsz: int, shared_data: Path, tmp: Path, n: int = 60
) -> tuple[EvalResult, object]:
    """(ours, ultralytics val's metrics) for a checkpoint on the first ``n`` real garbage validation photos:
    ours reads the source as it is with the shipped ``garbage`` mapping; ultralytics val gets the same
    photos with labels rewritten into the model's own class ids (val has no class mapping)."""
    from datasets.yolo import label_path_for, load_data_yaml
    from training import ultra

    source = shared_data / "garbage" / "data.yaml"
    mapping = load_mapping("garbage")
    src_names = load_data_yaml(source).names
    images = sorted((shared_data / "garbage" / "val" / "images").glob("*.jpg"))[:n]
    (tmp / "images").mkdir()
    (tmp / "labels").mkdir()
    for img in images:
        (tmp / "images" / img.name).symlink_to(img)
        lines = []
        label = label_path_for(img)
        for line in label.read_text().splitlines() if label.is_file() else []:
            c, *rest = line.split()
            lines.append(" ".join([str(class_map.index(mapping.map[src_names[int(c)]])), *rest]))
        (tmp / "labels" / f"{img.stem}.txt").write_text("\n".join(lines) + "\n")
    (tmp / "list.txt").write_text("\n".join(str(i) for i in images) + "\n")
    model_names = ultra.yolo(pt).names
    data = tmp / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp), "train": "images", "val": "images", "names": model_names}))
    model_map = ClassMapping(name="m", map={model_names[i]: c for i, c in enumerate(class_map)})
    ours = evaluate(
        make_predictor(str(pt), imgsz=imgsz, model_map=model_map),
        load_split(source, str(tmp / "list.txt"), mapping),
        progress=False,
    )
    theirs = ultra.yolo(pt).val(
        data=str(data), imgsz=imgsz, batch=8, conf=0.001, iou=0.7, rect=False, plots=False, device="cpu"
    )
    return ours, theirs


@pytest.mark.slow
def test_agrees_with_ultralytics_val_on_real_garbage_photos(tmp_path: Path, shared_data: Path):
    """On real photos with the shipped model's .pt (when it detects the garbage classes): our evaluation
    of the source through its class mapping agrees with ultralytics val within 0.01 (rect=False: see
    test_agrees_with_ultralytics_val)."""
    from models.registry import resolve

    ref = resolve("default")
    if not {"litter", "garbage_bin", "overflowing_bin"} <= set(ref.card.class_map):
        pytest.skip(f"the default model {ref.card.name} does not detect the garbage classes")
    ours, theirs = compare_on_real_photos(ref.file("pt"), ref.card.class_map, ref.card.imgsz, shared_data, tmp_path)
    assert ours.images == 60 and ours.map50 > 0.3
    assert ours.map50 == pytest.approx(theirs.box.map50, abs=0.01)
    assert ours.map50_95 == pytest.approx(theirs.box.map, abs=0.01)


def test_image_level_recall_and_false_alarms(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Images that show litter must get a litter detection at the operating confidence; clean ones must not."""
    root = tmp_path / "ds"
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    litter, car = CLASS_IDS["litter"], CLASS_IDS["car"]
    labels = {"a": [litter], "b": [litter, car], "c": [car], "d": []}  # a, b show litter; c, d are clean
    for stem, classes in labels.items():
        cv2.imwrite(str(root / "images" / "val" / f"{stem}.jpg"), np.full((100, 100, 3), 128, np.uint8))
        (root / "labels" / "val" / f"{stem}.txt").write_text("".join(f"{c} 0.5 0.5 0.4 0.4\n" for c in classes))
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "val": "images/val", "names": dict(enumerate(CLASS_NAMES))}))
    # a: litter at 0.9 (found); b: litter only at 0.1 (missed); c: litter at 0.5 (false alarm); d: a car (quiet)
    answers = {"a": [(litter, 0.9)], "b": [(litter, 0.1), (car, 0.8)], "c": [(litter, 0.5)], "d": [(car, 0.7)]}
    calls = iter(sorted(answers))

    def predict(image: np.ndarray) -> Detections:
        found = answers[next(calls)]
        return Detections([[30, 30, 70, 70]] * len(found), [s for _, s in found], [c for c, _ in found])

    result = evaluate(
        ModelInfo("scripted", predict, 100),
        load_split(data),
        progress=False,
        image_level=["litter", "overflowing_bin"],
        operating_conf=0.25,
    )
    il = result.image_level
    assert (il["positives"], il["found"], il["recall"]) == (2, 1, 0.5)
    assert (il["negatives"], il["false_alarms"], il["false_alarm_rate"]) == (2, 1, 0.5)
    assert il["missed_files"] == ["b.jpg"] and il["false_alarm_files"] == ["c.jpg"]
    assert result.to_json()["image_level"] == il
    assert "recall 1/2 = 0.50" in result.table()


def test_evaluate_record_stores_the_result_in_the_model_card(
    tiny_registry: Path, shapes_data: Path, tmp_path, capsys, monkeypatch: pytest.MonkeyPatch
):
    import shutil

    root = tmp_path / "registry"
    shutil.copytree(tiny_registry, root)
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(root))
    assert main(["evaluate", "--data", str(shapes_data), "--variant", "int8", "--json", "--record"]) == 0
    printed = json.loads(capsys.readouterr().out)
    card = json.loads((root / "tiny" / "card.json").read_text())
    entry = card["metrics"][f"{shapes_data} [val]"]
    assert entry["int8"] == printed and entry["images"] == 8
    # the path of the int8 file (no --variant): the int8 model is measured, and recorded as int8
    int8_file = str(root / "tiny" / "model.int8.onnx")
    assert main(["evaluate", "--data", str(shapes_data), "--model", int8_file, "--json", "--record"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
    entry = json.loads((root / "tiny" / "card.json").read_text())["metrics"][f"{shapes_data} [val]"]
    assert entry["int8"] == printed and "fp32" not in entry
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(shapes_data), "--model", str(tmp_path / "x.pt"), "--record"])


def test_an_out_that_is_a_file_is_refused_before_evaluating(
    use_tiny_registry, shapes_data: Path, tmp_path: Path, capsys
):
    taken = tmp_path / "notes.txt"
    taken.write_text("a file")
    for command in (["evaluate"], ["compare", "--candidate", "tiny"]):
        with pytest.raises(SystemExit) as exc:  # was: found out after the whole evaluation
            main([*command, "--data", str(shapes_data), "--out", str(taken), "--json"])
        captured = capsys.readouterr()
        assert exc.value.code == 2 and f"--out {taken}: exists and is not a folder" in captured.err
        assert captured.out == "" and taken.read_text() == "a file"


def test_a_full_disk_leaves_no_truncated_report(use_tiny_registry, shapes_data: Path, full_disk: Path, capsys):
    out = full_disk / "ev"
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--data", str(shapes_data), "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "No space left on device" in err and str(out) in err, err
    assert list(out.iterdir()) == []  # was: an empty confusion_matrix.png, as a full disk left it
