"""Evidence files on SQLite and PostgreSQL: a refused ingestion leaves none behind; the retention policy
(``streetwatch evidence prune``) removes the pictures of long-closed cases and files of no case, never one
that an open case or a concurrent ingestion needs; a removed picture is a clear state in the API and pages."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from servetest import jpeg, sign_in
from sqlalchemy import update
from sqlalchemy.orm import Session
from waiting import wait_for

from pipeline.cases import EvidenceImage
from serve.app import create_app
from serve.config import RetentionConfig, ServiceConfig
from serve.db import Case, utcnow
from serve.store import Actor, InvalidRequest

ALICE = Actor("alice", "reviewer")


def on_disk(store) -> set[str]:
    """Evidence ids of the files in the store's folder."""
    return {p.stem for p in store.evidence.root.rglob("*.jpg")}


def test_a_refused_ingest_leaves_no_new_evidence_files(store, violation):
    """A key reused for another violation is refused (422) after its pictures were written: they stayed on
    disk with no case referencing them. A picture the refused violation shares with a case stays."""
    first = violation(key="reused", source_id="cam-a")
    store.ingest(first)
    kept = first.evidence[0]
    fresh = EvidenceImage(kind="crop", jpeg=jpeg(4242))
    other = first.model_copy(update={"source_id": "cam-b", "evidence": [kept, fresh]})
    with pytest.raises(InvalidRequest, match="already filed"):
        store.ingest(other)
    assert on_disk(store) == {kept.sha256}
    assert store.evidence.read(kept.sha256) == kept.jpeg


def test_a_refused_ingest_keeps_a_file_a_concurrent_ingest_is_filing(store, violation, monkeypatch):
    """The refused ingestion wrote a picture; another one, with the same bytes (a photo's clean frame is in
    every case found on it), found it there and has not committed yet when the first removes it: the
    second case must still have its picture."""
    store.ingest(violation(key="reused", source_id="cam-a"))
    shared = EvidenceImage(kind="clean", jpeg=jpeg(777))
    refused = violation(key="reused", source_id="cam-b", evidence=[shared])
    accepted = violation(key="fine", source_id="cam-c", evidence=[shared])
    put = store.evidence.put
    second_put, refused_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            store.ingest(accepted)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def paused_put(data: bytes) -> tuple[str, bool]:
        result = put(data)
        if threading.current_thread() is threading.main_thread():  # the refused one wrote it: the other comes
            worker.start()
            assert second_put.wait(30)
        else:  # the second found it there: it waits before its transaction until the first is refused
            second_put.set()
            assert refused_done.wait(30)
        return result

    worker = threading.Thread(target=second)
    monkeypatch.setattr(store.evidence, "put", paused_put)
    with pytest.raises(InvalidRequest):
        store.ingest(refused)
    refused_done.set()
    worker.join(60)
    assert not errors and not worker.is_alive()
    cases = store.evidence_cases([shared.sha256])[shared.sha256]
    assert len(cases) == 1
    assert store.evidence.read(shared.sha256) == shared.jpeg


def closed(store, case_id: int) -> None:
    """Take a new case through its lifecycle to closed."""
    store.review(case_id, "confirm", ALICE)
    store.dispatch(case_id, "环卫所", datetime.now(timezone.utc) + timedelta(days=1), ALICE)
    store.resolve(case_id, ALICE)
    store.close(case_id, ALICE)


def aged(store, sha: str, hours: float) -> None:
    """Date an evidence file back by ``hours``."""
    then = (datetime.now(timezone.utc) - timedelta(hours=hours)).timestamp()
    os.utime(store.evidence.root / sha[:2] / f"{sha}.jpg", (then, then))


def test_prune_removes_the_pictures_of_long_closed_and_dismissed_cases_and_old_files_of_no_case(store, violation):
    shared = EvidenceImage(kind="clean", jpeg=jpeg(1))  # a photo's clean frame: in both of its cases
    old_closed = violation(key="a", source_id="cam-a", evidence=[EvidenceImage(kind="frame", jpeg=jpeg(2)), shared])
    still_open = violation(key="b", source_id="cam-b", evidence=[EvidenceImage(kind="frame", jpeg=jpeg(3)), shared])
    dismissed, recent = violation(key="c", source_id="cam-c"), violation(key="d", source_id="cam-d")
    a, b, c, d = (store.ingest(v).case_id for v in (old_closed, still_open, dismissed, recent))
    closed(store, a)
    store.review(c, "dismiss", ALICE)
    cutoff = utcnow()
    closed(store, d)  # closed after the cutoff: kept
    orphan, _ = store.evidence.put(jpeg(4))  # written by an ingestion that failed long ago
    aged(store, orphan, 48)
    in_flight, _ = store.evidence.put(jpeg(5))  # an ingestion writing it now: not committed yet
    before = on_disk(store)

    plan = store.prune_evidence(cutoff, utcnow() - timedelta(hours=24), dry_run=True)
    assert [(p.case_id, p.status, p.files) for p in plan.cases] == [(a, "closed", 1), (c, "dismissed", 1)]
    assert [f.sha256 for f in plan.orphans] == [orphan] and plan.files == 3
    gone = {old_closed.evidence[0].sha256, dismissed.evidence[0].sha256, orphan}
    assert plan.freed == sum(len(store.evidence.read(sha)) for sha in gone) and plan.freed > 0
    assert on_disk(store) == before and "evidence pruned" not in [h.action for h in store.history(a)]

    done = store.prune_evidence(cutoff, utcnow() - timedelta(hours=24))
    assert (done.cases, done.orphans, done.freed, done.dry_run) == (plan.cases, plan.orphans, plan.freed, False)
    assert on_disk(store) == before - gone and in_flight in on_disk(store) and shared.sha256 in on_disk(store)
    case = store.get_case(a)  # the case stays, its pictures marked
    pruned = {e.sha256: e.pruned_at for e in case.evidence}
    assert pruned[shared.sha256] is None and pruned[old_closed.evidence[0].sha256] >= cutoff
    assert all(e.pruned_at is None for e in store.get_case(b).evidence + store.get_case(d).evidence)
    entry = store.history(a)[-1]
    assert (entry.action, entry.actor, entry.details["files"]) == ("evidence pruned", "retention", 1)
    assert store.history(c)[-1].action == "evidence pruned"
    again = store.prune_evidence(cutoff, utcnow() - timedelta(hours=24))
    assert (again.cases, again.orphans, again.freed) == ([], [], 0)  # nothing left to do

    store.review(b, "dismiss", ALICE)  # the last case holding the shared frame expires too (and d, by now)
    later = store.prune_evidence(utcnow(), utcnow() - timedelta(hours=24))
    assert [(p.case_id, p.files) for p in later.cases] == [(a, 1), (b, 2), (d, 1)] and later.case_files == 3
    assert on_disk(store) == {in_flight}
    assert later.freed == sum(len(e.jpeg) for e in (shared, still_open.evidence[0], recent.evidence[0]))


CRASHING_WRITER = """
import os, sys
from serve.evidence import EvidenceStore
os.replace = lambda *a: os._exit(9)  # killed after writing, before the rename
EvidenceStore(sys.argv[1]).put(bytes.fromhex(sys.argv[2]))
"""


def test_prune_sweeps_what_a_writer_killed_mid_write_left_once_it_is_old(store, tmp_path):
    data = jpeg(7)
    run = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(store.evidence.root), data.hex()], check=False)
    assert run.returncode == 9
    (left,) = store.evidence.root.glob("??/.*.tmp")  # nothing renamed: no evidence id points at it
    assert on_disk(store) == set() and left.stat().st_size == len(data)
    writing = left.with_name(".abc.jpg.1.2.tmp")  # a write in progress now
    writing.write_bytes(b"partial")
    then = (datetime.now(timezone.utc) - timedelta(hours=48)).timestamp()
    os.utime(left, (then, then))

    plan = store.prune_evidence(utcnow(), utcnow() - timedelta(hours=24), dry_run=True)
    assert (plan.unfinished, plan.freed, plan.files) == (1, len(data), 0) and left.exists()
    done = store.prune_evidence(utcnow(), utcnow() - timedelta(hours=24))
    assert (done.unfinished, done.freed) == (1, len(data))
    assert not left.exists() and writing.read_bytes() == b"partial"
    assert store.prune_evidence(utcnow(), utcnow() - timedelta(hours=24)).unfinished == 0


def test_a_leftover_the_prune_may_not_remove_does_not_stop_it(store, violation, monkeypatch):
    cid = store.ingest(v := violation(key="k")).case_id
    closed(store, cid)
    theirs = store.evidence.root / "ab" / ".ab.jpg.7.7.tmp"  # another user's, in a folder of theirs
    theirs.parent.mkdir()
    theirs.write_bytes(b"partial")
    then = (datetime.now(timezone.utc) - timedelta(hours=48)).timestamp()
    os.utime(theirs, (then, then))
    unlink = Path.unlink

    def refused(self: Path, missing_ok: bool = False) -> None:
        if self == theirs:
            raise PermissionError(13, "Permission denied", str(self))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    done = store.prune_evidence(utcnow(), utcnow() - timedelta(hours=24))
    assert [c.case_id for c in done.cases] == [cid] and done.unfinished == 0 and theirs.exists()
    assert v.evidence[0].sha256 not in on_disk(store) and done.freed == len(v.evidence[0].jpeg)


def test_a_reopened_case_keeps_its_pictures_and_a_picture_filed_again_comes_back(store, violation):
    v = violation(key="k")
    cid = store.ingest(v).case_id
    closed(store, cid)
    store.reopen(cid, ALICE, note="parked again")
    assert store.prune_evidence(utcnow(), utcnow()).cases == []
    assert v.evidence[0].sha256 in on_disk(store)
    store.dispatch(cid, "环卫所", datetime.now(timezone.utc) + timedelta(days=1), ALICE)
    store.resolve(cid, ALICE)
    store.close(cid, ALICE)
    assert [p.case_id for p in store.prune_evidence(utcnow(), utcnow()).cases] == [cid]
    assert on_disk(store) == set()
    store.ingest(v)  # the producer sends the violation again: its picture is there again, and shown
    assert store.evidence.read(v.evidence[0].sha256) == v.evidence[0].jpeg
    assert [e.pruned_at for e in store.get_case(cid).evidence] == [None]


def test_prune_keeps_a_picture_a_concurrent_ingestion_is_filing(store, violation, monkeypatch):
    """A new case with the same bytes as a long-closed one wrote (found) its picture and has not committed
    when the prune removes the closed case's picture: the new case must still have it."""
    picture = EvidenceImage(kind="frame", jpeg=jpeg(9))
    old = store.ingest(violation(key="old", source_id="cam-a", evidence=[picture])).case_id
    closed(store, old)
    put = store.evidence.put
    found, pruned = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def paused_put(data: bytes) -> tuple[str, bool]:
        result = put(data)
        found.set()
        assert pruned.wait(30)
        return result

    def ingest() -> None:
        try:
            store.ingest(violation(key="new", source_id="cam-b", evidence=[picture]))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    monkeypatch.setattr(store.evidence, "put", paused_put)
    worker = threading.Thread(target=ingest)
    worker.start()
    assert found.wait(30)
    result = store.prune_evidence(utcnow(), utcnow() + timedelta(hours=1))  # no grace either
    pruned.set()
    worker.join(60)
    assert not errors and not worker.is_alive() and [p.case_id for p in result.cases] == [old]
    assert store.evidence.read(picture.sha256) == picture.jpeg
    users = store.evidence_cases([picture.sha256])[picture.sha256]
    assert [status for _, status in users] == ["closed", "new"]


def test_prune_waits_for_an_ingestion_in_its_transaction_and_keeps_its_picture(store, violation, monkeypatch):
    """The ingestion is between checking its picture and committing when the prune (no grace period) finds
    the file referenced by no committed case: the prune waits for the commit and then sees the case."""
    picture = EvidenceImage(kind="frame", jpeg=jpeg(11))
    keep = store.evidence.keep
    checked = threading.Event()
    errors: list[BaseException] = []

    def slow_keep(sha: str, data: bytes) -> None:
        keep(sha, data)
        checked.set()
        time.sleep(1.0)  # still in its transaction: the prune must wait

    def ingest() -> None:
        try:
            store.ingest(violation(key="new", evidence=[picture]))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    monkeypatch.setattr(store.evidence, "keep", slow_keep)
    worker = threading.Thread(target=ingest)
    worker.start()
    assert checked.wait(30)
    result = store.prune_evidence(utcnow(), utcnow() + timedelta(hours=1))
    worker.join(60)
    assert not errors and result.orphans == []
    assert store.evidence.read(picture.sha256) == picture.jpeg


def service_with_a_case(db_url, tmp_path, violation):
    """A service (no detector), a reviewer's key, and a violation filed as a case."""
    app = create_app(ServiceConfig(data_dir=tmp_path / "svc", db_url=db_url, load_detector=False))
    key = app.state.store.create_key("reviewer", "desk")[0]
    v = violation(key="k")
    return app, key, v, app.state.store.ingest(v).case_id


def test_a_pruned_picture_is_gone_with_a_date_in_the_api_and_on_the_review_pages(db_url, tmp_path, violation):
    app, key, v, cid = service_with_a_case(db_url, tmp_path, violation)
    store = app.state.store
    closed(store, cid)
    sha = v.evidence[0].sha256
    store.prune_evidence(utcnow(), utcnow())
    with TestClient(app) as client:
        sign_in(client, key)
        rv = {"Authorization": f"Bearer {key}"}
        r = client.get(f"/v1/evidence/{sha}", headers=rv)
        assert r.status_code == 410 and "removed by the retention policy on 20" in r.json()["detail"], r.text
        (listed,) = client.get(f"/v1/cases/{cid}/evidence", headers=rv).json()
        assert listed["sha256"] == sha and listed["pruned_at"] is not None
        assert client.get(f"/v1/evidence/{'0' * 64}", headers=rv).status_code == 404  # never filed: unknown
        page = client.get(f"/ui/cases/{cid}")
        assert page.status_code == 200 and "Evidence removed by the retention policy on" in page.text
        assert f"/v1/evidence/{sha}" not in page.text and "evidence pruned" in page.text
        listing = client.get("/ui/cases")
        assert listing.status_code == 200 and "已删除 removed" in listing.text and sha not in listing.text
    store.dispose()


def test_a_browser_revalidates_a_picture_so_a_pruned_one_is_not_shown_from_its_cache(db_url, tmp_path, violation):
    app, key, v, cid = service_with_a_case(db_url, tmp_path, violation)
    store = app.state.store
    sha = v.evidence[0].sha256
    with TestClient(app) as client:
        rv = {"Authorization": f"Bearer {key}"}
        first = client.get(f"/v1/evidence/{sha}", headers=rv)
        assert first.status_code == 200 and first.content == v.evidence[0].jpeg
        assert first.headers["cache-control"] == "private, no-cache" and first.headers["etag"] == f'"{sha}"'
        again = client.get(f"/v1/evidence/{sha}", headers={**rv, "If-None-Match": first.headers["etag"]})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", f'"{sha}"')
        other = client.get(f"/v1/evidence/{sha}", headers={**rv, "If-None-Match": '"' + "0" * 64 + '"'})
        assert other.status_code == 200 and other.content == v.evidence[0].jpeg
        for tags in (f'W/"{sha}"', f'"{"1" * 64}", W/"{sha}"', f'"{"1" * 64}",W/"{sha}"', "*"):
            listed = client.get(f"/v1/evidence/{sha}", headers={**rv, "If-None-Match": tags})
            assert (listed.status_code, listed.content) == (304, b""), tags  # was: 200 for '*'
        for tags in (f'"x{sha}"', f'"{sha}x"', sha):  # a tag that only contains the id is another one
            different = client.get(f"/v1/evidence/{sha}", headers={**rv, "If-None-Match": tags})
            assert different.status_code == 200 and different.content == v.evidence[0].jpeg, tags
        signed_out = client.get(f"/v1/evidence/{sha}", headers={"If-None-Match": first.headers["etag"]})
        assert signed_out.status_code == 401
        closed(store, cid)
        store.prune_evidence(utcnow(), utcnow())
        gone = client.get(f"/v1/evidence/{sha}", headers={**rv, "If-None-Match": first.headers["etag"]})
        assert gone.status_code == 410, gone.text
    store.dispose()


def test_the_service_prunes_by_itself_when_a_retention_period_is_configured(db_url, tmp_path, violation):
    retention = RetentionConfig(closed_for_days=30, every_hours=0.0003)  # a run a second, in the test
    app = create_app(ServiceConfig(data_dir=tmp_path / "svc", db_url=db_url, load_detector=False, retention=retention))
    store = app.state.store
    old, recent = violation(key="old", source_id="cam-a"), violation(key="recent", source_id="cam-b")
    old_id, recent_id = store.ingest(old).case_id, store.ingest(recent).case_id
    for cid in (old_id, recent_id):
        closed(store, cid)
    with Session(store.write_engine) as s, s.begin():  # closed 40 days ago
        s.execute(update(Case).where(Case.id == old_id).values(closed_at=utcnow() - timedelta(days=40)))
    with TestClient(app) as client:
        wait_for(lambda: store.get_case(old_id).evidence[0].pruned_at, 30, "the service's retention run")
        assert app.state.retention.last is not None
        ready = client.get("/readyz").json()["checks"]["retention"]
        assert ready["running"] and ready["last_run"] and ready["last_removed_files"] >= 1, ready
        assert ready["last_error"] is None and ready["closed_for_days"] == 30, ready
    assert on_disk(store) == {recent.evidence[0].sha256}
    assert (
        store.history(old_id)[-1].action == "evidence pruned"
        and store.get_case(recent_id).evidence[0].pruned_at is None
    )
    store.dispose()


def test_a_failing_retention_run_is_reported_by_readyz_and_tried_again(db_url, tmp_path, violation):
    """The evidence folder is away (a volume not mounted): the run fails, /readyz says why, the next run that
    finds the folder goes through and clears the error."""
    retention = RetentionConfig(closed_for_days=30, every_hours=0.0003)  # a run a second, in the test
    app = create_app(ServiceConfig(data_dir=tmp_path / "svc", db_url=db_url, load_detector=False, retention=retention))
    root = app.state.store.evidence.root
    away = root.with_name("evidence-away")
    root.rename(away)
    with TestClient(app) as client:
        wait_for(lambda: client.get("/readyz").json()["checks"]["retention"]["last_error"], 30, "a failed run")
        status = client.get("/readyz").json()["checks"]["retention"]
        assert "FileNotFoundError" in status["last_error"] and status["last_run"] is None, status
        away.rename(root)
        wait_for(lambda: client.get("/readyz").json()["checks"]["retention"]["last_run"], 30, "a run that went through")
        assert client.get("/readyz").json()["checks"]["retention"]["last_error"] is None
    app.state.store.dispose()
