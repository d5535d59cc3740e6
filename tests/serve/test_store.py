"""The case store on SQLite and PostgreSQL: ingestion, dedup, lifecycle, history, queries, stats, keys."""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from servetest import T0, empty_database, jpeg
from sqlalchemy import create_engine, delete, func, inspect, select, text, update
from sqlalchemy.orm import Session
from waiting import wait_for

from pipeline.cases import EvidenceImage, GeoPoint
from pipeline.photos import violation_key
from serve import lifecycle
from serve.config import DedupConfig, WebhookConfig
from serve.db import ApiKey, Case, History, OutboxEvent, ReviewSession, make_engine, schema_revision
from serve.lifecycle import IllegalTransition
from serve.store import Actor, CaseChanged, CaseFilter, CaseNotFound, CaseStore, InvalidRequest

ALICE = Actor("alice", "reviewer")


def future(hours: float = 24) -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=hours)


def test_migrations_create_the_schema_and_match_the_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from serve.db import Base

    assert schema_revision(store.write_engine) == "0006"
    assert {"cases", "occurrences", "evidence", "history", "api_keys", "outbox", "review_sessions"} <= set(
        inspect(store.write_engine).get_table_names()
    )
    with store.write_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    assert diff == []
    CaseStore(store.db_url, store.data_dir).dispose()  # a second start migrates nothing and fails nothing


def test_sqlite_runs_in_wal_mode(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_ingest_creates_then_updates_by_key(store, violation):
    v = violation(key="cam1:7")
    first = store.ingest(v, Actor("worker-1", "ingest"))
    assert first.created and first.outcome == "created" and first.status == "new"
    better = EvidenceImage(kind="frame", jpeg=jpeg(99))
    later = v.model_copy(
        update={"state": "ended", "last_seen": T0 + timedelta(minutes=5), "score": 0.93, "evidence": [better]}
    )
    again = store.ingest(later)
    assert (again.case_id, again.outcome, again.created) == (first.case_id, "updated", False)
    assert store.ingest(v).outcome == "updated"  # an old repeat: still the same case, no regression
    placed = store.ingest(v.model_copy(update={"location": GeoPoint(lat=31.2304, lon=121.4737)}))
    assert placed.outcome == "updated"  # filed again with the position it lacked: the case gets it
    assert store.get_case(first.case_id).location == GeoPoint(lat=31.2304, lon=121.4737)
    case = store.get_case(first.case_id)
    assert case.occurrences == 1
    assert case.last_seen == T0 + timedelta(minutes=5) and case.score == pytest.approx(0.93)
    assert case.evidence[0].sha256 == better.sha256  # best evidence first
    assert {e.sha256 for e in case.evidence} == {better.sha256, v.evidence[0].sha256}
    assert store.evidence.read(better.sha256) == better.jpeg
    assert store.list_cases(CaseFilter())[1] == 1
    actions = [h.action for h in store.history(first.case_id)]
    assert actions == ["created", "updated"] and store.history(first.case_id)[0].actor == "worker-1 (ingest)"


def test_evidence_is_content_addressed_on_disk(store, violation):
    v = violation()
    store.ingest(v)
    sha = v.evidence[0].sha256
    path = store.evidence.path(sha)
    assert path.read_bytes() == v.evidence[0].jpeg and hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert path.is_relative_to(store.data_dir / "evidence")
    for bad in ("../../etc/passwd", sha[:-1] + "G", sha.upper(), "0" * 64):
        with pytest.raises(LookupError):
            store.evidence.path(bad)


def test_dedup_merges_the_same_place_within_the_window(store, violation):
    a = store.ingest(violation(key="a"))
    b = store.ingest(
        violation(
            key="b", box=(14, 22, 112, 95), first_seen=T0 + timedelta(minutes=10), last_seen=T0 + timedelta(minutes=12)
        )
    )
    assert b.outcome == "merged" and b.case_id == a.case_id
    far = store.ingest(violation(key="c", box=(400, 200, 500, 300)))  # elsewhere in the view
    late = store.ingest(violation(key="d", first_seen=T0 + timedelta(hours=3), last_seen=T0 + timedelta(hours=3)))
    other_cam = store.ingest(violation(key="e", source_id="cam2"))
    other_type = store.ingest(violation(key="f", type="exposed_garbage", detector_class="litter"))
    assert all(r.created for r in (far, late, other_cam, other_type))
    case = store.get_case(a.case_id)
    assert case.occurrences == 2 and case.last_seen == T0 + timedelta(minutes=12)
    assert store.occurrence_keys(a.case_id) == ["a", "b"]
    assert [h.action for h in store.history(a.case_id)] == ["created", "merged"]


def test_dedup_by_gps_for_patrol_photos(store, violation):
    here = GeoPoint(lat=31.2304, lon=121.4737)
    near = GeoPoint(lat=31.23045, lon=121.47375)  # ~7 m away
    kw = dict(source="photo", type="exposed_garbage", detector_class="litter", zone=None)
    a = store.ingest(violation(key="p1", source_id="photo-a", location=here, **kw))
    b = store.ingest(violation(key="p2", source_id="photo-b", location=near, **kw))
    c = store.ingest(violation(key="p3", source_id="photo-c", location=GeoPoint(lat=31.2404, lon=121.4737), **kw))
    assert b.outcome == "merged" and b.case_id == a.case_id and c.created
    # two objects of one photo are two violations, even side by side at one GPS point (overlapping, as
    # parked cars seen at an angle do); the first car filed again with a box a few pixels off (another
    # model version) is its own case, and so is the same car photographed again from another photo
    car = dict(source="photo", type="illegal_parking", detector_class="car", zone=None, location=here)

    def photo_car(photo: str, box: tuple[int, int, int, int]):
        return store.ingest(
            violation(key=violation_key(photo * 64, "illegal_parking", box), source_id=photo * 64, box=box, **car)
        )

    one, two = photo_car("d", (10, 20, 110, 90)), photo_car("d", (70, 20, 170, 90))  # IoU 0.25
    assert one.created and two.created and two.case_id != one.case_id
    refiled = photo_car("d", (12, 22, 112, 92))
    assert refiled.outcome == "merged" and refiled.case_id == one.case_id
    again = photo_car("e", (0, 0, 90, 70))
    assert again.outcome == "merged" and again.case_id in (one.case_id, two.case_id)
    # a camera's position is the camera's, not the object's: two places in one view stay two cases
    cam = dict(location=here, source_id="cam9")
    assert store.ingest(violation(key="c1", **cam)).created
    assert store.ingest(violation(key="c2", box=(300, 200, 400, 300), **cam)).created


def test_dedup_skips_closed_cases_and_can_be_disabled(store, violation, db_url, tmp_path):
    a = store.ingest(violation(key="a"))
    store.review(a.case_id, "dismiss", ALICE)
    assert store.ingest(violation(key="b")).created  # a dismissed case is not "open"
    plain = CaseStore(db_url, tmp_path / "d2", dedup=DedupConfig(enabled=False))
    try:
        assert plain.ingest(violation(key="c")).created and plain.ingest(violation(key="d")).created
    finally:
        plain.dispose()


def test_full_lifecycle_with_history(store, violation):
    cid = store.ingest(violation()).case_id
    assert store.review(cid, "confirm", ALICE, note="clearly parked").status == "confirmed"
    deadline = future(48)
    case = store.dispatch(cid, "交警大队", deadline, ALICE)
    assert case.status == "dispatched" and case.department == "交警大队" and case.deadline == deadline
    assert store.resolve(cid, Actor("dept", "reviewer"), note="car towed").status == "resolved"
    assert store.close(cid, ALICE).status == "closed"
    reopened = store.reopen(cid, ALICE, note="parked again")
    assert reopened.status == "confirmed" and reopened.resolved_at is None
    history = store.history(cid)
    assert [(h.action, h.from_status, h.to_status) for h in history] == [
        ("created", None, "new"),
        ("confirm", "new", "confirmed"),
        ("dispatch", "confirmed", "dispatched"),
        ("resolve", "dispatched", "resolved"),
        ("close", "resolved", "closed"),
        ("reopen", "closed", "confirmed"),
    ]
    assert history[1].actor == "alice (reviewer)" and history[1].details == {"note": "clearly parked"}
    assert history[2].details["department"] == "交警大队"
    assert all(h.at.tzinfo is not None for h in history)


def test_illegal_transitions_are_refused_with_the_reason(store, violation):
    cid = store.ingest(violation()).case_id
    with pytest.raises(IllegalTransition, match=r"case \d+ is new: cannot dispatch \(allowed only from confirmed"):
        store.dispatch(cid, "环卫所", future(), ALICE)
    with pytest.raises(IllegalTransition, match="cannot resolve"):
        store.resolve(cid, ALICE)
    with pytest.raises(IllegalTransition, match="cannot reopen"):
        store.reopen(cid, ALICE, "why")
    store.review(cid, "dismiss", ALICE)
    with pytest.raises(IllegalTransition, match="is dismissed: cannot confirm"):
        store.review(cid, "confirm", ALICE)
    assert store.reopen(cid, ALICE, "looked again").status == "new"  # back to review
    assert store.get_case(cid).status == "new"
    assert [h.action for h in store.history(cid)] == ["created", "dismiss", "reopen"]  # refusals leave no trace
    with pytest.raises(CaseNotFound):
        store.review(12345, "confirm", ALICE)


def test_an_action_decided_on_an_older_version_is_refused(store, violation):
    """Two reviewers with the same case open: the second one's re-dispatch or relabel, decided on what the
    page showed before the first one acted, must not silently replace the first one's decision."""
    cid = store.ingest(violation()).case_id
    seen = store.get_case(cid).version
    assert seen == 0
    store.review(cid, "confirm", ALICE, version=seen)
    bob = Actor("bob", "reviewer")
    with pytest.raises(CaseChanged, match=r"confirm by alice \(reviewer\) at .*now confirmed, version 1"):
        store.review(cid, "relabel", bob, type="small_ad", version=seen)  # legal from confirmed, but stale
    mine = store.dispatch(cid, "环卫所", future(24), ALICE, version=1)
    assert mine.version == 2
    with pytest.raises(CaseChanged, match="dispatch by alice"):
        store.dispatch(cid, "城管中队", future(48), bob, version=1)  # re-dispatch is legal, but stale
    case = store.get_case(cid)
    assert (case.department, case.type, case.version) == ("环卫所", mine.type, 2)
    with pytest.raises(CaseChanged, match="no version 7"):
        store.resolve(cid, bob, version=7)
    # a sighting of the same thing does not change the version: the reviewer's page is not stale for it
    store.ingest(violation().model_copy(update={"key": "again", "last_seen": T0 + timedelta(minutes=3)}))
    assert store.get_case(cid).version == 2
    assert store.dispatch(cid, "城管中队", future(48), bob, version=2).department == "城管中队"  # on the latest
    assert store.resolve(cid, bob).version == 4  # no version given: no check (older API clients)
    assert [h.action for h in store.history(cid)][1:] == ["confirm", "dispatch", "merged", "dispatch", "resolve"]


def test_relabel_corrects_type_and_class(store, violation):
    cid = store.ingest(violation(type="exposed_garbage", detector_class="litter")).case_id
    with pytest.raises(InvalidRequest, match="give 'detector_class'"):
        store.review(cid, "relabel", ALICE, type="illegal_parking")
    with pytest.raises(InvalidRequest, match="does not evidence"):
        store.review(cid, "relabel", ALICE, type="small_ad", detector_class="car")
    case = store.review(cid, "relabel", ALICE, type="overflowing_bin")
    assert (case.type, case.detector_class, case.original_type, case.status) == (
        "overflowing_bin",
        "overflowing_bin",
        "exposed_garbage",
        "confirmed",
    )
    assert store.history(cid)[-1].details["from_type"] == "exposed_garbage"


def test_dispatch_refuses_a_deadline_in_the_past(store, violation):
    cid = store.ingest(violation()).case_id
    store.review(cid, "confirm", ALICE)
    with pytest.raises(InvalidRequest, match="in the past"):
        store.dispatch(cid, "环卫所", datetime.now(timezone.utc) - timedelta(hours=1), ALICE)
    # a department of spaces (the browser's `required` lets them through) would leave the case with no one
    with pytest.raises(InvalidRequest, match="department is blank"):
        store.dispatch(cid, "   ", future(), ALICE)
    assert store.get_case(cid).status == "confirmed"
    store.dispatch(cid, " 环卫所 ", future(), ALICE)
    store.resolve(cid, ALICE)
    with pytest.raises(InvalidRequest, match="reason is blank"):  # a reopen needs its reason
        store.reopen(cid, ALICE, "  \n ")
    assert store.get_case(cid).status == "resolved" and store.get_case(cid).department == "环卫所"


def test_list_filters_and_pagination(store, violation):
    ids = []
    for i in range(7):
        v = violation(
            key=f"k{i}",
            source_id=f"cam{i % 2}",
            first_seen=T0 + timedelta(hours=i),
            last_seen=T0 + timedelta(hours=i, minutes=1),
            **({"type": "small_ad", "detector_class": "small_ad"} if i % 3 == 0 else {}),
        )
        ids.append(store.ingest(v).case_id)
    store.review(ids[1], "confirm", ALICE)
    page, total = store.list_cases(CaseFilter(), offset=0, limit=3)
    assert total == 7 and [c.id for c in page] == ids[::-1][:3]  # newest first
    page2, _ = store.list_cases(CaseFilter(), offset=3, limit=3)
    assert [c.id for c in page2] == ids[::-1][3:6]
    assert store.list_cases(CaseFilter(type=("small_ad",)))[1] == 3
    assert store.list_cases(CaseFilter(source_id="cam1"))[1] == 3
    assert [c.id for c in store.list_cases(CaseFilter(status=("confirmed",)))[0]] == [ids[1]]
    assert store.list_cases(CaseFilter(since=T0 + timedelta(hours=5)))[1] == 2
    assert store.list_cases(CaseFilter(until=T0 + timedelta(hours=2)))[1] == 2


def test_stats_figures(store, violation):
    r = Actor("r", "reviewer")
    ids = [
        store.ingest(violation(key=f"s{i}", source_id=f"cam{i % 2}", box=(i * 90, 0, i * 90 + 60, 50))).case_id
        for i in range(6)
    ]
    store.review(ids[0], "dismiss", r)
    for cid in ids[1:5]:
        store.review(cid, "confirm", r)
    store.dispatch(ids[1], "环卫所", future(1), r)
    store.dispatch(ids[2], "环卫所", future(1), r)
    store.dispatch(ids[3], "交警大队", future(1), r)
    store.resolve(ids[1], r)
    store.resolve(ids[2], r)
    store.close(ids[2], r)
    with Session(store.write_engine) as session, session.begin():  # a passed deadline (the API refuses one)
        session.get(Case, ids[3]).deadline = datetime.now(timezone.utc) - timedelta(hours=2)
    s = store.stats(T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert s.total == 6
    assert {c.key: c.count for c in s.by_type} == {"illegal_parking": 6}
    assert {c.key: c.count for c in s.by_camera} == {"cam0": 3, "cam1": 3}
    assert {c.key: c.count for c in s.by_department} == {"环卫所": 2, "交警大队": 1}
    assert (s.reviewed, s.confirmed, s.confirmation_rate) == (5, 4, 0.8)
    assert s.closure_rate == 0.5  # 2 of 4 confirmed are resolved or closed
    assert s.overdue == 1 and s.resolved_late == 0
    assert s.median_hours_to_resolve is not None and 0 <= s.median_hours_to_resolve < 0.1
    assert {c.key: c.count for c in s.by_status} == {
        "new": 1,
        "confirmed": 1,
        "dismissed": 1,
        "dispatched": 1,
        "resolved": 1,
        "closed": 1,
    }
    assert sum(c.count for c in s.by_day) == 6 and len(s.by_day) == 3
    empty = store.stats(T0 + timedelta(days=10), T0 + timedelta(days=11))
    assert empty.total == 0 and empty.confirmation_rate is None and empty.median_hours_to_resolve is None
    with pytest.raises(InvalidRequest):
        store.stats(T0, T0)


def test_stats_charge_each_department_the_deadlines_it_missed(store, violation):
    """A missed deadline stays missed: a re-dispatch to another department, an extension after the fact or
    a reopened resolution does not make it vanish from the figures (supervisors assess departments on it)."""
    r = Actor("r", "reviewer")
    c1, c2, c3, c4, c5, c6 = (store.ingest(violation(key=f"d{i}", source_id=f"cam-d{i}")).case_id for i in range(6))
    for cid in (c1, c2, c3, c4):
        store.review(cid, "confirm", r)
    store.review(c5, "relabel", r, type="small_ad")
    store.review(c6, "relabel", r, type="illegal_parking", detector_class="motorbike")  # the type stands

    def passed(cid: int) -> None:  # the deadline in force passed 2 hours ago (the API refuses a past one)
        past = datetime.now(timezone.utc) - timedelta(hours=2)
        with Session(store.write_engine) as session, session.begin():
            session.get(Case, cid).deadline = past
            entry = session.scalars(
                select(History).where(History.case_id == cid, History.action == "dispatch").order_by(History.id.desc())
            ).first()
            entry.details = {**entry.details, "deadline": past.isoformat()}

    store.dispatch(c1, "环卫所", future(), r)
    passed(c1)
    store.dispatch(c1, "交警大队", future(), r)  # handed on after 环卫所 let it pass
    store.resolve(c1, r)
    store.dispatch(c2, "环卫所", future(), r)
    store.dispatch(c2, "环卫所", future(48), r)  # an extension before the deadline: nothing missed
    store.dispatch(c3, "交警大队", future(), r)
    passed(c3)
    store.resolve(c3, r)
    late = store.stats(T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert late.resolved_late == 1
    store.reopen(c3, r, "not fixed")  # the late resolution no longer stands
    store.dispatch(c4, "市场监管所", future(), r)
    passed(c4)  # still with it, unresolved
    s = store.stats(T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert (s.overdue, s.resolved_late) == (1, 0)
    assert [(d.department, d.deadlines, d.missed, d.running) for d in s.deadlines] == [
        ("环卫所", 3, 1, 1),  # c2's extension is still running
        ("交警大队", 2, 1, 0),
        ("市场监管所", 1, 1, 0),
    ]
    assert (s.reviewed, s.confirmed, s.relabelled) == (6, 6, 1)
    assert [(c.key, c.count) for c in s.by_month] == [(T0.date().isoformat()[:7], 6)]
    year = store.stats(T0 - timedelta(days=400), T0 + timedelta(days=1))  # beyond a year: no column per day
    assert year.by_day == [] and len(year.by_month) == 14 and year.by_month[-1].key == T0.date().isoformat()[:7]
    assert sum(c.count for c in year.by_month) == 6


def test_api_keys_are_stored_hashed(store):
    key, record = store.create_key("reviewer", "desk-1")
    assert key.startswith("sw_rev_") and len(key) > 40 and record.role == "reviewer"
    with store.reading() as s:
        row = s.scalar(select(ApiKey))
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest() and key not in (row.prefix, row.key_hash)
    assert store.verify_key(key).name == "desk-1"
    assert store.verify_key(key + "x") is None and store.verify_key("") is None
    store.revoke_key(record.id)
    assert store.verify_key(key) is None
    with pytest.raises(InvalidRequest):
        store.create_key("root", "x")


def test_review_sessions_are_stored_hashed_and_end_with_sign_out_expiry_or_the_key(store):
    key, record = store.create_key("reviewer", "desk-1")
    token = store.create_session(record.id, timedelta(hours=12))
    assert key not in token and store.verify_session(token).name == "desk-1"
    with store.reading() as s:
        row = s.scalar(select(ReviewSession))
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() and row.key_id == record.id
    assert store.verify_session(token + "x") is None and store.verify_session("") is None
    assert store.verify_session(key) is None  # the key is no session
    store.end_session(token)
    assert store.verify_session(token) is None
    stale = store.create_session(record.id, timedelta(microseconds=1))
    assert store.verify_session(stale) is None  # expired
    kept = store.create_session(record.id, timedelta(hours=12))  # and deleted by this sign-in
    store.create_session(store.create_key("reviewer", "desk-2")[1].id, timedelta(hours=12))
    with store.reading() as s:
        assert s.scalar(select(func.count()).select_from(ReviewSession)) == 2
    store.revoke_key(record.id)
    assert store.verify_session(kept) is None
    with store.reading() as s:
        assert s.scalar(select(func.count()).select_from(ReviewSession)) == 1  # the other key's session stays


@pytest.fixture
def pg_store(pg_database: str, tmp_path: Path):
    """A case store on the session's PostgreSQL database, emptied (row locks: PostgreSQL only)."""
    empty_database(pg_database)
    s = CaseStore(pg_database, tmp_path / "data")
    yield s
    s.dispose()


def test_a_session_in_use_while_its_key_is_revoked_does_not_deadlock(pg_store):
    store = pg_store
    _, record = store.create_key("reviewer", "desk-1")
    token = store.create_session(record.id, timedelta(hours=12))
    with Session(store.write_engine) as s, s.begin():  # last used a while ago: verifying notes the use
        s.execute(update(ReviewSession).values(last_seen_at=datetime.now(timezone.utc) - timedelta(minutes=5)))
    with Session(store.write_engine) as revoking, revoking.begin():  # revoke_key's steps, paused after the first
        revoking.get(ApiKey, record.id, with_for_update=True)
        verified = []
        verifying = threading.Thread(target=lambda: verified.append(store.verify_session(token)))
        verifying.start()

        def waiting() -> bool:  # asked outside this transaction: its view of pg_locks would not change
            with store.write_engine.connect() as conn:
                return conn.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")) == 1

        wait_for(waiting, 10, "verify_session waiting for the key's row")
        # holding its session's row, it was: so the revoke waited for that until PostgreSQL found the deadlock
        revoking.execute(text("SET LOCAL lock_timeout = '500ms'"))  # (deadlock_timeout: 1 s) and ended one
        revoking.execute(delete(ReviewSession).where(ReviewSession.key_id == record.id))
        revoking.get(ApiKey, record.id).revoked_at = datetime.now(timezone.utc)
    verifying.join(10)
    assert [v.name for v in verified] == ["desk-1"]  # verified before the revoke committed
    assert store.verify_session(token) is None


def test_confirm_enqueues_a_webhook_event_in_the_same_transaction(db_url, tmp_path, violation):
    store = CaseStore(db_url, tmp_path / "d", webhook=WebhookConfig(url="http://127.0.0.1:9/hook"))
    try:
        cid = store.ingest(violation(key="w1")).case_id
        store.review(cid, "confirm", ALICE)
        with store.reading() as s:
            events = list(s.scalars(select(OutboxEvent)))
        assert len(events) == 1 and events[0].event == "confirmed" and events[0].status == "pending"
        assert events[0].idempotency_key == f"streetwatch-case-{cid}-confirmed-1"
        assert events[0].payload["violation_keys"] == ["w1"] and events[0].payload["case"]["status"] == "confirmed"
        store.dispatch(cid, "环卫所", future(), ALICE)  # not in events: nothing enqueued
        assert store.outbox_counts() == {"pending": 1, "delivered": 0, "failed": 0}
    finally:
        store.dispose()


def test_every_status_has_labels_and_transitions_are_consistent():
    assert set(lifecycle.OPEN_STATUSES) <= set(lifecycle.STATUSES)
    for t in lifecycle.TRANSITIONS.values():
        assert set(t.sources) <= set(lifecycle.STATUSES)
        for s in t.sources:
            assert t.target_from(s) in lifecycle.STATUSES
    assert lifecycle.actions_from("closed") == ["reopen"]


def test_postgres_urls_use_psycopg3(pg_database):
    engine = create_engine(pg_database.replace("postgresql+psycopg", "postgresql"))
    engine.dispose()
    assert make_engine(pg_database.replace("postgresql+psycopg://", "postgresql://")).dialect.driver == "psycopg"


# ---------------------------------------------------------------------- races on PostgreSQL, made exact
def _in_flight(url: str, ingest) -> tuple[threading.Thread, list]:
    """``ingest()`` in a thread, returned once it waits on a row lock the test holds."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(ingest()))
    thread.start()
    engine = create_engine(url)
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    try:
        with engine.connect() as conn:
            wait_for(lambda: conn.execute(text(waiting)).scalar() == 1, 20, "the ingest waiting on the row lock")
    finally:
        engine.dispose()
    return thread, out


def test_a_review_committed_while_a_new_sighting_waits_for_its_case_is_seen(pg_database, tmp_path, violation):
    # a reviewer's transaction dismisses the case while a new sighting of the same place looks for an open
    # case: the sighting reads the case open, then waits for its row; once the dismissal commits it must
    # see it, and open a case of its own instead of hiding in a dismissed one
    empty_database(pg_database)
    store = CaseStore(pg_database, tmp_path / "data")
    try:
        first = store.ingest(violation(key="k0"))
        engine = create_engine(pg_database)
        with engine.connect() as review:
            review.execute(text("SELECT id FROM cases WHERE id = :id FOR UPDATE"), {"id": first.case_id})
            review.execute(text("UPDATE cases SET status = 'dismissed' WHERE id = :id"), {"id": first.case_id})
            thread, out = _in_flight(pg_database, lambda: store.ingest(violation(key="k1")))
            review.commit()
        thread.join(30)
        engine.dispose()
        (second,) = out
        assert second.outcome == "created" and second.case_id != first.case_id and second.status == "new"
        assert store.get_case(first.case_id).occurrences == 1
    finally:
        store.dispose()


def test_sightings_of_one_key_with_and_without_a_position_count_every_update(pg_database, tmp_path, violation):
    # two sightings of one photo key, one carrying GPS: they take different place locks, so the occurrence
    # row itself must be locked before it is read, or one update overwrites the other
    empty_database(pg_database)
    store = CaseStore(pg_database, tmp_path / "data")
    try:
        store.ingest(violation(key="k"))
        engine = create_engine(pg_database)
        with engine.connect() as other:  # another sighting's transaction, holding the row mid-update
            other.execute(text("UPDATE occurrences SET updates = updates + 1 WHERE key = 'k'"))
            located = violation(key="k", location=GeoPoint(lat=31.2304, lon=121.4737))
            thread, out = _in_flight(pg_database, lambda: store.ingest(located))
            other.commit()
        thread.join(30)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT updates FROM occurrences WHERE key = 'k'")).scalar() == 3
        engine.dispose()
        assert out[0].outcome == "updated"
    finally:
        store.dispose()


def test_sources_sharing_a_name_are_told_apart_by_their_id(store, violation):
    store.ingest(violation(source_id="cam-a", source_name="人民路 Renmin Rd"))
    store.ingest(violation(source_id="cam-b", source_name="人民路 Renmin Rd"))
    store.ingest(violation(source_id="cam-c", source_name="东门 East gate"))
    assert store.sources() == [
        ("cam-c", "东门 East gate"),
        ("cam-a", "人民路 Renmin Rd [cam-a]"),
        ("cam-b", "人民路 Renmin Rd [cam-b]"),
    ]


def test_a_reopened_case_counts_under_a_department_only_once_dispatched_again(store, violation):
    r = Actor("r", "reviewer")
    cid = store.ingest(violation(key="reopened")).case_id
    store.review(cid, "confirm", r)
    store.dispatch(cid, "环卫所", future(1), r)
    store.resolve(cid, r)
    store.close(cid, r)

    def by_department() -> dict[str, int]:
        s = store.stats(T0 - timedelta(days=1), T0 + timedelta(days=1))
        return {c.key: c.count for c in s.by_department}

    assert by_department() == {"环卫所": 1}  # closed by it: still its case
    store.reopen(cid, r, "rubbish is back")
    assert store.get_case(cid).status == "confirmed" and by_department() == {}  # no department has it now
    store.dispatch(cid, "城管执法中队", future(1), r)
    assert by_department() == {"城管执法中队": 1}
