import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.registry import read_registry, resolve
from pipeline.decode import read_image
from pipeline.detect import Detector
from pipeline.detections import box_iou
from training.evaluate import evaluate, load_split, make_predictor


def test_export_writes_card_onnx_and_int8(tiny_registry):
    ref = resolve("tiny", root=tiny_registry)
    card = ref.card
    assert card.names == ["litter", "car"] and card.class_map == ["litter", "car"]
    assert card.imgsz == 160 and card.architecture == "yolo11n"
    assert set(card.files) == {"fp32", "int8", "pt"}
    for role in card.files:
        assert ref.file(role).stat().st_size == card.files[role].bytes  # hash verified by file()
    int8 = onnx.load(str(ref.file("int8")))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ quantisation
    head = [n for n in int8.graph.node if n.name.endswith("dfl/Softmax")]
    assert head and not any(i.endswith("_DequantizeLinear_Output") for i in head[0].input)  # decode stays float
    sess = ort.InferenceSession(str(ref.file("int8")), providers=["CPUExecutionProvider"])
    assert not all(isinstance(d, int) for d in sess.get_inputs()[0].shape[2:])  # dynamic input size
    assert json.loads((ref.folder / "card.json").read_text())["name"] == "tiny"


def test_tiny_model_detects_through_the_pipeline(use_tiny_registry, tiny_pt):
    """The pipeline runs a freshly trained model: fp32 and int8 agree with each other."""
    images = sorted((tiny_pt.parents[3] / "shapes" / "val" / "images").glob("*.jpg"))
    fp32 = Detector(conf=0.01)
    int8 = Detector(conf=0.01, variant="int8")
    assert fp32.version == "tiny@t1/fp32"
    for path in images[:4]:
        a, b = fp32.detect(read_image(path)), int8.detect(read_image(path))
        assert len(a) > 0 and set(a.class_names) <= {"litter", "car"}
        top = a[np.argsort(-a.confidence)[:3]]
        if len(b):
            assert box_iou(top.xyxy, b.xyxy).max() > 0.5


def _export(args: list[str]) -> int:
    from pipeline.cli import main

    return main(["export", *args])


def test_export_never_replaces_a_registered_model_and_names_a_wrong_file(
    tiny_pt: Path, shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(tmp_path / "registry"))
    assert _export([str(tiny_pt), "--name", "first", "--imgsz", "160"]) == 0
    card = (tmp_path / "registry" / "first" / "card.json").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # promote and rollback rely on a registered version staying as it is
        _export([str(tiny_pt), "--name", "first", "--imgsz", "160"])
    assert exc.value.code == 2 and "already holds a model" in capsys.readouterr().err
    assert (tmp_path / "registry" / "first" / "card.json").read_text() == card
    with pytest.raises(SystemExit):  # a file that is no checkpoint: said so, and no folder left behind
        _export([str(shapes_data), "--name", "wrong", "--imgsz", "160"])
    assert "not an ultralytics checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "registry" / "wrong").exists()
    litter_only = tmp_path / "litter-only.yaml"  # a mapping that keeps one of the two classes
    litter_only.write_text("name: litter-only\nmap: {litter: litter}\n")
    assert _export([str(tiny_pt), "--name", "second", "--imgsz", "160", "--map", str(litter_only)]) == 0
    assert "left out, mapped to no product class: car (1 of 2" in capsys.readouterr().out  # the class the model loses


def test_export_names_calibration_images_that_cannot_be_read(
    tiny_pt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """No readable calibration image printed only onnxruntime's "No data is collected."."""
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(tmp_path / "registry"))
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xa5\x00\xff" * 50)
    with pytest.raises(SystemExit) as exc:
        _export([str(tiny_pt), "--name", "q", "--imgsz", "160", "--calib", str(garbage)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "No data is collected" not in err
    assert f"none of the 1 calibration images could be read: {garbage}: not an image" in err
    assert list((tmp_path / "registry").iterdir()) == []  # was: a folder q with model.pt and model.onnx, no card
    assert _export([str(tiny_pt), "--name", "q", "--imgsz", "160"]) == 0  # so nothing is in the way of a retry


def test_an_interrupted_export_leaves_no_model_folder(tiny_pt: Path, shapes_data: Path, tmp_path: Path):
    """Ctrl-C while int8 is calibrated or checked left the folder with its files, and (once the card was
    written) a model the registry listed although its int8 model was never checked."""
    registry = tmp_path / "registry"
    calib = tiny_pt.parents[3] / "shapes" / "train" / "images"
    args = [str(tiny_pt), "--name", "ti", "--imgsz", "160", "--calib", str(calib), "--data", str(shapes_data)]
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "export", *args],
            env={**os.environ, "STREETWATCH_MODELS_DIR": str(registry)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 240
        while not list(registry.rglob("model.onnx")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the export ended before its ONNX model was written"
        proc.send_signal(signal.SIGINT)  # as Ctrl-C does: int8 calibration and the check are still to come
        _, err = proc.communicate(timeout=240)
        if not (registry / "ti" / "card.json").exists():
            break
        # this poll stalled for the seconds the export had left (a loaded machine): its Ctrl-C came after the
        # export was complete and interrupted nothing (Python, finalising, dies of it: -2). Once more.
        shutil.rmtree(registry)
    assert proc.returncode == 130, err
    assert list(registry.iterdir()) == [], "nothing is left in the registry, not even a hidden partial folder"


def test_export_refuses_an_int8_model_that_loses_accuracy(
    tiny_pt: Path, shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """int8 calibrated on black images clips every real activation: its mAP50 falls far below fp32, so the
    export writes the fp32 model, no int8 file, records both metrics, exits 3 and promotes nothing."""
    from training.cli import EXIT_INT8_REFUSED

    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(tmp_path / "registry"))
    black = tmp_path / "black"
    black.mkdir()
    for i in range(4):
        cv2.imwrite(str(black / f"{i}.png"), np.zeros((160, 160, 3), np.uint8))
    args = [str(tiny_pt), "--name", "tq", "--imgsz", "160", "--calib", str(black), "--data", str(shapes_data)]
    assert _export([*args, "--default"]) == EXIT_INT8_REFUSED
    captured = capsys.readouterr()
    assert "int8 REFUSED" in captured.out and "NOT made the default" in captured.err
    (summary,) = [line for line in captured.out.splitlines() if line.startswith("exported tq@")]
    assert summary.split(": ")[1].startswith("fp32, pt;")  # what the folder holds, not the int8 refused
    ref = resolve("tq")
    assert set(ref.card.files) == {"fp32", "pt"} and not (ref.folder / "model.int8.onnx").exists()
    gate = ref.card.metrics["int8_gate"]
    assert gate["accepted"] is False and gate["drop_points"] > 1.0
    measured = ref.card.metrics[gate["data"]]
    assert measured["fp32"]["map50"] - measured["int8"]["map50"] > 0.01
    assert set(measured["fp32"]["per_class"]) == {"litter", "car"}
    assert "No int8 model" in ref.card.notes
    assert read_registry().get("default") is None
    Detector(model="tq")  # the fp32 model that was written runs


def test_export_accepts_a_well_calibrated_int8_model(
    tiny_pt: Path, shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(tmp_path / "registry"))
    calib = tiny_pt.parents[3] / "shapes" / "train" / "images"
    args = [str(tiny_pt), "--name", "tq", "--imgsz", "160", "--calib", str(calib), "--data", str(shapes_data)]
    assert _export([*args, "--calib-method", "percentile", "--default"]) == 0
    assert "int8 accepted" in capsys.readouterr().out
    ref = resolve("default")
    assert ref.card.name == "tq" and set(ref.card.files) == {"fp32", "int8", "pt"}
    ref.file("int8")  # listed with the right hash
    gate = ref.card.metrics["int8_gate"]
    assert gate["accepted"] is True and gate["drop_points"] <= 1.0
    measured = ref.card.metrics[gate["data"]]
    assert measured["images"] == 8 and measured["int8"]["map50"] > 0.5
    # the card's numbers are what `streetwatch evaluate` reports for the same model and data
    fp32 = evaluate(make_predictor("tq"), load_split(shapes_data), progress=False)
    assert measured["fp32"] == fp32.to_json() | {"model": measured["fp32"]["model"]}


def test_export_refuses_an_input_size_the_network_cannot_take(
    tiny_pt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(tmp_path / "registry"))
    with pytest.raises(SystemExit) as exc:  # was: exit 0, a card saying 13 and a detector failing on every image
        _export([str(tiny_pt), "--name", "odd", "--out", str(tmp_path / "odd"), "--imgsz", "13"])
    assert exc.value.code == 2 and "--imgsz 13 is not a multiple of the model stride 32" in capsys.readouterr().err
    assert not (tmp_path / "odd").exists()


@pytest.mark.parametrize("name", ["../../e3", "a/b", ".."])
def test_export_refuses_a_name_that_is_not_one_folder_name(
    tiny_pt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, name: str
):
    registry = tmp_path / "deep" / "registry"
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(registry))
    with pytest.raises(SystemExit) as exc:  # was: a model folder outside the registry, the name in its card
        _export([str(tiny_pt), "--name", name, "--imgsz", "160"])
    assert exc.value.code == 2 and f"--name {name!r} is not a name" in capsys.readouterr().err
    assert not (tmp_path / "e3").exists() and not registry.exists()


def test_an_export_onto_a_full_disk_names_its_folder_and_leaves_nothing(tiny_pt: Path, full_disk: Path, capsys):
    out = full_disk / "m"
    with pytest.raises(SystemExit) as exc:  # was: the error named out/model.pt, and out stayed half-written
        _export([str(tiny_pt), "--name", "m", "--out", str(out), "--imgsz", "160"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1 and f"error: {out}: No space left on device" in err, err
    assert [p.name for p in full_disk.iterdir()] == ["filler"]


def test_an_export_into_a_folder_without_a_model_keeps_what_else_it_holds(tiny_pt: Path, tmp_path: Path):
    """As before the export was staged beside it: the model files join the folder's other files."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model.int8.onnx").write_bytes(b"from an earlier export")
    assert _export([str(tiny_pt), "--name", "r", "--out", str(out), "--imgsz", "160"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "model.onnx", "model.pt", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine" and set(resolve(out).card.files) == {"fp32", "pt"}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
