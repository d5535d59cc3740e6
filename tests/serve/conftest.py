"""Fixtures of the service tests: a real store on SQLite and PostgreSQL (a database of its own per session)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servetest import empty_database, make_violation

from pipeline.cases import Violation

PG_SERVER = os.environ.get("STREETWATCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("STREETWATCH_REQUIRE_SERVICES") == "1"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A uniquely named PostgreSQL database for this test session, dropped at the end."""
    try:
        admin = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        conn = admin.connect()
    except Exception as exc:
        message = f"PostgreSQL unreachable at {make_url(PG_SERVER).render_as_string()}: {type(exc).__name__}"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message} (STREETWATCH_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    name = f"streetwatch_test_{uuid.uuid4().hex[:12]}"
    conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    finally:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.close()
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a new SQLite file, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cases.db'}"
    url = request.getfixturevalue("pg_database")
    empty_database(url)
    return url


@pytest.fixture
def store(db_url: str, tmp_path: Path):
    from serve.store import CaseStore

    s = CaseStore(db_url, tmp_path / "data")
    yield s
    s.dispose()


@pytest.fixture
def violation() -> Callable[..., Violation]:
    return make_violation
