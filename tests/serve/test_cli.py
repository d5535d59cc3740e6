"""``streetwatch keys``, ``streetwatch evidence prune`` and ``streetwatch serve`` (the `make run` command) as a
user runs them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from servetest import REPO, free_port, jpeg, make_violation
from sqlalchemy import create_engine, text, update
from sqlalchemy.orm import Session

from models.registry import resolve
from pipeline.cli import main
from serve.cli import demo_key
from serve.db import Case
from serve.store import Actor, CaseFilter, CaseStore

DEFAULT_MODEL = resolve().card.name


def test_keys_create_prints_the_key_once_and_stores_only_its_hash(tmp_path, capsys):
    assert main(["keys", "create", "--role", "reviewer", "--name", "desk 3", "--data-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert re.fullmatch(r"sw_rev_[A-Za-z0-9_-]{40,}", key) and "not shown again" in err and key not in err
    engine = create_engine(f"sqlite:///{tmp_path / 'streetwatch.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).mappings().all()
    engine.dispose()
    assert len(rows) == 1 and rows[0]["role"] == "reviewer" and key not in str(dict(rows[0]))
    assert main(["keys", "list", "--data-dir", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "desk 3" in listed and key[:12] in listed and key not in listed and "active" in listed
    assert main(["keys", "revoke", "1", "--data-dir", str(tmp_path)]) == 0
    main(["keys", "list", "--data-dir", str(tmp_path)])
    assert "revoked" in capsys.readouterr().out


def test_a_key_name_that_is_not_utf8_is_a_cli_error_naming_the_option(tmp_path):
    """Bytes that are not UTF-8 in --name reached the database and raised UnicodeEncodeError (a traceback)."""
    cmd = [sys.executable, "-m", "pipeline.cli", "keys", "create", "--role", "ingest", "--name", b"x\xff"]
    out = subprocess.run([*cmd, "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "streetwatch: error: --name 'x\\xff' is not valid UTF-8 text" in out.stderr
    assert not (tmp_path / "streetwatch.db").exists()  # refused before a store is made


def test_a_config_file_that_is_not_utf8_is_named_in_the_error(tmp_path, capsys):
    binary = tmp_path / "garbage.yaml"
    binary.write_bytes(b"\xa5\x00\xff" * 50)
    for command in (["keys", "list"], ["serve"]):
        with pytest.raises(SystemExit) as exc:
            main([*command, "--data-dir", str(tmp_path), "--config", str(binary)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"{binary}: not UTF-8 text (byte 0xa5 at offset 0)" in err, command


def test_cli_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["keys", "create", "--role", "ingest", "--db", "mysql://x/y", "--data-dir", str(tmp_path)])
    assert exc.value.code == 2 and "unsupported database 'mysql'" in capsys.readouterr().err
    for command in (["list"], ["revoke", "7"]):  # a mistyped --data-dir: no new empty store made there
        with pytest.raises(SystemExit):
            main(["keys", *command, "--data-dir", str(tmp_path / "dat")])
        assert "no case store at" in capsys.readouterr().err and not (tmp_path / "dat").exists()
    with pytest.raises(SystemExit):
        main(["keys", "list", "--db", "notaurl"])
    assert "cannot open the case store notaurl: Could not parse" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a mistyped SQLite file, the same
        main(["keys", "list", "--db", f"sqlite:///{tmp_path / 'typo.db'}"])
    assert "typo.db: check --db" in capsys.readouterr().err and not (tmp_path / "typo.db").exists()
    assert main(["keys", "create", "--role", "ingest", "--data-dir", str(tmp_path)]) == 0
    assert "no case store at" in capsys.readouterr().err  # said when the first key makes the store
    with pytest.raises(SystemExit):
        main(["keys", "revoke", "7", "--data-dir", str(tmp_path)])
    assert "no key 7" in capsys.readouterr().err
    with socket.socket() as taken:  # another service on the port: refused before a key or banner is made
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit):
            main(["serve", "--demo", "--port", str(taken.getsockname()[1]), "--data-dir", str(tmp_path)])
        err = capsys.readouterr()
        assert f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}" in err.err and "demo" not in err.out
    for content, reason in [
        ("port: -4\n", "bad.yaml: invalid service configuration: port: Input should be greater than or equal to 0"),
        ("webhok: http://x\n", "bad.yaml: invalid service configuration: webhok: Extra inputs are not permitted"),
        ("limits: [\n", "bad.yaml: invalid YAML: while parsing"),
    ]:
        (tmp_path / "bad.yaml").write_text(content)
        with pytest.raises(SystemExit):
            main(["serve", "--config", str(tmp_path / "bad.yaml"), "--data-dir", str(tmp_path)])
        assert reason in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--config", str(tmp_path / "none.yaml"), "--data-dir", str(tmp_path)])
    assert "none.yaml: no such configuration file" in capsys.readouterr().err


def test_each_demo_start_replaces_the_last_demo_key(tmp_path):
    store = CaseStore(f"sqlite:///{tmp_path / 'streetwatch.db'}", tmp_path)
    try:
        desk, _ = store.create_key("reviewer", "demo-room 3")
        first, second = demo_key(store), demo_key(store)
        assert store.verify_key(first) is None and store.verify_key(second).name.startswith("serve --demo 20")
        assert store.verify_key(desk).name == "demo-room 3"  # a key someone made stays
    finally:
        store.dispose()


def test_evidence_prune_lists_then_removes_the_pictures_of_long_closed_cases(tmp_path, capsys):
    store = CaseStore(f"sqlite:///{tmp_path / 'streetwatch.db'}", tmp_path)
    try:
        reviewer = Actor("alice", "reviewer")
        old, kept = (make_violation(key=k, source_id=k) for k in ("cam-old", "cam-new"))
        old_id, kept_id = store.ingest(old).case_id, store.ingest(kept).case_id
        for cid in (old_id, kept_id):
            store.review(cid, "confirm", reviewer)
            store.dispatch(cid, "环卫所", datetime.now(timezone.utc) + timedelta(days=1), reviewer)
            store.resolve(cid, reviewer)
            store.close(cid, reviewer)
        with Session(store.write_engine) as s, s.begin():  # closed 40 days ago
            s.execute(
                update(Case).where(Case.id == old_id).values(closed_at=datetime.now(timezone.utc) - timedelta(40))
            )
        orphan, _ = store.evidence.put(jpeg(31))
        then = time.time() - 2 * 86400
        os.utime(store.evidence.root / orphan[:2] / f"{orphan}.jpg", (then, then))
        crashed = store.evidence.root / orphan[:2] / f".{orphan}.jpg.1.2.tmp"  # a write a crash cut short
        crashed.write_bytes(b"partial")
        os.utime(crashed, (then, then))
    finally:
        store.dispose()
    files = {p.stem for p in (tmp_path / "evidence").rglob("*.jpg")}
    size = len(old.evidence[0].jpeg) + len(jpeg(31)) + len(b"partial")
    prune = ["evidence", "prune", "--closed-for", "30", "--data-dir", str(tmp_path)]
    assert main([*prune, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"case #{old_id:<6} closed" in out and f"#{kept_id} " not in out and f"no case      {orphan}" in out
    assert f"would remove 2 evidence files, {size:,} bytes ({size / 1e6:.1f} MB): 1 file of 1 case closed" in out
    assert "1 file that no case references, 1 unfinished write a crash left behind" in out
    assert {p.stem for p in (tmp_path / "evidence").rglob("*.jpg")} == files  # a dry run changes nothing
    assert main(prune) == 0
    assert f"removed 2 evidence files, {size:,} bytes" in capsys.readouterr().out and not crashed.exists()
    assert {p.stem for p in (tmp_path / "evidence").rglob("*.jpg")} == {kept.evidence[0].sha256}
    assert main(prune) == 0
    assert "removed 0 evidence files, 0 bytes" in capsys.readouterr().out
    for option, value, reason in (("--grace", "0.5", "at least 1 (hour)"), ("--closed-for", "-1", "above 0")):
        with pytest.raises(SystemExit):
            main([*prune, option, value])
        assert f"argument {option}" in (err := capsys.readouterr().err) and reason in err, err
    (tmp_path / "service.yaml").write_text("retention:\n  closed_for_days: 30\n")  # the service's period
    assert main(["evidence", "prune", "--data-dir", str(tmp_path), "--config", str(tmp_path / "service.yaml")]) == 0
    assert (
        "removed 0 evidence files, 0 bytes (0.0 MB): 0 files of 0 cases closed or dismissed before"
        in capsys.readouterr().out
    )
    with pytest.raises(SystemExit):
        main(["evidence", "prune", "--data-dir", str(tmp_path)])
    assert "give --closed-for DAYS (or retention.closed_for_days in the --config file)" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_demo_runs_the_demo_cameras_into_the_review_queue(tmp_path):
    """What `make run` does: the service on 127.0.0.1 with the default model, a SQLite store and the demo
    cameras feeding it. The pavement camera's parked scooter and bicycle become illegal_parking cases with
    evidence (the lot camera's cars never stop); camera states are in /metrics and /readyz; SIGTERM stops
    the cameras and the service cleanly."""
    port, data = free_port(), tmp_path / "data"
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--demo", "--speed", "2", "--data-dir", str(data)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any("review page" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.1)
        output = "".join(lines)
        assert f"{url}/ui/cases" in output and f"model {DEFAULT_MODEL}@" in output
        assert "demo cameras: lot-aisle" in output and "pavement-1" in output
        key = re.search(r"demo reviewer key \(shown once, replaces the last one\): (\S+)", output).group(1)
        auth = {"Authorization": f"Bearer {key}"}
        parked: list[dict] = []
        while not parked:  # the scooter stands 8 s (4 s at double speed) in the no-parking zone
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            with contextlib.suppress(httpx.HTTPError):
                parked = httpx.get(f"{url}/v1/cases", params={"type": "illegal_parking"}, headers=auth).json()["items"]
            time.sleep(0.5)
        case = parked[0]
        assert case["source"] == "camera" and case["source_id"] == "pavement-1" and case["zone"] == "pavement"
        assert case["status"] == "new" and case["model_version"].startswith(f"{DEFAULT_MODEL}@")
        assert {e["kind"] for e in case["evidence"]} == {"frame", "crop", "clean"}
        picture = httpx.get(url + case["evidence"][0]["url"], headers=auth)
        assert picture.status_code == 200 and picture.content[:2] == b"\xff\xd8"
        history = httpx.get(f"{url}/v1/cases/{case['id']}/history", headers=auth).json()
        assert history[0]["actor"] == "demo-camera (ingest)" and history[0]["action"] == "created"
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["status"] == "ready" and ready["checks"]["cameras"] == {"lot-aisle": "live", "pavement-1": "live"}
        metrics = httpx.get(f"{url}/metrics").text
        for camera in ("lot-aisle", "pavement-1"):
            assert f'streetwatch_camera_state{{camera="{camera}",state="live"}} 1.0' in metrics
            processed = re.search(rf'streetwatch_camera_frames_processed_total\{{camera="{camera}"\}} (\S+)', metrics)
            assert processed and float(processed.group(1)) > 0
        assert re.search(r'streetwatch_ingested_violations_total\{outcome="created"\} [1-9]', metrics)
        r = httpx.post(f"{url}/ui/login", data={"key": key, "next": "/ui/cases"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/cases" and "streetwatch_key" in r.cookies
        page = httpx.get(f"{url}/ui/cases", cookies=r.cookies)
        assert f'data-case="{case["id"]}"' in page.text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        reader.join(5)
    output = "".join(lines)
    # uvicorn shuts down, then re-raises the signal it caught: killed by SIGTERM after a clean shutdown
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in output, output[-3000:]
    assert "Traceback" not in output and "could not be delivered" not in output
    store = CaseStore(f"sqlite:///{data / 'streetwatch.db'}", data)
    try:
        cases, _ = store.list_cases(CaseFilter())
        assert cases and {c.source_id for c in cases} == {"pavement-1"}  # the cars in the aisle never stop
        assert {c.detector_class for c in cases} <= {"motorbike", "bicycle"}
    finally:
        store.dispose()
