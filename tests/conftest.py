"""Shared fixtures: bundled samples, a tiny real model trained and exported once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from disks import fill, tmpfs
from synth import make_shapes_dataset, train_tiny_model

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PHOTOS = sorted((REPO / "pipeline" / "samples" / "photos").glob("*.jpg"))


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    """The real photos shipped with the product."""
    assert SAMPLE_PHOTOS, "bundled sample photos are missing"
    return SAMPLE_PHOTOS


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.yaml of a small generated YOLO dataset (classes: litter, car)."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def tiny_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real YOLO11n trained for a few epochs on generated shapes (CPU, seconds)."""
    pytest.importorskip("ultralytics", reason="the train extra is needed to build a test model")
    return train_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory, tiny_pt: Path):
    """A registry folder holding the tiny model (fp32 + int8) as its default; returns its root."""
    from models.registry import write_registry
    from training.export import build_model_folder

    root = tmp_path_factory.mktemp("registry")
    calib = sorted((tiny_pt.parents[3] / "shapes" / "train" / "images").glob("*.jpg"))
    build_model_folder(
        tiny_pt, root / "tiny", name="tiny", version="t1", imgsz=160, description="test model", int8_calibration=calib
    )
    write_registry({"default": "tiny", "history": ["tiny"]}, root)
    return root


@pytest.fixture
def use_tiny_registry(tiny_registry: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the product's registry at the tiny model's registry for one test."""
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(tiny_registry))
    return tiny_registry


@pytest.fixture
def full_disk(tmp_path: Path):
    """A real, full file system: a small tmpfs filled to the last block (mounting needs root: else skip)."""
    with tmpfs(tmp_path / "full", "256k") as mount:
        fill(mount)
        yield mount
