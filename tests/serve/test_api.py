"""The HTTP API in-process (FastAPI TestClient, real SQLite store, the shipped model): auth and roles,
ingest, lifecycle, evidence, detection with micro-batching, stats, keys, metrics, camera runner hook."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import ExifTags, Image
from servetest import T0, make_violation, sign_in, signed_in
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.registry import resolve
from pipeline.decode import HEIF_SUPPORT, read_image
from pipeline.streams import CameraStatus
from serve.app import attach_cameras, batching_wanted, create_app
from serve.auth import COOKIE
from serve.config import BatchingConfig, ReloadConfig, ServiceConfig
from serve.db import Case, ReviewSession


class RecordingCameras:
    """A camera runner with the interface the service attaches (start/stop/status, as StreamProcessor)."""

    def __init__(self):
        self.events: list[str] = []

    def start(self) -> None:
        self.events.append("start")

    def stop(self) -> None:
        self.events.append("stop")

    def status(self) -> list[CameraStatus]:
        common = dict(frames_decoded=250, frames_dropped=3, lag_s=None, error=None, retry_in_s=None)
        return [
            CameraStatus(
                camera_id="gate-east",
                name="东门 East gate",
                state="live",
                last_frame_time=T0,
                frames_processed=20,
                reconnects=0,
                open_violations=1,
                **{**common, "lag_s": 0.25},
            ),
            CameraStatus(
                camera_id="market",
                name="market",
                state="failed",
                last_frame_time=None,
                frames_processed=0,
                reconnects=4,
                open_violations=0,
                **{**common, "error": "connection refused", "retry_in_s": 8.0},
            ),
        ]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data = tmp_path_factory.mktemp("svc")
    # not following the registry: a test that points STREETWATCH_MODELS_DIR at the tiny model's registry would
    # have this module's service swap to the tiny model until its next poll, and the tests after it see that
    config = ServiceConfig(
        data_dir=data,
        batching=BatchingConfig(enabled=True, max_batch=8, max_wait_ms=50),
        reload=ReloadConfig(enabled=False),
    )
    app = create_app(config)
    cameras = RecordingCameras()
    attach_cameras(app, cameras)
    store = app.state.store
    keys = {role: store.create_key(role, f"{role}-1")[0] for role in ("ingest", "reviewer", "admin")}
    with TestClient(app) as client:
        yield app, client, keys, cameras
    assert cameras.events == ["start", "stop"]


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def post_violation(client, key: str, v):
    return client.post(
        "/v1/cases/ingest", content=v.model_dump_json(), headers={**auth(key), "Content-Type": "application/json"}
    )


def ingest(client, keys, **kw):
    return post_violation(client, keys["ingest"], make_violation(**kw))


def test_health_ready_and_docs(env):
    _app, client, _keys, _ = env
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["database"] is True
    assert ready["checks"]["model"].startswith(f"{resolve().card.name}@")
    assert ready["checks"]["cameras"] == {"gate-east": "live", "market": "failed"}
    schema = client.get("/openapi.json").json()
    assert "/v1/cases/ingest" in schema["paths"]
    # what clients generated from the schema need: the key, the upload, and errors as they really come
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/cases"]["get"]["security"] == [{"HTTPBearer": []}]
    upload = schema["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["required"] == ["image"] and "image/jpeg" in upload
    problem = schema["components"]["schemas"]["Problem"]["properties"]
    refused = client.post("/v1/keys", json={"role": "root"}, headers=auth(_keys["admin"]))
    assert refused.status_code == 422 and set(refused.json()) <= set(problem)


def test_batching_is_automatic_only_on_accelerators(env):
    app, *_ = env
    detector = app.state.detector.detector
    assert batching_wanted(ServiceConfig(), detector) is False  # the CPU provider: one call uses every core
    assert batching_wanted(ServiceConfig(batching=BatchingConfig(enabled=True)), detector) is True
    assert app.state.batcher is not None  # this app asked for it


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/cases/ingest", {}),
        ("get", "/v1/cases", None),
        ("post", "/v1/cases/1/review", {"action": "confirm"}),
        ("post", "/v1/detect", None),
        ("get", "/v1/stats", None),
        ("post", "/v1/keys", {"role": "admin", "name": "x"}),
    ],
)
def test_every_mutating_or_reading_route_needs_a_key(env, method, path, body):
    _, client, _keys, _ = env
    for headers, reason in [
        ({}, "API key is required"),
        (auth("sw_rev_nope"), "invalid or revoked"),
        ({"Authorization": "Basic abc"}, "malformed Authorization"),
    ]:
        r = getattr(client, method)(path, headers=headers, **({"json": body} if body is not None else {}))
        assert r.status_code == 401 and reason in r.json()["detail"], (headers, r.text)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/cases/ingest", "POST"),  # not case 'ingest' of GET /v1/cases/{case_id}
        ("DELETE", "/v1/cases/ingest", "POST"),
        ("GET", "/v1/outbox/retry", "POST"),
        ("PUT", "/v1/keys", "GET, POST"),
        ("POST", "/v1/cases/1", "GET"),
    ],
)
def test_a_method_a_path_does_not_take_is_a_405_naming_those_it_does(env, method, path, allow):
    _, client, keys, _ = env
    for headers in ({}, auth(keys["admin"])):
        r = client.request(method, path, headers=headers)
        assert r.status_code == 405 and r.headers["allow"] == allow, r.text
        assert r.json() == {"detail": f"{method} is not allowed on {path}; it takes {allow}"}


def test_every_fixed_path_is_its_own_routes_whatever_the_method(env):
    """A parameterised route beside a fixed path never gets a request for it (as GET /v1/cases/ingest did)."""
    from serve.routes import admin, cases, detect, health, outbox, stats, ui

    _, client, keys, _ = env
    taken: dict[str, set[str]] = {}
    for module in (health, cases, detect, stats, admin, outbox, ui):
        for route in module.router.routes:
            if not route.param_convertors:
                taken.setdefault(route.path, set()).update(route.methods)
    assert "/v1/cases/ingest" in taken and len(taken) > 10
    for path, methods in taken.items():
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - methods:
            r = client.request(method, path, headers=auth(keys["admin"]))
            assert r.status_code == 405, (method, path, r.text)
            assert set(r.headers["allow"].split(", ")) == methods and path in r.json()["detail"]


def test_roles_are_enforced(env):
    _, client, keys, _ = env
    r = client.post("/v1/cases/1/review", json={"action": "confirm"}, headers=auth(keys["ingest"]))
    assert r.status_code == 403 and "may not review" in r.json()["detail"]
    v = make_violation()
    r = post_violation(client, keys["reviewer"], v)
    assert r.status_code == 403 and "ingest" in r.json()["detail"]
    assert client.get("/v1/cases", headers=auth(keys["ingest"])).status_code == 403
    assert client.get("/v1/keys", headers=auth(keys["reviewer"])).status_code == 403


def test_ingest_is_idempotent_and_reports_created_or_updated(env):
    _app, client, keys, _ = env
    v = make_violation(key="api:1", source_id="cam-api", box=(5, 5, 50, 50))
    r1 = post_violation(client, keys["ingest"], v)
    assert r1.status_code == 201 and r1.json()["created"] is True and r1.json()["outcome"] == "created"
    r2 = post_violation(client, keys["ingest"], v.model_copy(update={"state": "ended"}))
    assert r2.status_code == 200 and r2.json() == {**r1.json(), "created": False, "outcome": "updated"}
    case = client.get(f"/v1/cases/{r1.json()['case_id']}", headers=auth(keys["reviewer"])).json()
    assert case["occurrences"] == 1 and case["model_version"] == "tiny@t1/fp32" and case["type_zh"] == "乱停乱放"
    assert case["actions"] == ["confirm", "dismiss", "relabel"]
    history = client.get(f"/v1/cases/{case['id']}/history", headers=auth(keys["reviewer"])).json()
    assert [h["action"] for h in history] == ["created", "updated"] and history[0]["actor"] == "ingest-1 (ingest)"


def test_review_dispatch_resolve_close_over_http(env):
    app, client, keys, _ = env
    cid = ingest(client, keys, source_id="cam-flow").json()["case_id"]
    rv = auth(keys["reviewer"])
    r = client.post(
        f"/v1/cases/{cid}/dispatch", json={"department": "环卫所", "deadline": "2030-01-01T00:00:00Z"}, headers=rv
    )
    assert r.status_code == 409 and "is new: cannot dispatch" in r.json()["detail"]
    assert (
        client.post(f"/v1/cases/{cid}/review", json={"action": "confirm"}, headers=rv).json()["status"] == "confirmed"
    )
    deadline = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    r = client.post(f"/v1/cases/{cid}/dispatch", json={"department": "环卫所", "deadline": deadline}, headers=rv)
    assert r.status_code == 200 and r.json()["department"] == "环卫所" and r.json()["status"] == "dispatched"
    assert client.post(f"/v1/cases/{cid}/resolve", json={"note": "cleared"}, headers=rv).json()["status"] == "resolved"
    assert client.post(f"/v1/cases/{cid}/close", json={}, headers=rv).json()["status"] == "closed"
    r = client.post(f"/v1/cases/{cid}/reopen", json={}, headers=rv)
    assert r.status_code == 422 and "note" in r.json()["detail"]
    assert client.get(f"/v1/cases/{cid}", headers=rv).json()["status"] == "closed"
    assert app.state.store.get_case(cid).closed_at is not None


def test_an_action_on_a_stale_version_is_a_409_naming_who_acted(env):
    app, client, keys, _ = env
    cid = ingest(client, keys, source_id="cam-stale").json()["case_id"]
    rv = auth(keys["reviewer"])
    seen = client.get(f"/v1/cases/{cid}", headers=rv).json()["version"]
    r = client.post(f"/v1/cases/{cid}/review", json={"action": "confirm", "version": seen}, headers=rv)
    assert r.status_code == 200 and r.json()["version"] == seen + 1
    deadline = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    body = {"department": "环卫所", "deadline": deadline, "version": seen}  # decided before the confirm
    r = client.post(f"/v1/cases/{cid}/dispatch", json=body, headers=rv)
    assert r.status_code == 409, r.text
    assert "confirm by reviewer-1 (reviewer)" in r.json()["detail"] and "reload it" in r.json()["detail"]
    # the time of that confirm as the review page shows times: in the service's zone (Asia/Shanghai), readable
    confirmed = client.get(f"/v1/cases/{cid}/history", headers=rv).json()[-1]["at"]
    shown = datetime.fromisoformat(confirmed).astimezone(app.state.config.tz).strftime("%Y-%m-%d %H:%M:%S +08:00")
    assert f"confirm by reviewer-1 (reviewer) at {shown};" in r.json()["detail"], r.json()["detail"]
    assert client.get(f"/v1/cases/{cid}", headers=rv).json()["status"] == "confirmed"
    r = client.post(f"/v1/cases/{cid}/dispatch", json={**body, "version": seen + 1}, headers=rv)
    assert r.status_code == 200 and r.json()["status"] == "dispatched"
    r = client.post(f"/v1/cases/{cid}/resolve", json={"version": -1}, headers=rv)
    assert r.status_code == 422 and "version" in str(r.json()["detail"])


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/v1/cases/999999/review", {"action": "confirm"}, 404, "no case 999999"),
        ("/v1/cases/1/review", {"action": "approve"}, 422, "action"),
        ("/v1/cases/1/review", {"action": "confirm", "colour": "red"}, 422, "Extra inputs"),
        ("/v1/cases/1/review", {"action": "relabel", "type": "jaywalking"}, 422, "unknown violation type"),
        ("/v1/cases/1/review", {"action": "confirm", "type": "small_ad"}, 422, "belong to relabel"),
        ("/v1/cases/1/dispatch", {"department": "x", "deadline": "2030-01-01T00:00:00"}, 422, "timezone-aware"),
        ("/v1/cases/1/dispatch", {"department": "", "deadline": "2030-01-01T00:00:00Z"}, 422, "department"),
        # a time the review page could not show in the service's zone (year 10000 there)
        ("/v1/cases/1/dispatch", {"department": "x", "deadline": "9999-12-31T23:00:00Z"}, 422, "year 9999"),
        ("/v1/cases/abc/review", {"action": "confirm"}, 422, "case_id"),
        ("/v1/cases/99999999999999999999/review", {"action": "confirm"}, 422, "case_id"),
        ("/v1/cases/0/review", {"action": "confirm"}, 422, "case_id"),
    ],
)
def test_bad_requests_get_4xx_with_the_reason(env, path, body, status, reason):
    _, client, keys, _ = env
    ingest(client, keys)  # case 1 exists
    r = client.post(path, json=body, headers=auth(keys["reviewer"]))
    assert r.status_code == status and reason in str(r.json()["detail"]), r.text


def test_malformed_json_is_a_400(env):
    _, client, keys, _ = env
    r = client.post(
        "/v1/cases/ingest",
        content=b'{"key": "x", ',
        headers={**auth(keys["ingest"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
    r = client.post("/v1/cases/ingest", json={"key": "x"}, headers=auth(keys["ingest"]))
    assert r.status_code == 422 and "type: Field required" in r.json()["detail"]
    r = client.post("/v1/cases/ingest", content=make_violation().model_dump_json(), headers=auth(keys["ingest"]))
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["detail"]
    nan = make_violation().model_dump_json().replace('"box":[10.0', '"box":[NaN')  # JSON5-style token
    r = client.post(
        "/v1/cases/ingest", content=nan, headers={**auth(keys["ingest"]), "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "not a finite" in r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"note": "\xff"}',  # a Latin-1 byte
        b'{"note": "\xed\xa0\x80"}',  # an encoded surrogate (Python's json took it, and PostgreSQL could not keep it)
        '{"note": "x"}'.encode("utf-16"),  # Python's json guessed UTF-16 and read it
    ],
    ids=["latin-1", "surrogate", "utf-16"],
)
def test_a_json_body_that_is_not_utf8_is_a_400_saying_so(env, body):
    """JSON is UTF-8 (RFC 8259): anything else is refused as such, not read by a guess nor answered with a 422
    about fields the client did send or an unexplained 'error parsing the body'."""
    _, client, keys, _ = env
    json_type = {"Content-Type": "application/json"}
    for path, role in [("/v1/cases/1/resolve", "reviewer"), ("/v1/cases/ingest", "ingest"), ("/v1/keys", "admin")]:
        r = client.post(path, content=body, headers={**json_type, **auth(keys[role])})
        assert r.status_code == 400 and "not valid UTF-8" in r.json()["detail"], (path, r.text)
    r = client.post("/v1/detect", content=body, headers={**json_type, **auth(keys["ingest"])})  # it takes images
    assert r.status_code == 415 and "unsupported content type application/json" in r.json()["detail"], r.text
    bom = b'\xef\xbb\xbf{"role": "reviewer", "name": "bom"}'  # a UTF-8 byte order mark is UTF-8: read
    made = client.post("/v1/keys", content=bom, headers={**json_type, **auth(keys["admin"])})
    assert made.status_code == 201 and made.json()["name"] == "bom", made.text


#: Every route that takes a JSON body: the role that may use it, and one that may not.
KEYED_BODIES = [
    ("/v1/cases/ingest", "ingest", "reviewer"),
    *(
        (f"/v1/cases/1/{action}", "reviewer", "ingest")
        for action in ("review", "dispatch", "resolve", "close", "reopen")
    ),
    ("/v1/keys", "admin", "reviewer"),
    ("/v1/outbox/retry", "admin", "reviewer"),
]


def test_keyed_bodies_are_every_route_that_takes_a_json_body():
    from serve.routes import admin, cases, detect, outbox, stats

    routes = [r for m in (cases, detect, stats, admin, outbox) for r in m.router.routes if r.body_field is not None]
    assert {r.path.replace("{case_id}", "1") for r in routes} == {path for path, _, _ in KEYED_BODIES}


@pytest.mark.parametrize(("path", "role", "other"), KEYED_BODIES)
def test_the_key_is_checked_before_the_body_is_read(env, path, role, other):
    """A request without a valid key learns nothing of how its body was read: 401 (a key of a role that may not
    use the route, 403) whatever it sends; a keyed request's unreadable body is refused as such."""
    _, client, keys, _ = env
    json_type = {"Content-Type": "application/json"}
    for body, reason in [(b'{"key": "x", ', "malformed JSON body"), (b'{"a": "\xff"}', "not valid UTF-8")]:
        for headers, status, said in [
            ({}, 401, "API key is required"),
            (auth("sw_rev_nope"), 401, "invalid or revoked"),
            ({"Authorization": "Basic abc"}, 401, "malformed Authorization"),
            (auth(keys[other]), 403, "may not"),
        ]:
            r = client.post(path, content=body, headers={**json_type, **headers})
            assert r.status_code == status and said in r.json()["detail"], (body, headers, r.text)
        r = client.post(path, content=body, headers={**json_type, **auth(keys[role])})
        assert r.status_code == 400 and reason in r.json()["detail"], r.text


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"source_id": "c" * 201}, "source_id is 201 characters"),
        ({"box": (float("nan"), 0, 1, 1)}, "box"),
        ({"box": (float("inf"), 0, 1, 1)}, "box"),
        ({"box": (50, 50, 10, 10)}, "not a finite"),
        ({"frame_size": (0, 480)}, "frame_size"),
        ({"box": (0, 0, 1e308, 1e308)}, "does not lie on the 640x360 frame"),
        ({"box": (700, 10, 800, 50)}, "does not lie on the 640x360 frame"),
        ({"last_seen": T0 - timedelta(hours=1)}, "before first_seen"),
        ({"first_seen": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=8)))}, "year 1 is out of range"),
    ],
)
def test_ingest_refuses_what_the_store_cannot_keep(env, change, reason):
    _, client, keys, _ = env
    v = make_violation().model_copy(update=change)
    r = post_violation(client, keys["ingest"], v)
    assert r.status_code == 422 and reason in r.json()["detail"], r.text


def test_ingest_refuses_evidence_that_is_not_a_jpeg(env):
    from pipeline.cases import EvidenceImage

    _, client, keys, _ = env
    for jpeg, status, reason in [(b"\x89PNG\r\n\x1a\nxx", 422, "not an image"), (b"", 422, "empty file")]:
        v = make_violation(evidence=[EvidenceImage(kind="frame", jpeg=jpeg)])
        r = post_violation(client, keys["ingest"], v)
        assert r.status_code == status and reason in r.json()["detail"]
    import cv2

    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    v = make_violation(evidence=[EvidenceImage(kind="frame", jpeg=png)])
    r = post_violation(client, keys["ingest"], v)
    assert r.status_code == 415 and "must be JPEG" in r.json()["detail"]


def test_evidence_served_only_through_the_api(env):
    _app, client, keys, _ = env
    v = make_violation(source_id="cam-ev")
    cid = post_violation(client, keys["ingest"], v).json()["case_id"]
    case = client.get(f"/v1/cases/{cid}", headers=auth(keys["reviewer"])).json()
    url = case["evidence"][0]["url"]
    assert url == f"/v1/evidence/{v.evidence[0].sha256}"
    r = client.get(url, headers=auth(keys["reviewer"]))
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == v.evidence[0].jpeg
    assert client.get(url).status_code == 401
    listed = client.get(f"/v1/cases/{cid}/evidence", headers=auth(keys["reviewer"])).json()
    assert [e["sha256"] for e in listed] == [v.evidence[0].sha256]
    for bad in (
        "..%2F..%2Fstreetwatch.db",
        "../../etc/passwd",
        "%2e%2e%2fstreetwatch.db",
        "a" * 64,
        v.evidence[0].sha256.upper(),
        "..",
        "%00",
    ):
        r = client.get(f"/v1/evidence/{bad}", headers=auth(keys["reviewer"]))
        assert r.status_code == 404, (bad, r.status_code)


def test_list_filters_pagination_and_limits(env):
    _, client, keys, _ = env
    for i in range(3):
        ingest(
            client,
            keys,
            source_id="cam-list",
            type="small_ad",
            detector_class="small_ad",
            box=(i * 100, 0, i * 100 + 40, 40),
            first_seen=T0 + timedelta(days=400 + i),
            last_seen=T0 + timedelta(days=400 + i),
        )
    rv = auth(keys["reviewer"])
    page = client.get("/v1/cases", params={"camera": "cam-list", "limit": 2}, headers=rv).json()
    assert (
        page["total"] == 3
        and len(page["items"]) == 2
        and page["items"][0]["first_seen"] > page["items"][1]["first_seen"]
    )
    page2 = client.get("/v1/cases", params={"camera": "cam-list", "limit": 2, "offset": 2}, headers=rv).json()
    assert len(page2["items"]) == 1
    assert (
        client.get("/v1/cases", params={"type": "small_ad", "status": "new", "camera": "cam-list"}, headers=rv).json()[
            "total"
        ]
        == 3
    )
    r = client.get("/v1/cases", params={"limit": 5000}, headers=rv)
    assert r.status_code == 422 and "page size limit" in r.json()["detail"]
    assert client.get("/v1/cases", params={"type": "jaywalking"}, headers=rv).status_code == 422
    assert client.get("/v1/cases", params={"status": "open"}, headers=rv).status_code == 422


def test_detect_matches_the_detector_and_refuses_bad_uploads(env, sample_photos):
    app, client, keys, _ = env
    photo = next(p for p in sample_photos if "scooter" in p.name)
    expected = app.state.detector.detector.detect(read_image(photo)).to_records()
    r = client.post(
        "/v1/detect", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, headers=auth(keys["reviewer"])
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["detections"] == expected and body["model_version"] == app.state.detector.detector.version
    assert {"person", "motorbike"} <= {d["class"] for d in body["detections"]} and body["cases"] == []
    raw = client.post(
        "/v1/detect", content=photo.read_bytes(), headers={**auth(keys["ingest"]), "Content-Type": "image/jpeg"}
    )
    assert raw.json()["detections"] == expected
    h = auth(keys["ingest"])
    for files, content, ctype, status, reason in [
        (None, b"hello", "text/plain", 415, "unsupported content type"),
        ({"image": ("a.txt", b"just text", "text/plain")}, None, None, 415, "send JPEG"),
        ({"image": ("a.jpg", b"just text", "image/jpeg")}, None, None, 422, "not an image"),
        ({"image": ("a.jpg", b"", "image/jpeg")}, None, None, 422, "empty file"),
        ({"image": ("a.jpg", photo.read_bytes()[:3000], "image/jpeg")}, None, None, 422, "corrupt or truncated"),
        ({"other": ("a.jpg", photo.read_bytes(), "image/jpeg")}, None, None, 422, "named 'image'"),
    ]:
        kwargs = {"files": files} if files else {"content": content, "headers": {**h, "Content-Type": ctype}}
        r = client.post("/v1/detect", **({"headers": h} if files else {}), **kwargs)
        assert r.status_code == status and reason in r.json()["detail"], (reason, r.status_code, r.text)
    r = client.post(
        "/v1/detect",
        params={"file": "true"},
        headers=auth(keys["reviewer"]),
        files={"image": ("a.jpg", photo.read_bytes(), "image/jpeg")},
    )
    assert r.status_code == 403 and "ingest" in r.json()["detail"]


def test_concurrent_detections_are_micro_batched(env, sample_photos):
    app, client, keys, _ = env
    data = sample_photos[0].read_bytes()
    expected = app.state.detector.detector.detect(read_image(sample_photos[0])).to_records()
    before = app.state.metrics.batch_size.collect()[0].samples
    count0 = next(s.value for s in before if s.name.endswith("_count"))
    sum0 = next(s.value for s in before if s.name.endswith("_sum"))
    barrier = threading.Barrier(6)

    def call(_):
        barrier.wait()
        return client.post("/v1/detect", content=data, headers={**auth(keys["ingest"]), "Content-Type": "image/jpeg"})

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    assert all(r.status_code == 200 and r.json()["detections"] == expected for r in results)
    after = app.state.metrics.batch_size.collect()[0].samples
    calls = next(s.value for s in after if s.name.endswith("_count")) - count0
    images = next(s.value for s in after if s.name.endswith("_sum")) - sum0
    assert images == 6 and calls < 6  # fewer detector calls than requests: batched


def test_stats_route(env):
    _, client, keys, _ = env
    rv = auth(keys["reviewer"])
    s = client.get("/v1/stats", params={"since": "2026-11-01", "until": "2026-12-31"}, headers=rv).json()
    assert s["total"] >= 1 and {
        "by_type",
        "by_camera",
        "by_department",
        "confirmation_rate",
        "closure_rate",
        "overdue",
        "median_hours_to_resolve",
    } <= set(s)
    assert s["since"].startswith("2026-11-01T00:00:00+08:00") or s["since"].startswith("2026-10-31T16:00:00")
    r = client.get("/v1/stats", params={"since": "2026-12-01", "until": "2026-11-01"}, headers=rv)
    assert r.status_code == 422 and "after" in r.json()["detail"]
    assert client.get("/v1/stats", params={"since": "yesterday"}, headers=rv).status_code == 422
    for route, number in [("/v1/stats", "20261110"), ("/v1/cases", "20261110"), ("/v1/stats", "1.7e9")]:
        r = client.get(route, params={"since": number}, headers=rv)  # pydantic reads numbers as Unix seconds
        assert r.status_code == 422 and "is a number, not a time" in str(r.json()["detail"]), r.text
    later = client.get("/v1/stats", params={"since": "2099-06-01"}, headers=rv)  # alone, after today
    assert later.status_code == 200, later.text
    assert later.json()["until"].startswith("2099-06-02T00:00:00+08:00") and later.json()["total"] == 0
    for route, params in [("/v1/stats", {"since": "0001-01-01"}), ("/v1/cases", {"until": "9999-12-31T23:00-05:00"})]:
        r = client.get(route, params=params, headers=rv)  # not a 500 from converting them to UTC
        assert r.status_code == 422 and "out of range (1900-2999)" in str(r.json()["detail"]), r.text


def test_admin_manages_keys(env):
    _app, client, keys, _ = env
    ad = auth(keys["admin"])
    r = client.post("/v1/keys", json={"role": "ingest", "name": "camera-worker-7"}, headers=ad)
    assert r.status_code == 201
    new = r.json()
    assert new["key"].startswith("sw_ing_") and new["role"] == "ingest"
    listed = client.get("/v1/keys", headers=ad).json()
    assert "key" not in listed[0] and any(k["name"] == "camera-worker-7" for k in listed)
    assert ingest(client, {"ingest": new["key"]}, source_id="cam-k").status_code == 201
    assert client.delete(f"/v1/keys/{new['id']}", headers=ad).json()["revoked_at"] is not None
    assert ingest(client, {"ingest": new["key"]}).status_code == 401
    assert client.post("/v1/keys", json={"role": "root", "name": "x"}, headers=ad).status_code == 422
    assert client.delete("/v1/keys/9999", headers=ad).status_code == 404
    # the last admin key in force cannot be revoked through the API: nobody could manage keys after it
    mine = next(k for k in listed if k["role"] == "admin" and k["revoked_at"] is None)
    r = client.delete(f"/v1/keys/{mine['id']}", headers=ad)
    assert r.status_code == 422 and "last admin key" in r.json()["detail"], r.text
    second = client.post("/v1/keys", json={"role": "admin", "name": "admin-2"}, headers=ad).json()
    assert client.delete(f"/v1/keys/{second['id']}", headers=ad).status_code == 200  # another one is left
    r = client.delete(f"/v1/keys/{mine['id']}", headers=ad)
    assert r.status_code == 422 and "last admin key" in r.json()["detail"]
    assert client.get("/v1/keys", headers=ad).status_code == 200  # still in force


def test_metrics_expose_requests_batches_cases_and_cameras(env):
    _, client, keys, _ = env
    ingest(client, keys, source_id="cam-metrics")
    text = client.get("/metrics").text
    assert 'streetwatch_http_requests_total{method="POST",route="/v1/cases/ingest",status="201"}' in text
    assert (
        'streetwatch_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/healthz"}' in text
        or "streetwatch_http_request_duration_seconds_count" in text
    )
    assert "streetwatch_detector_batch_size_bucket" in text
    assert 'streetwatch_cases{status="new"}' in text
    assert 'streetwatch_camera_state{camera="gate-east",state="live"} 1.0' in text
    assert 'streetwatch_camera_state{camera="market",state="failed"} 1.0' in text
    assert 'streetwatch_camera_frames_processed_total{camera="gate-east"} 20.0' in text
    assert 'streetwatch_camera_reconnects_total{camera="market"} 4.0' in text
    assert 'streetwatch_camera_lag_seconds{camera="gate-east"} 0.25' in text
    last = re.search(r'streetwatch_camera_last_frame_timestamp_seconds\{camera="gate-east"\} (\S+)', text)
    assert last and float(last.group(1)) == T0.timestamp()
    assert 'streetwatch_ingested_violations_total{outcome="created"}' in text
    assert "streetwatch_model_info{version=" in text


def test_head_answers_what_get_would_without_the_body(env):
    """HTTP servers must answer HEAD for every GET (monitors and link checkers send it): the same status and
    headers, no body, the same key check."""
    _, client, keys, _ = env
    cid = ingest(client, keys, source_id="cam-head").json()["case_id"]
    picture = client.get(f"/v1/cases/{cid}/evidence", headers=auth(keys["reviewer"])).json()[0]["sha256"]
    for path, headers in (
        ("/healthz", {}),
        ("/readyz", {}),
        (f"/v1/cases/{cid}", auth(keys["reviewer"])),
        (f"/v1/evidence/{picture}", auth(keys["reviewer"])),
        ("/static/app.js", {}),
        ("/ui/login", {}),
    ):
        got, head = client.get(path, headers=headers), client.head(path, headers=headers)
        assert (head.status_code, head.content) == (got.status_code, b"") and got.status_code == 200, path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers.get("content-length") == got.headers.get("content-length"), path
    assert client.head(f"/v1/cases/{cid}").status_code == 401
    assert client.head("/v1/nothing", headers=auth(keys["reviewer"])).status_code == 404


def test_every_response_carries_the_security_headers_and_the_pages_a_strict_content_policy(env):
    """No MIME sniffing, no framing (clickjacking), no addresses in the Referer to other sites, on every answer
    (the guard's own refusals too); a Content-Security-Policy that lets a page run only the service's own
    scripts and styles (no inline ones: an injected <script> or onclick does nothing). The API docs pages
    start Swagger UI and ReDoc with an inline script: they are left without it, and still work."""
    app, client, keys, _ = env
    browser = signed_in(app, keys["reviewer"])
    cid = ingest(client, keys, source_id="cam-headers").json()["case_id"]
    picture = client.get(f"/v1/cases/{cid}/evidence", headers=auth(keys["reviewer"])).json()[0]["sha256"]
    answers = {
        "api": client.get(f"/v1/cases/{cid}", headers=auth(keys["reviewer"])),
        "401": client.get("/v1/cases"),
        "404": client.get("/v1/nothing"),
        "nul": client.get("/v1/cases?camera=%00"),  # refused by the guard itself
        "413": client.post("/v1/keys", content=b"{" + b" " * 300_000 + b"}", headers=auth(keys["admin"])),
        "list": browser.get("/ui/cases"),
        "case": browser.get(f"/ui/cases/{cid}"),
        "login": TestClient(app).get("/ui/login"),
        "redirect": TestClient(app).get("/ui/cases", follow_redirects=False),
        "missing": browser.get("/ui/nowhere"),
        "stats": browser.get("/ui/stats"),
        "logout": browser.get("/ui/logout"),
        "script": client.get("/static/app.js"),
        "evidence": browser.get(f"/v1/evidence/{picture}"),
        "metrics": client.get("/metrics"),
    }
    for name, r in answers.items():
        assert r.headers.get("x-content-type-options") == "nosniff", name
        assert r.headers.get("x-frame-options") == "DENY", name
        assert r.headers.get("referrer-policy") == "same-origin", name
        policy = {
            d.split()[0]: d.split()[1:] for d in r.headers.get("content-security-policy", "").split(";") if d.strip()
        }
        assert policy.get("default-src") == ["'self'"] and policy.get("frame-ancestors") == ["'none'"], (name, policy)
        assert not any("unsafe" in s for sources in policy.values() for s in sources), (name, policy)
        assert policy.get("object-src") == ["'none'"] and policy.get("base-uri") == ["'none'"], (name, policy)
    assert answers["list"].status_code == 200 and answers["redirect"].status_code == 303
    assert answers["nul"].status_code == 422 and answers["413"].status_code == 413
    # the templates keep to the policy: no inline script, style or event handler, no javascript: link
    for page in ("list", "case", "login", "missing", "stats", "logout"):
        html = answers[page].text
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], page
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=|javascript:", html, re.I), page
    for path, starts in [("/docs", "SwaggerUIBundle"), ("/redoc", "redoc"), ("/docs/oauth2-redirect", "oauth2")]:
        r = client.get(path)
        assert r.status_code == 200 and starts in r.text, path
        assert "default-src" not in r.headers.get("content-security-policy", ""), path  # its inline script runs
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff", path


def test_request_body_limit(env):
    app, client, keys, _ = env
    limit = app.state.config.limits.max_json_bytes
    r = client.post(
        "/v1/cases/1/review",
        content=b"{" + b" " * (limit + 10) + b"}",
        headers={**auth(keys["reviewer"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert client.get("/healthz").status_code == 200
    np.testing.assert_equal(app.state.config.limits.max_upload_bytes, 20 * 1024 * 1024)


@pytest.mark.slow
def test_detect_files_violations_as_cases_idempotently(use_tiny_registry, tiny_pt, tmp_path):
    """A real model trained on litter shapes: its detections become exposed-garbage cases; the same photo
    uploaded again updates the same cases."""
    from pipeline.detect import DetectorConfig

    photo = sorted((tiny_pt.parents[3] / "shapes" / "val" / "images").glob("*.jpg"))[0]
    app = create_app(ServiceConfig(data_dir=tmp_path, detector=DetectorConfig(conf=0.05)))
    key = app.state.store.create_key("ingest", "patrol-audit")[0]
    params = {"file": "true", "source_name": "patrol-1.jpg", "lat": 31.2304, "lon": 121.4737}
    with TestClient(app) as client:
        first = client.post(
            "/v1/detect",
            params=params,
            headers=auth(key),
            files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        ).json()
        again = client.post(
            "/v1/detect",
            params=params,
            headers=auth(key),
            files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        ).json()
        litter = [d for d in first["detections"] if d["class"] == "litter"]
        assert litter and first["model_version"] == "tiny@t1/fp32"
        assert len(first["cases"]) == len(litter) and any(c["created"] for c in first["cases"])
        assert {c["case_id"] for c in again["cases"]} == {c["case_id"] for c in first["cases"]}
        assert all(c["outcome"] == "updated" for c in again["cases"])
        case = app.state.store.get_case(first["cases"][0]["case_id"])
        assert case.type == "exposed_garbage" and case.source == "photo" and case.source_name == "patrol-1.jpg"
        assert case.location.lat == pytest.approx(31.2304) and case.model_version == "tiny@t1/fp32"
        assert {e.kind for e in case.evidence} == {"frame", "crop", "clean"}
        clean = next(e for e in case.evidence if e.kind == "clean")
        frame = next(e for e in case.evidence if e.kind == "frame")
        assert clean.frame_size == frame.frame_size and clean.sha256 != frame.sha256  # same view, nothing drawn


def test_review_pages_need_a_reviewer_escape_content_and_refuse_cross_site_posts(env):
    app, _, keys, _ = env
    cid = ingest(TestClient(app), keys, source_id="cam-xss", source_name="<script>alert(1)</script>").json()["case_id"]
    browser = TestClient(app)  # its own cookie jar
    assert browser.get("/ui/cases", follow_redirects=False).headers["location"].startswith("/ui/login?next=")
    r = browser.post("/ui/login", data={"key": keys["ingest"], "next": "/ui/cases"}, follow_redirects=False)
    assert r.status_code == 200 and "A reviewer key is needed" in r.text
    for target in ("//evil.example/x", "/\\evil.example", "https://evil.example/"):
        r = browser.post("/ui/login", data={"key": keys["reviewer"], "next": target}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/cases"
    page = browser.get(f"/ui/cases/{cid}")
    assert page.status_code == 200 and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert(1)" not in page.text
    listing = browser.get("/ui/cases", params={"camera": "cam-xss"})
    assert f'data-case="{cid}"' in listing.text and "<script>alert(1)" not in listing.text
    r = browser.post(f"/v1/cases/{cid}/review", json={"action": "confirm"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.json()["detail"]
    for header in ({"Origin": "http://[::1"}, {"Referer": "http://[x/ui/cases"}):  # not even a URL
        r = browser.post(f"/v1/cases/{cid}/review", json={"action": "confirm"}, headers=header)
        assert r.status_code == 403 and "cross-site" in r.json()["detail"], r.text
        r = browser.post("/ui/login", data={"key": keys["reviewer"]}, headers=header, follow_redirects=False)
        assert r.status_code == 403, r.text
    r = browser.post(f"/v1/cases/{cid}/review", json={"action": "confirm"}, headers={"Origin": "http://testserver"})
    assert r.status_code == 200 and r.json()["reviewed_by"] == "reviewer-1"
    assert browser.get("/ui/stats").status_code == 200
    swapped = browser.get("/ui/stats", params={"since": "2026-11-28", "until": "2026-11-01"})  # the wrong way round
    assert swapped.status_code == 200 and 'value="2026-11-01"' in swapped.text and 'value="2026-11-28"' in swapped.text
    assert browser.get("/ui/stats", params={"since": "0001-01-01"}).status_code == 200  # the default range
    mixed = browser.get("/ui/stats", params={"since": "2026-11-10T00:00+08:00", "until": "2026-11-05"})
    assert mixed.status_code == 200 and 'value="2026-11-05"' in mixed.text  # a time with a zone and a date
    for until in ("2026-11-10T12:00", "2026-11-10T08"):  # a time typed in ends there, not a day later
        noon = browser.get("/ui/stats", params={"since": "2026-11-10T00:00", "until": until})
        assert noon.text.count('value="2026-11-10"') == 2, until
    same = browser.get("/ui/stats", params={"since": "2026-11-10T12:00", "until": "2026-11-10T12:00"})
    assert same.status_code == 200 and "Empty range: until &#39;2026-11-10T12:00&#39; is not after" in same.text
    # the status chips count within the chosen source and type; a page past the end leads to the last one
    ingest(TestClient(app), keys, source_id="cam-ads", type="small_ad", detector_class="small_ad")
    ingest(TestClient(app), keys, source_id="cam-ads", box=(300, 200, 400, 300))  # a car there too
    ads = browser.get("/ui/cases", params={"camera": "cam-ads", "type": "small_ad"})
    assert re.search(r"全部 All <b>1</b>", ads.text) and re.search(r"待审核 New <b>1</b>", ads.text), ads.text[:3000]
    assert re.search(r"全部 All <b>2</b>", browser.get("/ui/cases", params={"camera": "cam-ads"}).text)
    past = browser.get("/ui/cases", params={"camera": "cam-ads", "page": 7}, follow_redirects=False)
    assert past.status_code == 303 and past.headers["location"] == "/ui/cases?camera=cam-ads&page=1"
    missing = browser.get("/ui/cases/999999")  # a stale link: a page saying so, with the way back
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert "no case 999999" in missing.text and 'href="/ui/cases"' in missing.text


def test_the_review_pages_keep_the_templates_and_static_files_read_at_start(tmp_path, monkeypatch):
    """Files changed or removed under a running service (a deploy) break none of its pages, and no page mixes old
    and new templates or scripts: all of them are read when the app is made, never again."""
    from serve.routes import ui

    templates, static = tmp_path / "templates", tmp_path / "static"
    shutil.copytree(ui.TEMPLATES_DIR, templates)
    shutil.copytree(ui.STATIC_DIR, static)
    base, script = templates / "base.html", static / "app.js"
    page, code = base.read_text(encoding="utf-8"), script.read_text(encoding="utf-8")
    base.write_text(page.replace("</body>", "<!-- release 1 -->\n</body>"), encoding="utf-8")
    script.write_text(code + "\n// release 1\n", encoding="utf-8")
    monkeypatch.setattr(ui, "TEMPLATES_DIR", templates)
    monkeypatch.setattr(ui, "STATIC_DIR", static)
    app = create_app(ServiceConfig(data_dir=tmp_path / "data", load_detector=False))
    key = app.state.store.create_key("reviewer", "reviewer-1")[0]
    with TestClient(app) as browser:
        assert "release 1" in browser.get("/ui/login").text
        first = browser.get("/static/app.js")
        assert first.status_code == 200 and "release 1" in first.text
        assert "javascript" in first.headers["content-type"]
        base.write_text(page.replace("</body>", "<!-- release 2 -->\n</body>"), encoding="utf-8")
        script.write_text(code + "\n// release 2\n", encoding="utf-8")
        for path in (base, script):
            os.utime(path, (time.time() + 60, time.time() + 60))  # newer, whatever the file system's clock resolution
        for name in ("cases.html", "_macros.html", "missing.html"):  # none of them shown yet
            (templates / name).unlink()
        (static / "app.css").unlink()
        assert browser.post("/ui/login", data={"key": key}, follow_redirects=False).status_code == 303
        for path, status in [("/ui/login", 200), ("/ui/cases", 200), ("/ui/cases/12345", 404), ("/ui/nothing", 404)]:
            r = browser.get(path)
            assert r.status_code == status and "release 1" in r.text and "release 2" not in r.text, (path, r.text)
        again = browser.get("/static/app.js")
        assert again.text == first.text and again.headers["etag"] == first.headers["etag"]
        assert browser.get("/static/app.js", headers={"If-None-Match": first.headers["etag"]}).status_code == 304
        assert browser.get("/static/app.js", headers={"If-None-Match": "*"}).status_code == 304
        longer = '"x' + first.headers["etag"].strip('"') + '"'  # another tag that merely contains it
        assert browser.get("/static/app.js", headers={"If-None-Match": longer}).status_code == 200
        assert browser.get("/static/app.css").status_code == 200
        assert browser.get("/static/nothing.js").status_code == 404


def test_a_repeated_key_must_name_the_same_violation(env):
    # a producer that reuses a key for something else is refused (and its violation kept by the sink as
    # rejected), instead of overwriting the first case with another type, camera or class
    _, client, keys, _ = env
    first = make_violation(key="reused-key", type="street_vending", detector_class="street_vending", source_id="cam-a")
    r = post_violation(client, keys["ingest"], first)
    assert r.status_code == 201
    cid = r.json()["case_id"]
    for change in (
        {"type": "illegal_parking", "detector_class": "car"},
        {"source_id": "cam-b"},
        {"source": "photo"},
    ):
        other = first.model_copy(update={**change, "score": 0.99})
        r = post_violation(client, keys["ingest"], other)
        assert r.status_code == 422 and "already filed a street_vending violation" in r.json()["detail"], r.text
    case = client.get(f"/v1/cases/{cid}", headers=auth(keys["reviewer"])).json()
    assert case["score"] == 0.8 and case["type"] == "street_vending" and case["occurrences"] == 1
    # a real repeat still updates it, also after a reviewer relabelled the case
    rv = auth(keys["reviewer"])
    relabel = {"action": "relabel", "type": "illegal_parking", "detector_class": "car"}
    assert client.post(f"/v1/cases/{cid}/review", json=relabel, headers=rv).status_code == 200
    again = first.model_copy(update={"score": 0.9, "last_seen": first.last_seen + timedelta(seconds=30)})
    r = post_violation(client, keys["ingest"], again)
    assert r.status_code == 200 and r.json()["case_id"] == cid and r.json()["outcome"] == "updated"


def test_text_and_numbers_no_database_can_keep_are_refused_with_a_reason(db_url, tmp_path):
    # PostgreSQL cannot store NUL in text, nor NaN in JSON: each is a 422 that says why, on both stores,
    # and nothing is half-written
    app = create_app(ServiceConfig(data_dir=tmp_path / "svc", db_url=db_url))
    store = app.state.store
    keys = {role: store.create_key(role, f"{role}-1")[0] for role in ("ingest", "reviewer", "admin")}
    rv, ad = auth(keys["reviewer"]), auth(keys["admin"])
    with TestClient(app) as client:
        cid = ingest(client, keys, source_id="cam-ok").json()["case_id"]
        for change in ({"source_id": "cam\x00x"}, {"key": "k\x00"}, {"zone": "a\x00"}, {"extra": {"n\x00": 1}}):
            body = {**make_violation(source_id="cam-nul").model_dump(mode="json"), **change}  # as a client sends it
            r = client.post("/v1/cases/ingest", json=body, headers=auth(keys["ingest"]))
            assert r.status_code == 422 and "NUL" in r.json()["detail"], r.text
        nan = make_violation(source_id="cam-nan").model_dump_json().replace('"extra":{}', '"extra":{"x":NaN}')
        r = client.post(
            "/v1/cases/ingest", content=nan, headers={**auth(keys["ingest"]), "Content-Type": "application/json"}
        )
        assert r.status_code == 422 and "finite" in r.json()["detail"], r.text
        for path, body in [
            (f"/v1/cases/{cid}/review", {"action": "confirm", "note": "ok\x00"}),
            (f"/v1/cases/{cid}/dispatch", {"department": "城管\x00", "deadline": "2099-01-01T00:00:00+08:00"}),
            ("/v1/keys", {"role": "ingest", "name": "w\x00"}),
        ]:
            r = client.post(path, json=body, headers=ad)
            assert r.status_code == 422 and "NUL" in r.json()["detail"], (path, r.text)
        for path in ("/v1/cases?camera=%00", "/v1/cases?department=a%00", "/ui/cases?camera=%00"):
            r = client.get(path, headers=rv)
            assert r.status_code == 422 and "NUL" in r.json()["detail"], (path, r.text)
        for ids in ([2**31], [2**63], [0]):  # event numbers past the database's integer
            r = client.post("/v1/outbox/retry", json={"ids": ids}, headers=ad)
            assert r.status_code == 422, r.text
        page = client.get("/v1/cases", headers=rv).json()
        assert [c["id"] for c in page["items"]] == [cid] and page["items"][0]["status"] == "new"
        assert [k["name"] for k in client.get("/v1/keys", headers=ad).json()] == ["ingest-1", "reviewer-1", "admin-1"]
    store.dispose()


def exif_jpeg(src: Path, exif_tags: dict[int, object] | None = None, gps: dict[int, object] | None = None) -> bytes:
    """``src`` as a JPEG carrying the given EXIF (Exif IFD) and GPS tags."""
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif).update(exif_tags or {})
    exif.get_ifd(ExifTags.IFD.GPSInfo).update(gps or {})
    buf = io.BytesIO()
    Image.open(src).save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    return buf.getvalue()


def test_detect_files_a_photo_whose_utc_offset_is_garbage(env, sample_photos):
    app, client, keys, _ = env
    photo = next(p for p in sample_photos if "scooter" in p.name)
    data = exif_jpeg(
        photo, {ExifTags.Base.DateTimeOriginal: "2026:11:20 09:15:30", ExifTags.Base.OffsetTimeOriginal: "+25:00"}
    )
    r = client.post(
        "/v1/detect",
        params={"file": "true", "parking_anywhere": "true"},
        headers={**auth(keys["ingest"]), "Content-Type": "image/jpeg"},
        content=data,
    )
    assert r.status_code == 200, r.text
    assert r.json()["cases"]  # filed, taken at the EXIF time in the service's zone
    case = app.state.store.get_case(r.json()["cases"][0]["case_id"])
    assert case.first_seen == datetime(2026, 11, 20, 9, 15, 30, tzinfo=app.state.config.tz)


def test_detect_files_a_photo_whose_gps_clock_runs_past_the_plausible_years(env, sample_photos):
    app, client, keys, _ = env
    photo = next(p for p in sample_photos if "scooter" in p.name)
    data = exif_jpeg(photo, gps={ExifTags.GPS.GPSDateStamp: "2999:12:31", ExifTags.GPS.GPSTimeStamp: (48, 0, 0)})
    before = datetime.now(timezone.utc).replace(microsecond=0)
    r = client.post(
        "/v1/detect",
        params={"file": "true", "parking_anywhere": "true"},  # vehicles: findings to file
        headers={**auth(keys["ingest"]), "Content-Type": "image/jpeg"},
        content=data,
    )
    assert r.status_code == 200, r.text
    assert r.json()["cases"]
    case = app.state.store.get_case(r.json()["cases"][0]["case_id"])
    assert case.first_seen >= before  # no usable photo time: taken at the upload


@pytest.mark.skipif(not HEIF_SUPPORT, reason="pillow-heif is not installed")
def test_detect_takes_heic_under_its_own_media_types(env, sample_photos):
    _app, client, keys, _ = env
    photo = next(p for p in sample_photos if "scooter" in p.name)
    buf = io.BytesIO()
    with Image.open(photo) as im:
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(buf, "HEIF", quality=90)
    data, h = buf.getvalue(), auth(keys["ingest"])
    octet = client.post("/v1/detect", content=data, headers={**h, "Content-Type": "application/octet-stream"})
    assert octet.status_code == 200, octet.text
    for ctype in ("image/heic", "image/heif"):  # what an iPhone's upload says it is
        raw = client.post("/v1/detect", content=data, headers={**h, "Content-Type": ctype})
        part = client.post("/v1/detect", headers=h, files={"image": ("IMG_0001.HEIC", data, ctype)})
        for r in (raw, part):
            assert r.status_code == 200, (ctype, r.text)
            assert r.json()["detections"] == octet.json()["detections"]
    refused = client.post("/v1/detect", headers=h, files={"image": ("a.tif", data, "image/tiff")})
    detail = refused.json()["detail"]
    assert refused.status_code == 415 and "HEIC" in detail and "image/heic" in detail, detail
    raw = client.post("/v1/detect", content=data, headers={**h, "Content-Type": "image/tiff"})
    assert raw.status_code == 415 and "image/heif" in raw.json()["detail"] and "HEIC" in raw.json()["detail"]


def test_detect_files_a_photo_with_a_very_long_file_name_under_a_shortened_name(env, sample_photos):
    app, client, keys, _ = env
    photo = next(p for p in sample_photos if "scooter" in p.name)
    long_name = "patrol-2026-11-20-" + "market-street-" * 30 + "IMG_0042.jpg"  # 450 characters
    r = client.post(
        "/v1/detect",
        params={"file": "true", "parking_anywhere": "true"},
        headers=auth(keys["ingest"]),
        files={"image": (long_name, photo.read_bytes(), "image/jpeg")},
    )
    assert r.status_code == 200, r.text
    assert r.json()["cases"] and r.json()["detections"]
    shown = app.state.store.get_case(r.json()["cases"][0]["case_id"]).source_name
    assert len(shown) == 300 and shown.startswith("patrol-2026-11-20-market") and shown.endswith("IMG_0042.jpg")
    # a name the caller chose is refused before any detection runs, as the other parameters are
    chosen = client.post(
        "/v1/detect",
        params={"file": "true", "source_name": long_name},
        headers=auth(keys["ingest"]),
        files={"image": ("a.jpg", photo.read_bytes(), "image/jpeg")},
    )
    assert chosen.status_code == 422 and "300" in chosen.text


def test_the_sign_in_page_shows_only_messages_the_service_chose(env):
    """No text from the address reaches the sign-in page: a crafted link cannot put words (call this number,
    your account is locked) on our page. Why it is shown (a revoked key) the service finds out itself."""
    app, _, keys, _ = env
    bait = "账户已冻结 Account locked: call 400-123-4567"
    page = TestClient(app).get("/ui/login", params={"error": bait, "message": bait, "next": "/ui/cases"})
    assert page.status_code == 200 and "400-123-4567" not in page.text and 'class="error"' not in page.text
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    made = TestClient(app).post("/v1/keys", json={"role": "reviewer", "name": "soon-revoked"}, headers=admin).json()
    browser = signed_in(app, made["key"])
    assert TestClient(app).delete(f"/v1/keys/{made['id']}", headers=admin).status_code in (200, 204)
    stale = browser.get("/ui/login", params={"error": bait})
    assert "no longer valid" in stale.text and "400-123-4567" not in stale.text  # the service's own reason, only


@pytest.mark.parametrize(
    ("public_url", "base_url", "secure"),
    [
        ("https://streetwatch.example.gov", "http://testserver", True),  # TLS ends at the proxy in front
        ("HTTPS://streetwatch.example.gov/", "http://testserver", True),
        (None, "https://testserver", True),  # TLS to the service itself
        ("http://10.0.0.5:8000", "http://testserver", False),  # plain HTTP on a closed network: the cookie must work
        (None, "http://testserver", False),
    ],
)
def test_the_session_cookie_is_secure_when_people_reach_the_service_over_https(tmp_path, public_url, base_url, secure):
    """Behind a TLS-terminating proxy the service sees http: the public URL says the browser is on https, and a
    cookie without Secure could leak over a plain-HTTP request to the same host."""
    app = create_app(ServiceConfig(data_dir=tmp_path / "data", load_detector=False, public_url=public_url))
    key = app.state.store.create_key("reviewer", "rev")[0]
    with TestClient(app, base_url=base_url) as browser:
        r = browser.post("/ui/login", data={"key": key}, follow_redirects=False)
        assert r.status_code == 303 and "streetwatch_key=" in r.headers["set-cookie"]
        attributes = [a.strip().lower() for a in r.headers["set-cookie"].split(";")]
        assert ("secure" in attributes) is secure and "httponly" in attributes and "samesite=strict" in attributes
        out = browser.post("/ui/logout", headers={"Origin": base_url}, follow_redirects=False)
        assert out.status_code == 303 and "streetwatch_key=" in out.headers["set-cookie"]  # removed alike
        assert ("secure" in out.headers["set-cookie"].lower()) is secure


def test_the_sign_out_address_typed_or_followed_shows_a_sign_out_button(env):
    """GET /ui/logout (typed, bookmarked, a link) is a page whose button signs out (a POST, same-origin checked);
    a GET itself signs nobody out: another site's image or link cannot end a reviewer's session."""
    app, _, keys, _ = env
    browser = signed_in(app, keys["reviewer"])
    page = browser.get("/ui/logout")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text
    assert re.search(r'<form[^>]*method="post"[^>]*action="/ui/logout"', page.text) and "Sign out" in page.text
    assert "reviewer-1" in page.text  # who would be signed out
    assert browser.get("/ui/cases", follow_redirects=False).status_code == 200  # still signed in
    forged = browser.post("/ui/logout", headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert forged.status_code == 403 and "set-cookie" not in forged.headers
    out = browser.post("/ui/logout", headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert browser.get("/ui/cases", follow_redirects=False).headers["location"].startswith("/ui/login")
    nobody = TestClient(app).get("/ui/logout")  # not signed in: the way to sign in instead
    assert nobody.status_code == 200 and 'href="/ui/login"' in nobody.text and 'action="/ui/logout"' not in nobody.text


def review_service(db_url, tmp_path, **config):
    """A service without a detector on ``db_url``, an admin's and a reviewer's key."""
    app = create_app(ServiceConfig(data_dir=tmp_path / "svc", db_url=db_url, load_detector=False, **config))
    admin, reviewer = (app.state.store.create_key(role, role)[0] for role in ("admin", "reviewer"))
    return app, {"Authorization": f"Bearer {admin}"}, reviewer


def session_rows(app) -> list[ReviewSession]:
    with app.state.store.reading() as s:
        return list(s.scalars(select(ReviewSession)))


def copy_of(app, token: str) -> TestClient:
    """Another browser holding a copy of a session cookie (stolen, or left on a shared machine)."""
    client = TestClient(app)
    client.cookies.set(COOKIE, token)
    return client


def ended(client: TestClient) -> bool:
    """Whether a browser's session cookie is refused by the API and by the review page (to sign-in, saying why)."""
    api = client.get("/v1/cases")
    page = client.get("/ui/cases", follow_redirects=False)
    login = client.get("/ui/login")
    return (
        api.status_code == 401
        and page.status_code == 303
        and page.headers["location"].startswith("/ui/login?next=")
        and "no longer valid" in login.text
    )


def test_signing_in_opens_a_session_whose_cookie_is_not_the_key(db_url, tmp_path):
    """The long-lived key stays on the server: the cookie holds a random token, the store only its hash."""
    app, _, key = review_service(db_url, tmp_path)
    browser = TestClient(app)
    r = browser.post("/ui/login", data={"key": key, "next": "/ui/cases"}, follow_redirects=False)
    assert r.status_code == 303 and key not in r.headers["set-cookie"]
    token = browser.cookies[COOKIE]
    assert token != key and len(token) >= 40
    (row,) = session_rows(app)
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in row.token_hash
    assert row.expires_at - row.created_at == timedelta(hours=12)
    assert browser.get("/v1/cases").status_code == 200 and browser.get("/ui/cases").status_code == 200
    as_key = TestClient(app).get("/v1/cases", headers={"Authorization": f"Bearer {token}"})
    assert as_key.status_code == 401  # the token is no key either
    assert copy_of(app, key).get("/v1/cases").status_code == 401  # a cookie holding a key (as before) is refused


def test_a_copied_session_cookie_stops_working_when_its_reviewer_signs_out(db_url, tmp_path):
    app, _, key = review_service(db_url, tmp_path)
    browser = TestClient(app)
    token = sign_in(browser, key)
    copy = copy_of(app, token)
    assert copy.get("/v1/cases").status_code == 200  # the same session while it lasts
    out = browser.post("/ui/logout", headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert out.status_code == 303 and session_rows(app) == []
    assert ended(copy)
    assert browser.get("/ui/cases", follow_redirects=False).headers["location"].startswith("/ui/login")
    again = signed_in(app, key)  # the key itself still works
    assert again.get("/v1/cases").status_code == 200 and not ended(again)
    earlier = again.cookies[COOKIE]
    sign_in(again, key)  # signing in again replaces the browser's session: a copy of the earlier one ends
    assert ended(copy_of(app, earlier)) and len(session_rows(app)) == 1 and not ended(again)


def test_revoking_a_key_ends_its_sessions_at_once(db_url, tmp_path):
    app, admin, key = review_service(db_url, tmp_path)
    browsers = [signed_in(app, key), signed_in(app, key)]  # two desks, one key
    other_key, other_record = app.state.store.create_key("reviewer", "other")
    other = signed_in(app, other_key)
    record = next(k for k in app.state.store.list_keys() if k.name == "reviewer")
    assert TestClient(app).delete(f"/v1/keys/{record.id}", headers=admin).status_code == 200
    assert all(ended(b) for b in browsers)
    assert [r.key_id for r in session_rows(app)] == [other_record.id]  # its sessions are deleted
    assert other.get("/v1/cases").status_code == 200  # another key's session goes on


def test_an_expired_session_is_refused_and_removed_at_a_later_sign_in(db_url, tmp_path):
    app, _, key = review_service(db_url, tmp_path, session_hours=1.5 / 3600)  # a second and a half
    browser = signed_in(app, key)
    assert browser.get("/v1/cases").status_code == 200
    time.sleep(1.6)
    assert ended(browser)
    fresh = signed_in(app, key)
    assert fresh.get("/v1/cases").status_code == 200
    (row,) = session_rows(app)  # the expired one is gone
    assert row.token_hash == hashlib.sha256(fresh.cookies[COOKIE].encode()).hexdigest()


@pytest.mark.parametrize("hours", [float("inf"), float("nan"), 1e9])
def test_a_session_lifetime_past_any_date_is_refused_by_the_configuration(tmp_path, hours):
    with pytest.raises(ValueError, match="session_hours"):  # was: accepted, then every sign-in a 500
        ServiceConfig(data_dir=tmp_path, session_hours=hours)
    app, _, key = review_service(f"sqlite:///{tmp_path / 'c.db'}", tmp_path, session_hours=24 * 366)
    assert signed_in(app, key).get("/v1/cases").status_code == 200  # the longest allowed signs in


def test_the_case_history_shows_a_deadline_in_local_time_as_the_details_do(env):
    app, client, keys, _ = env
    cid = ingest(client, keys, source_id="cam-history").json()["case_id"]
    rv = auth(keys["reviewer"])
    client.post(f"/v1/cases/{cid}/review", json={"action": "confirm"}, headers=rv).raise_for_status()
    body = {"department": "环卫所", "deadline": "2030-12-03T00:00:00Z"}
    client.post(f"/v1/cases/{cid}/dispatch", json=body, headers=rv).raise_for_status()
    page = signed_in(app, keys["reviewer"]).get(f"/ui/cases/{cid}").text
    assert '<dd id="deadline">2030-12-03 08:00</dd>' in page  # Asia/Shanghai
    history = page[page.index('class="history"') :]
    assert "deadline: 2030-12-03 08:00" in history and "2030-12-03T00:00:00" not in history, history[:1500]


def test_supervisors_list_overdue_cases_and_a_departments_cases_on_the_review_page(env):
    app, client, keys, _ = env
    rv = auth(keys["reviewer"])
    ids = [
        ingest(client, keys, source_id="cam-late", box=(i * 100, 0, i * 100 + 40, 40)).json()["case_id"]
        for i in range(3)
    ]
    deadline = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    for cid, department in zip(ids, ("交警大队", "交警大队", "环卫所"), strict=True):
        client.post(f"/v1/cases/{cid}/review", json={"action": "confirm"}, headers=rv).raise_for_status()
        body = {"department": department, "deadline": deadline}
        client.post(f"/v1/cases/{cid}/dispatch", json=body, headers=rv).raise_for_status()
    with Session(app.state.store.write_engine) as session, session.begin():  # a passed deadline (the API refuses one)
        session.get(Case, ids[0]).deadline = datetime.now(timezone.utc) - timedelta(hours=2)
    browser = signed_in(app, keys["reviewer"])

    def listed(**params: str) -> list[int]:
        page = browser.get("/ui/cases", params={"camera": "cam-late", **params}).text
        return sorted(int(n) for n in re.findall(r'<tr data-case="(\d+)"', page))

    assert listed() == sorted(ids)
    assert listed(overdue="true") == [ids[0]]
    assert listed(department="交警大队") == sorted(ids[:2]) and listed(department="环卫所") == [ids[2]]
    assert listed(department="环卫所", overdue="true") == []
    page = browser.get("/ui/cases", params={"overdue": "true", "department": "交警大队"}).text
    assert 'name="overdue" value="true" checked' in page and '<option value="交警大队" selected' in page
    assert re.search(r'id="overdue-chip">已超期 Overdue <b>1</b>', page)  # a chip like the status ones
    assert "overdue=true" in re.search(r'<a class="chip st-new[^"]*" href="([^"]+)"', page)[1]  # the chips keep it
    stats = browser.get("/ui/stats", params={"since": T0.date().isoformat(), "until": T0.date().isoformat()}).text
    assert 'id="kpi-overdue" href="/ui/cases?overdue=true"' in stats
    assert 'href="/ui/cases?department=%E4%BA%A4%E8%AD%A6%E5%A4%A7%E9%98%9F"' in stats  # its row links its cases


def test_long_source_names_on_the_statistics_page_end_in_an_ellipsis_with_the_full_name_in_a_tooltip(env):
    app, client, keys, _ = env
    name = "东门 East gate, northbound lane 3 (temporary pole)"  # 49 characters
    seen = T0 + timedelta(days=900)  # a day of its own: the chart shows the top 12 sources
    ingest(client, keys, source_id="cam-long-name", source_name=name, first_seen=seen, last_seen=seen)
    day = seen.date().isoformat()
    page = signed_in(app, keys["reviewer"]).get("/ui/stats", params={"since": day, "until": day}).text
    assert f"<title>{name}: 1</title>" in page
    assert f'class="lbl">{name[:23]}…</text>' in page and f">{name[:24]}<" not in page


def test_a_case_page_leads_back_only_to_the_case_list(env):
    app, client, keys, _ = env
    cid = ingest(client, keys, source_id="cam-back").json()["case_id"]
    browser = signed_in(app, keys["reviewer"])
    listing = browser.get("/ui/cases", params={"camera": "cam-back", "status": "new"}).text
    link = f'/ui/cases/{cid}?back=/ui/cases%3Fstatus%3Dnew%26camera%3Dcam-back%26page%3D1"'
    assert f'class="caseno" href="{link}' in listing
    back = browser.get(f"/ui/cases/{cid}", params={"back": "/ui/cases?status=new&camera=cam-back&page=1"}).text
    assert 'href="/ui/cases?status=new&amp;camera=cam-back&amp;page=1" id="back"' in back
    for elsewhere in ("https://evil.example/ui/cases", "//evil.example/ui/cases", "/ui/cases/../../v1/keys", "/\\x"):
        page = browser.get(f"/ui/cases/{cid}", params={"back": elsewhere}).text
        assert 'href="/ui/cases" id="back"' in page, elsewhere


def test_a_reopened_case_shows_its_last_department_as_the_previous_assignment(env):
    app, client, keys, _ = env
    rv = auth(keys["reviewer"])
    cid = ingest(client, keys, source_id="cam-reopen").json()["case_id"]
    client.post(f"/v1/cases/{cid}/review", json={"action": "confirm"}, headers=rv).raise_for_status()
    body = {"department": "环卫所", "deadline": "2030-12-03T00:00:00Z"}
    client.post(f"/v1/cases/{cid}/dispatch", json=body, headers=rv).raise_for_status()
    client.post(f"/v1/cases/{cid}/resolve", json={}, headers=rv).raise_for_status()
    browser = signed_in(app, keys["reviewer"])
    page = browser.get(f"/ui/cases/{cid}").text
    assert '<dd id="department">环卫所</dd>' in page and 'id="previous"' not in page  # resolved by it
    client.post(f"/v1/cases/{cid}/reopen", json={"note": "not cleared"}, headers=rv).raise_for_status()
    page = browser.get(f"/ui/cases/{cid}").text
    assert '<dd id="department">—</dd>' in page and '<dd id="deadline">—</dd>' in page
    assert '<dd id="previous">环卫所 · 期限 due 2030-12-03 08:00</dd>' in page
    row = browser.get("/ui/cases", params={"camera": "cam-reopen"}).text
    row = row[row.index(f'<tr data-case="{cid}"') :]
    row = row[: row.index("</tr>")]
    assert "原派遣 previously 环卫所" in row and "期限 due" not in row
