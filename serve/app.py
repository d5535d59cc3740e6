"""The service: :func:`create_app` assembles the store, the detector, the routers and the background
workers (micro-batcher, webhook outbox, an optional camera runner) from a :class:`ServiceConfig`."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from pipeline.decode import ImageReadError
from pipeline.detect import Detector
from pipeline.reload import ModelFollower
from serve.batching import DetectorHolder, MicroBatcher
from serve.config import ServiceConfig
from serve.evidence import EvidenceNotFound
from serve.lifecycle import IllegalTransition
from serve.metrics import Metrics
from serve.outbox import WebhookDispatcher
from serve.retention import RetentionWorker
from serve.routes.ui import error_page as ui_error_page
from serve.store import CaseChanged, CaseNotFound, CaseStore, InvalidRequest

if TYPE_CHECKING:
    from pipeline.streams import CameraStatus

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@runtime_checkable
class CameraRunner(Protocol):
    """What the service needs of a camera runner: the stream pipeline's ``StreamProcessor``."""

    def start(self) -> None:
        """Start processing the cameras (returns at once; work runs in the background)."""

    def stop(self) -> None:
        """Stop all cameras, flushing what they found."""

    def status(self) -> list[CameraStatus]:
        """The state of every camera."""


#: On every response: no MIME sniffing (an evidence picture or a refusal's text is never run as a script), no
#: framing by other sites (clickjacking of the review buttons), no addresses (case numbers, filters) in the
#: Referer sent to other sites.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
#: The Content-Security-Policy of every response but the API docs pages: the service's own scripts, styles and
#: images only (the review page has no inline script, style or event handler), forms only to itself, no
#: plugins, no <base> that would move relative addresses elsewhere, no framing.
CONTENT_POLICY = "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
#: Swagger UI and ReDoc start from an inline script: their pages are only kept out of frames.
DOCS_POLICY = "frame-ancestors 'none'"
DOCS_PAGES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The headers :class:`GuardMiddleware` adds to every response to ``path``."""
    policy = DOCS_POLICY if path in DOCS_PAGES else CONTENT_POLICY
    return [*SECURITY_HEADERS, (b"content-security-policy", policy.encode())]


class GuardMiddleware:
    """Body-size limits and NUL-free query strings before anything parses a request, HEAD answered as GET
    without the body, security headers on every response (:func:`security_headers`), and request metrics."""

    def __init__(self, app: Any, config: ServiceConfig, metrics: Metrics):
        self.app, self.config, self.metrics = app, config, metrics

    def limit_for(self, path: str) -> int:
        limits = self.config.limits
        if path.startswith("/v1/cases/ingest"):
            return limits.max_ingest_bytes
        if path.startswith("/v1/detect"):
            return limits.max_upload_bytes
        return limits.max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        method = scope["method"]
        if method == "HEAD":  # what GET would answer, headers only (HTTP requires it; FastAPI's routes lack it)
            scope = {**scope, "method": "GET"}

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in security_headers(scope["path"]) if name not in present]
                message = {**message, "headers": headers}
            elif method == "HEAD" and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            query = scope.get("query_string", b"")
            if b"%00" in query or b"\x00" in query:  # no database can keep it as text; nobody types it
                await _reply(send_observed, 422, "the query string holds a NUL (%00) character")
                return
            if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
                receive = await self._buffered(scope, receive, send_observed)
                if receive is None:
                    return
            await self.app(scope, receive, send_observed)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(method, label, str(status[0])).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - started)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Read the whole body (refusing it past the limit with 413); a receive that replays it."""
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        too_big = False
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                await _reply(send, 400, "malformed Content-Length header")
                return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            size += len(body)
            more = message.get("more_body", False)
            if size > limit:
                too_big = True
            if too_big:
                if size > 16 * limit:  # stop reading an endless stream; the connection closes
                    break
                continue
            chunks.append(body)
        if too_big:
            await _reply(send, 413, f"request body too large: limit {limit:,} bytes for {scope['path']}")
            return None
        data = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        return replay


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _validation_problem(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        where = next(e for e in errors if e.get("type") == "json_invalid")
        reason = where.get("ctx", {}).get("error", "invalid JSON")
        return JSONResponse({"detail": f"malformed JSON body: {reason}"}, status_code=400)
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    clean = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
    return JSONResponse({"detail": "; ".join(parts), "errors": clean}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal becomes a 4xx with a reason; nothing a client sends can produce a 500."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/ui/") and request.method == "GET":  # a person's address bar: a page
            return ui_error_page(request, 404, "这个地址不对 This address is not a page of the review site")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body_errors = [e for e in exc.errors() if tuple(e.get("loc", ())) == ("body",)]
        if body_errors and request.method in ("POST", "PUT", "PATCH") and ctype != "application/json":
            return JSONResponse(
                {
                    "detail": f"expected a JSON body with Content-Type: application/json, "
                    f"got {ctype or 'no content type'}"
                },
                status_code=415,
            )
        return _validation_problem(exc)

    @app.exception_handler(IllegalTransition)
    async def _illegal(request: Request, exc: IllegalTransition) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "status": exc.status, "action": exc.action}, status_code=409)

    @app.exception_handler(CaseChanged)
    async def _changed(request: Request, exc: CaseChanged) -> JSONResponse:
        tz = request.app.state.config.tz  # the zone the review page shows times in
        return JSONResponse({"detail": exc.message(tz)}, status_code=409)

    @app.exception_handler(CaseNotFound)
    async def _missing(request: Request, exc: CaseNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(EvidenceNotFound)
    async def _no_evidence(request: Request, exc: EvidenceNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(InvalidRequest)
    async def _invalid_request(request: Request, exc: InvalidRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ImageReadError)
    async def _bad_image(request: Request, exc: ImageReadError) -> JSONResponse:
        return JSONResponse({"detail": f"unreadable image: {exc.reason}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and request.url.path.startswith("/ui/") and request.method == "GET":
            return ui_error_page(request, 404, "这个地址不对 This address is not a page of the review site")
        detail = exc.detail
        if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
            detail = f"{request.method} is not allowed on {request.url.path}; it takes {exc.headers['Allow']}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


#: The methods a fixed path is held for when its own routes do not take them (:func:`hold_fixed_paths`).
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def hold_fixed_paths(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """Answer a method that a fixed path (``/v1/cases/ingest``) does not take with 405 and the methods it
    does (``Allow``), as for any other path. Without this a parameterised route beside it that takes the method
    (``GET /v1/cases/{case_id}``) gets the request, and refuses ``ingest`` as a case number (422): the router
    prefers any route that takes the method to one that only has the path. Call before the routers are
    included (the first route that takes a request gets it)."""
    taken: dict[str, set[str]] = {}
    for router in routers:
        for route in router.routes:
            if isinstance(route, Route) and route.methods and not route.param_convertors:
                taken.setdefault(route.path, set()).update(route.methods)
    for path, methods in taken.items():
        others = [m for m in METHODS if m not in methods]
        if others:
            app.add_route(path, _not_allowed(", ".join(sorted(methods))), methods=others, include_in_schema=False)


def _not_allowed(allow: str) -> Callable[[Request], Awaitable[Response]]:
    async def not_allowed(request: Request) -> Response:
        raise StarletteHTTPException(405, headers={"Allow": allow})

    return not_allowed


def batching_wanted(config: ServiceConfig, detector: Detector) -> bool:
    """Whether to micro-batch: as configured, or (auto) when the model runs on an accelerator provider."""
    if config.batching.enabled != "auto":
        return bool(config.batching.enabled)
    return detector.session.get_providers()[0] != "CPUExecutionProvider"


def create_app(
    config: ServiceConfig | None = None,
    detector: Detector | None = None,
    cameras: CameraRunner | None = None,
    store: CaseStore | None = None,
) -> FastAPI:
    """The FastAPI application. The store is opened (and migrated) now; workers start with the app.

    ``detector``: use this one instead of building ``config.detector``; ``cameras``: an object with
    ``start()/stop()/status()`` started and stopped with the app, its ``status()`` shown in ``/metrics``
    and ``/readyz``.
    """
    from serve.routes import admin, cases, detect, health, outbox, stats, ui

    config = config or ServiceConfig()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    own_store = store is None  # closed when the app stops; a store handed in belongs to the caller
    store = store or CaseStore(config.database_url, config.data_dir, config.dedup, config.webhook, config.public_url)
    if detector is None and config.load_detector:
        detector = Detector(config.detector)
    holder = DetectorHolder(detector)
    metrics = Metrics()
    app_state: dict[str, Any] = {}  # filled below; the collector reads the camera runner at scrape time
    metrics.watch_state(
        store.counts_by_status,
        store.outbox_counts,
        lambda: app_state["app"].state.cameras.status() if app_state["app"].state.cameras is not None else [],
        lambda: holder.detector.version if holder.loaded else None,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = None
        if holder.loaded and batching_wanted(config, holder.detector):
            batcher = MicroBatcher(
                holder,
                config.batching.max_batch,
                config.batching.max_wait_ms,
                metrics.observe_batch,
                config.batching.workers,
            )
            await batcher.start()
        app.state.batcher = batcher
        follower = None
        if holder.loaded and config.reload.enabled and ModelFollower.wanted(holder.detector.config):
            follower = ModelFollower(
                holder.detector.config, holder.detector, [holder.swap, _cameras_swap(app)], config.reload.poll_s
            ).start()
        app.state.follower = follower
        dispatcher = WebhookDispatcher(store, config.webhook) if config.webhook.url else None
        app.state.dispatcher = dispatcher
        if dispatcher:
            dispatcher.start()
        pruner = RetentionWorker(store, config.retention) if config.retention.closed_for_days else None
        app.state.retention = pruner
        if pruner:
            pruner.start()
        runner = app.state.cameras
        if runner is not None:
            runner.start()
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            if follower:
                follower.stop()
            if runner is not None:
                runner.stop()
            if batcher:
                await batcher.stop()
            if dispatcher:
                dispatcher.stop()
            if pruner:
                pruner.stop()
            if own_store:  # SQLite folds its write-ahead log into the database file as the last connection closes
                store.dispose()

    app = FastAPIOffline(  # a FastAPI app whose /docs and /redoc load Swagger UI and ReDoc from the
        title="streetwatch",  # installed package, not a CDN: a bureau's network is often offline
        summary="Case queue and inference service for street-scene inspection (城管)",
        version="1",
        lifespan=lifespan,
        static_url="/docs-assets",
    )
    app_state["app"] = app
    app.state.config = config
    app.state.store = store
    app.state.detector = holder
    app.state.metrics = metrics
    app.state.cameras = cameras
    app.state.batcher = None
    app.state.follower = None
    app.state.dispatcher = None
    app.state.retention = None
    app.state.ready = False
    app.state.templates = ui.load_templates(ui.TEMPLATES_DIR)  # the review page's files, read once
    app.state.static = ui.load_static(ui.STATIC_DIR)
    install_error_handlers(app)
    routers = [module.router for module in (health, cases, detect, stats, admin, outbox, ui)]
    hold_fixed_paths(app, routers)
    for router in routers:
        app.include_router(router)

    app.add_middleware(GuardMiddleware, config=config, metrics=metrics)
    return app


def _cameras_swap(app: FastAPI) -> Callable[[Detector], None]:
    """Swap callback for the camera runner: a stream processor's ``detector`` attribute is its model."""

    def swap(detector: Detector) -> None:
        runner = app.state.cameras
        if runner is not None and hasattr(runner, "detector"):
            runner.detector = detector

    return swap


def attach_cameras(app: FastAPI, cameras: CameraRunner) -> None:
    """Run ``cameras`` with the app (started and stopped with it; states in /metrics and /readyz).
    Call before the app starts, e.g. with a runner built on ``app.state.detector.detector``."""
    if app.state.ready:
        raise RuntimeError("attach the camera runner before the service starts")
    app.state.cameras = cameras
