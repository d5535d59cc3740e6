"""Real small file systems for the tests of a full disk: a tmpfs of a given size, and filling one up."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``256k``, ``8m``) mounted at ``mount`` (made here) for the block (mounting needs
    root: else skip)."""
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:  # a file still open on it
            subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(mount: Path, name: str = "filler") -> Path:
    """Fill the file system of ``mount`` to the last block with the file ``mount/name``; returns it."""
    filler = mount / name
    with open(filler, "wb", buffering=0) as fh, pytest.raises(OSError, match="No space left"):
        while True:
            fh.write(b"\0" * 4096)
    return filler
