"""The webhook outbox against a real local HTTP receiver: retries with backoff, the idempotency key,
at-least-once delivery that survives a restart of the service."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from waiting import wait_for

from serve.config import WebhookConfig
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
                receiver.requests.append({"headers": dict(self.headers), "body": json.loads(body), "ok": ok})
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
    return WebhookConfig(url=url, backoff_s=0.05, max_backoff_s=0.2, poll_s=0.05, timeout_s=2, **kw)


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


def test_webhook_url_must_be_http():
    with pytest.raises(ValueError, match="http"):
        WebhookConfig(url="ftp://example.org/x")


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
