"""Helpers of the service tests: violations with real JPEG evidence, a real uvicorn service in a subprocess."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import httpx
import numpy as np
import yaml
from sqlalchemy import create_engine, text

from pipeline.cases import EvidenceImage, Violation

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)


def empty_database(url: str) -> None:
    """Empty every table of a PostgreSQL test database (the schema stays)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        tables = [r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'"))]
        tables = [t for t in tables if t != "alembic_version"]
        if tables:
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    engine.dispose()


def jpeg(seed: int = 0, size: tuple[int, int] = (96, 64)) -> bytes:
    """A small real JPEG, different per seed."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def make_violation(**kw) -> Violation:
    """A parked-car violation on camera cam1 with a real JPEG frame; keyword overrides."""
    base = dict(
        key=f"cam1:illegal_parking:{uuid.uuid4().hex[:8]}",
        type="illegal_parking",
        source="camera",
        source_id="cam1",
        source_name="东门 East gate",
        zone="gate",
        first_seen=T0,
        last_seen=T0 + timedelta(seconds=90),
        detector_class="car",
        score=0.8,
        box=(10, 20, 110, 90),
        frame_size=(640, 360),
        model_version="tiny@t1/fp32",
    )
    base.update(kw)
    if "evidence" not in kw:
        base["evidence"] = [EvidenceImage(kind="frame", jpeg=jpeg(hash(base["key"]) % 1000))]
    return Violation(**base)


def sign_in(client, key: str, next: str = "/ui/cases") -> str:
    """Sign ``client`` (a TestClient, its own cookie jar) in on the review page with ``key``, through the form as
    a person does; returns the session token its cookie now holds."""
    from serve.auth import COOKIE

    r = client.post("/ui/login", data={"key": key, "next": next}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client.cookies[COOKIE]


def signed_in(app, key: str):
    """A browser of the review page: its own cookie jar, signed in with ``key``."""
    from fastapi.testclient import TestClient

    browser = TestClient(app)
    sign_in(browser, key)
    return browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """``streetwatch serve`` in a subprocess (a real uvicorn), restartable on the same port and data."""

    def __init__(self, data_dir: Path, config: dict | None = None, port: int | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = data_dir.parent / f"service-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config or {"load_detector": False}))
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"service-{self.port}.log"

    def start(self, timeout: float = 60) -> ServiceProcess:
        cmd = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--config",
            str(self.config_path),
        ]
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def key(self, role: str, name: str | None = None) -> str:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "keys",
                "create",
                "--role",
                role,
                "--name",
                name or role,
                "--data-dir",
                str(self.data_dir),
                "--config",
                str(self.config_path),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()


#: Hand-marked violations in the bundled sample photos (photo, type, detector class, xyxy box).
MARKED = [
    ("overflowing-bins-street.jpg", "overflowing_bin", "overflowing_bin", (130, 335, 625, 500)),
    ("patrol-dumped-bags.jpg", "exposed_garbage", "litter", (240, 260, 820, 580)),
]


def sample_violations(detector=None) -> list[Violation]:
    """Realistic violations from the bundled photos: hand-marked garbage, and vehicles the shipped model
    finds in two patrol photos filed as parking in a no-parking zone (as a camera worker with zones would)."""
    from models.classes import class_id
    from pipeline.annotate import draw_detections
    from pipeline.decode import read_image
    from pipeline.detect import Detector
    from pipeline.detections import Detections
    from pipeline.evidence import encode_jpeg
    from pipeline.photos import find_violations, photo_violations

    photos = REPO / "pipeline" / "samples" / "photos"
    detector = detector or Detector()
    out: list[Violation] = []
    for i, (name, _vtype, cls, box) in enumerate(MARKED):
        image = read_image(photos / name)
        # people (blurred in evidence) and vehicles from the model; the garbage is the hand mark alone, so
        # each photo gives exactly one case whatever garbage the model finds itself
        found = detector.detect(image).of_classes(["person", "car", "motorbike", "bicycle"])
        marked = Detections([box], [0.71 + 0.1 * i], [class_id(cls)])
        t = T0 + timedelta(hours=2 * i)
        dets = Detections.merge([found, marked])
        sha = hashlib.sha256((photos / name).read_bytes()).hexdigest()
        findings = find_violations(dets, sha)
        out += photo_violations(
            image, dets, findings, sha256=sha, model_version=detector.version, taken_at=t, source_name=name
        )
    for i, name in enumerate(("patrol-bikes-cardboard.jpg", "patrol-containers-cyclist.jpg")):
        image = read_image(photos / name)
        dets = detector.detect(image)
        vehicle = dets.of_classes(["car", "motorbike", "bicycle"])[0]
        x1, y1, x2, y2 = (float(v) for v in vehicle.xyxy[0])
        crop = image[int(y1) : int(y2), int(x1) : int(x2)]
        out.append(
            Violation(
                key=f"cam-{i}:illegal_parking:track-{17 + i}",
                type="illegal_parking",
                source="camera",
                source_id=f"cam-{i + 1:02d}",
                source_name=["人民路口 Renmin Rd crossing", "菜市场东门 Market east gate"][i],
                zone="人行道 sidewalk",
                first_seen=T0 + timedelta(hours=5 + i),
                last_seen=T0 + timedelta(hours=5 + i, minutes=12),
                detector_class=vehicle.class_names[0],
                score=float(vehicle.confidence[0]),
                box=(x1, y1, x2, y2),
                frame_size=(image.shape[1], image.shape[0]),
                model_version=detector.version,
                evidence=[
                    EvidenceImage(kind="frame", jpeg=encode_jpeg(draw_detections(image, vehicle))),
                    EvidenceImage(kind="crop", jpeg=encode_jpeg(crop)),
                ],
            )
        )
    return out
