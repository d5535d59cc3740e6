"""A stream worker follows a newly promoted default: a real StreamProcessor on a video, the tiny model,
a promotion while it runs; violations found after the swap carry the new model's version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from synth import write_h264
from waiting import wait_for

from models.registry import load_card, set_default, write_card
from pipeline.cameras import CameraConfig, CamerasConfig, NoParkingZone
from pipeline.cases import JsonlSink
from pipeline.detect import Detector
from pipeline.reload import ModelFollower
from pipeline.streams import StreamProcessor

WHOLE = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]


def parked_cars(seconds: float = 14, fps: int = 5, second_after: float = 8):
    """A still street: one blue 'car' from the start, a second one from ``second_after`` seconds on."""
    rng = np.random.default_rng(0)
    for i in range(int(seconds * fps)):
        frame = np.full((240, 320, 3), 150, np.uint8)
        cv2.circle(frame, (80, 120), 38, (230, 60, 20), -1)
        if i >= second_after * fps:
            cv2.circle(frame, (240, 130), 38, (230, 60, 20), -1)
        yield np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def two_models(tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The product's registry for one test: tiny (the default) and tiny-v2, the same network as another version."""
    root = tmp_path / "registry"
    shutil.copytree(tiny_registry, root)
    shutil.copytree(root / "tiny", root / "tiny-v2")
    write_card(root / "tiny-v2", load_card(root / "tiny-v2").model_copy(update={"name": "tiny-v2", "version": "t2"}))
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(root))
    return root


@pytest.mark.slow
def test_stream_worker_switches_to_the_promoted_model_between_batches(two_models: Path, tmp_path: Path):
    video = write_h264(tmp_path / "street.mp4", parked_cars(), fps=5)
    camera = CameraConfig(
        id="street",
        url=str(video),
        sample_fps=4,
        speed=2,
        zones=[NoParkingZone(kind="no_parking", name="all", polygon=WHOLE, dwell_s=1, inertia=1)],
    )
    detector = Detector(conf=0.2)
    sink = JsonlSink(tmp_path / "v.jsonl")
    proc = StreamProcessor(CamerasConfig(cameras=[camera]), detector, sink)
    opened: list = []
    proc.listeners.append(lambda v: opened.append(v) if v.extra.get("event") == "open" else None)
    follower = ModelFollower(detector.config, detector, [lambda d: setattr(proc, "detector", d)], poll_s=0.05)
    follower.start()
    try:
        proc.start()
        wait_for(lambda: len(opened) >= 1, 30, "the first parked car")
        assert opened[0].model_version == "tiny@t1/fp32"
        set_default("tiny-v2", {"by": "test"})
        wait_for(lambda: proc.detector.version == "tiny-v2@t2/fp32", 30, "the swap")
        assert len(opened) == 1, "the second car must appear after the swap for this test to mean anything"
        wait_for(lambda: len(opened) >= 2, 30, "the second parked car")
    finally:
        follower.stop()
        proc.stop()
        sink.close()
    assert opened[1].model_version == "tiny-v2@t2/fp32" and opened[1].box[0] > 160
    assert proc.detector_errors == 0 and follower.reloads == 1
    lines = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    versions = {rec["key"]: rec["model_version"] for rec in lines}
    assert sorted(versions.values()) == ["tiny-v2@t2/fp32", "tiny@t1/fp32"]  # each case keeps its finder


def test_a_refused_default_is_loaded_once_its_folder_is_fixed_in_place(two_models: Path):
    root = two_models
    detector = Detector()
    follower = ModelFollower(detector.config, detector)
    assert not follower.check_now() and follower.last_error is None  # the registry names what runs
    onnx = root / "tiny-v2" / "model.onnx"
    good = onnx.read_bytes()
    onnx.write_bytes(good[: len(good) // 2])  # a copy cut short
    set_default("tiny-v2", {"by": "test"})
    assert not follower.check_now()
    assert follower.failures == 1 and "sha256 does not match" in follower.last_error
    assert follower.current is detector
    assert not follower.check_now() and follower.failures == 1  # unchanged and still broken: not tried every poll
    follower.retry_s = 0  # ... but again after retry_s (a failure that was not the folder's)
    assert not follower.check_now() and follower.failures == 2
    follower.retry_s = 3600
    onnx.write_bytes(good)  # fixed in place; registry.json is not touched
    assert follower.check_now()
    assert follower.current.version == "tiny-v2@t2/fp32" and follower.last_error is None and follower.reloads == 1
    assert not follower.check_now() and follower.reloads == 1
    registry = root / "registry.json"
    registry.write_text(json.dumps({"default": "ghost", "history": []}))  # a default whose folder is not there
    assert not follower.check_now() and follower.last_error.startswith("cannot read the default model ghost: ")
    registry.write_text(json.dumps({"default": 5, "history": []}))  # the index itself is wrong
    assert not follower.check_now() and follower.last_error.startswith("registry unreadable: ")
    assert follower.current.version == "tiny-v2@t2/fp32"  # still serving what it had
