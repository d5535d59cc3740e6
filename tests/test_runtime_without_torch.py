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
