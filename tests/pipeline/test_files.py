"""Folders written beside their place and renamed into it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.files import INCOMING, staged_folder

REPO = Path(__file__).resolve().parents[2]

PAUSED = """
import sys
from pathlib import Path
from pipeline.files import staged_folder
with staged_folder(Path(sys.argv[1])) as work:
    (work / "part").write_text("half")
    print(work, flush=True)
    sys.stdin.readline()
"""


def test_a_failed_block_leaves_the_folder_as_it_was_and_errors_name_it(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("earlier")
    with pytest.raises(FileNotFoundError) as exc, staged_folder(out) as work:
        (work / "new").write_text("complete")
        (work / "missing" / "file").write_text("x")  # names a file in the hidden folder
    assert exc.value.filename == str(out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["old"]
    with staged_folder(out) as work:
        (work / "new").write_text("complete")
        shutil.rmtree(out)  # replaced only now that the new one is complete
        work.rename(out)
    assert [p.name for p in out.iterdir()] == ["new"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_what_a_killed_run_left_is_swept_by_the_next_and_a_live_run_is_spared(tmp_path: Path):
    out = tmp_path / "out"

    def paused() -> tuple[subprocess.Popen, Path]:
        proc = subprocess.Popen(
            [sys.executable, "-c", PAUSED, str(out)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        work = Path(proc.stdout.readline().strip())
        assert (work / "part").is_file() and work.parent.name.startswith(f".out{INCOMING}")
        return proc, work.parent

    killed, killed_folder = paused()
    live, live_folder = paused()
    try:
        killed.kill()
        assert killed.wait(30) == -9 and killed_folder.is_dir()  # left behind
        with staged_folder(out) as work:
            assert not killed_folder.exists() and live_folder.is_dir()
            (work / "done").write_text("complete")
            work.rename(out)
    finally:
        live.communicate("\n", timeout=30)
    assert live.returncode == 0 and not live_folder.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["done"]
