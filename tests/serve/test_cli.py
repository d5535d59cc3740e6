"""``streetwatch keys`` and ``streetwatch serve`` (the `make run` command) as a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
import pytest
from servetest import REPO, free_port
from sqlalchemy import create_engine, text

from pipeline.cli import main


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


def test_cli_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["keys", "create", "--role", "ingest", "--db", "mysql://x/y", "--data-dir", str(tmp_path)])
    assert exc.value.code == 2 and "unsupported database 'mysql'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["keys", "revoke", "7", "--data-dir", str(tmp_path)])
    assert "no key 7" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("port: -4\n")
    with pytest.raises(SystemExit):
        main(["serve", "--config", str(tmp_path / "bad.yaml"), "--data-dir", str(tmp_path)])
    assert "invalid service configuration" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_demo_prints_the_review_page_and_a_working_key(tmp_path):
    """What `make run` does: the service on 127.0.0.1 with the default model and a SQLite store."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "serve",
            "--demo",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not any("review page" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}/ui/cases" in output
        assert "model yolo11n-coco-interim@" in output and "audited 8 sample photos" in output
        assert (tmp_path / "data" / "streetwatch.db").exists()
        key = re.search(r"demo reviewer key \(shown once\): (\S+)", output).group(1)
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/ui/login", data={"key": key, "next": "/ui/cases"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/cases" and "streetwatch_key" in r.cookies
    finally:
        proc.terminate()
        proc.wait(20)
