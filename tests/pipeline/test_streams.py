"""Stream processing end to end: a real RTSP server killed and restarted, HTTP, dead cameras, keyframes, demo."""

from __future__ import annotations

import functools
import http.server
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from synth import still_scene, write_h264
from waiting import wait_for

from models.registry import resolve
from pipeline.cameras import CameraConfig, CamerasConfig, NoParkingZone, load_cameras
from pipeline.cases import JsonlSink
from pipeline.detect import Detector
from pipeline.sources import CameraReader, Frame
from pipeline.streams import CameraWorker, StreamProcessor

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")
PHOTO = REPO / "pipeline" / "samples" / "photos" / "patrol-bikes-cardboard.jpg"
# the pavement of the patrol photo: the scooter and a bicycle stand on it, the parked car is outside
PAVEMENT = [[0.0, 0.30], [0.60, 0.30], [0.76, 0.45], [1.0, 0.62], [1.0, 1.0], [0.0, 1.0]]


def require_rtsp_server() -> None:
    """Skip (or fail, when STREETWATCH_REQUIRE_SERVICES is set) without gst-rtsp-server."""
    ok = os.path.exists(SYSTEM_PYTHON)
    if ok:
        ok = subprocess.run([SYSTEM_PYTHON, str(RTSP_SERVER), "--check"], capture_output=True).returncode == 0
    if not ok:
        reason = "gst-rtsp-server is not installed (make test installs it: see the Makefile)"
        if os.environ.get("STREETWATCH_REQUIRE_SERVICES"):
            pytest.fail(reason)
        pytest.skip(reason)


class RtspServer:
    """gst-rtsp-server in a child process, serving one file at rtsp://127.0.0.1:PORT/cam."""

    def __init__(self, video: Path):
        self.video = video
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> None:
        cmd = [SYSTEM_PYTHON, str(RTSP_SERVER), str(self.video), str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        assert ready, "the RTSP server did not start"
        line = self.proc.stdout.readline().strip()
        assert line.isdigit(), f"RTSP server failed: {line} {self.proc.stderr.read() if self.proc.poll() else ''}"
        self.port = int(line)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def still_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 s, 5 fps, 640x478 H.264 of a fixed camera on the patrol photo's pavement (noise, light change)."""
    image = cv2.resize(cv2.imread(str(PHOTO)), (640, 478), interpolation=cv2.INTER_AREA)
    return write_h264(tmp_path_factory.mktemp("clips") / "pavement.mp4", still_scene(image, 40, fps=5), fps=5)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(threads=1)  # the shipped COCO model: it finds the scooter and the bicycle


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_rtsp_camera_killed_mid_stream_reconnects_without_losing_or_duplicating(tmp_path, still_clip, detector):
    require_rtsp_server()
    server = RtspServer(still_clip)
    server.start()
    camera = CameraConfig(
        id="pavement",
        url=server.url,
        sample_fps=2,
        open_timeout_s=5,
        stall_timeout_s=3,
        backoff={"initial_s": 0.5, "max_s": 2},
        zones=[NoParkingZone(kind="no_parking", name="pavement", polygon=PAVEMENT, dwell_s=6, gone_s=40, inertia=2)],
    )
    out = tmp_path / "violations.jsonl"
    sink = JsonlSink(out)
    proc = StreamProcessor(CamerasConfig(cameras=[camera]), detector, sink)
    status = lambda: proc.status()[0]  # noqa: E731
    try:
        proc.start()
        wait_for(lambda: status().state == "live" and status().frames_processed >= 3, 30, "the first samples")
        assert read_jsonl(out) == []  # the dwell is still running: a violation in flight
        first_kill = time.time()
        server.kill()  # 1st outage, while the dwell clock runs
        wait_for(lambda: status().state in ("failed", "stalled", "connecting"), 10, "the camera to notice")
        time.sleep(2.0)
        server.start()
        wait_for(lambda: len({r["key"] for r in read_jsonl(out)}) >= 2, 40, "the parking violations")
        before = status()
        server.kill()  # 2nd outage, with the violations open
        wait_for(lambda: status().reconnects > before.reconnects, 15, "a reconnect attempt")
        time.sleep(1.0)
        server.start()
        wait_for(lambda: status().frames_processed >= before.frames_processed + 6, 40, "samples after reconnecting")
        assert status().state == "live" and status().error is None  # the outage is over, not "last error: ..."
        reconnects = status().reconnects
        server.proc.send_signal(signal.SIGSTOP)  # 3rd: the server hangs, the connection stays open, no data
        wait_for(lambda: status().state == "stalled", 15, "the camera to show as stalled")
        wait_for(lambda: status().reconnects > reconnects, 20, "a reconnect attempt after the stall")
        server.proc.send_signal(signal.SIGCONT)
        stalled = status()
        wait_for(lambda: status().frames_processed >= stalled.frames_processed + 4, 40, "samples after the stall")
        assert status().state == "live"
    finally:
        proc.stop()
        sink.close()
        server.kill()
    records = read_jsonl(out)
    opened = [r for r in records if r["extra"]["event"] == "open"]
    classes = sorted(r["detector_class"] for r in opened)
    assert classes == ["bicycle", "motorbike"], classes  # the car at the kerb is outside the zone
    assert len({r["key"] for r in records}) == len(opened) == 2  # each object once, however often it reconnected
    assert all(r["state"] == "open" for r in records)  # never ended by the outages (gone_s 40 s)
    for r in opened:
        # the dwell started before the first outage and carried on across it: nothing in flight was lost
        first = _epoch(r["first_seen"])
        assert first < first_kill and _epoch(r["last_seen"]) > first_kill
        assert r["zone"] == "pavement" and {e["kind"] for e in r["evidence_files"]} == {"frame", "crop", "clean"}
    assert proc.status()[0].reconnects >= 3


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


class FlakySink(JsonlSink):
    """A sink that is down for its first ``failures`` calls (a case queue restarting)."""

    def __init__(self, path: Path, failures: int):
        super().__init__(path)
        self.failures = failures

    def emit(self, violation) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("case queue unavailable")
        super().emit(violation)


class SlowSink(JsonlSink):
    """A sink that takes a while per violation (a locked database); ``busy`` is set once it is inside one."""

    def __init__(self, path: Path, seconds: float):
        super().__init__(path)
        self.seconds, self.busy = seconds, threading.Event()

    def emit(self, violation) -> None:
        self.busy.set()
        time.sleep(self.seconds)
        super().emit(violation)


def test_a_stop_while_the_sink_is_slow_waits_and_sends_each_violation_once(tmp_path, still_clip, detector):
    zone = NoParkingZone(kind="no_parking", name="pavement", polygon=PAVEMENT, dwell_s=2, inertia=1)
    camera = CameraConfig(id="file", url=str(still_clip), sample_fps=2, speed=2, zones=[zone])
    sink = SlowSink(tmp_path / "v.jsonl", seconds=1.5)
    proc = StreamProcessor(CamerasConfig(cameras=[camera]), detector, sink)
    proc.start()
    try:
        assert sink.busy.wait(60), "no violation reached the sink"
        time.sleep(0.2)
        assert 0.1 < proc.sink_waiting_s < 1.5  # shown on the status line once it is long
    finally:
        proc.stop(timeout=0.3)  # the sink is inside its first violation: the stop waits for it, not around it
    records = read_jsonl(tmp_path / "v.jsonl")
    events = [(r["key"], r["extra"]["event"], r["last_seen"]) for r in records]
    assert proc.unsent == 0 and len(events) == len(set(events))  # nothing lost, nothing sent twice
    opened = [key for key, event, _ in events if event == "open"]
    assert opened and len(opened) == len(set(opened))


def test_dead_cameras_are_retried_while_the_others_carry_on_and_a_failing_sink_loses_nothing(
    tmp_path, still_clip, detector
):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (backlog) but never answers
    backoff = {"initial_s": 0.2, "max_s": 0.8}
    cameras = [
        CameraConfig(
            id="refused", url=f"rtsp://admin:s3cret@127.0.0.1:{refused_port}/x", backoff=backoff, open_timeout_s=1
        ),
        CameraConfig(
            id="silent", url=f"rtsp://127.0.0.1:{silent.getsockname()[1]}/x", backoff=backoff, open_timeout_s=1
        ),
        CameraConfig(
            id="file",
            url=str(still_clip),
            sample_fps=2,
            speed=2,
            zones=[NoParkingZone(kind="no_parking", name="pavement", polygon=PAVEMENT, dwell_s=2, inertia=1)],
        ),
    ]
    sink = FlakySink(tmp_path / "v.jsonl", failures=3)
    proc = StreamProcessor(CamerasConfig(cameras=cameras), detector, sink)
    try:
        proc.start()
        wait_for(lambda: all(s.reconnects >= 2 for s in proc.status()[:2]), 20, "retries")
        by_id = {s.camera_id: s for s in proc.status()}
        assert by_id["file"].state == "live" and by_id["file"].frames_processed > 0
        for cam in ("refused", "silent"):
            assert by_id[cam].state in ("failed", "connecting") and by_id[cam].frames_decoded == 0
            assert by_id[cam].error
        # FFmpeg's error names the URL: its password stays out of the status (and the logs)
        assert "rtsp://admin:***@127.0.0.1" in by_id["refused"].error and "s3cret" not in by_id["refused"].error
        reader = proc.readers["refused"]
        wait_for(lambda: reader.state == "failed", 5, "a failed state")
        assert 0 < reader.retry_at - time.monotonic() <= 0.8 * 1.1 + 0.01  # exponential backoff, capped at max_s
        wait_for(lambda: len(read_jsonl(tmp_path / "v.jsonl")) >= 2, 20, "violations once the sink is back")
    finally:
        proc.stop()
        silent.close()
    records = read_jsonl(tmp_path / "v.jsonl")
    opened = [r["key"] for r in records if r["extra"]["event"] == "open"]
    assert sink.failures == 0 and len(opened) == len(set(opened)) == 2  # delivered late, once each, in order
    assert records[0]["extra"]["event"] == "open"


def test_a_camera_stopped_while_connecting_says_stopped(tmp_path, detector):
    with socket.socket() as silent:  # accepts the connection, never answers: FFmpeg waits out its open timeout
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        camera = CameraConfig(id="silent", url=f"rtsp://127.0.0.1:{silent.getsockname()[1]}/x", open_timeout_s=20)
        proc = StreamProcessor(CamerasConfig(cameras=[camera]), detector, JsonlSink(tmp_path / "v.jsonl"))
        proc.start()
        time.sleep(0.5)
        assert proc.status()[0].state == "connecting"
        proc.stop()
        assert proc.status()[0].state == "stopped"  # the final status line: not still "connecting"


def test_a_processing_error_shows_in_the_status_until_samples_work_again(tmp_path, still_clip, detector):
    camera = CameraConfig(id="file", url=str(still_clip), sample_fps=2, speed=2)
    proc = StreamProcessor(CamerasConfig(cameras=[camera]), detector, JsonlSink(tmp_path / "v.jsonl"))
    worker = proc.workers["file"]
    works, failing = worker.process, threading.Event()
    failing.set()

    def process(frame, dets, version):  # a fault in this camera's rules while it is set
        if failing.is_set():
            raise RuntimeError("zone geometry failed")
        return works(frame, dets, version)

    worker.process = process
    try:
        proc.start()
        wait_for(lambda: proc.status()[0].error == "RuntimeError: zone geometry failed", 20, "the error shown")
        assert proc.status()[0].state == "live" and proc.status()[0].frames_processed == 0
        failing.clear()
        wait_for(lambda: proc.status()[0].error is None, 20, "the error cleared once samples work again")
        assert proc.status()[0].frames_processed > 0
    finally:
        proc.stop()


def test_http_stream_source(tmp_path, still_clip, detector):
    image = cv2.resize(cv2.imread(str(PHOTO)), (320, 240))
    write_h264(tmp_path / "clip.ts", still_scene(image, 4, fps=5), fps=5)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    cam = CameraConfig(id="http", url=f"http://127.0.0.1:{httpd.server_address[1]}/clip.ts", sample_fps=5)
    reader = CameraReader(cam)
    try:
        reader.start()
        wait_for(lambda: reader.frames_decoded >= 20, 20, "frames over HTTP")
        frame = reader.take()
        assert frame is not None and frame.image.shape == (240, 320, 3)
    finally:
        reader.stop()
        httpd.shutdown()


def test_keyframe_only_decoding_and_newest_frame_slot(still_clip):
    counts = {}
    for mode in ("full", "keyframes"):
        cam = CameraConfig(id=mode, url=str(still_clip), sample_fps=1, decode=mode, speed=8)
        reader = CameraReader(cam)
        reader.start()
        time.sleep(2.5)  # ~20 s of video at 8x; nothing taken meanwhile
        reader.stop()
        reader.join(5)
        newest = reader.take()
        assert newest is not None and newest.seq == reader.frames_sampled  # only the newest frame is kept
        assert reader.frames_dropped == reader.frames_sampled - 1
        assert reader.take() is None
        counts[mode] = (reader.frames_decoded, reader.last_frame_ts - reader._file_t0[0])
    (full, full_t), (key, key_t) = counts["full"], counts["keyframes"]
    # GOP 5 at 5 fps: one keyframe per second of video
    assert full / full_t > 4 and key / key_t < 1.5, counts


def test_a_file_that_cannot_be_decoded_fails_once_and_the_watch_ends(tmp_path, still_clip):
    """A file reads the same every time: it is not retried for ever, and `watch` ends with the reason."""
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "cut.mp4").write_bytes(still_clip.read_bytes()[:600])  # the header and no frame
    # opens (FFmpeg takes it for an image stream) and reads to its end without a frame: looped, it used to
    # be reopened at once, for ever, one CPU core busy and the status 'connecting'
    (tmp_path / "jpeg.mp4").write_bytes((REPO / "pipeline/samples/photos/patrol-dumped-bags.jpg").read_bytes()[:1000])
    (tmp_path / "cams.yaml").write_text(
        "cameras:\n  - {id: notes, url: notes.mp4, loop: true}\n  - {id: cut, url: cut.mp4}\n"
        "  - {id: jpeg, url: jpeg.mp4, loop: true}\n"
    )
    cmd = [sys.executable, "-m", "pipeline.cli", "watch", str(tmp_path / "cams.yaml"), "--duration", "60"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "no camera delivered any frame" in run.stderr, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith(("notes ", "cut ", "jpeg "))]
    final = lines[-3:]
    assert len(final) == 3 and all(" failed " in line and "not retried" in line for line in final), final
    assert len(lines) == len(set(lines))  # the last status is written once (a log holds what a tick wrote)
    assert all("reconnects 0" in line for line in final)
    assert "holds no frame that decodes" in final[2]


def test_sigterm_stops_watch_like_ctrl_c(tmp_path):
    """systemd, docker stop: open violations get their last update, the summary is printed, exit 0."""
    out = tmp_path / "v.jsonl"
    cmd = [sys.executable, "-m", "pipeline.cli", "watch", "--demo", "--speed", "2", "--sink", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: out.exists() and '"open"' in out.read_text(), 90, "a violation")
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "violation(s):" in err, err[-2000:]
    records = read_jsonl(out)
    opened = {r["key"] for r in records if r["extra"]["event"] == "open"}
    flushed = [r for r in records if r["key"] in opened and r["extra"]["event"] == "update"]
    assert opened and flushed  # the stop was flushed, not cut off


@pytest.mark.slow
def test_watch_demo_end_to_end(tmp_path):
    out = tmp_path / "demo.jsonl"
    cmd = [sys.executable, "-m", "pipeline.cli", "watch", "--demo", "--duration", "12", "--speed", "2"]
    run = subprocess.run([*cmd, "--json", "--sink", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    printed = [json.loads(line) for line in run.stdout.splitlines()]
    records = read_jsonl(out)
    assert [r["key"] for r in printed] == [r["key"] for r in records] and records
    assert printed[0]["evidence_files"] == records[0]["evidence_files"] != []
    parking = [r for r in records if r["type"] == "illegal_parking" and r["extra"]["event"] == "open"]
    assert {r["detector_class"] for r in parking} >= {"motorbike"}
    assert {r["source_id"] for r in records} == {"pavement-1"}  # the cars in the aisle never stop
    frame_file = next(e["path"] for e in parking[0]["evidence_files"] if e["kind"] == "frame")
    evidence = cv2.imread(frame_file)
    assert evidence is not None and evidence.shape[1] == 800 and evidence.shape[0] > 596  # frame + caption
    assert parking[0]["model_version"].startswith(f"{resolve().card.name}@")
    # the human view: status lines per camera on stderr
    run = subprocess.run(
        [*cmd[:-4], "--duration", "3", "--sink", str(tmp_path / "b.jsonl")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "lot-aisle" in run.stderr and "pavement-1" in run.stderr, run.stderr
    assert "violation(s)" in run.stderr and run.stdout == ""


@pytest.mark.parametrize("camera_id, expected", [("lot-aisle", []), ("pavement-1", ["bicycle", "motorbike"])])
def test_demo_cameras_looped_for_minutes_file_only_what_stands(detector, camera_id, expected):
    """The demo clips looped for minutes, as `make run` plays them: cars leaving and entering the aisle at
    the same spots, loop after loop, never add up to a parked car; the scooter and bicycle are one case each."""
    camera = next(c for c in load_cameras(REPO / "pipeline/samples/cameras-demo.yaml").cameras if c.id == camera_id)
    with av.open(camera.url) as container:
        stream = container.streams.video[0]
        clip = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
        fps = float(stream.average_rate)
    picked = np.arange(0, len(clip), fps / camera.sample_fps).astype(int)
    found = {int(i): detector(clip[i]) for i in picked}
    worker, opened = CameraWorker(camera, None), []
    for loop in range(8):
        for seq, i in enumerate(picked):
            frame = Frame(camera.id, clip[i], 1.8e9 + (loop * len(clip) + i) / fps, 0.0, seq)
            opened += [
                v.detector_class for v in worker.process(frame, found[int(i)], "m@1") if v.extra["event"] == "open"
            ]
    assert sorted(opened) == expected


def test_watch_reports_config_errors_with_lines(tmp_path):
    bad = tmp_path / "cams.yaml"
    bad.write_text("cameras:\n  - id: a\n    url: rtsp://127.0.0.1/x\n    sample_fps: 0\n")
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "watch", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert f"{bad}:4: camera 'a': sample_fps: Input should be greater than 0" in run.stderr
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "watch"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and "give a camera config file or --demo" in run.stderr


def test_evidence_blurs_people_but_not_the_subject():
    from models.classes import CLASS_IDS
    from pipeline.detections import Detections
    from pipeline.evidence import render_evidence

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)  # sharp texture everywhere
    person, car = [50, 50, 150, 350], [300, 150, 550, 350]
    dets = Detections(
        np.array([person, car], np.float32), np.array([0.9, 0.8]), np.array([CLASS_IDS["person"], CLASS_IDS["car"]])
    )
    images = render_evidence(frame, dets, np.array(car), CLASS_IDS["car"], "illegal_parking car 0.80", ["caption"])
    full = cv2.imdecode(np.frombuffer(images[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
    crop = cv2.imdecode(np.frombuffer(images[1].jpeg, np.uint8), cv2.IMREAD_COLOR)

    def sharpness(img):
        return cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()

    assert sharpness(full[70:330, 70:130]) < 0.05 * sharpness(full[170:330, 320:530])
    assert full.shape[0] > 400 and full.shape[1] == 600  # caption band below the frame
    assert crop.shape[0] < 400 and crop.shape[1] < 600 and sharpness(crop) > 1000
