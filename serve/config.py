"""The service's configuration: one pydantic model per concern, assembled in :class:`ServiceConfig`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.cameras import check_timezone
from pipeline.detect import DetectorConfig
from pipeline.files import read_text

#: Lifecycle events a webhook can be told about.
WEBHOOK_EVENTS = ("confirmed", "dispatched", "resolved", "closed", "reopened")


class LimitsConfig(BaseModel):
    """What the service accepts; anything beyond is refused with a 4xx and the reason."""

    model_config = ConfigDict(extra="forbid")

    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest image upload to /v1/detect, bytes")
    max_ingest_bytes: int = Field(
        48 * 1024 * 1024, ge=1024, description="Largest violation (JSON with base64 evidence) to /v1/cases/ingest"
    )
    max_json_bytes: int = Field(256 * 1024, ge=1024, description="Largest body of any other request, bytes")
    max_pixels: int = Field(
        50_000_000, ge=1, description="Largest image accepted, width x height, checked before decoding"
    )
    max_side: int = Field(16384, ge=16, description="Longest image side accepted, pixels")
    max_evidence_images: int = Field(8, ge=1, description="Most evidence pictures per violation")
    max_page_size: int = Field(200, ge=1, description="Most cases one list request returns")


class BatchingConfig(BaseModel):
    """Micro-batching of concurrent /v1/detect requests into one detector call."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | Literal["auto"] = Field(
        "auto",
        description="Collect concurrent requests into one detect_batch call; auto: only when the model runs on an "
        "accelerator (on the CPU provider one call already uses every core: benchmarks/serve_batching.py)",
    )
    max_batch: int = Field(8, ge=1, le=64, description="Most images in one detector call")
    max_wait_ms: float = Field(
        8.0, ge=0, le=1000, description="Longest a request waits for others to join its batch, milliseconds"
    )
    workers: int = Field(2, ge=1, le=16, description="Batches in flight at once (the next one forms meanwhile)")


class ReloadConfig(BaseModel):
    """Following the registry's default model while running (hot reload after ``streetwatch promote``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True,
        description="When the detector's model is 'default', switch to a newly promoted default without restart "
        "(requests in flight finish on the old model)",
    )
    poll_s: float = Field(2.0, gt=0, le=3600, description="How often registry.json is checked, seconds")


class WebhookConfig(BaseModel):
    """Pushing case events to an external case system through the transactional outbox."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="URL that receives a JSON POST per event; None: no pushing")
    events: list[Literal["confirmed", "dispatched", "resolved", "closed", "reopened"]] = Field(
        default_factory=lambda: ["confirmed"], description="Which lifecycle events are pushed"
    )
    secret: str | None = Field(None, description="Sent as 'Authorization: Bearer SECRET' to the receiver when set")
    signing_secret: str | None = Field(
        None,
        description="When set, every POST carries X-Streetwatch-Timestamp (unix seconds) and X-Streetwatch-Signature: "
        "sha256=HEX, the HMAC-SHA256 of 'TIMESTAMP.BODY' with this secret (UTF-8), for the receiver to check "
        "who sent it and refuse replays; at least 16 characters",
    )
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one delivery attempt, seconds")
    max_attempts: int = Field(15, ge=1, description="Attempts before an event is marked failed (kept for inspection)")
    backoff_s: float = Field(1.0, gt=0, description="Delay after the first failure; doubles after each further one")
    max_backoff_s: float = Field(900.0, gt=0, description="Longest delay between attempts, seconds")
    poll_s: float = Field(1.0, gt=0, description="How often the dispatcher looks for due events, seconds")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """A URL the dispatcher can post to: checked here, so that a typo is refused at start instead of
        every event waiting for ever."""
        if value is None:
            return value
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError("webhook url must start with http:// or https://")
        if any(c.isspace() for c in value):
            raise ValueError("webhook url contains a space or line break")
        try:
            url = httpx.URL(value)
            host, port = url.host, url.port
        except (httpx.InvalidURL, ValueError) as exc:  # a bad port, a host IDNA cannot encode
            raise ValueError(f"webhook url is not a valid URL: {exc}") from None
        if not host:
            raise ValueError("webhook url names no host")
        if ":" not in host:  # a name (IPv6 literals aside) must be one the resolver can encode
            try:
                host.rstrip(".").encode("idna")
            except UnicodeError as exc:
                raise ValueError(f"webhook url's host {host!r} is not a valid host name: {exc}") from None
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"webhook url's port {port} is not between 1 and 65535")
        return value

    @field_validator("secret")
    @classmethod
    def _header_safe(cls, value: str | None) -> str | None:
        """The secret travels in an HTTP header: printable ASCII only."""
        if value is not None and not (value.isascii() and value.isprintable() and value.strip() == value and value):
            raise ValueError("webhook secret must be printable ASCII, no surrounding spaces (it is sent in a header)")
        return value

    @field_validator("signing_secret")
    @classmethod
    def _signing_secret(cls, value: str | None) -> str | None:
        """A secret the receiver can type in the same (no surrounding spaces) and nobody guesses (16 or more)."""
        if value is None:
            return value
        if value.strip() != value:
            raise ValueError(
                "webhook signing_secret has surrounding spaces or line breaks (the receiver's would differ)"
            )
        if len(value) < 16:
            raise ValueError("webhook signing_secret must be at least 16 characters (e.g. openssl rand -hex 32)")
        return value


class DedupConfig(BaseModel):
    """When a new violation is the same thing as an open case (an occurrence, not a new case)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Merge repeated violations into the open case")
    window_s: float = Field(
        1800.0, ge=0, description="A violation first seen within this many seconds of the case's last sighting merges"
    )
    iou: float = Field(0.3, ge=0, le=1, description="Camera cases: box overlap (IoU) that counts as the same place")
    radius_m: float = Field(25.0, ge=0, description="Cases with GPS: distance that counts as the same place, metres")


class RetentionConfig(BaseModel):
    """How long evidence pictures are kept: pruned by the service itself when ``closed_for_days`` is set, or by
    ``streetwatch evidence prune`` (by hand, or from cron), which takes these as its defaults."""

    model_config = ConfigDict(extra="forbid")

    closed_for_days: float | None = Field(
        None,
        gt=0,
        description="Remove the pictures of cases closed or dismissed at least this many days ago (the cases and "
        "their history stay); None: the service keeps every picture",
    )
    grace_hours: float = Field(
        24.0,
        ge=1,
        description="Picture files no case references are removed once this old, hours (an ingestion writes its "
        "pictures before it commits)",
    )
    every_hours: float = Field(
        24.0, gt=0, description="How often the service prunes, hours (the first time a minute after it starts)"
    )


class ServiceConfig(BaseModel):
    """Everything ``streetwatch serve`` runs with."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(Path("data"), description="Folder for the SQLite store, evidence files and spool")
    db_url: str | None = Field(
        None, description="Database URL (sqlite:///..., postgresql://...); default: SQLite file in data_dir"
    )
    host: str = Field("127.0.0.1", description="Address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on")
    public_url: str | None = Field(
        None,
        description="Base URL people reach the service at (links in webhooks); https:// makes the review page's "
        "session cookie Secure (also behind a proxy that ends TLS)",
    )
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="The model that /v1/detect runs")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request and image limits")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Micro-batching of detection")
    reload: ReloadConfig = Field(default_factory=ReloadConfig, description="Following a newly promoted model")
    webhook: WebhookConfig = Field(default_factory=WebhookConfig, description="Outbound case events")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Merging repeated violations")
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig, description="How long evidence pictures are kept"
    )
    departments: list[str] = Field(
        default_factory=lambda: ["城管执法中队", "环卫所", "交警大队", "市场监管所", "街道办事处"],
        description="Departments offered when dispatching (any other name may be typed)",
    )
    timezone: str = Field(
        "Asia/Shanghai", description="Local time zone: dates on the review page, stats days, dates without a zone"
    )
    default_deadline_hours: float = Field(48.0, gt=0, description="Deadline proposed when dispatching, hours")
    session_hours: float = Field(
        12.0,
        gt=0,
        le=24 * 366,  # a year at most: a date that far on is one the store can hold (inf was a 500 at each sign-in)
        description="How long a sign-in on the review page lasts, hours from signing in (then sign in again; at "
        "most a year); signing out or revoking the key ends it at once",
    )
    load_detector: bool = Field(True, description="Load the model at start (off: a case-queue-only service)")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return check_timezone(value)

    @property
    def tz(self):  # -> ZoneInfo
        """The local time zone."""
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)

    @property
    def database_url(self) -> str:
        """The database URL in force (the SQLite file under data_dir unless db_url is set)."""
        return self.db_url or f"sqlite:///{(self.data_dir / 'streetwatch.db').resolve()}"

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: object) -> ServiceConfig:
        """Config from a YAML file (optional) with keyword overrides on top (None values ignored)."""
        data: dict = {}
        if path is not None:
            try:
                data = yaml.safe_load(read_text(path)) or {}
            except FileNotFoundError:
                raise ValueError(f"{path}: no such configuration file") from None
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a mapping of settings")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)
