"""The retention policy run by the service itself (``retention.closed_for_days``): a background thread that
prunes evidence pictures every ``retention.every_hours``, as ``streetwatch evidence prune`` does."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from serve.config import RetentionConfig
from serve.db import utcnow
from serve.store import CaseStore, PruneResult

log = logging.getLogger(__name__)


class RetentionWorker:
    """Prunes evidence pictures now and then; a failed run is logged and tried again at the next one."""

    def __init__(self, store: CaseStore, config: RetentionConfig):
        if config.closed_for_days is None:
            raise ValueError("retention.closed_for_days is not configured")
        self.store = store
        self.config = config
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: PruneResult | None = None
        self.last_at: datetime | None = None  # when the last run that went through ended
        self.last_error: str | None = None  # why the last run failed; None once one goes through

    def start(self) -> None:
        """Start pruning (the first time after a minute, or after ``every_hours`` when that is shorter)."""
        self._thread = threading.Thread(target=self._run, name="evidence-retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the run in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> PruneResult:
        """One prune with the configured periods."""
        now = utcnow()
        result = self.store.prune_evidence(
            now - timedelta(days=self.config.closed_for_days), now - timedelta(hours=self.config.grace_hours)
        )
        if result.files or result.unfinished:
            log.info(
                "retention: removed %d evidence files (%d bytes) of %d cases, %d that no case references, "
                "%d unfinished writes",
                result.files,
                result.freed,
                len(result.cases),
                len(result.orphans),
                result.unfinished,
            )
        self.last, self.last_at, self.last_error = result, utcnow(), None
        return result

    def status(self) -> dict[str, Any]:
        """For /readyz: the policy, what the last run removed and when, and why the last run failed."""
        last = self.last
        return {
            "running": self._thread is not None and self._thread.is_alive(),
            "closed_for_days": self.config.closed_for_days,
            "every_hours": self.config.every_hours,
            "last_run": None if self.last_at is None else self.last_at.isoformat(timespec="seconds"),
            "last_removed_files": None if last is None else last.files,
            "last_freed_bytes": None if last is None else last.freed,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        every = self.config.every_hours * 3600
        wait = min(60.0, every)
        while not self._stop.wait(wait):
            try:
                self.run_once()
            except Exception as exc:  # the database is away for a moment: the next run tries again
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("retention: pruning evidence failed")
            wait = every
