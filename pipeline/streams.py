"""Stream processing: cameras in, violations out.

:class:`StreamProcessor` runs every enabled camera of a :class:`~pipeline.cameras.CamerasConfig`:
one reader thread per camera (:mod:`pipeline.sources`) keeps that camera's newest sampled frame, and
one processing thread takes the newest frame of every camera that has one, runs the detector ONCE
on all of them (``Detector.detect_batch``), then per camera drops masked detections, tracks
(:mod:`pipeline.track`), applies the rules (:mod:`pipeline.rules`), renders evidence
(:mod:`pipeline.evidence`) and emits :class:`~pipeline.cases.Violation` s to the sink.

Programmatic use (this is what ``streetwatch watch`` and the case-queue service do)::

    from pipeline.cameras import load_cameras
    from pipeline.cases import open_sink
    from pipeline.detect import Detector
    from pipeline.streams import StreamProcessor

    proc = StreamProcessor(load_cameras("cameras.yaml"), Detector(), open_sink("violations.jsonl"))
    proc.start()                    # returns at once; readers and the processing thread run
    for s in proc.status():         # list[CameraStatus]: state, last frame time, frames, reconnects, lag
        print(s.camera_id, s.state, s.lag_s)
    proc.stop()                     # graceful: the batch in flight finishes, open violations are flushed
    # or: proc.run(duration=60)     # start, wait (None: until files end or Ctrl-C), stop

The shipped demo cameras: ``load_cameras(pipeline.cameras.DEMO_CAMERAS)``.

- ``proc.detector`` is the only reference to the detector; assigning a new one swaps the model
  atomically: the next batch uses it, the batch in flight finishes with the old one.
- The sink is the caller's: the processor never closes it. Emitting is retried (a failing sink keeps
  violations queued, in order, until it accepts them), so a sink outage loses nothing.
- ``proc.listeners``: callables invoked with each violation after the sink accepted it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, tzinfo

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.classes import CLASS_IDS
from pipeline.cameras import CameraConfig, CamerasConfig
from pipeline.cases import EvidenceImage, Violation, ViolationSink
from pipeline.detections import Detections
from pipeline.evidence import render_evidence
from pipeline.rules import RuleEngine, RuleEvent
from pipeline.sources import CameraReader, CameraState, Frame
from pipeline.track import ByteTracker
from pipeline.zones import WHOLE_FRAME, build_zones

log = logging.getLogger(__name__)


class CameraStatus(BaseModel):
    """How one camera is doing right now."""

    model_config = ConfigDict(extra="forbid")

    camera_id: str = Field(description="Camera id")
    name: str = Field(description="Camera name for people")
    state: CameraState = Field(description="connecting, live, stalled, failed (retrying), ended (file), stopped")
    last_frame_time: datetime | None = Field(description="Time of the newest decoded frame")
    frames_decoded: int = Field(description="Frames decoded since start")
    frames_processed: int = Field(description="Sampled frames the detector and rules processed")
    frames_dropped: int = Field(description="Sampled frames replaced by a newer one before processing")
    reconnects: int = Field(description="Connection attempts after the first")
    lag_s: float | None = Field(description="Seconds between a frame being live and its processing finishing (last)")
    error: str | None = Field(description="Last connection, decoding or processing error")
    retry_in_s: float | None = Field(description="Seconds until the next connection attempt while failed")
    open_violations: int = Field(description="Violations currently open on this camera")


class CameraWorker:
    """Per-camera state of the processing thread: mask, tracker, rules, evidence."""

    def __init__(self, camera: CameraConfig, tz: tzinfo | None, update_s: float = 60.0):
        self.camera = camera
        self.tz = tz
        self.zones = build_zones(camera.zones, tz)
        self.masks = [z for z in self.zones if z.kind == "mask"]
        self.tracker = ByteTracker(camera.tracker)
        self.rules = RuleEngine(camera.id, self.zones, update_s=update_s, sample_interval_s=1 / camera.sample_fps)
        self.watched_ids = np.array([CLASS_IDS[c] for c in self.rules.watched_classes], np.int64)
        self.frames_processed = 0
        self.lag_s: float | None = None
        self.error: str | None = None
        self._evidence: dict[str, tuple[list[EvidenceImage], tuple[float, ...], tuple[int, int], str]] = {}

    def process(self, frame: Frame, dets: Detections, model_version: str) -> list[Violation]:
        """One sampled frame with its detections -> violations to emit (new, updated, ended)."""
        wh = frame.size
        everything = dets  # people in masked areas are blurred in evidence too
        if self.masks and len(dets):
            feet = dets.bottom_center
            masked = np.zeros(len(dets), bool)
            for zone in self.masks:
                masked |= zone.contains(feet, wh)
            dets = dets[~masked]
        watched = dets[np.isin(dets.class_id, self.watched_ids)] if len(dets) else dets
        tracked = self.tracker.update(watched, frame.ts)
        events = self.rules.update(frame.ts, tracked, wh)
        return [self._violation(e, frame, everything, model_version) for e in events]

    def flush(self) -> list[Violation]:
        """Last updates of open violations (when stopping)."""
        return [self._violation(e, None, None, None) for e in self.rules.flush()]

    def _violation(
        self, event: RuleEvent, frame: Frame | None, dets: Detections | None, model_version: str | None
    ) -> Violation:
        obj = event.obj
        if event.evidence and frame is not None and dets is not None and model_version is not None:
            zone_name = event.zone.name if event.zone and event.zone.config is not WHOLE_FRAME else "whole frame"
            label = f"{obj.violation} {obj.class_name} {obj.score:.2f}"
            caption = [
                f"{obj.violation}: {obj.class_name} {_score(obj.best_score)} (this frame {obj.score:.2f})"
                f" | camera {self.camera.label} [{self.camera.id}]"
                f" | zone {zone_name}",
                f"{self._time(frame.ts):%Y-%m-%d %H:%M:%S %z} | first seen {self._time(obj.first_seen):%H:%M:%S}"
                f" ({frame.ts - obj.first_seen:.0f} s) | model {model_version}",
            ]
            polygon = event.zone.polygon_px(frame.size) if event.zone and event.zone.config is not WHOLE_FRAME else None
            images = render_evidence(frame.image, dets, obj.box, obj.class_id, label, caption, polygon)
            box = tuple(round(float(v), 1) for v in obj.box)
            self._evidence[event.key] = (images, box, frame.size, model_version)
        images, box, size, version = self._evidence[event.key]
        if event.kind == "ended":
            self._evidence.pop(event.key, None)
        zone = event.zone.name if event.zone and event.zone.config is not WHOLE_FRAME else None
        return Violation(
            key=event.key,
            type=obj.violation,
            state="ended" if event.kind == "ended" else "open",
            source="camera",
            source_id=self.camera.id,
            source_name=self.camera.label,
            zone=zone,
            first_seen=self._time(obj.first_seen),
            last_seen=self._time(obj.last_seen),
            detector_class=obj.class_name,
            score=float(_score(obj.best_score)),
            box=box,
            frame_size=size,
            model_version=version,
            location=self.camera.location,
            evidence=images,
            extra={"event": event.kind, "object": obj.uid, "track_ids": sorted(obj.track_ids)},
        )

    def _time(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, self.tz) if self.tz else datetime.fromtimestamp(ts).astimezone()


class StreamProcessor:
    """Watches cameras and emits violations; see the module docstring."""

    def __init__(self, config: CamerasConfig, detector, sink: ViolationSink, *, update_s: float = 60.0):
        self.config = config
        self.detector = detector  # one attribute: replace it to hot-swap the model
        self.sink = sink
        self.listeners: list[Callable[[Violation], None]] = []
        self._cond = threading.Condition()
        self._pending = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsent: deque[Violation] = deque()
        self._stopped = False
        self._sink_since: float | None = None  # when the sink call in progress began
        self.batches = 0
        self.detector_errors = 0
        self.emitted = 0
        self.sink_failing = False
        self.readers: dict[str, CameraReader] = {}
        self.workers: dict[str, CameraWorker] = {}
        for cam in config.active:
            self.readers[cam.id] = CameraReader(cam, self._wake)
            self.workers[cam.id] = CameraWorker(cam, config.tz_of(cam), update_s)

    # ------------------------------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the camera readers and the processing thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._loop, name="streams-processing", daemon=True)
        self._thread.start()
        for reader in self.readers.values():
            reader.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully: readers stop, the batch in flight finishes, open violations are flushed to the sink.

        The queue of violations to send belongs to the processing thread until it has ended: a sink that
        takes long (a locked database) is waited for, with a warning every ``timeout`` seconds. A second
        Ctrl-C (or SIGTERM) while waiting stops without it; what was not sent is counted in :attr:`unsent`."""
        if self._thread is None or self._stopped:
            return
        for reader in self.readers.values():
            reader.stop()
        self._stopping.set()
        self._wake()
        try:
            self._thread.join(timeout)
            while self._thread.is_alive():
                log.warning("the sink has not answered for a while; still waiting (Ctrl-C again: stop without it)")
                self._thread.join(timeout)
        except KeyboardInterrupt:
            self._stopped = True
            log.error("stopped without waiting for the sink: %d violation(s) not sent", self.unsent)
            raise
        self._stopped = True
        frames = [f for r in self.readers.values() if (f := r.take()) is not None]
        if frames:
            self._process(frames)  # the newest frames already decoded
        for worker in self.workers.values():
            for violation in worker.flush():
                self._emit(violation)
        self._send_unsent()
        if self._unsent:
            log.error("%d violations could not be delivered to the sink", len(self._unsent))
        deadline = time.monotonic() + 2.0
        for reader in self.readers.values():
            reader.join(max(0.0, deadline - time.monotonic()))

    @property
    def sink_waiting_s(self) -> float:
        """How long the sink has been taking the violation in hand (0: none in hand). Cameras are processed
        in the same thread, so a sink that blocks (a locked database) holds them all up meanwhile."""
        since = self._sink_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def unsent(self) -> int:
        """Violations the sink has not taken (it failed, or the stop did not wait for it); 0 after a clean stop."""
        return len(self._unsent) + int(self._stopped and self._thread is not None and self._thread.is_alive())

    def run(
        self, duration: float | None = None, on_tick: Callable[[], None] | None = None, tick_s: float = 1.0
    ) -> None:
        """Start, run for ``duration`` seconds (None: until every source ended, or Ctrl-C), stop.

        ``on_tick`` is called every ``tick_s`` seconds while running (status displays).
        """
        self.start()
        end = None if duration is None else time.monotonic() + duration
        try:
            while end is None or time.monotonic() < end:
                wait = tick_s if end is None else max(0.0, min(tick_s, end - time.monotonic()))
                if self._stopping.wait(wait):
                    break
                if on_tick:
                    on_tick()
                if all(not r.alive for r in self.readers.values()):
                    break
        finally:
            self.stop()

    def status(self) -> list[CameraStatus]:
        """The state of every camera."""
        out = []
        now = time.monotonic()
        for cam_id, reader in self.readers.items():
            worker = self.workers[cam_id]
            last = reader.last_frame_ts
            state = reader.current_state()
            if state == "live":
                error = worker.error  # the reader's last failure is over: reconnects counts it
            else:
                error = reader.error if state == "failed" else (worker.error or reader.error)
            out.append(
                CameraStatus(
                    camera_id=cam_id,
                    name=reader.config.label,
                    state=state,
                    last_frame_time=worker._time(last) if last is not None else None,
                    frames_decoded=reader.frames_decoded,
                    frames_processed=worker.frames_processed,
                    frames_dropped=reader.frames_dropped,
                    reconnects=reader.reconnects,
                    lag_s=None if worker.lag_s is None else round(worker.lag_s, 3),
                    error=error,
                    retry_in_s=round(reader.retry_at - now, 1)
                    if reader.retry_at and reader.state == "failed"
                    else None,
                    open_violations=len(worker.rules.open_violations),
                )
            )
        return out

    # ------------------------------------------------------------------------------------------- thread
    def _wake(self) -> None:
        with self._cond:
            self._pending = True
            self._cond.notify()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping.is_set(), timeout=0.5)
                self._pending = False
            if self._stopping.is_set():
                break
            self._send_unsent()
            frames = [f for r in self.readers.values() if (f := r.take()) is not None]
            if frames:
                self._process(frames)

    def _process(self, frames: list[Frame]) -> None:
        detector = self.detector  # read once: a swap takes effect at the next batch
        try:
            results = detector.detect_batch([f.image for f in frames])
        except Exception:
            self.detector_errors += 1
            log.exception("detector failed on a batch of %d frames", len(frames))
            return
        self.batches += 1
        for frame, dets in zip(frames, results, strict=True):
            worker = self.workers[frame.camera_id]
            try:
                violations = worker.process(frame, dets, detector.version)
            except Exception as exc:
                worker.error = f"{type(exc).__name__}: {exc}"
                log.exception("camera %s: processing failed", frame.camera_id)
                continue
            worker.frames_processed += 1
            worker.error = None  # it works again: an old failure is not the news
            worker.lag_s = time.monotonic() - frame.due
            for violation in violations:
                self._emit(violation)

    def _emit(self, violation: Violation) -> None:
        self._unsent.append(violation)
        self._send_unsent()

    def _send_unsent(self) -> None:
        while self._unsent:
            violation = self._unsent[0]
            self._sink_since = time.monotonic()
            try:
                self.sink.emit(violation)
            except Exception:
                if not self.sink_failing:
                    log.exception("sink failed; %d violations queued for retry", len(self._unsent))
                self.sink_failing = True
                return
            finally:
                self._sink_since = None
            if self.sink_failing:
                log.warning("sink accepts violations again")
            self.sink_failing = False
            self._unsent.popleft()
            self.emitted += 1
            for listener in self.listeners:
                try:
                    listener(violation)
                except Exception:
                    log.exception("violation listener failed")


def _score(value: float) -> str:
    """A violation's score as it is filed and captioned: its best detection score, clipped to 0..1."""
    return f"{min(max(value, 0.0), 1.0):.4f}"
