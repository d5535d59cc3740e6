"""The promotion gate on hand-made evaluation results, the field-image diff on hand-made detections, and
`streetwatch compare` on real exported models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.classes import CLASS_IDS
from models.registry import load_card, write_card
from pipeline.cli import main
from pipeline.detections import Detections
from training.cli import EXIT_GATE_REFUSED
from training.compare import GATE_KEY, GateConfig, apply_gate, detection_changes, load_gate
from training.evaluate import EvalResult

LITTER, CAR, AD = CLASS_IDS["litter"], CLASS_IDS["car"], CLASS_IDS["small_ad"]


def result(ap50: dict[str, float], n_gt: dict[str, int] | None = None) -> EvalResult:
    """An evaluation result with these per-class AP50 values (mean as the evaluator computes it)."""
    per_class = {
        name: {"ap50": v, "ap50_95": v / 2, "precision": 0.9, "recall": 0.9, "n_gt": (n_gt or {}).get(name, 20)}
        for name, v in ap50.items()
    }
    mean = float(np.mean(list(ap50.values())))
    return EvalResult("m", "d", "val", 10, mean, mean / 2, per_class, np.zeros((1, 1)), [], 0.3)


def test_gate_refuses_a_class_that_drops_more_than_allowed_even_when_the_mean_rises():
    base = result({"litter": 0.60, "car": 0.80, "small_ad": 0.40})
    cand = result({"litter": 0.70, "car": 0.775, "small_ad": 0.50})  # car -2.5 points, mean +5.8
    gate = apply_gate(base, cand)
    assert not gate.passed and gate.failures == ["car lost 2.50 points (allowed 2)"]
    assert {c.name: c.delta for c in gate.classes} == {"small_ad": 10.0, "litter": 10.0, "car": -2.5}
    assert gate.mean_delta > 0
    assert "car" in gate.table() and "drop over the limit" in gate.table() and "REFUSED" in gate.table()
    assert apply_gate(base, cand, GateConfig(max_class_drop=3)).passed


def test_gate_refuses_a_mean_drop_and_ignores_classes_with_too_few_boxes():
    base = result({"litter": 0.60, "car": 0.80}, {"car": 3})
    cand = result({"litter": 0.59, "car": 0.50}, {"car": 3})  # litter -1 (allowed), car -30 on 3 boxes
    gate = apply_gate(base, cand, GateConfig(min_instances=5))
    assert gate.failures == ["the mean lost 15.50 points (allowed 0)"]
    assert not next(c for c in gate.classes if c.name == "car").gated
    assert apply_gate(base, cand, GateConfig(min_instances=5, max_mean_drop=20)).passed
    same = apply_gate(base, base)
    assert same.passed and all(c.delta == 0 for c in same.classes)
    as_json = gate.to_json()
    assert as_json["passed"] is False and as_json["classes"]["car"]["gated"] is False


def test_gate_config_from_yaml_with_overrides_and_errors(tmp_path: Path):
    path = tmp_path / "gate.yaml"
    path.write_text("max_class_drop: 1.5\nmetric: ap50_95\n")
    cfg = load_gate(path, max_mean_drop=0.5, max_class_drop=None)
    assert (cfg.max_class_drop, cfg.max_mean_drop, cfg.metric) == (1.5, 0.5, "ap50_95")
    path.write_text("max_class_drop: 1.5\nmax_clas_drop: 2\n")
    with pytest.raises(ValueError, match=r"gate\.yaml: invalid gate config(.|\n)*max_clas_drop"):
        load_gate(path)
    with pytest.raises(ValueError, match="no such gate config"):
        load_gate(tmp_path / "none.yaml")
    path.write_bytes(b"\xa5\x00\xff" * 50)
    with pytest.raises(ValueError, match=r"gate\.yaml: not UTF-8 text \(byte 0xa5 at offset 0\)"):
        load_gate(path)
    for name, info in GateConfig.model_fields.items():
        assert info.description, name


def test_detection_changes_match_boxes_one_to_one():
    base = Detections(
        np.array([[0, 0, 10, 10], [50, 50, 70, 70], [100, 100, 120, 120]], np.float32),
        np.array([0.9, 0.8, 0.5]),
        np.array([LITTER, CAR, AD]),
    )
    cand = Detections(
        np.array([[1, 0, 11, 10], [50, 50, 70, 71], [200, 200, 220, 220]], np.float32),
        np.array([0.95, 0.7, 0.6]),
        np.array([LITTER, LITTER, CAR]),
    )
    changes = detection_changes(base, cand)
    kinds = sorted((c.kind, c.baseline, c.candidate) for c in changes)
    assert kinds == [
        ("gone", "small_ad 0.50", None),
        ("new", None, "car 0.60"),
        ("relabelled", "car 0.80", "litter 0.70"),
    ]
    assert detection_changes(base, base) == []
    assert [c.kind for c in detection_changes(Detections.empty(), base)] == ["new"] * 3


@pytest.mark.slow
def test_compare_command_records_the_verdict_in_the_candidates_card(
    tiny_registry: Path, shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    root = tmp_path / "registry"
    shutil.copytree(tiny_registry, root)
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(root))
    twin = root / "tiny-b"
    shutil.copytree(root / "tiny", twin)
    card = load_card(twin)
    write_card(twin, card.model_copy(update={"name": "tiny-b", "version": "t1b"}))
    field = shapes_data.parent / "train" / "images"
    out = tmp_path / "cmp"
    args = ["compare", "--candidate", "tiny-b", "--data", str(shapes_data), "--field", str(field), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "PASSED" in printed and "field images: 0 of 24 changed" in printed
    record = load_card(twin).metrics[GATE_KEY]
    assert record["passed"] and record["baseline"] == {"name": "tiny", "version": "t1"}
    assert record["images"] == 8 and len(record["fingerprint"]) == 64
    report = json.loads((out / "compare.json").read_text())
    assert report["gate"]["classes"]["litter"]["delta"] == 0 and not (out / "field-changes.jpg").exists()

    # a candidate that no longer reports a class the baseline does is refused, whatever the split labels
    blind = root / "tiny-blind"
    shutil.copytree(twin, blind)
    card = load_card(blind)
    class_map = [None if c == "car" else c for c in card.class_map]
    write_card(blind, card.model_copy(update={"name": "tiny-blind", "version": "t1c", "class_map": class_map}))
    assert main(["compare", "--candidate", "tiny-blind", "--data", str(shapes_data)]) == EXIT_GATE_REFUSED
    assert "cannot detect car, which the baseline detects" in capsys.readouterr().out

    # errors name the problem
    with pytest.raises(SystemExit):
        main(["compare", "--candidate", "no-such-model", "--data", str(shapes_data)])
    assert "no-such-model: no such model" in capsys.readouterr().err


def test_gate_refuses_when_the_evaluation_has_no_ground_truth_for_any_gated_class():
    empty = EvalResult("m", "d", "val", 12, 0.0, 0.0, {}, np.zeros((1, 1)), [], 0.3)
    gate = apply_gate(empty, empty)  # AP 0 against AP 0: no drop, and no evidence either
    assert not gate.passed and "no ground truth" in gate.failures[0]
    assert "REFUSED" in gate.table() and gate.to_json()["passed"] is False
    few = result({"litter": 0.5, "car": 0.5}, {"litter": 2, "car": 1})
    gate = apply_gate(few, few, GateConfig(min_instances=5))
    assert not gate.passed and gate.failures == [
        "no class reaches min_instances (5 ground-truth boxes; the evaluation set has 3 in all): "
        "nothing to judge the candidate on"
    ]


def unlabelled_copy(data: Path, dest: Path, empty_files: bool) -> Path:
    """A copy of a YOLO dataset whose val images have no label files (or empty ones)."""
    shutil.copytree(data.parent, dest)
    labels = dest / "val" / "labels"
    shutil.rmtree(labels)
    if empty_files:
        labels.mkdir()
        for image in (dest / "val" / "images").glob("*.jpg"):
            (labels / f"{image.stem}.txt").write_text("")
    yaml_text = (dest / "data.yaml").read_text().replace(f"path: {data.parent}", f"path: {dest}")
    (dest / "data.yaml").write_text(yaml_text)
    return dest / "data.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("empty_files", [False, True], ids=["no-label-files", "empty-label-files"])
def test_compare_and_promote_refuse_an_evaluation_set_without_labels(
    tiny_registry: Path, shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, empty_files
):
    root = tmp_path / "registry"
    shutil.copytree(tiny_registry, root)
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(root))
    twin = root / "tiny-b"
    shutil.copytree(root / "tiny", twin)
    write_card(twin, load_card(twin).model_copy(update={"name": "tiny-b", "version": "t1b"}))
    data = unlabelled_copy(shapes_data, tmp_path / "nolabels", empty_files)
    assert main(["compare", "--candidate", "tiny-b", "--data", str(data)]) == EXIT_GATE_REFUSED
    printed = capsys.readouterr().out
    assert "PASSED" not in printed and "REFUSED: the evaluation set has no ground truth" in printed
    assert load_card(twin).metrics[GATE_KEY]["passed"] is False
    assert main(["promote", "tiny-b"]) == EXIT_GATE_REFUSED
    assert "no ground truth" in capsys.readouterr().err
    # evaluate says so up front instead of reporting AP 0
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--data", str(data), "--model", "tiny"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"{data} [val]: none of its 8 images has a labelled box" in err


def test_a_full_disk_leaves_no_truncated_report(use_tiny_registry, shapes_data: Path, full_disk: Path, capsys):
    out = full_disk / "cmp"
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--candidate", "tiny", "--data", str(shapes_data), "--no-record", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "No space left on device" in err and str(out) in err, err
    assert list(out.iterdir()) == []  # was: an empty compare.json, as a full disk left it
