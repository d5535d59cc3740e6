"""Violation sinks into the case queue (``pipeline.cases.open_sink`` hands these targets here).

* ``http(s)://host:port[?key=KEY&spool=DIR&wait=S]`` -> :class:`HttpSink`: posts to ``/v1/cases/ingest`` with
  retries and exponential backoff. Every violation is first written to a durable local spool (one
  fsynced file each) and removed only once the service has answered, so a worker never loses one while
  the service is down or restarting, and never duplicates one (the service is idempotent per key).
  The key may also come from ``STREETWATCH_API_KEY``.
* ``sqlite:///FILE``, ``postgresql://...`` or a data folder -> :class:`StoreSink`: writes into the store
  directly (evidence under the data folder: the SQLite file's folder, ``STREETWATCH_DATA_DIR``, or ``data``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import SplitResult, parse_qs, urlsplit, urlunsplit

import httpx
from sqlalchemy import make_url

from pipeline.cases import Violation, ViolationSink
from pipeline.files import atomic_write
from pipeline.retry import backoff_delay
from serve.text import printable

if TYPE_CHECKING:
    from serve.store import CaseStore, Ingested

log = logging.getLogger(__name__)

INGEST_PATH = "/v1/cases/ingest"
#: Answers that mean "this violation itself is refused": retrying would never help.
PERMANENT = {400, 413, 415, 422}


#: The file in a spool folder naming the service its violations are for, and the lock its open sinks hold.
SPOOL_OWNER = "service.url"
SPOOL_LOCK = "service.lock"


def default_spool_dir(base_url: str) -> Path:
    """Where an HTTP sink spools for a service URL unless told otherwise: a folder per service."""
    root = Path(os.environ.get("STREETWATCH_SPOOL_DIR") or Path.home() / ".cache" / "streetwatch" / "spool")
    return root / hashlib.sha256(base_url.encode()).hexdigest()[:16]


def claim_spool(spool: Path, base_url: str) -> IO[str]:
    """Make ``spool`` the spool of the service at ``base_url``, for as long as the returned lock file stays
    open (the sink holds a shared ``flock`` on it; sinks for the same service share it). The next sink on a
    spool sends whatever it finds there, so a spool is refused (ValueError) to another service while it holds
    violations or while a sink for its service has it open."""
    lock = open(spool / SPOOL_LOCK, "a+")  # noqa: SIM115 (held for the sink's life, closed by it)
    try:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:  # other sinks have it open: join them, if it is for the same service
            fcntl.flock(lock.fileno(), fcntl.LOCK_SH)
            alone = False
        owner = _spool_owner(spool)
        if owner != base_url:
            if not alone:
                raise ValueError(
                    f"spool={spool} is in use by a worker or audit sending to {owner}, not {base_url}: give this "
                    "service a spool of its own"
                )
            if owner and any(spool.glob("*.json")):
                raise ValueError(
                    f"spool={spool} holds violations for {owner}, not {base_url}: send them there first (a worker "
                    f"or audit with the sink {owner}?spool={spool}), or give this service a spool of its own"
                )
            atomic_write(spool / SPOOL_OWNER, base_url + "\n")
        if alone:
            fcntl.flock(lock.fileno(), fcntl.LOCK_SH)  # (not atomic: someone may claim it in between)
            if _spool_owner(spool) != base_url:
                raise ValueError(f"spool={spool} was just taken by a sink for {_spool_owner(spool)}; try again")
        return lock
    except BaseException:
        lock.close()
        raise


def adopt_spool(old: Path, sink: HttpSink) -> int:
    """Move the violations an earlier default spool of the same service holds into ``sink``'s spool (for
    them to be sent), unless that folder is the sink's own or belongs to another service; how many moved."""
    if old == sink.spool or not old.is_dir() or _spool_owner(old) not in (None, sink.service):
        return 0
    moved = 0
    for path in sorted(old.glob("*.json")):
        with contextlib.suppress(FileNotFoundError):  # another sink took it meanwhile
            os.replace(path, sink.spool / path.name)
            moved += 1
    if moved:
        log.info("%d spooled violation(s) moved from %s to %s", moved, old, sink.spool)
        sink._wake.set()
    return moved


def _spool_owner(spool: Path) -> str | None:
    try:
        return (spool / SPOOL_OWNER).read_text().strip() or None
    except FileNotFoundError:
        return None


def service_url(parts: SplitResult) -> str:
    """The service's base URL, written one way: scheme and host in lower case, no default port, no trailing
    slash (one service, one default spool, however its URL was typed); credentials for a proxy in front of
    it (``user:password@``) are kept."""
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    userinfo = parts.netloc.rpartition("@")[0]
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}: not a valid port") from None
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = host if port in (None, {"http": 80, "https": 443}[scheme]) else f"{host}:{port}"
    return urlunsplit((scheme, f"{userinfo}@{netloc}" if userinfo else netloc, parts.path.rstrip("/"), "", ""))


class HttpSink:
    """Posts violations to the service's ingest route from a durable spool, in order, with backoff."""

    _counter = itertools.count()

    def __init__(
        self,
        base_url: str,
        api_key: str,
        spool_dir: str | os.PathLike[str] | None = None,
        timeout_s: float = 30.0,
        backoff_s: float = 0.25,
        max_backoff_s: float = 30.0,
        close_timeout_s: float = 60.0,
    ):
        self.url = base_url.rstrip("/") + INGEST_PATH
        parts = urlsplit(base_url.rstrip("/"))
        self.service = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))  # no credentials on disk
        self.spool = Path(spool_dir) if spool_dir else default_spool_dir(self.service)
        self.rejected = self.spool / "rejected"
        self.spool.mkdir(parents=True, exist_ok=True)
        self._spool_lock = claim_spool(self.spool, self.service)
        self.backoff_s, self.max_backoff_s, self.close_timeout_s = backoff_s, max_backoff_s, close_timeout_s
        self._client = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"})
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self.sent = 0
        self.refused = 0
        self._mine: dict[str, str] = {}  # spool file name -> key, of what this sink emitted and is not sent yet
        self._refused: dict[str, str] = {}  # key -> why the service refused it (of what this sink emitted)
        self._trouble = "no answer yet"  # why spooled violations are not sent, for undelivered()
        self._waited_out = False
        self._thread = threading.Thread(target=self._run, name="http-sink", daemon=True)
        self._thread.start()

    # ---- producer side
    def emit(self, violation: Violation) -> None:
        """Spool the violation durably (returns once it is on disk); it is sent in the background."""
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._counter):08d}"
        self._mine[f"{name}.json"] = violation.key
        atomic_write(self.spool / f"{name}.json", violation.model_dump_json())
        self._idle.clear()
        self._wake.set()

    def pending(self) -> int:
        """Violations spooled and not yet accepted by the service."""
        return sum(1 for _ in self.spool.glob("*.json"))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until the spool is empty; False on timeout (what is left stays spooled)."""
        deadline = time.monotonic() + (self.close_timeout_s if timeout_s is None else timeout_s)
        self._wake.set()
        while self.pending():
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.05)
        return True

    def undelivered(self, timeout_s: float | None = None) -> dict[str, str]:
        """Wait (up to ``timeout_s``, default ``close_timeout_s``) until the service has answered every
        violation this sink emitted; the keys it has not accepted, with why. What is still spooled stays
        there and is sent later; a refused one is in ``rejected/``."""
        deadline = time.monotonic() + (self.close_timeout_s if timeout_s is None else timeout_s)
        while True:
            waiting = {n: k for n, k in list(self._mine.items()) if (self.spool / n).exists()}
            if not waiting or time.monotonic() >= deadline:
                break
            self._wake.set()
            time.sleep(0.05)
        self._waited_out = bool(waiting)  # close() need not wait for them a second time
        out = {k: f"not delivered yet ({self._trouble}); it stays spooled in {self.spool}" for k in waiting.values()}
        return out | dict(self._refused)

    def close(self) -> None:
        """Send what is spooled (up to ``close_timeout_s``); anything left is sent by the next sink on this spool."""
        if not self.flush(0.0 if self._waited_out else None):
            log.warning(
                "%d violation(s) left in %s; they are sent when a sink for this service opens again",
                self.pending(),
                self.spool,
            )
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        self._client.close()
        self._spool_lock.close()  # the spool may change hands once no sink has it open

    # ---- sender thread
    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            files = sorted(self.spool.glob("*.json"))
            if not files:
                self._idle.set()
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            for path in files:
                if self._stop.is_set():
                    return
                outcome = self._send(path)
                if outcome == "retry":
                    failures += 1
                    delay = backoff_delay(self.backoff_s, self.max_backoff_s, failures - 1, jitter=0.25)
                    self._stop.wait(delay)  # new emits do not cut the backoff short
                    break
                failures = 0

    def _send(self, path: Path) -> str:
        try:
            body = path.read_bytes()
        except FileNotFoundError:  # another sender on this spool took it
            self._mine.pop(path.name, None)
            return "done"
        try:
            response = self._client.post(self.url, content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            log.info("service unreachable (%s); %s stays spooled", type(exc).__name__, path.name)
            self._trouble = f"service unreachable: {type(exc).__name__}"
            return "retry"
        if response.status_code < 300:
            self._mine.pop(path.name, None)  # kept only while unsent (a worker runs for weeks); before the file goes
            path.unlink(missing_ok=True)
            self.sent += 1
            return "done"
        if response.status_code in PERMANENT:
            self.rejected.mkdir(exist_ok=True)
            reason = printable(response.text, 2000)  # logged and reported: one line, whatever answered
            (self.rejected / f"{path.stem}.reason.txt").write_text(f"HTTP {response.status_code}: {reason}\n")
            key = self._mine.get(path.name)
            if key is not None:  # recorded before it leaves _mine and the spool: undelivered() never misses it
                self._refused[key] = f"refused by the service, HTTP {response.status_code}: {reason[:300]}"
                self._mine.pop(path.name, None)
            with contextlib.suppress(FileNotFoundError):
                path.replace(self.rejected / path.name)
            self.refused += 1
            log.error(
                "service refused %s (HTTP %d): %s — kept in %s", path.name, response.status_code, reason, self.rejected
            )
            return "done"
        key_refused = response.status_code in (401, 403)
        self._trouble = ("the service refused the API key, " if key_refused else "") + (
            f"HTTP {response.status_code}: {printable(response.text, 200)}"
        )
        if key_refused:
            log.error("%s; violations stay spooled", self._trouble)
        return "retry"


class StoreSink:
    """Writes violations straight into a case store (SQLite or PostgreSQL).

    ``StoreSink.open(db_url, data_dir)`` opens a store of its own (closed with the sink); given a store
    (the service's own, for cameras it runs), the sink borrows it. ``on_ingest`` sees each outcome.
    """

    def __init__(
        self,
        store: CaseStore,
        actor_name: str | None = None,
        on_ingest: Callable[[Ingested], None] | None = None,
        own_store: bool = False,
    ):
        from serve.store import Actor

        self.store = store
        self.actor = Actor(actor_name or f"sink@{os.uname().nodename}:{os.getpid()}", "ingest")
        self.on_ingest = on_ingest
        self._own = own_store

    @classmethod
    def open(cls, db_url: str, data_dir: str | os.PathLike[str], actor_name: str | None = None) -> StoreSink:
        """A sink with a store of its own on ``db_url`` (evidence under ``data_dir``)."""
        from serve.store import CaseStore

        return cls(CaseStore(db_url, data_dir), actor_name, own_store=True)

    def emit(self, violation: Violation) -> None:
        """File or update the violation (idempotent per key)."""
        result = self.store.ingest(violation, self.actor)
        if self.on_ingest is not None:
            self.on_ingest(result)

    def close(self) -> None:
        if self._own:
            self.store.dispose()


def open_case_sink(target: str) -> ViolationSink:
    """The case-queue sink a target names (see the module docstring); ValueError for a target it cannot use."""
    scheme = urlsplit(target).scheme.lower()
    if scheme in ("http", "https"):
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        key = query.pop("key", None) or os.environ.get("STREETWATCH_API_KEY")
        if not key:
            where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # never a password from the URL
            raise ValueError(f"{where}: no API key; set STREETWATCH_API_KEY (or add ?key=KEY, which ps shows)")
        base = service_url(parts)
        try:
            wait = float(query.get("wait", 60))
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= 86400:
            raise ValueError(f"wait={query['wait']}: seconds to wait for the service at the end, 0-86400")
        sink = HttpSink(base, key, spool_dir=query.get("spool"), close_timeout_s=wait)
        if not query.get("spool"):  # a release before URLs were normalised kept this spelling's spool apart
            as_typed = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
            adopt_spool(default_spool_dir(as_typed), sink)
        return sink
    if scheme.startswith(("sqlite", "postgres")):
        url = make_url(target)
        if url.drivername.startswith("sqlite"):
            if not url.database or url.database == ":memory:":
                raise ValueError(f"{target}: a case store needs a database file")
            data_dir = Path(url.database).resolve().parent
        else:
            data_dir = Path(os.environ.get("STREETWATCH_DATA_DIR", "data"))
        return StoreSink.open(target, data_dir)
    if scheme and len(scheme) > 1:
        raise ValueError(
            f"{target}: unknown sink; use -, FILE.jsonl, http(s)://HOST:PORT, sqlite:///FILE, "
            "postgresql://... or a data folder"
        )
    data_dir = Path(target)
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"{target}: not a folder (a data folder holds streetwatch.db and evidence/)")
    if not data_dir.exists() and data_dir.suffix:  # out.json, cases.db: a file meant, not a new folder
        raise ValueError(
            f"{target}: no such data folder, and the name looks like a file; use FILE.jsonl for JSON lines, "
            "sqlite:///FILE for a database file, or a folder name for a new data folder"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    return StoreSink.open(f"sqlite:///{(data_dir / 'streetwatch.db').resolve()}", data_dir)
