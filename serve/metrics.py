"""Prometheus metrics of one service instance: requests, latency, detector batches, cases, cameras."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from pipeline.streams import CameraStatus

log = logging.getLogger(__name__)
disable_created_metrics()  # the *_created series only add noise to every scrape


def camera_states(status: Iterable[CameraStatus]) -> list[tuple[str, str]]:
    """(camera id, state) pairs of a camera runner's ``status()``."""
    return [(s.camera_id, s.state) for s in status]


class _StateCollector(Collector):
    """Gauges read at scrape time: cases by status, outbox by status, camera states, the model."""

    def __init__(
        self,
        cases: Callable[[], Mapping[str, int]],
        outbox: Callable[[], Mapping[str, int]],
        cameras: Callable[[], Iterable[CameraStatus]] | None,
        model: Callable[[], str | None],
    ):
        self.cases, self.outbox, self.cameras, self.model = cases, outbox, cameras, model

    def collect(self) -> Iterable[Metric]:
        try:
            g = GaugeMetricFamily("streetwatch_cases", "Cases in the queue by status", labels=["status"])
            for status, n in self.cases().items():
                g.add_metric([status], n)
            yield g
            g = GaugeMetricFamily("streetwatch_outbox_events", "Webhook outbox events by status", labels=["status"])
            for status, n in self.outbox().items():
                g.add_metric([status], n)
            yield g
        except Exception:  # a scrape must not fail because the database is briefly unavailable
            log.exception("metrics: cannot read the store")
        if self.cameras is not None:
            yield from self._cameras()
        version = self.model()
        g = GaugeMetricFamily("streetwatch_model_info", "The model in force", labels=["version"])
        if version:
            g.add_metric([version], 1)
        yield g

    def _cameras(self) -> Iterable[Metric]:
        """Per camera: its state, frames processed, reconnects, lag, newest frame time, open violations."""
        try:
            statuses = list(self.cameras()) if self.cameras is not None else []
        except Exception:
            log.exception("metrics: camera runner status failed")
            statuses = []
        state = GaugeMetricFamily(
            "streetwatch_camera_state", "1 for each camera's current state", labels=["camera", "state"]
        )
        frames = CounterMetricFamily(
            "streetwatch_camera_frames_processed", "Sampled frames the detector and rules processed", labels=["camera"]
        )
        dropped = CounterMetricFamily(
            "streetwatch_camera_frames_dropped",
            "Sampled frames replaced by a newer one before processing",
            labels=["camera"],
        )
        reconnects = CounterMetricFamily(
            "streetwatch_camera_reconnects", "Connection attempts after the first", labels=["camera"]
        )
        lag = GaugeMetricFamily(
            "streetwatch_camera_lag_seconds",
            "Seconds from a frame being live to the end of its processing (last frame)",
            labels=["camera"],
        )
        last = GaugeMetricFamily(
            "streetwatch_camera_last_frame_timestamp_seconds",
            "Unix time of the newest decoded frame",
            labels=["camera"],
        )
        open_ = GaugeMetricFamily(
            "streetwatch_camera_open_violations", "Violations open on the camera now", labels=["camera"]
        )
        for s in statuses:
            state.add_metric([s.camera_id, s.state], 1)
            frames.add_metric([s.camera_id], s.frames_processed)
            dropped.add_metric([s.camera_id], s.frames_dropped)
            reconnects.add_metric([s.camera_id], s.reconnects)
            open_.add_metric([s.camera_id], s.open_violations)
            if s.lag_s is not None:
                lag.add_metric([s.camera_id], s.lag_s)
            if s.last_frame_time is not None:
                last.add_metric([s.camera_id], s.last_frame_time.timestamp())
        yield from (state, frames, dropped, reconnects, lag, last, open_)


class Metrics:
    """The service's metrics registry (one per app, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "streetwatch_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "streetwatch_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch_size = Histogram(
            "streetwatch_detector_batch_size",
            "Images per detector call",
            registry=self.registry,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
        )
        self.batch_seconds = Histogram(
            "streetwatch_detector_batch_seconds",
            "Duration of one detector call",
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2),
        )
        self.ingested = Counter(
            "streetwatch_ingested_violations", "Violations ingested by outcome", ["outcome"], registry=self.registry
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one detector call."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def watch_state(
        self,
        cases: Callable[[], Mapping[str, int]],
        outbox: Callable[[], Mapping[str, int]],
        cameras: Callable[[], Iterable[CameraStatus]] | None,
        model: Callable[[], str | None],
    ) -> None:
        """Register the scrape-time gauges."""
        self.registry.register(_StateCollector(cases, outbox, cameras, model))

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
