"""Evidence files stored content-addressed on disk: ``<root>/ab/abcdef....jpg`` named by SHA-256.

Only :meth:`EvidenceStore.path` turns an id into a path, and it accepts nothing but 64 lowercase hex
digits, so no request can reach a file outside the store. One file may belong to several cases (the same
bytes filed twice, a photo's clean frame shared by every case found on it): the case store decides when
nothing references a file any more, and only then removes it (:meth:`EvidenceStore.remove`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipeline.files import atomic_write

SHA256_RE = re.compile(r"[0-9a-f]{64}")


class EvidenceNotFound(LookupError):
    """No evidence file with that id (or the id is not a SHA-256)."""


@dataclass(frozen=True)
class StoredFile:
    """An evidence file on disk."""

    sha256: str
    size: int
    modified: datetime  # written, or filed again (:meth:`EvidenceStore.put` refreshes it), UTC


class EvidenceStore:
    """Write-once, content-addressed JPEG files."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def valid_id(sha256: str) -> bool:
        """Whether ``sha256`` is a well-formed evidence id."""
        return bool(SHA256_RE.fullmatch(sha256))

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.jpg"

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store bytes (atomically, fsynced); returns their SHA-256 and whether the file was written now. A
        file already there is kept, its time refreshed: a prune leaves files filed lately alone."""
        sha = hashlib.sha256(data).hexdigest()
        target = self._path(sha)
        try:
            os.utime(target)
        except FileNotFoundError:
            atomic_write(target, data)
            return sha, True
        except OSError:  # there, but another user's (a sink run by hand): kept as it is
            pass
        return sha, False

    def keep(self, sha256: str, data: bytes) -> None:
        """Write ``data`` (whose SHA-256 is ``sha256``) again if its file was removed since :meth:`put`."""
        target = self._path(sha256)
        if not target.is_file():
            atomic_write(target, data)

    def remove(self, sha256: str) -> int:
        """Delete the file of an evidence id; the bytes freed (0 when it was not there)."""
        target = self._path(sha256)
        try:
            size = target.stat().st_size
            target.unlink()
        except FileNotFoundError:
            return 0
        return size

    def stored(self, sha256: str) -> StoredFile | None:
        """Size and time of an evidence file; None when it is not there."""
        try:
            st = self._path(sha256).stat()
        except FileNotFoundError:
            return None
        return StoredFile(sha256, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc))

    def files(self) -> Iterator[StoredFile]:
        """Every evidence file on disk (temporary files of writes in progress aside)."""
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and len(p.name) == 2):
            for path in sorted(folder.glob("*.jpg")):
                if self.valid_id(path.stem) and path.stem[:2] == folder.name:
                    found = self.stored(path.stem)
                    if found is not None:  # not removed meanwhile
                        yield found

    def unfinished(self, before: datetime) -> Iterator[tuple[Path, int]]:
        """Temporary files of writes that never finished (a process killed while writing), untouched since
        ``before``, and their sizes; a write still in progress is younger than any sane ``before``."""
        for path in sorted(self.root.glob("??/.*.tmp")):
            try:
                st = path.stat()
            except FileNotFoundError:  # finished or removed meanwhile
                continue
            if datetime.fromtimestamp(st.st_mtime, timezone.utc) < before:
                yield path, st.st_size

    def path(self, sha256: str) -> Path:
        """The file of an evidence id; :class:`EvidenceNotFound` for a malformed or unknown id."""
        if not self.valid_id(sha256):
            raise EvidenceNotFound(f"not an evidence id: {sha256[:80]!r} (expected 64 hex digits)")
        path = self._path(sha256)
        if not path.is_file():
            raise EvidenceNotFound(f"no evidence {sha256}")
        return path

    def read(self, sha256: str) -> bytes:
        """Bytes of an evidence id."""
        return self.path(sha256).read_bytes()
