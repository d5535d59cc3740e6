"""Following the registry's default model: a newly promoted (or rolled back) default is picked up
without a restart and without dropping work.

:class:`ModelFollower` polls ``registry.json`` (a ``stat`` every ``poll_s`` seconds; the file is only
read when it changed). When the default names another model version than the one running, it builds
the new :class:`~pipeline.detect.Detector` on its own thread, runs one warm-up inference (a model that
cannot load or run is refused there, and the old one stays), then hands it to the swap callbacks —
``DetectorHolder.swap`` in the service, ``proc.detector = new`` for a stream processor. Work in flight
holds its own reference to the old detector and finishes on it; the old session is freed when the last
such reference goes. Every result carries the version of the detector that produced it.

A refused default is tried again, without a change of ``registry.json``, when its model folder changes (a
file fixed in place) and otherwise every ``retry_s`` seconds (a failure that was not the folder's), so a
broken default is neither retried on every poll nor forgotten until the next promotion.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.registry import REGISTRY_FILE, ModelError, models_root, read_registry, resolve
from pipeline.detect import Detector, DetectorConfig

log = logging.getLogger(__name__)

SwapCallback = Callable[[Detector], Any]


class ModelFollower:
    """Keeps detectors on the registry's default model; see the module docstring."""

    def __init__(
        self,
        config: DetectorConfig,
        current: Detector | None,
        on_swap: Sequence[SwapCallback] = (),
        poll_s: float = 2.0,
        retry_s: float = 60.0,
    ):
        self.config = config  # the template of every detector built (model: the default's name)
        self.current = current
        self.on_swap = list(on_swap)
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_check: float | None = None
        self.last_swap: float | None = None
        self._seen: tuple[int, int, int] | None = None
        self._refused: tuple[str | None, Any, float] | None = None  # (name, folder state, when) of a failed load
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one check at a time (the thread, or a caller's check_now)

    @staticmethod
    def wanted(config: DetectorConfig) -> bool:
        """Whether a detector config follows the default (a pinned model name or folder does not)."""
        return config.model == "default"

    # ------------------------------------------------------------------------------------- control
    def start(self) -> ModelFollower:
        """Start polling on a daemon thread; returns at once."""
        if self._thread is None:  # the first poll compares the registry with the running detector
            self._thread = threading.Thread(target=self._loop, name="model-follower", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (a model being loaded finishes loading first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def status(self) -> dict[str, Any]:
        """For /readyz: what runs, what is followed, the last check and error."""
        return {
            "following": "default",
            "version": self.current.version if self.current is not None else None,
            "poll_s": self.poll_s,
            "reloads": self.reloads,
            "failures": self.failures,
            "last_check_s_ago": None if self.last_check is None else round(time.monotonic() - self.last_check, 1),
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------------------------- polling
    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(models_root() / REGISTRY_FILE)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    @staticmethod
    def _folder_state(name: str | None) -> Any:
        """What a change of a model folder changes: each entry's name, size, times and inode (None: no folder)."""
        if not name:
            return None
        state = []
        try:
            for entry in sorted(os.scandir(Path(models_root(), name)), key=lambda e: e.name):
                st = entry.stat()
                state.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        except OSError:
            return None
        return state

    def _retry_due(self) -> bool:
        """After a refused load: whether to try again (the model folder changed, or ``retry_s`` passed)."""
        if self._refused is None:
            return False
        name, state, at = self._refused
        return time.monotonic() - at >= self.retry_s or self._folder_state(name) != state

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_now()
            except Exception:  # never let the follower thread die; the next change is tried again
                log.exception("model follower: check failed")

    def check_now(self, force: bool = False) -> bool:
        """One poll: when ``registry.json`` changed (or ``force``), load the default if it is another model
        version than the running one and swap it in. Returns whether a swap happened."""
        with self._lock:
            self.last_check = time.monotonic()
            signature = self._signature()
            if signature == self._seen and not force and not self._retry_due():
                return False
            self._seen = signature
            self._refused = None
            name, state = None, None
            try:
                name = read_registry().get("default")
            except (ModelError, OSError, ValueError) as exc:
                self._failed(f"registry unreadable: {exc}", None, None)
                return False
            if not name:
                return False
            try:
                state = self._folder_state(name)  # before loading: a fix made meanwhile is a change
                card = resolve(name).card
            except (ModelError, OSError, ValueError) as exc:
                self._failed(f"cannot read the default model {name}: {exc}", name, state)
                return False
            if self.current is not None and (card.name, card.version) == (
                self.current.ref.card.name,
                self.current.ref.card.version,
            ):
                self.last_error = None  # the registry names what runs (e.g. rolled back after a refusal)
                return False
            try:
                detector = Detector(self.config.model_copy(update={"model": name}))
                probe = np.full((detector.imgsz, detector.imgsz, 3), 114, np.uint8)
                detector.detect_batch([probe])  # warm-up: the first request must not pay for it, nor fail
            except Exception as exc:  # ModelError, onnxruntime errors: keep serving with the old model
                self._failed(f"cannot load {name}@{card.version}: {exc}", name, state)
                return False
            old = self.current
            for swap in self.on_swap:
                swap(detector)
            self.current = detector
            self.reloads += 1
            self.last_swap = time.monotonic()
            self.last_error = None
            log.info(
                "model follower: now running %s (was %s)", detector.version, old.version if old is not None else None
            )
            return True

    def _failed(self, message: str, name: str | None, state: Any) -> None:
        """Record a refusal; the default ``name`` is tried again when its folder leaves ``state`` or after
        ``retry_s``."""
        self._refused = (name, state, time.monotonic())
        self.failures += 1
        self.last_error = message
        log.error("model follower: %s; still running %s", message, self.current.version if self.current else None)
