"""Sinks into the case queue: the store directly (SQLite, PostgreSQL, a data folder) and over HTTP with a
durable spool, through ``pipeline.cases.open_sink`` as stream workers and audits call it."""

from __future__ import annotations

import http.server
import json
import os
import threading

import cv2
import numpy as np
import pytest
from servetest import ServiceProcess, empty_database, jpeg, make_violation
from waiting import wait_for

from pipeline.cases import EvidenceImage, open_sink
from serve.sinks import HttpSink, StoreSink, open_case_sink
from serve.store import CaseFilter, CaseStore


def test_store_sink_targets(tmp_path, pg_database):
    empty_database(pg_database)
    sqlite_file = tmp_path / "a" / "cases.db"
    for target, db in [
        (f"sqlite:///{sqlite_file}", f"sqlite:///{sqlite_file}"),
        (str(tmp_path / "folder"), f"sqlite:///{(tmp_path / 'folder' / 'streetwatch.db').resolve()}"),
        (pg_database, pg_database),
    ]:
        sink = open_sink(target)
        assert isinstance(sink, StoreSink)
        v = make_violation(key=f"k-{len(target)}", source_id=f"cam-{len(target)}")
        sink.emit(v)
        sink.emit(v.model_copy(update={"state": "ended"}))
        sink.close()
        store = CaseStore(db, tmp_path / "unused")
        try:
            cases, total = store.list_cases(CaseFilter(source_id=v.source_id))
            assert total == 1 and store.occurrence_keys(cases[0].id) == [v.key]
        finally:
            store.dispose()
    assert (sqlite_file.parent / "evidence").is_dir()  # evidence beside the SQLite file


def test_bad_targets_are_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("STREETWATCH_API_KEY", raising=False)
    with pytest.raises(ValueError, match="no API key"):
        open_case_sink("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="unknown sink"):
        open_case_sink("ftp://example.org/x")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        open_case_sink(str(tmp_path / "file.txt"))
    with pytest.raises(ValueError, match="database file"):
        open_case_sink("sqlite://")
    with pytest.raises(ValueError, match=r"looks like a file; use FILE\.jsonl"):  # a typo for out.jsonl
        open_case_sink(str(tmp_path / "out.json"))
    assert not (tmp_path / "out.json").exists()  # no data folder made under that name


@pytest.mark.slow
def test_http_sink_spools_while_the_service_is_down_then_delivers(tmp_path, monkeypatch):
    service = ServiceProcess(tmp_path / "data")
    key = service.key("ingest", "camera-worker")
    monkeypatch.setenv("STREETWATCH_API_KEY", key)
    spool = tmp_path / "spool"
    sink = open_sink(f"{service.url}?spool={spool}")  # the service is not running yet
    assert isinstance(sink, HttpSink)
    good = [make_violation(key=f"down-{i}", source_id=f"cam{i}") for i in range(4)]
    for v in good:
        sink.emit(v)
    png = EvidenceImage(kind="frame", jpeg=cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    sink.emit(make_violation(key="bad-evidence", evidence=[png]))
    sink.emit(good[0].model_copy(update={"state": "ended", "evidence": [EvidenceImage(kind="crop", jpeg=jpeg(7))]}))
    assert not sink.flush(timeout_s=1.0) and sink.pending() == 6  # nothing lost while down
    down = sink.undelivered(timeout_s=0.5)  # what an audit asks before it calls anything filed
    assert set(down) == {"down-0", "down-1", "down-2", "down-3", "bad-evidence"}
    assert "service unreachable" in down["down-1"]
    service.start()
    try:
        assert sink.flush(timeout_s=30)
        after = sink.undelivered(timeout_s=5)  # accepted: nothing left; refused: said so, with the reason
        assert list(after) == ["bad-evidence"] and "HTTP 415" in after["bad-evidence"]
        assert sink._mine == {}  # nothing kept of what was sent (a worker runs for weeks)
        sink.close()
        assert sink.sent == 5 and sink.refused == 1
        rejected = list((spool / "rejected").glob("*.json"))
        assert len(rejected) == 1 and json.loads(rejected[0].read_text())["key"] == "bad-evidence"
        reason = next((spool / "rejected").glob("*.reason.txt")).read_text()
        assert "HTTP 415" in reason and "must be JPEG" in reason
    finally:
        service.stop()
    store = CaseStore(f"sqlite:///{service.data_dir / 'streetwatch.db'}", service.data_dir)
    try:
        cases, total = store.list_cases(CaseFilter())
        assert total == 4
        first = next(c for c in cases if store.occurrence_keys(c.id) == ["down-0"])
        assert len(first.evidence) == 2  # the update's evidence joined the same case
        assert sorted(os.listdir(spool)) == ["rejected", "service.lock", "service.url"]
    finally:
        store.dispose()


class _Refuse(http.server.BaseHTTPRequestHandler):
    """A service that refuses every violation it is sent (HTTP 422)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"detail": "evidence[0]: corrupt or truncated image data"}'
        self.send_response(422)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_http_sink_never_loses_sight_of_a_refused_violation(tmp_path):
    """At no moment while the sender handles a refusal may ``undelivered()`` (what an audit asks before it
    records keys as filed) miss the key: it is either still waiting or refused, never taken for accepted.
    The check runs at the instant the sender stops counting the key as waiting."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink = HttpSink(f"http://127.0.0.1:{server.server_port}", "sw_ing_x", spool_dir=tmp_path / "spool")
    seen: list[dict[str, str]] = []

    class Watched(dict):
        def pop(self, name, *default):
            key = super().pop(name, *default)
            seen.append({key: sink.undelivered(0.0).get(key, "MISSING")})  # the refusal file is still spooled
            return key

    sink._mine = Watched()
    try:
        for i in range(3):
            sink.emit(make_violation(key=f"refused-{i}", source_id=f"cam{i}"))
        assert sink.flush(timeout_s=10)
        assert [next(iter(s)) for s in seen] == ["refused-0", "refused-1", "refused-2"]
        assert all("refused by the service, HTTP 422" in next(iter(s.values())) for s in seen), seen
        after = sink.undelivered(0.0)
        assert set(after) == {"refused-0", "refused-1", "refused-2"}
        wait_for(lambda: sink.refused == 3, 10, "the sender to count the last refusal")  # after its file moves
    finally:
        sink.close()
        server.shutdown()


@pytest.mark.parametrize("status", [422, 401])
def test_what_the_service_answers_is_logged_as_one_line(tmp_path, caplog, status):
    """A refusal's text (from the service, or whatever answers at its address) is logged and reported as one
    capped line: its line breaks and terminal escapes cannot forge log lines of the worker."""
    forged = b"no\n2026-11-28 08:00:00 INFO serve.sinks: 1 violation(s) sent\x1b[32m" + b"\r" * 5000

    class Forging(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.send_header("Content-Length", str(len(forged)))
            self.end_headers()
            self.wfile.write(forged)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forging)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink = HttpSink(
        f"http://127.0.0.1:{server.server_port}", "sw_ing_x", spool_dir=tmp_path / "spool", close_timeout_s=0.5
    )
    try:
        with caplog.at_level("ERROR", logger="serve.sinks"):
            sink.emit(make_violation(key="forged"))
            wait_for(lambda: any(r.levelname == "ERROR" for r in caplog.records), 10, "the refusal logged")
            reason = sink.undelivered(0.0)["forged"]
    finally:
        sink.close()
        server.shutdown()
    logged = next(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    for text in (logged, reason):
        assert "no\\n2026-11-28" in text and "\\x1b[32m" in text, text
        assert text.isprintable() and len(text) < 2600, text


def test_a_spool_holding_violations_for_one_service_is_not_sent_to_another(tmp_path, monkeypatch):
    monkeypatch.setenv("STREETWATCH_API_KEY", "sw_ing_x")
    spool = tmp_path / "spool"
    sink = open_case_sink(f"http://127.0.0.1:9?spool={spool}&wait=0")  # nothing listens there
    sink.emit(make_violation(key="for-port-9"))
    sink.close()
    assert sink.pending() == 1
    with pytest.raises(ValueError, match=rf"spool={spool} holds violations for http://127.0.0.1:9, not http://127"):
        open_case_sink(f"http://127.0.0.1:10?spool={spool}&wait=0")
    again = open_case_sink(f"HTTP://127.0.0.1:9/?spool={spool}&wait=0")  # the same service, however typed
    again.close()
    (spool / next(p.name for p in spool.glob("*.json"))).unlink()  # once it is empty, another may take it
    other = open_case_sink(f"http://127.0.0.1:10?spool={spool}&wait=0")
    other.close()
    assert (spool / "service.url").read_text() == "http://127.0.0.1:10\n"


def test_a_service_has_one_default_spool_however_its_url_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("STREETWATCH_API_KEY", "sw_ing_x")
    monkeypatch.setenv("STREETWATCH_SPOOL_DIR", str(tmp_path / "spools"))
    spools = set()
    for url in ("http://Example.org:80/", "http://example.org", "HTTP://EXAMPLE.ORG:80"):
        sink = open_case_sink(f"{url}?wait=0")
        spools.add(sink.spool)
        sink.close()
    assert len(spools) == 1


def test_a_sink_that_cannot_open_is_named_without_its_key(tmp_path, capsys):
    """The error goes to stderr, which ends up in logs: the ingest key is never in it."""
    from pipeline.cli import main

    spool = tmp_path / "spool"
    stuck = open_case_sink(f"http://127.0.0.1:9?key=sw_ing_x&spool={spool}&wait=0")
    stuck.emit(make_violation())
    stuck.close()
    target = f"http://127.0.0.1:10?key=sw_ing_secret&spool={spool}"
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(jpeg(1))
    for argv in (
        ["audit", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--file-cases", target],
        ["watch", "--demo", "--duration", "1", "--sink", target],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and "holds violations for http://127.0.0.1:9" in err, argv
        assert "sw_ing_secret" not in err and "key=***" in err, argv


def test_a_service_url_with_a_password_and_a_bad_port_is_one_line_naming_neither_secret(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(jpeg(1))
    target = "http://u:secretpw@127.0.0.1:99999?key=sw_ing_secret"
    with pytest.raises(SystemExit) as exited:
        main(["audit", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--file-cases", target])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "not a valid port" in err
    assert "secretpw" not in err and "sw_ing_secret" not in err


def test_a_spool_open_for_one_service_cannot_be_taken_by_another_until_it_closes(tmp_path, monkeypatch):
    """Two workers started with one spool= for two services: what the first spools must not be sent by the
    second to its service (the spool was empty when the second opened)."""
    monkeypatch.setenv("STREETWATCH_API_KEY", "sw_ing_x")
    spool = tmp_path / "spool"
    first = open_case_sink(f"http://127.0.0.1:9?spool={spool}&wait=0")
    try:
        with pytest.raises(ValueError, match=r"in use by a worker or audit sending to http://127.0.0.1:9, not"):
            open_case_sink(f"http://127.0.0.1:10?spool={spool}&wait=0")
        same = open_case_sink(f"http://127.0.0.1:9/?spool={spool}&wait=0")  # another worker of that service: fine
        same.close()
    finally:
        first.close()
    other = open_case_sink(f"http://127.0.0.1:10?spool={spool}&wait=0")  # closed and empty: it may change hands
    other.close()
    assert (spool / "service.url").read_text() == "http://127.0.0.1:10\n"


def test_violations_in_a_default_spool_of_an_older_release_are_taken_over(tmp_path, monkeypatch):
    """Before service URLs were normalised, http://127.0.0.1:09 had a default spool of its own: an upgraded
    worker for that service sends what it holds."""
    from serve.sinks import default_spool_dir

    monkeypatch.setenv("STREETWATCH_API_KEY", "sw_ing_x")
    monkeypatch.setenv("STREETWATCH_SPOOL_DIR", str(tmp_path / "spools"))
    stuck = open_case_sink(f"http://127.0.0.1:9?spool={tmp_path / 'made'}&wait=0")
    stuck.emit(make_violation(key="left-by-an-older-worker"))
    stuck.close()
    legacy = default_spool_dir("http://127.0.0.1:09")  # as the older release named it
    legacy.mkdir(parents=True)
    for path in (tmp_path / "made").glob("*.json"):
        path.rename(legacy / path.name)
    sink = open_case_sink("http://127.0.0.1:09?wait=0")
    try:
        assert sink.spool != legacy and sink.pending() == 1 and not list(legacy.glob("*.json"))
    finally:
        sink.close()


def test_credentials_for_a_proxy_reach_the_service_but_never_the_spool(tmp_path, monkeypatch):
    monkeypatch.setenv("STREETWATCH_API_KEY", "sw_ing_x")
    sink = open_case_sink(f"http://gate:pw@127.0.0.1:9/?spool={tmp_path / 'spool'}&wait=0")
    sink.close()
    assert sink.url == "http://gate:pw@127.0.0.1:9/v1/cases/ingest"  # sent as basic auth, as before
    assert (tmp_path / "spool" / "service.url").read_text() == "http://127.0.0.1:9\n"
