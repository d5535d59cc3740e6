"""Prometheus metrics of one service instance: requests, latency, detector batches, cases, cameras."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
disable_created_metrics()  # the *_created series only add noise to every scrape


def camera_states(status: Any) -> list[tuple[str, str]]:
    """(camera, state) pairs from a camera runner's ``status()``: a mapping camera -> state (or -> a dict
    with ``state``), a list of dicts with ``camera``/``id``/``name`` and ``state``, or either under ``cameras``."""
    if isinstance(status, Mapping) and "cameras" in status:
        status = status["cameras"]
    if isinstance(status, Mapping):
        items = list(status.items())
    elif isinstance(status, (list, tuple)):
        items = [(s.get("camera") or s.get("id") or s.get("name") or i, s) for i, s in enumerate(status)]
    else:
        return []
    out = []
    for camera, value in items:
        state = value.get("state") if isinstance(value, Mapping) else value
        out.append((str(camera), str(getattr(state, "value", state))))
    return out


class _StateCollector(Collector):
    """Gauges read at scrape time: cases by status, outbox by status, camera states, the model."""

    def __init__(
        self,
        cases: Callable[[], Mapping[str, int]],
        outbox: Callable[[], Mapping[str, int]],
        cameras: Callable[[], Any] | None,
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
            g = GaugeMetricFamily(
                "streetwatch_camera_state", "1 for each camera's current state", labels=["camera", "state"]
            )
            try:
                for camera, state in camera_states(self.cameras()):
                    g.add_metric([camera, state], 1)
            except Exception:
                log.exception("metrics: camera runner status failed")
            yield g
        version = self.model()
        g = GaugeMetricFamily("streetwatch_model_info", "The model in force", labels=["version"])
        if version:
            g.add_metric([version], 1)
        yield g


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
        cameras: Callable[[], Any] | None,
        model: Callable[[], str | None],
    ) -> None:
        """Register the scrape-time gauges."""
        self.registry.register(_StateCollector(cases, outbox, cameras, model))

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
