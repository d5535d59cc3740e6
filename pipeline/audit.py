"""Batch audit of patrol photos: a folder in; per-photo JSON, a CSV, a GeoJSON, an HTML report and cases out.

The output folder is one audit that grows run by run. ``manifest.jsonl`` in it is an append-only
event log keyed by each photo's content hash: a rerun (or a run after a crash) skips what is done and
only processes new or changed photos. Every result is written as soon as the photo is processed
(atomically: temporary file, then rename), so killing a run loses nothing already done.

Decoding runs in threads (OpenCV's decoders release the GIL); detection runs one single-threaded
onnxruntime call per core on CPU, or batches of photos with the same letterbox shape (a GPU, or
``batch``); large photos get sliced inference. Violations (in photos there are no
zones: vehicles only with ``parking_anywhere``) are filed through a :class:`~pipeline.cases.ViolationSink`
with a deterministic key per object, so re-auditing files nothing twice; a sink failure is retried,
then recorded in the manifest and retried by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from models.classes import VIOLATIONS
from pipeline.annotate import blur_boxes, draw_detections
from pipeline.cases import GeoPoint, Violation, ViolationSink, plausible_time, target_label
from pipeline.decode import ImageMetadata, ImageReadError, decode_image, probe_image, read_file, read_metadata, tz_name
from pipeline.detect import Detector, rect_shape
from pipeline.detections import Detections
from pipeline.evidence import bystanders, crop_box, encode_jpeg, fit
from pipeline.files import atomic_write, display_path, safe_stem
from pipeline.photos import Finding, find_violations, photo_violations
from pipeline.report import detections_csv, render_html, violations_geojson

MANIFEST = "manifest.jsonl"
SETTINGS = "audit.json"
CSV_NAME, GEOJSON_NAME, HTML_NAME = "detections.csv", "violations.geojson", "report.html"
PHOTOS_DIR, THUMBS_DIR, ANNOTATED_DIR, CROPS_DIR = "photos", "thumbs", "annotated", "crops"
#: How often an audit filing to a service asks its sink what the service has accepted, to record it as filed.
RECORD_DELIVERED_S = 2.0
#: Photos in a row whose cases could not be filed, after retries, before the target is taken as down.
SINK_DOWN_AFTER = 3


class AuditError(RuntimeError):
    """The audit cannot start (e.g. the output folder holds an audit made with other settings)."""


class AuditConfig(BaseModel):
    """How to run a batch audit (the detector is configured separately)."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(description="Output folder: manifest, per-photo results, CSV, GeoJSON and report")
    workers: int = Field(4, ge=1, le=64, description="Threads decoding photos in parallel")
    batch: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Photos per detector call, grouped by letterbox shape; default 1 on CPU (measured fastest "
        "there: batching only pads), 8 on a GPU",
    )
    parking_anywhere: bool = Field(
        False, description="Judge every parked vehicle as illegal_parking (photos have no zones)"
    )
    timezone: str | None = Field(
        None, description="IANA timezone for EXIF times without a UTC offset; default: this machine's"
    )
    thumb_size: int = Field(480, ge=64, description="Long side of report thumbnails, pixels")
    annotated_size: int = Field(1600, ge=256, description="Long side of annotated photos and evidence frames")
    crop_size: int = Field(640, ge=64, description="Long side of evidence crops, pixels")
    file_attempts: int = Field(3, ge=1, le=10, description="Tries per violation before a filing counts as failed")
    retry_delay: float = Field(1.0, ge=0, description="Seconds before the first retry; doubles per retry")
    bystander_ios: float = Field(
        0.6, gt=0, le=1, description="A person box this much inside a violation box is its subject, not blurred"
    )


# ------------------------------------------------------------------------------------------ helpers


def scaled(dets: Detections, scale: float) -> Detections:
    """A copy of ``dets`` with boxes multiplied by ``scale``."""
    out = dets[np.arange(len(dets))]
    out.xyxy = out.xyxy * np.float32(scale)
    return out


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def local_timezone() -> tzinfo:
    """This machine's timezone, as an IANA zone when it can be named (``TZ``, /etc/localtime)."""
    from zoneinfo import ZoneInfo

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        candidates.append(os.readlink("/etc/localtime").split("zoneinfo/", 1)[-1])
    for name in candidates:
        if (name and "/" in name) or name == "UTC":
            try:
                return ZoneInfo(name)
            except Exception:
                continue
    return datetime.now().astimezone().tzinfo or timezone.utc


def resolve_timezone(name: str | None) -> tzinfo:
    """The named IANA timezone, or this machine's; a clear error for an unknown name."""
    if not name:
        return local_timezone()
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name)
    except Exception:
        raise AuditError(f"unknown timezone {name!r}; use an IANA name such as Asia/Shanghai") from None


# ----------------------------------------------------------------------------------------- manifest


class Manifest:
    """The audit's append-only event log (``manifest.jsonl``), folded into what is done.

    Events: ``photo`` (a file processed: its hash, stat, result file or error reason), ``filed``
    (violation keys a target accepted), ``filing_failed`` (keys a target refused, with the error).
    Each event is one line written with one ``write`` and fsynced; a line cut short by a crash is
    ignored on load (its photo is simply processed again).
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.by_path: dict[str, dict[str, Any]] = {}
        self.by_hash: dict[str, dict[str, Any]] = {}
        self.filed: dict[str, set[str]] = {}
        self.failed: dict[str, dict[str, str]] = {}
        self.last_target: str | None = None  # where cases were last filed to
        self.skipped_lines = 0
        self.redo: set[str] = set()  # result files found unreadable: their photos are not done
        self._lock = threading.Lock()
        self._fh = open(path, "a+b")  # noqa: SIM115 - held for the audit's life
        try:  # one audit at a time per folder; the lock goes with the process, however it ends
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows: no advisory locks, run one audit at a time
            pass
        except BlockingIOError:
            self._fh.close()
            raise AuditError(f"another audit is writing to {path.parent}; wait for it or use another --out") from None
        self._load()
        self._fh.seek(0, os.SEEK_END)
        if self._fh.tell():
            self._fh.seek(-1, os.SEEK_END)
            if self._fh.read(1) != b"\n":  # a crash cut the last line: start ours on a fresh one
                self._fh.write(b"\n")

    def _load(self) -> None:
        for line in self.path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self.skipped_lines += 1
                continue
            self._fold(event)

    def _fold(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "photo":
            before = self.by_path.get(event["path"])
            self.by_path[event["path"]] = event
            gone = before.get("sha256") if before and before.get("sha256") != event.get("sha256") else None
            if gone and self.by_hash.get(gone) is before:  # that picture left this file: who holds it now?
                holder = next((e for e in self.by_path.values() if e.get("sha256") == gone and e.get("result")), None)
                if holder is None:
                    del self.by_hash[gone]  # nobody: it is audited afresh if it comes back
                else:
                    self.by_hash[gone] = holder
            if event.get("status") == "ok" and "alias_of" not in event:
                self.by_hash[event["sha256"]] = event
        elif kind == "filed":
            self.last_target = event["target"]
            self.filed.setdefault(event["target"], set()).update(event["keys"])
            failed = self.failed.get(event["target"], {})
            for key in event["keys"]:
                failed.pop(key, None)
        elif kind == "filing_failed":
            self.last_target = event["target"]
            failed = self.failed.setdefault(event["target"], {})
            filed = self.filed.get(event["target"], set())
            for key in event["keys"]:
                failed[key] = event["error"]
                filed.discard(key)  # handed over, then not accepted (a service that never answered)

    def append(self, event: dict[str, Any]) -> None:
        """Record one event durably and fold it into the in-memory state."""
        event = {**event, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        line = (json.dumps(event, ensure_ascii=False) + "\n").encode()
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fold(event)

    def is_current(self, path: Path, stat: os.stat_result) -> bool:
        """Whether ``path`` was processed, with exactly this size and modification time. Files that could
        not be read are tried again (the cause may be gone: a HEIC reader installed, a disk remounted)."""
        event = self.by_path.get(display_path(path))
        return bool(
            event
            and event.get("status") == "ok"
            and event.get("result") not in self.redo
            and event.get("bytes") == stat.st_size
            and event.get("mtime_ns") == stat.st_mtime_ns
        )

    def forget_results(self, results: set[str]) -> None:
        """Take photos whose result files (``photos/*.json``) are unreadable as not done: their paths are
        processed again, and their pictures are not copies of a photo already audited."""
        self.redo |= results
        for sha, event in list(self.by_hash.items()):
            if event.get("result") in results:
                del self.by_hash[sha]

    def current(self) -> list[dict[str, Any]]:
        """The latest ``photo`` event of each path, in the order paths were first seen."""
        return list(self.by_path.values())

    def close(self) -> None:
        self._fh.close()


# --------------------------------------------------------------------------------------------- photos


@dataclass
class Photo:
    """One input file on its way through the audit."""

    path: Path
    bytes: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    format: str = ""
    image: np.ndarray | None = None
    meta: ImageMetadata = field(default_factory=ImageMetadata)
    error: str | None = None

    @property
    def name(self) -> str:
        """Stem for this photo's output files: the file stem plus 8 hex digits of its hash."""
        return f"{safe_stem(self.path)}-{self.sha256[:8]}"

    @property
    def shown(self) -> str:
        """The path as recorded and shown (bytes of the name that are not UTF-8 escaped)."""
        return display_path(self.path)


def load_photo(path: Path) -> Photo:
    """Read, hash, decode and take the metadata of one file; never raises (errors become ``photo.error``)."""
    photo = Photo(path)
    try:
        st = path.stat()
        photo.bytes, photo.mtime_ns = st.st_size, st.st_mtime_ns
        data = read_file(path)
        photo.sha256 = hashlib.sha256(data).hexdigest()
        photo.format = probe_image(data, str(path))[0]
        photo.image = decode_image(data, str(path))
        photo.meta = read_metadata(data)
    except ImageReadError as exc:
        photo.error = exc.reason
    except FileNotFoundError:
        photo.error = "no such file (removed during the audit?)"
    except OSError as exc:
        photo.error = f"cannot read file ({exc.strerror or exc})"
    except MemoryError:
        photo.error = "not enough memory to decode this image"
    except Exception as exc:  # whatever a hostile file still makes a decoder raise: this photo's problem only
        photo.error = f"cannot read image ({type(exc).__name__}: {exc})"
    return photo


@dataclass
class AuditResult:
    """What one run did."""

    out: Path
    inputs: int = 0
    processed: int = 0
    skipped: int = 0
    duplicates: int = 0
    unreadable: int = 0
    violations: int = 0
    filed: int = 0
    filing_failed: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    reports: dict[str, Path] = field(default_factory=dict)
    total_photos: int = 0  # distinct photos in the audit folder, all runs
    by_type: dict[str, int] = field(default_factory=dict)  # violations in the audit folder, all runs


@dataclass
class AuditData:
    """What the audit folder holds: processed photos (one per content hash), unreadable files, copies,
    and the filing state of the case target (this run's, else the last one used)."""

    photos: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    copies: list[dict[str, Any]] = field(default_factory=list)
    target: str | None = None
    filed: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- audit


class Audit:
    """One batch audit into one output folder. ``run(paths)`` may be called again on the same folder."""

    def __init__(
        self,
        detector: Detector,
        config: AuditConfig,
        sink: ViolationSink | None = None,
        target: str | None = None,
        progress: bool | None = None,
    ):
        self.detector = detector
        self.config = config
        self.sink = sink
        self.target = target_label(target or ("sink" if sink else ""))
        self.progress = progress
        self.tz = resolve_timezone(config.timezone)
        self.out = Path(config.out)
        self.settings = {
            "model_version": detector.version,
            "conf": detector.config.conf,
            "class_conf": detector.config.class_conf,
            "iou": detector.config.iou,
            "imgsz": detector.imgsz,
            "tile": detector.config.tile.model_dump(),
            "parking_anywhere": config.parking_anywhere,
            "timezone": tz_name(self.tz),
        }
        self.manifest = Manifest(self.out / MANIFEST)  # takes the folder's lock
        try:
            self._check_settings()
        except AuditError:
            self.manifest.close()
            raise
        for stale in self.out.rglob(".*.tmp"):  # writes a crash cut short (we hold the folder's lock)
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._bar: tqdm | None = None
        self._result = AuditResult(self.out)
        self._attempted: set[str] = set()  # photos whose filing this run tried
        self._failing_photos = 0  # photos in a row whose filing failed entirely
        self._sink_down: str | None = None  # set when the target is taken as down for this run

    # ---- setup
    def _check_settings(self) -> None:
        path = self.out / SETTINGS
        if path.is_file():
            try:
                saved = json.loads(path.read_bytes())["settings"]
                if not isinstance(saved, dict):
                    raise TypeError("settings is not a mapping")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise AuditError(
                    f"{path} is unreadable ({type(exc).__name__}: {exc}); it records the settings this audit was "
                    f"made with. Restore it, or delete it to go on with this run's settings, or use another --out"
                ) from None
            diff = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in self.settings.items() if saved.get(k) != v]
            if diff:
                raise AuditError(
                    f"{self.out} holds an audit made with other settings ({'; '.join(diff)}); "
                    "use another --out folder for this one"
                )
        else:
            atomic_write(
                path,
                json.dumps(
                    {"settings": self.settings, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                    indent=1,
                ),
            )

    def tiled(self, image: np.ndarray) -> bool:
        """Whether this photo gets sliced inference (asked for, or the photo is large)."""
        tile = self.detector.config.tile
        return tile.enabled and max(image.shape[:2]) > tile.min_side

    # ---- the run
    def run(self, paths: Iterable[Path]) -> AuditResult:
        """Process every new or changed photo among ``paths``, file pending violations, write the reports."""
        start = time.perf_counter()
        paths = [Path(os.path.abspath(p)) for p in paths]
        res = self._result = AuditResult(self.out, inputs=len(paths))
        self._attempted, self._failing_photos, self._sink_down = set(), 0, None
        self._handed: dict[str, str] = {}  # violation key -> photo hash, of what the sink took in this run
        self._unrecorded: dict[str, str] = {}  # of those, the ones not recorded as filed in the manifest yet
        self._recorded_at = 0.0  # when a sink that delivers later was last asked what it delivered
        self.manifest.forget_results(self._unreadable_results())
        todo = []
        for path in paths:
            try:
                current = self.manifest.is_current(path, path.stat())
            except OSError:
                current = False
            if current:
                res.skipped += 1
            else:
                todo.append(path)
        try:
            self._process(todo)
            if self.sink is not None:
                self._file_pending(paths)
        except KeyboardInterrupt:
            res.interrupted = True
        finally:
            if self._bar is not None:
                self._bar.close()
            self._confirm_delivery(wait=not res.interrupted)
            res.reports, data = self.write_reports()
            res.total_photos = len(data.photos)
            res.by_type = {kind: 0 for kind in VIOLATIONS}
            for photo in data.photos:
                for v in photo["violations"]:
                    res.by_type[v["type"]] += 1
            res.seconds = time.perf_counter() - start
        return res

    def _unreadable_results(self) -> set[str]:
        """Result files of processed photos that are missing or cannot be read (a crash of the disk, an edit)."""
        broken: set[str] = set()
        for event in self.manifest.current():
            result = event.get("result")
            if event.get("status") != "ok" or not result or result in broken:
                continue
            try:
                if not isinstance(json.loads((self.out / result).read_bytes()), dict):
                    broken.add(result)
            except (OSError, ValueError):
                broken.add(result)
        return broken

    def collect(self) -> AuditData:
        """Fold the manifest into the audit folder's current state, reading each photo's result file."""
        data = AuditData()
        seen: set[str] = set()
        events = sorted(self.manifest.current(), key=lambda e: e["path"])
        data.errors = [e for e in events if e.get("status") == "error"]
        # originals first; a copy stands in for its original once the original's file holds another picture
        for event in sorted((e for e in events if e.get("status") == "ok"), key=lambda e: "alias_of" in e):
            if event["sha256"] in seen:
                data.copies.append(event)
                continue
            path = self.out / event["result"]
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                data.errors.append({**event, "error": f"result file {path.name} unreadable: {exc}"})
                continue
            if "alias_of" in event:  # the picture is now only in this file: show it under this name
                record = {**record, "file": event["path"], "name": Path(event["path"]).name}
            seen.add(event["sha256"])
            data.photos.append(record)
        data.target = self.target if self.sink is not None else self.manifest.last_target
        if data.target is not None:
            data.filed = set(self.manifest.filed.get(data.target, set()))
            data.failed = dict(self.manifest.failed.get(data.target, {}))
        return data

    def write_reports(self) -> tuple[dict[str, Path], AuditData]:
        """Rebuild the CSV, GeoJSON and HTML report from the per-photo results; paths and the data."""
        data = self.collect()
        paths = {"csv": self.out / CSV_NAME, "geojson": self.out / GEOJSON_NAME, "html": self.out / HTML_NAME}
        atomic_write(paths["csv"], detections_csv(data))
        atomic_write(paths["geojson"], json.dumps(violations_geojson(data), ensure_ascii=False, indent=1))
        atomic_write(paths["html"], render_html(self, data))
        return paths, data

    def _process(self, todo: list[Path]) -> None:
        cfg = self.config
        self._bar = tqdm(
            total=len(todo),
            unit="photo",
            desc="audit",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=(not todo) or (None if self.progress is None else not self.progress),
        )
        seen: set[str] = set()
        window: deque[Future[Photo]] = deque()
        tasks: deque[Future[None]] = deque()
        batch: list[Photo] = []
        twins: list[Photo] = []
        queue = iter(todo)
        batch_size, streams = self.parallelism()
        prefetch = cfg.workers + batch_size * streams
        with (
            ThreadPoolExecutor(cfg.workers, thread_name_prefix="audit-load") as loaders,
            ThreadPoolExecutor(streams, thread_name_prefix="audit-detect") as detectors,
        ):

            def submit(fn: Callable[..., None], *args: Any) -> None:
                tasks.append(detectors.submit(fn, *args))
                while len(tasks) > 2 * streams or (tasks and tasks[0].done()):
                    tasks.popleft().result()  # bounded backlog; a failed write stops the run loudly

            try:
                while True:
                    while len(window) < prefetch and (path := next(queue, None)) is not None:
                        window.append(loaders.submit(load_photo, path))
                    if not window:
                        break
                    photo = window.popleft().result()
                    if photo.error is not None:
                        submit(self._record_error, photo)
                    elif photo.sha256 in seen:  # a copy of a photo of this run: recorded once that one is
                        twins.append(photo)
                    elif photo.sha256 in self.manifest.by_hash:
                        submit(self._record_duplicate, photo)
                    else:
                        seen.add(photo.sha256)
                        assert photo.image is not None
                        if self.tiled(photo.image):
                            submit(self._detect_tiled, photo)
                        else:
                            batch.append(photo)
                            if len(batch) >= batch_size:
                                submit(self._detect, batch)
                                batch = []
                if batch:
                    submit(self._detect, batch)
            except KeyboardInterrupt:
                for f in [*window, *tasks]:
                    f.cancel()  # photos not started are left for the next run
                raise
            finally:
                while tasks:  # what is being detected is written out, even on Ctrl-C
                    f = tasks.popleft()
                    if not f.cancelled():
                        f.result()
                for photo in twins:
                    if photo.sha256 in self.manifest.by_hash:
                        self._record_duplicate(photo)

    def parallelism(self) -> tuple[int, int]:
        """(photos per detector call, detector calls at once).

        On CPU a single-threaded onnxruntime session per call, one call per core, gives the most photos
        per second and degrades gracefully when other jobs share the cores (an intra-op thread pool
        waits for its slowest thread); batching there only adds padding. A GPU wants batches instead.
        """
        on_cpu = self.detector.session.get_providers()[0] == "CPUExecutionProvider"
        batch_size = self.config.batch or (1 if on_cpu else 8)
        single = self.detector.config.threads == 1
        return batch_size, usable_cpus() if on_cpu and single else 1

    def _detect(self, photos: list[Photo]) -> None:
        """Detect on photos in one call per letterbox shape (no padding wasted), then write each out."""
        groups: dict[tuple[int, int], list[Photo]] = {}
        for p in photos:
            assert p.image is not None
            groups.setdefault(rect_shape(p.image.shape[:2], self.detector.imgsz, self.detector.stride), []).append(p)
        for group in groups.values():
            found = self.detector.detect_batch([p.image for p in group])  # type: ignore[misc]
            for p, dets in zip(group, found, strict=True):
                self._finish(p, dets, False)

    def _detect_tiled(self, photo: Photo) -> None:
        assert photo.image is not None
        self._finish(photo, self.detector.detect_tiled(photo.image), True)

    # ---- per photo (detection threads)
    def _tick(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self._result, name, getattr(self._result, name) + n)
            if self._bar is not None:
                self._bar.update(1)
                r = self._result
                self._bar.set_postfix(violations=r.violations, unreadable=r.unreadable, refresh=False)

    def _stat_fields(self, photo: Photo) -> dict[str, Any]:
        return {"path": photo.shown, "bytes": photo.bytes, "mtime_ns": photo.mtime_ns, "sha256": photo.sha256}

    def _record_photo(self, event: dict[str, Any]) -> None:
        """Record what became of a path; the results of the photo it held before (replaced since, or now
        unreadable) are removed, unless another path still shows them, so the folder holds only current ones."""
        with self._lock:  # held throughout: a copy recorded meanwhile cannot claim what is being removed
            before = self.manifest.by_path.get(event["path"], {}).get("result")
            self.manifest.append(event)
            if not before or before == event.get("result"):
                return
            if any(e.get("result") == before for e in self.manifest.current()):
                return
            try:
                record = json.loads((self.out / before).read_text())
            except (OSError, ValueError):
                return
            extras = [record.get("thumbnail"), record.get("annotated"), *(v.get("crop") for v in record["violations"])]
            for rel in [*extras, before]:
                if rel:
                    (self.out / rel).unlink(missing_ok=True)

    def _record_error(self, photo: Photo) -> None:
        event = {"event": "photo", **self._stat_fields(photo), "status": "error", "error": photo.error}
        last = self.manifest.by_path.get(photo.shown)
        if last is None or any(last.get(k) != v for k, v in event.items()):  # the same failure again: no news
            self._record_photo(event)
        (self._bar.write if self._bar is not None else print)(
            f"{photo.shown}: unreadable: {photo.error}", file=sys.stderr
        )
        self._tick(unreadable=1)

    def _record_duplicate(self, photo: Photo) -> None:
        """A file whose content was already audited (a copy under another name, or touched): point to it."""
        first = self.manifest.by_hash[photo.sha256]
        event = {"event": "photo", **self._stat_fields(photo), "alias_of": first["path"]}
        event.update({k: first[k] for k in ("status", "result", "violations") if k in first})
        self._record_photo(event)
        self._tick(duplicates=1)

    def _finish(self, photo: Photo, dets: Detections, tiled: bool) -> None:
        """Write a photo's results (JSON, thumbnail, annotated photo, crops), record it, file its cases."""
        assert photo.image is not None
        image, cfg = photo.image, self.config
        h, w = image.shape[:2]
        findings = find_violations(dets, photo.sha256, cfg.parking_anywhere)
        kinds: list[str | None] = [None] * len(dets)
        taken_at, time_source = photo.meta.capture_time(self.tz)
        if taken_at is None:
            taken_at = datetime.fromtimestamp(photo.mtime_ns // 1_000_000_000, self.tz)
            time_source = f"file modified time (no EXIF time), {tz_name(self.tz)}"
            try:
                plausible_time(taken_at)
            except ValueError:  # a file dated 1899 or 3001: no usable time at all
                taken_at = datetime.now(self.tz)
                time_source = f"time of the audit (no EXIF time; the file's date is out of range), {tz_name(self.tz)}"
        records = dets.to_records()
        for rec in records:
            rec["violation"] = None
        violations = []
        for f in findings:
            kinds[f.index] = records[f.index]["violation"] = f.type
            rec = records[f.index]
            violations.append({"key": f.key, "type": f.type, "class": rec["class"], "score": rec["score"]})
            violations[-1].update(box=rec["box"], detection=f.index)
        vio_idx = np.array([f.index for f in findings], np.int64)
        hidden = bystanders(dets, dets.xyxy[vio_idx], dets.class_id[vio_idx], cfg.bystander_ios)
        big, big_scale = fit(image, cfg.annotated_size)  # shrink first: blurring 12 MP costs
        big = blur_boxes(big, hidden * big_scale)
        name = photo.name
        record: dict[str, Any] = {
            "file": photo.shown,
            "name": display_path(photo.path.name),
            "sha256": photo.sha256,
            "bytes": photo.bytes,
            "format": photo.format,
            "width": w,
            "height": h,
            "taken_at": taken_at.isoformat(),
            "time_source": time_source,
            "location": dict(zip(("lat", "lon"), photo.meta.location, strict=True)) if photo.meta.location else None,
            "camera": photo.meta.camera,
            "tiled": tiled,
            "model_version": self.detector.version,
            "processed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "detections": records,
            "violations": violations,
            "thumbnail": f"{THUMBS_DIR}/{name}.jpg",
            "annotated": f"{ANNOTATED_DIR}/{name}.jpg" if violations else None,
        }
        thumb, scale = fit(big, cfg.thumb_size)
        scale *= big_scale
        atomic_write(self.out / record["thumbnail"], encode_jpeg(self._draw(thumb, scaled(dets, scale), kinds), 80))
        if violations:
            annotated = self._draw(big, scaled(dets, big_scale), kinds)
            atomic_write(self.out / record["annotated"], encode_jpeg(annotated, 85))
            for k, v in enumerate(violations):
                crop = fit(crop_box(image, dets.xyxy[v["detection"]], hidden), 200)[0]
                v["crop"] = f"{CROPS_DIR}/{name}-{k}.jpg"
                atomic_write(self.out / v["crop"], encode_jpeg(crop, 80))
        result = f"{PHOTOS_DIR}/{name}.json"
        atomic_write(self.out / result, json.dumps(record, ensure_ascii=False, indent=1))
        outcome = {"status": "ok", "result": result, "violations": len(findings)}
        self._record_photo({"event": "photo", **self._stat_fields(photo), **outcome})
        filed = failed = 0
        if self.sink is not None and violations:
            filed, failed = self._file(record, image)
        self._tick(processed=1, violations=len(violations), filed=filed, filing_failed=failed)

    def _draw(self, image: np.ndarray, dets: Detections, kinds: list[str | None]) -> np.ndarray:
        """Other detections thin, violations thick and labelled with their violation type."""
        is_vio = np.array([k is not None for k in kinds], bool)
        out = draw_detections(image, dets[~is_vio], thickness=1)
        if is_vio.any():
            vio = dets[is_vio]
            labels = [f"{k} {s:.2f}" for k, s in zip([k for k in kinds if k], vio.confidence, strict=True)]
            out = draw_detections(out, vio, labels=labels, thickness=max(2, round(max(image.shape[:2]) / 400)))
        return out

    # ---- filing
    def violations_of(self, record: dict[str, Any], image: np.ndarray) -> list[Violation]:
        """The case-queue violations of one processed photo, with evidence (bystanders blurred)."""
        cfg = self.config
        return photo_violations(
            image,
            Detections.from_records(record["detections"]),
            [Finding(v["detection"], v["type"], v["key"]) for v in record["violations"]],
            sha256=record["sha256"],
            model_version=record["model_version"],
            taken_at=datetime.fromisoformat(record["taken_at"]),
            source_name=record["name"],
            location=GeoPoint(**record["location"]) if record.get("location") else None,
            extra={"file": record["file"], "time_source": record["time_source"], "tiled": record["tiled"]},
            evidence_side=cfg.annotated_size,
            crop_side=cfg.crop_size,
            bystander_ios=cfg.bystander_ios,
        )

    def _file(self, record: dict[str, Any], image: np.ndarray) -> tuple[int, int]:
        """Emit a photo's violations not yet accepted by this target; retry, then record what failed.

        When a violation still fails after its retries, the photo's other violations are not tried
        (same error); after :data:`SINK_DOWN_AFTER` photos in a row failed that way, the target is
        taken as down for the rest of the run. Everything not filed is recorded for the next run.
        """
        assert self.sink is not None
        with self._lock:
            self._attempted.add(record["sha256"])
        done = self.manifest.filed.get(self.target, set())
        filed: list[str] = []
        failed: dict[str, str] = {}
        todo = [v for v in record["violations"] if v["key"] not in done]
        error = self._sink_down
        for violation in self.violations_of({**record, "violations": todo}, image) if error is None else []:
            delay = self.config.retry_delay
            for attempt in range(1, self.config.file_attempts + 1):
                try:
                    self.sink.emit(violation)
                    filed.append(violation.key)
                    break
                except Exception as exc:  # a sink may raise anything (HTTP, database, disk)
                    if attempt == self.config.file_attempts:
                        error = f"{type(exc).__name__}: {exc}"
                    else:
                        time.sleep(delay)
                        delay *= 2
            if error is not None:
                break
        failed = {v["key"]: error for v in todo if v["key"] not in filed} if error else {}
        with self._lock:
            self._failing_photos = self._failing_photos + 1 if failed and not filed else 0
            if self._failing_photos >= SINK_DOWN_AFTER and self._sink_down is None:
                self._sink_down = f"not tried: {self.target} kept failing ({error})"
        if filed:
            with self._lock:
                self._handed.update(dict.fromkeys(filed, record["sha256"]))
                self._unrecorded.update(dict.fromkeys(filed, record["sha256"]))
            self._record_filed(every_s=RECORD_DELIVERED_S)
        if failed:
            self.manifest.append(
                {"event": "filing_failed", "target": self.target, "sha256": record["sha256"], "keys": list(failed)}
                | {"error": error}
            )
            msg = f"{record['file']}: {len(failed)} violation(s) not filed to {self.target}: {error}"
            (self._bar.write if self._bar is not None else print)(msg, file=sys.stderr)
        return len(filed), len(failed)

    def _file_pending(self, paths: list[Path]) -> None:
        """File violations of photos processed earlier that this target has not accepted yet."""
        done = self.manifest.filed.get(self.target, set())
        real = {display_path(p): p for p in paths}  # the recorded (escaped) name -> the file's actual path
        pending = []
        current = {e["sha256"]: e for e in self.manifest.current() if e.get("status") == "ok"}
        for event in current.values():  # photos in the folder now: not what a replaced file once held
            if not event.get("violations"):
                continue
            if event["sha256"] in self._attempted:  # tried (and retried) in this run already
                continue
            try:
                record = json.loads((self.out / event["result"]).read_bytes())
            except (OSError, ValueError):  # listed as unreadable in the report; redone when its photo is given
                continue
            # the file that holds the picture now: a copy stands in for an original that holds another one
            record["file"], record["name"] = event["path"], Path(event["path"]).name
            if any(v["key"] not in done for v in record["violations"]):
                pending.append(record)
        if not pending:
            return
        bar = tqdm(pending, unit="photo", desc="file cases", file=sys.stderr, disable=None)
        for record in bar:
            try:
                data = read_file(real.get(record["file"], record["file"]))
                if hashlib.sha256(data).hexdigest() != record["sha256"]:
                    raise ImageReadError(record["file"], "the photo has changed since it was audited")
                image = decode_image(data, record["file"])
            except ImageReadError as exc:
                keys = [v["key"] for v in record["violations"] if v["key"] not in done]
                error = f"cannot build evidence: {exc.reason}"
                self.manifest.append(
                    {"event": "filing_failed", "target": self.target, "sha256": record["sha256"], "keys": keys}
                    | {"error": error}
                )
                self._result.filing_failed += len(keys)
                bar.write(f"{record['file']}: {len(keys)} violation(s) not filed: {error}", file=sys.stderr)
                continue
            filed, failed = self._file(record, image)
            self._result.filed += filed
            self._result.filing_failed += failed

    def _record_filed(self, missing: Mapping[str, str] | None = None, every_s: float = 0.0) -> None:
        """Record in the manifest what the target has accepted and is not recorded yet. A sink that files as
        it takes a violation (a database, a file) has accepted all it took; one that delivers later (a
        service URL spools first) only what is not ``missing`` (default: what it has not delivered so far,
        asked at most every ``every_s`` seconds), so an audit killed before the service answered files the
        rest again on its next run."""
        undelivered = getattr(self.sink, "undelivered", None)
        with self._lock:  # taken before the sink is asked: a key spooled meanwhile is not judged delivered
            candidates = dict(self._unrecorded)
        if missing is None and undelivered is not None:
            if time.monotonic() - self._recorded_at < every_s:
                return
            self._recorded_at = time.monotonic()
            missing = undelivered(0.0)
        by_photo: dict[str, list[str]] = {}
        with self._lock:
            for key, sha in candidates.items():
                if key not in (missing or {}) and self._unrecorded.pop(key, None) is not None:
                    by_photo.setdefault(sha, []).append(key)
        for sha, keys in by_photo.items():
            self.manifest.append({"event": "filed", "target": self.target, "sha256": sha, "keys": keys})

    def _confirm_delivery(self, wait: bool) -> None:
        """A sink that delivers later (a service URL spools first) has filed only what its target accepted:
        that is recorded as filed, the rest as not filed, so the report says so, the run fails and the next
        run files it."""
        undelivered = getattr(self.sink, "undelivered", None)
        if undelivered is None or not self._handed:
            return
        missing = undelivered(None if wait else 0.0)
        self._record_filed(missing)
        by_photo: dict[str, list[str]] = {}
        for key, sha in self._handed.items():
            if key in missing:
                by_photo.setdefault(sha, []).append(key)
        for sha, keys in by_photo.items():
            error = missing[keys[0]]
            self.manifest.append(
                {"event": "filing_failed", "target": self.target, "sha256": sha, "keys": keys} | {"error": error}
            )
            self._result.filed -= len(keys)
            self._result.filing_failed += len(keys)
        if by_photo:
            n = sum(len(k) for k in by_photo.values())
            print(f"{n} violation(s) not accepted by {self.target}: {next(iter(missing.values()))}", file=sys.stderr)

    def close(self) -> None:
        """Release the manifest (the sink belongs to the caller)."""
        self.manifest.close()
