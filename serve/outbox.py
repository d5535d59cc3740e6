"""Delivering outbox events to the webhook: at least once, with the idempotency key, retried with
exponential backoff, surviving restarts (the events live in the database until delivered)."""

from __future__ import annotations

import json
import logging
import threading

import httpx

from serve.config import WebhookConfig
from serve.store import CaseStore

log = logging.getLogger(__name__)


class WebhookDispatcher:
    """A background thread that posts due outbox events to ``config.url``."""

    def __init__(self, store: CaseStore, config: WebhookConfig):
        if not config.url:
            raise ValueError("webhook url is not configured")
        self.store = store
        self.config = config
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.failed_attempts = 0

    def start(self) -> None:
        """Start delivering."""
        self._thread = threading.Thread(target=self._run, name="webhook-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the delivery in progress; undelivered events stay in the outbox."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look for due events now (after a change that enqueued one)."""
        self._wake.set()

    def _run(self) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "streetwatch-outbox"}
        if self.config.secret:
            headers["Authorization"] = f"Bearer {self.config.secret}"
        with httpx.Client(timeout=self.config.timeout_s, headers=headers) as client:
            while not self._stop.is_set():
                try:
                    events = self.store.claim_due_events(lease_s=self.config.timeout_s * 3 + 5)
                except Exception:
                    log.exception("outbox: cannot read due events")
                    events = []
                for event in events:
                    if self._stop.is_set():
                        break
                    self._deliver(client, event)
                if not events:
                    self._wake.wait(self.config.poll_s)
                    self._wake.clear()

    def _deliver(self, client: httpx.Client, event) -> None:
        body = json.dumps(event.payload, ensure_ascii=False).encode()
        try:
            response = client.post(self.config.url, content=body, headers={"Idempotency-Key": event.idempotency_key})
            ok = 200 <= response.status_code < 300
            error = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        try:
            if ok:
                self.store.event_delivered(event.id)
                self.delivered += 1
            else:
                self.store.event_failed(event.id, error or "unknown error")
                self.failed_attempts += 1
                log.warning("webhook %s not delivered: %s", event.idempotency_key, error)
        except Exception:  # the lease expires and the event is tried again: at least once
            log.exception("outbox: cannot record the delivery of %s", event.idempotency_key)
