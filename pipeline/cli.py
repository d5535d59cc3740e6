"""The ``streetwatch`` command: one entry point, a subcommand per job.

Each package contributes its subcommands through a ``register(subparsers)`` function in its own
``cli`` module; heavy imports (torch, ultralytics) happen inside the command functions only.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from pipeline.files import atomic_write, display_path, safe_stem, write_image

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
COMMAND_MODULES = ("pipeline.cli", "models.cli", "datasets.cli", "training.cli", "serve.cli")


class CLIError(Exception):
    """A user-facing error: printed as ``streetwatch: error: ...`` with exit status 2."""


def one_line(text: str, limit: int = 300) -> str:
    """A message on one readable line: a validation error or shutil's list of failed files spans several."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checked(convert: Callable[[str], float], what: str, ok: Callable[[float], bool], want: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text (else "not {what}"), then refuse values ``ok`` rejects ("must be
    {want}"); argparse puts the option's name before the message."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {want}, not {text}")
        return value

    return parse


#: A number above 0 (a duration, a speed).
positive_number = checked(float, "a number", lambda v: 0 < v < float("inf"), "a number above 0")
#: A number from 0 to 1 (a confidence).
fraction = checked(float, "a number", lambda v: 0 <= v <= 1, "from 0 to 1")
#: A whole number of at least 1.
count = checked(int, "a whole number", lambda v: v >= 1, "at least 1")


#: The modules ``pip install -e '.[train]'`` adds to the runtime (pyproject's ``train`` extra). A command
#: registered with ``needs=(...)`` (or calling :func:`require`) is refused up front, before it writes
#: anything, when one of those it names is missing; any other that reaches for one says which.
TRAIN_EXTRA = ("ultralytics", "torch", "torchvision", "albumentations", "onnx", "onnxslim", "matplotlib", "lap")
INSTALL_TRAIN = "pip install -e '.[train]' (or: pip install 'streetwatch[train]')"


def require(*modules: str) -> None:
    """A CLIError naming the train-extra modules among ``modules`` that are not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CLIError(f"this needs {', '.join(missing)}, part of the train extra: {INSTALL_TRAIN}")


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """A stopped job (SIGTERM: systemd, docker stop, kill) stops as Ctrl-C stops it, cleanly (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def invalid_settings(exc: ValidationError, what: str = "option") -> str:
    """Settings that pydantic refused (``--conf 2``, ``--workers 0``, a config file's field), in one line: each
    field with its reason."""
    return f"invalid {what}: " + "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


def add_detector_args(parser: argparse.ArgumentParser) -> None:
    """The detector options every image command shares."""
    parser.add_argument("--model", default="default", help="registry name or model folder (default: %(default)s)")
    parser.add_argument(
        "--variant", choices=("fp32", "int8"), default="fp32", help="ONNX file to run (a --model file path decides)"
    )
    parser.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default: %(default)s)")
    parser.add_argument("--imgsz", type=int, default=None, help="inference size (default: the model's)")
    parser.add_argument("--tile", action="store_true", help="sliced inference for small objects in large images")
    parser.add_argument("--provider", choices=("cpu", "cuda", "openvino", "auto"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


def detector_from_args(args: argparse.Namespace, **overrides: object):  # -> Detector, imported lazily
    """Build the detector the shared options describe (``overrides``: other DetectorConfig fields)."""
    from models.registry import ModelError
    from pipeline.detect import Detector, DetectorConfig, TileConfig

    fields = dict(
        model=args.model,
        variant=args.variant,
        conf=args.conf,
        imgsz=args.imgsz,
        provider=args.provider,
        threads=args.threads,
        tile=TileConfig(enabled=args.tile),
    )
    try:
        return Detector(DetectorConfig(**{**fields, **overrides}))
    except ModelError as exc:
        raise CLIError(str(exc)) from None


# ------------------------------------------------------------------------------------------- detect


def cmd_detect(args: argparse.Namespace) -> int:
    """Detect on image files, folders and globs; annotated images + JSON per image."""
    import cv2

    from pipeline.annotate import draw_detections
    from pipeline.decode import ImageReadError, read_image

    files = resolve_inputs(args.paths)
    detector = detector_from_args(args)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    failures = 0

    def load(path: Path):
        try:
            return read_image(path), None
        except ImageReadError as exc:
            return None, exc.reason

    with ThreadPoolExecutor(max_workers=2) as pool:
        bar = tqdm(
            zip(files, pool.map(load, files), strict=True),
            total=len(files),
            unit="img",
            disable=len(files) < 2 or None,
            desc="detect",
            file=sys.stderr,
        )
        for path, (image, error) in bar:
            record: dict = {"file": display_path(path)}
            if image is None:
                failures += 1
                record["error"] = error
            else:
                dets = detector.detect(image)
                record.update(width=image.shape[1], height=image.shape[0], detections=dets.to_records())
                if out_dir:
                    stem = unique_stem(path, used)
                    write_image(out_dir / f"{stem}.jpg", draw_detections(image, dets), [cv2.IMWRITE_JPEG_QUALITY, 90])
                    atomic_write(out_dir / f"{stem}.json", json.dumps(record, ensure_ascii=False, indent=1))
            if args.json:
                bar.clear()
                print(json.dumps(record, ensure_ascii=False), flush=True)
            elif "error" in record:
                tqdm.write(f"{record['file']}: error: {error}", file=sys.stderr)
            else:
                summary = ", ".join(f"{n}×{c}" for n, c in count_classes(record["detections"]).items()) or "nothing"
                tqdm.write(f"{record['file']}: {summary}")
    if out_dir and not args.json:
        print(
            f"annotated images and JSON written to {out_dir}/ ({len(files) - failures} images, "
            f"{failures} unreadable) with model {detector.version}"
        )
    return 1 if failures == len(files) else 0


def count_classes(records: list[dict]) -> dict[str, int]:
    """Detections per class name, in order of first appearance."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r["class"]] = counts.get(r["class"], 0) + 1
    return counts


def unique_stem(path: Path, used: set[str]) -> str:
    """An output file stem for ``path`` that no earlier input took."""
    stem = first = safe_stem(path)
    n = 1
    while stem in used:
        n += 1
        stem = f"{first}-{n}"
    used.add(stem)
    return stem


def resolve_inputs(paths: list[str]) -> list[Path]:
    """Expand the command's path arguments; a path that matches nothing is a CLI error."""
    from pipeline.decode import iter_image_paths

    try:
        files = iter_image_paths(paths)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    if not files:
        raise CLIError(f"no images found in {' '.join(paths)}")
    return files


# -------------------------------------------------------------------------------------------- audit


def cmd_audit(args: argparse.Namespace) -> int:
    """Audit patrol photos: per-photo JSON, CSV, GeoJSON, an HTML report and (optionally) cases."""
    from pipeline.audit import Audit, AuditConfig, AuditError
    from pipeline.detect import TileConfig

    files = resolve_inputs(args.paths)
    if args.tile_above < 0:
        raise CLIError("--tile-above must be 0 (off) or a number of pixels")
    tile = TileConfig(enabled=args.tile or args.tile_above > 0, min_side=0 if args.tile else args.tile_above)
    # one single-threaded onnxruntime call per core at once: the audit's fastest setting on CPU
    threads = args.threads or (1 if args.provider == "cpu" else None)
    detector = detector_from_args(args, tile=tile, threads=threads)
    config = AuditConfig(  # --workers 0 and the like: refused as every command's settings are, in main()
        out=Path(args.out),
        workers=args.workers,
        batch=args.batch,
        parking_anywhere=args.parking_anywhere,
        timezone=args.timezone,
    )
    sink = None
    if args.file_cases:
        from pipeline.cases import open_sink, target_label

        if args.file_cases.endswith(".jsonl"):  # a JSON-lines file may go in a folder not made yet
            Path(args.file_cases).parent.mkdir(parents=True, exist_ok=True)
        try:
            sink = open_sink(args.file_cases)
        except Exception as exc:  # an unreachable queue or bad URL: say so before any work
            raise CLIError(f"--file-cases {target_label(args.file_cases)}: {exc}") from None  # never the key
    try:
        audit = Audit(detector, config, sink=sink, target=args.file_cases)
    except AuditError as exc:
        if sink is not None:
            sink.close()
        raise CLIError(str(exc)) from None
    try:
        with sigterm_as_ctrl_c():  # photos in hand finished, report written
            result = audit.run(files)
    finally:
        audit.close()
        if sink is not None:
            sink.close()
    print(audit_summary(result))
    if result.interrupted:
        return 130
    if result.filing_failed or (result.unreadable and result.unreadable == result.inputs):
        return 1
    return 0


def audit_summary(result) -> str:  # AuditResult
    """The few lines an inspector reads at the end of a run."""
    from models.classes import VIOLATIONS

    r = result
    done = f"{r.processed} new photos audited, {r.skipped} already done"
    if r.duplicates:
        done += f", {r.duplicates} copies of audited photos"
    if r.unreadable:
        done += f", {r.unreadable} unreadable"
    lines = [("interrupted: " if r.interrupted else "") + f"{done} ({r.seconds:.1f} s)"]
    by_type = ", ".join(f"{VIOLATIONS[kind].zh} {kind} {n}" for kind, n in r.by_type.items() if n)
    total = f"audit folder: {r.total_photos} photos, {sum(r.by_type.values())} violations"
    lines.append(total + (f" ({by_type})" if by_type else ""))
    if r.filed or r.filing_failed:
        failed = f", {r.filing_failed} NOT filed (rerun to retry)" if r.filing_failed else ""
        lines.append(f"cases: {r.filed} filed{failed}")
    lines.append(f"report: {r.reports['html']}")
    if r.interrupted:
        lines.append("rerun the same command to finish: photos already done are skipped")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    """The pipeline's subcommands."""
    p = sub.add_parser(
        "detect",
        help="detect objects in photos (files, folders, globs)",
        description="Run the detector on images; write annotated images and JSON.",
    )
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or glob patterns")
    add_detector_args(p)
    p.add_argument("--out", help="folder for annotated images and per-image JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object per image on stdout")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser(
        "watch",
        help="watch cameras (RTSP/HTTP streams, video files) and report violations",
        description="Run the camera config's cameras: detect, track, apply zone rules, emit violations with "
        "evidence images. A status line per camera is shown on stderr.",
    )
    p.add_argument("config", nargs="?", help="camera config file (YAML)")
    p.add_argument("--demo", action="store_true", help="run the bundled demo cameras (pipeline/samples)")
    p.add_argument(
        "--duration", type=positive_number, default=None, help="stop after this many seconds (default: run on)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per violation on stdout, no status")
    p.add_argument(
        "--sink",
        default=None,
        help="where violations go: '-' (stdout, default), FILE.jsonl (evidence beside it), or a case-queue "
        f"URL (the key in STREETWATCH_API_KEY) or database (default with --demo: {DEMO_SINK})",
    )
    p.add_argument("--speed", type=float, default=None, help="play video files this many times faster")
    p.add_argument(
        "--no-follow",
        action="store_true",
        help="keep the model loaded at start (default: switch to a newly promoted default)",
    )
    add_detector_args(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "audit",
        help="audit patrol photos: HTML report, CSV, GeoJSON and optionally cases",
        description="Audit a batch of patrol photos into an output folder: a JSON per photo, detections.csv, "
        "violations.geojson and report.html. Resumable: rerun the same command to process only new or "
        "changed photos (an interrupted run continues where it stopped).",
    )
    p.add_argument("paths", nargs="+", help="photo files, folders (recursive) or glob patterns")
    p.add_argument("--out", required=True, help="audit folder (created; reused and extended by reruns)")
    add_detector_args(p)
    p.add_argument(
        "--tile-above",
        type=int,
        default=1920,
        metavar="PX",
        help="sliced inference for photos whose long side exceeds PX (default: %(default)s; 0: only with --tile)",
    )
    p.add_argument(
        "--file-cases",
        metavar="TARGET",
        help="file violations as cases: case-queue URL (http://HOST:PORT, the key in STREETWATCH_API_KEY: "
        "a ?key=KEY here shows in ps), database URL (sqlite:///..., postgresql://...), a data folder (as serve "
        "--data-dir) or a .jsonl file; idempotent across reruns",
    )
    p.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="photo decoding threads (default: %(default)s)"
    )
    p.add_argument("--batch", type=int, default=None, help="photos per detector call (default: 1 on CPU, 8 on GPU)")
    p.add_argument(
        "--parking-anywhere",
        action="store_true",
        help="judge every parked vehicle as illegal parking (photos have no zones; default: vehicles are detections)",
    )
    p.add_argument(
        "--timezone",
        metavar="TZ",
        help="IANA timezone of EXIF times without a UTC offset, e.g. Asia/Shanghai (default: this machine's)",
    )
    p.set_defaults(func=cmd_audit)


# -------------------------------------------------------------------------------------------- watch

DEMO_SINK = "out/demo/violations.jsonl"


def format_status(status) -> str:
    """One status line of a camera (a :class:`pipeline.streams.CameraStatus`)."""
    last = f"{status.last_frame_time:%H:%M:%S}" if status.last_frame_time else "--:--:--"
    line = f"{status.camera_id:<16.16} {status.state:<10} last {last}  frames {status.frames_decoded}"
    line += f"/{status.frames_processed} processed  dropped {status.frames_dropped}"
    line += f"  lag {status.lag_s:.2f}s" if status.lag_s is not None else "  lag -"
    line += f"  reconnects {status.reconnects}  open {status.open_violations}"
    if status.state == "failed":
        retry = f"retry in {status.retry_in_s:.0f}s" if status.retry_in_s is not None else "not retried"
        line += f"  {retry}: {status.error}"
    elif status.error and status.state in ("live", "stalled", "ended", "stopped"):
        line += f"  last error: {status.error}"
    return line


def cmd_watch(args: argparse.Namespace) -> int:
    """Watch cameras from a camera config file (or the demo) and report violations."""
    from pipeline.cameras import DEMO_CAMERAS, CameraConfigError, load_cameras
    from pipeline.cases import JsonlSink, open_sink, target_label
    from pipeline.streams import StreamProcessor

    if args.demo == bool(args.config):
        raise CLIError("give a camera config file or --demo (not both)")
    path = DEMO_CAMERAS if args.demo else Path(args.config)
    try:
        config = load_cameras(path)
    except CameraConfigError as exc:
        raise CLIError(f"invalid camera config:\n{exc}") from None
    if not config.active:
        raise CLIError(f"{path}: every camera is disabled")
    if args.speed is not None:
        if args.speed <= 0:
            raise CLIError("--speed must be positive")
        for cam in config.active:
            if not cam.is_stream:
                cam.speed = args.speed
    target = args.sink or (DEMO_SINK if args.demo else None)
    where = target_label(target) if target else "stdout"  # never the ingest key: stderr ends up in logs
    if target and target.endswith(".jsonl"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    detector = detector_from_args(args)
    try:
        sink = open_sink(target)
    except ImportError:
        raise CLIError(f"sink {where}: the case-queue sinks (serve.sinks) are not available in this install") from None
    except Exception as exc:  # a bad path or URL, a file that is not a database, an unreachable server
        raise CLIError(f"cannot open sink {where}: {one_line(str(exc))}") from None
    proc = StreamProcessor(config, detector, sink)
    to_stdout = target in (None, "-")
    counts = {"open": 0, "update": 0, "ended": 0}
    keys: set[str] = set()

    def record(violation) -> None:
        counts[violation.extra.get("event", "update")] += 1
        keys.add(violation.key)

    proc.listeners.append(record)
    if args.json and not to_stdout:
        # stdout; with a JSON-lines sink the lines name its evidence files (already written, same names)
        evidence = Path(target).parent / "evidence" if target.endswith(".jsonl") else None
        echo = JsonlSink(evidence_dir=evidence)
        proc.listeners.append(echo.emit)
    tty = sys.stderr.isatty()
    shown = {"lines": 0, "at": 0.0, "text": ""}

    def show_event(violation) -> None:
        if args.json:
            return
        clear()
        zone = f" zone {violation.zone}" if violation.zone else ""
        print(
            f"[{violation.last_seen:%H:%M:%S}] {violation.extra.get('event')} {violation.type}: "
            f"{violation.detector_class} {violation.score:.2f} on {violation.source_id}{zone} "
            f"(first seen {violation.first_seen:%H:%M:%S}) {violation.key}",
            file=sys.stderr,
        )

    def clear() -> None:
        if tty and shown["lines"]:
            sys.stderr.write(f"\x1b[{shown['lines']}F\x1b[J")
            shown["lines"] = 0

    def tick() -> None:
        if args.json:
            return
        import time

        if not tty and time.monotonic() - shown["at"] < 10:
            return
        clear()
        lines = [format_status(s) for s in proc.status()]
        if proc.sink_waiting_s >= 5:  # the cameras wait for it: "live" alone would hide that nothing is processed
            lines.append(f"sink {where}: no answer for {proc.sink_waiting_s:.0f} s; no camera is processed meanwhile")
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
        shown["lines"] = len(lines) if tty else 0
        shown["at"], shown["text"] = time.monotonic(), "\n".join(lines)

    proc.listeners.append(show_event)
    follower = None
    if args.model == "default" and not args.no_follow:  # a promoted model takes over without a restart
        from pipeline.reload import ModelFollower

        def switched(new) -> None:
            proc.detector = new
            if not args.json:
                clear()
                print(f"streetwatch: model switched to {new.version} (newly promoted default)", file=sys.stderr)

        follower = ModelFollower(detector.config, detector, [switched]).start()
    if not args.json:
        print(
            f"watching {len(config.active)} camera(s) from {path} with model {detector.version}; "
            f"violations -> {where}" + ("" if args.duration is None else f"; for {args.duration:g} s"),
            file=sys.stderr,
        )
    missing: dict[str, str] = {}  # keys the case queue has not taken, with why
    try:
        with sigterm_as_ctrl_c():  # the frame in hand finished, open violations flushed
            try:
                proc.run(duration=args.duration, on_tick=tick, tick_s=1.0)
            except KeyboardInterrupt:
                proc.stop()  # at once if the stop itself was cut short
            undelivered = getattr(sink, "undelivered", None)  # a service URL: wait (wait=) for it to answer
            if undelivered is not None:
                try:
                    missing = undelivered(None)
                except KeyboardInterrupt:
                    missing = undelivered(0.0)
    except KeyboardInterrupt:  # a second Ctrl-C while stopping: what was not sent is said below
        pass
    finally:
        if follower is not None:
            follower.stop()
        sink.close()
    statuses = proc.status()
    if not args.json:
        clear()
        final = "\n".join(format_status(s) for s in statuses)
        if tty or final != shown["text"]:  # a log already holds these lines if the last tick wrote them
            print(final, file=sys.stderr)
        print(
            f"{len(keys)} violation(s): {counts['open']} opened, {counts['ended']} ended, "
            f"{counts['update']} updates"
            + (
                f"; written to {target} (evidence in {Path(target).parent / 'evidence'})"
                if target and target.endswith(".jsonl")
                else ""
            ),
            file=sys.stderr,
        )
    failed = 0
    if missing:
        why = next(iter(missing.values()))
        print(f"streetwatch: {len(missing)} violation(s) not delivered to {where}: {why}", file=sys.stderr)
        failed = 1
    if proc.unsent:
        print(f"streetwatch: {proc.unsent} violation(s) the sink did not take (see the log above)", file=sys.stderr)
        failed = 1
    if all(s.frames_decoded == 0 for s in statuses):
        print("streetwatch: no camera delivered any frame", file=sys.stderr)
        return 1
    return failed


# --------------------------------------------------------------------------------------------- main


def path_problem(exc: OSError) -> str:
    """A file-system error as one line naming the path (the target of a rename, not its temporary file):
    what is wrong with it, for a person. A camera URL's password stays hidden (PyAV errors name the URL)."""
    why = {
        FileExistsError: "exists and is not a folder (give a folder for the output)",
        NotADirectoryError: "a part of this path is a file, not a folder",
        PermissionError: "permission denied",
        FileNotFoundError: "no such file or folder",
    }.get(type(exc), exc.strerror or str(exc))
    return f"{error_path(exc)}: {why}"


def error_path(exc: OSError) -> str:
    """The path an OSError names (the target of a rename, not its temporary file), passwords hidden."""
    from pipeline.cameras import hide_passwords

    return hide_passwords(str(exc.filename2 or exc.filename))


#: Errors of the machine rather than of the input: a full disk or quota, a failing device, a file over the size limit.
SYSTEM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def system_problem(exc: OSError, args: argparse.Namespace) -> str:
    """An OSError that is no fault of the command's input (a full disk mid-write names no file) as one line:
    what failed, and the file, or else the command's output folder, when known."""
    why = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why += " (free some space, or write the output elsewhere)"
    if exc.filename is not None:
        return f"{error_path(exc)}: {why}"
    out = next((getattr(args, k) for k in ("out", "data_dir", "report") if getattr(args, k, None)), None)
    return f"{why} (writing to {out})" if out else why


def build_parser() -> argparse.ArgumentParser:
    """The full ``streetwatch`` parser, with every package's subcommands."""
    parser = argparse.ArgumentParser(
        prog="streetwatch",
        description="Street-scene inspection: detect, watch cameras, audit photos, "
        "serve the case queue, train and ship models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    os.environ.setdefault("PYDANTIC_ERRORS_INCLUDE_URL", "0")  # messages that embed a ValidationError: no links
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        require(*getattr(args, "needs", ()))
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        parser.exit(2, f"streetwatch: error: this needs {exc.name}, part of the train extra: {INSTALL_TRAIN}\n")
    except CLIError as exc:
        parser.exit(2, f"streetwatch: error: {exc}\n")
    except ValidationError as exc:  # a command's settings, made from its options, that the config model refuses
        parser.exit(2, f"streetwatch: error: {invalid_settings(exc)}\n")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as other commands do
        try:  # was it stdout that went away? (a failed write leaves nothing to flush: write one more byte)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
            return 141
        raise  # another pipe or socket: a real error
    except OSError as exc:
        if exc.errno in SYSTEM_ERRNOS or exc.filename is None:  # the machine failed, not the input: exit 1
            parser.exit(1, f"streetwatch: error: {system_problem(exc, args)}\n")
        # a path the command was given (an output folder that is a file, no permission)
        parser.exit(2, f"streetwatch: error: {path_problem(exc)}\n")


if __name__ == "__main__":  # `python -m pipeline.cli`: run the importable module's main, one CLIError class
    from pipeline.cli import main as _main

    sys.exit(_main())
