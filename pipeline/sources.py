"""Camera sources: one reader thread per camera that decodes with PyAV (FFmpeg) and keeps only the newest frame.

A :class:`CameraReader` connects to an RTSP/HTTP stream or opens a video file, decodes it (every
frame, or with ``decode: keyframes`` only the I-frames: the decoder is told to skip the others,
``skip_frame="NONKEY"``), samples it at the camera's ``sample_fps`` and puts the sampled frame in a
one-frame slot. The consumer :meth:`~CameraReader.take` s the newest frame whenever it is ready; a
frame not taken before the next one arrives is dropped, so a slow detector never falls behind live.

A stream that fails, stalls (no data for ``stall_timeout_s``) or never answers is retried with
exponential backoff (``backoff.initial_s`` doubling up to ``backoff.max_s``, reset once frames flow
again); each camera has its own thread, so the others carry on. Video files are played at real time
(times ``speed``) so they behave like a camera, and can ``loop``; a file that cannot be decoded is not
retried (it would fail the same way every time).

States: ``connecting`` -> ``live`` -> (``stalled`` | ``failed``) -> ``connecting`` ...; a file that is
not looped ends in ``ended`` (also when it is cut short), one that gives no frame in ``failed``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np

from pipeline.cameras import CameraConfig, hide_passwords

log = logging.getLogger(__name__)

CameraState = Literal["connecting", "live", "stalled", "failed", "ended", "stopped"]


@dataclass
class Frame:
    """One sampled frame of a camera."""

    camera_id: str
    image: np.ndarray
    ts: float  # epoch seconds the frame shows (files: start of playback + position in the video)
    due: float  # time.monotonic() at which the frame was, or should have been, available live
    seq: int  # sample number on this camera

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]


class CameraReader:
    """Reads one camera in its own thread; see the module docstring."""

    def __init__(self, config: CameraConfig, notify: Callable[[], None] | None = None):
        self.config = config
        self._notify = notify or (lambda: None)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latest: Frame | None = None
        self._thread: threading.Thread | None = None
        self.state: CameraState = "connecting"
        self.error: str | None = None
        self.retry_at: float | None = None  # monotonic time of the next connection attempt
        self.frames_decoded = 0
        self.frames_sampled = 0
        self.frames_dropped = 0
        self.decode_errors = 0
        self.reconnects = 0
        self.last_frame_ts: float | None = None  # epoch seconds of the newest decoded frame
        self.last_data_mono: float | None = None
        self._seq = 0
        self._next_sample = -np.inf
        # file playback clock: wall/monotonic time of position 0, and the offset added by loops
        self._file_t0: tuple[float, float] | None = None
        self._file_offset = 0.0
        self._file_last_pos = 0.0

    # ------------------------------------------------------------------------------------------ control
    def start(self) -> None:
        """Start reading in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.config.id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop (it ends after at most ``stall_timeout_s`` if blocked in a read)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def take(self) -> Frame | None:
        """The newest sampled frame not taken yet, or None."""
        with self._lock:
            frame, self._latest = self._latest, None
        return frame

    def current_state(self) -> CameraState:
        """The state, with ``stalled`` while a live camera has sent nothing for ``stall_timeout_s``, and
        ``stopped`` once asked to stop while still connecting (FFmpeg's open gives up only at its timeout)."""
        state = self.state
        if state == "connecting" and self._stop.is_set():
            return "stopped"
        if (
            state == "live"
            and self.last_data_mono is not None
            and time.monotonic() - self.last_data_mono > self.config.stall_timeout_s
        ):
            return "stalled"
        return state

    # ------------------------------------------------------------------------------------------- thread
    def _run(self) -> None:
        cfg = self.config
        failures = 0
        first = True
        while not self._stop.is_set():
            if not first:
                self.reconnects += 1
            first = False
            self.state, self.retry_at = "connecting", None
            started = time.monotonic()
            got = self.frames_decoded
            try:
                self._read_once()
                if self._stop.is_set():
                    break
                if not cfg.is_stream:
                    if self.frames_decoded == got:  # opened and read to its end without one frame
                        raise ValueError("the file holds no frame that decodes")
                    if cfg.loop:
                        first = True  # a loop is not a reconnect
                        continue
                    self.state = "ended"
                    return
                raise ConnectionError("the stream ended")
            except Exception as exc:  # FFmpeg/network errors of any kind: retry; the other cameras carry on
                if self._stop.is_set():
                    break
                self.error = hide_passwords(f"{type(exc).__name__}: {exc}", cfg.url)
                if not cfg.is_stream and (self.frames_decoded == got or not cfg.loop):
                    # a file reads the same every time: one that gives no frame never will, and one cut
                    # short has been played as far as it goes
                    self.state = "failed" if self.frames_decoded == got else "ended"
                    log.warning("camera %s: %s; not retried (a file)", cfg.id, self.error)
                    return
                if self.frames_decoded > got:
                    failures = 0  # it was live: start the backoff from the beginning
                delay = cfg.backoff.delay(failures)
                failures += 1
                quiet = time.monotonic() - (self.last_data_mono or started)
                self.state = "stalled" if self.frames_decoded > got and quiet >= cfg.stall_timeout_s else "failed"
                if quiet >= cfg.stall_timeout_s:  # FFmpeg's own words for its timeout: "Immediate exit requested"
                    self.error = f"no data for {quiet:.0f} s ({self.error})"
                self.retry_at = time.monotonic() + delay
                log.warning("camera %s: %s; retrying in %.1f s", cfg.id, self.error, delay)
                self._stop.wait(delay)
        self.state = "stopped"

    def _open(self) -> av.container.InputContainer:
        cfg = self.config
        options = {}
        if cfg.url.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = cfg.rtsp_transport
        return av.open(cfg.url, options=options, timeout=(cfg.open_timeout_s, cfg.stall_timeout_s))

    def _read_once(self) -> None:
        """One connection (or one pass over a file): decode until the end, an error or stop."""
        cfg = self.config
        container = self._open()
        try:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            ctx.thread_count = cfg.decode_threads
            if cfg.decode == "keyframes":
                ctx.skip_frame = "NONKEY"
            self.last_data_mono = time.monotonic()
            base = float(stream.time_base) if stream.time_base else 0.0
            live_offset: float | None = None  # min(monotonic - pts) of this connection: a live stream's clock
            if not cfg.is_stream and self._file_t0 is None:
                self._file_t0 = (time.time(), time.monotonic())
            loop_offset = self._file_offset
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return
                self.last_data_mono = time.monotonic()
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    self.decode_errors += 1
                    continue
                for frame in frames:
                    now_mono = time.monotonic()
                    self.frames_decoded += 1
                    pos = frame.pts * base if frame.pts is not None and base else None
                    if cfg.is_stream:
                        ts = time.time()
                        if pos is None:
                            due = now_mono
                        else:
                            offset = now_mono - pos
                            live_offset = offset if live_offset is None else min(live_offset, offset)
                            due = pos + live_offset
                        self.state = "live"
                    else:
                        pos = pos if pos is not None else self._file_last_pos + 1 / float(stream.average_rate or 25)
                        self._file_last_pos = pos
                        t0_wall, t0_mono = self._file_t0
                        media = loop_offset + pos
                        ts = t0_wall + media
                        due = t0_mono + media / cfg.speed
                        if due > now_mono and self._stop.wait(due - now_mono):
                            return  # paced to real time
                        self.state = "live"
                    self.last_frame_ts = ts
                    self._maybe_publish(frame, ts, due)
            if not cfg.is_stream:  # a whole pass: the next loop continues the clock after the last frame
                step = 1 / float(stream.average_rate or 25)
                self._file_offset = loop_offset + self._file_last_pos + step
                self._file_last_pos = 0.0
        finally:
            container.close()

    def _maybe_publish(self, frame: av.VideoFrame, ts: float, due: float) -> None:
        period = 1.0 / self.config.sample_fps
        if ts < self._next_sample - 0.1 * period:
            return
        first = self._next_sample == -np.inf
        self._next_sample = ts + period if first else max(self._next_sample + period, ts + 0.5 * period)
        image = frame.to_ndarray(format="bgr24")
        self._seq += 1
        sampled = Frame(self.config.id, image, ts, due, self._seq)
        with self._lock:
            if self._latest is not None:
                self.frames_dropped += 1
            self._latest = sampled
        self.frames_sampled += 1
        self._notify()
