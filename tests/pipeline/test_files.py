"""Folders written beside their place and renamed into it."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from disks import fill, tmpfs

from pipeline import files
from pipeline.files import INCOMING, atomic_write, disk_full, replace_folder, staged_folder, write_figure

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


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_replace_folder_swaps_in_the_new_folder_and_carries_the_caches_over(tmp_path: Path):
    out = tmp_path / "out"
    with staged_folder(out) as work:  # no folder there yet: renamed into place
        (work / "v1").write_text("first")
        (work / "work" / "cache").mkdir(parents=True)
        (work / "work" / "cache" / "c.json").write_text("cached")
        replace_folder(work, out)
    assert tree(out) == {"v1": b"first", "work/cache/c.json": b"cached"}
    with staged_folder(out) as work:
        (work / "v2").write_text("second")
        replace_folder(work, out, keep=("work/cache", "work/absent"))
    assert tree(out) == {"v2": b"second", "work/cache/c.json": b"cached"}  # nothing else of the old one
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staged or set-aside folder left


@pytest.mark.parametrize("exchange", [True, False], ids=["swapped", "renamed-aside"])
def test_replace_folder_that_fails_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("earlier")
    rename = Path.rename

    def failing(self: Path, target):  # the new folder cannot go in once the old one is set aside
        if Path(target) == out and self.parent.name.startswith(f".out{INCOMING}"):
            raise OSError(errno.EIO, "Input/output error", str(self))
        return rename(self, target)

    def failing_swap(a, b):
        raise OSError(errno.EIO, "Input/output error", str(b))

    monkeypatch.setattr(Path, "rename", failing)
    monkeypatch.setattr(files, "exchange_folders", failing_swap if exchange else lambda a, b: False)
    with pytest.raises(OSError, match="Input/output error") as exc, staged_folder(out) as work:
        (work / "new").write_text("complete")
        replace_folder(work, out)
    assert exc.value.filename == str(out)  # the staged folder's name means nothing to the user
    assert tree(out) == {"old": b"earlier"} and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replace_folder_never_leaves_a_moment_without_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("earlier")
    missing = []
    rename = Path.rename

    def watched(self: Path, target):  # a reader (a training run) looking at every step finds a dataset
        done = rename(self, target)
        if not out.is_dir():
            missing.append((self.name, Path(target).name))
        return done

    monkeypatch.setattr(Path, "rename", watched)
    with staged_folder(out) as work:
        (work / "new").write_text("complete")
        (work / "work").mkdir()
        (out / "work" / "cache").mkdir(parents=True)
        (out / "work" / "cache" / "c.json").write_text("cached")
        replace_folder(work, out, keep=("work/cache",))
    assert missing == [] and tree(out) == {"new": b"complete", "work/cache/c.json": b"cached"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replace_folder_on_a_mount_point_replaces_what_it_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A volume mounted at OUT (a container's) cannot be renamed: its contents are replaced, and put back
    when that fails."""
    with tmpfs(tmp_path / "out", "1m") as out:
        (out / "old").write_text("earlier")
        (out / "work" / "cache").mkdir(parents=True)
        (out / "work" / "cache" / "c.json").write_text("cached")
        rename = Path.rename

        def failing(self: Path, target):  # the second new entry cannot go in
            if self.name == "v2b":
                raise OSError(errno.EIO, "Input/output error", str(self))
            return rename(self, target)

        with monkeypatch.context() as m, pytest.raises(OSError, match="Input/output") as exc:
            m.setattr(Path, "rename", failing)
            with staged_folder(out) as work:
                assert work.parent.parent == out  # staged on the volume itself
                (work / "v2a").write_text("second")
                (work / "v2b").write_text("second")
                replace_folder(work, out, keep=("work/cache",))
        assert exc.value.filename == str(out)
        assert tree(out) == {"old": b"earlier", "work/cache/c.json": b"cached"} and sorted(os.listdir(out)) == [
            "old",
            "work",
        ]
        with staged_folder(out) as work:
            (work / "v2a").write_text("second")
            replace_folder(work, out, keep=("work/cache",))
        assert os.path.ismount(out) and sorted(os.listdir(out)) == ["v2a", "work"]
        assert tree(out) == {"v2a": b"second", "work/cache/c.json": b"cached"}


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_names_the_file(tmp_path: Path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        target = disk / "result.bin"
        target.write_bytes(b"previous")
        fill(disk)
        with pytest.raises(OSError) as exc:
            atomic_write(target, b"\1" * 100_000)
        assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(target)  # was: no file named
        assert target.read_bytes() == b"previous" and sorted(p.name for p in disk.iterdir()) == ["filler", "result.bin"]


def test_write_figure_renders_in_memory_and_writes_atomically(tmp_path: Path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import cv2
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    try:
        assert write_figure(tmp_path / "plot.png", fig, dpi=50) == tmp_path / "plot.png"
        assert cv2.imread(str(tmp_path / "plot.png")).shape[:2] == (100, 150)
        with tmpfs(tmp_path / "disk", "64k") as disk:
            (disk / "plot.png").write_bytes(b"an earlier plot")
            fill(disk)
            with pytest.raises(OSError) as exc:
                write_figure(disk / "plot.png", fig, dpi=300)
            assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(disk / "plot.png")
            assert (disk / "plot.png").read_bytes() == b"an earlier plot"
            assert sorted(p.name for p in disk.iterdir()) == ["filler", "plot.png"]
    finally:
        plt.close(fig)


def test_disk_full_finds_a_full_disk_behind_the_errors_libraries_raise(tmp_path: Path, monkeypatch):
    from pipeline import files

    run = tmp_path / "run"
    wrapped = RuntimeError("saving the checkpoint failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    for exc in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota"), wrapped):
        found = disk_full(exc, run)
        assert found is not None and found.errno in (errno.ENOSPC, errno.EDQUOT) and found.filename == str(run)
    torch_says = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert disk_full(torch_says, run) is None  # room enough on this disk: some other failure
    assert disk_full(OSError(errno.EACCES, "Permission denied"), run) is None
    assert disk_full(ValueError("bad"), run) is None
    monkeypatch.setattr(files, "NEARLY_FULL", 1 << 62)  # now every disk is full
    assert disk_full(torch_says, run).errno == errno.ENOSPC


@pytest.mark.parametrize("exchange", [True, False], ids=["swapped", "renamed-aside"])
def test_replace_folder_through_a_symbolic_link_replaces_the_folder_it_leads_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
):
    real = tmp_path / "disk" / "dataset"  # a dataset kept on another disk, reached through a link
    (real / "work" / "cache").mkdir(parents=True)
    (real / "old").write_text("earlier")
    (real / "work" / "cache" / "c.json").write_text("cached")
    out = tmp_path / "out"
    out.symlink_to(real)
    if not exchange:
        monkeypatch.setattr(files, "exchange_folders", lambda a, b: False)
    with staged_folder(out) as work:  # was: NotADirectoryError once the new folder was complete
        (work / "new").write_text("complete")
        replace_folder(work, out, keep=("work/cache",))
    assert out.is_symlink() and out.resolve() == real.resolve()
    assert tree(real) == {"new": b"complete", "work/cache/c.json": b"cached"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "out"]
    assert [p.name for p in real.parent.iterdir()] == ["dataset"]  # nothing staged or set aside left
