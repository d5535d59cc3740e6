"""Small real files for the dataset tests: generated YOLO sources, a patrol-like folder source."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from datasets.recipe import default_shared

REPO = Path(__file__).resolve().parents[2]
GARBAGE_NAMES = ["garbage", "garbage_bin", "overflow"]


def texture(rng: np.random.Generator, size: tuple[int, int] = (160, 200)) -> np.ndarray:
    """A distinct random image: smooth colour blobs plus fine noise (unrelated images have unrelated hashes)."""
    h, w = size
    low = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
    image = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.add(image, rng.integers(0, 20, (h, w, 3), dtype=np.uint8))


def write_yolo_source(
    root: Path, names: list[str], n_train: int = 6, n_val: int = 3, seed: int = 0, size: tuple[int, int] = (160, 200)
) -> Path:
    """A YOLO dataset like the shared ones: train/val images + labels, data.yaml with ``path: .``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = texture(rng, size)
            rows = []
            for _ in range(int(rng.integers(1, 4))):
                c = int(rng.integers(0, len(names)))
                bw, bh = rng.uniform(0.1, 0.4, 2)
                cx, cy = rng.uniform(bw / 2, 1 - bw / 2), rng.uniform(bh / 2, 1 - bh / 2)
                x1, y1 = int((cx - bw / 2) * size[1]), int((cy - bh / 2) * size[0])
                x2, y2 = int((cx + bw / 2) * size[1]), int((cy + bh / 2) * size[0])
                cv2.rectangle(image, (x1, y1), (x2, y2), (20, 20, 200), -1)
                rows.append(f"{c} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
            cv2.imwrite(str(root / split / "images" / f"{split}{i:03d}.jpg"), image)
            (root / split / "labels" / f"{split}{i:03d}.txt").write_text("\n".join(rows) + "\n")
    (root / "data.yaml").write_text(
        yaml.safe_dump({"path": ".", "train": "train/images", "val": "val/images", "names": names})
    )
    return root


@pytest.fixture
def garbage_like(tmp_path: Path) -> Path:
    """A small YOLO source with the garbage set's class names."""
    return write_yolo_source(tmp_path / "garbage", GARBAGE_NAMES)


@pytest.fixture
def patrol_like(tmp_path: Path) -> tuple[Path, Path]:
    """Images folder + labels folder (product class ids) + split.yaml (train/eval/clean), like the patrol photos."""
    rng = np.random.default_rng(5)
    images, labels = tmp_path / "patrol-images", tmp_path / "patrol-labels"
    images.mkdir()
    labels.mkdir()
    stems = [f"photo_{i}" for i in range(6)]
    for i, stem in enumerate(stems):
        cv2.imwrite(str(images / f"{stem}.jpg"), texture(rng, (180, 240)))
        if i < 5:  # photo_5 is not labelled (not in the split file)
            rows = "" if i in (2, 4) else "3 0.5 0.6 0.3 0.2\n4 0.2 0.5 0.1 0.3\n"
            (labels / f"{stem}.txt").write_text(rows)
    (labels / "split.yaml").write_text(
        yaml.safe_dump(
            {
                "train": stems[:3],
                "eval": stems[3:5],
                "clean": [stems[2], stems[4]],
                "night_or_blur": [stems[2], stems[3]],
                "notes": {stems[0]: "dark; one bag left unlabelled"},
            }
        )
    )
    return images, labels


def shared_data() -> Path:
    """The shared data folder ($STREETWATCH_SHARED or ../shared), or skip."""
    shared = default_shared()
    if not (shared / "data" / "garbage" / "data.yaml").is_file():
        pytest.skip(f"shared data not found at {shared}")
    return shared
