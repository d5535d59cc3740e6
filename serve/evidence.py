"""Evidence files stored content-addressed on disk: ``<root>/ab/abcdef....jpg`` named by SHA-256.

Only :meth:`EvidenceStore.path` turns an id into a path, and it accepts nothing but 64 lowercase hex
digits, so no request can reach a file outside the store.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from pipeline.files import atomic_write

SHA256_RE = re.compile(r"[0-9a-f]{64}")


class EvidenceNotFound(LookupError):
    """No evidence file with that id (or the id is not a SHA-256)."""


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

    def put(self, data: bytes) -> str:
        """Store bytes (atomically, fsynced; a no-op when already there); returns their SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        target = self._path(sha)
        if target.exists():
            return sha
        atomic_write(target, data)
        return sha

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
