"""The store's view for retraining, on SQLite and PostgreSQL: reviewed cases with the verdict and the model's
original class, the cases a shared frame belongs to, and a store created by the first release."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from alembic import command
from alembic.config import Config
from servetest import jpeg, make_violation
from sqlalchemy import inspect

from pipeline.cases import EvidenceImage
from serve.db import MIGRATIONS_DIR, make_engine, schema_revision
from serve.store import Actor, CaseStore

ALICE = Actor("alice", "reviewer")


def test_reviewed_cases_carry_verdict_correction_and_window(store):
    shared = EvidenceImage(kind="clean", jpeg=jpeg(5))
    ids = [
        store.ingest(
            make_violation(
                key=f"k{i}",
                source_id=f"cam{i}",
                type="exposed_garbage",
                detector_class="litter",
                evidence=[EvidenceImage(kind="frame", jpeg=jpeg(10 + i)), shared],
            )
        ).case_id
        for i in range(4)
    ]
    store.review(ids[0], "relabel", ALICE, type="overflowing_bin")
    store.review(ids[0], "relabel", ALICE, type="exposed_garbage")  # back again: the model's class is kept
    store.review(ids[1], "relabel", ALICE, type="illegal_parking", detector_class="car")
    store.review(ids[2], "dismiss", ALICE)
    cut = datetime.now(timezone.utc)
    store.dispatch(ids[1], "环卫所", cut + timedelta(days=1), ALICE)  # confirmed, then moved on: still a label
    got = {r.case.id: r for r in store.reviewed_cases()}
    assert set(got) == set(ids[:3])  # ids[3] was never reviewed
    assert (got[ids[0]].verdict, got[ids[0]].model_class, got[ids[0]].corrected) == ("confirmed", "litter", False)
    assert (got[ids[1]].verdict, got[ids[1]].case.detector_class, got[ids[1]].model_class) == (
        "confirmed",
        "car",
        "litter",
    )
    assert got[ids[1]].corrected and got[ids[1]].case.status == "dispatched"
    assert got[ids[2]].verdict == "dismissed" and got[ids[2]].reviewed_at <= cut
    assert store.reviewed_cases(since=cut) == []
    assert [r.case.id for r in store.reviewed_cases(until=cut, ids=[ids[2], ids[3]])] == [ids[2]]
    users = store.evidence_cases([shared.sha256, "0" * 64])
    assert users == {
        shared.sha256: [(ids[0], "confirmed"), (ids[1], "dispatched"), (ids[2], "dismissed"), (ids[3], "new")]
    }


def test_a_store_from_the_first_release_upgrades_and_keeps_its_cases(tmp_path):
    """A case store as release 0001 left it (no reviewed_at index, no case version, no outbox lease token, no
    review sessions) is migrated on start, keeps its cases, which get the version their history gives, and can
    be acted on with it at once."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    made = CaseStore(url, tmp_path / "data")
    case_id = made.ingest(make_violation(key="before")).case_id  # frame only, as producers filed then
    made.review(case_id, "confirm", ALICE)
    made.dispose()
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:  # back to the first release's schema, the case kept
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    assert schema_revision(engine) == "0001"
    assert "version" not in {c["name"] for c in inspect(engine).get_columns("cases")}
    assert "lease_token" not in {c["name"] for c in inspect(engine).get_columns("outbox")}
    assert "review_sessions" not in inspect(engine).get_table_names()
    engine.dispose()
    store = CaseStore(url, tmp_path / "data")  # migrates to head on start
    try:
        assert schema_revision(store.write_engine) == "0006"
        assert "review_sessions" in inspect(store.write_engine).get_table_names()
        assert "lease_token" in {c["name"] for c in inspect(store.write_engine).get_columns("outbox")}
        assert "ix_cases_reviewed_at" in {i["name"] for i in inspect(store.write_engine).get_indexes("cases")}
        (reviewed,) = store.reviewed_cases()
        assert reviewed.case.id == case_id and {e.kind for e in reviewed.case.evidence} == {"frame"}
        assert reviewed.case.status == "confirmed" and reviewed.case.version == 1  # its history's one action
        deadline = datetime.now(timezone.utc) + timedelta(days=1)
        assert store.dispatch(case_id, "环卫所", deadline, ALICE, version=1).version == 2
    finally:
        store.dispose()
