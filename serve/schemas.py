"""Request and response models of the API (pydantic, ``extra="forbid"``, every field described)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.classes import CLASS_NAMES, VIOLATION_TYPES
from pipeline.cases import GeoPoint, PlausibleTime, Text

Role = Literal["ingest", "reviewer", "admin"]
Status = Literal["new", "confirmed", "dismissed", "dispatched", "resolved", "closed"]


#: A row number the database can hold (PostgreSQL ``integer``).
EventId = Annotated[int, Field(ge=1, le=2**31 - 1)]


class Model(BaseModel):
    """Base of every API model: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (e.g. 2026-11-26T08:00:00+08:00)")
    return value


# -------------------------------------------------------------------------------------------- cases


class IngestResult(Model):
    """What ingesting one violation did."""

    case_id: int = Field(description="The case the violation is filed in")
    created: bool = Field(description="True when a new case was opened; False when an existing one was updated")
    outcome: Literal["created", "merged", "updated"] = Field(
        description="created: new case; merged: new occurrence added to an open case; updated: repeat of a key"
    )
    status: Status = Field(description="The case's status after ingestion")


class EvidenceOut(Model):
    """One evidence picture of a case."""

    sha256: str = Field(description="Content address; the picture is at url")
    kind: Literal["frame", "crop", "clean"] = Field(
        description="Annotated full frame, crop around the object, or the full frame with nothing drawn (retraining)"
    )
    url: str = Field(description="Where the API serves the JPEG (needs a reviewer key)")
    score: float = Field(description="Detector confidence of the sighting this picture shows")
    box: list[float] = Field(description="xyxy box on the frame, pixels (for a frame picture)")
    frame_size: tuple[int, int] = Field(description="(width, height) of the frame the box refers to")
    pruned_at: datetime | None = Field(
        None,
        description="When the retention policy removed the picture (`streetwatch evidence prune`): url then "
        "answers 410 Gone; the rest of the record stays",
    )


class CaseOut(Model):
    """A case as the API shows it."""

    id: int = Field(description="Case number")
    type: str = Field(description="Violation type (after any correction by a reviewer)")
    type_zh: str = Field(description="Violation type in Chinese")
    original_type: str | None = Field(description="Type the model reported, when a reviewer corrected it")
    detector_class: str = Field(description="Detector class of the object")
    status: Status = Field(description="Lifecycle status")
    source: Literal["camera", "photo"] = Field(description="Camera stream or patrol photo")
    source_id: str = Field(description="Camera id or photo content hash")
    source_name: str | None = Field(description="Camera or photo name, for people")
    zone: str | None = Field(description="Zone of the camera view")
    location: GeoPoint | None = Field(description="GPS position when known")
    first_seen: datetime = Field(description="First sighting")
    last_seen: datetime = Field(description="Latest sighting")
    occurrences: int = Field(description="How many separate violations were merged into this case")
    score: float = Field(description="Best detector confidence")
    box: list[float] = Field(description="xyxy box of the best evidence frame")
    frame_size: tuple[int, int] = Field(description="(width, height) of the best evidence frame")
    model_version: str = Field(description="Model version that found it")
    department: str | None = Field(description="Department responsible (after dispatch)")
    deadline: datetime | None = Field(description="Deadline for rectification (after dispatch)")
    overdue: bool = Field(description="Dispatched and past its deadline without being resolved")
    note: str | None = Field(description="Latest note a person wrote")
    evidence: list[EvidenceOut] = Field(description="Evidence pictures, best first")
    created_at: datetime = Field(description="When the case was filed")
    updated_at: datetime = Field(description="Last change")
    reviewed_by: str | None = Field(description="Key name of the reviewer")
    confirmed_at: datetime | None = Field(description="When a reviewer confirmed it")
    dispatched_at: datetime | None = Field(description="When it was (last) dispatched")
    resolved_at: datetime | None = Field(description="When the department reported it resolved")
    closed_at: datetime | None = Field(description="When it was closed")
    actions: list[str] = Field(description="Lifecycle actions allowed now")
    version: int = Field(
        description="Lifecycle actions taken so far; send it with an action to have the action refused (409) "
        "when someone else acted on the case after you read it"
    )


class CasePage(Model):
    """One page of a case list."""

    items: list[CaseOut] = Field(description="Cases on this page, newest first")
    total: int = Field(description="Cases matching the filters")
    offset: int = Field(description="Index of the first item")
    limit: int = Field(description="Page size asked for")


class HistoryOut(Model):
    """One change of a case."""

    id: int = Field(description="Entry number")
    at: datetime = Field(description="When")
    actor: str = Field(description="Who: key name (role), or 'system'")
    action: str = Field(description="What: created, merged, updated, confirm, dismiss, relabel, dispatch, ...")
    from_status: str | None = Field(description="Status before")
    to_status: str | None = Field(description="Status after")
    details: dict[str, Any] = Field(description="Action details (department, deadline, note, labels, keys)")


class Decision(Model):
    """Base of a reviewer's action on a case."""

    version: int | None = Field(
        None,
        ge=0,
        description="The case's version (from GET) this decision was made on: if someone acted on the case "
        "since, the action is refused (409) instead of replacing theirs",
    )


class ReviewIn(Decision):
    """A reviewer's verdict on a new case."""

    action: Literal["confirm", "dismiss", "relabel"] = Field(
        description="confirm: a real violation; dismiss: a false positive; relabel: real, but of another type"
    )
    type: str | None = Field(None, description="relabel: the correct violation type")
    detector_class: str | None = Field(None, description="relabel: the correct detector class (default: by type)")
    note: Text | None = Field(None, max_length=2000, description="Reviewer's remark")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is not None and value not in VIOLATION_TYPES:
            raise ValueError(f"unknown violation type {value!r}; known: {', '.join(VIOLATION_TYPES)}")
        return value

    @field_validator("detector_class")
    @classmethod
    def _known_class(cls, value: str | None) -> str | None:
        if value is not None and value not in CLASS_NAMES:
            raise ValueError(f"unknown detector class {value!r}; known: {', '.join(CLASS_NAMES)}")
        return value


class DispatchIn(Decision):
    """Hand a confirmed case to a department with a deadline (责任落实 / 限期整改)."""

    department: Text = Field(min_length=1, max_length=200, description="Responsible department")
    deadline: PlausibleTime = Field(description="Rectification deadline (timezone-aware, in the future)")
    note: Text | None = Field(None, max_length=2000, description="Instructions for the department")

    _aware = field_validator("deadline")(_aware)


class NoteIn(Decision):
    """A lifecycle step that takes only a remark (resolve, close)."""

    note: Text | None = Field(None, max_length=2000, description="Remark: what was done, why closed")


class ReopenIn(Decision):
    """Reopen a dismissed, resolved or closed case."""

    note: Text = Field(min_length=1, max_length=2000, description="Why the case is reopened (required)")


# -------------------------------------------------------------------------------------------- stats


class CountOut(Model):
    """A count for one group."""

    key: str = Field(description="Group: violation type, camera, department, status or day")
    label: str = Field(description="Name for people")
    count: int = Field(description="Cases in the group")


class DeadlinesOut(Model):
    """How a department kept the deadlines it was given (限期整改), over the cases in a range."""

    department: str = Field(description="Department")
    deadlines: int = Field(description="Deadlines it was given: each dispatch to it, a re-dispatch included")
    missed: int = Field(
        description="Of those, the ones that passed while the case was still with it, unresolved (a later "
        "re-dispatch, extension or reopening does not undo a miss)"
    )
    running: int = Field(description="Of those, the ones not passed yet, the case still with it, unresolved")


class StatsOut(Model):
    """Supervision and assessment figures (督查考核) over a date range."""

    since: datetime = Field(description="Start of the range (cases first seen at or after)")
    until: datetime = Field(description="End of the range (cases first seen before)")
    total: int = Field(description="Cases in the range")
    by_type: list[CountOut] = Field(description="Cases per violation type")
    by_camera: list[CountOut] = Field(description="Cases per camera or photo source")
    by_department: list[CountOut] = Field(
        description="Cases per department they were last dispatched to, of those now dispatched, resolved or "
        "closed (a case reopened and not yet dispatched again is not counted)"
    )
    by_status: list[CountOut] = Field(description="Cases per current status")
    by_day: list[CountOut] = Field(
        description="Cases per local day, every day of the range (empty for ranges beyond a year: see by_month)"
    )
    by_month: list[CountOut] = Field(description="Cases per local month (YYYY-MM), every month of the range")
    reviewed: int = Field(description="Cases a person has reviewed (confirmed, relabelled or dismissed)")
    confirmed: int = Field(description="Reviewed cases judged real violations (relabelled ones included)")
    relabelled: int = Field(description="Of the confirmed cases, those a reviewer gave another violation type")
    confirmation_rate: float | None = Field(
        description="confirmed / reviewed: how often the model found a real violation (of whatever type)"
    )
    closure_rate: float | None = Field(description="Resolved or closed / confirmed")
    overdue: int = Field(description="Dispatched cases past their deadline, still unresolved")
    resolved_late: int = Field(
        description="Resolved or closed cases whose resolution came after the deadline in force then"
    )
    deadlines: list[DeadlinesOut] = Field(
        description="Per department that held a deadline: deadlines given and missed, most missed first"
    )
    median_hours_to_resolve: float | None = Field(description="Median hours from filing to resolution")


# --------------------------------------------------------------------------------------------- keys


class KeyCreateIn(Model):
    """A new API key."""

    role: Role = Field(description="ingest: stream workers and audits; reviewer: the review desk; admin: all")
    name: Text = Field(min_length=1, max_length=100, description="Who or what uses the key (shown in history)")


class KeyOut(Model):
    """An API key's record (never the key itself)."""

    id: int = Field(description="Key number")
    name: str = Field(description="Who or what uses it")
    role: Role = Field(description="Its role")
    prefix: str = Field(description="First characters of the key, to recognise it")
    created_at: datetime = Field(description="When created")
    last_used_at: datetime | None = Field(description="Last successful use (to the minute)")
    revoked_at: datetime | None = Field(description="When revoked; a revoked key is refused")


class KeyCreated(KeyOut):
    """A new key: the only time the key itself is shown."""

    key: str = Field(description="The key; store it now, it cannot be shown again")


# --------------------------------------------------------------------------------------------- outbox


class OutboxEventOut(Model):
    """One webhook event in the outbox."""

    id: int = Field(description="Event number")
    case_id: int = Field(description="The case it is about")
    event: str = Field(description="Lifecycle event (confirmed, dispatched, ...)")
    idempotency_key: str = Field(description="Sent with every attempt; the receiver drops repeats by it")
    status: Literal["pending", "delivered", "failed"] = Field(
        description="pending: to be tried (again); delivered; failed: gave up after the configured attempts"
    )
    attempts: int = Field(description="Delivery attempts so far")
    next_attempt_at: datetime = Field(description="When the next attempt is due (pending events)")
    last_error: str | None = Field(description="Why the last attempt failed")
    created_at: datetime = Field(description="When the event was queued")
    delivered_at: datetime | None = Field(description="When the receiver accepted it")


class OutboxRetryIn(Model):
    """Which failed (and, asked, pending) events to try again now."""

    ids: list[EventId] | None = Field(None, max_length=1000, description="Event numbers; none: every failed event")
    pending: bool = Field(
        False,
        description="Also send pending events now instead of at their next backoff time (a receiver that was "
        "down is back); their attempts are kept",
    )


class OutboxRetried(Model):
    """What a retry request did."""

    retried: list[int] = Field(description="Events put back in the queue (failed ones only)")


# --------------------------------------------------------------------------------------------- detect


class DetectionOut(Model):
    """One detected object."""

    class_: str = Field(alias="class", description="Product detector class")
    score: float = Field(description="Confidence")
    box: list[float] = Field(description="xyxy box in image pixels")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DetectOut(Model):
    """Detections of one uploaded image."""

    width: int = Field(description="Image width, pixels (after EXIF orientation)")
    height: int = Field(description="Image height, pixels")
    model_version: str = Field(description="Model version that ran")
    detections: list[DetectionOut] = Field(description="Detected objects")
    cases: list[IngestResult] = Field(description="Cases filed from the violations found (when asked to file)")


class Problem(Model):
    """An error: the reason, for people and programs."""

    detail: Any = Field(description="Why the request was refused")
    errors: list[dict[str, Any]] | None = Field(
        None, description="422: each invalid field, as {loc, msg, type} (detail joins their messages)"
    )
    status: str | None = Field(None, description="409 on a lifecycle step: the case's status now")
    action: str | None = Field(None, description="409 on a lifecycle step: the action that was refused")
