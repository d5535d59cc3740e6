"""File writes that a crash cannot leave half done, and file names made safe to write anywhere.

A folder is written the same way as a file (:func:`staged_folder`): into a hidden incoming folder beside its
place, renamed into place once complete. The writing process holds a ``flock`` on a lock file in that incoming
folder, so that a later run removes what a killed one left (:func:`sweep_incoming`) and never the folder of
one still writing. An error writing into the hidden folder (a full disk) names the folder the user asked for.
A folder that is there already is replaced only once the new one is complete (:func:`replace_folder`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import glob
import hashlib
import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure


#: hidden folders a folder is written into before it is renamed into place: ``.NAME.incoming-XXXXXXXX``
INCOMING = ".incoming-"
#: hidden folders a folder being replaced is renamed into until the new one is in place: ``.NAME.previous-XXXXXXXX``
PREVIOUS = ".previous-"
#: the lock file in an incoming folder; the process writing into it holds an exclusive flock on it
INCOMING_LOCK = ".incoming.lock"
#: an incoming folder without a lock file (left by a promotion from before the lock, or one killed in the
#: instant between making the folder and locking it) is removed only once it is this old
UNLOCKED_GRACE_S = 3600.0


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write a file so that readers (and a crash) only ever see the old or the complete new content:
    a temporary file beside it, fsynced, then renamed over it. Creates the folder when missing. An OSError
    writing it (a full disk, which names no file) names ``path``, never the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path)) from exc
        raise


def write_figure(path: str | os.PathLike[str], fig: Figure, **savefig: Any) -> Path:
    """Render a matplotlib figure (in the format ``path``'s suffix names; ``savefig``: its further options,
    e.g. ``dpi``) and write it with :func:`atomic_write`: a full disk leaves no truncated picture. The
    figure is not closed. Returns ``path``."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", **savefig)
    atomic_write(path, buf.getvalue())
    return path


@contextmanager
def incoming_folder(root: Path, name: str) -> Iterator[Path]:
    """A fresh hidden folder in ``root`` to write folder ``name`` into (as its subfolder), locked for as long
    as the block runs and removed after it: an exclusive ``flock`` on its :data:`INCOMING_LOCK`, which is
    given that name only once locked, so a lock file found there unlocked means its process is gone."""
    folder = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}{INCOMING}"))
    fd = -1
    try:
        fresh = folder / f"{INCOMING_LOCK}.new"
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(fresh, folder / INCOMING_LOCK)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # still locked: no sweep can take it for a stale one
        if fd >= 0:
            os.close(fd)


def sweep_incoming(root: Path, name: str | None = None) -> list[Path]:
    """Remove the incoming folders (of folder ``name``, or of any) that processes killed mid-write left in
    ``root`` (their lock file is there and free), and those without a lock file older than
    :data:`UNLOCKED_GRACE_S`; a folder whose lock a live process holds is left alone. Returns the folders
    removed."""
    removed = []
    pattern = f".{glob.escape(name)}{INCOMING}*" if name is not None else f".*{INCOMING}*"
    for folder in sorted(root.glob(pattern)):
        try:
            if folder.is_symlink() or not folder.is_dir():
                continue
            fd = os.open(folder / INCOMING_LOCK, os.O_RDONLY)
        except FileNotFoundError:  # no lock file: from before the lock, or being made this instant
            try:
                stale = time.time() - folder.stat().st_mtime > UNLOCKED_GRACE_S
            except OSError:
                continue
            if stale:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live process is writing into it
            os.close(fd)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)  # under its lock: a second sweep leaves it to this one
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


@contextmanager
def staged_folder(out: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh empty folder to write the folder ``out`` into; the block puts it in place once it is complete
    (:func:`replace_folder`, or moving its files into an ``out`` that must stay). It lies in an
    :func:`incoming_folder` beside ``out`` (inside it when it is a mount point): a block that fails or is
    interrupted (Ctrl-C) leaves ``out`` as it was and nothing beside it, and what a killed run left is swept by
    the next. An OSError naming a file in it (a full disk) names ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(out))
    place = _link_target(out)  # beside the folder a link leads to: on its file system, renamed into its place
    place.parent.mkdir(parents=True, exist_ok=True)
    root = place if os.path.ismount(place) else place.parent  # a mount point stays: staged inside it
    temporary = os.path.abspath(root / f".{place.name}{INCOMING}")
    try:
        sweep_incoming(root, place.name)
        with incoming_folder(root, place.name) as incoming:
            work = incoming / place.name
            work.mkdir()
            yield work
    except OSError as exc:  # a temporary name means nothing to the user, and is gone once the block failed
        names = [os.fsdecode(n) for n in (exc.filename, exc.filename2) if isinstance(n, (str, bytes, os.PathLike))]
        if exc.errno is None or not any(os.path.abspath(n).startswith(temporary) for n in names):
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(out)) from exc


def exchange_folders(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``): no moment where either is
    missing. False, changing nothing, where the system or file system cannot (not Linux, an old kernel, some
    network file systems); an OSError naming ``b`` for any other failure."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False  # EPERM: a sandbox (seccomp) that forbids the call; plain renames report a real one
    raise OSError(code, os.strerror(code), os.fspath(b))


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def replace_folder(new: str | os.PathLike[str], out: str | os.PathLike[str], keep: Sequence[str] = ()) -> None:
    """Put the complete folder ``new`` (written in a :func:`staged_folder` of ``out``) in the place of the folder
    ``out``, then remove the old one: the two are swapped in one step (:func:`exchange_folders`), or where the
    system cannot, the old one is renamed aside into a hidden folder beside it (``.NAME.previous-XXXXXXXX``)
    and ``new`` renamed into its place, a failure or Ctrl-C between the two renaming the old one back. ``out``
    is the old folder or the new one, never a mix. ``keep`` names paths inside the old folder (caches) that
    move over into the new one when it has none of its own. An ``out`` that is a symbolic link stays one: the
    folder it leads to is replaced. An ``out`` that is a mount point (a container's volume) cannot be renamed:
    its contents are replaced instead (:func:`_replace_contents`)."""
    new, out = Path(new), _link_target(Path(out))
    if os.path.ismount(out):
        _replace_contents(new, out, keep)
        return
    try:
        new.rename(out)  # no folder there yet (or an empty one)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if exchange_folders(new, out):  # the old folder is now where the new one was written
        _carry_over(new, out, keep)
        shutil.rmtree(new, ignore_errors=True)
        return
    holder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{PREVIOUS}"))
    aside = holder / out.name
    try:
        out.rename(aside)
        try:
            new.rename(out)
        except BaseException:
            aside.rename(out)
            raise
    except BaseException:
        with suppress(OSError):  # not empty if the old folder could not go back: it stays there
            holder.rmdir()
        raise
    _carry_over(aside, out, keep)
    shutil.rmtree(holder, ignore_errors=True)


def _replace_contents(new: Path, out: Path, keep: Sequence[str]) -> None:
    """Replace what the mount point ``out`` holds by what ``new`` (staged inside it) holds: its entries are
    moved aside into a hidden folder in it, those of ``new`` moved in, then the old ones removed; a failure or
    Ctrl-C moves them back. Not one step, as for a folder: a process killed in between leaves the old entries
    in ``.NAME.previous-XXXXXXXX``."""
    holder = Path(tempfile.mkdtemp(dir=out, prefix=f".{out.name}{PREVIOUS}"))
    hidden = (f".{out.name}{INCOMING}", f".{out.name}{PREVIOUS}")
    aside: list[str] = []
    moved_in: list[str] = []
    try:
        for entry in sorted(out.iterdir()):
            if not entry.name.startswith(hidden):
                entry.rename(holder / entry.name)
                aside.append(entry.name)
        for entry in sorted(new.iterdir()):
            entry.rename(out / entry.name)
            moved_in.append(entry.name)
    except BaseException:
        for name in reversed(moved_in):
            (out / name).rename(new / name)
        for name in reversed(aside):
            (holder / name).rename(out / name)
        with suppress(OSError):
            holder.rmdir()
        raise
    _carry_over(holder, out, keep)
    shutil.rmtree(holder, ignore_errors=True)


def _link_target(out: Path) -> Path:
    """``out``, or where it leads when it is a symbolic link (a dataset folder kept on another disk)."""
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def _carry_over(old_folder: Path, out: Path, keep: Sequence[str]) -> None:
    """Move the paths ``keep`` of the replaced folder into the new one, where it has none of its own."""
    for rel in keep:
        old, kept = old_folder / rel, out / rel
        if (old.exists() or old.is_symlink()) and not (kept.exists() or kept.is_symlink()):
            with suppress(OSError):  # a cache: the new folder is complete without it
                kept.parent.mkdir(parents=True, exist_ok=True)
                old.rename(kept)


#: errnos of a file system with no room left: full, or over the user's quota
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: what torch's checkpoint writer says when a write fails (``unexpected pos``, ``file write failed``): no reason
TORCH_WRITER = ("inline_container.cc", "PytorchStreamWriter")
#: a folder whose file system has less room left than this is full, for :func:`disk_full`
NEARLY_FULL = 16 << 20


def disk_full(exc: BaseException, folder: str | os.PathLike[str]) -> OSError | None:
    """The error to report for ``exc`` when it says that the disk holding ``folder`` is full: an OSError
    naming ``folder``. That is an ENOSPC or EDQUOT OSError, also as the cause or context of another error
    (libraries wrap it), or torch's checkpoint writer failing (its RuntimeError gives no reason) while
    ``folder``'s file system has (almost) no room left. None for any other error."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        code = cause.errno if isinstance(cause, OSError) else None
        if code in DISK_FULL or (code is None and os.strerror(errno.ENOSPC) in str(cause)):
            code = code or errno.ENOSPC
            return OSError(code, os.strerror(code), os.fspath(folder))
        if isinstance(cause, RuntimeError) and any(t in str(cause) for t in TORCH_WRITER) and _no_room(folder):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(folder))
        cause = cause.__cause__ or cause.__context__
    return None


def _no_room(folder: str | os.PathLike[str]) -> bool:
    """Whether the file system of ``folder`` (or of its nearest existing parent) has almost no room left."""
    path = Path(os.path.abspath(folder))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < NEARLY_FULL
    except OSError:
        return False


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
