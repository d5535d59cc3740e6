"""The webhook outbox against a real local HTTP receiver: retries with backoff, the idempotency key,
at-least-once delivery that survives a restart of the service."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session
from waiting import wait_for

from serve.config import WebhookConfig
from serve.db import OutboxEvent, utcnow
from serve.outbox import WebhookDispatcher
from serve.store import Actor, CaseStore

ALICE = Actor("alice", "reviewer")


class Receiver:
    """An external case system: records every POST; answers 500 to the first ``fail_first`` ones."""

    def __init__(self, port: int = 0, fail_first: int = 0):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = len(receiver.requests) >= receiver.fail_first
                receiver.requests.append(
                    {"headers": dict(self.headers), "body": json.loads(body), "raw": body, "ok": ok}
                )
                self.send_response(200 if ok else 500)
                self.end_headers()
                self.wfile.write(b"ok" if ok else b"busy")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/cases"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    @property
    def delivered(self) -> list[dict]:
        return [r for r in self.requests if r["ok"]]


def webhook(url: str, **kw) -> WebhookConfig:
    return WebhookConfig(**{"url": url, "backoff_s": 0.05, "max_backoff_s": 0.2, "poll_s": 0.05, "timeout_s": 2, **kw})


def test_confirmed_case_is_pushed_with_retries_and_the_idempotency_key(db_url, tmp_path, violation):
    receiver = Receiver(fail_first=2)
    store = CaseStore(db_url, tmp_path / "d", webhook=webhook(receiver.url, secret="s3cret"))
    dispatcher = WebhookDispatcher(store, store.webhook)
    dispatcher.start()
    try:
        cid = store.ingest(violation(key="cam1:42")).case_id
        store.review(cid, "confirm", ALICE)
        wait_for(lambda: store.outbox_counts().get("delivered") == 1, 15, "the delivery")
    finally:
        dispatcher.stop()
        receiver.close()
        store.dispose()
    assert [r["ok"] for r in receiver.requests] == [False, False, True]
    keys = {r["headers"]["Idempotency-Key"] for r in receiver.requests}
    assert keys == {f"streetwatch-case-{cid}-confirmed-1"}  # every retry carries the same key
    got = receiver.delivered[0]
    assert got["headers"]["Authorization"] == "Bearer s3cret"
    assert got["body"]["event"] == "case.confirmed" and got["body"]["violation_keys"] == ["cam1:42"]
    assert got["body"]["case"]["id"] == cid and got["body"]["case"]["status"] == "confirmed"
    store2 = CaseStore(db_url, tmp_path / "d")
    try:
        pushed = [h for h in store2.history(cid) if h.action == "pushed"]
        assert len(pushed) == 1 and pushed[0].details["attempts"] == 3
    finally:
        store2.dispose()


def verified(secret: str, headers: dict, body: bytes, max_age_s: float = 300) -> bool:
    """What a receiver does (the README's example): the HMAC of the exact bytes received, and a fresh time."""
    stamp = headers["X-Streetwatch-Timestamp"]
    expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(stamp)) < max_age_s
    return hmac.compare_digest(headers["X-Streetwatch-Signature"], f"sha256={expected}") and fresh


def test_with_a_signing_secret_every_attempt_is_signed_over_the_bytes_sent(tmp_path, violation):
    """A receiver can tell the events are ours (an HMAC-SHA256 with the shared secret) and refuse a replay (the
    signed time): every attempt, a retry too, is signed afresh over exactly the bytes it sends."""
    secret = "wh-7f3c9a1e5b2d4c6f8a0b"
    receiver = Receiver(fail_first=1)
    config = webhook(receiver.url, signing_secret=secret)
    store = CaseStore(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", webhook=config)
    dispatcher = WebhookDispatcher(store, config)
    dispatcher.start()
    try:
        cid = store.ingest(violation(source_name="东门 East gate")).case_id  # non-ASCII: the bytes count, not text
        store.review(cid, "confirm", ALICE)
        wait_for(lambda: store.outbox_counts().get("delivered") == 1, 15, "the delivery")
    finally:
        dispatcher.stop()
        receiver.close()
        store.dispose()
    assert len(receiver.requests) == 2 and "东门".encode() in receiver.requests[0]["raw"]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    example: dict = {}
    exec(re.search(r"```python\n(import hashlib, hmac, time\n.*?)```", readme, re.S).group(1), example)
    for got in receiver.requests:
        assert verified(secret, got["headers"], got["raw"]), got["headers"]
        assert example["verified"](secret.encode(), got["headers"], got["raw"])  # the README's receiver agrees
        assert got["headers"]["X-Streetwatch-Signature"].startswith("sha256=")
        assert not verified("another secret of the same length", got["headers"], got["raw"])
        assert not verified(secret, got["headers"], got["raw"].replace(b"confirmed", b"dismissed"))  # tampered
        old = {**got["headers"], "X-Streetwatch-Timestamp": str(int(got["headers"]["X-Streetwatch-Timestamp"]) - 1)}
        assert not verified(secret, old, got["raw"])  # the time is signed: an old capture cannot be made fresh
    plain = Receiver()
    store = CaseStore(f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "d", webhook=webhook(plain.url))
    dispatcher = WebhookDispatcher(store, store.webhook)
    dispatcher.start()
    try:
        store.review(store.ingest(violation()).case_id, "confirm", ALICE)
        wait_for(lambda: store.outbox_counts().get("delivered") == 1, 15, "the delivery")
    finally:
        dispatcher.stop()
        plain.close()
        store.dispose()
    assert not {"X-Streetwatch-Signature", "X-Streetwatch-Timestamp"} & set(plain.requests[0]["headers"])  # not asked


@pytest.mark.parametrize(
    ("signing_secret", "reason"),
    [("", "at least 16"), ("short", "at least 16"), (" 0123456789abcdef", "spaces"), ("0123456789abcdef\n", "spaces")],
)
def test_a_signing_secret_receivers_could_not_match_or_guess_is_refused_at_start(signing_secret, reason):
    with pytest.raises(ValueError, match=reason):
        WebhookConfig(url="http://receiver/hook", signing_secret=signing_secret)


def test_undelivered_events_survive_a_restart(db_url, tmp_path, violation):
    down = Receiver()
    port, url = down.port, down.url
    down.close()  # the external system is down while the case is confirmed
    store = CaseStore(db_url, tmp_path / "d", webhook=webhook(url))
    dispatcher = WebhookDispatcher(store, store.webhook)
    dispatcher.start()
    cid = store.ingest(violation()).case_id
    store.review(cid, "confirm", ALICE)
    wait_for(lambda: dispatcher.failed_attempts >= 1, 15, "a failed attempt")
    dispatcher.stop()
    store.dispose()  # the service stops with the event undelivered
    receiver = Receiver(port=port)
    store = CaseStore(db_url, tmp_path / "d", webhook=webhook(url))
    dispatcher = WebhookDispatcher(store, store.webhook)
    dispatcher.start()  # ... and starts again
    try:
        wait_for(lambda: store.outbox_counts().get("delivered") == 1, 15, "the delivery")
    finally:
        dispatcher.stop()
        receiver.close()
        store.dispose()
    assert len(receiver.delivered) == 1
    assert receiver.delivered[0]["headers"]["Idempotency-Key"] == f"streetwatch-case-{cid}-confirmed-1"


def test_gives_up_after_max_attempts_and_keeps_the_event(tmp_path, violation):
    receiver = Receiver(fail_first=10**6)
    store = CaseStore(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", webhook=webhook(receiver.url, max_attempts=3))
    dispatcher = WebhookDispatcher(store, store.webhook)
    dispatcher.start()
    try:
        store.review(store.ingest(violation()).case_id, "confirm", ALICE)
        wait_for(lambda: store.outbox_counts().get("failed") == 1, 15, "the delivery to fail")
    finally:
        dispatcher.stop()
        receiver.close()
        store.dispose()
    assert len(receiver.requests) == 3


@pytest.mark.parametrize(
    ("url", "secret", "reason"),
    [
        ("ftp://example.org/x", None, "must start with http"),
        ("http://127.0.0.1:99999/hook", None, "port 99999"),
        ("http://receiver:80a/hook", None, "not a valid URL"),
        ("http://xn--/hook", None, "not a valid URL"),
        ("http:///hook", None, "names no host"),
        ("http://receiver/case hook", None, "space"),
        ("http://receiver/hook", "sécret", "printable ASCII"),
        ("http://receiver/hook", "s3cret\n", "printable ASCII"),
    ],
)
def test_a_webhook_url_or_secret_that_cannot_be_sent_is_refused_at_start(url, secret, reason):
    with pytest.raises(ValueError, match=reason):
        WebhookConfig(url=url, secret=secret)


def test_a_url_the_http_client_rejects_is_a_failed_attempt_and_delivery_goes_on(tmp_path, violation):
    receiver = Receiver()
    config = webhook(receiver.url)
    config.url = "http://xn--/hook"  # past validation (an older config): the HTTP client itself refuses it
    store = CaseStore(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", webhook=config)
    dispatcher = WebhookDispatcher(store, config)
    dispatcher.start()
    try:
        cid = store.ingest(violation()).case_id
        store.review(cid, "confirm", ALICE)
        wait_for(lambda: dispatcher.failed_attempts >= 1, 15, "a failed attempt")
        assert dispatcher.running and "IDNA" in dispatcher.status()["last_error"]
        assert store.outbox_events()[0].last_error.startswith("IDNAError")
        config.url = receiver.url  # fixed: the same thread delivers
        wait_for(lambda: store.outbox_counts()["delivered"] == 1, 15, "the delivery")
        event = store.outbox_events()[0]
        assert event.attempts >= 2 and event.last_error is None  # delivered: no error left standing
    finally:
        dispatcher.stop()
        receiver.close()
        store.dispose()
    assert len(receiver.delivered) == 1


def test_readiness_says_when_the_dispatcher_is_not_running(tmp_path):
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.config import ServiceConfig

    app = create_app(
        ServiceConfig(data_dir=tmp_path / "svc", load_detector=False, webhook=webhook("http://127.0.0.1:9/x"))
    )
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["webhook"]["running"] is True
        app.state.dispatcher.stop()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["webhook"]["running"] is False


def test_events_of_one_case_arrive_in_the_order_they_happened(db_url, tmp_path, violation):
    receiver = Receiver(fail_first=1)  # the first attempt (the confirmation) fails
    config = webhook(receiver.url, events=["confirmed", "dispatched"], backoff_s=0.5, max_backoff_s=1)
    store = CaseStore(db_url, tmp_path / "d", webhook=config)
    cid = store.ingest(violation()).case_id
    store.review(cid, "confirm", ALICE)
    store.dispatch(cid, "环卫所", datetime.now(timezone.utc) + timedelta(days=1), ALICE)
    dispatcher = WebhookDispatcher(store, config)
    dispatcher.start()
    try:
        wait_for(lambda: store.outbox_counts()["delivered"] == 2, 15, "both deliveries")
    finally:
        dispatcher.stop()
        receiver.close()
        store.dispose()
    assert [r["body"]["event"] for r in receiver.requests] == ["case.confirmed", "case.confirmed", "case.dispatched"]


def test_an_attempt_is_recorded_only_by_the_holder_of_the_lease(db_url, tmp_path, violation):
    store = CaseStore(db_url, tmp_path / "d", webhook=webhook("http://127.0.0.1:9/x", backoff_s=60))
    try:
        cids = [store.ingest(violation(source_id=f"cam{i}")).case_id for i in range(3)]
        for cid in cids:
            store.review(cid, "confirm", ALICE)
        first = store.claim_due_event(lease_s=60)
        held = store.claim_due_event(lease_s=60)  # a process killed while it held this one
        assert first.case_id == cids[0] and held.case_id == cids[1]
        with Session(store.write_engine) as s, s.begin():  # the first lease runs out (a slow receiver) ...
            s.execute(update(OutboxEvent).where(OutboxEvent.id == first.id).values(locked_until=utcnow()))
        again = store.claim_due_event(lease_s=60)  # ... another dispatcher takes it; the held one is skipped
        assert again.id == first.id and again.lease_token != first.lease_token
        assert store.claim_due_event(lease_s=60).case_id == cids[2]  # not stalled behind the held lease
        assert store.claim_due_event(lease_s=60) is None
        assert store.event_failed(first.id, first.lease_token, "timeout") is False  # the late one: not recorded
        assert store.event_failed(again.id, again.lease_token, "HTTP 500") is True
        event = next(e for e in store.outbox_events() if e.id == first.id)
        assert (event.attempts, event.last_error) == (1, "HTTP 500")
        assert store.event_delivered(held.id) is True
        assert store.event_delivered(held.id) is False  # delivered twice (a lease ran out): recorded once
        assert [h.action for h in store.history(cids[1])].count("pushed") == 1
    finally:
        store.dispose()


def test_reopening_a_dismissed_case_is_not_pushed(tmp_path, violation):
    config = webhook("http://127.0.0.1:9/x", events=["confirmed", "resolved", "reopened"])
    store = CaseStore(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", webhook=config)
    try:
        dismissed = store.ingest(violation()).case_id
        store.review(dismissed, "dismiss", ALICE)
        store.reopen(dismissed, ALICE, "looked again: it is a violation")
        resolved = store.ingest(violation(source_id="cam2")).case_id
        store.review(resolved, "confirm", ALICE)
        store.dispatch(resolved, "环卫所", datetime.now(timezone.utc) + timedelta(days=1), ALICE)
        store.resolve(resolved, ALICE, "cleared")
        store.reopen(resolved, ALICE, "it is back")
        pushed = [(e.case_id, e.event) for e in reversed(store.outbox_events())]
    finally:
        store.dispose()
    # the receiver never heard of the dismissed case; the resolved one it knows is reopened
    assert pushed == [(resolved, "confirmed"), (resolved, "resolved"), (resolved, "reopened")]


def test_admin_lists_failed_events_and_retries_them_once_the_receiver_is_fixed(tmp_path, violation):
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.config import ServiceConfig

    receiver = Receiver(fail_first=10**6)
    config = ServiceConfig(data_dir=tmp_path / "svc", webhook=webhook(receiver.url, max_attempts=2))
    app = create_app(config)
    store = app.state.store
    admin = {"Authorization": f"Bearer {store.create_key('admin', 'ops')[0]}"}
    reviewer = {"Authorization": f"Bearer {store.create_key('reviewer', 'desk')[0]}"}
    try:
        with TestClient(app) as client:
            cid = store.ingest(violation(key="cam1:7")).case_id
            store.review(cid, "confirm", ALICE)
            app.state.dispatcher.wake()
            wait_for(lambda: store.outbox_counts().get("failed") == 1, 15, "the delivery to fail")
            assert client.get("/v1/outbox", headers=reviewer).status_code == 403
            failed = client.get("/v1/outbox", params={"status": "failed"}, headers=admin).json()
            assert [(e["case_id"], e["attempts"]) for e in failed] == [(cid, 2)]
            assert failed[0]["last_error"].startswith("HTTP 500")
            assert client.post("/v1/outbox/retry", json={"ids": [failed[0]["id"] + 1]}, headers=admin).json() == {
                "retried": []
            }  # not a failed event: nothing happens
            receiver.fail_first = 0  # the external system is fixed
            r = client.post("/v1/outbox/retry", json={}, headers=admin)
            assert r.status_code == 200 and r.json() == {"retried": [failed[0]["id"]]}
            wait_for(lambda: store.outbox_counts().get("delivered") == 1, 15, "the delivery")
            assert client.get("/v1/outbox", params={"status": "failed"}, headers=admin).json() == []
            assert client.post("/v1/outbox/retry", json={}, headers=admin).json() == {"retried": []}
            actions = [h.action for h in store.history(cid)]
            assert actions.count("push retried") == 1 and actions[-1] == "pushed"
    finally:
        receiver.close()
    assert len(receiver.delivered) == 1
    assert receiver.delivered[0]["headers"]["Idempotency-Key"] == f"streetwatch-case-{cid}-confirmed-1"


def test_a_given_up_event_holds_its_case_back_until_an_admin_retries_it(db_url, tmp_path, violation):
    config = webhook("http://127.0.0.1:9/x", events=["confirmed", "dispatched"], max_attempts=1)
    store = CaseStore(db_url, tmp_path / "d", webhook=config)
    try:
        cid = store.ingest(violation()).case_id
        store.review(cid, "confirm", ALICE)
        store.dispatch(cid, "环卫所", datetime.now(timezone.utc) + timedelta(days=1), ALICE)
        confirmed = store.claim_due_event()
        assert confirmed.event == "confirmed" and store.event_failed(confirmed.id, confirmed.lease_token, "down")
        assert store.claim_due_event() is None  # the dispatch would overtake the confirmation it follows
        assert store.retry_failed_events(ALICE) == [confirmed.id]
        again = store.claim_due_event()
        assert again.id == confirmed.id and store.event_delivered(again.id)
        assert store.claim_due_event().event == "dispatched"
    finally:
        store.dispose()


def test_a_claim_checks_the_event_again_when_it_leases_it(db_url, tmp_path, violation):
    """Between reading what is due and leasing it, another dispatcher may try the event and schedule its
    next attempt: the lease must not take it before that attempt is due."""
    config = webhook("http://127.0.0.1:9/x", backoff_s=60, max_backoff_s=60)
    store = CaseStore(db_url, tmp_path / "d", webhook=config)
    other = CaseStore(db_url, tmp_path / "d", webhook=config)
    real_reading = store.reading

    @contextmanager
    def reading_then_another_dispatcher_fails_it():
        with real_reading() as s:
            yield s
        store.reading = real_reading  # once
        taken = other.claim_due_event()
        assert other.event_failed(taken.id, taken.lease_token, "HTTP 503")

    try:
        store.review(store.ingest(violation()).case_id, "confirm", ALICE)
        store.reading = reading_then_another_dispatcher_fails_it
        assert store.claim_due_event() is None  # due again only in a minute
        (event,) = store.outbox_events()
        assert (event.status, event.attempts) == ("pending", 1)
    finally:
        store.dispose()
        other.dispose()


def test_a_receiver_dripping_its_answer_does_not_hold_delivery(tmp_path, violation):
    answered = []

    class Dripping(BaseHTTPRequestHandler):
        """Answers at once (500 the first time, then 200), then drips a 60-byte body over 15 s."""

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            answered.append(200 if answered else 500)
            self.send_response(answered[-1])
            self.send_header("Content-Length", "60")
            self.end_headers()
            for _ in range(60):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return  # the dispatcher hung up: it had what it needed
                time.sleep(0.25)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Dripping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = webhook(f"http://127.0.0.1:{server.server_address[1]}/x", timeout_s=1, max_attempts=1)
    store = CaseStore(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", webhook=config)
    dispatcher = WebhookDispatcher(store, config)
    try:
        for camera in ("cam1", "cam2"):
            store.review(store.ingest(violation(source_id=camera)).case_id, "confirm", ALICE)
        dispatcher.start()
        # the refusal's body is read for at most timeout_s, an acceptance's not at all
        wait_for(lambda: store.outbox_counts() == {"pending": 0, "delivered": 1, "failed": 1}, 6, "both answers")
        assert store.outbox_events(status="failed")[0].last_error.startswith("HTTP 500: x")
    finally:
        dispatcher.stop()
        store.dispose()
        server.shutdown()
        server.server_close()


def test_a_receivers_refusal_cannot_forge_log_lines_or_errors(tmp_path, violation, caplog):
    """What a receiver answers goes into our log, /readyz and the outbox's last_error as one line of plain
    characters, capped: line breaks and terminal escapes it sends are escaped, so it cannot add a log line that
    looks like ours (a delivery that never happened) or repaint an operator's terminal."""
    forged = b"busy\n2026-11-28 08:00:00,000 INFO serve.outbox: webhook delivered\r\x1b[2K\x1b[32mOK\x00"

    class Forging(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(500)
            self.end_headers()
            self.wfile.write(forged + b"\x1b" * 5000)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forging)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = webhook(f"http://127.0.0.1:{server.server_address[1]}/x", max_attempts=1)
    store = CaseStore(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", webhook=config)
    dispatcher = WebhookDispatcher(store, config)
    try:
        with caplog.at_level("WARNING", logger="serve.outbox"):
            store.review(store.ingest(violation()).case_id, "confirm", ALICE)
            dispatcher.start()
            wait_for(lambda: store.outbox_counts().get("failed") == 1, 15, "the delivery to fail")
        errors = {
            "stored": store.outbox_events(status="failed")[0].last_error,
            "readyz": dispatcher.status()["last_error"],
            "logged": next(r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()),
        }
    finally:
        dispatcher.stop()
        store.dispose()
        server.shutdown()
        server.server_close()
    for where, error in errors.items():
        assert "HTTP 500: busy\\n2026-11-28" in error and "\\x1b[32mOK\\x00" in error, (where, error)
        assert error.isprintable() and len(error) <= 400, (where, error)  # one line, capped


def test_an_admin_sends_events_waiting_out_their_backoff_now(tmp_path, violation):
    """A receiver down for an hour is back: events due only in a quarter of an hour go now, on request."""
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.config import ServiceConfig

    config = ServiceConfig(
        data_dir=tmp_path / "svc",
        load_detector=False,
        webhook=webhook("http://127.0.0.1:9/x", backoff_s=900, max_backoff_s=900),
    )
    app = create_app(config)
    store = app.state.store
    admin = {"Authorization": f"Bearer {store.create_key('admin', 'ops')[0]}"}
    store.review(store.ingest(violation()).case_id, "confirm", ALICE)
    event = store.claim_due_event()
    assert store.event_failed(event.id, event.lease_token, "ConnectError: refused")  # next try in 15 minutes
    assert store.claim_due_event() is None
    with TestClient(app) as client:
        app.state.dispatcher.stop()  # (the test takes the events itself)
        assert client.post("/v1/outbox/retry", json={}, headers=admin).json() == {"retried": []}  # failed only
        assert client.post("/v1/outbox/retry", json={"pending": True}, headers=admin).json() == {"retried": [event.id]}
    again = store.claim_due_event()
    assert again.id == event.id and again.attempts == 1  # due now; its attempts kept
