"""pipeline/, serve/ and models/ must import and detect with torch and ultralytics unavailable."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import importlib, importlib.abc, json, pkgutil, sys

BLOCKED = {"torch", "torchvision", "ultralytics"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, Block())
try:
    import torch  # noqa: F401
    raise SystemExit("torch import was not blocked")
except ImportError:
    pass

imported = []
for pkg_name in ("models", "pipeline", "serve"):
    pkg = importlib.import_module(pkg_name)
    for mod in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
        importlib.import_module(mod.name)
        imported.append(mod.name)

from pipeline.decode import read_image
from pipeline.detect import Detector

dets = Detector().detect(read_image(sys.argv[1]))
print(json.dumps({"imported": imported, "classes": dets.class_names,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_runtime_imports_and_detects_without_torch(sample_photos):
    photo = next(p for p in sample_photos if "scooter" in p.name)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(photo)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "pipeline.detect" in result["imported"] and "pipeline.cli" in result["imported"]
    assert {"person", "motorbike"} <= set(result["classes"])
    assert result["loaded"] == []


WITHOUT_TRAIN_EXTRA = r"""
import sys
from pipeline.cli import TRAIN_EXTRA, main
for name in TRAIN_EXTRA:  # as in an install without the train extra: importing any of them fails
    sys.modules[name] = None
sys.exit(main(sys.argv[1:]))
"""


def test_commands_of_the_train_extra_say_what_to_install_instead_of_a_traceback(tmp_path, shapes_data):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", WITHOUT_TRAIN_EXTRA, *args], cwd=REPO, capture_output=True, text=True, timeout=300
        )

    out = tmp_path / "imported"
    refused = run("data", "import", str(shapes_data.parent), "--map", "product", "--out", str(out))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "this needs matplotlib, part of the train extra: pip install -e '.[train]'" in refused.stderr
    assert not out.exists()  # refused before writing
    train = run("train", "--config", "training/configs/smoke.yaml")
    assert train.returncode == 2 and "this needs ultralytics, torch, albumentations, part of" in train.stderr
    # evaluating an ONNX model needs only the runtime: without matplotlib, the picture alone is left out
    evaluated = run("evaluate", "--data", str(shapes_data), "--model", "streetwatch-v3", "--out", str(tmp_path / "e"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "confusion-matrix picture skipped: matplotlib is not installed" in evaluated.stderr
    assert "AP50" in evaluated.stdout and (tmp_path / "e" / "evaluation.json").is_file()
