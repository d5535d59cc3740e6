"""The whole retraining loop on the CPU with a tiny real model, through the commands data staff run:

cases filed by a RUNNING service (real uvicorn subprocess) from patrol photos and a camera -> reviewed
through the API (a class correction, dismissals) -> exported -> merged with the base training set by a
recipe -> fine-tuned (3 epochs at 160 px) -> exported -> compared (gate passes) -> promoted -> the running service
answers with the new version without a restart. A candidate trained without car labels is refused by
the gate, promoted only with --force and a reason (recorded), and rolled back.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import yaml

from models.classes import CLASS_IDS
from models.registry import history_events, read_registry, resolve
from pipeline.cases import Violation
from pipeline.cli import main
from pipeline.detections import Detections
from pipeline.evidence import render_evidence
from training.cli import EXIT_GATE_REFUSED

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "serve"))
sys.path.insert(0, str(REPO / "tests"))

from servetest import ServiceProcess  # noqa: E402
from synth import draw_sample  # noqa: E402
from waiting import wait_for  # noqa: E402

SMOKE = REPO / "training" / "configs" / "smoke.yaml"
FINE_TUNE = ["imgsz=160", "optimizer=SGD", "augment.enabled=false", "ultralytics.warmup_epochs=0", "mosaic=0"]


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def base_dataset(src: Path, dst: Path) -> Path:
    """The tiny model's shapes dataset as the base training set: val files renamed so that every file name
    is unique across splits (a dataset source's images are merged by name)."""
    shutil.copytree(src, dst)
    for kind, suffix in (("images", ".jpg"), ("labels", ".txt")):
        for f in (dst / "val" / kind).glob(f"*{suffix}"):
            f.rename(f.with_name(f"val-{f.name}"))
    spec = yaml.safe_load((dst / "data.yaml").read_text())
    (dst / "data.yaml").write_text(yaml.safe_dump({**spec, "path": str(dst)}))
    return dst


def camera_violation() -> Violation:
    """A parked 'car' (a blue disc) on a camera, with the evidence a stream worker renders."""
    scene = np.full((240, 320, 3), 150, np.uint8)
    cv2.circle(scene, (200, 120), 40, (230, 60, 20), -1)
    box = np.array([160, 80, 240, 160], np.float32)
    evidence = render_evidence(scene, Detections([box], [0.8], [CLASS_IDS["car"]]), box, CLASS_IDS["car"], "car", ["c"])
    t = datetime.now(timezone.utc)
    return Violation(
        key="cam-7:illegal_parking:track-3",
        type="illegal_parking",
        source="camera",
        source_id="cam-7",
        zone="sidewalk",
        first_seen=t - timedelta(minutes=4),
        last_seen=t,
        detector_class="car",
        score=0.8,
        box=tuple(box.tolist()),
        frame_size=(320, 240),
        model_version="tiny@t1/fp32",
        evidence=evidence,
    )


@pytest.mark.slow
def test_reviewed_cases_to_a_promoted_model_in_a_running_service(
    tiny_registry: Path, tiny_pt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    root = tmp_path / "registry"
    shutil.copytree(tiny_registry, root)
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(root))  # the service subprocess inherits it
    shapes = base_dataset(tiny_pt.parents[3] / "shapes", tmp_path / "shapes")
    eval_yaml = shapes / "data.yaml"  # the fixed evaluation set: its val split (not seen in training)
    base_recipe = tmp_path / "base.yaml"
    base_recipe.write_text(
        yaml.safe_dump(
            {
                "name": "shapes-base",
                "sources": [{"name": "shapes", "kind": "yolo", "path": str(shapes), "mapping": "product"}],
                "dedup": {"scene": False},
                "pseudo": {"enabled": False},
            }
        )
    )

    service = ServiceProcess(
        tmp_path / "data",
        {"detector": {"conf": 0.05}, "reload": {"poll_s": 0.2}, "batching": {"enabled": False}},
    )
    service.start()
    try:
        pid = service.proc.pid
        ingest = {"Authorization": f"Bearer {service.key('ingest', 'patrol-app')}"}
        review = {"Authorization": f"Bearer {service.key('reviewer', 'alice')}"}
        http = httpx.Client(base_url=service.url, timeout=60)

        # 1. the field: patrol photos filed through /v1/detect, a camera's violation through /v1/cases/ingest
        rng = np.random.default_rng(42)
        photo_cases: list[list[int]] = []
        for k in range(6):
            image, _ = draw_sample(rng)
            body = cv2.imencode(".jpg", image)[1].tobytes()
            r = http.post(
                "/v1/detect",
                params={"file": "true", "source_name": f"patrol-{k}.jpg"},
                content=body,
                headers={**ingest, "Content-Type": "image/jpeg"},
            )
            assert r.status_code == 200 and r.json()["model_version"] == "tiny@t1/fp32"
            photo_cases.append(sorted({c["case_id"] for c in r.json()["cases"]}))
        with_cases = [ids for ids in photo_cases if ids]
        assert len(with_cases) >= 3, photo_cases
        r = http.post(
            "/v1/cases/ingest",
            content=camera_violation().model_dump_json(),
            headers={**ingest, "Content-Type": "application/json"},
        )
        assert r.status_code == 201
        camera_case = r.json()["case_id"]

        # 2. review: a class correction, false positives dismissed, the rest confirmed
        def verdict(cid: int, action: str, **extra) -> None:
            r = http.post(f"/v1/cases/{cid}/review", json={"action": action, **extra}, headers=review)
            assert r.status_code == 200, r.text

        corrected = with_cases[0][0]
        verdict(corrected, "relabel", type="illegal_parking", detector_class="car")
        for cid in with_cases[0][1:] + [c for ids in with_cases[2:] for c in ids] + [camera_case]:
            verdict(cid, "confirm")
        for cid in with_cases[1]:
            verdict(cid, "dismiss", note="shadow, not litter")

        # 3. export the reviews (the service keeps running and writing meanwhile)
        field = tmp_path / "field-1"
        args = ["data", "export-reviews", "--data-dir", str(service.data_dir), "--out", str(field)]
        assert main([*args, "--base-recipe", str(base_recipe), "--name", "field-1", "--quiet"]) == 0
        exported = json.loads((field / "export.json").read_text())
        assert exported["counts"]["images"] == len(with_cases) + 1 and exported["counts"]["corrected"] == 1
        assert exported["counts"]["background_images"] == 1 and not exported["skipped"]
        assert any(
            lb["case_id"] == corrected and lb["detector_class"] == "car"
            for i in exported["items"]
            for lb in i["labels"]
        )

        # 4. merge with the base training set: the recipe the export wrote, versioned by its manifest
        merged = tmp_path / "merged"
        assert (
            main(
                [
                    "data",
                    "build",
                    str(field / "recipe.yaml"),
                    "--out",
                    str(merged),
                    "--shared",
                    str(tmp_path),
                    "--no-sheets",
                ]
            )
            == 0
        )
        manifest = json.loads((merged / "manifest.json").read_text())
        assert [s["name"] for s in manifest["sources"]] == ["shapes", "field-1"] and len(manifest["fingerprint"]) == 64
        assert manifest["recipe"]["extends"] == str(base_recipe)
        field_train = manifest["sources"][1]["splits"]["train"]["images"]
        assert field_train == len(with_cases) + 1
        capsys.readouterr()

        # 5. a short fine-tune from the model in force, export, compare on the fixed eval set
        runs = tmp_path / "runs"
        train = ["train", "--config", str(SMOKE), *sets(f"data={merged / 'data.yaml'}", "base=tiny", f"out={runs}")]
        assert main([*train, *sets("name=good", "epochs=3", "lr0=0.01", "val=false", *FINE_TUNE)]) == 0
        good_pt = runs / "good" / "weights" / "last.pt"
        assert main(["export", str(good_pt), "--name", "tiny-field", "--version", "t2", "--imgsz", "160"]) == 0
        card = resolve("tiny-field").card
        assert card.training["data"]["manifest"]["summary"]["fingerprint"] == manifest["fingerprint"]
        cmp = tmp_path / "cmp-good"
        compare = ["compare", "--candidate", "tiny-field", "--data", str(eval_yaml), "--field", str(field)]
        assert main([*compare, "--out", str(cmp)]) == 0
        report = json.loads((cmp / "compare.json").read_text())
        assert report["gate"]["passed"] and report["gate"]["mean"]["delta"] >= 0
        assert report["field"]["images"] == len(with_cases) + 1
        assert report["fingerprint"] == resolve("tiny-field").card.metrics["promotion_gate"]["fingerprint"]

        # 6. promote: the running service switches to it, no restart, no failed request
        assert main(["promote", "tiny-field"]) == 0
        assert resolve("default").file("manifest").is_file()  # the dataset manifest kept with the version
        photo = cv2.imencode(".jpg", draw_sample(np.random.default_rng(7))[0])[1].tobytes()
        answers: list[tuple[int, str]] = []

        def detect_version() -> bool:
            r = http.post("/v1/detect", content=photo, headers={**ingest, "Content-Type": "image/jpeg"})
            answers.append((r.status_code, r.json().get("model_version")))
            return answers[-1][1] == "tiny-field@t2/fp32"

        wait_for(detect_version, 30, "the service to answer with the promoted model")
        assert all(code == 200 for code, _ in answers) and service.proc.poll() is None and service.proc.pid == pid
        assert http.get("/readyz").json()["checks"]["model"] == "tiny-field@t2/fp32"

        # 7. a candidate trained with the car labels removed: worse on car, refused by the gate
        nocar = tmp_path / "shapes-nocar"
        shutil.copytree(shapes, nocar)
        for label in (nocar / "train" / "labels").glob("*.txt"):
            label.write_text(
                "".join(f"{line}\n" for line in label.read_text().splitlines() if not line.startswith("1 "))
            )
        spec = yaml.safe_load((nocar / "data.yaml").read_text())
        (nocar / "data.yaml").write_text(yaml.safe_dump({**spec, "path": str(nocar)}))
        bad = ["train", "--config", str(SMOKE), *sets(f"data={nocar / 'data.yaml'}", "base=tiny-field", f"out={runs}")]
        assert main([*bad, *sets("name=nocar", "epochs=8", "lr0=0.01", "val=false", *FINE_TUNE)]) == 0
        assert (
            main(
                [
                    "export",
                    str(runs / "nocar" / "weights" / "last.pt"),
                    "--name",
                    "tiny-nocar",
                    "--version",
                    "t3",
                    "--imgsz",
                    "160",
                ]
            )
            == 0
        )
        capsys.readouterr()
        cmp = tmp_path / "cmp-bad"
        assert (
            main(
                [
                    "compare",
                    "--candidate",
                    "tiny-nocar",
                    "--data",
                    str(eval_yaml),
                    "--field",
                    str(field),
                    "--out",
                    str(cmp),
                ]
            )
            == EXIT_GATE_REFUSED
        )
        printed = capsys.readouterr().out
        assert "REFUSED" in printed and "car lost" in printed
        report = json.loads((cmp / "compare.json").read_text())
        assert report["gate"]["classes"]["car"]["delta"] < -2 and report["field"]["gone"] >= 1
        assert (cmp / "field-changes.jpg").is_file()
        assert main(["promote", "tiny-nocar"]) == EXIT_GATE_REFUSED
        assert "car lost" in capsys.readouterr().err and read_registry()["default"] == "tiny-field"

        # 8. forced with a reason: recorded; the service follows; rollback brings the good model back
        assert main(["promote", "tiny-nocar", "--force", "--reason", "e2e: override recorded"]) == 0
        event = history_events(read_registry())[-1]
        assert event["forced"] and event["reason"] == "e2e: override recorded" and not event["gate"]["passed"]
        assert any("car lost" in f for f in event["gate"]["failures"])
        wait_for(lambda: http.get("/readyz").json()["checks"]["model"] == "tiny-nocar@t3/fp32", 30, "the override")
        assert main(["rollback", "--reason", "cars missed"]) == 0
        wait_for(detect_version, 30, "the service back on the good model")
        assert all(code == 200 for code, _ in answers) and service.proc.pid == pid
        http.close()
    finally:
        service.stop()
