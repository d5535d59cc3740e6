"""Delivering outbox events to the webhook: at least once, with the idempotency key, retried with
exponential backoff, surviving restarts (the events live in the database until delivered)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from typing import Any

import httpx

from serve.config import WebhookConfig
from serve.db import OutboxEvent
from serve.store import CaseStore
from serve.text import printable

log = logging.getLogger(__name__)


def signature_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """``X-Streetwatch-Timestamp`` (unix seconds) and ``X-Streetwatch-Signature: sha256=HEX``, the HMAC-SHA256 of
    ``TIMESTAMP.BODY`` with ``secret``: the receiver checks who sent the exact bytes it got, and when (a replay
    of an old delivery carries an old time, which cannot be changed without the secret)."""
    timestamp = str(int(time.time() if now is None else now))
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Streetwatch-Timestamp": timestamp, "X-Streetwatch-Signature": f"sha256={digest}"}


class WebhookDispatcher:
    """A background thread that posts due outbox events to ``config.url``, one leased event at a time.

    Nothing stops it but :meth:`stop`: an attempt that fails in any way (refused connection, a URL the HTTP
    client rejects, a database hiccup) is recorded or left to its lease, and the loop goes on."""

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
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._sending_since: float | None = None

    @property
    def lease_s(self) -> float:
        """How long one event is held: longer than an attempt can take (connect, send, read)."""
        return self.config.timeout_s * 4 + 5

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

    @property
    def running(self) -> bool:
        """Whether the delivery thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        """For /readyz: whether it runs, what it did, the last error, how long the attempt in progress has run."""
        return {
            "running": self.running,
            "delivered": self.delivered,
            "failed_attempts": self.failed_attempts,
            "last_error": self.last_error,
            "last_error_s_ago": None if self.last_error_at is None else round(time.monotonic() - self.last_error_at, 1),
            "sending_s": None if self._sending_since is None else round(time.monotonic() - self._sending_since, 1),
        }

    def _excerpt(self, response: httpx.Response, started: float, limit: int = 200) -> str:
        """The start of a refusal's body, for ``last_error``: read until ``limit`` bytes or ``timeout_s`` after
        the attempt began, whichever comes first (a receiver dripping its answer does not hold delivery)."""
        got = b""
        try:
            for chunk in response.iter_bytes():
                got += chunk
                if len(got) >= limit or time.monotonic() - started > self.config.timeout_s:
                    break
        except httpx.HTTPError:
            pass  # what came is enough to say why
        return got[:limit].decode("utf-8", "replace")

    def _note(self, error: str) -> None:
        self.last_error, self.last_error_at = printable(error), time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve()
            except Exception as exc:  # a fault of its own must not end delivery for good: note it, go on
                log.exception("outbox: the dispatcher failed; starting it again")
                self._note(f"dispatcher failed: {type(exc).__name__}: {exc}")
                self._stop.wait(max(self.config.poll_s, 5.0))

    def _serve(self) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "streetwatch-outbox"}
        if self.config.secret:
            headers["Authorization"] = f"Bearer {self.config.secret}"
        with httpx.Client(timeout=self.config.timeout_s, headers=headers) as client:
            while not self._stop.is_set():
                try:
                    event = self.store.claim_due_event(lease_s=self.lease_s)
                except Exception as exc:  # the database is away for a moment: look again after the poll
                    log.exception("outbox: cannot read due events")
                    self._note(f"cannot read due events: {type(exc).__name__}: {exc}")
                    event = None
                if event is not None:
                    self._deliver(client, event)
                    continue
                self._wake.wait(self.config.poll_s)
                self._wake.clear()

    def _deliver(self, client: httpx.Client, event: OutboxEvent) -> None:
        body = json.dumps(event.payload, ensure_ascii=False).encode()
        headers = {"Idempotency-Key": event.idempotency_key}
        if self.config.signing_secret:  # signed at each attempt: a retry carries the time it was sent
            headers |= signature_headers(self.config.signing_secret, body)
        self._sending_since = started = time.monotonic()
        try:
            # streamed: the answer's status is all a delivery needs, a body is not waited for
            with client.stream("POST", self.config.url, content=body, headers=headers) as response:
                ok = 200 <= response.status_code < 300
                error = None if ok else f"HTTP {response.status_code}: {self._excerpt(response, started)}"
        except Exception as exc:  # network errors, and anything the client refuses: a failed attempt
            ok, error = False, f"{type(exc).__name__}: {exc}"
        finally:
            self._sending_since = None
        error = None if error is None else printable(error)  # the receiver's words: one line in our log, capped
        try:
            if ok:
                self.store.event_delivered(event.id)
                self.delivered += 1
                return
            self.failed_attempts += 1
            self._note(f"{event.idempotency_key}: {error}")
            log.warning("webhook %s not delivered: %s", event.idempotency_key, error)
            if not self.store.event_failed(event.id, event.lease_token or "", error or "unknown error"):
                log.warning("outbox: the lease on %s ran out; its holder records the attempt", event.idempotency_key)
        except Exception:  # the lease expires and the event is tried again: at least once
            log.exception("outbox: cannot record the delivery of %s", event.idempotency_key)
