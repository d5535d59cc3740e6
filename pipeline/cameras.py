"""The camera config file: cameras, their sources, zones, schedules and rule thresholds.

One YAML file describes every camera a ``streetwatch watch`` process (or the case-queue service)
watches. :func:`load_cameras` reads it; every mistake becomes a :class:`CameraConfigError` whose lines
name the file, the line, the camera and the field, e.g.::

    cameras.yaml:14: camera 'gate-2': zones[0].polygon: a polygon needs at least 3 points

Example::

    timezone: Asia/Shanghai
    cameras:
      - id: gate-2
        name: East gate, Renmin Road
        url: rtsp://10.0.0.12:554/stream1
        sample_fps: 1
        decode: keyframes
        zones:
          - name: bus-stop
            kind: no_parking
            polygon: [[0.05, 0.55], [0.60, 0.55], [0.60, 1.0], [0.05, 1.0]]
            dwell_s: 120
            schedule: [{start: "07:00", end: "22:00"}]
"""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.classes import VEHICLE_CLASSES, VIOLATIONS
from pipeline.cases import GeoPoint
from pipeline.files import TextFileError, read_text
from pipeline.retry import backoff_delay
from pipeline.track import TrackerConfig

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*):[^\s/@]*@")
_URL_CREDENTIALS = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*):(.*)@([^@]*)$")


def hide_passwords(text: str, *urls: str) -> str:
    """``text`` with URL passwords replaced by ``***`` (``rtsp://admin:***@10.0.0.12/``): FFmpeg's errors
    name the camera URL, and they end up in logs and on status pages. Each of ``urls`` is masked from its
    user name to its last ``@``, as FFmpeg splits it (a password may hold ``@`` or ``/``); any other URL by
    the usual rules."""
    for url in urls:
        found = _URL_CREDENTIALS.match(url)
        if found:
            text = text.replace(url, f"{found[1]}:***@{found[3]}")
    return _URL_PASSWORD.sub(r"\1:***@", text)


#: The demo camera config shipped with the product (``streetwatch watch --demo``).
DEMO_CAMERAS = Path(__file__).resolve().parent / "samples" / "cameras-demo.yaml"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: Detector classes judged in ``watch`` zones: small ads, exposed garbage, overflowing bins.
WATCH_VIOLATIONS = ("small_ad", "exposed_garbage", "overflowing_bin")
WATCH_CLASSES: tuple[str, ...] = tuple(c for v in WATCH_VIOLATIONS for c in VIOLATIONS[v].sources)


class CameraConfigError(ValueError):
    """A camera config file is invalid; ``problems`` lists one ``file:line: camera: field: message`` each."""

    def __init__(self, source: str, problems: list[str]):
        super().__init__("\n".join(problems) if problems else source)
        self.source = source
        self.problems = problems


class ScheduleWindow(BaseModel):
    """A daily time window in which a zone's rule applies; ``end`` before ``start`` crosses midnight."""

    model_config = ConfigDict(extra="forbid")

    start: time = Field(description="Local start time, HH:MM")
    end: time = Field(description="Local end time, HH:MM (earlier than start: the window ends the next day)")
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(WEEKDAYS), description="Days on which the window starts (default: every day)"
    )

    @field_validator("start", "end", mode="before")
    @classmethod
    def _clock_time(cls, value: object) -> object:
        """Only "HH:MM[:SS]" text: YAML reads an unquoted 7:00 as the number 420 (seconds), which pydantic would
        take for 00:07; and a window is in the camera's local time, so it carries no UTC offset of its own."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            hours, minutes = divmod(int(value), 60)  # YAML's base 60: 7:00 -> 420
            raise ValueError(
                f'write times in quotes, "{hours:02d}:{minutes:02d}": YAML reads {hours}:{minutes:02d} as {value}'
            )
        if isinstance(value, str) and re.search(r"(Z|[+-]\d\d:?\d\d)$", value.strip()):
            raise ValueError(f"{value!r}: a local time without a UTC offset (the camera's timezone applies)")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> ScheduleWindow:
        if self.start == self.end:
            raise ValueError("start and end are equal: the window would be empty (leave out schedule for always)")
        return self


Point = Annotated[list[Annotated[float, Field(ge=0.0, le=1.0)]], Field(min_length=2, max_length=2)]


class _ZoneBase(BaseModel):
    """Fields every zone has: its name and polygon."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=80, description="Zone name, unique within the camera")
    polygon: list[Point] = Field(
        description="Corners as [x, y] in relative frame coordinates (0-1, origin top left), at least 3"
    )

    @field_validator("polygon")
    @classmethod
    def _polygon(cls, value: list[list[float]]) -> list[list[float]]:
        if len(value) < 3:
            raise ValueError("a polygon needs at least 3 points")
        area = 0.0
        for (x1, y1), (x2, y2) in zip(value, value[1:] + value[:1], strict=True):
            area += x1 * y2 - x2 * y1
        if abs(area) / 2 < 1e-4:
            raise ValueError("the polygon has no area (points on a line or repeated)")
        return value


class _RuleZone(_ZoneBase):
    """Fields shared by the zones that carry a rule: schedule, inertia and when a violation ends."""

    schedule: list[ScheduleWindow] = Field(
        default_factory=list, description="When the rule applies (local time); empty: always"
    )
    inertia: int = Field(
        3, ge=1, le=50, description="Consecutive samples an object must be in (or out) to enter (or leave) the zone"
    )
    gone_s: float = Field(
        30.0,
        gt=0,
        description="Seconds an object must be unseen before its violation ends (bridges missed detections)",
    )


class NoParkingZone(_RuleZone):
    """Vehicles must not stay here: ``illegal_parking`` after ``dwell_s`` seconds stationary."""

    kind: Literal["no_parking"] = Field(description="Zone kind")
    classes: list[Literal["car", "motorbike", "bicycle"]] = Field(
        default_factory=lambda: list(VEHICLE_CLASSES), description="Vehicle classes judged here"
    )
    dwell_s: float = Field(60.0, gt=0, description="Seconds a vehicle must stand still inside before it is a violation")
    stationary_iou: float = Field(
        0.6, gt=0, lt=1, description="Minimum box overlap (IoU) with where it stopped for a vehicle to count as still"
    )


class NoVendingZone(_RuleZone):
    """Street vending is forbidden here: ``street_vending`` after ``dwell_s`` seconds present."""

    kind: Literal["no_vending"] = Field(description="Zone kind")
    dwell_s: float = Field(120.0, gt=0, description="Seconds a stall must be present inside before it is a violation")


class WatchZone(_RuleZone):
    """Small ads, exposed garbage and overflowing bins are reported here."""

    kind: Literal["watch"] = Field(description="Zone kind")
    classes: list[Literal["small_ad", "litter", "overflowing_bin"]] = Field(
        default_factory=lambda: list(WATCH_CLASSES), description="Detector classes judged here"
    )
    window: int = Field(10, ge=1, le=1000, description="K: how many recent samples presence is judged over")
    min_fraction: float = Field(
        0.6, gt=0, le=1, description="Fraction of the last K samples the object must be seen in to be a violation"
    )
    stationary_iou: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="Minimum box overlap (IoU) with where it was first seen; moving off it (garbage carried past) "
        "starts its count again",
    )


class MaskZone(_ZoneBase):
    """Ignored area: detections standing in it are dropped before tracking (screens, private ground)."""

    kind: Literal["mask"] = Field(description="Zone kind")


ZoneConfig = Annotated[NoParkingZone | NoVendingZone | WatchZone | MaskZone, Field(discriminator="kind")]


class BackoffConfig(BaseModel):
    """Retry timing for a camera that fails, stalls or never answers: initial_s, then doubling up to max_s."""

    model_config = ConfigDict(extra="forbid")

    initial_s: float = Field(1.0, gt=0, description="First retry delay, seconds")
    max_s: float = Field(60.0, gt=0, description="Longest retry delay, seconds")

    @model_validator(mode="after")
    def _order(self) -> BackoffConfig:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must not be less than initial_s")
        return self

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (see :func:`pipeline.retry.backoff_delay`)."""
        return backoff_delay(self.initial_s, self.max_s, failures)


class CameraConfig(BaseModel):
    """One camera: where its video comes from, how often to look, its zones and rules."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Stable camera id (letters, digits, _ . -)"
    )
    name: str | None = Field(None, description="Name for people, e.g. the street and direction")
    url: str = Field(description="rtsp://, rtsps://, http(s):// stream, or a video file (relative to this file)")
    enabled: bool = Field(True, description="Watch this camera (false: keep it in the file but skip it)")
    sample_fps: float = Field(1.0, gt=0, le=30, description="Frames per second handed to the detector")
    decode: Literal["full", "keyframes"] = Field(
        "full", description="full: decode every frame; keyframes: decode only I-frames (cheap at low sample rates)"
    )
    decode_threads: int = Field(1, ge=0, le=16, description="Decoder threads for this camera (0: FFmpeg's choice)")
    loop: bool = Field(False, description="Video files only: start again at the end (demos)")
    speed: float = Field(
        1.0, gt=0, le=64, description="Video files only: playback speed (1: real time); times follow the video"
    )
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport")
    open_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for a camera to answer when connecting")
    stall_timeout_s: float = Field(
        10.0, gt=0, description="Seconds without data after which a live camera counts as stalled and is reconnected"
    )
    backoff: BackoffConfig = Field(default_factory=BackoffConfig, description="Reconnect delays")
    timezone: str | None = Field(None, description="IANA time zone for schedules and times (default: the file's)")
    location: GeoPoint | None = Field(None, description="Where the camera is, recorded on its violations")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, description="Object tracker settings")
    zones: list[ZoneConfig] = Field(
        default_factory=list, description="Zones; none: the whole frame is a watch zone and parking is not judged"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlparse(value)
        scheme = parts.scheme.lower()
        if "://" in value and scheme not in (*STREAM_SCHEMES, "file"):
            raise ValueError(f"unsupported URL scheme {scheme!r}; use {', '.join(STREAM_SCHEMES)} or a file path")
        if scheme in STREAM_SCHEMES:
            try:
                port = parts.port  # ValueError for a port that is not a number 0-65535
            except ValueError:
                port = -1
            if port is not None and not 1 <= port <= 65535:
                raise ValueError(f"the port in {hide_passwords(value, value)} is not a number 1-65535")
            if not parts.hostname:
                raise ValueError(f"{hide_passwords(value, value)} names no host")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return check_timezone(value)

    @field_validator("zones")
    @classmethod
    def _unique_zones(cls, value: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for zone in value:
            if zone.name in seen:
                raise ValueError(f"zone name {zone.name!r} is used twice")
            seen.add(zone.name)
        return value

    @model_validator(mode="after")
    def _file_options(self) -> CameraConfig:
        if self.is_stream and (self.loop or self.speed != 1.0):
            raise ValueError("loop and speed apply to video files only, not to streams")
        return self

    @property
    def is_stream(self) -> bool:
        """A network stream (RTSP/HTTP), not a local video file."""
        return urlparse(self.url).scheme.lower() in STREAM_SCHEMES

    @property
    def label(self) -> str:
        """Name for people: the name, else the id."""
        return self.name or self.id


class CamerasConfig(BaseModel):
    """A camera config file: the cameras one process watches."""

    model_config = ConfigDict(extra="forbid")

    timezone: str | None = Field(None, description="IANA time zone for schedules and times (default: the machine's)")
    cameras: list[CameraConfig] = Field(min_length=1, description="The cameras")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return check_timezone(value)

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, value: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for cam in value:
            if cam.id in seen:
                raise ValueError(f"camera id {cam.id!r} is used twice")
            seen.add(cam.id)
        return value

    def tz_of(self, camera: CameraConfig) -> ZoneInfo | None:
        """The time zone a camera's schedules use (None: the machine's local zone)."""
        name = camera.timezone or self.timezone
        return ZoneInfo(name) if name else None

    @property
    def active(self) -> list[CameraConfig]:
        """Enabled cameras."""
        return [c for c in self.cameras if c.enabled]


def check_timezone(value: str | None) -> str | None:
    """Validate an IANA time zone name."""
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Asia/Shanghai)") from None
    return value


# ------------------------------------------------------------------------------------------- loading


def load_cameras(path: str | Path) -> CamerasConfig:
    """Read and validate a camera config file; relative video file paths are resolved against its folder."""
    path = Path(path)
    source = str(path)
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise CameraConfigError(source, [f"{source}: no such file"]) from None
    except TextFileError as exc:
        raise CameraConfigError(source, [str(exc)]) from None
    except OSError as exc:
        raise CameraConfigError(source, [f"{source}: cannot read ({exc})"]) from None
    return parse_cameras(text, source, base_dir=path.parent)


def parse_cameras(text: str, source: str = "<cameras>", base_dir: Path | None = None) -> CamerasConfig:
    """Validate camera config YAML text; errors name line, camera and field (see :class:`CameraConfigError`)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CameraConfigError(source, [f"{source}:{line} invalid YAML: {problem}"]) from None
    if root is None or not isinstance(data, dict):
        raise CameraConfigError(source, [f"{source}:1: expected a mapping with a 'cameras' list"])
    problems = _duplicate_keys(root, source) + _repeated_ids(root, data, source)
    if problems:
        raise CameraConfigError(source, problems)
    try:
        config = CamerasConfig.model_validate(data)
    except ValidationError as exc:
        raise CameraConfigError(source, [_describe(err, root, data, source) for err in exc.errors()]) from None
    problems = []
    for index, cam in enumerate(config.cameras):
        if cam.is_stream:
            continue
        file = Path(cam.url[7:] if cam.url.startswith("file://") else cam.url)
        if not file.is_absolute() and base_dir is not None:
            file = (base_dir / file).resolve()
        if not file.is_file():
            line, _ = _locate(root, ("cameras", index, "url"))
            problems.append(f"{source}:{line}: camera {cam.id!r}: url: no such video file: {file}")
        cam.url = str(file)
    if problems:
        raise CameraConfigError(source, problems)
    return config


def _repeated_ids(root: yaml.Node, data: dict, source: str) -> list[str]:
    """A camera id used again, at the line of the repeat (the model's own check can only name the list)."""
    cameras = data.get("cameras")
    seen: dict[str, int] = {}
    problems = []
    for index, cam in enumerate(cameras if isinstance(cameras, list) else []):
        cam_id = cam.get("id") if isinstance(cam, dict) else None
        if not isinstance(cam_id, str):
            continue
        if cam_id in seen:
            line, _ = _locate(root, ("cameras", index, "id"))
            first, _ = _locate(root, ("cameras", seen[cam_id], "id"))
            problems.append(f"{source}:{line}: camera id {cam_id!r} is used twice (first at line {first})")
        seen.setdefault(cam_id, index)
    return problems


def _duplicate_keys(node: yaml.Node, source: str, ancestors: frozenset[int] = frozenset()) -> list[str]:
    """Keys given twice in one mapping (YAML would silently keep the last), and aliases that refer to a node
    containing them (``a: &a [*a]``: a structure without end, which no field can hold)."""
    if id(node) in ancestors:
        line = node.start_mark.line + 1
        return [f"{source}:{line}: an alias refers to the node that contains it (recursive YAML is not a config)"]
    inner = ancestors | {id(node)}
    problems = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                problems.append(f"{source}:{key.start_mark.line + 1}: key {key.value!r} is given twice")
            seen.add(key.value)
            problems += _duplicate_keys(value, source, inner)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            problems += _duplicate_keys(item, source, inner)
    return problems


def _locate(root: yaml.Node, loc: tuple[Any, ...]) -> tuple[int, list[Any]]:
    """Line (1-based) of the deepest YAML node on a pydantic error location, and the location parts found."""
    node, line, used = root, root.start_mark.line + 1, []
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    child, line = value, key.start_mark.line + 1
                    break
            if child is None and isinstance(part, str) and part in _TAGS:
                continue  # a discriminated-union tag: not a key in the file
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            used.append(part)  # e.g. a missing field: report it at its parent's line
            break
        node = child
        used.append(part)
    return line, used


_TAGS = {"no_parking", "no_vending", "watch", "mask"}  # zone kinds: pydantic puts the tag in error locations


def _describe(err: dict[str, Any], root: yaml.Node, data: dict[str, Any], source: str) -> str:
    """One line for a pydantic error: file:line: camera 'id': field.path: message."""
    loc = tuple(p for p in err["loc"] if p not in _TAGS)
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc += ("kind",)
    line, _ = _locate(root, loc)
    prefix = f"{source}:{line}:"
    field_loc = loc
    if len(loc) >= 2 and loc[0] == "cameras" and isinstance(loc[1], int):
        cams = data.get("cameras") or []
        cam = cams[loc[1]] if isinstance(cams, list) and loc[1] < len(cams) else None
        ident = cam.get("id") if isinstance(cam, dict) else None
        prefix += f" camera {ident!r}:" if ident else f" camera #{loc[1] + 1}:"
        field_loc = loc[2:]
    path = ""
    for part in field_loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field (check the spelling; see the camera config reference)"
    elif err["type"] == "missing":
        message = "required field is missing"
    elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        message = "unknown or missing zone kind; use no_parking, no_vending, watch or mask"
    elif err["type"] == "string_type" and isinstance(err.get("input"), bool | int | float):
        read = "true/false (YAML reads unquoted yes, no, on, off so)" if isinstance(err["input"], bool) else "a number"
        message = f"YAML read {err['input']!r} as {read}: put the text in quotes"
    return f"{prefix} {path}: {message}" if path else f"{prefix} {message}"
