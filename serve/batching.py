"""The detector behind one holder (swapped atomically), and micro-batching of concurrent requests.

:class:`MicroBatcher` collects the images of concurrent ``/v1/detect`` requests for at most
``max_wait_ms`` (or until ``max_batch`` are waiting) and runs them in ONE ``detect_batch`` call on a
worker thread; the next batch forms while the current one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.detect import Detector
from pipeline.detections import Detections


class DetectorHolder:
    """Holds the service's detector; :meth:`swap` replaces it atomically (model hot-swap)."""

    def __init__(self, detector: Detector | None):
        self._detector = detector
        self._lock = threading.Lock()

    @property
    def detector(self) -> Detector:
        """The detector in force; a request takes it once and keeps it for its whole run."""
        detector = self._detector
        if detector is None:
            raise RuntimeError("no model is loaded in this service")
        return detector

    @property
    def loaded(self) -> bool:
        """Whether a detector is loaded."""
        return self._detector is not None

    def swap(self, detector: Detector) -> Detector | None:
        """Put ``detector`` in force; returns the one it replaces. Runs in flight finish on the old one."""
        with self._lock:
            old, self._detector = self._detector, detector
        return old


BatchObserver = Callable[[int, float], None]


class MicroBatcher:
    """Collects concurrent detection requests into batched detector calls (bounded wait)."""

    def __init__(
        self,
        holder: DetectorHolder,
        max_batch: int = 8,
        max_wait_ms: float = 8.0,
        observe: BatchObserver | None = None,
        workers: int = 2,
    ):
        self.holder = holder
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.observe = observe
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self.workers = workers
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detect-batch")

    async def start(self) -> None:
        """Start collecting (inside the running event loop)."""
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.workers)
        self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop; requests still waiting get an error."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("service is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def detect(self, image: np.ndarray) -> tuple[Detections, str]:
        """Detections of one image and the model version that produced them."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((image, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None and self._slots is not None
        while True:
            await self._slots.acquire()  # at most `workers` batches run; the next one forms meanwhile
            try:
                batch = [await self._queue.get()]
            except asyncio.CancelledError:
                self._slots.release()
                raise
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        """One detector call for a batch; each request gets its own result (or the error)."""
        try:
            batch = [(img, fut) for img, fut in batch if not fut.done()]  # cancelled requests drop out
            if not batch:
                return
            detector = self.holder.detector  # one model for the whole batch
            started = time.perf_counter()
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._executor, detector.detect_batch, [img for img, _ in batch]
                )
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            if self.observe:
                self.observe(len(batch), time.perf_counter() - started)
            for (_, fut), dets in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result((dets, detector.version))
        finally:
            assert self._slots is not None
            self._slots.release()
