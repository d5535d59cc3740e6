"""Hot reload: the service follows a newly promoted default while requests keep coming (none dropped, each
answered by one model, the new one from the swap on), refuses a model that cannot load, and files cases
with the version that found them."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from waiting import wait_for

from models.registry import load_card, rollback_default, set_default, write_card
from pipeline.detect import DetectorConfig
from serve.app import create_app
from serve.config import BatchingConfig, ReloadConfig, ServiceConfig


def variant(root: Path, name: str, version: str) -> Path:
    """The tiny model under another name and version (same weights)."""
    folder = root / name
    shutil.copytree(root / "tiny", folder)
    write_card(folder, load_card(folder).model_copy(update={"name": name, "version": version}))
    return folder


@pytest.fixture
def registry(tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "registry"
    shutil.copytree(tiny_registry, root)
    variant(root, "tiny-v2", "t2")
    variant(root, "tiny-v3", "t3")
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(root))
    return root


@pytest.mark.slow
def test_service_follows_the_promoted_default_without_dropping_a_request(registry: Path, tiny_pt: Path, tmp_path):
    photo = sorted((tiny_pt.parents[3] / "shapes" / "val" / "images").glob("*.jpg"))[0]
    body = photo.read_bytes()
    config = ServiceConfig(
        data_dir=tmp_path / "data",
        detector=DetectorConfig(conf=0.05),
        batching=BatchingConfig(enabled=True, max_batch=4, max_wait_ms=5),
        reload=ReloadConfig(poll_s=0.05),
    )
    app = create_app(config)
    key = app.state.store.create_key("ingest", "patrol")[0]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"}
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]
    stop = threading.Event()

    with TestClient(app) as client:

        def hammer(k: int) -> None:
            while not stop.is_set():
                r = client.post("/v1/detect", content=body, headers=headers)
                seen[k].append((r.status_code, r.json().get("model_version", r.text)))

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: all(len(s) >= 3 for s in seen), 30, "requests on the first model")
            set_default("tiny-v2", {"by": "test"})  # what `streetwatch promote` writes
            wait_for(lambda: all(s and s[-1][1] == "tiny-v2@t2/fp32" for s in seen), 30, "the new model")
            marks = [len(s) for s in seen]
            wait_for(lambda: all(len(s) >= m + 3 for s, m in zip(seen, marks, strict=True)), 30, "more requests")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        for s in seen:
            assert all(code == 200 for code, _ in s), s  # nothing dropped or failed during the swap
            versions = [v for _, v in s]
            first_new = versions.index("tiny-v2@t2/fp32")
            assert set(versions[:first_new]) == {"tiny@t1/fp32"}  # one model per request, old then new
            assert set(versions[first_new:]) == {"tiny-v2@t2/fp32"}  # never back to the old one
        ready = client.get("/readyz").json()["checks"]
        assert ready["model"] == "tiny-v2@t2/fp32" and ready["model_follow"]["reloads"] == 1
        assert 'streetwatch_model_info{version="tiny-v2@t2/fp32"} 1.0' in client.get("/metrics").text

        # a case records the version that found it
        filed = client.post("/v1/detect", params={"file": "true"}, content=body, headers=headers).json()
        assert filed["cases"] and filed["model_version"] == "tiny-v2@t2/fp32"
        assert app.state.store.get_case(filed["cases"][0]["case_id"]).model_version == "tiny-v2@t2/fp32"

        # a default whose files are corrupt is refused: the service keeps answering with the model it has
        onnx = registry / "tiny-v3" / "model.onnx"
        data = bytearray(onnx.read_bytes())
        data[-50] ^= 0xFF
        onnx.write_bytes(bytes(data))
        set_default("tiny-v3", {"by": "test"})
        wait_for(lambda: client.get("/readyz").json()["checks"]["model_follow"]["failures"] >= 1, 30, "refusal")
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["checks"]["model"] == "tiny-v2@t2/fp32"
        assert "sha256 does not match" in ready["checks"]["model_follow"]["last_error"]
        r = client.post("/v1/detect", content=body, headers=headers)
        assert r.status_code == 200 and r.json()["model_version"] == "tiny-v2@t2/fp32"

        # rolling back to what runs clears the alarm; rolling back once more switches again
        rollback_default(registry)
        wait_for(lambda: client.get("/readyz").json()["checks"]["model_follow"]["last_error"] is None, 30, "clear")
        rollback_default(registry)
        wait_for(lambda: client.get("/readyz").json()["checks"]["model"] == "tiny@t1/fp32", 30, "the rollback")


def test_a_pinned_model_does_not_follow_the_default(registry: Path, tmp_path):
    app = create_app(ServiceConfig(data_dir=tmp_path / "data", detector=DetectorConfig(model="tiny")))
    with TestClient(app) as client:
        assert app.state.follower is None
        checks = client.get("/readyz").json()["checks"]
        assert checks["model"] == "tiny@t1/fp32" and checks["model_follow"].startswith("off")
