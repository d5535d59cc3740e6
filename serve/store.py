"""The case store: ingestion with idempotency keys and deduplication, the lifecycle with its history,
queries, the supervision figures, API keys and the review page's sessions, and the transactional outbox.

Every write runs in one database transaction; on PostgreSQL an advisory lock per (type, source)
serialises ingestion of the same place so that concurrent workers never open two cases for one thing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import statistics
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, selectinload

from models.classes import VIOLATIONS
from pipeline.cases import Violation
from pipeline.detections import box_iou
from pipeline.photos import photo_key_prefix
from pipeline.retry import backoff_delay
from serve import lifecycle
from serve.config import DedupConfig, WebhookConfig
from serve.db import (
    OUTBOX_STATUSES,
    ApiKey,
    Case,
    Evidence,
    History,
    Occurrence,
    OutboxEvent,
    ReviewSession,
    make_engine,
    migrate,
    utcnow,
)
from serve.evidence import EvidenceStore, StoredFile
from serve.schemas import CaseOut, CountOut, DeadlinesOut, EvidenceOut, HistoryOut, KeyOut, OutboxEventOut, StatsOut

log = logging.getLogger(__name__)
T = TypeVar("T")

ROLES = ("ingest", "reviewer", "admin")
#: Statuses of a case a reviewer confirmed (it may have moved on since).
CONFIRMED_STATUSES = ("confirmed", "dispatched", "resolved", "closed")


class CaseNotFound(LookupError):
    """No case with that id."""


class InvalidRequest(ValueError):
    """A request the store refuses for its content (not its timing); the message says why."""


class CaseChanged(Exception):
    """An action decided on an older version of the case: someone else acted on it meanwhile.

    It keeps what happened since (action, actor, time) so that the caller can say it in its own time
    zone (:meth:`message`); ``str()`` says it in UTC.
    """

    def __init__(
        self, case_id: int, status: str, version: int, asked: int, since: Sequence[tuple[str, str, datetime]] = ()
    ):
        self.case_id, self.status, self.version, self.asked, self.since = case_id, status, version, asked, since
        super().__init__(self.message(timezone.utc))

    def message(self, tz: tzinfo) -> str:
        """Why the action is refused, times in ``tz`` (2026-11-28 08:50:06 +08:00)."""
        if self.asked > self.version:
            return f"case {self.case_id} has no version {self.asked} (it is at version {self.version}): reload it"
        done = "; ".join(f"{action} by {actor} at {local_time(at, tz)}" for action, actor, at in self.since)
        return (
            f"case {self.case_id} changed after you loaded it ({done}; now {self.status}, version {self.version}): "
            "reload it and decide again"
        )


def local_time(at: datetime, tz: tzinfo) -> str:
    """A time as people read it in ``tz``: 2026-11-28 08:50:06 +08:00."""
    offset = at.astimezone(tz).strftime("%z")
    return at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S ") + f"{offset[:3]}:{offset[3:]}"


@dataclass(frozen=True)
class Actor:
    """Who does something: a key's name and role, or the system."""

    name: str
    role: str = "system"

    def __str__(self) -> str:
        return f"{self.name} ({self.role})" if self.role != "system" else self.name


SYSTEM = Actor("system")


@dataclass(frozen=True)
class Ingested:
    """Outcome of one ingestion."""

    case_id: int
    outcome: str  # created | merged | updated
    status: str

    @property
    def created(self) -> bool:
        return self.outcome == "created"


@dataclass(frozen=True)
class ReviewedCase:
    """A case a person reviewed, as retraining sees it: the verdict and what the model had said."""

    case: CaseOut
    verdict: str  # confirmed (the reviewer's class is in case.detector_class) | dismissed (a false positive)
    reviewed_at: datetime
    model_class: str  # the detector class the model reported, before any correction

    @property
    def corrected(self) -> bool:
        """Whether the reviewer changed the class."""
        return self.model_class != self.case.detector_class


#: Who removes evidence by the retention policy, as the case history names it.
RETENTION = Actor("retention")


@dataclass(frozen=True)
class PrunedCase:
    """The evidence of one case that a prune removed (or, in a dry run, would remove)."""

    case_id: int
    status: str  # closed | dismissed
    since: datetime  # when it was closed or dismissed
    files: int
    bytes: int  # a file the case shares with another expired case counted in each


@dataclass(frozen=True)
class PruneResult:
    """What a prune of evidence removed (or, in a dry run, would remove)."""

    cases: list[PrunedCase]
    case_files: int  # the files of those cases, one several of them share counted once
    orphans: list[StoredFile]  # files no case holds, written before the grace period
    freed: int  # bytes, each file counted once (unfinished writes included)
    dry_run: bool
    unfinished: int = 0  # temporary files of writes a crash left behind, written before the grace period

    @property
    def files(self) -> int:
        """Files removed (or to be): the cases' and the orphans."""
        return self.case_files + len(self.orphans)


#: Two boxes of one photo overlapping more are one object (the detector's NMS never keeps both).
SAME_OBJECT_IOU = 0.7


@dataclass(frozen=True)
class CaseFilter:
    """Filters of a case list."""

    status: tuple[str, ...] = ()
    type: tuple[str, ...] = ()
    source_id: str | None = None
    department: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    overdue: bool | None = None

    def conditions(self, now: datetime) -> list[Any]:
        """The SQL conditions on ``Case`` this filter stands for."""
        conds = []
        if self.status:
            conds.append(Case.status.in_(self.status))
        if self.type:
            conds.append(Case.type.in_(self.type))
        if self.source_id:
            conds.append(Case.source_id == self.source_id)
        if self.department:
            conds.append(Case.department == self.department)
        if self.since:
            conds.append(Case.first_seen >= self.since)
        if self.until:
            conds.append(Case.first_seen < self.until)
        if self.overdue is not None:
            late = (Case.status == "dispatched") & (Case.deadline < now)
            conds.append(late if self.overdue else ~late)
        return conds


def hash_key(key: str) -> str:
    """What the store keeps of an API key (and of a review session's token)."""
    return hashlib.sha256(key.encode()).hexdigest()


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lon) points, metres."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371000.0 * math.asin(math.sqrt(min(1.0, h)))


def _removed(path: Path) -> bool:
    """Delete a leftover file; False (logged) where it may not be (another user's): the rest goes on."""
    try:
        path.unlink(missing_ok=True)
    except PermissionError as exc:
        log.warning("retention: cannot remove %s: %s", path, exc.strerror)
        return False
    return True


class CaseStore:
    """Cases in a SQL database (SQLite or PostgreSQL) with evidence files under ``data_dir/evidence``."""

    def __init__(
        self,
        db_url: str,
        data_dir: str | Path,
        dedup: DedupConfig | None = None,
        webhook: WebhookConfig | None = None,
        public_url: str | None = None,
        run_migrations: bool = True,
    ):
        self.db_url = db_url
        self.data_dir = Path(data_dir)
        self.dedup = dedup or DedupConfig()
        self.webhook = webhook or WebhookConfig()
        self.public_url = (public_url or "").rstrip("/")
        self.evidence = EvidenceStore(self.data_dir / "evidence")
        self.write_engine = make_engine(db_url, immediate=True)
        self.read_engine = make_engine(db_url) if self.write_engine.dialect.name == "sqlite" else self.write_engine
        self.dialect = self.write_engine.dialect.name
        if run_migrations:
            migrate(self.write_engine)

    def dispose(self) -> None:
        """Release database connections."""
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()

    # ------------------------------------------------------------------------------------ sessions
    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only session."""
        with Session(self.read_engine, expire_on_commit=False) as session, session.begin():
            yield session

    def _write(self, work: Callable[[Session], T], attempts: int = 5) -> T:
        """Run ``work`` in one write transaction, retried on lock timeouts and unique-key races."""
        for attempt in range(attempts):
            try:
                with Session(self.write_engine, expire_on_commit=False) as session, session.begin():
                    return work(session)
            except (IntegrityError, OperationalError) as exc:
                if attempt == attempts - 1 or not _retryable(exc):
                    raise
                log.info("retrying a write after %s", type(exc.orig).__name__ if exc.orig else exc)
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------------------------- ingestion
    def ingest(self, violation: Violation, actor: Actor = SYSTEM) -> Ingested:
        """File a violation: a repeat of its key updates its case; the same thing again within the dedup
        window merges into the open case; anything else opens a new case."""
        check_violation(violation)
        shas, written = [], []
        for image in violation.evidence:
            sha, new = self.evidence.put(image.jpeg)  # before the transaction: no lock held while writing
            shas.append((image.kind, sha, len(image.jpeg)))
            if new:
                written.append(sha)
        try:
            return self._write(lambda s: self._ingest(s, violation, shas, actor))
        except Exception:  # refused (a key reused for another violation) or failed: the files it wrote go again
            self._discard(written)
            raise

    def _ingest(self, s: Session, v: Violation, shas: list[tuple[str, str, int]], actor: Actor) -> Ingested:
        now = utcnow()
        self._lock_evidence(s, [sha for _, sha, _ in shas], exclusive=False)
        for (_, sha, _), image in zip(shas, v.evidence, strict=True):
            self.evidence.keep(sha, image.jpeg)  # removed meanwhile (a refused ingest of the same bytes): again
        if self.dialect == "postgresql":
            place = "photo-gps" if _by_gps(v) else v.source_id  # the scope _find_open_case searches
            lock = int.from_bytes(hashlib.sha256(f"{v.type}|{place}".encode()).digest()[:8], "big", signed=True)
            s.execute(select(func.pg_advisory_xact_lock(lock)))
        # locked: two sightings of one key may hold different place locks (one with a GPS position, one without)
        occ = s.scalar(select(Occurrence).where(Occurrence.key == v.key).with_for_update())
        if occ is not None:
            case = s.get(Case, occ.case_id, with_for_update=True)
            _same_violation(v, case)
            newer = v.last_seen >= occ.last_seen
            occ.first_seen, occ.last_seen = min(occ.first_seen, v.first_seen), max(occ.last_seen, v.last_seen)
            if newer:
                occ.state = v.state
            better = v.score > occ.score
            if better:
                occ.score, occ.box, occ.detector_class = v.score, list(v.box), v.detector_class
            occ.updates += 1
            occ.extra = {**occ.extra, **v.extra}
            occ.updated_at = now
            changed = self._absorb(s, case, v, occ, shas, now)
            if changed or (newer and v.state == "ended"):
                details = {"key": v.key, "state": occ.state, "score": round(v.score, 4), "improved": changed}
                self._history(s, case, actor, "updated", None, None, details, now)
            return Ingested(case.id, "updated", case.status)
        case = self._find_open_case(s, v) if self.dedup.enabled else None
        outcome = "merged"
        if case is None:
            outcome = "created"
            case = Case(
                type=v.type,
                detector_class=v.detector_class,
                status="new",
                source=v.source,
                source_id=v.source_id,
                source_name=v.source_name,
                zone=v.zone,
                lat=v.location.lat if v.location else None,
                lon=v.location.lon if v.location else None,
                first_seen=v.first_seen,
                last_seen=v.last_seen,
                occurrences=0,
                score=v.score,
                box=list(v.box),
                frame_w=v.frame_size[0],
                frame_h=v.frame_size[1],
                model_version=v.model_version,
                created_at=now,
                updated_at=now,
            )
            s.add(case)
            s.flush()
        occ = Occurrence(
            key=v.key,
            case_id=case.id,
            state=v.state,
            first_seen=v.first_seen,
            last_seen=v.last_seen,
            score=v.score,
            box=list(v.box),
            detector_class=v.detector_class,
            model_version=v.model_version,
            extra=v.extra,
            updates=1,
            created_at=now,
            updated_at=now,
        )
        s.add(occ)
        s.flush()
        case.occurrences += 1
        self._absorb(s, case, v, occ, shas, now, first=outcome == "created")
        details = {"key": v.key, "score": round(v.score, 4), "model_version": v.model_version}
        if outcome == "created":
            self._history(s, case, actor, "created", None, "new", details, now)
        else:
            self._history(s, case, actor, "merged", None, None, {**details, "occurrences": case.occurrences}, now)
        return Ingested(case.id, outcome, case.status)

    def _absorb(
        self, s: Session, case: Case, v: Violation, occ: Occurrence, shas: list, now: datetime, first: bool = False
    ) -> bool:
        """Fold a sighting into its case: times, position (when it had none), best score and evidence.
        Returns whether evidence improved."""
        case.first_seen, case.last_seen = min(case.first_seen, v.first_seen), max(case.last_seen, v.last_seen)
        if case.lat is None and v.location is not None:  # a photo filed again with the position it lacked
            case.lat, case.lon = v.location.lat, v.location.lon
        case.updated_at = now
        better = first or v.score > case.score
        if better:
            case.score, case.box, case.frame_w, case.frame_h = v.score, list(v.box), v.frame_size[0], v.frame_size[1]
            case.model_version = v.model_version
        known = {e.sha256: e for e in s.scalars(select(Evidence).where(Evidence.case_id == case.id))}
        for kind, sha, size in shas:
            if sha in known:
                known[sha].pruned_at = None  # filed again after a prune: the file is there again (_ingest)
                continue
            known[sha] = Evidence(
                case_id=case.id,
                occurrence_id=occ.id,
                sha256=sha,
                kind=kind,
                size=size,
                score=v.score,
                box=list(v.box),
                frame_w=v.frame_size[0],
                frame_h=v.frame_size[1],
                created_at=now,
            )
            s.add(known[sha])
        return better and bool(shas)

    def _lock_evidence(self, s: Session, shas: Collection[str], exclusive: bool) -> None:
        """Order the transactions that reference evidence files (shared: an ingestion) and those that delete
        them (exclusive: they delete only files nothing references, checked under the lock), until commit: on
        PostgreSQL an advisory lock per file, taken in order; on SQLite the write lock (BEGIN IMMEDIATE).
        An ingestion checks its files under the lock and writes again any that went since it wrote them."""
        if self.dialect != "postgresql":
            s.connection()  # begins the transaction: the write lock is held from here to the commit
            return
        lock = func.pg_advisory_xact_lock if exclusive else func.pg_advisory_xact_lock_shared
        for sha in sorted(set(shas)):
            s.execute(select(lock(_evidence_lock_id(sha))))

    def _remove_unreferenced(self, shas: Collection[str], written_before: datetime | None = None) -> dict[str, int]:
        """Delete the files of those evidence ids that no case holds (no row, or only pruned ones) and, with
        ``written_before``, that were not written or filed again since; returns the bytes freed per file."""
        freed: dict[str, int] = {}
        for part in _chunks(sorted(set(shas))):

            def work(s: Session, part: list[str] = part) -> dict[str, int]:
                self._lock_evidence(s, part, exclusive=True)
                held = select(Evidence.sha256).where(Evidence.sha256.in_(part), Evidence.pruned_at.is_(None))
                used = set(s.scalars(held.distinct()))
                gone = {}
                for sha in part:
                    stored = self.evidence.stored(sha)
                    if sha in used or stored is None or (written_before and stored.modified >= written_before):
                        continue
                    gone[sha] = self.evidence.remove(sha)
                return gone

            freed.update(self._write(work))
        return freed

    def _discard(self, shas: list[str]) -> None:
        """Remove the files a refused or failed ingestion wrote, unless a case references them meanwhile."""
        if not shas:
            return
        try:
            self._remove_unreferenced(shas)
        except Exception as exc:  # the database is down too: the original error is what the caller needs
            log.warning("could not remove %d evidence files of a refused ingestion: %s", len(shas), exc)

    def _find_open_case(self, s: Session, v: Violation) -> Case | None:
        """The open case this violation is another occurrence of, if any."""
        window = timedelta(seconds=self.dedup.window_s)
        query = select(Case).where(
            Case.type == v.type,
            Case.status.in_(lifecycle.OPEN_STATUSES),
            Case.last_seen >= v.first_seen - window,
            Case.first_seen <= v.last_seen + window,
        )
        if _by_gps(v):
            deg = self.dedup.radius_m / 111_000 * 2
            query = query.where(
                (Case.source_id == v.source_id)
                | (Case.lat.between(v.location.lat - deg, v.location.lat + deg) & Case.lon.is_not(None))
            )
        else:
            query = query.where(Case.source_id == v.source_id)
        others: set[int] = set()  # cases of other objects in this photo
        if v.source == "photo":  # another object of the same photo is another violation, however close it stands
            prefix = photo_key_prefix(v.source_id)
            rows = s.execute(
                select(Occurrence.case_id, Occurrence.box).where(Occurrence.key.startswith(prefix, autoescape=True))
            ).all()
            if rows:  # the same object filed again with a box a few pixels off is not another
                overlap = box_iou([box for _, box in rows], [v.box])[:, 0]
                others = {case_id for (case_id, _), iou in zip(rows, overlap, strict=True) if iou < SAME_OBJECT_IOU}
        for case in s.scalars(query.order_by(Case.last_seen.desc()).limit(50)).all():
            if case.id in others or not self._same_place(case, v):
                continue
            # locked and read again: a review that committed meanwhile (dismissed, relabelled) rules it out
            locked = s.get(Case, case.id, with_for_update=True, populate_existing=True)
            if locked is not None and locked.status in lifecycle.OPEN_STATUSES and locked.type == v.type:
                return locked
        return None

    def _same_place(self, case: Case, v: Violation) -> bool:
        if (
            _by_gps(v)
            and case.source == "photo"
            and case.lat is not None
            and case.lon is not None
            and distance_m((case.lat, case.lon), (v.location.lat, v.location.lon)) <= self.dedup.radius_m
        ):
            return True
        if case.source_id != v.source_id or case.zone != v.zone:
            return False
        if (case.frame_w, case.frame_h) != tuple(v.frame_size):
            return False
        return float(box_iou([case.box], [v.box])[0, 0]) >= self.dedup.iou

    # ----------------------------------------------------------------------------------- lifecycle
    def review(
        self,
        case_id: int,
        action: str,
        actor: Actor,
        type: str | None = None,
        detector_class: str | None = None,
        note: str | None = None,
        version: int | None = None,
    ) -> CaseOut:
        """Confirm, dismiss (false positive) or relabel (correct the violation type) a case.

        Every action takes ``version``, the case's version it was decided on; :class:`CaseChanged` when the
        case has moved on since (None: no check)."""
        if action == "relabel":
            if type is None:
                raise InvalidRequest("relabel needs the correct violation type ('type')")
            sources = VIOLATIONS[type].sources
            if detector_class is None:
                if len(sources) > 1:
                    raise InvalidRequest(f"{type} can come from {', '.join(sources)}: give 'detector_class'")
                detector_class = sources[0]
            elif detector_class not in sources:
                raise InvalidRequest(f"detector class {detector_class} does not evidence {type} ({', '.join(sources)})")
        elif type is not None or detector_class is not None:
            raise InvalidRequest(f"'type' and 'detector_class' belong to relabel, not {action}")

        def work(s: Session, case: Case, now: datetime) -> dict:
            details: dict[str, Any] = {"note": note} if note else {}
            if action == "relabel":
                if type == case.type and detector_class == case.detector_class:
                    raise InvalidRequest(f"case {case.id} is already {type}/{detector_class}")
                details.update(
                    from_type=case.type, to_type=type, from_class=case.detector_class, to_class=detector_class
                )
                case.original_type = case.original_type or case.type
                case.type, case.detector_class = type, detector_class
            case.reviewed_at, case.reviewed_by = now, actor.name
            if action in ("confirm", "relabel") and case.confirmed_at is None:
                case.confirmed_at = now
            return details

        return self._transition(case_id, action, actor, work, note, version)

    def dispatch(
        self,
        case_id: int,
        department: str,
        deadline: datetime,
        actor: Actor,
        note: str | None = None,
        version: int | None = None,
    ) -> CaseOut:
        """Hand a confirmed case to a department with a deadline (again: reassign)."""
        if deadline <= utcnow():
            raise InvalidRequest(f"deadline {deadline.isoformat()} is in the past")
        department = department.strip()
        if not department:
            raise InvalidRequest("department is blank: name the department responsible")

        def work(s: Session, case: Case, now: datetime) -> dict:
            case.department, case.deadline, case.dispatched_at = department, deadline, now
            return {"department": case.department, "deadline": deadline.isoformat(), **({"note": note} if note else {})}

        return self._transition(case_id, "dispatch", actor, work, note, version)

    def resolve(self, case_id: int, actor: Actor, note: str | None = None, version: int | None = None) -> CaseOut:
        """The department reports the violation rectified."""

        def work(s: Session, case: Case, now: datetime) -> dict:
            case.resolved_at = now
            late = case.deadline is not None and now > case.deadline
            return {"late": late, **({"note": note} if note else {})}

        return self._transition(case_id, "resolve", actor, work, note, version)

    def close(self, case_id: int, actor: Actor, note: str | None = None, version: int | None = None) -> CaseOut:
        """Close a resolved case (the rectification was checked)."""

        def work(s: Session, case: Case, now: datetime) -> dict:
            case.closed_at = now
            return {"note": note} if note else {}

        return self._transition(case_id, "close", actor, work, note, version)

    def reopen(self, case_id: int, actor: Actor, note: str, version: int | None = None) -> CaseOut:
        """Reopen a dismissed (back to review), resolved or closed (back to dispatch) case."""
        note = note.strip()
        if not note:
            raise InvalidRequest("reason is blank: say why the case is reopened")

        def work(s: Session, case: Case, now: datetime) -> dict:
            case.resolved_at = case.closed_at = None
            if case.status == "dismissed":
                case.reviewed_at = case.reviewed_by = None
            return {"note": note}

        return self._transition(case_id, "reopen", actor, work, note, version)

    def _transition(
        self,
        case_id: int,
        action: str,
        actor: Actor,
        work: Callable[[Session, Case, datetime], dict],
        note: str | None,
        version: int | None,
    ) -> CaseOut:
        def run(s: Session) -> CaseOut:
            case = s.get(Case, case_id, with_for_update=True)
            if case is None:
                raise CaseNotFound(f"no case {case_id}")
            if version is not None and version != case.version:
                raise self._changed_since(s, case, version)
            before = case.status
            after = lifecycle.check(case_id, before, action)
            now = utcnow()
            details = work(s, case, now)
            case.status, case.updated_at, case.version = after, now, case.version + 1
            if note:
                case.note = note
            self._history(s, case, actor, action, before, after, details, now)
            event = lifecycle.EVENTS[action]
            if self.webhook.url and event in self.webhook.events and not _silent(action, before):
                self._enqueue(s, case, event, now)
            s.flush()
            return self._case_out(s, case, now)

        return self._write(run)

    @staticmethod
    def _changed_since(s: Session, case: Case, version: int) -> CaseChanged:
        """Why an action decided on ``version`` is refused: who did what to the case since."""
        later: Sequence[History] = ()
        if version <= case.version:
            actions = tuple(lifecycle.TRANSITIONS)
            later = s.scalars(
                select(History)
                .where(History.case_id == case.id, History.action.in_(actions))
                .order_by(History.id.desc())
                .limit(case.version - version)
            ).all()
        since = [(h.action, h.actor, h.at) for h in reversed(later)]
        return CaseChanged(case.id, case.status, case.version, version, since)

    def _history(
        self,
        s: Session,
        case: Case,
        actor: Actor,
        action: str,
        before: str | None,
        after: str | None,
        details: dict,
        now: datetime,
    ) -> None:
        s.add(
            History(
                case_id=case.id,
                at=now,
                actor=str(actor),
                action=action,
                from_status=before,
                to_status=after,
                details=details,
            )
        )

    # -------------------------------------------------------------------------------------- outbox
    def _enqueue(self, s: Session, case: Case, event: str, now: datetime) -> None:
        """Record an event for the webhook in the same transaction as the change it reports."""
        n = s.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.case_id == case.id, OutboxEvent.event == event)
        )
        key = f"streetwatch-case-{case.id}-{event}-{n + 1}"
        keys = list(s.scalars(select(Occurrence.key).where(Occurrence.case_id == case.id).order_by(Occurrence.id)))
        payload = {
            "event": f"case.{event}",
            "idempotency_key": key,
            "violation_keys": keys,
            "case": self._case_out(s, case, now).model_dump(mode="json"),
        }
        s.add(
            OutboxEvent(
                case_id=case.id,
                event=event,
                idempotency_key=key,
                payload=payload,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )

    def claim_due_event(self, lease_s: float = 60.0) -> OutboxEvent | None:
        """The next event due for delivery, leased to the caller for ``lease_s`` (other dispatchers skip it
        meanwhile; ``lease_token`` names this lease), or None. Events of one case go out in the order they
        happened: an event waits while an earlier one of its case is pending, or failed until retried."""
        now = utcnow()
        with self.reading() as s:
            due = list(
                s.scalars(
                    select(OutboxEvent.id)
                    .where(*_claimable(now))
                    .order_by(OutboxEvent.next_attempt_at, OutboxEvent.id)
                    .limit(5)  # a few, in case another dispatcher takes the first ones meanwhile
                )
            )
        for event_id in due:
            token = secrets.token_hex(16)

            def lease(s: Session, event_id: int = event_id, token: str = token) -> OutboxEvent | None:
                got = s.execute(  # claimable still: another dispatcher may have tried it, or an admin retried
                    update(OutboxEvent)  # an earlier event of its case, since it was read
                    .where(OutboxEvent.id == event_id, *_claimable(now))
                    .values(locked_until=now + timedelta(seconds=lease_s), lease_token=token)
                    .execution_options(synchronize_session=False)
                ).rowcount
                return s.get(OutboxEvent, event_id) if got == 1 else None

            event = self._write(lease)
            if event is not None:
                return event
        return None

    def event_delivered(self, event_id: int) -> bool:
        """Mark an event delivered and note it in the case history; False when it already was (another
        dispatcher whose lease had run out delivered it too: receivers drop the repeat by its key)."""

        def work(s: Session) -> bool:
            event = s.get(OutboxEvent, event_id, with_for_update=True)
            if event.status == "delivered":
                return False
            now = utcnow()
            event.status, event.delivered_at, event.attempts = "delivered", now, event.attempts + 1
            event.locked_until = event.lease_token = event.last_error = None
            s.add(_outbox_history(event, "webhook", "pushed", now))
            return True

        return self._write(work)

    def event_failed(self, event_id: int, lease_token: str, error: str) -> bool:
        """Record a failed attempt and schedule the next one with exponential backoff, or give up. Only the
        holder of the lease records: False when the lease ran out and another dispatcher holds the event."""

        def work(s: Session) -> bool:
            event = s.get(OutboxEvent, event_id, with_for_update=True)
            if event.status != "pending" or event.lease_token != lease_token:
                return False
            event.attempts += 1
            event.last_error, event.locked_until, event.lease_token = error[:2000], None, None
            if event.attempts >= self.webhook.max_attempts:
                event.status = "failed"
                log.error("webhook gave up on %s after %d attempts: %s", event.idempotency_key, event.attempts, error)
            else:
                # jittered: receivers recovering are not stampeded
                delay = backoff_delay(self.webhook.backoff_s, self.webhook.max_backoff_s, event.attempts - 1)
                event.next_attempt_at = utcnow() + timedelta(seconds=delay)
            return True

        return self._write(work)

    def outbox_events(self, status: str | None = None, limit: int = 100) -> list[OutboxEventOut]:
        """Outbox events, newest first, optionally of one status."""
        with self.reading() as s:
            query = select(OutboxEvent).order_by(OutboxEvent.id.desc()).limit(limit)
            if status is not None:
                query = query.where(OutboxEvent.status == status)
            return [OutboxEventOut.model_validate(e, from_attributes=True) for e in s.scalars(query)]

    def retry_failed_events(self, actor: Actor, ids: Collection[int] | None = None, pending: bool = False) -> list[int]:
        """Put failed events back in the queue with a fresh budget of attempts (after the receiver is
        fixed); noted in each case's history. With ``pending``, events still waiting out their backoff are
        made due now as well (their attempts kept; one being sent is left to its attempt). Delivered events
        are left alone."""

        def work(s: Session) -> list[int]:
            now, retried = utcnow(), []
            statuses = ("failed", "pending") if pending else ("failed",)
            query = select(OutboxEvent).where(OutboxEvent.status.in_(statuses)).with_for_update()
            if ids is not None:
                query = query.where(OutboxEvent.id.in_(list(ids)))
            for event in s.scalars(query):
                if event.status == "failed":
                    s.add(_outbox_history(event, str(actor), "push retried", now, last_error=event.last_error))
                    event.status, event.attempts, event.next_attempt_at = "pending", 0, now
                    event.locked_until = event.lease_token = None
                elif event.next_attempt_at > now and (event.locked_until is None or event.locked_until < now):
                    event.next_attempt_at = now
                else:
                    continue  # due already, or in flight
                retried.append(event.id)
            return sorted(retried)

        return self._write(work)

    def outbox_counts(self) -> dict[str, int]:
        """Outbox events per status, every status named (0 when none)."""
        with self.reading() as s:
            found = dict(s.execute(select(OutboxEvent.status, func.count()).group_by(OutboxEvent.status)).all())
        return {status: int(found.get(status, 0)) for status in OUTBOX_STATUSES}

    # ----------------------------------------------------------------------------------- retention
    def prune_evidence(
        self, closed_before: datetime, written_before: datetime, dry_run: bool = False, actor: Actor = RETENTION
    ) -> PruneResult:
        """Delete the evidence files of cases closed or dismissed before ``closed_before`` that no other case
        still holds, and the files no case holds at all that were written (or filed again) before
        ``written_before``: an ingestion writes its files before its transaction commits. Temporary files of
        writes a crash cut short go too, once as old. The cases stay; each
        picture removed is marked (``pruned_at``) and noted in its case's history. Safe while the service
        ingests (:meth:`_lock_evidence`). ``dry_run``: say what would go, change nothing."""
        with self.reading() as s:
            expired = (
                select(Evidence.case_id)
                .join(Case, Case.id == Evidence.case_id)
                .where(Evidence.pruned_at.is_(None), _expired(closed_before))
                .distinct()
            )
            ids = sorted(s.scalars(expired))
        cases: dict[int, PrunedCase] = {}
        freed: dict[str, int] = {}  # a dry run marks nothing: the files a part counted are left out of the next
        for part in _chunks(ids, 50):
            if dry_run:
                with self.reading() as s:
                    found, files = self._prune_cases(s, part, closed_before, None, actor, set(freed))
            else:
                found, files = self._write(
                    lambda s, part=part: self._prune_cases(s, part, closed_before, utcnow(), actor, set())
                )
            for c in found:  # a case sharing a file with one of an earlier part came up there too
                had = cases.get(c.case_id)
                cases[c.case_id] = replace(c, files=had.files + c.files, bytes=had.bytes + c.bytes) if had else c
            freed.update(files)
        old = {f.sha256: f for f in self.evidence.files() if f.modified < written_before}
        with self.reading() as s:
            for part in _chunks(sorted(old)):
                held = select(Evidence.sha256).where(Evidence.sha256.in_(part), Evidence.pruned_at.is_(None))
                for sha in s.scalars(held.distinct()):
                    del old[sha]
        if not dry_run:
            gone = self._remove_unreferenced(list(old), written_before)
            old = {sha: replace(f, size=gone[sha]) for sha, f in old.items() if sha in gone}
        orphans = list(old.values())
        unfinished = list(self.evidence.unfinished(written_before))
        if not dry_run:
            unfinished = [(path, size) for path, size in unfinished if _removed(path)]
        total = sum(freed.values()) + sum(f.size for f in orphans) + sum(size for _, size in unfinished)
        found = sorted(cases.values(), key=lambda c: c.case_id)
        return PruneResult(found, len(freed), orphans, total, dry_run, len(unfinished))

    def _prune_cases(
        self,
        s: Session,
        ids: list[int],
        closed_before: datetime,
        now: datetime | None,
        actor: Actor,
        done: set[str],
    ) -> tuple[list[PrunedCase], dict[str, int]]:
        """Prune the evidence of these cases that only expired cases hold (but the files in ``done``); ``now``
        None: a dry run (nothing locked, marked or deleted). Returns the cases and the bytes of each file
        (freed, or to be)."""
        held_by = select(Evidence.sha256).where(Evidence.case_id.in_(ids), Evidence.pruned_at.is_(None))
        shas = sorted(set(s.scalars(held_by)) - done)
        if now is not None:
            self._lock_evidence(s, shas, exclusive=True)  # no ingestion references them meanwhile
        rows: list[Evidence] = []
        for part in _chunks(shas):
            rows += s.scalars(select(Evidence).where(Evidence.sha256.in_(part), Evidence.pruned_at.is_(None)))
        cases: dict[int, Case] = {}
        for part in _chunks(sorted({r.case_id for r in rows})):
            query = select(Case).where(Case.id.in_(part)).order_by(Case.id)
            # locked: a reopen in progress is waited for and seen
            cases.update((c.id, c) for c in s.scalars(query.with_for_update() if now else query))
        by_sha: dict[str, list[Evidence]] = {}
        for row in rows:
            by_sha.setdefault(row.sha256, []).append(row)
        gone = {
            sha: rs for sha, rs in by_sha.items() if all(_retention_since(cases[r.case_id], closed_before) for r in rs)
        }
        freed = {sha: self.evidence.remove(sha) if now else _size(self.evidence.stored(sha)) for sha in gone}
        per_case: dict[int, list[Evidence]] = {}
        for rs in gone.values():
            for row in rs:
                per_case.setdefault(row.case_id, []).append(row)
                if now is not None:
                    row.pruned_at = now
        out = []
        for case_id, rs in sorted(per_case.items()):
            case = cases[case_id]
            since = _retention_since(case, closed_before)
            size = sum(freed[r.sha256] for r in rs)
            out.append(PrunedCase(case_id, case.status, since, len(rs), size))
            if now is not None:
                details = {"files": len(rs), "bytes": size, "closed_before": closed_before.isoformat()}
                self._history(s, case, actor, "evidence pruned", None, None, details, now)
        return out, freed

    # ------------------------------------------------------------------------------------- queries
    def get_case(self, case_id: int) -> CaseOut:
        """One case."""
        with self.reading() as s:
            case = s.get(Case, case_id, options=[selectinload(Case.evidence)])
            if case is None:
                raise CaseNotFound(f"no case {case_id}")
            return self._case_out(s, case, utcnow())

    def list_cases(self, flt: CaseFilter, offset: int = 0, limit: int = 50) -> tuple[list[CaseOut], int]:
        """Cases matching the filter, newest first, and how many match in all."""
        now = utcnow()
        conds = flt.conditions(now)
        with self.reading() as s:
            total = s.scalar(select(func.count()).select_from(Case).where(*conds))
            rows = s.scalars(
                select(Case)
                .where(*conds)
                .options(selectinload(Case.evidence))
                .order_by(Case.first_seen.desc(), Case.id.desc())
                .offset(offset)
                .limit(limit)
            )
            return [self._case_out(s, c, now) for c in rows], int(total or 0)

    def history(self, case_id: int) -> list[HistoryOut]:
        """Every change of a case, oldest first."""
        with self.reading() as s:
            if s.get(Case, case_id) is None:
                raise CaseNotFound(f"no case {case_id}")
            rows = s.scalars(select(History).where(History.case_id == case_id).order_by(History.id))
            return [
                HistoryOut(
                    id=h.id,
                    at=h.at,
                    actor=h.actor,
                    action=h.action,
                    from_status=h.from_status,
                    to_status=h.to_status,
                    details=h.details or {},
                )
                for h in rows
            ]

    def case_evidence_ids(self, case_id: int) -> set[str]:
        """Evidence ids attached to a case."""
        with self.reading() as s:
            return set(s.scalars(select(Evidence.sha256).where(Evidence.case_id == case_id)))

    def evidence_status(self, sha256: str) -> tuple[bool, datetime | None]:
        """Whether any case references this evidence id (only those are served), and when the retention
        policy removed its file (None while a case still holds it)."""
        with self.reading() as s:
            pruned = list(s.scalars(select(Evidence.pruned_at).where(Evidence.sha256 == sha256)))
        if not pruned or None in pruned:
            return bool(pruned), None
        return True, max(pruned)

    def occurrence_keys(self, case_id: int) -> list[str]:
        """Idempotency keys of the violations filed in a case."""
        with self.reading() as s:
            return list(s.scalars(select(Occurrence.key).where(Occurrence.case_id == case_id).order_by(Occurrence.id)))

    def reviewed_cases(
        self, since: datetime | None = None, until: datetime | None = None, ids: Collection[int] | None = None
    ) -> list[ReviewedCase]:
        """Cases a person reviewed (reviewed in [since, until), or with these ``ids``), oldest review first:
        confirmed ones (whatever happened after: dispatched, resolved, closed) and dismissed ones."""
        conds = [Case.reviewed_at.is_not(None), Case.status.in_((*CONFIRMED_STATUSES, "dismissed"))]
        if since is not None:
            conds.append(Case.reviewed_at >= since)
        if until is not None:
            conds.append(Case.reviewed_at < until)
        if ids is not None:
            conds.append(Case.id.in_(list(ids)))
        now = utcnow()
        with self.reading() as s:
            rows = list(
                s.scalars(
                    select(Case).where(*conds).options(selectinload(Case.evidence)).order_by(Case.reviewed_at, Case.id)
                )
            )
            first_class: dict[int, str] = {}
            for part in _chunks([c.id for c in rows]):
                relabels = s.execute(
                    select(History.case_id, History.details)
                    .where(History.case_id.in_(part), History.action == "relabel")
                    .order_by(History.id)
                )
                for case_id, details in relabels:
                    first_class.setdefault(case_id, (details or {}).get("from_class"))
            return [
                ReviewedCase(
                    self._case_out(s, c, now),
                    "dismissed" if c.status == "dismissed" else "confirmed",
                    c.reviewed_at,
                    first_class.get(c.id) or c.detector_class,
                )
                for c in rows
            ]

    def reopened_dismissals(self, since: datetime | None, until: datetime) -> set[int]:
        """Cases whose dismissal was withdrawn (reopened) in [since, until): a training export's negative
        from them no longer stands."""
        with self.reading() as s:
            query = select(History.case_id).where(
                History.action == "reopen", History.from_status == "dismissed", History.at < until
            )
            if since is not None:
                query = query.where(History.at >= since)
            return set(s.scalars(query))

    def evidence_cases(self, shas: Collection[str]) -> dict[str, list[tuple[int, str]]]:
        """For each evidence id, the cases that show it, as (case id, status): a photo's clean frame is
        shared by every case found on that photo."""
        out: dict[str, list[tuple[int, str]]] = {}
        with self.reading() as s:
            for part in _chunks(sorted(set(shas))):
                rows = s.execute(
                    select(Evidence.sha256, Case.id, Case.status)
                    .join(Case, Case.id == Evidence.case_id)
                    .where(Evidence.sha256.in_(part))
                    .order_by(Case.id)
                )
                for sha, case_id, status in rows:
                    if (case_id, status) not in out.setdefault(sha, []):
                        out[sha].append((case_id, status))
        return out

    def counts_by_status(self, flt: CaseFilter | None = None) -> dict[str, int]:
        """Cases per status, of those the filter (its status part aside) lets through; all by default."""
        conds = replace(flt, status=()).conditions(utcnow()) if flt else []
        with self.reading() as s:
            found = dict(s.execute(select(Case.status, func.count()).where(*conds).group_by(Case.status)).all())
        return {status: int(found.get(status, 0)) for status in lifecycle.STATUSES}

    def sources(self) -> list[tuple[str, str]]:
        """(source id, label) of every camera or photo source with cases, for filters: its name, with its id
        where two sources share a name (two cameras named after one street)."""
        with self.reading() as s:
            rows = s.execute(select(Case.source_id, func.max(Case.source_name)).group_by(Case.source_id)).all()
        names = [name or sid for sid, name in rows]
        labels = [
            (sid, name if names.count(name) == 1 else f"{name} [{sid}]")
            for (sid, _), name in zip(rows, names, strict=True)
        ]
        return sorted(labels, key=lambda r: r[1])

    def departments(self) -> list[str]:
        """Every department a case was dispatched to, for filters."""
        with self.reading() as s:
            rows = s.scalars(select(Case.department).where(Case.department.is_not(None)).distinct()).all()
        return sorted(rows)

    def _case_out(self, s: Session, case: Case, now: datetime) -> CaseOut:
        evidence = sorted(case.evidence, key=lambda e: (-e.score, e.kind != "frame", e.id))
        base = self.public_url
        return CaseOut(
            id=case.id,
            type=case.type,
            type_zh=VIOLATIONS[case.type].zh,
            original_type=case.original_type,
            detector_class=case.detector_class,
            status=case.status,
            source=case.source,
            source_id=case.source_id,
            source_name=case.source_name,
            zone=case.zone,
            location={"lat": case.lat, "lon": case.lon} if case.lat is not None and case.lon is not None else None,
            first_seen=case.first_seen,
            last_seen=case.last_seen,
            occurrences=case.occurrences,
            score=round(case.score, 4),
            box=case.box,
            frame_size=(case.frame_w, case.frame_h),
            model_version=case.model_version,
            department=case.department,
            deadline=case.deadline,
            overdue=case.status == "dispatched" and case.deadline is not None and case.deadline < now,
            note=case.note,
            evidence=[
                EvidenceOut(
                    sha256=e.sha256,
                    kind=e.kind,
                    url=f"{base}/v1/evidence/{e.sha256}",
                    score=round(e.score, 4),
                    box=e.box,
                    frame_size=(e.frame_w, e.frame_h),
                    pruned_at=e.pruned_at,
                )
                for e in evidence
            ],
            created_at=case.created_at,
            updated_at=case.updated_at,
            reviewed_by=case.reviewed_by,
            confirmed_at=case.confirmed_at,
            dispatched_at=case.dispatched_at,
            resolved_at=case.resolved_at,
            closed_at=case.closed_at,
            actions=lifecycle.actions_from(case.status),
            version=case.version,
        )

    # --------------------------------------------------------------------------------------- stats
    def stats(self, since: datetime, until: datetime, tz: tzinfo = timezone.utc) -> StatsOut:
        """Supervision figures over cases first seen in [since, until); days counted in ``tz``."""
        if until <= since:
            raise InvalidRequest("'until' must be after 'since'")
        now = utcnow()
        in_range = (Case.first_seen >= since, Case.first_seen < until)

        def grouped(s: Session, column: Any, *extra: Any) -> list[tuple[str, int]]:
            rows = s.execute(select(column, func.count()).where(*in_range, *extra).group_by(column)).all()
            return sorted(((str(k), int(n)) for k, n in rows if k is not None), key=lambda r: (-r[1], r[0]))

        with self.reading() as s:
            total = int(s.scalar(select(func.count()).select_from(Case).where(*in_range)) or 0)
            by_type = grouped(s, Case.type)
            by_camera = grouped(s, Case.source_id)
            names = dict(
                s.execute(
                    select(Case.source_id, func.max(Case.source_name)).where(*in_range).group_by(Case.source_id)
                ).all()
            )
            # with the department now, or resolved / closed by it; not a reopened case waiting to be dispatched again
            by_department = grouped(s, Case.department, Case.status.in_(lifecycle.ASSIGNED_STATUSES))
            by_status = dict(grouped(s, Case.status))
            reviewed = int(
                s.scalar(select(func.count()).select_from(Case).where(*in_range, Case.reviewed_at.is_not(None))) or 0
            )
            confirmed = int(
                s.scalar(select(func.count()).select_from(Case).where(*in_range, Case.confirmed_at.is_not(None))) or 0
            )
            overdue = int(
                s.scalar(
                    select(func.count())
                    .select_from(Case)
                    .where(*in_range, Case.status == "dispatched", Case.deadline < now)
                )
                or 0
            )
            resolved_rows = s.execute(
                select(Case.created_at, Case.resolved_at, Case.deadline, Case.first_seen).where(
                    *in_range, Case.resolved_at.is_not(None)
                )
            ).all()
            days = s.execute(select(Case.first_seen).where(*in_range)).scalars().all()
            relabelled = int(
                s.scalar(
                    select(func.count())
                    .select_from(Case)
                    .where(*in_range, Case.confirmed_at.is_not(None), Case.original_type != Case.type)
                )
                or 0
            )
            handovers = s.execute(
                select(History.case_id, History.action, History.at, History.details)
                .join(Case, Case.id == History.case_id)
                .where(*in_range, History.action.in_(("dispatch", "resolve")))
                .order_by(History.case_id, History.id)
            ).all()
        # dismissed cases were reviewed and judged wrong; confirmed_at stays set on reopened cases
        reviewed = max(reviewed, confirmed)
        hours = [(r.resolved_at - r.created_at).total_seconds() / 3600 for r in resolved_rows]
        late = sum(1 for r in resolved_rows if r.deadline is not None and r.resolved_at > r.deadline)
        closed = by_status.get("resolved", 0) + by_status.get("closed", 0)
        first, last = since.astimezone(tz).date(), (until - timedelta(microseconds=1)).astimezone(tz).date()
        per_day: dict[str, int] = {}
        per_month: dict[str, int] = {}
        day = first
        while day <= last:  # every day (up to a year: beyond, a column per day says nothing) and month
            if (last - first).days <= 366:
                per_day[day.isoformat()] = 0
            per_month.setdefault(day.isoformat()[:7], 0)
            day = day + timedelta(days=1) if per_day else (day.replace(day=1) + timedelta(days=32)).replace(day=1)
        for t in days:
            local = t.astimezone(tz).date().isoformat()
            if per_day:
                per_day[local] = per_day.get(local, 0) + 1
            per_month[local[:7]] = per_month.get(local[:7], 0) + 1
        return StatsOut(
            since=since,
            until=until,
            total=total,
            by_type=[
                CountOut(key=k, label=f"{VIOLATIONS[k].zh} {k}" if k in VIOLATIONS else k, count=n) for k, n in by_type
            ],
            by_camera=[CountOut(key=k, label=names.get(k) or k, count=n) for k, n in by_camera],
            by_department=[CountOut(key=k, label=k, count=n) for k, n in by_department],
            by_status=[
                CountOut(
                    key=k, label=f"{lifecycle.STATUSES[k][0]} {lifecycle.STATUSES[k][1]}", count=by_status.get(k, 0)
                )
                for k in lifecycle.STATUSES
            ],
            by_day=[CountOut(key=k, label=k, count=n) for k, n in sorted(per_day.items())],
            by_month=[CountOut(key=k, label=k, count=n) for k, n in sorted(per_month.items())],
            reviewed=reviewed,
            confirmed=confirmed,
            relabelled=relabelled,
            confirmation_rate=round(confirmed / reviewed, 4) if reviewed else None,
            closure_rate=round(closed / confirmed, 4) if confirmed else None,
            overdue=overdue,
            resolved_late=late,
            deadlines=_deadlines(handovers, now),
            median_hours_to_resolve=round(statistics.median(hours), 2) if hours else None,
        )

    # ---------------------------------------------------------------------------------------- keys
    def create_key(self, role: str, name: str) -> tuple[str, KeyOut]:
        """A new API key of ``role``: returns the key (shown once) and its record; only a hash is stored."""
        if role not in ROLES:
            raise InvalidRequest(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        key = f"sw_{role[:3]}_{secrets.token_urlsafe(32)}"

        def work(s: Session) -> KeyOut:
            row = ApiKey(name=name, role=role, prefix=key[:12], key_hash=hash_key(key), created_at=utcnow())
            s.add(row)
            s.flush()
            return _key_out(row)

        return key, self._write(work)

    def verify_key(self, key: str) -> KeyOut | None:
        """The record of a valid, unrevoked key; None otherwise. Notes its use (at most once a minute)."""
        digest = hash_key(key)
        with self.reading() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if row is None or row.revoked_at is not None:
            return None
        now = utcnow()
        stale = row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1)
        if stale and self._note_use(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now)):
            row.last_used_at = now
        return _key_out(row)

    def _note_use(self, *changes: Any) -> bool:
        """Run bookkeeping updates (when a key or session was last used) in one write, in the order given; False
        when the database is busy: bookkeeping only, never a reason to refuse the request."""
        try:
            self._write(lambda s: [s.execute(change) for change in changes], attempts=1)
        except OperationalError:
            return False
        return True

    def list_keys(self) -> list[KeyOut]:
        """Every key's record."""
        with self.reading() as s:
            return [_key_out(r) for r in s.scalars(select(ApiKey).order_by(ApiKey.id))]

    def revoke_key(self, key_id: int, keep_admin: bool = False) -> KeyOut:
        """Revoke a key (kept for the record). With ``keep_admin`` (the API), the last admin key in force is
        refused (InvalidRequest): nobody could manage keys through the API after it."""

        def work(s: Session) -> KeyOut:
            row = s.get(ApiKey, key_id, with_for_update=True)
            if row is None:
                raise LookupError(f"no key {key_id}")
            if keep_admin and row.role == "admin" and row.revoked_at is None:
                admins = s.scalar(
                    select(func.count()).select_from(ApiKey).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))
                )
                if admins == 1:
                    raise InvalidRequest(
                        f"key {key_id} is the last admin key in force: create another admin key before revoking "
                        "it (or revoke it on the server with `streetwatch keys revoke`)"
                    )
            row.revoked_at = row.revoked_at or utcnow()
            s.execute(delete(ReviewSession).where(ReviewSession.key_id == key_id))  # its sign-ins end with it
            return _key_out(row)

        return self._write(work)

    # ---------------------------------------------------------------------------- review sessions
    def create_session(self, key_id: int, lifetime: timedelta, replaces: str | None = None) -> str:
        """A sign-in of the review page with key ``key_id`` lasting ``lifetime``: returns its token (for the
        cookie); only a hash is stored. The session of token ``replaces`` (the browser's earlier one) ends, and
        sessions that have expired meanwhile, anyone's, are deleted."""
        token = secrets.token_urlsafe(32)
        now = utcnow()

        def work(s: Session) -> None:
            ended = ReviewSession.expires_at <= now
            if replaces:
                ended = ended | (ReviewSession.token_hash == hash_key(replaces))
            s.execute(delete(ReviewSession).where(ended))
            s.add(
                ReviewSession(
                    token_hash=hash_key(token),
                    key_id=key_id,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + lifetime,
                )
            )

        self._write(work)
        return token

    def verify_session(self, token: str) -> KeyOut | None:
        """The key record of a session in force (not ended, not expired, its key not revoked); None otherwise.
        Notes its use, and the key's, at most once a minute."""
        now = utcnow()
        with self.reading() as s:
            found = s.execute(
                select(ReviewSession, ApiKey)
                .join(ApiKey, ApiKey.id == ReviewSession.key_id)
                .where(ReviewSession.token_hash == hash_key(token))
            ).first()
        if found is None:
            return None
        session, key = found
        if session.expires_at <= now or key.revoked_at is not None:
            return None
        if now - session.last_seen_at > timedelta(minutes=1) and self._note_use(
            # the key's row first, as revoke_key locks them: no deadlock with it
            update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now),
            update(ReviewSession).where(ReviewSession.id == session.id).values(last_seen_at=now),
        ):
            key.last_used_at = now
        return _key_out(key)

    def end_session(self, token: str) -> None:
        """Sign out: the session is deleted, so a copy of its cookie is refused too."""
        self._write(lambda s: s.execute(delete(ReviewSession).where(ReviewSession.token_hash == hash_key(token))))

    def healthy(self) -> bool:
        """Whether the database answers."""
        with self.reading() as s:
            return s.scalar(select(func.count()).select_from(ApiKey)) is not None


def _chunks(items: list[T], size: int = 500) -> Iterator[list[T]]:
    """``items`` in slices short enough for any database's bound-parameter limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _evidence_lock_id(sha256: str) -> int:
    """The PostgreSQL advisory lock of an evidence file (the first 64 bits of its SHA-256)."""
    return int.from_bytes(bytes.fromhex(sha256[:16]), "big", signed=True)


def _expired(before: datetime) -> ColumnElement[bool]:
    """Cases whose evidence the retention policy removes: closed, or dismissed, before ``before``."""
    return ((Case.status == "closed") & (Case.closed_at < before)) | (
        (Case.status == "dismissed") & (Case.reviewed_at < before)
    )


def _retention_since(case: Case, before: datetime) -> datetime | None:
    """When ``case`` was closed or dismissed, if before ``before`` (as :func:`_expired`); else None."""
    since = {"closed": case.closed_at, "dismissed": case.reviewed_at}.get(case.status)
    return since if since is not None and since < before else None


def _size(stored: StoredFile | None) -> int:
    """Bytes of an evidence file (0: not there)."""
    return stored.size if stored is not None else 0


def _by_gps(v: Violation) -> bool:
    """Patrol photos with a position are matched by distance; cameras (fixed view) by zone and box overlap."""
    return v.source == "photo" and v.location is not None


#: Longest text the store keeps per field (the column sizes).
TEXT_LIMITS = {"source_id": 200, "source_name": 300, "zone": 200, "model_version": 200}


def check_violation(v: Violation) -> None:
    """Refuse what the contract allows but the store cannot keep faithfully (InvalidRequest says why)."""
    for name, limit in TEXT_LIMITS.items():
        value = getattr(v, name)
        if value is not None and len(value) > limit:
            raise InvalidRequest(f"{name} is {len(value)} characters long (limit {limit})")
    if not all(math.isfinite(c) for c in v.box) or v.box[2] < v.box[0] or v.box[3] < v.box[1]:
        raise InvalidRequest(f"box {list(v.box)} is not a finite x1 <= x2, y1 <= y2 rectangle")
    if min(v.frame_size) <= 0 or max(v.frame_size) > 100_000:
        raise InvalidRequest(f"frame_size {list(v.frame_size)} is not a plausible (width, height)")
    (w, h), (x1, y1, x2, y2) = v.frame_size, v.box
    if x2 < 0 or y2 < 0 or x1 > w or y1 > h or x1 < -w or y1 < -h or x2 > 2 * w or y2 > 2 * h:
        raise InvalidRequest(f"box {list(v.box)} does not lie on the {w}x{h} frame")
    if v.last_seen < v.first_seen:
        raise InvalidRequest("last_seen is before first_seen")


def _same_violation(v: Violation, case: Case) -> None:
    """Refuse a repeat of a key that names another violation than the one the key filed (another type, kind
    of source or camera): a producer reusing keys would otherwise overwrite a case with something else.
    A case's occurrences share its type (before or after a relabel) and kind of source, and on a camera its
    camera; patrol photos of one place may share a case, so a photo's source_id is not compared."""
    theirs = (case.type, case.original_type)
    if v.type not in theirs or v.source != case.source or (v.source == "camera" and v.source_id != case.source_id):
        filed = f"a {case.original_type or case.type} violation from {case.source} {case.source_id}"
        raise InvalidRequest(
            f"key {v.key!r} already filed {filed} (case {case.id}), not a {v.type} violation from {v.source} "
            f"{v.source_id}: a repeat of a key must be the same violation; give another one its own key"
        )


def _key_out(row: ApiKey) -> KeyOut:
    return KeyOut(
        id=row.id,
        name=row.name,
        role=row.role,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _claimable(now: datetime) -> tuple[ColumnElement[bool], ...]:
    """Conditions of an outbox event a dispatcher may lease now: pending, due, not leased, and no earlier event
    of its case still to go (pending, or failed: given up until an admin retries it)."""
    earlier = aliased(OutboxEvent)
    return (
        OutboxEvent.status == "pending",
        OutboxEvent.next_attempt_at <= now,
        OutboxEvent.locked_until.is_(None) | (OutboxEvent.locked_until < now),
        ~exists().where(
            earlier.case_id == OutboxEvent.case_id,
            earlier.id < OutboxEvent.id,
            earlier.status.in_(("pending", "failed")),
        ),
    )


def _silent(action: str, before: str) -> bool:
    """Actions the webhook is not told of: relabelling a case already confirmed (it stays confirmed), and
    reopening a dismissed one (back to new: the receiver never heard of it, dismissals are not pushed)."""
    return (action, before) in {("relabel", "confirmed"), ("reopen", "dismissed")}


def _outbox_history(event: OutboxEvent, actor: str, action: str, at: datetime, **details: Any) -> History:
    """A case-history line about one of its webhook events (delivered, retried)."""
    return History(
        case_id=event.case_id,
        at=at,
        actor=actor,
        action=action,
        from_status=None,
        to_status=None,
        details={"event": event.event, "idempotency_key": event.idempotency_key, "attempts": event.attempts, **details},
    )


def _retryable(exc: IntegrityError | OperationalError) -> bool:
    """Unique-key races (someone else filed the same key first) and lock timeouts are worth a retry."""
    text = str(exc.orig or exc).lower()
    if isinstance(exc, IntegrityError):
        return "unique" in text or "duplicate" in text
    return any(w in text for w in ("locked", "busy", "deadlock", "could not serialize"))


def _deadlines(handovers: Collection[Any], now: datetime) -> list[DeadlinesOut]:
    """Deadlines given to, missed and still running at each department, from the cases' dispatch and
    resolve history (ordered by case, then time). A deadline is missed when it passed while the case was
    with that department: before the next dispatch (a re-dispatch or an extension), the resolution, or now."""
    count: dict[str, dict[str, int]] = {}
    held: tuple[str, datetime] | None = None  # (department, deadline) of the case being read
    case_id = None

    def end(at: datetime, still_there: bool = False) -> None:
        if held is not None and (at > held[1] or still_there):
            count[held[0]]["missed" if at > held[1] else "running"] += 1

    for row in handovers:
        if row.case_id != case_id:
            end(now, still_there=True)  # the previous case is still with its department
            held, case_id = None, row.case_id
        end(row.at)
        held = None
        if row.action == "dispatch":
            department = row.details["department"]
            held = (department, datetime.fromisoformat(row.details["deadline"]))
            count.setdefault(department, {"deadlines": 0, "missed": 0, "running": 0})["deadlines"] += 1
    end(now, still_there=True)
    rows = [DeadlinesOut(department=d, **n) for d, n in count.items()]
    return sorted(rows, key=lambda r: (-r.missed, -r.deadlines, r.department))
