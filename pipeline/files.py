"""File writes that a crash cannot leave half done, and file names made safe to write anywhere."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write a file so that readers (and a crash) only ever see the old or the complete new content:
    a temporary file beside it, fsynced, then renamed over it. Creates the folder when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def display_path(path: str | os.PathLike[str], errors: str = "backslashreplace") -> str:
    """``path`` as text that any file, report or terminal can hold: bytes of a file name that are not
    valid UTF-8 (which Python keeps as lone surrogates) become ``\\xff`` escapes (or, with
    ``errors="replace"``, U+FFFD). The same name always gives the same text, so reruns find it again."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", errors)


def safe_stem(path: str | os.PathLike[str], unique: bool = False) -> str:
    """The file stem of ``path`` usable in output file names, URLs and JSON (bad bytes as U+FFFD). With
    ``unique``, a stem that had bad bytes gets 6 hex digits of a hash of them, so that two names differing
    only there still give two stems."""
    stem = Path(path).stem
    safe = display_path(stem, "replace")
    if unique and safe != stem:
        raw = stem.encode("utf-8", "surrogateescape")
        safe = f"{safe}-{hashlib.sha256(raw).hexdigest()[:6]}"
    return safe


def write_image(path: str | os.PathLike[str], image: np.ndarray, params: Sequence[int] = ()) -> None:
    """Encode ``image`` in the format its suffix names and write it atomically. Unlike ``cv2.imwrite``
    this takes any path Python can open (``cv2.imwrite`` crashes the process on a file name that is not
    valid UTF-8) and raises ``ValueError`` instead of returning False when the image cannot be encoded."""
    import cv2

    ok, buf = cv2.imencode(Path(path).suffix or ".png", image, list(params))
    if not ok:
        raise ValueError(f"cannot encode an image as {Path(path).suffix or '.png'} for {display_path(path)}")
    atomic_write(path, buf.tobytes())


class TextFileError(ValueError):
    """A text file (a config, recipe, mapping, manifest) that is not UTF-8; the message names the file."""


def read_text(path: str | os.PathLike[str]) -> str:
    """The content of a UTF-8 text file (a leading byte-order mark dropped). A file that is not UTF-8 (a
    binary file given by mistake, a legacy encoding) raises :class:`TextFileError` naming the file, the
    byte and what to do; ``OSError`` (no such file, a folder) passes through unchanged."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TextFileError(
            f"{display_path(path)}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "is it the right file? Save a text file as UTF-8"
        ) from None
