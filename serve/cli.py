"""``streetwatch serve`` (the case queue, API and review page), ``streetwatch keys`` (API keys) and
``streetwatch evidence prune`` (the retention of evidence pictures)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import getpass
import logging
import socket
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pipeline.cli import CLIError, checked, invalid_settings, positive_number
from pipeline.files import display_path


def service_config(args: argparse.Namespace):  # -> ServiceConfig
    """The service config from ``--config`` plus command-line overrides; errors become CLI errors."""
    from pydantic import ValidationError

    from serve.config import ServiceConfig

    overrides: dict = {
        "data_dir": getattr(args, "data_dir", None),
        "db_url": getattr(args, "db", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
    }
    try:
        config = ServiceConfig.load(getattr(args, "config", None), **overrides)
        if getattr(args, "model", None):
            config.detector = config.detector.model_copy(update={"model": args.model})
        if getattr(args, "webhook", None):
            config.webhook = config.webhook.model_validate({**config.webhook.model_dump(), "url": args.webhook})
        return config
    except ValidationError as exc:  # a field of the file (named) or an option
        where = f"{args.config}: " if getattr(args, "config", None) else ""
        raise CLIError(where + invalid_settings(exc, "service configuration")) from None
    except (OSError, ValueError) as exc:
        raise CLIError(f"invalid service configuration: {exc}") from None


def open_store(args: argparse.Namespace, create: bool = True):  # -> CaseStore
    """The case store the ``--data-dir`` / ``--db`` options name (migrated). A SQLite store that is not
    there yet (a mistyped ``--data-dir``?) is an error unless ``create``; if created, it is said."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from serve.store import CaseStore

    config = service_config(args)
    try:
        url = make_url(config.database_url)
    except SQLAlchemyError as exc:  # not a URL at all
        raise CLIError(f"cannot open the case store {config.database_url}: {exc}") from None
    if url.drivername.startswith("sqlite") and url.database and not Path(url.database).exists():
        where = "--db" if config.db_url else "--data-dir"
        if not create:
            raise CLIError(f"no case store at {url.database}: check {where}")
        print(f"streetwatch: no case store at {url.database} yet: creating one", file=sys.stderr)
    try:
        return CaseStore(config.database_url, config.data_dir)
    except (SQLAlchemyError, ValueError) as exc:
        raise CLIError(f"cannot open the case store {config.database_url}: {exc}") from None


def demo_cameras(app, speed: float | None = None):  # -> StreamProcessor
    """The demo cameras (``pipeline.cameras.DEMO_CAMERAS``, the bundled videos) feeding the service's own
    case store, to run with the app (``serve.app.attach_cameras``); ``speed``: play the videos faster."""
    from pipeline.cameras import DEMO_CAMERAS, load_cameras
    from pipeline.streams import StreamProcessor
    from serve.sinks import StoreSink

    config = load_cameras(DEMO_CAMERAS)
    for cam in config.active:
        if speed is not None and not cam.is_stream:
            cam.speed = speed
    ingested = app.state.metrics.ingested
    sink = StoreSink(app.state.store, "demo-camera", on_ingest=lambda r: ingested.labels(r.outcome).inc())
    return StreamProcessor(config, app.state.detector.detector, sink)


#: Name prefix of the reviewer keys ``serve --demo`` makes (and replaces at its next start).
DEMO_KEY_PREFIX = "serve --demo "


def demo_key(store) -> str:
    """A fresh reviewer key for ``serve --demo``; it replaces the last start's (demo keys do not pile up)."""
    for old in store.list_keys():
        if old.name.startswith(DEMO_KEY_PREFIX) and old.role == "reviewer" and old.revoked_at is None:
            store.revoke_key(old.id)
    return store.create_key("reviewer", f"{DEMO_KEY_PREFIX}{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")[0]


def listen_socket(host: str, port: int) -> socket.socket:
    """The service's listening socket, bound before anything else is done (uvicorn serves on it): a port
    another service holds, or an address that is not this machine's, is a CLIError, before a demo key is
    made and an address printed that would be another's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds one
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT after a restart is free
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = " (another service there? try --port)" if exc.errno == errno.EADDRINUSE else ""
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the service until interrupted."""
    from serve.db import normalise_url

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = service_config(args)
    if args.speed is not None and (not args.demo or args.speed <= 0):
        raise CLIError("--speed is a positive playback factor for the demo videos (with --demo)")
    try:
        normalise_url(config.database_url)
    except ValueError as exc:  # a database of a kind the store does not take
        raise CLIError(f"cannot open the case store {config.database_url}: {exc}") from None
    sock = listen_socket(config.host, config.port)
    try:
        return _serve(args, config, sock)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, config, sock: socket.socket) -> int:
    """Build the app on ``config`` and serve it on ``sock`` until interrupted."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from models.registry import ModelError
    from serve.app import create_app

    try:
        app = create_app(config)
    except ModelError as exc:
        raise CLIError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CLIError(f"cannot open the case store {config.database_url}: {exc}") from None
    store, holder = app.state.store, app.state.detector
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    url = f"http://{'127.0.0.1' if config.host in ('0.0.0.0', '::') else config.host}:{port}"
    print(f"streetwatch: case store {config.database_url}", flush=True)
    print(f"streetwatch: model {holder.detector.version if holder.loaded else '(none)'}", flush=True)
    if args.demo:
        from serve.app import attach_cameras

        if not holder.loaded:
            raise CLIError("--demo runs the demo cameras, which need a model (load_detector is off)")
        cameras = demo_cameras(app, args.speed)
        attach_cameras(app, cameras)
        names = ", ".join(f"{s.camera_id} ({s.name})" for s in cameras.status())
        print(f"streetwatch: demo cameras: {names}; their violations become cases here", flush=True)
        key = demo_key(store)
        print(f"streetwatch: demo reviewer key (shown once, replaces the last one): {key}", flush=True)
    elif not any(k.revoked_at is None for k in store.list_keys()):
        print(
            "streetwatch: no API keys yet: create one with "
            f"`streetwatch keys create --role reviewer --data-dir {config.data_dir}`",
            flush=True,
        )
    print(f"streetwatch: review page {url}/ui/cases   API docs {url}/docs", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=config.host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=10
        )
    )
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
        server.run(sockets=[sock])
    return 0 if server.started else 3


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create an API key and print it once."""
    name = args.name or f"{args.role}-{getpass.getuser()}"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8 (Python keeps them as surrogates)
        raise CLIError(f"--name '{display_path(name)}' is not valid UTF-8 text; give the key's name in UTF-8") from None
    store = open_store(args)
    try:
        key, record = store.create_key(args.role, name)
    finally:
        store.dispose()
    print(key)
    print(
        f"created {record.role} key #{record.id} '{record.name}' ({record.prefix}…); it is not shown again",
        file=sys.stderr,
    )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List API keys (never the keys themselves)."""
    store = open_store(args, create=False)
    try:
        for k in store.list_keys():
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
            used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never"
            print(f"#{k.id:<4} {k.role:<9} {k.prefix}…  {k.name:<24} {state:<18} last used {used}")
    finally:
        store.dispose()
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke an API key by number."""
    store = open_store(args, create=False)
    try:
        record = store.revoke_key(args.id)
    except LookupError as exc:
        raise CLIError(str(exc)) from None
    finally:
        store.dispose()
    print(f"revoked {record.role} key #{record.id} '{record.name}'")
    return 0


#: The grace period an operator may choose: at least an hour (longer than any ingestion takes).
grace_hours = checked(float, "a number", lambda v: 1 <= v < float("inf"), "at least 1 (hour)")


def cmd_evidence_prune(args: argparse.Namespace) -> int:
    """Delete the evidence pictures of cases closed or dismissed long ago, and files no case references."""
    from serve.store import local_time

    config = service_config(args)
    tz, closed_for = config.tz, args.closed_for or config.retention.closed_for_days
    if closed_for is None:
        raise CLIError("give --closed-for DAYS (or retention.closed_for_days in the --config file)")
    grace = args.grace or config.retention.grace_hours
    store = open_store(args, create=False)
    now = datetime.now(timezone.utc)
    closed_before = now - timedelta(days=closed_for)
    try:
        result = store.prune_evidence(closed_before, now - timedelta(hours=grace), dry_run=args.dry_run)
    finally:
        store.dispose()
    for c in result.cases:
        since = local_time(c.since, tz)[:10]
        print(f"case #{c.case_id:<6} {c.status:<9} since {since}  {_count(c.files, 'file')}  {c.bytes:,} bytes")
    for f in result.orphans:
        print(f"no case      {f.sha256}  written {local_time(f.modified, tz)[:16]}  {f.size:,} bytes")
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {_count(result.files, 'evidence file')}, {result.freed:,} bytes ({result.freed / 1e6:.1f} MB): "
        f"{_count(result.case_files, 'file')} of {_count(len(result.cases), 'case')} closed or dismissed before "
        f"{local_time(closed_before, tz)[:16]}, {_count(len(result.orphans), 'file')} that no case references"
        + (f", {_count(result.unfinished, 'unfinished write')} a crash left behind" if result.unfinished else "")
        + ("" if args.dry_run or not result.cases else "; the cases and their history stay")
    )
    return 0


def _count(n: int, thing: str) -> str:
    """``n`` things, in the singular for one."""
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None, help="data folder (default: ./data)")
    p.add_argument("--db", default=None, help="database URL (sqlite:///FILE or postgresql://...)")
    p.add_argument("--config", default=None, help="service config YAML (serve.config.ServiceConfig fields)")


def register(sub: argparse._SubParsersAction) -> None:
    """The service's subcommands."""
    p = sub.add_parser(
        "serve",
        help="run the case queue, API and review page",
        description="Serve the case queue (ingest, review, dispatch), /v1/detect, stats, metrics and the review page.",
    )
    p.add_argument("--host", default=None, help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: 8000)")
    _store_args(p)
    p.add_argument("--model", default=None, help="registry name or model folder (default: the registry default)")
    p.add_argument("--webhook", default=None, help="URL that receives confirmed cases (JSON POST)")
    p.add_argument(
        "--demo",
        action="store_true",
        help="also run the demo cameras (bundled videos) into the case queue, and print a fresh reviewer key",
    )
    p.add_argument("--speed", type=float, default=None, help="with --demo: play the demo videos this many times faster")
    p.set_defaults(func=cmd_serve)

    k = sub.add_parser("keys", help="manage API keys", description="Create, list and revoke API keys.")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = ksub.add_parser("create", help="create a key and print it once")
    c.add_argument("--role", required=True, choices=("ingest", "reviewer", "admin"), help="what the key may do")
    c.add_argument("--name", default=None, help="who or what uses it (shown in case history)")
    _store_args(c)
    c.set_defaults(func=cmd_keys_create)
    ls = ksub.add_parser("list", help="list keys (never the keys themselves)")
    _store_args(ls)
    ls.set_defaults(func=cmd_keys_list)
    r = ksub.add_parser("revoke", help="revoke a key by number")
    r.add_argument("id", type=int, help="key number (from `keys list`)")
    _store_args(r)
    r.set_defaults(func=cmd_keys_revoke)

    e = sub.add_parser(
        "evidence",
        help="evidence pictures of cases: retention",
        description="Keep evidence pictures only as long as the retention policy says.",
    )
    esub = e.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)
    p = esub.add_parser(
        "prune",
        help="delete the pictures of cases closed or dismissed long ago",
        description="Delete the evidence pictures of cases closed or dismissed more than DAYS days ago (a picture "
        "another case still needs stays), and picture files that no case references, written more than "
        "--grace hours ago. The cases and their history stay; each case's history and the review page say when "
        "its pictures were removed. Safe while the service runs.",
    )
    p.add_argument(
        "--closed-for",
        type=positive_number,
        default=None,
        metavar="DAYS",
        help="remove the pictures of cases closed or dismissed at least this many days ago "
        "(default: retention.closed_for_days of --config)",
    )
    p.add_argument(
        "--grace",
        type=grace_hours,
        default=None,
        metavar="HOURS",
        help="files no case references are removed once this old, at least 1 (default: retention.grace_hours "
        "of --config, else 24)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list what would be removed and the bytes freed; change nothing"
    )
    _store_args(p)
    p.set_defaults(func=cmd_evidence_prune)
