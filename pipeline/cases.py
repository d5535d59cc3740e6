"""Violations and where they go: the contract between what finds violations (stream workers, photo
audits) and what files them (the case queue, a JSON-lines file).

A :class:`Violation` describes one real-world object breaking a rule (one parked car, one garbage
pile). Its ``key`` is stable for that object: a producer may emit the same violation several times
(when it is first confirmed, with better evidence, when it ends) and every sink must treat repeats of
a key as updates of the same violation, never as new ones (idempotent ingestion).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated, Any, Literal, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from models.classes import CLASS_NAMES, VIOLATION_TYPES
from pipeline.files import atomic_write

#: Years a violation's times, a deadline or a date filter may name. Anything else is a typo or an unset
#: clock, and these bounds keep every time far from datetime's limits, so no time zone conversion overflows.
YEARS = (1900, 2999)


def plausible_time(value: datetime) -> datetime:
    """``value`` if its year is within :data:`YEARS`, else a ValueError saying so."""
    if not YEARS[0] <= value.year <= YEARS[1]:
        raise ValueError(f"year {value.year} is out of range ({YEARS[0]}-{YEARS[1]})")
    return value


def _not_a_number(value: Any) -> Any:
    """pydantic reads a bare number as Unix seconds: ``since=20261110`` would be 1970-08-23. Refused."""
    number = isinstance(value, (int, float))
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = math.isfinite(float(value))
    if number:
        raise ValueError(f"{value!r} is a number, not a time: write 2026-11-10 or 2026-11-10T08:00:00+08:00")
    return value


PlausibleTime = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(plausible_time)]


def no_nul(value: str) -> str:
    """``value`` unless it holds a NUL character, which PostgreSQL cannot store in text (and nobody types)."""
    if "\x00" in value:
        raise ValueError("text may not contain NUL (\\u0000) characters")
    return value


#: A string the case store can hold on every database: no NUL characters.
Text = Annotated[str, AfterValidator(no_nul)]


def plain_json(value: Any) -> Any:
    """``value`` if it is JSON every reader accepts: finite numbers and text without NUL characters."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise ValueError("numbers must be finite (no NaN or Infinity)") from None
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            no_nul(item)
        elif isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple)):
            stack += item
    return value


class EvidenceImage(BaseModel):
    """One evidence picture: the full frame with the box drawn, a crop of the object, or the clean frame.

    ``clean`` is the same frame as ``frame`` (same size, the violation's box refers to it) with nothing
    drawn on it: what retraining needs (``streetwatch data export-reviews``); bystanders stay blurred.
    """

    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    kind: Literal["frame", "crop", "clean"] = Field(
        description="Full annotated frame, a crop around the object, or the full frame with nothing drawn "
        "(for retraining; the box refers to it)"
    )
    jpeg: bytes = Field(description="JPEG bytes (base64 in JSON); people who are not the subject are blurred")

    @property
    def sha256(self) -> str:
        """Content address of the image."""
        return hashlib.sha256(self.jpeg).hexdigest()


class GeoPoint(BaseModel):
    """A WGS-84 position."""

    model_config = ConfigDict(extra="forbid")

    lat: float = Field(ge=-90, le=90, description="Latitude, degrees")
    lon: float = Field(ge=-180, le=180, description="Longitude, degrees")


class Violation(BaseModel):
    """One real-world object breaking a rule, with its evidence."""

    model_config = ConfigDict(extra="forbid")

    key: Text = Field(min_length=1, max_length=200, description="Idempotency key, stable for this object")
    type: str = Field(description="Violation type (models.classes.VIOLATION_TYPES)")
    state: Literal["open", "ended"] = Field("open", description="ended: the object has been gone for a while")
    source: Literal["camera", "photo"] = Field(description="Found on a camera stream or in a patrol photo")
    source_id: Text = Field(description="Camera id, or the photo's content hash")
    source_name: Text | None = Field(None, description="Camera name or photo file name, for people")
    zone: Text | None = Field(None, description="Zone name the object is in (None: whole frame / no zones)")
    first_seen: PlausibleTime = Field(description="When the object was first seen (timezone-aware)")
    last_seen: PlausibleTime = Field(description="When the object was last seen (timezone-aware)")
    detector_class: str = Field(description="Product detector class of the object")
    score: float = Field(ge=0, le=1, description="Best detector confidence seen for the object")
    box: tuple[float, float, float, float] = Field(description="xyxy box in frame pixels, on the evidence frame")
    frame_size: tuple[int, int] = Field(description="(width, height) of the evidence frame")
    model_version: Text = Field(description="Version of the model that found it")
    location: GeoPoint | None = Field(None, description="Where, when known (photo EXIF GPS, camera position)")
    evidence: list[EvidenceImage] = Field(default_factory=list, description="Evidence pictures")
    extra: Annotated[dict[str, Any], AfterValidator(plain_json)] = Field(
        default_factory=dict, description="Producer-specific details (track id, ...): plain JSON"
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in VIOLATION_TYPES:
            raise ValueError(f"unknown violation type {value!r}; known: {', '.join(VIOLATION_TYPES)}")
        return value

    @field_validator("detector_class")
    @classmethod
    def _known_class(cls, value: str) -> str:
        if value not in CLASS_NAMES:
            raise ValueError(f"unknown detector class {value!r}")
        return value

    @field_validator("first_seen", "last_seen")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value


@runtime_checkable
class ViolationSink(Protocol):
    """Where violations go. ``emit`` must be idempotent per ``violation.key`` and safe to call from threads.

    A sink that delivers after ``emit`` returns (the service URL's spool) also has
    ``undelivered(timeout_s) -> {key: reason}``: what the target has not accepted yet, after waiting.
    """

    def emit(self, violation: Violation) -> None:
        """File or update one violation."""

    def close(self) -> None:
        """Flush and release resources."""


class JsonlSink:
    """Writes each emitted violation as one JSON line; evidence JPEGs go to files named by their hash.

    The line carries ``evidence_files`` (absolute paths) instead of image bytes. With no path, lines go to stdout.
    Repeats of a key are written again (a JSON-lines log is an event log; readers keep the last per key).
    """

    def __init__(self, path: str | Path | None = None, evidence_dir: str | Path | None = None):
        self._own = path is not None
        self._fh: IO[str] = open(path, "a", encoding="utf-8") if path is not None else sys.stdout  # noqa: SIM115
        default_dir = Path(path).with_suffix("").parent / "evidence" if path is not None else None
        self.evidence_dir = Path(evidence_dir) if evidence_dir else default_dir
        self._lock = threading.Lock()

    def emit(self, violation: Violation) -> None:
        record = violation.model_dump(mode="json", exclude={"evidence"})
        files = []
        if self.evidence_dir is not None:
            self.evidence_dir.mkdir(parents=True, exist_ok=True)
            for image in violation.evidence:
                target = self.evidence_dir / f"{image.sha256}.jpg"
                if not target.exists():
                    atomic_write(target, image.jpeg)
                files.append({"kind": image.kind, "path": str(target.resolve())})  # whatever the reader's cwd
        record["evidence_files"] = files
        line = json.dumps(record, ensure_ascii=False)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._own:
            self._fh.close()


def target_label(target: str) -> str:
    """A sink target as commands show it and an audit records it (what was filed where): a URL's password
    and API key (``?key=``) are never written down, and a service URL's delivery options (``spool=``,
    ``wait=``) are left out, since changing them does not change where cases go."""
    parts = urlsplit(target)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not parts.password and not query:
        return target  # as given (urlunsplit would turn sqlite:///x into sqlite:/x)
    if parts.password:  # the host and port as written (a port that is no number is shown, not raised on)
        parts = parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}")
    query = [(k, "***" if k == "key" else v) for k, v in query if k not in ("spool", "wait")]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*/")))


def open_sink(target: str | None) -> ViolationSink:
    """The sink a command-line target names.

    ``None`` or ``-``: JSON lines on stdout; a path ending in ``.jsonl``: a JSON-lines file (evidence
    beside it). The case queue's targets (an ``http(s)://`` service URL, a database URL or a data
    folder) are provided by the case-queue service (``serve.sinks``).
    """
    if target in (None, "-"):
        return JsonlSink()
    if target.endswith(".jsonl"):
        return JsonlSink(target)
    from serve.sinks import open_case_sink  # the case queue: HTTP ingest or the store itself

    return open_case_sink(target)
