"""Reliability against a real uvicorn service in a subprocess: concurrent producers, kill -9 during
ingestion, and a list of bad inputs each answered with the right 4xx while the service stays healthy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servetest import REPO, ServiceProcess, empty_database, make_violation
from synth import huge_png

from serve.store import CaseFilter, CaseStore

WORKER = Path(__file__).resolve().parent / "ingest_worker.py"
pytestmark = pytest.mark.slow


def run_workers(target: str, specs: list[dict], env: dict | None = None) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), target, json.dumps(spec)],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for spec in specs
    ]


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def all_cases(db_url: str, data_dir: Path) -> tuple[list, CaseStore]:
    store = CaseStore(db_url, data_dir)
    cases, _ = store.list_cases(CaseFilter(), limit=10_000)
    return cases, store


def test_concurrent_http_producers_no_duplicates_none_lost(tmp_path):
    service = ServiceProcess(tmp_path / "data").start()
    key = service.key("ingest")
    try:
        # four processes; each key is sent by two of them, twice (open, then ended)
        keys = [[f"w{p}-{i}" for i in range(15)] for p in range(2)]
        specs = [{"keys": keys[p % 2], "repeat": 2} for p in range(4)]
        results = finish(run_workers(f"{service.url}?key={key}&spool={tmp_path}/spool", specs))
        assert [r["pending"] for r in results] == [0, 0, 0, 0]
    finally:
        service.stop()
    # stopped, it closed its store: the write-ahead log is folded into the database file, none left beside it
    assert not (service.data_dir / "streetwatch.db-wal").exists()
    cases, store = all_cases(f"sqlite:///{service.data_dir / 'streetwatch.db'}", service.data_dir)
    try:
        filed = sorted(k for c in cases for k in store.occurrence_keys(c.id))
        assert filed == sorted(k for ks in keys for k in ks)  # every key exactly once
        assert len(cases) == 30 and all(c.occurrences == 1 for c in cases)
        assert all(store.history(c.id)[-1].details.get("state") == "ended" for c in cases)
    finally:
        store.dispose()


def test_concurrent_store_writers_on_postgres_dedup_without_races(pg_database, tmp_path):
    """Stream workers writing straight into PostgreSQL: same place, different keys, at the same time ->
    one case with one occurrence per key (the advisory lock), and repeated keys never duplicate."""
    empty_database(pg_database)
    keys = [f"same-{i}" for i in range(12)]
    specs = [{"keys": keys[p::2], "same_place": True, "repeat": 2} for p in range(2)]
    specs.append({"keys": keys, "same_place": True})
    finish(run_workers(pg_database, specs, env={"STREETWATCH_DATA_DIR": str(tmp_path / "data")}))
    cases, store = all_cases(pg_database, tmp_path / "data")
    try:
        assert len(cases) == 1 and cases[0].occurrences == 12
        assert sorted(store.occurrence_keys(cases[0].id)) == sorted(keys)
    finally:
        store.dispose()


def test_kill_9_during_ingestion_then_restart_exactly_once(tmp_path):
    service = ServiceProcess(tmp_path / "data").start()
    key = service.key("ingest")
    db = service.data_dir / "streetwatch.db"
    n = 120
    spec = {"keys": [f"k9-{i}" for i in range(n)], "delay": 0.01}
    worker = run_workers(f"{service.url}?key={key}&spool={tmp_path}/spool", [spec])
    deadline = time.monotonic() + 60
    store = CaseStore(f"sqlite:///{db}", service.data_dir)
    try:
        while store.list_cases(CaseFilter(), limit=1)[1] < 25:  # let ingestion get going
            assert time.monotonic() < deadline
            time.sleep(0.05)
        service.kill()  # kill -9 mid-stream
        at_kill = store.list_cases(CaseFilter(), limit=1)[1]
        assert at_kill < n
        time.sleep(1.0)  # the worker keeps emitting into its spool, retrying with backoff
        service.start()
        result = finish(worker)[0]
        assert result == {"emitted": n, "pending": 0}
        cases, total = store.list_cases(CaseFilter(), limit=10_000)
        assert total == n and sorted(k for c in cases for k in store.occurrence_keys(c.id)) == sorted(spec["keys"])
        assert all(c.occurrences == 1 for c in cases)
    finally:
        store.dispose()
        service.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A running service with the shipped model."""
    data = tmp_path_factory.mktemp("live") / "data"
    service = ServiceProcess(data, config={"batching": {"enabled": True, "max_wait_ms": 5}}).start()
    keys = {role: service.key(role) for role in ("ingest", "reviewer")}
    yield service, keys
    service.stop()


def test_bad_inputs_get_the_right_4xx_and_the_service_stays_healthy(live, sample_photos):
    service, keys = live
    photo = sample_photos[0].read_bytes()
    ing = {"Authorization": f"Bearer {keys['ingest']}"}
    rev = {"Authorization": f"Bearer {keys['reviewer']}"}
    v = make_violation(key="good")
    r = httpx.post(
        f"{service.url}/v1/cases/ingest",
        content=v.model_dump_json(),
        headers={**ing, "Content-Type": "application/json"},
    )
    assert r.status_code == 201
    sha = v.evidence[0].sha256

    def detect(body: bytes, ctype: str = "image/jpeg", headers: dict = ing):
        return httpx.post(
            f"{service.url}/v1/detect", content=body, headers={**headers, "Content-Type": ctype}, timeout=60
        )

    cases = [
        ("truncated JPEG", lambda: detect(photo[: len(photo) // 3]), 422, "corrupt or truncated"),
        ("zero bytes", lambda: detect(b""), 422, "empty file"),
        ("text file", lambda: detect(b"GET /etc/passwd\n" * 20, "text/plain"), 415, "unsupported content type"),
        ("text as jpeg", lambda: detect(b"just some text\n" * 20), 422, "not an image"),
        ("30000x30000 PNG", lambda: detect(huge_png(), "image/png"), 413, "30000x30000"),
        ("oversized upload", lambda: detect(photo + b"\0" * (21 * 1024 * 1024)), 413, "too large"),
        ("missing key", lambda: detect(photo, headers={}), 401, "API key is required"),
        ("wrong key", lambda: detect(photo, headers={"Authorization": "Bearer sw_ing_forged"}), 401, "invalid"),
        (
            "wrong role",
            lambda: httpx.post(f"{service.url}/v1/cases/1/review", json={"action": "confirm"}, headers=ing),
            403,
            "may not review",
        ),
        (
            "malformed JSON",
            lambda: httpx.post(
                f"{service.url}/v1/cases/ingest",
                content=b'{"key": [1, 2',
                headers={**ing, "Content-Type": "application/json"},
            ),
            400,
            "malformed JSON",
        ),
        (
            "traversal ../",
            lambda: httpx.get(f"{service.url}/v1/evidence/..%2F..%2Fstreetwatch.db", headers=rev),
            404,
            "",
        ),
        ("traversal dots", lambda: httpx.get(f"{service.url}/v1/evidence/..", headers=rev), 404, ""),
        (
            "traversal encoded",
            lambda: httpx.get(f"{service.url}/v1/evidence/%2e%2e%2f%2e%2e%2fetc%2fpasswd", headers=rev),
            404,
            "",
        ),
        (
            "evidence id with suffix",
            lambda: httpx.get(f"{service.url}/v1/evidence/{sha}.jpg", headers=rev),
            404,
            "64 hex digits",
        ),
    ]
    for name, call, status, reason in cases:
        r = call()
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        assert reason in r.text, (name, r.text[:300])
        assert httpx.get(f"{service.url}/healthz").status_code == 200, name
    assert httpx.get(f"{service.url}/v1/evidence/{sha}", headers=rev).content == v.evidence[0].jpeg
    good = detect(photo)
    assert good.status_code == 200 and good.json()["detections"]
    assert httpx.get(f"{service.url}/readyz").json()["status"] == "ready"
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'status="500"' not in metrics  # nothing above was a server error
